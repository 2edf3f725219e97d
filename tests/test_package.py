import subprocess
import sys

import napari_nalu_count
from napari_nalu_count import cli


def test_version_and_lazy_api():
    assert napari_nalu_count.__version__
    assert set(napari_nalu_count.__all__) >= {"count", "segment", "list_models", "load_model"}


def test_cli_help_lists_commands(capsys):
    parser = cli.build_parser()
    help_text = parser.format_help()
    assert "bench" in help_text


def test_cli_without_command_exits_2():
    assert cli.main([]) == 2


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "napari_nalu_count.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert napari_nalu_count.__version__ in out.stdout


def test_manifest_validates():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-nalu-count")
    assert pm.name == "napari-nalu-count"


# ------------------------------------------------------------------------------------------
# packaging: every subpackage ships, one version, dependencies as imported

import ast  # noqa: E402
import importlib.metadata  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "napari_nalu_count"


def _package_dirs() -> set[str]:
    """Dotted names of every folder under src/napari_nalu_count with an __init__.py, plus the
    mapped sample_data package."""
    names = {
        ".".join(p.parent.relative_to(SRC.parent).parts)
        for p in SRC.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert (REPO / "sample_data" / "__init__.py").is_file()
    return names | {"napari_nalu_count.sample_data"}


def _setup_packages(monkeypatch) -> list[str]:
    """The package list setup.py hands to setuptools (setup() captured, not run)."""
    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return list(captured["packages"])


def test_setuptools_discovers_every_subpackage(monkeypatch):
    packages = _setup_packages(monkeypatch)
    expected = _package_dirs()
    assert {"napari_nalu_count.commands", "napari_nalu_count._widgets"} <= expected
    missing = expected - set(packages)
    assert not missing, f"packages missing from the wheel: {sorted(missing)}"
    assert set(packages) == expected


@pytest.mark.slow
def test_built_wheel_holds_every_package_and_data(tmp_path):
    """Build the wheel from a copy of the tree (no network: no build isolation) and look in."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
    shutil.copytree(REPO / "sample_data", tree / "sample_data", ignore=ignore)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("napari_nalu_count-*.whl")
    assert wheel.name.startswith(f"napari_nalu_count-{napari_nalu_count.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in _package_dirs():
        assert package.replace(".", "/") + "/__init__.py" in names, package
    for data in (
        "napari_nalu_count/napari.yaml",
        "napari_nalu_count/models/bundled/nuclei-count.safetensors",
        "napari_nalu_count/models/bundled/nuclei-seg.json",
        "napari_nalu_count/sample_data/synthetic_timelapse.tif",
        "napari_nalu_count/sample_data/counts.csv",
    ):
        assert data in names, data
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "nalu-count = napari_nalu_count.cli:main" in text


def test_one_version_everywhere(capsys):
    from napari_nalu_count.models import make_card

    version = napari_nalu_count.__version__
    assert importlib.metadata.version("napari-nalu-count") == version
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"nalu-count {version}"
    card = make_card("v", "count", {"architecture": "fcrn_a"})
    assert card["package_version"] == version
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "\nversion =" not in text.split("[tool.")[0]


#: import name -> distribution name, where they differ
_DIST = {"skimage": "scikit-image", "yaml": "pyyaml", "PIL": "pillow"}


def _third_party_imports(root: Path) -> set[str]:
    stdlib = set(sys.stdlib_module_names) | {p.stem for p in root.glob("*.py")}  # + siblings
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top not in stdlib and top != "napari_nalu_count":
                    found.add(_DIST.get(top, top).lower())
    return found


def _requirement_names(key: str) -> set[str]:
    import re

    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project[key] if key == "dependencies" else project["optional-dependencies"][key]
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_dependencies_are_what_the_package_imports():
    imported = _third_party_imports(SRC)
    declared = _requirement_names("dependencies")
    optional = _requirement_names("distributed")  # --scheduler (infer/scaleout.py)
    fast = _requirement_names("fast")  # imported only when installed (infer/backend.py)
    assert fast == {"onnxruntime", "onnx"} and "onnxruntime" in imported
    imported -= fast
    assert imported - declared - optional == set(), "imported but not declared"
    assert declared - imported == set(), "declared but never imported"
    assert {"psygnal", "magicgui"} <= declared and "dask" not in declared
    assert optional == {"dask", "distributed"} and not optional & declared
    # only the scale-out module imports them, and only inside functions (lazily)
    users = {p.name for p in SRC.rglob("*.py") if _third_party_imports_of(p) & optional}
    assert users == {"scaleout.py"}
    assert not _top_level_imports(SRC / "infer" / "scaleout.py") & optional


def _third_party_imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_testing_extra_covers_what_the_tests_import():
    imported = _third_party_imports(REPO / "tests")
    declared = _requirement_names("testing") | _requirement_names("dependencies")
    assert imported - declared == set()
