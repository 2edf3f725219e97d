"""Training on boxes keeps the unlabelled rest of the image where the start network had it."""

from __future__ import annotations

import numpy as np
import torch

from napari_nalu_count.data.readers import Sample
from napari_nalu_count.data.synthetic import synthetic_cells
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
