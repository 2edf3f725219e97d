"""Export functions (npe2 writer signature): Points -> CSV, Labels -> TIFF and ImageJ ROIs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_nalu_count import _writers


def _blobs(shape=(64, 80), seed=0) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    sample = synthetic_cells(shape, n_cells=10, diameter=12.0, seed=seed, elongation=(1.0, 2.0))
    return sample.labels


def test_points_csv_2d_with_features(tmp_path):
    pts = np.array([[1.5, 2.25], [10.0, 3.0]])
    feats = pd.DataFrame({"mass": [0.9, 1.1], "kind": ["a", "b"]})
    (out,) = _writers.write_points_csv(str(tmp_path / "p.csv"), pts, {"features": feats})
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["frame", "y", "x", "mass", "kind"]
    assert rows[1] == ["0", "1.5", "2.25", "0.9", "a"]
    assert rows[2][:3] == ["0", "10.0", "3.0"]


def test_points_csv_stacks_frames_and_volume_points(tmp_path):
    tzyx = np.array([[0, 1, 5.0, 6.0], [1, 2, 7.0, 8.0]])
    (out,) = _writers.write_points_csv(
        str(tmp_path / "t.csv"), tzyx, {"metadata": {"stack_shape": (2, 3)}}
    )
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["frame", "y", "x", "axis-0", "axis-1"]
    assert [r[0] for r in rows[1:]] == ["1", "5"]  # t * nz + z
    tyx = np.array([[2, 5.0, 6.0]])
    (out,) = _writers.write_points_csv(str(tmp_path / "s.csv"), tyx, {})
    assert list(csv.reader(open(out)))[1] == ["2", "5.0", "6.0"]
    zyx = np.array([[2.4, 5.0, 6.0]])  # a volume point: z is not a whole plane
    (out,) = _writers.write_points_csv(str(tmp_path / "v.csv"), zyx, {})
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["frame", "y", "x", "axis-0"] and rows[1] == ["2", "5.0", "6.0", "2.4"]
    (out,) = _writers.write_points_csv(str(tmp_path / "e.csv"), np.zeros((0, 2)), {})
    assert open(out).read() == "frame,y,x\n"


def test_labels_tiff_round_trip_and_multiscale(tmp_path):
    lab = np.stack([_blobs(seed=1), _blobs(seed=2)]).astype(np.uint16)
    (out,) = _writers.write_labels_tiff(str(tmp_path / "l.tif"), lab, {})
    back = tifffile.imread(out)
    assert back.dtype == np.int32 and back.shape == lab.shape
    np.testing.assert_array_equal(back, lab)
    (out,) = _writers.write_labels_tiff(str(tmp_path / "m.tif"), [lab[0], lab[0][::2, ::2]], {})
    np.testing.assert_array_equal(tifffile.imread(out), lab[0])


def _polygon_mask(poly_xy: np.ndarray, shape) -> np.ndarray:
    """Pixels whose centre lies inside the ImageJ polygon (how ImageJ makes a mask)."""
    from matplotlib.path import Path as MPath

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    return MPath(poly_xy).contains_points(centres).reshape(shape)


def test_imagej_roi_set_reads_back_and_encloses_every_object(tmp_path):
    import roifile

    lab = np.stack([_blobs(seed=3), _blobs(seed=4)])
    (out,) = _writers.write_labels_imagej_rois(str(tmp_path / "rois.zip"), lab, {})
    rois = roifile.roiread(out)
    expected = sum(len(np.unique(p)) - 1 for p in lab)
    assert len(rois) == expected
    for roi in rois:
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        frame, value = (int(v) for v in roi.name.split("-"))
        assert roi.position == frame  # 1-based stack position
        plane = lab[frame - 1]
        obj = plane == value
        inside = _polygon_mask(roi.coordinates(), plane.shape)
        # every pixel of the object is inside its polygon, and nothing of other objects
        # except where a piece of the object is cut off (the largest piece is written)
        from scipy import ndimage as ndi

        pieces, n = ndi.label(obj)
        biggest = pieces == (np.argmax(np.bincount(pieces.ravel())[1:]) + 1) if n else obj
        assert inside[biggest].all(), roi.name
        iou = (inside & obj).sum() / (inside | obj).sum()
        assert iou > 0.9, (roi.name, iou)
    # a 2-D label image: no stack position; a single-pixel object still gets a ROI
    one = np.zeros((5, 5), dtype=np.int32)
    one[2, 3] = 9
    (out,) = _writers.write_labels_imagej_rois(str(tmp_path / "one.zip"), one, {})
    (roi,) = roifile.roiread(out)
    assert roi.position == 0 and _polygon_mask(roi.coordinates(), one.shape)[2, 3]
    assert _polygon_mask(roi.coordinates(), one.shape).sum() == 1
    # writing again replaces the set instead of appending to it
    (out,) = _writers.write_labels_imagej_rois(str(tmp_path / "one.zip"), one, {})
    assert len(roifile.roiread(out)) == 1


def test_writers_need_no_napari_at_import():
    import subprocess
    import sys

    code = "import sys, napari_nalu_count._writers; print('napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_manifest_declares_the_writers():
    """napari.yaml holds the writer entries (the ones ``_writers.MANIFEST_*`` list and
    docs/internals.md shows), it validates, and each writer resolves to its function."""
    import importlib

    import yaml
    from npe2 import PluginManifest

    src = Path(_writers.__file__).with_name("napari.yaml")
    manifest = yaml.safe_load(src.read_text())
    pm = PluginManifest(**manifest)
    commands = {c["id"]: c for c in manifest["contributions"]["commands"]}
    for entry in _writers.MANIFEST_COMMANDS:
        assert commands[entry["id"]] == entry
    assert manifest["contributions"]["writers"] == _writers.MANIFEST_WRITERS
    for c in pm.contributions.commands:
        if c.id in {w.command for w in pm.contributions.writers}:
            module, name = c.python_name.split(":")
            assert callable(getattr(importlib.import_module(module), name))


def test_bad_inputs_raise_input_error(tmp_path):
    from napari_nalu_count.errors import InputError

    with pytest.raises(InputError):
        _writers.write_points_csv(str(tmp_path / "x.csv"), np.zeros(3), {})
    with pytest.raises(InputError):
        _writers.write_labels_tiff(str(tmp_path / "x.tif"), np.zeros((4, 4), np.float32), {})
