"""Augmentation keeps image, dots and labels consistent; re-rendered density stays exact."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_nalu_count.data.augment import Augmenter, ElasticField
from napari_nalu_count.data.density import dots_to_density, points_inside
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import InputError

GEOMETRIC = {
    "flip": Augmenter(rot90=False, intensity=None, gamma=None),
    "rot90": Augmenter(flip=False, intensity=None, gamma=None),
    "elastic": Augmenter(flip=False, rot90=False, elastic=12.0, intensity=None, gamma=None),
    "scale_keep": Augmenter(flip=False, rot90=False, scale=(0.6, 1.6), intensity=None, gamma=None),
    "scale_resize": Augmenter(
        flip=False, rot90=False, scale=(0.6, 1.6), keep_shape=False, intensity=None, gamma=None
    ),
    "strong": Augmenter.strong(),
}


def _blob(shape, centre, sigma=1.5):
    return dots_to_density(np.asarray([centre]), shape, sigma=sigma)


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_single_blob_follows_its_dot(name):
    aug = GEOMETRIC[name]
    rng = np.random.default_rng(42)
    shape = (40, 56)  # not square: rotations swap H and W
    checked = 0
    for _ in range(12):
        centre = rng.uniform([3, 3], [36, 52])
        img = _blob(shape, centre)
        lab = (img > 0.02 * img.max()).astype(np.int32)
        out, dots, labels = aug(img, centre[None], lab, rng=rng)
        assert out.dtype == np.float32 and labels.shape == out.shape[:2]
        if len(dots) == 0:  # only possible when zooming in with a crop
            assert name in ("scale_keep", "strong") and aug.last_dropped == 1
            continue
        peak = np.array(np.unravel_index(np.argmax(out), out.shape))
        assert np.abs(peak - dots[0]).max() <= 1.0, (name, peak, dots[0])
        iy, ix = np.rint(dots[0]).astype(int)
        assert labels[iy, ix] == 1  # the warped mask is under the moved dot too
        checked += 1
    assert checked >= 8


def test_flip_and_rot90_are_exact_permutations():
    rng = np.random.default_rng(0)
    img = rng.random((7, 9)).astype(np.float32)
    dots = np.array([[0.0, 0.0], [6.0, 8.0], [2.0, 5.0]])
    aug = Augmenter(intensity=None, gamma=None)
    for _ in range(16):
        out, moved, _ = aug(img, dots, rng=rng)
        for (y0, x0), (y1, x1) in zip(dots.astype(int), moved, strict=True):
            assert out[int(y1), int(x1)] == img[y0, x0]
        assert sorted(out.ravel().tolist()) == sorted(img.ravel().tolist())


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_dots_stay_inside_and_density_integral_matches_kept_count(name):
    aug = GEOMETRIC[name]
    s = synthetic_cells((64, 80), 60, diameter=7.0, seed=3, overlap=0.3)
    # add dots exactly on the border and corners
    dots = np.vstack(
        [s.dots, [[0, 0], [63, 79], [0, 79], [63, 0], [-0.5, 10.0], [63.5, 79.5], [30, -0.5]]]
    )
    rng = np.random.default_rng(7)
    for _ in range(6):
        out, moved, labels = aug(s.image, dots, s.labels, rng=rng)
        assert np.all(points_inside(moved, out.shape))
        assert len(moved) + aug.last_dropped == len(dots)
        if name not in ("scale_keep", "strong"):
            assert aug.last_dropped == 0  # these transforms never push a dot out
        dens = dots_to_density(moved, out.shape, sigma=2.0)
        assert abs(float(dens.sum(dtype=np.float64)) - len(moved)) <= 1e-3 * max(len(moved), 1)
        assert labels.dtype == np.int32 and set(np.unique(labels)) <= set(np.unique(s.labels))


def test_zoom_in_crop_drops_only_truly_outside_dots():
    aug = Augmenter(flip=False, rot90=False, scale=(2.0, 2.0), intensity=None, gamma=None)
    dots = np.array([[5.0, 5.0], [20.0, 20.0], [31.0, 31.0], [12.0, 30.0]])
    img = np.zeros((40, 40), np.float32)
    _, moved, _ = aug(img, dots, rng=0)
    # zoom x2 about (19.5, 19.5): y' = 19.5 + 2 (y - 19.5)
    expected = 19.5 + 2.0 * (dots - 19.5)
    keep = points_inside(expected, (40, 40))
    np.testing.assert_allclose(moved, expected[keep])
    assert aug.last_dropped == int((~keep).sum()) == 3


def test_resize_scale_changes_shape_and_maps_pixel_centres():
    aug = Augmenter(
        flip=False, rot90=False, scale=(0.5, 0.5), keep_shape=False, intensity=None, gamma=None
    )
    out, moved, _ = aug(np.ones((40, 60)), np.array([[-0.5, -0.5], [39.5, 59.5]]), rng=0)
    assert out.shape == (20, 30)
    np.testing.assert_allclose(moved, [[-0.5, -0.5], [19.5, 29.5]])
    assert aug.last_dropped == 0


def test_elastic_field_is_smooth_invertible_and_keeps_the_border():
    rng = np.random.default_rng(1)
    field = ElasticField.random((50, 70), sigma=15.0, rng=rng)
    assert field.max_gradient() <= 0.5 + 1e-9
    dy, dx = field.dense()
    assert np.abs(dy).max() > 0.5 and np.abs(dx).max() > 0.5  # it really deforms
    # border pixels move only along the border
    assert np.allclose(dy[0], 0) and np.allclose(dy[-1], 0)
    assert np.allclose(dx[:, 0], 0) and np.allclose(dx[:, -1], 0)
    q = rng.uniform(0, [49, 69], size=(30, 2))
    p = field.invert(q)
    np.testing.assert_allclose(p + field.displacement(p), q, atol=1e-6)
    # dense and pointwise evaluation agree
    pts = np.array([[10.0, 20.0], [49.0, 0.0]])
    np.testing.assert_allclose(field.displacement(pts)[:, 0], dy[[10, 49], [20, 0]])


def test_intensity_changes_values_not_geometry():
    aug = Augmenter(flip=False, rot90=False, intensity=(2.0, 2.0), gamma=None, noise=0.0)
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out, _, _ = aug(img, rng=0)
    np.testing.assert_allclose(out, img * 2.0)
    noisy, _, _ = Augmenter(flip=False, rot90=False, intensity=None, gamma=(0.5, 2.0), noise=0.1)(
        img, rng=0
    )
    assert noisy.shape == img.shape and not np.allclose(noisy, img)


def test_reproducible_with_rng_and_multichannel():
    s = synthetic_cells((48, 48), 10, 8.0, seed=0)
    img = np.stack([s.image, s.image // 2], axis=-1)
    aug = Augmenter.strong()
    a = aug(img, s.dots, s.labels, rng=np.random.default_rng(9))
    b = aug(img, s.dots, s.labels, rng=np.random.default_rng(9))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[0].ndim == 3 and a[0].shape[-1] == 2


def test_apply_sample_and_errors():
    s = synthetic_cells((32, 32), 4, 6.0, seed=0)
    out = Augmenter().apply_sample(s, rng=1)
    assert out.image.dtype == np.float32 and len(out.dots) == 4 and out.name == s.name
    aug = Augmenter()
    with pytest.raises(InputError, match="inside"):
        aug(np.zeros((8, 8)), np.array([[9.0, 1.0]]))
    with pytest.raises(InputError, match="labels shape"):
        aug(np.zeros((8, 8)), labels=np.zeros((4, 4), int))
    with pytest.raises(InputError, match="image must be"):
        aug(np.zeros(8))
    with pytest.raises(InputError, match="scale"):
        Augmenter(scale=(0.0, 1.0))
    with pytest.raises(InputError, match="elastic"):
        Augmenter(elastic=-1.0)


def test_chromatin_texture_changes_only_the_objects_and_keeps_dtype():
    from napari_nalu_count.data.augment import chromatin_texture

    s = synthetic_cells((160, 160), n_cells=6, diameter=40.0, seed=3, texture=0.0, overlap=0.0)
    img, lab = s.image, s.labels
    assert chromatin_texture(img, lab, 40.0, 0.0) is img
    far = ndi.distance_transform_edt(lab == 0) > 6  # beyond the softened outline
    inside = ndi.binary_erosion(lab > 0, iterations=3)
    base = img.astype(np.float64)
    for kind in ("mottled", "spots"):
        out = chromatin_texture(img, lab, 40.0, 0.6, kind=kind, seed=1)
        assert out.dtype == img.dtype and out.shape == img.shape
        assert np.array_equal(out[far], img[far])
        again = chromatin_texture(img, lab, 40.0, 0.6, kind=kind, seed=1)
        assert np.array_equal(out, again)
        # the objects got a texture: their pixel-to-pixel spread grew by a lot
        grad_before = np.abs(np.diff(base, axis=1))[inside[:, 1:]].mean()
        grad_after = np.abs(np.diff(out.astype(np.float64), axis=1))[inside[:, 1:]].mean()
        assert grad_after > 1.5 * grad_before, kind
    spots = chromatin_texture(img, lab, 40.0, 0.8, kind="spots", seed=1).astype(np.float64)
    assert spots[inside].max() > base[inside].max()  # bright foci above the old peak
    assert np.median(spots[inside]) < np.median(base[inside])  # on a dimmer nucleus


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "stripes"}, {"amp": -0.1}, {"amp": float("nan")}, {"diameter": 0.0}, {"grain": 0}],
)
def test_chromatin_texture_refuses_bad_settings(kwargs):
    from napari_nalu_count.data.augment import chromatin_texture

    s = synthetic_cells((48, 48), n_cells=2, diameter=12.0, seed=0)
    args = {"diameter": 12.0, "amp": 0.5}
    args.update(kwargs)
    with pytest.raises(InputError):
        chromatin_texture(s.image, s.labels, **args)
    with pytest.raises(InputError, match="shape"):
        chromatin_texture(s.image, s.labels[:-1], 12.0, 0.5)
