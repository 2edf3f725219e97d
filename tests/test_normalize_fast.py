"""Percentiles from a histogram for uint8/uint16 images: exactly NumPy's values (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data import normalize
from napari_nalu_count.data.normalize import percentile_normalize, percentiles


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("seed", range(6))
def test_histogram_percentiles_equal_numpy(dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(normalize.HISTOGRAM_MIN_SIZE, 4 * normalize.HISTOGRAM_MIN_SIZE))
    top = np.iinfo(dtype).max if seed % 2 else 300 % (np.iinfo(dtype).max + 1)
    a = rng.gamma(2.0, top / 8.0, n).clip(0, top).astype(dtype)
    for q in ([1.0, 99.8], [0.0, 100.0], [50.0], [0.1, 99.9, 33.3]):
        assert percentiles(a, q) == [float(v) for v in np.percentile(a, q)]


def test_small_and_float_arrays_use_numpy(monkeypatch):
    calls = []
    real = np.bincount
    monkeypatch.setattr(np, "bincount", lambda *a, **k: calls.append(1) or real(*a, **k))
    percentiles(np.arange(100, dtype=np.uint16), [1, 99])
    percentiles(np.linspace(0, 1, 1 << 15, dtype=np.float32), [1, 99])
    assert calls == []
    percentiles(np.zeros(1 << 15, dtype=np.uint16), [1, 99])
    assert calls == [1]


def test_normalize_matches_the_plain_formula():
    img = np.random.default_rng(0).integers(100, 4000, (300, 200)).astype(np.uint16)
    lo, hi = (float(v) for v in np.percentile(img, [1.0, 99.8]))
    want = ((img.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(
        np.float32
    )
    got = percentile_normalize(img)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "src,dst", [((87, 87), (204, 204)), ((37, 41), (80, 90)), ((5, 5), (5, 9)), ((1, 7), (4, 20))]
)
def test_fast_upsampling_equals_scipy_zoom(src, dst, monkeypatch):
    from napari_nalu_count.infer import scale

    a = np.random.default_rng(0).random(src, dtype=np.float32)
    monkeypatch.setattr(scale, "FAST_UPSAMPLING", False)
    want = scale._zoom_to(a, dst, 1)
    monkeypatch.setattr(scale, "FAST_UPSAMPLING", True)
    got = scale._zoom_to(a, dst, 1)
    assert got.shape == dst and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)  # float32 source coordinates
    # density maps keep their integral either way
    d = scale.density_to_original(a, dst)
    assert float(d.sum(dtype=np.float64)) == pytest.approx(float(a.sum(dtype=np.float64)), rel=1e-5)


@pytest.mark.parametrize(
    "shape,s",
    [
        ((300, 257), 0.43),
        ((64, 64), 0.5),
        ((37, 41), 0.3),
        ((5, 5), 0.9),
        ((1, 7), 0.5),
        ((3, 200), 0.0625),
        ((129, 64), 0.77),
    ],
)
def test_fast_downsampling_equals_gaussian_then_zoom(shape, s, monkeypatch):
    """The banded shrink is the same linear map as SciPy's Gaussian filter + ndi.zoom."""
    from napari_nalu_count.infer import scale

    a = np.random.default_rng(1).random(shape, dtype=np.float32) * 1000
    a[0, 0] = 5000  # an edge pixel: clamped taps must add up as mode="nearest" does
    monkeypatch.setattr(scale, "FAST_DOWNSAMPLING", False)
    want = scale.rescale_plane(a, s)
    monkeypatch.setattr(scale, "FAST_DOWNSAMPLING", True)
    got = scale.rescale_plane(a, s)
    assert got.shape == want.shape == scale.scaled_shape(shape, s)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    # a view (non-contiguous input) gives the same numbers
    np.testing.assert_allclose(scale.rescale_plane(np.asfortranarray(a), s), got, atol=1e-3)
