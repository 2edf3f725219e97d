"""Engine tests: count/segment on numpy and dask images, axes, channels, normalisation edge
cases, progress/cancel, device choice, CUDA OOM fallback, BN folding and object-size rescaling.

Models are tiny networks saved into the per-test user model directory (``tiny-count`` is
trained for a few seconds on synthetic cells, once per process, so counts mean something);
tests with the bundled models skip when those are absent.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_nalu_count.errors import Cancelled, CancelToken, InputError
from napari_nalu_count.infer import CountResult, SegmentResult, count, segment
from napari_nalu_count.infer import engine as eng
from napari_nalu_count.infer.axes import infer_axes, make_plan
from napari_nalu_count.infer.device import resolve_device
from napari_nalu_count.infer.postprocess import match_points

CARD_DIAMETER = 14.0


@functools.lru_cache(maxsize=1)
def trained_counter_state() -> tuple[dict, dict]:
    """(config, state_dict) of a tiny FCRN-A trained ~200 steps on synthetic cells (~8 s)."""
    from napari_nalu_count.data.density import dots_to_density
    from napari_nalu_count.data.normalize import percentile_normalize
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    net = build_model({"architecture": "fcrn_a", "widths": [8, 8, 16, 16]})
    counts = [10, 20, 30, 15, 25, 5, 35, 12]
    samples = [synthetic_cells((128, 128), n_cells=n, seed=i) for i, n in enumerate(counts)]
    x = torch.from_numpy(np.stack([percentile_normalize(s.image) for s in samples]))[:, None]
    y = np.stack([dots_to_density(s.dots, (128, 128)) * 100.0 for s in samples])
    y = torch.from_numpy(y.astype(np.float32))[:, None]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for step in range(220):
        i = torch.randint(0, len(samples), (4,), generator=gen)
        y0, x0 = (int(v) for v in torch.randint(0, 64, (2,), generator=gen))
        xb, yb = x[i, :, y0 : y0 + 64, x0 : x0 + 64], y[i, :, y0 : y0 + 64, x0 : x0 + 64]
        if step % 2:
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = ((net(xb) - yb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net.config, {k: v.clone() for k, v in net.state_dict().items()}


def save_trained_counter(name: str = "tiny-count") -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    config, state = trained_counter_state()
    net = build_model(config)
    net.load_state_dict(state)
    card = make_card(
        name,
        "count",
        net.config,
        density_scale=100.0,
        diameter=CARD_DIAMETER,
        metrics={"split": "synthetic"},
    )
    save_model(net, card, name)
    return name


def save_random_model(name: str, task: str, widths: list[int] | None = None) -> str:
    """An untrained tiny model (for mechanics, not accuracy)."""
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(1)
    arch = "fcrn_a" if task == "count" else "se_unet"
    net = build_model(
        {"architecture": arch, "widths": widths or ([4, 4, 8, 8] if task == "count" else [4, 8])}
    )
    for m in net.modules():  # non-trivial BN statistics, so folding is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    card = make_card(name, task, net.config, diameter=CARD_DIAMETER)
    save_model(net, card, name)
    return name


def cells(shape=(160, 200), n=25, seed=3, diameter=CARD_DIAMETER):
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape, n_cells=n, diameter=diameter, seed=seed)


@pytest.fixture
def counter() -> str:
    return save_trained_counter()


@pytest.fixture
def random_counter() -> str:
    return save_random_model("rand-count", "count")


@pytest.fixture
def seg_model() -> str:
    return save_random_model("tiny-seg", "segment")


# ------------------------------------------------------------------------------------------
# basics


def test_count_2d_result_contract(counter):
    s = cells()
    res = count(s.image, counter, device="cpu")
    assert isinstance(res, CountResult)
    assert isinstance(res.count, float)
    assert res.density.dtype == np.float32 and res.density.shape == s.image.shape
    assert res.axes == "YX"
    assert res.points.ndim == 2 and res.points.shape[1] == 2
    assert res.count == pytest.approx(float(res.density.sum(dtype=np.float64)), rel=1e-5)
    # the trained tiny model counts synthetic cells within 20 %, and its peaks find them
    assert res.count == pytest.approx(len(s.dots), rel=0.2)
    _, recall, f1 = match_points(res.points, s.dots, radius=CARD_DIAMETER / 2)
    assert f1 > 0.7, f1


def test_model_by_name_path_and_loaded_model_agree(counter):
    from napari_nalu_count.models import load_model, user_model_dir

    img = cells().image
    a = count(img, counter, device="cpu").count
    b = count(img, str(user_model_dir() / f"{counter}.json"), device="cpu").count
    c = count(img, load_model(counter), device="cpu").count
    assert a == pytest.approx(b, rel=1e-6) and a == pytest.approx(c, rel=1e-6)


def test_wrong_task_model_is_input_error(counter, seg_model):
    img = cells().image
    with pytest.raises(InputError, match="segment"):
        count(img, seg_model, device="cpu")
    with pytest.raises(InputError, match="count"):
        segment(img, counter, device="cpu")


def test_loaded_model_is_not_modified_by_bn_folding(random_counter):
    from napari_nalu_count.models import load_model

    loaded = load_model(random_counter)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.net.modules())
    count(cells().image, loaded, device="cpu")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.net.modules()) == n_bn


def test_fold_batchnorm_keeps_outputs(random_counter):
    import copy

    from napari_nalu_count.models import load_model

    net = load_model(random_counter).net
    x = torch.randn(2, 1, 48, 40)
    with torch.inference_mode():
        ref = net(x)
        fused = copy.deepcopy(net)
        assert eng.fold_batchnorm(fused) >= 7
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.enc1.modules())
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# dtypes, normalisation edge cases


def test_dtypes_give_consistent_counts(counter):
    img16 = cells().image.astype(np.uint16)
    c16 = count(img16, counter, device="cpu").count
    c32 = count(img16.astype(np.float32), counter, device="cpu").count
    c64 = count(img16.astype(np.float64) * 0.01, counter, device="cpu").count
    img8 = np.round((img16.astype(np.float64) - img16.min()) / np.ptp(img16) * 255).astype(np.uint8)
    c8 = count(img8, counter, device="cpu").count
    assert c32 == pytest.approx(c16, rel=1e-4)
    assert c64 == pytest.approx(c16, rel=1e-3)
    assert c8 == pytest.approx(c16, rel=0.05)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_is_input_error(counter, bad):
    img = cells().image.astype(np.float32)
    img[5, 7] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        count(img, counter, device="cpu")


@pytest.mark.parametrize("value", [0, 1000])
def test_constant_plane_counts_zero(counter, value, seg_model):
    img = np.full((96, 80), value, dtype=np.uint16)
    res = count(img, counter, device="cpu")
    assert res.count == 0.0 and len(res.points) == 0 and not res.density.any()
    seg = segment(img, seg_model, device="cpu")
    assert seg.count == 0 and not seg.labels.any()


def test_stack_with_empty_plane(counter):
    a, b = cells(seed=1).image, cells(seed=2, n=12).image
    stack = np.stack([a, np.zeros_like(a), b])
    res = count(stack, counter, axes="ZYX", device="cpu")
    assert res.axes == "ZYX"
    assert res.count.shape == (3,) and res.count[1] == 0.0
    single_a = count(a, counter, device="cpu").count
    single_b = count(b, counter, device="cpu").count
    np.testing.assert_allclose(res.count[[0, 2]], [single_a, single_b], rtol=1e-5)
    assert res.density.shape == stack.shape
    assert res.points.shape[1] == 3
    planes = set(res.points[:, 0].astype(int))
    assert planes == {0, 2}


# ------------------------------------------------------------------------------------------
# axes and channels


def test_axes_inference_rules():
    assert infer_axes((64, 80)) == "YX"
    assert infer_axes((64, 80, 3)) == "YXC"
    assert infer_axes((64, 80, 4)) == "YXC"
    assert infer_axes((12, 64, 80)) == "TYX"
    assert infer_axes((1, 64, 80)) == "TYX"
    assert infer_axes((5, 64, 80, 3)) == "TYXC"
    for ambiguous in [(3, 64, 80), (2, 64, 80), (200, 64, 80), (64, 80, 7), (4, 5, 64, 80)]:
        with pytest.raises(InputError, match="axes"):
            infer_axes(ambiguous)


def test_axes_mismatch_and_bad_letters_are_input_errors(counter):
    img = cells().image
    with pytest.raises(InputError, match="dimensions"):
        count(img, counter, axes="TYX", device="cpu")
    with pytest.raises(InputError, match="unknown letter"):
        count(img, counter, axes="YQ", device="cpu")
    with pytest.raises(InputError, match="both"):
        count(np.stack([img] * 6), counter, axes="TZY", device="cpu")
    with pytest.raises(InputError, match="axes"):
        count(np.stack([img] * 3), counter, device="cpu")


def test_rgb_uses_max_and_channels_need_a_choice(counter):
    img = cells().image
    c_gray = count(img, counter, device="cpu").count
    rgb = np.zeros(img.shape + (3,), dtype=img.dtype)
    rgb[..., 2] = img  # signal in blue only (like the VGG cells)
    assert count(rgb, counter, device="cpu").count == pytest.approx(c_gray, rel=1e-4)
    multi = np.stack([np.zeros_like(img), img])  # CYX, two channels
    with pytest.raises(InputError, match="channel"):
        count(multi, counter, axes="CYX", device="cpu")
    assert count(multi, counter, axes="CYX", channel=1, device="cpu").count == pytest.approx(
        c_gray, rel=1e-4
    )
    mean = count(multi, counter, axes="CYX", channel="mean", device="cpu").count
    assert mean == pytest.approx(c_gray, rel=1e-4)  # mean = img / 2, normalisation undoes it
    with pytest.raises(InputError, match="range"):
        count(multi, counter, axes="CYX", channel=5, device="cpu")


def test_tzyx_and_reordered_axes(counter):
    a, b = cells(seed=1).image, cells(seed=2, n=12).image
    tz = np.stack([np.stack([a, b]), np.stack([b, a])])  # (T=2, Z=2, Y, X)
    res = count(tz, counter, axes="TZYX", device="cpu")
    assert res.count.shape == (4,) and res.density.shape == tz.shape
    assert res.count[0] == pytest.approx(res.count[3], rel=1e-6)
    assert res.points.shape[1] == 4
    # stack axis last: "YXT"; outputs follow the input's order
    ytx = np.moveaxis(np.stack([a, b]), 0, -1)
    res2 = count(ytx, counter, axes="YXT", device="cpu")
    assert res2.axes == "YXT" and res2.density.shape == ytx.shape
    np.testing.assert_allclose(res2.count, res.count[:2], rtol=1e-6)
    assert set(res2.points[:, 2].astype(int)) <= {0, 1}
    assert make_plan(ytx, "YXT").stack_shape == (2,)


# ------------------------------------------------------------------------------------------
# dask: lazy, plane by plane


def test_dask_stack_is_read_plane_by_plane(counter):
    da = pytest.importorskip("dask.array")
    planes = [cells(seed=s, n=10 + s).image for s in range(4)]
    loaded: list[int] = []

    def load(block_info=None):
        t = block_info[None]["chunk-location"][0]
        loaded.append(t)
        return planes[t][None]

    lazy = da.map_blocks(
        load,
        dtype=np.uint16,
        chunks=((1,) * 4, (planes[0].shape[0],), (planes[0].shape[1],)),
    )
    seen_at_progress: list[tuple[int, list[int]]] = []

    def progress(done, total, message):
        seen_at_progress.append((done, list(loaded)))

    res = count(lazy, counter, axes="TYX", device="cpu", progress=progress)
    assert sorted(loaded) == [0, 1, 2, 3] and len(loaded) == 4  # each plane read exactly once
    # while plane k ran, no later plane had been read
    for done, seen in seen_at_progress:
        if done >= 1:
            assert max(seen) <= done - 1
    eager = count(np.stack(planes), counter, axes="TYX", device="cpu")
    np.testing.assert_allclose(res.count, eager.count, rtol=1e-6)


def test_huge_lazy_dask_plane_count_without_computing_others(counter):
    da = pytest.importorskip("dask.array")
    img = cells(seed=5).image
    # a 10-plane stack where only one plane is real: selecting it with axes/indices keeps lazy
    big = da.concatenate(
        [da.from_array(img[None])] + [da.zeros((1,) + img.shape, dtype=img.dtype)] * 9
    )
    res = count(big, counter, axes="TYX", device="cpu")
    assert res.count[0] > 5 and np.all(res.count[1:] == 0)


# ------------------------------------------------------------------------------------------
# progress, cancel, device, OOM


def test_progress_counts_planes_times_tiles(random_counter):
    img = np.random.default_rng(0).integers(0, 1000, (200, 260)).astype(np.uint16)
    calls: list[tuple[int, int, str]] = []
    count(
        np.stack([img] * 2),
        random_counter,
        axes="TYX",
        device="cpu",
        tile_size=96,
        progress=lambda *a: calls.append(a),
    )
    dones = [c[0] for c in calls]
    assert dones == sorted(dones)
    total = calls[-1][1]
    from napari_nalu_count.infer.tiling import n_tiles

    assert total == 2 * n_tiles((200, 260), 96, 24)
    assert calls[-1][0] == total and all(isinstance(c[2], str) for c in calls)


def test_cancel_between_tiles(random_counter):
    img = np.random.default_rng(0).integers(0, 1000, (200, 260)).astype(np.uint16)
    token = CancelToken()
    seen: list[int] = []

    def progress(done, total, message):
        seen.append(done)
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        count(img, random_counter, device="cpu", tile_size=64, progress=progress, cancel=token)
    assert max(seen) == 2  # stopped right after the tile that set the flag


def test_device_choice():
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cuda_oom_retries_with_smaller_tiles(random_counter, monkeypatch):
    img = np.random.default_rng(0).integers(0, 1000, (150, 170)).astype(np.uint16)
    reference = count(img, random_counter, device="cpu", tile_size=160).count
    real_forward = eng._forward_fn
    sizes: list[int] = []

    def forward_fn(net, task, scale, *gate):
        inner = real_forward(net, task, scale, *gate)

        def forward(x):
            sizes.append(int(x.shape[-1]) * int(x.shape[0]))
            if x.shape[-1] * x.shape[-2] * x.shape[0] > 80 * 80:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return inner(x)

        return forward

    monkeypatch.setattr(eng, "_forward_fn", forward_fn)
    messages: list[str] = []
    res = count(
        img,
        random_counter,
        device="cpu",
        tile_size=256,
        progress=lambda d, t, m: messages.append(m),
    )
    assert any("out of memory" in m for m in messages)
    assert res.count == pytest.approx(reference, rel=0.01)
    assert min(sizes) <= 80


# ------------------------------------------------------------------------------------------
# object size


def test_diameter_rescaling_keeps_count(counter):
    s = cells((160, 160), n=20, seed=7)
    base = count(s.image, counter, device="cpu")
    up = ndi.zoom(s.image.astype(np.float32), 2.0, order=1, grid_mode=True, mode="nearest")
    res = count(up, counter, diameter=2 * CARD_DIAMETER, device="cpu")
    assert res.density.shape == up.shape
    assert res.count == pytest.approx(base.count, rel=0.05)
    assert float(res.density.sum()) == pytest.approx(res.count, rel=1e-4)
    # points come back on the upscaled grid
    _, _, f1 = match_points(res.points, (s.dots + 0.5) * 2 - 0.5, radius=CARD_DIAMETER)
    assert f1 > 0.7
    # without telling the size, the 2x cells are miscounted (the test would be vacuous otherwise)
    assert abs(count(up, counter, device="cpu").count - base.count) > 0.1 * base.count


def test_card_input_scale_resamples_without_diameter(counter):
    """A card with input_scale=0.5 (trained at half resolution; its diameter on the model grid)
    counts a full-resolution image like an explicit diameter does, results on the image grid."""
    from napari_nalu_count.models import load_model, make_card, save_model

    loaded = load_model(counter)
    card = make_card(
        "half-count",
        "count",
        loaded.config,
        density_scale=100.0,
        diameter=CARD_DIAMETER,  # cells on the model grid
        input_scale=0.5,
        metrics={"split": "synthetic"},
    )
    save_model(loaded.net, card, "half-count")
    s = cells((160, 160), n=20, seed=7)
    up = ndi.zoom(s.image.astype(np.float32), 2.0, order=1, grid_mode=True, mode="nearest")
    explicit = count(up, counter, diameter=2 * CARD_DIAMETER, device="cpu")
    implied = count(up, "half-count", device="cpu")
    assert implied.density.shape == up.shape
    assert implied.count == pytest.approx(explicit.count, rel=0.03)
    assert float(implied.density.sum()) == pytest.approx(implied.count, rel=1e-4)
    _, _, f1 = match_points(implied.points, (s.dots + 0.5) * 2 - 0.5, radius=CARD_DIAMETER)
    assert f1 > 0.7
    # an explicit diameter still means "my cells are d px": factor card diameter / d
    same = count(up, "half-count", diameter=2 * CARD_DIAMETER, device="cpu")
    assert same.count == pytest.approx(explicit.count, rel=1e-4)


def test_diameter_auto_estimates_size(counter):
    s = cells((160, 160), n=20, seed=7)
    up = ndi.zoom(s.image.astype(np.float32), 2.0, order=1, grid_mode=True, mode="nearest")
    res = count(up, counter, diameter="auto", device="cpu")
    assert res.diameter == pytest.approx(2 * CARD_DIAMETER, rel=0.3)
    assert res.count == pytest.approx(len(s.dots), rel=0.25)


def test_bad_diameter(counter):
    img = cells().image
    for bad in (-3, 0, "big", float("nan")):
        with pytest.raises(InputError, match="diameter"):
            count(img, counter, diameter=bad, device="cpu")
    with pytest.raises(InputError, match="too far"):
        count(img, counter, diameter=1000, device="cpu")


# ------------------------------------------------------------------------------------------
# segment


def test_segment_contract_and_stack(seg_model):
    img = cells().image
    res = segment(img, seg_model, device="cpu")
    assert isinstance(res, SegmentResult)
    assert res.labels.dtype == np.int32 and res.labels.shape == img.shape
    assert isinstance(res.count, int) and res.count == int(res.labels.max())
    stack = segment(np.stack([img, img]), seg_model, axes="TYX", device="cpu")
    assert stack.labels.shape == (2,) + img.shape
    assert stack.count.shape == (2,) and stack.count[0] == res.count


def test_segment_count_seeds_and_rescale(seg_model, counter):
    s = cells()
    res = segment(s.image, seg_model, device="cpu", seeds="count", count_model=counter)
    assert res.seeds == "count" and res.labels.shape == s.image.shape
    up = np.kron(s.image, np.ones((2, 2), dtype=s.image.dtype))
    res2 = segment(up, seg_model, device="cpu", diameter=2 * CARD_DIAMETER)
    assert res2.labels.shape == up.shape
    with pytest.raises(InputError, match="seeds"):
        segment(s.image, seg_model, device="cpu", seeds="magic")


# ------------------------------------------------------------------------------------------
# bundled models (skip when the trained models are not installed)


def _bundled(name: str) -> bool:
    from napari_nalu_count.models import bundled_model_dir

    return (bundled_model_dir() / f"{name}.json").is_file()


@pytest.mark.skipif(not _bundled("nuclei-count"), reason="bundled nuclei-count not installed")
def test_bundled_counter_on_synthetic_nuclei():
    from napari_nalu_count.models import load_model

    model = load_model("nuclei-count")
    d = float(model.card.get("diameter") or 20.0)
    s = cells((384, 384), n=60, seed=11, diameter=d)
    res = count(s.image, device="cpu")
    assert res.count == pytest.approx(60, rel=0.3)


@pytest.mark.skipif(not _bundled("nuclei-seg"), reason="bundled nuclei-seg not installed")
def test_bundled_segmenter_on_synthetic_nuclei():
    from napari_nalu_count.models import load_model

    model = load_model("nuclei-seg")
    d = float(model.card.get("diameter") or 20.0)
    s = cells((384, 384), n=60, seed=11, diameter=d)
    res = segment(s.image, device="cpu")
    assert res.count == pytest.approx(60, rel=0.3)


@pytest.mark.parametrize("unit", ["nac", "nau", "nalu"])
def test_fold_residuals_keeps_outputs(unit):
    """A NAC/NAU residual branch folds into two 1x1 convolutions with the same output; a NALU
    branch (not linear) is left alone. BN statistics are made non-trivial first so the fold
    has something to fold."""
    import copy

    from napari_nalu_count.nn.blocks import ArithmeticResidual, FoldedArithmeticResidual
    from napari_nalu_count.nn.unet import CountUNet

    torch.manual_seed(0)
    net = CountUNet(widths=(4, 8, 16), unit=unit, activation="leaky_relu", size_head=True)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.randn(2, 1, 40, 48)
    with torch.inference_mode():
        ref = net(x)
        for bn_first in (False, True):  # the squeeze's BN folded beforehand, or not
            folded = copy.deepcopy(net)
            if bn_first:
                eng.fold_batchnorm(folded)
            n = eng.fold_residuals(folded)
            kinds = [type(r) for r in folded.residuals]
            if unit == "nalu":
                assert n == 0 and kinds == [ArithmeticResidual] * 2
                if bn_first:  # the NALU's log/exp path magnifies BN folding's rounding
                    continue
            else:
                assert n == 2 and kinds == [FoldedArithmeticResidual] * 2
            torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="NAC or NAU"):
        FoldedArithmeticResidual.from_residual(CountUNet(widths=(4, 8), unit="nalu").residuals[0])


def test_prepared_counter_folds_its_residuals_and_counts_the_same():
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.blocks import FoldedArithmeticResidual
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8, 16], "unit": "nau"})
    for m in net.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_model(net, make_card("fold-count", "count", net.config, diameter=10.0), "fold-count")
    img = cells().image
    before = dict(eng.OPTIONS)
    try:
        eng.OPTIONS["fold_residuals"] = False
        plain = count(img, "fold-count", device="cpu")
        eng.OPTIONS["fold_residuals"] = True
        folded = count(img, "fold-count", device="cpu")
        loaded = eng._resolve_model("fold-count", "count", torch.device("cpu"))
        prepared = eng.prepare_net(loaded, torch.device("cpu"))
    finally:
        eng.OPTIONS.clear()
        eng.OPTIONS.update(before)
    assert sum(isinstance(m, FoldedArithmeticResidual) for m in prepared.modules()) == 2
    assert abs(plain.count) > 1e-3
    assert folded.count == pytest.approx(plain.count, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(folded.density, plain.density, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("arch", ["count", "seg"])
def test_split_decoders_keep_outputs(arch):
    """Convolving up and skip separately and adding equals convolving their concatenation;
    the block still accepts a concatenated input."""
    import copy

    from napari_nalu_count.nn.unet import (
        CountUNet,
        DoubleConv,
        SEUNet,
        SplitInputDoubleConv,
        split_decoder_inputs,
    )

    torch.manual_seed(1)
    if arch == "count":
        net = CountUNet(widths=(4, 8, 16), unit="nau", size_head=True)
    else:
        net = SEUNet(widths=(4, 8, 16), fre={"B": 4, "X": 4.0, "seed": 0})
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(2, 1, 40, 48)
    with torch.inference_mode():
        ref = net(x)
        split = copy.deepcopy(net)
        eng.fold_batchnorm(split)
        assert split_decoder_inputs(split) == 2
        assert all(isinstance(d, SplitInputDoubleConv) for d in split.decoders)
        torch.testing.assert_close(split(x), ref, rtol=1e-4, atol=1e-5)
        block = net.decoders[0]
        assert isinstance(block, DoubleConv)
        cat = torch.randn(1, 8, 12, 10)
        torch.testing.assert_close(split.decoders[0](cat), block(cat), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="up_channels"):
        SplitInputDoubleConv(net.decoders[0], 8)


def test_split_decoders_option_gives_the_same_segmentation(seg_model):
    img = cells().image
    before = dict(eng.OPTIONS)
    try:
        eng.OPTIONS["split_decoders"] = False
        plain = segment(img, seg_model, device="cpu", seeds="interior")
        eng.OPTIONS["split_decoders"] = True
        split = segment(img, seg_model, device="cpu", seeds="interior")
        prepared = eng.prepare_net(
            eng._resolve_model(seg_model, "segment", torch.device("cpu")), torch.device("cpu")
        )
    finally:
        eng.OPTIONS.clear()
        eng.OPTIONS.update(before)
    from napari_nalu_count.nn.unet import SplitInputDoubleConv

    assert any(isinstance(m, SplitInputDoubleConv) for m in prepared.modules())
    np.testing.assert_array_equal(split.labels, plain.labels)


def test_fused_heads_keep_outputs_and_leave_the_original_alone():
    """The density and size heads as one two-output 1x1 convolution give the same output;
    the network without a size head is left as it is; the original keeps its own heads."""
    import copy

    from napari_nalu_count.nn.unet import CountUNet, fuse_heads

    torch.manual_seed(2)
    net = CountUNet(widths=(4, 8, 16), unit="nau", size_head=True).eval()
    x = torch.randn(2, 1, 40, 48).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(x)
        fused = copy.deepcopy(net)
        assert fuse_heads(fused) == 1
        torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-6)
    assert getattr(net, "fused_heads", None) is None
    assert "fused_heads.weight" not in net.state_dict()
    assert fuse_heads(CountUNet(widths=(4, 8, 16), size_head=False).eval()) == 0


def test_fuse_heads_option_gives_the_same_count():
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(3)
    cfg = {"architecture": "unet_count", "widths": [4, 8, 16], "unit": "nau", "size_head": True}
    net = build_model(cfg).eval()
    save_model(net, make_card("heads-count", "count", net.config, diameter=10.0), "heads-count")
    img = cells().image
    before = dict(eng.OPTIONS)
    try:
        eng.OPTIONS["fuse_heads"] = False
        plain = count(img, "heads-count", device="cpu", diameter=10.0)
        eng.OPTIONS["fuse_heads"] = True
        fused = count(img, "heads-count", device="cpu", diameter=10.0)
        loaded = eng._resolve_model("heads-count", "count", torch.device("cpu"))
        prepared = eng.prepare_net(loaded, torch.device("cpu"))
    finally:
        eng.OPTIONS.clear()
        eng.OPTIONS.update(before)
    assert getattr(prepared, "fused_heads", None) is not None
    assert abs(plain.count) > 1e-4
    assert fused.count == pytest.approx(plain.count, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(fused.density, plain.density, rtol=1e-4, atol=1e-7)
