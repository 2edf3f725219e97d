"""Post-processing and rescaling helpers: peaks, point matching, watershed, diameter."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data.density import dots_to_density
from napari_nalu_count.data.masks import instances_to_classes
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import InputError
from napari_nalu_count.infer import (
    classes_to_instances,
    density_peaks,
    estimate_diameter,
    match_points,
)
from napari_nalu_count.infer import scale as sc


def test_density_peaks_find_the_dots():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(15, 190, 25), np.arange(15, 190, 25)), -1)
    dots = grid.reshape(-1, 2) + rng.uniform(-6, 6, (grid.size // 2, 2))  # >= 13 px apart
    dens = dots_to_density(dots, (200, 200))
    pts = density_peaks(dens, diameter=12)
    _, recall, f1 = match_points(pts, dots, radius=4)
    assert f1 > 0.97 and recall > 0.97
    assert pts.shape[1] == 2 and pts.dtype == np.float64


def test_density_peaks_ignore_noise_and_empty():
    assert density_peaks(np.zeros((50, 60), np.float32), 10).shape == (0, 2)
    noise = np.random.default_rng(1).normal(0, 1e-4, (80, 80)).astype(np.float32)
    assert len(density_peaks(noise, 10)) == 0  # the mass around noise peaks is far below 0.3
    two = dots_to_density(np.array([[30.0, 30.0], [30.0, 42.0]]), (60, 80))
    assert len(density_peaks(two, 12)) == 2  # touching cells keep both peaks


def test_match_points_cases():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    assert match_points(true, true, 1.0) == (1.0, 1.0, 1.0)
    assert match_points(np.zeros((0, 2)), np.zeros((0, 2)), 1.0) == (1.0, 1.0, 1.0)
    assert match_points(np.zeros((0, 2)), true, 1.0) == (1.0, 0.0, 0.0)
    assert match_points(true, np.zeros((0, 2)), 1.0) == (0.0, 1.0, 0.0)
    p, r, f = match_points(true[:2] + 0.5, true, 1.0)
    assert (p, r) == (1.0, pytest.approx(2 / 3)) and f == pytest.approx(0.8)
    assert match_points(true + 3.0, true, 1.0)[2] == 0.0
    # one-to-one: two predictions next to one true point match once
    assert match_points(np.array([[0.0, 0.1], [0.0, -0.1]]), true[:1], 1.0)[0] == 0.5


def test_match_points_is_optimal_not_greedy():
    # greedy (closest pair first) matches p0-t1 (0.5) and leaves p1/t0 unmatched (1.6 > r);
    # the optimal assignment p0-t0 (0.9), p1-t1 (0.9) matches both.
    true = np.array([[0.0, 0.0], [0.0, 1.4]])
    pred = np.array([[0.0, 0.9], [0.0, 2.3]])
    assert match_points(pred, true, radius=1.0)[2] == 1.0


def test_match_points_3d_stack_coordinates():
    a = np.array([[0, 5.0, 5.0], [1, 5.0, 5.0]])
    assert match_points(a, a[::-1], 0.5)[2] == 1.0


@pytest.fixture
def synth():
    return synthetic_cells((192, 192), n_cells=30, diameter=14.0, seed=2)


def test_classes_to_instances_interior_seeds(synth):
    classes = instances_to_classes(synth.labels)
    labels = classes_to_instances(classes, seeds="interior")
    assert labels.dtype == np.int32 and labels.shape == classes.shape
    n_true = int(synth.labels.max())
    assert abs(int(labels.max()) - n_true) <= max(2, 0.1 * n_true)
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))  # sequential


def test_classes_to_instances_count_seeds_and_probabilities(synth):
    classes = instances_to_classes(synth.labels)
    probs = np.stack([(classes == k).astype(np.float32) for k in range(3)])
    labels = classes_to_instances(probs, seeds="count", points=synth.dots)
    n_true = len(synth.dots)
    assert abs(int(labels.max()) - n_true) <= max(2, 0.1 * n_true)
    with pytest.raises(InputError):
        classes_to_instances(classes, seeds="count")
    with pytest.raises(InputError):
        classes_to_instances(classes, seeds="nope")


def test_classes_to_instances_unseeded_blobs_and_small_objects():
    classes = np.zeros((40, 40), np.uint8)
    classes[5:15, 5:15] = 2  # boundary only: no interior seed, still an object
    classes[25:35, 25:35] = 1
    classes[1, 38] = 1  # a 1-pixel speck is dropped
    labels = classes_to_instances(classes, min_size=4)
    assert labels.max() == 2
    assert labels[10, 10] > 0 and labels[30, 30] > 0 and labels[1, 38] == 0
    assert classes_to_instances(np.zeros((8, 8), np.uint8)).max() == 0


def test_density_resampling_keeps_integral():
    dens = dots_to_density(np.array([[20.0, 30.0], [50.0, 60.0], [70.0, 10.0]]), (90, 100))
    for shape in [(180, 200), (45, 50), (91, 77)]:
        out = sc.density_to_original(dens, shape)
        assert out.shape == shape and out.dtype == np.float32
        assert float(out.sum()) == pytest.approx(float(dens.sum()), rel=1e-4)


def test_labels_and_points_back_to_original():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 4
    labels[10:18, 10:18] = 9
    big = sc.labels_to_original(labels, (40, 40))
    assert big.shape == (40, 40) and big.dtype == np.int32
    assert set(np.unique(big)) == {0, 1, 2}  # nearest, relabelled 1..n
    assert (big == 2).sum() == 4 * 64
    pts = np.array([[0.0, 0.0], [9.5, 19.0]])
    back = sc.points_to_original(pts, (20, 20), (40, 40))
    np.testing.assert_allclose(back, [[0.5, 0.5], [19.5, 38.5]])


def test_rescale_plane_shape_and_mean():
    plane = np.random.default_rng(0).random((101, 67)).astype(np.float32)
    half = sc.rescale_plane(plane, 0.5)
    assert half.shape == (50, 34) and half.dtype == np.float32
    assert float(half.mean()) == pytest.approx(float(plane.mean()), rel=0.02)
    assert sc.rescale_plane(plane, 1.0) is not None
    assert sc.scale_factor(None, 14.0) == 1.0
    assert sc.scale_factor(28.0, 14.0) == 0.5
    assert sc.scale_factor(14.1, 14.0) == 1.0  # within tolerance: no resampling
    with pytest.raises(InputError):
        sc.scale_factor(0.5, 14.0)


@pytest.mark.parametrize("diameter", [10.0, 20.0, 32.0])
def test_estimate_diameter(diameter):
    s = synthetic_cells((320, 320), n_cells=40, diameter=diameter, seed=5)
    est = estimate_diameter(s.image.astype(np.float32))
    assert est == pytest.approx(diameter, rel=0.25)


def test_estimate_diameter_of_empty_plane_is_none():
    assert estimate_diameter(np.zeros((64, 64), np.float32)) is None


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_argmax_masks_equal_numpy_argmax_with_ties(channels):
    from napari_nalu_count.infer.postprocess import _argmax_masks

    p = np.random.default_rng(channels).integers(0, 4, (channels, 40, 50)).astype(np.float32)
    fg, one = _argmax_masks(p)
    cls = p.argmax(axis=0)
    np.testing.assert_array_equal(fg, cls != 0)
    np.testing.assert_array_equal(one, cls == 1)


@pytest.mark.parametrize(
    "src,dst", [((117, 93), (204, 160)), ((40, 40), (41, 40)), ((9, 5), (3, 2))]
)
def test_labels_to_original_is_nearest_then_sequential(src, dst):
    """Against the plain definition: the label under every output pixel centre, then ids
    renumbered 1..n in order (skimage's relabel_sequential)."""
    from skimage.segmentation import relabel_sequential

    from napari_nalu_count.infer import scale as sc

    rng = np.random.default_rng(3)
    lab = rng.integers(0, 40, src).astype(np.int32) * 3  # gaps in the ids
    lab[lab % 2 == 1] = 0
    rows = np.minimum(((np.arange(dst[0]) + 0.5) * src[0] / dst[0]).astype(np.intp), src[0] - 1)
    cols = np.minimum(((np.arange(dst[1]) + 0.5) * src[1] / dst[1]).astype(np.intp), src[1] - 1)
    want = relabel_sequential(lab[rows][:, cols])[0]
    got = sc.labels_to_original(lab, dst)
    assert got.dtype == np.int32 and got.shape == dst
    np.testing.assert_array_equal(got, want)
