"""Where the prepared network runs: PyTorch (default), or ONNX Runtime on the CPU (optional).

``backend`` (engine option ``OPTIONS["backend"]``, or the environment variable
``NALU_COUNT_BACKEND``):

- ``"torch"`` (default): always PyTorch;
- ``"auto"``: ONNX Runtime for CPU inference when ``onnxruntime`` and ``onnx`` are installed
  (``pip install "napari-nalu-count[fast]"``), PyTorch otherwise and on GPUs;
- ``"onnxruntime"``: ONNX Runtime (CPU only; an error when it is not installed).

The network (batch norm already folded by the engine) is exported once per process and model
(``torch.onnx.export``, the padded forward, dynamic batch / height / width) and checked: its
output on a random input must match PyTorch's within ``1e-4`` of the output range, otherwise
the engine warns and stays on PyTorch. The same happens when the export fails (e.g. a custom
unit ONNX cannot express). Measured on the bundled U-Nets (2-core CPU, outputs equal to ~1e-6,
docs/benchmarks/speed.md): on a quiet machine 0.93x PyTorch for counting and 1.11x for
segmenting, below the 1.3x a default needs; 1.5-1.7x only when another process holds a core
(PyTorch's OpenMP threads then stall). Hence opt-in.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_nalu_count.errors import InputError
from napari_nalu_count.nn.blocks import crop_padding, padding_plan

BACKENDS = ("auto", "torch", "onnxruntime")
#: largest ONNX-vs-PyTorch difference accepted, relative to the largest output magnitude
CHECK_TOLERANCE = 1e-4


def available() -> bool:
    """True when ONNX Runtime and the ONNX exporter's ``onnx`` package can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def default_backend() -> str:
    """The backend asked for by ``$NALU_COUNT_BACKEND`` (``"torch"`` when unset)."""
    return os.environ.get("NALU_COUNT_BACKEND", "torch").strip().lower() or "torch"


def resolve(name: str | None, device: torch.device) -> str:
    """``"torch"`` or ``"onnxruntime"`` for a requested backend ``name`` on ``device``."""
    name = (name or default_backend()).strip().lower()
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "torch":
        return "torch"
    if name == "auto":
        return "onnxruntime" if device.type == "cpu" and available() else "torch"
    if device.type != "cpu":
        raise InputError(f"the onnxruntime backend runs on the CPU only, not on {device}")
    if not available():
        raise InputError(
            "the onnxruntime backend needs onnxruntime and onnx: "
            'pip install "napari-nalu-count[fast]"'
        )
    return "onnxruntime"


class _Padded(nn.Module):
    """The network's forward on inputs whose H and W are multiples of its stride (exported)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = getattr(self.net, "forward_padded", None)
        y = inner(x) if inner is not None else self.net(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y


class OrtNet:
    """An exported network run by ONNX Runtime, called like the PyTorch one:
    ``(N, C, H, W)`` float tensor (any layout) -> ``(N, C_out, H, W)`` float32 CPU tensor.
    Inputs are reflect-padded to a multiple of ``stride`` and the output cropped back, as
    :class:`~napari_nalu_count.nn.blocks.PaddedNet` does."""

    backend = "onnxruntime"

    def __init__(self, session: Any, stride: int, threads: int) -> None:
        self.session = session
        self.stride = int(stride)
        self.threads = int(threads)
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        arr, pads = pad_array(arr, self.stride)
        (y,) = self.session.run(None, {self.input_name: arr})
        return crop_padding(torch.from_numpy(y), pads)

    def eval(self) -> OrtNet:  # mirrors nn.Module for callers that call it
        return self


def pad_array(x: np.ndarray, stride: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`~napari_nalu_count.nn.blocks.pad_to_multiple` on a NumPy ``(N, C, H, W)`` array
    (the same split and modes: reflect, or replicate when the input is too small), without a
    round trip through torch's thread pool."""
    pads, reflect = padding_plan(*x.shape[-2:], stride)
    if pads == (0, 0, 0, 0):
        return x, pads
    mode = "reflect" if reflect else "edge"
    width = ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3]))
    return np.ascontiguousarray(np.pad(x, width, mode=mode)), pads


def export_onnx(net: nn.Module, in_channels: int) -> bytes:
    """ONNX bytes of ``net``'s padded forward (dynamic batch, height and width)."""
    stride = int(getattr(net, "stride", 1) or 1)
    side = stride * max(1, 64 // stride)
    example = torch.zeros(1, in_channels, side, side)
    wrapper = _Padded(net).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            buf,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def make_session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session for ``model`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # no memory arena: it keeps the largest tile's activations resident for the session's
    # life (+530 MB after one 1024 px tile of the segmenter, measured); plain allocation is
    # as fast here (docs/benchmarks/speed.md)
    opts.enable_cpu_mem_arena = False
    # worker threads sleep as soon as a run ends instead of spinning: spinning threads take
    # the cores from the post-processing that follows (64 calls on 256 px images, 2 threads,
    # another process on the machine: 2.3 -> 4.5 Mpx/s), and cost ~6 % on a big plane when
    # the machine is otherwise idle
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def to_onnxruntime(net: nn.Module, in_channels: int, threads: int) -> OrtNet | None:
    """``net`` (eval mode, CPU, float32) as an :class:`OrtNet`, or None (with a warning) when
    the export fails or its output does not match PyTorch's (see the module docstring)."""
    stride = int(getattr(net, "stride", 1) or 1)
    try:
        model = export_onnx(net, in_channels)
        ort_net = OrtNet(make_session(model, threads), stride, threads)
        # check on a shape other than the exported one (non-square, not a stride multiple)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(2, in_channels, 3 * stride + 5, 5 * stride + 3, generator=gen)
        with torch.inference_mode():
            ref = net(x)
            if isinstance(ref, (tuple, list)):
                ref = ref[0]
            got = ort_net(x)
        scale = float(ref.abs().max()) + 1e-6
        err = float((got - ref.float()).abs().max())
        if tuple(got.shape) != tuple(ref.shape) or not err <= CHECK_TOLERANCE * scale:
            warnings.warn(
                f"ONNX Runtime output differs from PyTorch's (max error {err:.3g} of "
                f"{scale:.3g}); running the network with PyTorch",
                stacklevel=2,
            )
            return None
        return ort_net
    except Exception as exc:  # noqa: BLE001 - any export/runtime failure falls back to torch
        warnings.warn(
            f"ONNX Runtime unavailable for this network ({type(exc).__name__}: "
            f"{str(exc)[:200]}); running it with PyTorch",
            stacklevel=2,
        )
        return None
