"""Readers: images, points CSV, label images, BBBC039 and VGG layouts (tiny fixtures).

Tests marked with the ``shared_data`` fixture read the real data sets beside the checkout and
skip cleanly when they are absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from napari_nalu_count.data.readers import (
    Sample,
    load_bbbc039,
    load_labels_sample,
    load_points_sample,
    load_vgg,
    read_image,
    read_labels,
    read_points_csv,
    vgg_dots_from_rgb,
    write_points_csv,
)
from napari_nalu_count.errors import InputError

# ------------------------------------------------------------------------------------- images


def test_read_tiff_2d_and_stack(tmp_path):
    img = np.arange(30, dtype=np.uint16).reshape(5, 6)
    tifffile.imwrite(tmp_path / "a.tif", img)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)

    stack = np.arange(3 * 5 * 6, dtype=np.uint16).reshape(3, 5, 6)
    with tifffile.TiffWriter(tmp_path / "s.tiff") as tw:
        for page in stack:
            tw.write(page)
    np.testing.assert_array_equal(read_image(str(tmp_path / "s.tiff")), stack)


def test_read_png(tmp_path):
    img = (np.arange(48) * 5).astype(np.uint8).reshape(6, 8)
    skio.imsave(tmp_path / "a.png", img, check_contrast=False)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputError, match="unsupported image format"):
        read_image(tmp_path / "x.gif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="cannot read image"):
        read_image(tmp_path / "bad.tif")
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


# ------------------------------------------------------------------------------------- points


def test_read_points_csv_napari_format(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("index,axis-0,axis-1\n0,1.5,2.25\n1,10.0,3.0\n")
    pts = read_points_csv(p)
    assert pts.dtype == np.float64
    np.testing.assert_allclose(pts, [[1.5, 2.25], [10.0, 3.0]])


def test_read_points_csv_napari_3d_and_ndim_check(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("index,axis-0,axis-1,axis-2\n0,2,1.5,2.5\n")
    np.testing.assert_allclose(read_points_csv(p), [[2, 1.5, 2.5]])
    np.testing.assert_allclose(read_points_csv(p, ndim=3), [[2, 1.5, 2.5]])
    with pytest.raises(InputError, match="3 coordinate column"):
        read_points_csv(p, ndim=2)


@pytest.mark.parametrize(
    "text",
    [
        "y,x\n1,2\n3,4\n",
        "x,y\n2,1\n4,3\n",
        "axis-0,axis-1\n1,2\n3,4\n",
        "axis-1,axis-0,label\n2,1,a\n4,3,b\n",
        "1,2\n3,4\n",
        "\ufeffY, X\n1,2\n\n3,4\n",
    ],
)
def test_read_points_csv_variants(tmp_path, text):
    p = tmp_path / "pts.csv"
    p.write_text(text, encoding="utf-8")
    np.testing.assert_allclose(read_points_csv(p), [[1, 2], [3, 4]])


def test_read_points_csv_empty_and_errors(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("index,axis-0,axis-1\n")
    assert read_points_csv(p).shape == (0, 2)
    p.write_text("")
    assert read_points_csv(p).shape == (0, 2)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="unrecognised header"):
        read_points_csv(p)
    p.write_text("y,x\n1,oops\n")
    with pytest.raises(InputError, match="row 1"):
        read_points_csv(p)
    p.write_text("y,x\n1,nan\n")
    with pytest.raises(InputError, match="NaN"):
        read_points_csv(p)
    with pytest.raises(InputError, match="not found"):
        read_points_csv(tmp_path / "nope.csv")


def test_write_then_read_points_roundtrip(tmp_path):
    pts = np.array([[0.125, 3.5], [7.0, 1e-3]])
    path = write_points_csv(tmp_path / "out.csv", pts)
    assert path.read_text().splitlines()[0] == "index,axis-0,axis-1"
    np.testing.assert_array_equal(read_points_csv(path), pts)


def test_load_points_sample_checks_bounds(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((10, 12), np.uint16))
    (tmp_path / "ok.csv").write_text("index,axis-0,axis-1\n0,9.2,11.4\n1,0,0\n")
    s = load_points_sample(tmp_path / "img.tif", tmp_path / "ok.csv")
    assert isinstance(s, Sample) and s.count == 2 and s.name == "img"
    (tmp_path / "bad.csv").write_text("y,x\n10.6,1\n")
    with pytest.raises(InputError, match="outside"):
        load_points_sample(tmp_path / "img.tif", tmp_path / "bad.csv")


# ------------------------------------------------------------------------------- label images


def test_read_labels_and_labels_sample(tmp_path):
    lab = np.zeros((10, 12), np.uint16)
    lab[1:4, 1:4] = 40
    lab[6:9, 6:10] = 7
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    tifffile.imwrite(tmp_path / "img.tif", np.ones((10, 12), np.uint16))
    out = read_labels(tmp_path / "lab.tif")
    assert out.dtype == np.int32 and out.max() == 2
    s = load_labels_sample(tmp_path / "img.tif", tmp_path / "lab.tif")
    assert s.count == 2 and s.labels.shape == (10, 12)
    np.testing.assert_allclose(s.dots, [[7.0, 7.5], [2.0, 2.0]])
    tifffile.imwrite(tmp_path / "small.tif", np.ones((5, 5), np.uint16))
    with pytest.raises(InputError, match="shape"):
        load_labels_sample(tmp_path / "small.tif", tmp_path / "lab.tif")


def test_read_labels_painted_rgba(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1:4, 1:4, 0] = 1
    rgba[1:4, 4:7, 0] = 2
    rgba[6, 6, 0] = 1
    skio.imsave(tmp_path / "m.png", rgba, check_contrast=False)
    assert read_labels(tmp_path / "m.png").max() == 2  # plain ids: values 1 and 2
    assert read_labels(tmp_path / "m.png", split_painted=True).max() == 3
    assert read_labels(tmp_path / "m.png", split_painted=True, min_size=2).max() == 2


# ------------------------------------------------------------------------ BBBC039 / VGG layouts


def _fake_bbbc039(root: Path) -> Path:
    base = root / "bbbc039"
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    for k, name in enumerate(["imgA", "imgB", "imgC"]):
        tifffile.imwrite(base / "images" / f"{name}.tif", np.full((16, 20), k + 1, np.uint16))
        m = np.zeros((16, 20, 4), np.uint8)
        m[..., 3] = 255
        m[2:6, 2:6, 0] = 1
        m[2:6, 6:10, 0] = 2  # touching, painted differently
        m[10:14, 2:6, 0] = 1
        m[12, 15, 0] = 3  # a 1-pixel micronucleus
        m[: k + 1, 19, 0] = 1 if k else 0  # extra objects differ per image
        skio.imsave(base / "masks" / f"{name}.png", m, check_contrast=False)
    (base / "train.txt").write_text("imgA.png\nimgB\n")
    (base / "val.txt").write_text("imgC\n")
    return base


def test_load_bbbc039_fixture(tmp_path):
    base = _fake_bbbc039(tmp_path)
    for root in (tmp_path, base):
        train = load_bbbc039(root, "train")
        assert [s.name for s in train] == ["imgA", "imgB"]
    s = train[0]
    assert s.image.dtype == np.uint16 and s.image.shape == (16, 20)
    assert s.labels.dtype == np.int32 and s.count == 4 and s.labels.max() == 4
    assert load_bbbc039(base, "train")[1].count == 5
    assert load_bbbc039(base, "train", min_size=2)[0].count == 3  # micronucleus dropped
    assert [s.name for s in load_bbbc039(base, "val")] == ["imgC"]
    assert len(load_bbbc039(base, "all")) == 3
    assert len(load_bbbc039(base, "all", limit=2)) == 2
    assert [s.name for s in load_bbbc039(base, names=["imgC"])] == ["imgC"]
    with pytest.raises(InputError, match="split"):
        load_bbbc039(base, "test")
    with pytest.raises(InputError, match="not found"):
        load_bbbc039(tmp_path / "nowhere")


def _fake_vgg(root: Path, counts: dict[int, int]) -> Path:
    base = root / "vgg_cells"
    base.mkdir()
    rng = np.random.default_rng(0)
    for i, n in counts.items():
        cell = np.zeros((16, 16, 3), np.uint8)
        cell[..., 2] = rng.integers(0, 255, (16, 16))
        cell[..., 0] = 9  # weak red/green noise as in the real files
        skio.imsave(base / f"{i:03d}cell.png", cell, check_contrast=False)
        dots = np.zeros((16, 16, 3), np.uint8)
        flat = rng.choice(256, size=n, replace=False)
        dots.reshape(-1, 3)[flat] = (255, 0, 0)
        skio.imsave(base / f"{i:03d}dots.png", dots, check_contrast=False)
    return base


def test_load_vgg_fixture(tmp_path):
    base = _fake_vgg(tmp_path, {1: 5, 2: 9})
    samples = load_vgg(tmp_path, [1, 2])
    assert [s.name for s in samples] == ["001", "002"]
    assert [s.count for s in samples] == [5, 9]
    s = samples[0]
    assert s.image.shape == (16, 16) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.image, read_image(base / "001cell.png")[..., 2])
    with pytest.raises(InputError, match="not found"):
        load_vgg(tmp_path, [3])


def test_vgg_dot_rule():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 2] = (255, 0, 0)
    rgb[3, 0] = (250, 3, 1)  # re-encoded red still counts
    rgb[0, 0] = (255, 255, 255)  # white is not a dot
    rgb[2, 2] = (60, 0, 0)  # dark red is not a dot
    np.testing.assert_array_equal(vgg_dots_from_rgb(rgb), [[1, 2], [3, 0]])
    with pytest.raises(InputError, match="RGB"):
        vgg_dots_from_rgb(np.zeros((4, 4)))


# -------------------------------------------------------------------- real data (../shared)


@pytest.mark.slow
def test_bbbc039_real_counts(shared_data):
    val = load_bbbc039(shared_data, "val", limit=6)
    assert len(val) == 6
    for s in val:
        assert s.image.shape == (520, 696) and s.image.dtype == np.uint16
        assert s.count == s.labels.max() == len(np.unique(s.labels)) - 1
        assert 0 <= s.count <= 260
    counts = [s.count for s in load_bbbc039(shared_data, "train")]
    assert len(counts) == 110
    assert 95 <= np.mean(counts) <= 135  # README: about 115 nuclei per image
    assert max(counts) <= 260


def test_vgg_real_counts(shared_data):
    samples = load_vgg(shared_data)
    counts = np.array([s.count for s in samples])
    assert len(samples) == 200
    assert counts.min() == 74 and counts.max() == 317
    assert abs(counts.mean() - 176) < 1.0
    assert samples[0].image.shape == (256, 256)


def test_read_tiff_single_series_stack(tmp_path):
    stack = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    tifffile.imwrite(tmp_path / "one.tif", stack, imagej=True)
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), stack)


def test_load_label_folder_layout(tmp_path):
    """images/NAME.png + labels/NAME.tif + split files (the DSB 2018 / Aitslab layout)."""
    import tifffile
    from skimage import io as skio

    from napari_nalu_count.data import load_aitslab, load_dsb2018, load_label_folder

    root = tmp_path / "dsb2018_train"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("a", 3), ("b", 1)):
        lab = np.zeros((40, 50), np.uint16)
        for k in range(n):
            lab[5 + 10 * k : 11 + 10 * k, 5:11] = 7 * (k + 1)  # non-sequential ids
        lab[30, 40] = 99  # a 1-pixel fragment
        img = (rng.random((40, 50)) * 50 + (lab > 0) * 150).astype(np.uint8)
        skio.imsave(root / "images" / f"{name}.png", np.dstack([img] * 3), check_contrast=False)
        tifffile.imwrite(root / "labels" / f"{name}.tif", lab)
    (root / "train.txt").write_text("a\n")
    (root / "val.txt").write_text("b\n")

    tr = load_dsb2018(tmp_path, "train")
    assert [s.name for s in tr] == ["a"]
    assert tr[0].image.shape == (40, 50)  # grey stored as RGB comes back 2-D
    assert tr[0].labels.max() == 4 and len(tr[0].dots) == 4
    big = load_label_folder(root, "train", min_size=4)
    assert big[0].labels.max() == 3 and big[0].meta["diameter"] == pytest.approx(
        np.sqrt(4 * 36 / np.pi)
    )
    assert [s.name for s in load_label_folder(root, "all")] == ["a", "b"]
    with pytest.raises(InputError, match="split file missing"):
        load_label_folder(root, "test")
    with pytest.raises(InputError, match="not found"):
        load_aitslab(tmp_path / "nowhere")
