"""The training loop: learning, determinism, cancel, callbacks, FRE, regularisers, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.synthetic import synthetic_cells, synthetic_dataset
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.train import TrainConfig, train
from napari_nalu_count.train.dataset import PatchSampler, prepare, spatial_split
from napari_nalu_count.train.metrics import (
    classes_to_instances,
    confusion_matrix,
    count_metrics,
    instance_f1,
    match_instances,
    mean_iou,
)

COUNT_CONFIG = {"architecture": "unet_count", "widths": [4, 8], "unit": "nac"}
SEG_CONFIG = {"architecture": "se_unet", "widths": [4, 8], "fre": {"B": 2, "X": 3.0}}


@pytest.fixture(scope="module")
def data():
    tr = synthetic_dataset(3, (15, 25), shape=(64, 64), diameter=9.0, seed=0)
    va = synthetic_dataset(2, (15, 25), shape=(64, 64), diameter=9.0, seed=1)
    return tr, va


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, steps_per_epoch=3, batch_size=2, patch_size=32, lr=3e-3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_on_tiny_counting_problem(data):
    tr, va = data
    res = train(COUNT_CONFIG, tr, va, "count", small_cfg(epochs=4, steps_per_epoch=8, lr=1e-2))
    first, last = np.mean(res.losses[:4]), np.mean(res.losses[-4:])
    assert last < first
    assert res.best_metrics["mae"] >= 0 and res.best_epoch is not None
    assert not res.net.training


def test_same_seed_same_losses_and_weights(data):
    tr, va = data
    a = train(COUNT_CONFIG, tr, va, "count", small_cfg())
    b = train(COUNT_CONFIG, tr, va, "count", small_cfg())
    assert a.losses == b.losses
    for (ka, va_), (kb, vb) in zip(
        a.net.state_dict().items(), b.net.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va_, vb)
    c = train(COUNT_CONFIG, tr, va, "count", small_cfg(seed=1))
    assert c.losses != a.losses


def test_callbacks_stream_step_epoch_done(data):
    tr, va = data
    events: list[dict] = []
    train(COUNT_CONFIG, tr, va, "count", small_cfg(), callback=events.append)
    kinds = [e["kind"] for e in events]
    assert kinds == ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch", "done"]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    epoch_ev = [e for e in events if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epoch_ev] == [1, 2]
    assert "mae" in epoch_ev[0]["metrics"] and np.isfinite(epoch_ev[0]["loss"])
    assert events[-1]["cancelled"] is False


def test_cancel_within_one_step_keeps_best_and_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tr, va = data
    token = CancelToken()
    events: list[dict] = []
    best_snapshot: dict = {}

    def cb(ev):
        events.append(ev)
        if ev["kind"] == "epoch" and ev["epoch"] == 1:
            best_snapshot.update({k: v.clone() for k, v in net_ref[0].state_dict().items()})
        if ev["kind"] == "step" and ev["step"] == 5:  # mid-way through epoch 2
            token.cancel()

    net_ref: list = []
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    net = build_model(COUNT_CONFIG)
    net_ref.append(net)
    res = train(net, tr, va, "count", small_cfg(epochs=5), callback=cb, cancel=token)
    assert res.cancelled
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps[-1] == 5  # stopped before step 6
    assert res.best_epoch == 1 and len(res.history) == 1
    for k, v in res.net.state_dict().items():
        assert torch.equal(v, best_snapshot[k]), k
    assert events[-1]["kind"] == "done" and events[-1]["cancelled"]
    assert list(tmp_path.iterdir()) == []


def test_fre_reselected_once_per_epoch(data, monkeypatch):
    from napari_nalu_count.nn.blocks import PaddedNet

    calls: list[int] = []
    orig = PaddedNet.reselect_fre

    def spy(self, epoch):
        calls.append(epoch)
        return orig(self, epoch)

    monkeypatch.setattr(PaddedNet, "reselect_fre", spy)
    tr, va = data
    res = train(COUNT_CONFIG, tr, va, "count", small_cfg(epochs=3, fre={"B": 2, "X": 5.0}))
    assert calls == [0, 1, 2]
    assert res.config["fre"]["B"] == 2
    fre = res.net.fre
    assert fre is not None and fre.epoch == 2


def test_regulariser_is_added_to_the_loss(data, monkeypatch):
    from napari_nalu_count.nn.blocks import PaddedNet

    tr, va = data
    base = train(COUNT_CONFIG, tr, None, "count", small_cfg(epochs=1, reg_weight=0.0))
    monkeypatch.setattr(PaddedNet, "regularization", lambda self: torch.tensor(100.0))
    reg = train(COUNT_CONFIG, tr, None, "count", small_cfg(epochs=1, reg_weight=0.5))
    # the first step runs on identical weights and batches: the loss differs by exactly 50
    assert reg.losses[0] == pytest.approx(base.losses[0] + 50.0, rel=1e-5)


def test_segmentation_reports_miou_and_f1(data):
    tr, va = data
    cfg = small_cfg(epochs=2, steps_per_epoch=4, dice=True, class_weights=[1.0, 1.0, 2.0])
    res = train(SEG_CONFIG, tr, va, "segment", cfg)
    m = res.best_metrics
    assert 0 <= m["miou"] <= 1 and 0 <= m["f1"] <= 1
    assert len(m["iou_per_class"]) == 3


def test_small_images_are_padded_and_bad_input_rejected():
    tiny = synthetic_cells((20, 24), n_cells=3, diameter=6.0, seed=3)
    items = prepare([tiny], "count")
    sampler = PatchSampler(items, "count", 32, 2, np.random.default_rng(0))
    x, y, valid = sampler.batch()
    assert x.shape == (2, 1, 32, 32) and y.shape == (2, 1, 32, 32)
    assert valid.sum() == 2 * 20 * 24 or valid.sum() == 2 * 20 * 24  # rot90 keeps the area
    assert float(y.sum()) == pytest.approx(2 * 3 * 100.0, rel=1e-3)
    with pytest.raises(InputError):
        prepare([tiny.__class__(image=tiny.image, dots=tiny.dots)], "segment")
    with pytest.raises(InputError):
        train(COUNT_CONFIG, [tiny], None, "segment", small_cfg())
    with pytest.raises(InputError):
        train(COUNT_CONFIG, [tiny], None, "count", small_cfg(epochs=0))


def test_spatial_split_keeps_every_dot_once():
    s = synthetic_cells((64, 96), n_cells=30, diameter=8.0, seed=2)
    a, b = spatial_split(s, 0.25)
    assert a.image.shape == (64, 72) and b.image.shape == (64, 24)
    assert len(a.dots) + len(b.dots) == len(s.dots)
    assert b.labels.shape == b.image.shape


def test_metrics():
    m = count_metrics([10, 12], [10, 10])
    assert m["mae"] == 1.0 and m["mre"] == pytest.approx(0.1)
    cm = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3)
    miou, per = mean_iou(cm)
    assert per == [1.0, 0.5, 0.5] and miou == pytest.approx(2 / 3)
    gt = np.zeros((20, 20), np.int32)
    gt[2:8, 2:8] = 1
    gt[10:16, 10:16] = 2
    pred = np.zeros_like(gt)
    pred[2:8, 2:7] = 5  # IoU 30/36
    pred[0:2, 15:20] = 7  # false positive
    m50 = match_instances(gt, pred, 0.5)
    assert (m50.tp, m50.fp, m50.fn) == (1, 1, 1) and m50.f1 == 0.5
    assert instance_f1([(gt, pred), (gt, gt)])[0.5].tp == 3
    classes = np.zeros((20, 20), np.uint8)
    classes[2:8, 2:8] = 2
    classes[3:7, 3:7] = 1
    inst = classes_to_instances(classes)
    assert inst.max() == 1 and (inst > 0).sum() == 36


# ------------------------------------------------------------------------------- BN / tune


def test_recalibrate_bn_matches_whole_image_statistics(data):
    from napari_nalu_count.nn.registry import build_model
    from napari_nalu_count.train import recalibrate_bn

    tr, _ = data
    items = prepare(tr, "count")
    torch.manual_seed(0)
    net = build_model(dict(COUNT_CONFIG))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # stale statistics, as after patch training
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
    assert recalibrate_bn(net, items, 2) == 2
    assert not net.training and all(m.momentum == 0.1 for m in bns)
    first = bns[0]
    # the first BN sees conv(image): its running mean is the per-channel mean over both images
    conv = net.encoders[0][0][0]
    assert isinstance(conv, torch.nn.Conv2d) and net.encoders[0][0][1] is first
    assert first.num_batches_tracked.item() == 2
    with torch.no_grad():
        means = [conv(torch.from_numpy(it.image[None])).mean((0, 2, 3)) for it in items[:2]]
    assert torch.allclose(first.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert recalibrate_bn(net, [], 3) == 0


def test_train_with_bn_recalibration(data):
    tr, va = data
    res = train(COUNT_CONFIG, tr, va, "count", small_cfg(bn_recalibrate=2))
    assert res.best_epoch is not None and np.isfinite(res.best_metrics["mae"])
    with pytest.raises(InputError, match="bn_recalibrate"):
        train(COUNT_CONFIG, tr, va, "count", small_cfg(bn_recalibrate=-1))


def test_tune_is_the_function_and_the_submodule_still_imports():
    import importlib

    import napari_nalu_count.train as tr_pkg
    from napari_nalu_count.train import TuneResult, run_tune, tune

    assert callable(tune) and tune is tr_pkg.tune and run_tune is tune
    assert tune.__module__ == "napari_nalu_count.train.tune"
    mod = importlib.import_module("napari_nalu_count.train.tune")
    assert mod.tune is tune and mod.TuneResult is TuneResult
    from napari_nalu_count.train.tune import tune as tune2

    assert tune2 is tune
    assert tr_pkg.fine_tune.__name__ == "fine_tune"


def test_anchor_weight_pulls_the_weights_back_to_the_start(data):
    from napari_nalu_count.nn import registry

    tr, va = data
    torch.manual_seed(0)
    start = registry.build_model(registry.validate_config(COUNT_CONFIG))
    w0 = {k: v.clone() for k, v in start.state_dict().items() if v.is_floating_point()}

    def drift(anchor: float) -> float:
        net = registry.build_model(registry.validate_config(COUNT_CONFIG))
        net.load_state_dict(start.state_dict())
        cfg = small_cfg(epochs=1, steps_per_epoch=6, lr=1e-2, anchor_weight=anchor)
        res = train(net, tr, None, "count", cfg)
        params = dict(res.net.named_parameters())
        return max(float((params[k] - w0[k]).abs().max()) for k in params)

    free, mild, full = drift(0.0), drift(20.0), drift(1e6)
    assert free > 1e-3
    assert mild < free
    # lr x anchor_weight >= 1 at every step (lr >= min_lr 1e-5): back exactly at the start
    assert full == 0.0
    with pytest.raises(InputError, match="anchor_weight"):
        small_cfg(anchor_weight=-1.0).check()


def test_freeze_bn_keeps_the_start_statistics_and_still_learns(data):
    from napari_nalu_count.nn import registry

    tr, _ = data
    torch.manual_seed(0)
    start = registry.build_model(registry.validate_config(COUNT_CONFIG))
    stats0 = {k: v.clone() for k, v in start.state_dict().items() if "running_" in k}
    assert stats0

    def trained(freeze: bool):
        net = registry.build_model(registry.validate_config(COUNT_CONFIG))
        net.load_state_dict(start.state_dict())
        res = train(net, tr, None, "count", small_cfg(epochs=2, lr=1e-2, freeze_bn=freeze))
        return res.net.state_dict()

    frozen, free = trained(True), trained(False)
    assert all(torch.equal(frozen[k], v) for k, v in stats0.items())
    assert not all(torch.equal(free[k], v) for k, v in stats0.items())
    # the weights (BN scale and shift included) are still trained
    bn_w = [
        k for k in frozen if k.endswith(".weight") and k.replace("weight", "running_mean") in frozen
    ]
    assert bn_w and any(not torch.equal(frozen[k], start.state_dict()[k]) for k in bn_w)


def test_sigma_none_trains_at_the_default_and_leaves_the_callers_config(data):
    from napari_nalu_count.train.loop import DEFAULT_SIGMA

    tr, va = data
    cfg = small_cfg(epochs=1, steps_per_epoch=1)
    assert cfg.sigma is None
    res = train(COUNT_CONFIG, tr, va, "count", cfg)
    assert res.train_config.sigma == DEFAULT_SIGMA == 3.0
    assert cfg.sigma is None  # resolved on a copy
    for bad in (-1.0, float("nan"), True, "2"):
        with pytest.raises(InputError, match="sigma"):
            small_cfg(sigma=bad).check()


def test_start_model_sigma_reads_the_card_and_falls_back_to_the_default():
    from napari_nalu_count.train.loop import DEFAULT_SIGMA, start_model_sigma

    assert start_model_sigma({"training": {"settings": {"sigma": 2}}}) == 2.0
    assert start_model_sigma({"training": {"settings": {"sigma": 0.0}}}) == 0.0
    for card in (None, {}, {"training": None}, {"training": {"settings": {"sigma": None}}}):
        assert start_model_sigma(card) == DEFAULT_SIGMA
    assert start_model_sigma({"training": {"settings": {"sigma": "x"}}}) == DEFAULT_SIGMA
    assert start_model_sigma({"training": {"settings": {"sigma": -1}}}) == DEFAULT_SIGMA


def test_cli_train_takes_the_start_models_sigma_unless_given():
    import argparse

    from napari_nalu_count.commands.train import configure, train_config

    parser = argparse.ArgumentParser()
    configure(parser)
    card = {
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
        "density_scale": 100.0,
        "training": {"settings": {"sigma": 2.0}},
    }
    args = parser.parse_args(["--data", "d"])
    assert train_config(args, "count", card).sigma == 2.0
    assert train_config(args, "count", None).sigma == 3.0  # from scratch: the default, recorded
    args = parser.parse_args(["--data", "d", "--sigma", "4.5"])
    assert train_config(args, "count", card).sigma == 4.5


def test_training_a_loaded_model_keeps_its_sigma(data, tmp_path):
    from napari_nalu_count.models import load_model, make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    net = build_model(COUNT_CONFIG)
    card = make_card(
        "sig-train", "count", net.config, metrics={"split": "none"},
        training={"settings": {"sigma": 1.5}},
    )  # fmt: skip
    start = load_model(save_model(net, card, tmp_path / "sig-train"))
    tr, va = data
    res = train(start, tr, va, "count", small_cfg(epochs=1, steps_per_epoch=1))
    assert res.train_config.sigma == 1.5
    res = train(start, tr, va, "count", small_cfg(epochs=1, steps_per_epoch=1, sigma=2.5))
    assert res.train_config.sigma == 2.5
