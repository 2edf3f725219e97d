"""Device choice, automatic tile size and CUDA out-of-memory detection."""

from __future__ import annotations

import torch

from napari_nalu_count.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return a usable :class:`torch.device`.

    ``"auto"`` (or None) picks CUDA, then Apple MPS, then the CPU. A forced device that is not
    available raises :class:`InputError`. ``"cuda:1"`` style indices are accepted.
    The CPU thread count is left at torch's default (the number of physical cores).
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise InputError(
            f"device must be a name such as {', '.join(DEVICES)} or 'cuda:1', got {device!r}"
        )
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, sep, index = name.partition(":")
    if kind not in DEVICES or kind == "auto" and sep:
        raise InputError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if sep and not (index.isascii() and index.isdigit() and len(index) < 6):
        raise InputError(f"unknown device {device!r}: a device index is a number, as in 'cuda:1'")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was requested but CUDA is not available here")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"unknown device {device!r}: {exc}") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPUs)")
        return dev
    if kind == "mps":
        if not _mps_available():
            raise InputError("device 'mps' was requested but Apple MPS is not available here")
        return torch.device("mps")
    return torch.device("cpu")


def check_device_name(device: str | torch.device | None = "auto") -> str:
    """The device name, normalised (``"auto"``, ``"cpu"``, ``"cuda:1"`` ...), checked for
    syntax only: whether it exists is decided where the work runs (a dask worker may have a
    GPU that this machine lacks). Raises :class:`InputError` for an unknown name."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise InputError(
            f"device must be a name such as {', '.join(DEVICES)} or 'cuda:1', got {device!r}"
        )
    name = (device or "auto").strip().lower()
    kind, sep, index = name.partition(":")
    if kind not in DEVICES or kind == "auto" and sep:
        raise InputError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if sep and not (index.isascii() and index.isdigit() and len(index) < 6):
        raise InputError(f"unknown device {device!r}: a device index is a number, as in 'cuda:1'")
    return name


def auto_tile_size(device: torch.device, stride: int = 32) -> int:
    """Tile edge in pixels for ``device`` (a multiple of ``stride``).

    CPU: 1024 (measured: 1024 px tiles run 1.7x faster than 512 px ones for FCRN-A on 2 cores,
    mostly less overlap recomputation; see docs/benchmarks/speed.md).
    CUDA: from the free memory, 1024 or 2048. MPS: 1024.
    """
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except Exception:  # pragma: no cover - depends on the driver
            free = 0
        size = 2048 if free > 12 * 2**30 else 1024
    elif device.type == "mps":
        size = 1024
    else:
        size = 1024
    return max(stride, size // stride * stride)


def auto_batch_size(device: torch.device, tile: int) -> int:
    """Tiles per forward pass: enough to keep a GPU busy, few on the CPU (memory first)."""
    if device.type == "cpu":
        return 2 if tile <= 512 else 1
    return max(1, (2048 * 2048) // (tile * tile))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA/MPS out-of-memory error (typed or as a RuntimeError message)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: torch.device) -> None:
    """Release cached allocator blocks after an OOM so a smaller retry can succeed."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):  # pragma: no cover
        torch.mps.empty_cache()
