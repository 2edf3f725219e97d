"""Axes from file metadata: ImageJ hyperstacks, OME-TIFF, bare multi-page TIFFs, PNG.

The CLI (and ``count(path)``) must take a stack's pages as frames (one row each) and only treat
planes as colour channels when the file says so.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_nalu_count.cli import main
from napari_nalu_count.data.readers import file_axes, read_image, read_image_axes


def _save_tiny(name: str = "axes-count") -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    net = build_model({"architecture": "fcrn_a", "widths": [4, 4, 8, 8]})
    save_model(net, make_card(name, "count", net.config, diameter=12.0), name)
    return name


def _planes(n: int, shape=(48, 40)) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return np.stack(
        [synthetic_cells(shape, n_cells=4 + 3 * k, diameter=10.0, seed=k).image for k in range(n)]
    )


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _write_bare(path: Path, stack: np.ndarray, how: str) -> None:
    """Multi-page files as tifffile writes them without being told what the planes are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if how == "default":  # 3 and 4 planes end up as planar RGB(A) samples, 'SYX'
            tifffile.imwrite(path, stack)
        elif how == "minisblack":  # one page per plane, 'QYX'
            tifffile.imwrite(path, stack, photometric="minisblack")
        elif how == "no-metadata":  # no shape description at all
            tifffile.imwrite(path, stack, metadata=None)
        elif how == "appended":  # written page by page, 'IYX'
            for k, plane in enumerate(stack):
                tifffile.imwrite(path, plane, append=k > 0, metadata=None)
        else:  # pragma: no cover
            raise AssertionError(how)


# ------------------------------------------------------------------------------------------
# the reader


@pytest.mark.parametrize("how", ["default", "minisblack", "no-metadata", "appended"])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_bare_multipage_tiff_pages_are_frames(tmp_path, n, how):
    stack = _planes(n)
    path = tmp_path / f"bare{n}.tif"
    _write_bare(path, stack, how)
    image, axes = read_image_axes(path)
    assert axes == "TYX"
    assert image.shape == stack.shape
    np.testing.assert_array_equal(image, stack)


@pytest.mark.parametrize(
    "axes, shape",
    [("TYX", (3, 32, 30)), ("ZYX", (4, 32, 30)), ("TZYX", (2, 3, 32, 30)), ("CYX", (3, 32, 30))],
)
def test_imagej_hyperstack_axes(tmp_path, axes, shape):
    data = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    image, got = read_image_axes(path)
    assert got == axes
    np.testing.assert_array_equal(image, data)


@pytest.mark.parametrize("axes, shape", [("TZYX", (2, 3, 32, 30)), ("TYX", (4, 32, 30))])
def test_ome_tiff_axes(tmp_path, axes, shape):
    data = np.random.default_rng(1).integers(0, 4000, shape, dtype=np.uint16)
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": axes})
    image, got = read_image_axes(path)
    assert got == axes
    np.testing.assert_array_equal(image, data)


def test_rgb_pixels_are_channels_and_tzyx_frames_merge(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (32, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert read_image_axes(tmp_path / "rgb.tif")[1] == "YXC"
    tifffile.imwrite(tmp_path / "rgbt.tif", np.stack([rgb] * 4), photometric="rgb")
    image, axes = read_image_axes(tmp_path / "rgbt.tif")
    assert axes == "TYXC" and image.shape == (4, 32, 30, 3)
    # a plain 4-D array: tifffile says 'QSYX' (Q pages, planar S); both are frames, merged in
    # C order, so frame k is plane k of the flattened stack
    tz = np.arange(2 * 3 * 8 * 6, dtype=np.uint16).reshape(2, 3, 8, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(tmp_path / "tz.tif", tz)
    image, axes = read_image_axes(tmp_path / "tz.tif")
    assert axes == "TYX"
    np.testing.assert_array_equal(image, tz.reshape(6, 8, 6))
    # read_image keeps the array as stored
    assert read_image(tmp_path / "tz.tif").shape == (2, 3, 8, 6)


def test_png_axes(tmp_path):
    from skimage import io as skio

    grey = np.random.default_rng(3).integers(0, 255, (20, 24), dtype=np.uint8)
    skio.imsave(tmp_path / "g.png", grey, check_contrast=False)
    skio.imsave(tmp_path / "c.png", np.stack([grey] * 3, -1), check_contrast=False)
    assert read_image_axes(tmp_path / "g.png")[1] == "YX"
    assert read_image_axes(tmp_path / "c.png")[1] == "YXC"


def test_file_axes_rules():
    assert file_axes("SYX", (3, 8, 8)) == ("TYX", (3, 8, 8))  # planar samples: frames
    assert file_axes("YXS", (8, 8, 3)) == ("YXC", (8, 8, 3))  # samples per pixel: colour
    assert file_axes("QQYX", (2, 3, 8, 8)) == ("TYX", (6, 8, 8))
    assert file_axes("TZCYX", (2, 3, 4, 8, 8)) == ("TZCYX", (2, 3, 4, 8, 8))
    assert file_axes("IYX", (5, 8, 8)) == ("TYX", (5, 8, 8))
    assert file_axes("CYXS", (5, 8, 8, 3)) is None  # two colour axes: cannot say
    assert file_axes("YX", (8, 8, 1)) is None  # does not fit the array
    assert file_axes("QZQYX", (2, 3, 2, 8, 8)) is None  # frame axes apart


# ------------------------------------------------------------------------------------------
# the command line and count(path)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_cli_counts_one_row_per_page_of_bare_files(tmp_path, capsys, n):
    model = _save_tiny()
    stack = _planes(n)
    folder = tmp_path / "in"
    folder.mkdir()
    for how in ("default", "minisblack", "no-metadata", "appended"):
        _write_bare(folder / f"{how}.tif", stack, how)
    rc = main(["count", str(folder), "--model", model, "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = _rows(out)
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(Path(r["file"]).name, []).append(r)
    assert sorted(by_file) == ["appended.tif", "default.tif", "minisblack.tif", "no-metadata.tif"]
    for name, file_rows in by_file.items():
        assert [r["frame"] for r in file_rows] == [str(k) for k in range(n)], name
    # every file holds the same planes, so every file gets the same counts
    first = [r["count"] for r in by_file["minisblack.tif"]]
    for file_rows in by_file.values():
        assert [r["count"] for r in file_rows] == first
    # and each row is that plane counted on its own
    (one,) = _rows(
        _run_capture(capsys, ["count", _single(tmp_path, stack[n - 1]), "--model", model])
    )
    assert one["count"] == first[n - 1]


def _single(tmp_path: Path, plane: np.ndarray) -> str:
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, plane)
    return str(path)


def _run_capture(capsys, argv: list[str]) -> str:
    assert main([*argv, "--device", "cpu"]) == 0
    return capsys.readouterr().out


def test_cli_imagej_and_ome_stacks(tmp_path, capsys):
    model = _save_tiny()
    tz = _planes(6).reshape(2, 3, 48, 40)
    tifffile.imwrite(tmp_path / "ij_tz.tif", tz, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "ome_t.ome.tif", tz[0], ome=True, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "ij_z.tif", tz[1], imagej=True, metadata={"axes": "ZYX"})
    out = _run_capture(capsys, ["count", str(tmp_path / "*.tif"), "--model", model])
    rows = _rows(out)
    names = [Path(r["file"]).name for r in rows]
    assert names == ["ij_tz.tif"] * 6 + ["ij_z.tif"] * 3 + ["ome_t.ome.tif"] * 3
    counts = [r["count"] for r in rows]
    assert counts[6:9] == counts[3:6]  # ij_z holds the second time point's three slices
    assert counts[9:12] == counts[0:3]  # the OME file holds the first time point's


def test_cli_channels_only_when_the_file_says_so(tmp_path, capsys):
    model = _save_tiny()
    planes = _planes(3)
    tifffile.imwrite(tmp_path / "ch.tif", planes, imagej=True, metadata={"axes": "CYX"})
    # the file says 3 channels: the user must choose one; the reason names the option
    assert main(["count", str(tmp_path / "ch.tif"), "--model", model, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "3 channels" in err and "--channel" in err
    out = _run_capture(capsys, ["count", str(tmp_path / "ch.tif"), "--model", model,
                                "--channel", "1"])  # fmt: skip
    (row,) = _rows(out)
    single = _rows(_run_capture(capsys, ["count", _single(tmp_path, planes[1]), "--model", model]))
    assert row["count"] == single[0]["count"]
    # --axes overrides the file: the same file read as a 3-frame stack
    out = _run_capture(capsys, ["count", str(tmp_path / "ch.tif"), "--model", model,
                                "--axes", "TYX"])  # fmt: skip
    assert len(_rows(out)) == 3


def test_count_accepts_a_path_with_the_files_axes(tmp_path):
    from napari_nalu_count import count

    model = _save_tiny()
    stack = _planes(3)
    path = tmp_path / "s.tif"
    _write_bare(path, stack, "default")  # 'SYX' in the file: frames
    by_path = count(path, model, device="cpu")
    by_array = count(stack, model, axes="TYX", device="cpu")
    assert by_path.axes == "TYX"
    np.testing.assert_allclose(by_path.count, by_array.count, rtol=1e-6)
    # a str works too, and axes= describes the array as stored
    as_str = count(str(path), model, axes="ZYX", device="cpu")
    assert as_str.axes == "ZYX" and len(as_str.count) == 3
