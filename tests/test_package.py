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
