"""count(..., uncertainty=True) and suggest_regions: shapes, invariants, the default path."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_nalu_count
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import InputError
from napari_nalu_count.infer import count
from napari_nalu_count.infer import uncertainty as unc
from napari_nalu_count.infer.uncertainty import Calibration, best_boxes, calibration_for


@pytest.fixture(scope="module")
def image():
    return synthetic_cells((160, 200), n_cells=40, diameter=14.0, seed=3).image


def test_default_count_has_no_uncertainty(image):
    res = count(image, device="cpu")
    assert res.count_sd is None and res.uncertainty is None and res.uncertainty_info is None
    assert res.plane_sd is None


def test_uncertainty_2d(image):
    plain = count(image, device="cpu")
    res = count(image, device="cpu", uncertainty=True)
    # asking for the error bar never changes the count, the density or the points
    assert res.count == pytest.approx(plain.count, rel=1e-6)
    np.testing.assert_allclose(res.density, plain.density, rtol=1e-5, atol=1e-7)
    assert isinstance(res.count_sd, float) and res.count_sd > 0
    assert res.uncertainty.shape == image.shape and res.uncertainty.dtype == np.float32
    assert np.all(res.uncertainty >= 0) and res.uncertainty.sum() > 0
    info = res.uncertainty_info
    assert len(info["tta_counts"]) == 1 and len(info["tta_counts"][0]) == len(unc.TTA) + 1
    assert info["tta_counts"][0][0] == pytest.approx(res.count, rel=1e-6)
    cal = info["calibration"]
    want = Calibration(cal["tta"], cal["rel"], cal["abs"]).count_sd(info["tta_sd"][0], res.count)
    assert res.count_sd == pytest.approx(want)


def test_uncertainty_stack_per_plane(image):
    other = synthetic_cells((160, 200), n_cells=10, diameter=14.0, seed=4).image
    stack = np.stack([image, other, np.zeros_like(image)])
    res = count(stack, axes="TYX", device="cpu", uncertainty=True, diameter=14.0)
    assert res.count_sd.shape == (3,) and res.uncertainty.shape == stack.shape
    assert np.all(res.count_sd[:2] > 0)
    assert res.plane_sd.shape == (3,)
    assert res.uncertainty[2].max() == 0  # an empty plane: no augmentation disagreement


def test_uncertainty_progress_and_flag_checks(image):
    seen = []
    count(image, device="cpu", uncertainty=True, progress=lambda d, t, m: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    with pytest.raises(InputError, match="uncertainty"):
        count(image, device="cpu", uncertainty="yes")
    with pytest.raises(InputError, match="block"):
        count(image, device="cpu", uncertainty=True, block_size=128)


def test_calibration_form():
    cal = Calibration(tta=2.0, rel=0.1, abs=1.0)
    assert cal.count_sd(3.0, 100.0) == pytest.approx(np.sqrt(36 + 100 + 1))
    m = cal.sd_map(np.ones((2, 2), np.float32), np.full((2, 2), 0.5, np.float32))
    np.testing.assert_allclose(m, np.sqrt(4 + 0.0025), rtol=1e-6)


def test_calibration_file_matches_by_weights(tmp_path, monkeypatch):
    path = tmp_path / "cal.json"
    path.write_text(
        json.dumps(
            {
                "default": {"tta": 2.0, "rel": 0.05, "abs": 1.0},
                "models": [{"name": "m", "weights_sha256": "abc", "tta": 3.0, "rel": 0.1}],
            }
        )
    )
    monkeypatch.setattr(unc, "CALIBRATION_FILE", path)
    hit = calibration_for(type("L", (), {"card": {"weights_sha256": "abc", "name": "m"}})())
    assert (hit.tta, hit.rel, hit.abs) == (3.0, 0.1, 0.0) and "calibrated" in hit.source
    miss = calibration_for(type("L", (), {"card": {"weights_sha256": "zzz", "name": "x"}})())
    assert (miss.tta, miss.rel, miss.abs) == (2.0, 0.05, 1.0) and "default" in miss.source


def test_bundled_counter_has_a_fitted_calibration():
    from napari_nalu_count.models import load_model

    cal = calibration_for(load_model("nuclei-count"))
    assert cal.tta >= 1.0 and cal.rel >= 0 and cal.abs >= 0
    assert cal.source != "uncalibrated"


def test_best_boxes_non_overlapping_inside_and_greedy():
    score = np.zeros((300, 400))
    score[200:220, 300:320] = 5.0  # the hottest spot
    score[10:30, 10:30] = 1.0
    boxes = best_boxes(score, 3, 64)
    assert len(boxes) == 3
    y0, x0, y1, x1 = boxes[0]
    assert y0 <= 200 and y1 >= 220 and x0 <= 300 and x1 >= 320
    for b in boxes:
        assert 0 <= b[0] < b[2] <= 300 and 0 <= b[1] < b[3] <= 400
        assert b[2] - b[0] == 64 and b[3] - b[1] == 64
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = boxes[i], boxes[j]
            overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
            assert not overlap
    # the image is smaller than a box: one clipped box, no more fit
    assert best_boxes(np.ones((50, 60)), 3, 256) == [(0, 0, 50, 60)]


def test_suggest_regions_api(image):
    assert "suggest_regions" in napari_nalu_count.__all__
    res = count(image, device="cpu", uncertainty=True)
    boxes = napari_nalu_count.suggest_regions(image, n=2, size=64, result=res)
    assert len(boxes) == 2
    # the first box holds the largest integral of the map among all 64 px boxes
    ii = res.uncertainty.astype(np.float64)
    y0, x0, y1, x1 = boxes[0]
    best = max(
        ii[y : y + 64, x : x + 64].sum()
        for y in range(0, 160 - 63, 8)
        for x in range(0, 200 - 63, 8)
    )
    assert ii[y0:y1, x0:x1].sum() >= best - 1e-6
    again = napari_nalu_count.suggest_regions(image, n=2, size=64, device="cpu")
    assert again == boxes
    with pytest.raises(InputError):
        napari_nalu_count.suggest_regions(image, n=0, size=64, result=res)
    with pytest.raises(InputError, match="uncertainty=True"):
        napari_nalu_count.suggest_regions(image, result=count(image, device="cpu"))
