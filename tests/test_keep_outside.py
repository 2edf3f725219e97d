"""Training on boxes keeps the unlabelled rest of the image where the start network had it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.readers import Sample
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.events import drive
from napari_nalu_count.models import load_model, make_card, save_model
from napari_nalu_count.nn.registry import build_model, default_config
from napari_nalu_count.train import TrainConfig, train
from napari_nalu_count.train import loop as loop_mod
from napari_nalu_count.train.dataset import PatchSampler, prepare


def _tiny():
    cfg = default_config("unet_count")
    cfg.update(widths=[8, 16], unit=None)
    torch.manual_seed(0)
    return build_model(cfg)


def test_keep_loss_is_zero_on_the_teacher_and_grows_away_from_it():
    net = _tiny().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
    m = torch.ones(2, 1, 32, 32)
    assert float(loop_mod._keep_loss(net, x, out, m, "count")) == 0.0
    assert float(loop_mod._keep_loss(net, x, out + 0.5, m, "count")) > 0.2
    # only the unlabelled pixels count
    m0 = torch.zeros_like(m)
    assert float(loop_mod._keep_loss(net, x, out + 0.5, m0, "count")) == 0.0


def test_sampler_reports_the_unlabelled_part_of_boxed_patches():
    s = synthetic_cells((64, 64), n_cells=10, seed=0)
    boxed = Sample(image=s.image, dots=s.dots, boxes=np.array([[0, 0, 32, 64]]))
    items = prepare([boxed], "count")
    sam = PatchSampler(items, "count", 64, 2, np.random.default_rng(0), augment=False)
    x, y, valid = sam.batch()
    out = sam.batch_info["outside"]
    assert out.shape == valid.shape
    # labelled and unlabelled parts of the image split it exactly
    assert torch.all((out + valid) == 1.0)
    assert 0.3 < float(out.mean()) < 0.7
    plain = PatchSampler(prepare([s], "count"), "count", 64, 2, np.random.default_rng(0))
    plain.batch()
    assert "outside" not in plain.batch_info


def test_train_on_boxes_uses_the_start_network_outside(monkeypatch):
    s = synthetic_cells((64, 64), n_cells=10, seed=1)
    boxed = Sample(image=s.image, dots=s.dots, boxes=np.array([[0, 0, 32, 32]]))
    calls = []
    real = loop_mod._keep_loss

    def spy(*a, **k):
        v = real(*a, **k)
        calls.append(float(v))
        return v

    monkeypatch.setattr(loop_mod, "_keep_loss", spy)
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=32, seed=0)
    train(_tiny(), [boxed], None, "count", cfg)
    # one term per step (training-mode batch statistics differ from the start network's
    # eval-mode ones, so even the first step is not exactly 0)
    assert len(calls) == 3 and all(np.isfinite(calls))
    calls.clear()
    train(_tiny(), [boxed], None, "count", TrainConfig(**{**cfg.to_dict(), "keep_weight": 0.0}))
    assert calls == []
    train(_tiny(), [s], None, "count", cfg)  # no boxes: nothing to keep
    assert calls == []


def test_keep_loss_holds_the_size_head_where_the_start_network_sees_nuclei():
    cfg = default_config("unet_count")
    cfg.update(widths=[8, 16], unit=None, size_head=True)
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
    assert out.shape[1] == 2
    m = torch.ones(2, 1, 32, 32)
    assert float(loop_mod._keep_loss(net, x, out, m, "count")) == 0.0
    moved = out.clone()
    moved[:, 1:2] += 0.5  # the size map alone
    with torch.no_grad():
        dens = net(x)[:, :1].clamp_min(0)
    expected = 0.25 if float((dens * m).sum()) > 0 else 0.0
    assert float(loop_mod._keep_loss(net, x, moved, m, "count")) == pytest.approx(expected)


def _saved_tiny(tmp_path):
    net = _tiny()
    card = make_card("tiny-start", "count", net.config, diameter=10.0, metrics={"split": "none"})
    return save_model(net, card, tmp_path / "start" / "tiny-start")


def test_fine_tune_on_boxes_reports_the_count_outside_them(tmp_path):
    from napari_nalu_count.train import fine_tune
    from napari_nalu_count.train.validate import outside_boxes_events

    imgs = [synthetic_cells((96, 96), n_cells=12, diameter=10.0, seed=k) for k in range(3)]
    boxes = np.array([[0, 0, 48, 48]])
    samples = [
        Sample(image=s.image, dots=s.dots, boxes=boxes, name=f"s{k}") for k, s in enumerate(imgs)
    ]
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, seed=0)
    res = fine_tune(
        _saved_tiny(tmp_path), samples, name="boxed", cfg=cfg, directory=tmp_path, use_fre=False
    )
    out = res.card["metrics"]["outside_boxes"]
    assert out["images"] == 3 and out["start"] >= 0 and out["after"] >= 0
    assert out["change"] == pytest.approx((out["after"] - out["start"]) / max(out["start"], 1.0))
    # the same figures measured directly; a model compared with itself does not move
    new = load_model(res.path)
    again = drive(outside_boxes_events(new, new, samples, [None] * 3))
    assert again["start"] == pytest.approx(again["after"]) and again["change"] == 0
    assert again["warn"] is False
    assert again["after"] == pytest.approx(out["after"], rel=1e-4)
    # whole-image samples: nothing to report
    plain = [Sample(image=s.image, dots=s.dots) for s in imgs]
    assert drive(outside_boxes_events(new, new, plain, [None] * 3)) is None


class _Offset(torch.nn.Module):
    """The wrapped counter with a constant added to its density: more cells everywhere."""

    def __init__(self, net, offset):
        super().__init__()
        self.net, self.offset, self.config = net, offset, net.config

    def forward(self, x):
        out = self.net(x)
        return torch.cat([out[:, :1] + self.offset, out[:, 1:]], dim=1)


def test_outside_boxes_warns_when_the_unannotated_count_moves(tmp_path):
    from napari_nalu_count.train.validate import as_model, outside_boxes_events

    start = load_model(_saved_tiny(tmp_path))
    moved = as_model(_Offset(start.net, 1.0).eval(), dict(start.card), "moved")
    imgs = [synthetic_cells((96, 96), n_cells=12, diameter=10.0, seed=k) for k in range(2)]
    samples = [Sample(image=s.image, dots=s.dots, boxes=np.array([[0, 0, 48, 48]])) for s in imgs]
    r = drive(outside_boxes_events(start, moved, samples, [10.0, 10.0]))
    # 1.0 / density_scale 100 per model-grid pixel over 3/4 of two 96 px images
    assert r["after"] - r["start"] == pytest.approx(2 * 0.75 * 96 * 96 * 1.0 / 100, rel=0.05)
    assert r["warn"] is True and r["change"] > 0.25
