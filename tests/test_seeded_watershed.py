"""The seeded watershed floods only components with two or more seeds and gives
``skimage.segmentation.watershed``'s labels (issue 17, round 11): bit for bit when the seeds'
elevations do not tie; with ties (plateaus) scikit-image's heap pops equal seeds in an order
that depends on every seed in the plane, so there only the components with one seed or none
must agree and every seed must keep its own pixel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from napari_nalu_count.infer import postprocess as post


def _case(seed: int):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(8, 180, 2))
    field = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(1.0, 6.0))
    foreground = field > np.quantile(field, rng.uniform(0.3, 0.8))
    elevation = -ndi.gaussian_filter(rng.random((h, w)), 2.0).astype(np.float32)
    if seed % 3 == 0:  # plateaus: ties in the flood order
        elevation = np.round(elevation * 20).astype(np.float32) / 20
    markers = np.zeros((h, w), dtype=np.int32)
    n = int(rng.integers(0, 60))
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    markers[ys, xs] = np.arange(1, n + 1)
    if seed % 4 == 0:  # marker regions of several pixels (interior seeds)
        markers = ndi.grey_dilation(markers, size=3)
    markers[~foreground] = 0
    return elevation, markers, foreground


@pytest.mark.parametrize("fraction", [0.4, 0.0, 1e9])
def test_seeded_watershed_is_skimages(monkeypatch, fraction):
    monkeypatch.setattr(post, "MOSAIC_FRACTION", fraction)
    multi_seen = 0
    for seed in range(80):
        elevation, markers, foreground = _case(seed)
        ref = watershed(elevation, markers=markers, mask=foreground)
        got = post._seeded_watershed(elevation, markers, foreground)
        assert got.dtype == np.int32
        comp, n = ndi.label(foreground)
        seeds = [np.unique(markers[(comp == c) & (markers > 0)]) for c in range(1, n + 1)]
        multi = [c + 1 for c, ids in enumerate(seeds) if len(ids) >= 2]
        multi_seen += bool(multi)
        if seed % 3:
            np.testing.assert_array_equal(got, ref)
            continue
        outside = ~np.isin(comp, multi)
        np.testing.assert_array_equal(got[outside], ref[outside])
        assert set(np.unique(got)) == set(np.unique(ref))
        has = markers > 0
        np.testing.assert_array_equal(got[has], markers[has])
    assert multi_seen > 20


def test_seeded_watershed_without_markers_or_foreground():
    fg = np.zeros((5, 6), bool)
    el = np.zeros((5, 6), np.float32)
    assert not post._seeded_watershed(el, np.zeros((5, 6), np.int32), fg).any()
    fg[1:3, 1:4] = True
    assert not post._seeded_watershed(el, np.zeros((5, 6), np.int32), fg).any()


def test_markers_outside_the_foreground_are_ignored_as_by_skimage():
    fg = np.zeros((6, 6), bool)
    fg[1:3, 1:3] = True
    fg[4:6, 4:6] = True
    markers = np.zeros((6, 6), np.int32)
    markers[0, 5] = 7  # background
    markers[1, 1] = 2
    el = np.zeros((6, 6), np.float32)
    ref = watershed(el, markers=markers, mask=fg)
    np.testing.assert_array_equal(post._seeded_watershed(el, markers, fg), ref)


@pytest.mark.parametrize("min_size", [0, 1, 5, 40])
def test_orphans_and_relabel_equal_the_two_step_version(min_size):
    for seed in range(60):
        elevation, markers, foreground = _case(seed)
        labels = watershed(elevation, markers=markers, mask=foreground)
        orphan = foreground & (labels == 0)
        if orphan.any():
            extra, _ = ndi.label(orphan)
            labels = np.where(extra > 0, extra + labels.max(), labels)
        got = post._seeded_watershed(elevation, markers, foreground, orphans=True)
        if seed % 3:  # no ties between seeds: bit for bit
            np.testing.assert_array_equal(got, labels)
        ref = post._relabel(post._remove_small(labels.astype(np.int32), min_size))
        np.testing.assert_array_equal(post._relabel(labels, min_size), ref)
