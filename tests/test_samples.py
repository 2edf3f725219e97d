"""Sample-data contributions: files present, small, valid layer data, counts recorded."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from napari_nalu_count.sample_data import SAMPLE_DIR, sample_path

from napari_nalu_count import _sample_data

SAMPLES = [
    "bbbc039_crop",
    "bbbc039_large",
    "synthetic_low",
    "synthetic_high",
    "synthetic_timelapse",
]


def test_sample_folder_is_small_and_documented():
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir() if p.is_file())
    assert total < 2 * 1024 * 1024
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "CC0" in readme and "Caicedo" in readme and _sample_data.BBBC039_IMAGE in readme


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_functions_return_layer_data(name):
    layers = getattr(_sample_data, name)()
    assert layers and layers[0][2] == "image"
    image, meta, _ = layers[0]
    assert np.issubdtype(image.dtype, np.integer) and image.ndim in (2, 3)
    assert min(image.shape[-2:]) >= 256 and image.std() > 0
    assert meta["name"]
    for data, _meta, kind in layers[1:]:
        assert kind == "points" and data.shape[1] == image.ndim
        assert np.all((data >= 0) & (data < np.array(image.shape)))


def test_counts_csv_matches_samples():
    rows = {r["file"]: int(r["count"]) for r in csv.DictReader(sample_path("counts.csv").open())}
    assert rows["bbbc039_crop256.tif"] == 47 and rows["bbbc039_crop512.tif"] == 155
    for file, kwargs in _sample_data.SYNTHETIC.items():
        assert rows[file] == kwargs["n_cells"]
        assert sample_path(file).is_file()
    dots = _sample_data.synthetic_low()[1][0]
    assert len(dots) == rows["synthetic_low.tif"]
    frames = list(csv.DictReader(sample_path("timelapse_counts.csv").open()))
    stack_dots = _sample_data.synthetic_timelapse()[1][0]
    for row in frames:
        assert int(row["count"]) == int(np.sum(stack_dots[:, 0] == int(row["frame"])))


def test_bbbc039_count_from_masks(shared_data):
    """The recorded ground truth is the mask's nuclei count in the crop box."""
    import imageio.v3 as iio

    mask_path = shared_data / "bbbc039" / "masks" / f"{_sample_data.BBBC039_IMAGE}.png"
    if not mask_path.is_file():
        pytest.skip("BBBC039 masks not present")
    from scipy import ndimage as ndi

    red = iio.imread(mask_path)[..., 0]
    four = ndi.generate_binary_structure(2, 1)
    r0, r1, c0, c1 = _sample_data.BBBC039_CROPS["bbbc039_crop256.tif"]
    crop = red[r0:r1, c0:c1]
    n = sum(ndi.label(crop == v, structure=four)[1] for v in (1, 2, 3))
    assert n == 47


def test_manifest_lists_samples_and_widgets():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-nalu-count")
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == set(SAMPLES)
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {
        "Count cells",
        "Segment cells",
        "Count in regions",
        "Fine-tune model",
        "Run on folder",
    }


@pytest.mark.gui
def test_open_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nalu-count", "synthetic_timelapse")
    assert viewer.layers[0].data.shape == (5, 256, 256)
    assert not viewer.layers[1].visible
