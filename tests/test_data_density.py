"""Dot -> density rendering and percentile normalisation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_nalu_count.data.density import DEFAULT_SIGMA, dots_to_density, points_inside
from napari_nalu_count.data.normalize import percentile_normalize
from napari_nalu_count.errors import InputError

REL = 1e-3  # the contract: integral within 0.1%


def _assert_integral(density: np.ndarray, expected: float) -> None:
    total = float(density.sum(dtype=np.float64))
    assert abs(total - expected) <= REL * max(expected, 1e-9), (total, expected)


def test_default_sigma_is_documented_value():
    assert DEFAULT_SIGMA == 3.0


def test_integral_equals_count_random_interior():
    rng = np.random.default_rng(0)
    pts = rng.uniform(10, 50, size=(37, 2))
    d = dots_to_density(pts, (64, 64))
    assert d.dtype == np.float32 and d.shape == (64, 64)
    _assert_integral(d, 37)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 3.0, 8.0, 25.0])
def test_integral_exact_on_and_near_border(sigma):
    h, w = 40, 57
    pts = np.array(
        [
            [0, 0],
            [h - 1, w - 1],
            [0, w - 1],
            [h - 1, 0],
            [-0.5, -0.5],  # lower limit is inside
            [h - 0.5, w - 0.5],  # upper limit is inside too
            [h - 0.51, w - 0.51],
            [0.3, 20.7],
            [h - 1.2, 3.4],
            [17.25, 0.0],
        ]
    )
    d = dots_to_density(pts, (h, w), sigma=sigma)
    _assert_integral(d, len(pts))
    # every dot also renders exactly 1 on its own
    for p in pts:
        _assert_integral(dots_to_density(p[None], (h, w), sigma=sigma), 1.0)


def test_scale_multiplies_integral_and_values():
    pts = np.array([[5.5, 6.25], [0.0, 0.0]])
    base = dots_to_density(pts, (20, 20))
    scaled = dots_to_density(pts, (20, 20), scale=100.0)
    _assert_integral(scaled, 200.0)
    np.testing.assert_allclose(scaled, base * 100.0, rtol=1e-5)


def test_peak_at_dot_and_symmetric_for_centred_dot():
    d = dots_to_density([[10.0, 12.0]], (21, 25), sigma=2.0)
    assert np.unravel_index(np.argmax(d), d.shape) == (10, 12)
    np.testing.assert_allclose(d[10, 12 - 3], d[10, 12 + 3], rtol=1e-6)
    np.testing.assert_allclose(d[10 - 3, 12], d[10 + 3, 12], rtol=1e-6)


def test_subpixel_dot_centre_of_mass():
    y, x = 20.3, 17.8
    d = dots_to_density([[y, x]], (48, 40), sigma=2.5).astype(np.float64)
    yy, xx = np.indices(d.shape)
    assert abs((d * yy).sum() / d.sum() - y) < 1e-3
    assert abs((d * xx).sum() / d.sum() - x) < 1e-3


def test_sigma_zero_puts_mass_on_nearest_pixel():
    d = dots_to_density([[2.4, 3.6], [2.4, 3.6]], (5, 6), sigma=0.0)
    assert d[2, 4] == pytest.approx(2.0)
    assert np.count_nonzero(d) == 1


def test_empty_points():
    for pts in ([], np.zeros((0, 2)), None):
        d = dots_to_density(pts, (8, 9))
        assert d.shape == (8, 9) and not d.any()


def test_shape_may_be_an_image_shape_with_leading_axes():
    d = dots_to_density([[1, 1]], (3, 8, 9))
    assert d.shape == (8, 9)


def test_out_of_bounds_raise_clip_drop():
    pts = np.array([[3.0, 3.0], [-0.6, 2.0], [2.0, 9.6]])
    with pytest.raises(InputError, match="outside"):
        dots_to_density(pts, (10, 10))
    _assert_integral(dots_to_density(pts, (10, 10), out_of_bounds="clip"), 3.0)
    _assert_integral(dots_to_density(pts, (10, 10), out_of_bounds="drop"), 1.0)
    with pytest.raises(InputError, match="out_of_bounds"):
        dots_to_density(pts, (10, 10), out_of_bounds="ignore")


def test_points_inside_convention():
    pts = np.array([[-0.5, 0], [-0.51, 0], [9.49, 9.49], [9.5, 9.5], [9.51, 0], [0, 9.51]])
    assert points_inside(pts, (10, 10)).tolist() == [True, False, True, True, False, False]


@pytest.mark.parametrize(
    "pts, match",
    [
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.zeros((3, 3)), r"\(N, 2\)"),
        (np.zeros(4), r"\(N, 2\)"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_bad_points(pts, match):
    with pytest.raises(InputError, match=match):
        dots_to_density(pts, (10, 10))


def test_bad_sigma_and_shape():
    with pytest.raises(InputError, match="sigma"):
        dots_to_density([[1, 1]], (10, 10), sigma=-1)
    with pytest.raises(InputError, match="shape"):
        dots_to_density([[1, 1]], (10,))
    with pytest.raises(InputError, match="positive"):
        dots_to_density([[1, 1]], (0, 10))


def test_fast_for_hundreds_of_dots_on_1024():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-0.5, 1023.49, size=(800, 2))
    t0 = time.perf_counter()
    d = dots_to_density(pts, (1024, 1024), sigma=3.0)
    elapsed = time.perf_counter() - t0
    _assert_integral(d, 800)
    assert elapsed < 1.0, elapsed


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    sigma=st.floats(0.0, 12.0),
    fy=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=12),
    fx=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=12),
)
def test_integral_property(h, w, sigma, fy, fx):
    n = min(len(fy), len(fx))
    pts = np.column_stack([np.array(fy[:n]) * h - 0.5, np.array(fx[:n]) * w - 0.5])
    d = dots_to_density(pts.reshape(-1, 2), (h, w), sigma=sigma, scale=3.0)
    assert np.all(d >= 0)
    assert abs(float(d.sum(dtype=np.float64)) - 3.0 * n) <= REL * max(3.0 * n, 1e-9)


# ------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_percentile_normalize_dtypes(dtype):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, size=(32, 32)).astype(dtype)
    out = percentile_normalize(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    lo, hi = np.percentile(img.astype(np.float64), [1.0, 99.8])
    np.testing.assert_allclose(out, (img - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.percentile(out, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(out, 99.8) == pytest.approx(1.0, abs=1e-5)


def test_percentile_normalize_does_not_modify_input():
    img = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    before = img.copy()
    percentile_normalize(img, 0, 100)
    np.testing.assert_array_equal(img, before)


def test_percentile_normalize_clip_and_range():
    img = np.arange(1000, dtype=np.uint16).reshape(25, 40)
    out = percentile_normalize(img, 10, 90, clip=True)
    assert out.min() == 0.0 and out.max() == 1.0
    unclipped = percentile_normalize(img, 10, 90)
    assert unclipped.min() < 0 and unclipped.max() > 1


@pytest.mark.parametrize("value", [0, 7, 4095])
def test_percentile_normalize_constant_gives_zeros(value):
    out = percentile_normalize(np.full((16, 16), value, dtype=np.uint16))
    assert out.dtype == np.float32 and not out.any()
    assert np.all(np.isfinite(out))


def test_percentile_normalize_rejects_nan_and_inf():
    img = np.ones((8, 8), dtype=np.float32)
    img[0, 0] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        percentile_normalize(img)
    img[0, 0] = np.inf
    with pytest.raises(InputError, match="1 infinite"):
        percentile_normalize(img)


def test_percentile_normalize_bad_args():
    with pytest.raises(InputError, match="percentiles"):
        percentile_normalize(np.ones((4, 4)), 50, 10)
    with pytest.raises(InputError, match="empty"):
        percentile_normalize(np.zeros((0, 4)))
    with pytest.raises(InputError, match="dtype"):
        percentile_normalize(np.ones((4, 4), dtype=complex))
