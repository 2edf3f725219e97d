"""``nalu-count count`` / ``nalu-count segment``: folders, globs, stacks, broken files, outputs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_nalu_count.cli import main


def _save_tiny(name: str, task: str) -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    arch = "fcrn_a" if task == "count" else "se_unet"
    widths = [4, 4, 8, 8] if task == "count" else [4, 8]
    net = build_model({"architecture": arch, "widths": widths})
    save_model(net, make_card(name, task, net.config, diameter=14.0), name)
    return name


def _image(seed: int, shape=(96, 112)) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape, n_cells=12, diameter=14.0, seed=seed).image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", _image(1))
    stack = np.stack([_image(2), _image(3), _image(4)])
    tifffile.imwrite(d / "stack.tif", stack, photometric="minisblack")  # 3 pages
    from skimage import io as skio

    img8 = (_image(5) // 16).astype(np.uint8)
    skio.imsave(d / "c.png", img8, check_contrast=False)
    (d / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    (d / "README.md").write_text("# not an image\n")
    (d / "notes.csv").write_text("a,b\n1,2\n")
    (d / "script.py").write_text("print('hi')\n")
    return d


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_count_folder_with_broken_file(folder, tmp_path, capsys):
    model = _save_tiny("cli-count", "count")
    out = tmp_path / "counts.csv"
    dens = tmp_path / "dens"
    rc = main(
        [
            "count",
            str(folder),
            "--model",
            model,
            "--csv",
            str(out),
            "--device",
            "cpu",
            "--density-dir",
            str(dens),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2  # the broken file is reported at the end
    text = out.read_text()
    assert text.splitlines()[0] == "file,frame,count"
    rows = _rows(text)
    files = [Path(r["file"]).name for r in rows]
    assert files == ["a.tif", "c.png", "stack.tif", "stack.tif", "stack.tif"]
    assert [r["frame"] for r in rows if r["file"].endswith("stack.tif")] == ["0", "1", "2"]
    assert all(np.isfinite(float(r["count"])) for r in rows)
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken.tif" in skipped[0]
    for name in ("README.md", "notes.csv", "script.py"):
        assert name not in err
    assert sorted(p.name for p in dens.iterdir()) == [
        "a_density.tif",
        "c_density.tif",
        "stack_density.tif",
    ]
    d = tifffile.imread(dens / "stack_density.tif")
    assert d.shape == (3, 96, 112) and d.dtype == np.float32
    assert float(d[1].sum()) == pytest.approx(float(rows[3]["count"]), abs=0.01)


def test_count_stdout_and_glob(folder, capsys):
    model = _save_tiny("cli-count", "count")
    rc = main(
        [
            "count",
            str(folder / "a*.tif"),
            str(folder / "c.png"),
            "--model",
            model,
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    rows = _rows(captured.out)
    assert captured.out.splitlines()[0] == "file,frame,count"
    assert [Path(r["file"]).name for r in rows] == ["a.tif", "c.png"]
    assert "count" in captured.err or "img" in captured.err  # the progress bar is on stderr


def test_rgb_pixels_use_max_but_planar_samples_are_frames(tmp_path, capsys):
    model = _save_tiny("cli-count", "count")
    img = _image(1)
    zero = np.zeros_like(img)
    # RGB samples per pixel (YXS, as cameras write colour): one image, reduced by max
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([zero, zero, img], axis=-1), photometric="rgb")
    tifffile.imwrite(tmp_path / "gray.tif", img)
    # planar samples (SYX): byte for byte what tifffile writes for any 3-plane numpy stack, so
    # they are frames, never colour channels
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([zero, zero, img]), photometric="rgb")
    rc = main(
        [
            "count",
            str(tmp_path / "rgb.tif"),
            str(tmp_path / "gray.tif"),
            str(tmp_path / "planar.tif"),
            "--model",
            model,
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    rows = _rows(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in rows] == ["rgb.tif", "gray.tif"] + ["planar.tif"] * 3
    assert rows[0]["count"] == rows[1]["count"]
    assert [r["frame"] for r in rows[2:]] == ["0", "1", "2"]
    assert rows[4]["count"] == rows[1]["count"]  # the third page is the grey image


def test_count_model_by_path_axes_and_diameter(folder, tmp_path, capsys):
    from napari_nalu_count.models import user_model_dir

    _save_tiny("cli-count", "count")
    path = user_model_dir() / "cli-count.json"
    rc = main(
        [
            "count",
            str(folder / "stack.tif"),
            "--model",
            str(path),
            "--axes",
            "ZYX",
            "--diameter",
            "auto",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert len(_rows(capsys.readouterr().out)) == 3


def test_count_errors_exit_2(folder, tmp_path, capsys):
    model = _save_tiny("cli-count", "count")
    assert main(["count", str(tmp_path / "nothing-here"), "--model", model]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["count", str(folder / "a.tif"), "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["count", str(folder / "a.tif"), "--model", model, "--device", "tpu"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["count", str(folder / "a.tif"), "--diameter", "-4"])
    assert exc.value.code == 2
    seg = _save_tiny("cli-seg", "segment")
    assert main(["count", str(folder / "a.tif"), "--model", seg, "--device", "cpu"]) == 2
    assert "segment" in capsys.readouterr().err
    # an image that does not fit --axes is skipped with a reason, the rest still counted
    tifffile.imwrite(folder / "odd.tif", np.zeros((2, 3, 40, 50), np.uint16))
    out = tmp_path / "c.csv"
    rc = main(
        ["count", str(folder / "odd.tif"), str(folder / "stack.tif"), "--model", model,
         "--csv", str(out), "--axes", "TYX", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 2
    assert [Path(r["file"]).name for r in _rows(out.read_text())] == ["stack.tif"] * 3
    err = capsys.readouterr().err
    assert "odd.tif" in err and "dimensions" in err


def test_segment_labels_dir(folder, tmp_path, capsys):
    model = _save_tiny("cli-seg", "segment")
    out = tmp_path / "seg.csv"
    labels_dir = tmp_path / "labels"
    rc = main(
        [
            "segment",
            str(folder),
            "--model",
            model,
            "--csv",
            str(out),
            "--labels-dir",
            str(labels_dir),
            "--device",
            "cpu",
        ]
    )
    assert rc == 2  # broken.tif
    rows = _rows(out.read_text())
    assert out.read_text().splitlines()[0] == "file,frame,count"
    assert len(rows) == 5 and all(r["count"].isdigit() for r in rows)
    lab = tifffile.imread(labels_dir / "stack_labels.tif")
    assert lab.shape == (3, 96, 112) and lab.dtype == np.int32
    assert [int(lab[k].max()) for k in range(3)] == [int(r["count"]) for r in rows[2:]]


def test_sample_data_folder_if_present(capsys):
    sample = Path(__file__).resolve().parents[1] / "sample_data"
    if not any(sample.glob("*.tif")):
        pytest.skip("sample_data has no images")
    model = _save_tiny("cli-count", "count")
    rc = main(["count", str(sample), "--model", model, "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = _rows(captured.out)
    assert rows and all(Path(r["file"]).suffix.lower() in (".tif", ".tiff", ".png") for r in rows)
