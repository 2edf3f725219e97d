"""Per-call overhead of a named model: the engine reuses the cached model and its prepared
network instead of deep-copying and re-preparing on every call (issue 17, part 1)."""

from __future__ import annotations

import numpy as np
import torch

from napari_nalu_count.infer import count, engine
from napari_nalu_count.models import load_model, make_card, save_model
from napari_nalu_count.models.store import load_model_shared
from napari_nalu_count.nn.registry import build_model


def _tiny(name: str) -> str:
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card(name, "count", net.config, diameter=10.0), name)
    return name


def test_named_model_prepares_its_network_once(monkeypatch) -> None:
    name = _tiny("overhead-count")
    img = np.random.default_rng(0).random((48, 40)).astype(np.float32)
    first = count(img, name, device="cpu").count
    copies = []
    real = engine.copy.deepcopy

    def counting_deepcopy(obj, *a, **k):
        copies.append(type(obj).__name__)
        return real(obj, *a, **k)

    monkeypatch.setattr(engine.copy, "deepcopy", counting_deepcopy)
    again = [count(img, name, device="cpu").count for _ in range(3)]
    assert copies == []  # neither a model copy nor a re-prepared network per call
    assert again == [first] * 3


def test_load_model_still_returns_independent_copies() -> None:
    name = _tiny("overhead-copy")
    a, b = load_model(name), load_model(name)
    assert a.net is not b.net
    shared = load_model_shared(name)
    assert shared is load_model_shared(name)
    assert shared.net is not a.net
    with torch.no_grad():
        next(a.net.parameters()).add_(1.0)  # the caller may edit its copy freely
    p_shared = next(shared.net.parameters())
    p_b = next(b.net.parameters())
    assert torch.equal(p_shared, p_b)


def test_a_changed_model_file_is_reloaded() -> None:
    name = _tiny("overhead-reload")
    img = np.random.default_rng(1).random((48, 40)).astype(np.float32)
    before = count(img, name, device="cpu").count
    torch.manual_seed(5)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card(name, "count", net.config, diameter=10.0), name, overwrite=True)
    after = count(img, name, device="cpu").count
    assert after != before
