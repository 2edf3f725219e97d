"""Generalist models: appearance augmentation, widened synthetic data, scale-jittered and
source-balanced sampling, the size head, the learned size estimate and its use by the engine,
and fine-tuning a generalist model on the model grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_nalu_count.data import typical_diameter
from napari_nalu_count.data.augment import Appearance
from napari_nalu_count.data.readers import Sample
from napari_nalu_count.data.synthetic import (
    synthetic_cells,
    synthetic_crowded,
    synthetic_tissue,
    synthetic_varied,
)
from napari_nalu_count.errors import InputError, ModelFileError, NaluCountError
from napari_nalu_count.infer import count, segment
from napari_nalu_count.infer import engine as eng
from napari_nalu_count.infer import size as size_mod
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.nn.registry import build_model, validate_config
from napari_nalu_count.train import TrainConfig, fine_tune
from napari_nalu_count.train.dataset import PatchSampler, prepare
from napari_nalu_count.train.loop import _loss

# ------------------------------------------------------------------ appearance augmentation


def _disc_image(n=64, r=8.0):
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.zeros((n, n), np.float32)
    for cy, cx in ((16, 16), (40, 44), (20, 48)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    return img


def test_appearance_keeps_contrast_and_is_reproducible():
    img = _disc_image()
    inside = img > 0.5
    aug = Appearance(p=1.0)
    for seed in range(20):
        out = aug(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.float32 and np.isfinite(out).all()
        # nuclei stay clearly brighter than the background whatever the microscope does
        assert out[inside].mean() > out[~inside].mean() + 0.2, aug.last_ops
    a = aug(img, np.random.default_rng(3))
    b = aug(img, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(Appearance(p=0.0)(img, 0), img)


def test_appearance_quantises_and_validates():
    img = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    aug = Appearance(p=1.0, levels=(4, 4), noise=0.0, blur=0.0, background=0.0, illumination=0.0)
    out = aug(img, np.random.default_rng(0))
    assert len(np.unique(out)) <= 6  # 4 grey levels (+ clipping) survive renormalisation
    with pytest.raises(InputError):
        Appearance(p=2.0)
    with pytest.raises(InputError):
        Appearance(gamma=(2.0, 1.0))
    with pytest.raises(InputError):
        aug(np.zeros((2, 3, 4)))


# ------------------------------------------------------------------ widened synthetic data


def test_synthetic_varied_exact_and_wide():
    dtypes, diameters = set(), []
    for seed in range(8):
        s = synthetic_varied((128, 128), seed=seed, max_cells=60)
        assert len(s.dots) == s.labels.max() == s.meta["n_cells"]
        assert s.image.dtype in (np.uint8, np.uint16)
        dtypes.add(s.image.dtype)
        diameters.append(s.meta["diameter"])
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}  # both camera kinds appear
    assert max(diameters) / min(diameters) > 3  # sizes spread widely
    a = synthetic_varied((96, 96), seed=4)
    b = synthetic_varied((96, 96), seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    fixed = synthetic_varied((160, 160), seed=1, diameter=24.0)
    assert typical_diameter(fixed.labels) == pytest.approx(24.0, rel=0.35)
    with pytest.raises(InputError):
        synthetic_varied((64, 64), diameter=(10.0, 5.0))


def test_synthetic_crowded_cells_overlap_and_count_exactly():
    from scipy.spatial import cKDTree

    compressed = 0
    for seed in range(6):
        s = synthetic_crowded((128, 128), seed=seed, diameter=10.0)
        n = s.meta["n_cells"]
        assert len(s.dots) == s.labels.max() == n
        assert s.meta["diameter"] == 10.0 and 0.2 <= s.meta["coverage"] <= 0.7
        # the summed cell area matches the drawn coverage: far more cells than fit side by side
        assert n == round(s.meta["coverage"] * 128 * 128 / (np.pi * 25.0))
        # cells lie on top of one another: most overlap a neighbour (centres under 0.9 d
        # apart), and the nearest ones as close as (1 - overlap) diameters allows
        near, _ = cKDTree(s.dots).query(s.dots, k=2)
        assert np.mean(near[:, 1] < 9.0) > 0.5
        assert np.percentile(near[:, 1], 10) < 10.0 * (1.0 - s.meta["overlap"]) + 2.0
        # labels under-measure overlapping cells, so meta["diameter"] is the size to use
        assert typical_diameter(s.labels) < 10.0
        compressed += s.meta["compress"] > 0
    assert 0 < compressed < 6  # both renderings occur
    a, b = synthetic_crowded((96, 96), seed=3), synthetic_crowded((96, 96), seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    with pytest.raises(InputError, match="overlap"):
        synthetic_crowded((64, 64), overlap=(0.5, 1.0))
    with pytest.raises(InputError, match="coverage"):
        synthetic_crowded((64, 64), coverage=(0.5, 0.2))


def test_synthetic_tissue_colonies_are_round_and_apart():
    s = synthetic_tissue((512, 512), 3, diameter=9.0, colonies=5, colony_diameter=100.0)
    assert s.meta["colonies"] == 5 and s.meta["colony_diameter"] == 100.0
    n = int(s.labels.max())
    assert n == len(s.dots) and n > 5 * 30
    from scipy import ndimage as ndi

    # the nuclei lie in 5 separate groups, no wider than a colony and its edge nuclei
    groups, k = ndi.label(ndi.binary_closing(s.labels > 0, iterations=4))
    assert k == 5
    for sl in ndi.find_objects(groups):
        assert max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) <= 100 + 2 * 9
    with pytest.raises(InputError, match="colony diameter"):
        synthetic_tissue((256, 256), 0, diameter=20.0, colonies=3, colony_diameter=30.0)
    # the default (no colonies) draws as before: same image for the same seed
    a, b = synthetic_tissue((128, 128), 7), synthetic_tissue((128, 128), 7, colonies=0)
    assert np.array_equal(a.image, b.image) and a.meta["colonies"] == 0


def test_synthetic_tissue_packs_small_nuclei_in_a_large_region():
    dtypes = set()
    for seed in range(4):
        s = synthetic_tissue((160, 192), seed=seed, diameter=(6.0, 12.0))
        assert s.image.shape == s.labels.shape == (160, 192)
        assert s.image.dtype in (np.uint8, np.uint16)
        dtypes.add(s.image.dtype)
        n = s.meta["n_cells"]
        assert len(s.dots) == n == s.labels.max() == len(np.unique(s.labels)) - 1 > 20
        # every dot lies in its own nucleus
        iy, ix = np.rint(s.dots).astype(int).T
        found = s.labels[iy.clip(0, 159), ix.clip(0, 191)]
        np.testing.assert_array_equal(found, np.arange(1, n + 1))
        assert typical_diameter(s.labels) == pytest.approx(s.meta["diameter"], rel=0.3)
        # packed: nuclei cover a large share of the region (hexagonal packing at 0.95-1.35
        # diameters covers 50-100 % of it, less the nuclei cut by its edge)
        assert (s.labels > 0).mean() > 0.4 * s.meta["cover"]
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}
    a, b = synthetic_tissue((96, 96), seed=3), synthetic_tissue((96, 96), seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(InputError, match="diameter range"):
        synthetic_tissue((96, 96), diameter=(10.0, 5.0))
    with pytest.raises(InputError, match="does not fit"):
        synthetic_tissue((64, 64), diameter=30.0)


def test_synthetic_cells_uint8_saturates():
    s = synthetic_cells((64, 64), 10, 10.0, seed=0, dtype="uint8", photons=1000, dark=0)
    assert s.image.dtype == np.uint8 and s.image.max() == 255


# ------------------------------------------------------------------ sampling


def _items(n=3, source="a", diameter=10.0, seed=0):
    samples = []
    for i in range(n):
        s = synthetic_cells((96, 96), 25, diameter, seed=seed + i)
        s.meta["source"] = source
        samples.append(s)
    return samples


def test_scale_jitter_keeps_targets_exact_and_reports_sizes():
    items = prepare(_items(), "count")
    sp = PatchSampler(
        items,
        "count",
        48,
        6,
        np.random.default_rng(0),
        sigma=1.5,
        density_scale=1.0,
        augment=False,
        scale_jitter=(0.5, 2.0),
    )
    x, y, valid = sp.batch()
    assert x.shape == (6, 1, 48, 48) and y.shape == (6, 1, 48, 48)
    info = sp.batch_info
    assert info["log_size"].shape == (6,) and bool(info["narrow"].all())
    assert float(info["log_size"].abs().max()) <= math.log(2.0) + 1e-6
    assert float(info["log_size"].abs().max()) > 0.01  # really jittered
    # wide patches are flagged for the size head only
    sp2 = PatchSampler(
        items, "count", 48, 4, np.random.default_rng(1), augment=False,
        scale_jitter=(0.9, 1.1), wide_jitter=(0.3, 3.0), wide_prob=1.0,
    )  # fmt: skip
    sp2.batch()
    assert not bool(sp2.batch_info["narrow"].any())


def test_resampled_patch_moves_dots_with_the_image():
    from napari_nalu_count.train.dataset import _resample_patch

    img = np.zeros((1, 40, 40), np.float32)
    img[0, 10, 30] = 1.0
    dots = np.array([[10.0, 30.0]])
    out, d, _ = _resample_patch(img, dots, None, 2.0)
    assert out.shape == (1, 80, 80)
    peak = np.unravel_index(np.argmax(out[0]), out[0].shape)
    assert np.allclose(d[0], peak, atol=1.0)


def test_source_weights_balance_sampling():
    items = prepare(_items(2, "big") + _items(1, "small", seed=9), "count")
    sp = PatchSampler(
        items, "count", 32, 2, np.random.default_rng(0), source_weights={"big": 0.0, "small": 1.0}
    )
    assert sp.weights[:2].sum() == 0 and sp.weights[2] == pytest.approx(1.0)
    with pytest.raises(InputError, match="no weight"):
        PatchSampler(items, "count", 32, 2, np.random.default_rng(0), source_weights={"x": 1})


# ------------------------------------------------------------------ size head and losses


def test_size_head_config_and_output():
    cfg = validate_config({"architecture": "unet_count", "widths": [4, 8], "size_head": True})
    net = build_model(cfg).eval()
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    assert validate_config({"architecture": "unet_count"})["size_head"] is False
    with pytest.raises(ModelFileError, match="size_head"):
        validate_config({"architecture": "fcrn_a", "size_head": True})
    with pytest.raises(ModelFileError, match="size_head"):
        validate_config({"architecture": "unet_count", "size_head": "yes"})


def test_count_and_size_losses_reach_their_heads():
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8], "size_head": True})
    x = torch.rand(2, 1, 32, 32)
    y = torch.zeros(2, 1, 32, 32)
    y[:, :, 10:14, 10:14] = 1.0
    valid = torch.ones(2, 1, 32, 32)
    info = {"log_size": torch.tensor([0.5, -0.5]), "narrow": torch.tensor([1.0, 0.0])}
    base = TrainConfig(density_scale=1.0, count_weight=0.0, size_weight=0.0)
    both = TrainConfig(density_scale=1.0, count_weight=1.0, size_weight=1.0)
    out = net(x)
    l0 = _loss(net, out, y, valid, "count", base, None, info)
    l1 = _loss(net, out, y, valid, "count", both, None, info)
    assert float(l1) > float(l0)
    net.zero_grad()
    l1.backward()
    assert net.size_head.weight.grad is not None and net.size_head.weight.grad.abs().sum() > 0
    # with size_weight 0 the size head gets no gradient
    net.zero_grad()
    _loss(net, net(x), y, valid, "count", base, None, info).backward()
    assert net.size_head.weight.grad is None or float(net.size_head.weight.grad.abs().sum()) == 0


def test_per_source_validation_metrics():
    from napari_nalu_count.train import evaluate

    items = prepare(_items(2, "a") + _items(2, "b", seed=7), "count")
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    m = evaluate(net, items, "count", density_scale=100.0)
    assert {"mre@a", "mre@b", "mre_mean", "mae_mean"} <= set(m)
    assert m["mre_mean"] == pytest.approx((m["mre@a"] + m["mre@b"]) / 2)


# ------------------------------------------------------------------ learned size estimate


@pytest.mark.parametrize("diameter", [8.0, 20.0, 48.0])
def test_estimate_diameter_on_synthetic_nuclei(diameter):
    side = int(max(160, diameter * 10))
    n = int(0.2 * side * side / (math.pi * diameter**2 / 4))
    s = synthetic_cells((side, side), n, diameter, seed=3, diameter_sd=0.1, texture=0.1)
    true = typical_diameter(s.labels)
    est = size_mod.estimate_diameter(s.image)
    assert est == pytest.approx(true, rel=0.3), (est, true)


def test_estimate_diameter_flat_and_bad_regressor(tmp_path):
    assert size_mod.estimate_diameter(np.full((64, 64), 7, np.uint16)) is None
    bad = tmp_path / "reg.json"
    bad.write_text('{"mean": [1, 2], "std": [1], "layers": [[[[1, 2]], [0]]]}')
    with pytest.raises(ModelFileError):
        size_mod.load_regressor(str(bad))
    with pytest.raises(ModelFileError, match="missing"):
        size_mod.load_regressor(str(tmp_path / "nothing.json"))
    profile = size_mod.scale_profile(np.zeros((20, 20), np.float32))
    assert profile.shape == (3 * size_mod.N_SCALES,) and np.isfinite(profile).all()


def _profile_with_scipy_filters(x):
    """The scale profile as first written: one SciPy LoG filter and np.percentile per scale."""
    from scipy import ndimage as ndi

    level, stats = np.ascontiguousarray(x, dtype=np.float32), []
    for _octave in range(size_mod.N_OCTAVES):
        for j in range(size_mod.PER_OCTAVE):
            s = size_mod.SIGMA0 * 2 ** (j / size_mod.PER_OCTAVE)
            resp = -(s * s) * ndi.gaussian_laplace(level, s, mode="reflect")
            q = np.percentile(resp, [95.0, 99.5])
            stats.append((q[1], q[0], float(np.maximum(resp, 0).mean())))
        if min(level.shape) < 16:
            break
        level = ndi.gaussian_filter(level, 1.0, mode="reflect")[::2, ::2]
    arr = np.maximum(np.asarray(stats, dtype=np.float64), 1e-6)
    if len(arr) < size_mod.N_SCALES:
        arr = np.vstack([arr, np.repeat(arr[-1:], size_mod.N_SCALES - len(arr), axis=0)])
    return np.log(arr / arr.max(axis=0, keepdims=True)).T.reshape(-1)


@pytest.mark.parametrize("shape", [(640, 640), (521, 640), (33, 17), (5, 4), (1, 3)])
def test_pyramid_levels(shape):
    from scipy import ndimage as ndi

    x = np.random.default_rng(shape[0]).random(shape).astype(np.float32)
    # "gauss": exactly SciPy's filter-then-decimate, with half the second pass
    np.testing.assert_array_equal(
        size_mod._decimate(x, "gauss"), ndi.gaussian_filter(x, 1.0, mode="reflect")[::2, ::2]
    )
    # "binomial": [1, 2, 1] / 4 along each axis with mirrored edges, at the kept samples
    k = np.array([0.25, 0.5, 0.25])
    ref = ndi.correlate1d(x.astype(np.float64), k, axis=0, mode="reflect")
    ref = ndi.correlate1d(ref, k, axis=1, mode="reflect")[::2, ::2]
    got = size_mod._decimate(x, "binomial")
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6)
    with pytest.raises(ValueError, match="pyramid"):
        size_mod._decimate(x, "box")


def test_octave_crop_reads_each_octave_on_a_sub_window():
    rng = np.random.default_rng(0)
    s = synthetic_cells((600, 520), 300, 9.0, seed=5)
    x = np.clip(s.image / s.image.max() + rng.normal(0, 0.05, s.image.shape), -0.2, 1.5)
    whole = size_mod.scale_profile(x, pyramid="binomial")
    # a crop at least the window's size changes nothing
    np.testing.assert_array_equal(size_mod.scale_profile(x, 600, "binomial"), whole)
    cropped = size_mod.scale_profile(x, 256, "binomial")
    assert not np.array_equal(cropped, whole)
    # only the octaves whose level is larger than the crop differ (levels 600 and 300 px here)
    per_stat = size_mod.N_SCALES
    diff = np.abs(cropped - whole).reshape(3, per_stat) > 0
    assert diff[:, : 2 * size_mod.PER_OCTAVE].any()
    # the profile's normalisation (each statistic over its maximum) may move the coarse
    # octaves too, but never by a different amount within one statistic
    for row_c, row_w in zip(cropped.reshape(3, per_stat), whole.reshape(3, per_stat), strict=True):
        tail = (row_c - row_w)[2 * size_mod.PER_OCTAVE :]
        np.testing.assert_allclose(tail, tail[0], atol=1e-9)


def test_regressor_profile_options(tmp_path):
    bundled = size_mod.load_regressor()
    assert bundled.profile_options["octave_crop"] == 256
    assert bundled.profile_options["pyramid"] == "binomial"
    plain = {"mean": [0.0], "std": [1.0], "layers": [[[[1.0]], [0.0]]]}
    old_style = size_mod.SizeRegressor(plain).profile_options
    assert old_style == {"octave_crop": None, "pyramid": "gauss", "mask": False}
    bad_profiles = ({"octave_crop": 8}, {"octave_crop": "256"}, {"pyramid": "box"}, {"mask": 1})
    for bad in bad_profiles:
        with pytest.raises(ModelFileError, match="info.profile"):
            size_mod.SizeRegressor(dict(plain, info={"profile": bad}))


def _discs(side, centres, radius, value=1.0):
    yy, xx = np.mgrid[:side, :side]
    img = np.zeros((side, side), np.float32)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return img


def test_mask_features_tell_large_textured_nuclei_from_many_small_ones():
    from scipy import ndimage as ndi

    from napari_nalu_count.infer.size import MASK_LEVELS, MASK_PER_LEVEL

    rng = np.random.default_rng(0)
    side = 512
    # four 120 px nuclei with a coarse grain inside (dark holes down to 40 % of the nucleus)
    big = _discs(side, [(128, 128), (128, 384), (384, 128), (384, 384)], 60)
    grain = ndi.gaussian_filter(rng.random((side, side)), 3.0)
    grain = (grain - grain.min()) / np.ptp(grain)
    textured = big * (0.4 + 0.6 * grain)
    # a tissue: one region packed with 12 px nuclei
    small = _discs(side, [(y, x) for y in range(40, 470, 14) for x in range(40, 470, 14)], 6)
    feats = {}
    for name, img in (("textured", textured), ("tissue", small)):
        profile = size_mod.scale_profile(img, 256, "binomial", mask=True)
        assert profile.shape == (3 * size_mod.N_SCALES + len(MASK_LEVELS) * MASK_PER_LEVEL,)
        assert np.isfinite(profile).all()
        feats[name] = profile[3 * size_mod.N_SCALES :].reshape(len(MASK_LEVELS), MASK_PER_LEVEL)
    # at the coarsest levels the textured nuclei are islands of their own size ...
    eq = np.exp(feats["textured"][-2:, 1]) - 1
    assert np.all((eq > 90) & (eq < 150)), eq
    # ... and the tissue is one region several times larger
    assert np.all(np.exp(feats["tissue"][-2:, 1]) - 1 > 300)
    # no foreground / flat windows give finite numbers
    for img in (np.zeros((64, 64), np.float32), np.ones((40, 33), np.float32)):
        assert np.isfinite(size_mod.scale_profile(img, 256, "binomial", mask=True)).all()
    # windows too small for the coarse levels still give every number
    for shape in ((1, 3), (5, 4), (17, 16), (33, 17)):
        tiny = rng.random(shape).astype(np.float32)
        profile = size_mod.scale_profile(tiny, 256, "binomial", mask=True)
        assert profile.shape == (3 * size_mod.N_SCALES + len(MASK_LEVELS) * MASK_PER_LEVEL,)
        assert np.isfinite(profile).all()


def _textured_nuclei(side=640, radius=30, seed=0):
    """Round nuclei of diameter ``2 * radius`` on a hexagonal-ish grid, with a grain inside."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    step = int(3.2 * radius)
    centres = [
        (y, x + (step // 2 if (y // step) % 2 else 0))
        for y in range(step // 2, side - radius, step)
        for x in range(step // 2, side - step // 2 - radius, step)
    ]
    big = _discs(side, centres, radius)
    grain = ndi.gaussian_filter(rng.random((side, side)), 2.0)
    grain = (grain - grain.min()) / np.ptp(grain)
    return big * (0.3 + 0.7 * grain), len(centres)


def test_island_diameter_measures_round_islands_and_ignores_tissue():
    textured, n = _textured_nuclei()
    for hint in (20.0, 60.0, 90.0):  # a hint 3x off still puts the islands on a usable grid
        isl = size_mod.island_diameter(textured, hint)
        assert isl["diameter"] == pytest.approx(60.0, rel=0.12), (hint, isl)
        assert isl["islands"] >= n - 8 and isl["cover"] > 0.6 and isl["samples"] >= 8
    # a hint 4x too small: measured again at the islands' own scale when asked to
    isl = size_mod.island_diameter(textured, 15.0, remeasure=1.25)
    assert isl["diameter"] == pytest.approx(60.0, rel=0.12) and isl["islands"] >= n - 8
    # a tissue: one large irregular region packed with small nuclei: no round island of note
    tissue = synthetic_tissue((512, 512), seed=3, diameter=9.0)
    x = tissue.image.astype(np.float32) / float(tissue.image.max())
    isl = size_mod.island_diameter(x, 9.0)
    assert isl["cover"] < 0.1 or isl["diameter"] < 3 * 9.0, isl
    # touching pairs are not round: two discs fused side by side are left out
    pairs = _discs(
        400, [(y, x + dx) for y in (80, 200, 320) for x in (60, 200) for dx in (0, 40)], 20
    )
    isl = size_mod.island_diameter(pairs, 40.0)
    assert isl["islands"] == 0 and np.isnan(isl["diameter"])
    # flat, empty and tiny planes
    for plane in (np.zeros((64, 64), np.float32), np.ones((50, 40), np.float32), np.ones((5, 5))):
        isl = size_mod.island_diameter(plane, 10.0)
        assert isl["islands"] == 0 and np.isnan(isl["diameter"]) and isl["cover"] == 0.0


def test_segment_takes_the_island_checked_size_from_its_seed_counter(monkeypatch):
    textured, n = _textured_nuclei(seed=1)
    img = (textured * 2000 + 100).astype(np.uint16)
    found = {}
    for check in (True, False):
        monkeypatch.setitem(eng.OPTIONS, "island_check", check)
        found[check] = segment(img, "nuclei-seg", device="cpu")
    assert found[True].diameter == pytest.approx(60.0, rel=0.12)
    assert found[False].diameter < found[True].diameter / eng.ISLAND_VETO
    on, off = (int(found[c].labels.max()) for c in (True, False))
    assert abs(on - n) < abs(off - n)


def test_island_need_skips_only_planes_the_rule_cannot_fire_on():
    """``need`` returns early only where no median of enough round islands can reach the
    needed diameter: the engine's decision is the same with and without it."""

    fires = eng._islands_refute

    textured, _ = _textured_nuclei(seed=2)
    plain = synthetic_cells((384, 384), 60, 20.0, seed=4).image.astype(np.float32)
    plain /= plain.max()
    decisions = []
    for x in (textured, plain):
        for d in (10.0, 20.0, 30.0, 40.0, 45.0, 60.0):
            need = (eng.ISLAND_VETO * d, eng.ISLAND_MIN_COUNT, eng.ISLAND_MIN_SAMPLES)
            full = size_mod.island_diameter(x, d, remeasure=eng.ISLAND_REMEASURE)
            quick = size_mod.island_diameter(x, d, remeasure=eng.ISLAND_REMEASURE, need=need)
            assert fires(quick, d) == fires(full, d)
            if fires(full, d):
                assert quick == full  # the same measurement when it counts
            decisions.append(fires(full, d))
    assert any(decisions) and not all(decisions)  # both outcomes were exercised


def test_island_check_replaces_an_estimate_the_islands_refute():
    textured, _ = _textured_nuclei()

    def state(estimate, regressor):
        st = eng._ScaleState(None, 12.0, None, "estimate")
        st.estimate = {"regressor": regressor, "seconds": 0.01}
        st.set_diameter(estimate)
        return st

    # the estimate read the grain (20 px for 60 px nuclei): the islands win
    st = state(20.0, 50.0)
    assert eng._island_check(textured, st) == (True, None)
    assert st.diameter == pytest.approx(60.0, rel=0.12) and st.estimate["islands"]["used"]
    assert st.factor == pytest.approx(12.0 / (eng.ISLAND_COARSEN * st.diameter))  # coarser grid
    assert st.estimate["seconds"] > 0.01
    # an estimate within ISLAND_VETO of the islands stands
    st = state(45.0, 50.0)
    assert eng._island_check(textured, st) == (False, None) and st.diameter == pytest.approx(45.0)
    assert st.estimate["islands"]["used"] is False
    # too few islands: the estimate stands
    few = _discs(640, [(160, 160), (160, 480), (480, 320)], 30)
    st = state(20.0, 50.0)
    assert eng._island_check(few, st) == (False, None) and st.diameter == pytest.approx(20.0)
    assert st.estimate["islands"]["islands"] == 3


def test_island_check_leaves_colonies_of_small_nuclei_alone(monkeypatch):
    """Colonies are round islands 8x the nuclei: the check measures them, then finds dozens of
    cells per island at the checked size and keeps the estimate (and reuses that pass)."""
    sample = synthetic_tissue((640, 640), 1, diameter=10.0, colonies=9, colony_diameter=90.0)
    img, n = sample.image, int(sample.labels.max())
    results = {}
    for check in (True, False):
        monkeypatch.setitem(eng.OPTIONS, "island_check", check)
        results[check] = count(img, "nuclei-count", device="cpu")
    on, off = results[True], results[False]
    isl = on.size_estimate["islands"]
    assert isl["islands"] >= 5 and isl["diameter"] >= eng.ISLAND_VETO * on.diameter
    assert isl["cells_per_island"] > eng.ISLAND_MAX_CELLS and not isl["used"]
    assert on.diameter == pytest.approx(off.diameter) and on.count == pytest.approx(off.count)
    assert on.count > 0.5 * n


def test_cells_per_island_maps_the_model_grid_onto_the_islands():
    labels = np.zeros((8, 8), np.int32)
    labels[1:3, 1:3] = 1
    labels[5:7, 4:8] = 2
    density = np.zeros((16, 16))  # a plane of 32 x 32 (blocks of 4) on a 16 x 16 model grid
    density[2:6, 2:6] = 0.25  # 4 cells on island 1
    density[10:14, 8:16] = 0.5  # 16 cells on island 2
    density[0, 15] = 3.0  # outside every island
    assert eng._cells_per_island(density, labels, 4, (32, 32)) == pytest.approx(10.0)


@pytest.mark.parametrize("block_size", [None, 256])
def test_count_uses_the_island_check_in_both_paths(monkeypatch, block_size):
    """Large textured nuclei: the size check reads the grain as small cells; with
    ``OPTIONS["island_check"]`` the islands' diameter replaces it, whole-plane and blocked, and
    the count gets closer to the truth; off, nothing is measured or recorded."""
    textured, n = _textured_nuclei(seed=1)
    img = (textured * 2000 + 100).astype(np.uint16)
    results = {}
    for check in (True, False):
        monkeypatch.setitem(eng.OPTIONS, "island_check", check)
        r = count(img, "nuclei-count", device="cpu", block_size=block_size)
        assert r.diameter_source == "estimated"
        results[check] = r
    on, off = results[True], results[False]
    assert off.size_estimate.get("islands") is None
    isl = on.size_estimate["islands"]
    assert isl["used"] and isl["islands"] >= 5
    assert on.diameter == pytest.approx(isl["diameter"], abs=1e-3)
    assert on.diameter == pytest.approx(60.0, rel=0.12)
    assert off.diameter < on.diameter / eng.ISLAND_VETO  # what the check corrects
    assert abs(on.count - n) < abs(off.count - n)


@pytest.mark.parametrize("shape", [(9, 11), (40, 31), (97, 160), (300, 257)])
def test_fast_scale_profile_equals_the_scipy_filters(shape):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(shape[0])
    s = synthetic_cells((max(shape[0], 32), max(shape[1], 32)), 12, 9.0, seed=shape[1])
    x = s.image[: shape[0], : shape[1]] / s.image.max() + rng.normal(0, 0.05, shape)
    x = np.clip(x, -0.2, 1.5)
    np.testing.assert_allclose(size_mod.scale_profile(x), _profile_with_scipy_filters(x), atol=2e-5)
    # the FFT path on its own, against SciPy's LoG, also on planes smaller than the kernel
    # radius (12 px for sigma 3), which both extend by repeated mirroring
    sig = [1.2, 1.9, 3.0]
    for plane in (x, x[:3, :5], x[:1, :2]):
        fast = size_mod._log_responses(plane.astype(np.float32), sig)
        assert fast.shape == (3, *plane.shape) and fast.dtype == np.float32
        for k, s_ in enumerate(sig):
            ref = -(s_ * s_) * ndi.gaussian_laplace(plane.astype(np.float32), s_, mode="reflect")
            np.testing.assert_allclose(fast[k], ref, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 20, 201, 4096])
def test_upper_percentiles_equal_numpy(n):
    rng = np.random.default_rng(n)
    for v in (rng.normal(size=n).astype(np.float32), rng.integers(0, 3, n).astype(np.float32)):
        got = size_mod._upper_percentiles(v, (95.0, 99.5))
        np.testing.assert_allclose(got, np.percentile(v, [95.0, 99.5]), rtol=1e-6, atol=1e-7)


def test_upper_percentiles_prefilter_is_exact_and_falls_back(monkeypatch):
    """Large arrays go through the subsample threshold; ties at the threshold, a heavy
    tail, and a sample whose threshold lets too few values pass (the fallback) all give
    NumPy's numbers."""
    rng = np.random.default_rng(7)
    n = size_mod.PREFILTER_MIN + 12345
    tail = rng.normal(size=n).astype(np.float32)
    tail[rng.integers(0, n, 500)] = 50.0
    mostly_zero = np.zeros(n, np.float32)
    mostly_zero[rng.integers(0, n, 3000)] = rng.random(3000).astype(np.float32)
    ties = np.round(rng.normal(size=n), 1).astype(np.float32)
    # sorted ascending: the 1-in-16 subsample's threshold sits on the sorted order, exact
    ordered = np.sort(rng.random(n).astype(np.float32))
    for v in (tail, mostly_zero, ties, ordered, ordered[::-1].copy()):
        got = size_mod._upper_percentiles(v, (95.0, 99.5))
        np.testing.assert_allclose(got, np.percentile(v, [95.0, 99.5]), rtol=1e-6, atol=1e-7)
    # a threshold too high for the values needed: the whole array is used instead
    calls = []
    real_partition = np.partition

    def spy(a, kth, *args, **kwargs):
        calls.append(np.size(a))
        return real_partition(a, kth, *args, **kwargs)

    monkeypatch.setattr(size_mod.np, "partition", spy)
    v = np.zeros(n, np.float32)
    v[::32] = 1.0  # half the 1-in-16 subsample is ones: threshold 1, only 3 % pass
    got = size_mod._upper_percentiles(v, (95.0, 99.5))
    np.testing.assert_allclose(got, np.percentile(v, [95.0, 99.5]))
    assert n in calls  # fell back to partitioning the whole array


# ------------------------------------------------------------------ the engine


def _save(tmp_path, name, config, task="count", **card):
    torch.manual_seed(0)
    net = build_model(config)
    c = make_card(name, task, net.config, metrics={"split": "none"}, **card)
    return save_model(net, c, tmp_path / name)


def test_engine_estimates_size_for_generalist_cards(tmp_path):
    cfg = {"architecture": "unet_count", "widths": [4, 8], "size_head": True}
    gen = _save(tmp_path, "gen", cfg, diameter=12.0, diameter_mode="estimate")
    fixed = _save(tmp_path, "fixed", cfg, diameter=12.0)
    img = synthetic_cells((128, 128), 30, 16.0, seed=1).image
    r = count(img, gen, device="cpu")
    assert r.diameter_source == "estimated" and r.diameter == pytest.approx(16.0, rel=0.6)
    assert r.density.shape == img.shape
    info = r.size_estimate  # how the diameter was found, and what it cost
    assert info["regressor"] > 0 and info["refined"] == pytest.approx(r.diameter)
    assert len(info["size_head"]) >= 1 and 0 <= info["seconds"] < 60
    given = count(img, gen, diameter=20.0, device="cpu")
    assert given.diameter_source == "given" and given.size_estimate is None
    rf = count(img, fixed, device="cpu")
    assert rf.diameter_source == "model" and rf.diameter is None
    assert count(img, fixed, diameter="auto", device="cpu").diameter_source == "estimated"
    # segmentation uses the counter's diameter for both networks
    seg_cfg = {"architecture": "se_unet", "widths": [4, 8]}
    segm = _save(tmp_path, "seg", seg_cfg, "segment", diameter=20.0, diameter_mode="estimate")
    sr = segment(img, segm, count_model=gen, device="cpu")
    assert sr.diameter_source == "estimated" and sr.diameter == pytest.approx(r.diameter)


def test_size_head_refines_the_estimate(monkeypatch):
    """A size head that sees objects twice the model diameter doubles the estimate."""

    class FakeRunner:
        def __init__(self):
            self.calls = 0

        def check_cancel(self):
            pass

        def predict_quiet(self, plane):
            self.calls += 1
            dens = np.full(plane.shape, 0.01, np.float32)  # plenty of cells
            logsize = np.full(plane.shape, math.log(2.0) if self.calls == 1 else 0.0, np.float32)
            return np.stack([dens, logsize])

    st = eng._ScaleState(None, 12.0, None, "estimate")
    st.set_diameter(12.0)
    runner = FakeRunner()
    plane, pred = eng._refine_diameter(runner, np.zeros((100, 100), np.float32), st)
    assert st.diameter == pytest.approx(24.0) and runner.calls == 2
    assert plane.shape == (50, 50) and pred is not None  # whole plane checked: reused
    assert st.estimate["size_head"][0]["log_size"] == pytest.approx(math.log(2.0), abs=1e-3)
    # the reused last pass is not counted as extra time; the first (discarded) one is
    first, last = (c["seconds"] for c in st.estimate["size_head"])
    assert st.estimate["seconds"] == pytest.approx(first)


def test_size_check_predicts_small_planes_whole_but_reads_the_window(monkeypatch):
    """A plane over REFINE_WINDOW but under REFINE_WHOLE_PIXELS is predicted whole (the count
    reuses that pass); the size head is read on the same window as for a big plane."""
    shapes = []

    class Runner:
        def check_cancel(self):
            pass

        def predict_quiet(self, plane):
            shapes.append(plane.shape)
            dens = np.full(plane.shape, 0.01, np.float32)
            logsize = np.full(plane.shape, math.log(2.0), np.float32)
            rows, cols = size_mod.window_slices(plane, eng.REFINE_WINDOW)
            logsize[rows, cols] = 0.0  # objects of the model's size inside the window only
            return np.stack([dens, logsize])

    st = eng._ScaleState(None, 12.0, None, "estimate")
    st.set_diameter(12.0)
    plane, pred = eng._refine_diameter(Runner(), np.zeros((300, 320), np.float32), st)
    assert shapes == [(300, 320)] and pred is not None and pred.shape[1:] == (300, 320)
    assert st.diameter == pytest.approx(12.0) and st.estimate["size_head"][0]["log_size"] == 0
    assert st.estimate["seconds"] == pytest.approx(0.0, abs=1e-9)  # the pass is the count's
    shapes.clear()
    monkeypatch.setattr(eng, "REFINE_WHOLE_PIXELS", 0)  # a big plane: the window alone
    st = eng._ScaleState(None, 12.0, None, "estimate")
    st.set_diameter(12.0)
    plane, pred = eng._refine_diameter(Runner(), np.zeros((300, 320), np.float32), st)
    assert shapes == [(256, 256)] and pred is None and st.diameter == pytest.approx(12.0)


@pytest.mark.parametrize("block_size", [None, 128])
def test_size_check_option_is_honoured_in_both_paths(monkeypatch, block_size):
    """``OPTIONS["size_check"] = False`` leaves the estimate unchecked, whole-plane and blocked."""
    calls = []
    real = eng._refine_diameter

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(eng, "_refine_diameter", spy)
    img = synthetic_cells((192, 192), 40, 14.0, seed=2).image
    for check, expected in ((True, 1), (False, 0)):
        calls.clear()
        monkeypatch.setitem(eng.OPTIONS, "size_check", check)
        r = count(img, "nuclei-count", device="cpu", block_size=block_size)
        assert r.diameter_source == "estimated" and len(calls) == expected


def test_card_diameter_mode_validation(tmp_path):
    cfg = {"architecture": "unet_count", "widths": [4, 8]}
    with pytest.raises(NaluCountError, match="diameter_mode"):  # refused before anything is written
        _save(tmp_path, "a", cfg, diameter=12.0, diameter_mode="guess")
    assert not (tmp_path / "a.json").exists()
    from napari_nalu_count.models.card import validate_card

    card = make_card("b", "count", validate_config(cfg), diameter_mode="estimate")
    with pytest.raises(ModelFileError, match="needs the card's 'diameter'"):
        validate_card(card, "b.json", check_weight_fields=False)
    card = make_card("c", "count", validate_config(cfg), diameter=9.0, scale_jitter=[2, 1])
    with pytest.raises(ModelFileError, match="scale_jitter"):
        validate_card(card, "c.json", check_weight_fields=False)


# ------------------------------------------------------------------ fine-tuning a generalist


def test_fine_tune_generalist_on_the_model_grid(tmp_path):
    cfg = {"architecture": "unet_count", "widths": [4, 8], "size_head": True}
    start = _save(
        tmp_path, "gen", cfg, diameter=12.0, diameter_mode="estimate", scale_jitter=[0.8, 1.25]
    )
    samples = []
    for i, d in enumerate((18.0, 24.0, 20.0)):
        s = synthetic_cells((96, 96), 12, d, seed=20 + i)
        samples.append(Sample(image=s.image, dots=s.dots, labels=s.labels, name=f"im{i}"))
    res = fine_tune(
        start,
        samples,
        name="gen-ft",
        cfg=TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32),
        use_fre=False,
    )
    card = res.card
    assert card["diameter_mode"] == "estimate" and card["diameter"] == 12.0
    assert card["scale_jitter"] == [0.8, 1.25] and "input_scale" not in card
    assert "end to end" in card["metrics"]["split"]
    assert res.metrics_before["n_cells"] == res.metrics_after["n_cells"] > 0
    assert res.metrics_before["n_images"] == 1
    assert card["training"]["settings"]["scale_jitter"] == [0.8, 1.25]
    assert any("model grid" in n for n in res.notes)


def test_ema_weights_are_kept_and_validated():
    from napari_nalu_count.train import train

    samples = _items(2)
    cfg = {"architecture": "unet_count", "widths": [4, 8]}

    def run(ema):
        c = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=2, patch_size=32, ema=ema, seed=1)
        return train(cfg, samples, samples[:1], "count", c)

    plain, averaged = run(0.0), run(0.9)
    p = dict(plain.net.named_parameters())
    diff = max(float((p[k] - v).abs().max()) for k, v in averaged.net.named_parameters())
    assert diff > 1e-6  # the kept weights are the average, not the last step's
    assert averaged.best_metrics and "mae" in averaged.best_metrics
    with pytest.raises(InputError, match="ema"):
        TrainConfig(ema=1.0).check()


def test_estimate_from_the_engines_normalised_plane_is_the_same():
    from napari_nalu_count.data.normalize import percentile_normalize
    from napari_nalu_count.data.synthetic import synthetic_cells

    img = synthetic_cells((900, 760), n_cells=120, diameter=18.0, seed=3).image
    raw = size_mod.estimate_diameter(img)
    norm = percentile_normalize(img, *size_mod.NORM_PERCENTILES)
    assert size_mod.estimate_diameter(norm, normalized=True) == raw
    # windows judged on the clipped values without clipping the whole plane
    clipped = np.clip(norm, *size_mod.CLIP)
    np.testing.assert_array_equal(
        size_mod.choose_window(norm, 640, clip=size_mod.CLIP), size_mod.choose_window(clipped, 640)
    )
    assert size_mod.estimate_diameter(np.zeros((64, 64), np.float32), normalized=True) is None


def test_fine_tune_size_estimates_that_disagree_are_replaced_by_the_median(monkeypatch):
    import types

    import napari_nalu_count.infer as infer
    from napari_nalu_count.train.grid import image_diameters

    sizes = {}

    def fake_count(image, model, axes=None):
        return types.SimpleNamespace(diameter=sizes[float(image[0, 0])])

    monkeypatch.setattr(infer, "count", fake_count)
    start = types.SimpleNamespace(task="count")

    def samples(ds, labelled=()):
        out = []
        for i, d in enumerate(ds):
            img = np.full((8, 8), float(i), np.float32)
            sizes[float(i)] = d
            lab = None
            if i in labelled:
                lab = np.zeros((40, 40), np.int32)
                lab[5:25, 5:25] = 1  # one 20 x 20 object: 22.6 px equivalent diameter
            out.append(Sample(image=img, dots=np.zeros((0, 2)), labels=lab, name=f"im{i}"))
        return out

    notes = []
    d, how = image_diameters(samples([29.5, 13.7, 29.5, 9.9, 29.2]), start, None, notes)
    assert d == [29.5, 29.2, 29.5, 29.2, 29.2]  # the median of the five estimates is 29.2
    assert how == "estimated by the start model"
    assert len(notes) == 2 and "'im1'" in notes[0] and "13.7 px" in notes[0]
    assert "'im3'" in notes[1] and "median, 29.2 px" in notes[1]
    # within 1.5x of the median: every image keeps its own estimate
    notes = []
    d, _ = image_diameters(samples([20.0, 28.0, 36.0]), start, None, notes)
    assert d == [20.0, 28.0, 36.0] and notes == []
    # two estimates are not enough to call one of them wrong
    d, _ = image_diameters(samples([30.0, 10.0]), start, None, notes)
    assert d == [30.0, 10.0] and notes == []
    # sizes measured from labels are not estimates: never replaced, not in the median
    d, how = image_diameters(samples([30.0, 30.0, 10.0, 30.0], labelled=(2,)), start, None, notes)
    assert d[:2] == [30.0, 30.0] and d[3] == 30.0 and 20 < d[2] < 25 and notes == []
    assert "labels" in how and "estimated" in how
