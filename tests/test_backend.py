"""The inference backend: ONNX Runtime when installed (CPU), PyTorch otherwise; the same
counts and labels either way; a failed export falls back to PyTorch (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.errors import InputError
from napari_nalu_count.infer import backend, count, engine, segment
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.nn.registry import build_model

needs_ort = pytest.mark.skipif(not backend.available(), reason="onnxruntime/onnx not installed")
CPU = torch.device("cpu")


def _save(name: str, config: dict, task: str, diameter: float = 10.0) -> str:
    torch.manual_seed(0)
    net = build_model(config)
    # non-trivial batch-norm statistics, so folding and export both matter
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    save_model(net, make_card(name, task, net.config, diameter=diameter), name)
    return name


def test_resolve_rules(monkeypatch):
    assert backend.resolve("torch", CPU) == "torch"
    with pytest.raises(InputError, match="unknown backend"):
        backend.resolve("tensorrt", CPU)
    monkeypatch.setattr(backend, "available", lambda: False)
    assert backend.resolve("auto", CPU) == "torch"
    with pytest.raises(InputError, match="pip install"):
        backend.resolve("onnxruntime", CPU)
    monkeypatch.setattr(backend, "available", lambda: True)
    assert backend.resolve("auto", CPU) == "onnxruntime"
    assert backend.resolve("auto", torch.device("cuda")) == "torch"
    with pytest.raises(InputError, match="CPU only"):
        backend.resolve("onnxruntime", torch.device("cuda"))
    monkeypatch.delenv("NALU_COUNT_BACKEND", raising=False)
    assert backend.resolve(None, CPU) == "torch"  # the default, even with ONNX Runtime there
    monkeypatch.setenv("NALU_COUNT_BACKEND", "auto")
    assert backend.resolve(None, CPU) == "onnxruntime"
    monkeypatch.setenv("NALU_COUNT_BACKEND", "torch")
    assert backend.resolve(None, CPU) == "torch"


@needs_ort
def test_onnxruntime_counts_like_torch(options):
    name = _save(
        "be-count", {"architecture": "unet_count", "widths": [4, 8, 8], "unit": "nau"}, "count"
    )
    rng = np.random.default_rng(0)
    img = rng.random((70, 90)).astype(np.float32)
    img[20:30, 30:40] += 3.0
    options["backend"] = "torch"
    ref = count(img, name, device="cpu", tile_size=48)
    options["backend"] = "onnxruntime"
    net = engine.prepare_net(engine._resolve_model(name, "count", CPU), CPU)
    assert isinstance(net, backend.OrtNet)
    got = count(img, name, device="cpu", tile_size=48)
    np.testing.assert_allclose(got.density, ref.density, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(got.points, ref.points)


@needs_ort
def test_onnxruntime_segments_like_torch(options):
    name = _save(
        "be-seg",
        {"architecture": "se_unet", "widths": [4, 8], "fre": {"B": 2, "X": 4.0, "seed": 0}},
        "segment",
    )
    rng = np.random.default_rng(1)
    img = rng.random((64, 64)).astype(np.float32)
    options["backend"] = "torch"
    ref = segment(img, name, device="cpu", seeds="interior")
    options["backend"] = "onnxruntime"
    got = segment(img, name, device="cpu", seeds="interior")
    np.testing.assert_array_equal(got.labels, ref.labels)


@needs_ort
def test_failed_export_falls_back_to_torch(options, monkeypatch):
    name = _save("be-fail", {"architecture": "unet_count", "widths": [4, 8]}, "count")

    def broken(*a, **k):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(backend, "export_onnx", broken)
    options["backend"] = "onnxruntime"
    with pytest.warns(UserWarning, match="running it with PyTorch"):
        net = engine.prepare_net(engine._resolve_model(name, "count", CPU), CPU)
    assert isinstance(net, torch.nn.Module)
    assert np.isfinite(count(np.eye(40, dtype=np.float32), name, device="cpu").count)


@needs_ort
def test_mismatching_export_is_refused(options, monkeypatch):
    name = _save("be-off", {"architecture": "unet_count", "widths": [4, 8]}, "count")
    real = backend.OrtNet.__call__
    monkeypatch.setattr(backend.OrtNet, "__call__", lambda self, x: real(self, x) + 1.0)
    options["backend"] = "onnxruntime"
    with pytest.warns(UserWarning, match="differs from PyTorch"):
        net = engine.prepare_net(engine._resolve_model(name, "count", CPU), CPU)
    assert isinstance(net, torch.nn.Module)


def test_torch_backend_keeps_a_module(options):
    name = _save("be-torch", {"architecture": "unet_count", "widths": [4, 8]}, "count")
    options["backend"] = "torch"
    net = engine.prepare_net(engine._resolve_model(name, "count", CPU), CPU)
    assert isinstance(net, torch.nn.Module)


@pytest.mark.parametrize("shape", [(107, 107), (5, 3), (1, 1), (13, 40), (64, 64), (7, 100)])
def test_numpy_padding_equals_the_networks(shape):
    from napari_nalu_count.nn.blocks import pad_to_multiple

    x = np.random.default_rng(0).random((2, 1) + shape).astype(np.float32)
    got, pads = backend.pad_array(x, 16)
    want, want_pads = pad_to_multiple(torch.from_numpy(x), 16)
    assert pads == want_pads
    np.testing.assert_array_equal(got, want.numpy())


@needs_ort
def test_sessions_keep_no_memory_arena_and_do_not_spin():
    model = backend.export_onnx(build_model({"architecture": "unet_count", "widths": [4, 8]}), 1)
    session = backend.make_session(model, 1)
    opts = session.get_session_options()
    assert opts.enable_cpu_mem_arena is False
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_inplace_relu_changes_nothing_but_the_inference_copy(options):
    """ReLU in place in the prepared copy: the same labels, the caller's network untouched."""
    from napari_nalu_count.models import load_model

    name = _save("be-seg-relu", {"architecture": "se_unet", "widths": [4, 8]}, "segment")
    loaded = load_model(name)
    img = np.zeros((64, 80), np.float32)
    img[10:22, 10:22] = img[40:52, 30:44] = 1.0
    options["backend"] = "torch"
    options["inplace_relu"] = False
    plain = engine.prepare_net(loaded, CPU)
    ref = segment(img, loaded, seeds="interior", device="cpu").labels
    options["inplace_relu"] = True
    fast = engine.prepare_net(loaded, CPU)
    assert fast is not plain  # the switch is part of the cache key
    relus = [m for m in fast.modules() if type(m) is torch.nn.ReLU]
    assert relus and all(m.inplace for m in relus)
    assert not any(getattr(m, "inplace", False) for m in loaded.net.modules())
    x = torch.randn(2, 1, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.clone()), plain(x.clone()))
    np.testing.assert_array_equal(segment(img, loaded, seeds="interior", device="cpu").labels, ref)
