"""Axes handling: validate or infer an ``axes`` string and iterate an image plane by plane.

Axis letters: ``Y`` and ``X`` (spatial, required once each), ``T`` and ``Z`` (stack axes, each
processed plane by plane) and ``C`` (channels, reduced to one plane before inference).

Inference rules when ``axes`` is None (anything else raises :class:`InputError` asking for
``axes``):

- 2-D ``(H, W)`` -> ``"YX"``.
- 3-D ``(H, W, 3|4)`` with ``H, W >= 16`` -> ``"YXC"`` (RGB or RGBA).
- 3-D ``(1, H, W)`` -> ``"TYX"`` (a one-plane stack).
- 3-D ``(n, H, W)`` with ``4 < n < min(H, W)`` -> ``"TYX"`` (a stack; ``Z`` behaves the same).
  ``n <= 4`` is ambiguous (it could be channels) and ``n >= min(H, W)`` could be a volume seen
  from the side, so both need ``axes``.
- 4-D ``(n, H, W, 3|4)`` -> ``"TYXC"`` (a stack of RGB frames).

Planes are read lazily: for a dask array only the chunks of the current plane are computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

VALID_AXES = "TZCYX"
STACK_AXES = "TZ"

#: channel reducers accepted by ``channel=`` besides an integer index
CHANNEL_MODES = ("mean", "max", "luminance")

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def infer_axes(shape: tuple[int, ...]) -> str:
    """Return the axes string of an image of ``shape`` or raise :class:`InputError`.

    See the module docstring for the rules.
    """
    ndim = len(shape)
    hint = "pass axes= (e.g. 'YX', 'TYX', 'ZYX', 'YXC', 'CYX', 'TZYX')"
    if ndim == 2:
        return "YX"
    if ndim == 3:
        a, b, c = shape
        if c in (3, 4) and a >= 16 and b >= 16:
            return "YXC"
        if a == 1:
            return "TYX"
        if 4 < a < min(b, c):
            return "TYX"
        raise InputError(
            f"cannot tell the axes of an image of shape {tuple(shape)}: the first axis could be "
            f"channels, a stack or a spatial axis; {hint}"
        )
    if ndim == 4:
        if shape[-1] in (3, 4) and min(shape[1:3]) >= 16:
            return "TYXC"
        raise InputError(f"cannot tell the axes of a 4-D image of shape {tuple(shape)}; {hint}")
    raise InputError(f"images with {ndim} dimensions (shape {tuple(shape)}) need axes=; {hint}")


def validate_axes(axes: str, shape: tuple[int, ...]) -> str:
    """Check an axes string against an image shape; return it upper-cased."""
    if not isinstance(axes, str):
        raise InputError(f"axes must be a string such as 'YX' or 'TYX', got {axes!r}")
    ax = axes.upper()
    bad = sorted(set(ax) - set(VALID_AXES))
    if bad:
        raise InputError(f"axes {axes!r} has unknown letter(s) {bad}; use letters of 'TZCYX'")
    if len(set(ax)) != len(ax):
        raise InputError(f"axes {axes!r} repeats a letter")
    if "Y" not in ax or "X" not in ax:
        raise InputError(f"axes {axes!r} must contain both 'Y' and 'X'")
    if len(ax) != len(shape):
        raise InputError(
            f"axes {axes!r} has {len(ax)} letters but the image has {len(shape)} dimensions "
            f"(shape {tuple(shape)})"
        )
    return ax


@dataclass(frozen=True)
class PlanePlan:
    """How to walk an image: axes, stack shape, plane shape and the channel rule.

    ``out_axes`` is ``axes`` without ``C``: the axes of densities, labels and point columns.
    ``stack_shape`` is the shape of the stack axes in their original order (``()`` for 2-D).
    """

    axes: str
    out_axes: str
    stack_shape: tuple[int, ...]
    plane_shape: tuple[int, int]
    n_channels: int
    channel: int | str | None

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.stack_shape)) if self.stack_shape else 1

    @property
    def is_stack(self) -> bool:
        return len(self.stack_shape) > 0


def make_plan(image: Any, axes: str | None = None, channel: int | str | None = None) -> PlanePlan:
    """Validate or infer axes and the channel rule for ``image`` (numpy or dask array)."""
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise InputError(f"an image needs at least 2 dimensions, got shape {shape}")
    dtype = np.dtype(image.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(
        dtype, np.complexfloating
    ):
        raise InputError(f"unsupported image dtype {dtype}; use integer or float pixels")
    ax = infer_axes(shape) if axes is None else validate_axes(axes, shape)
    sizes = dict(zip(ax, shape, strict=True))
    if sizes["Y"] < 1 or sizes["X"] < 1:
        raise InputError(f"empty image of shape {shape}")
    n_ch = sizes.get("C", 1)
    ch: int | str | None = channel
    if "C" in ax:
        if channel is None:
            rgb = ax.endswith("C") and ax.index("C") == len(ax) - 1 and n_ch in (3, 4)
            if n_ch == 1:
                ch = 0
            elif rgb:
                ch = "max"  # RGB(A): the signal may sit in one colour (e.g. blue nuclei)
            else:
                raise InputError(
                    f"the image has {n_ch} channels (axes {ax!r}); choose one with channel=INDEX "
                    f"or combine them with channel='mean' or 'max'"
                )
        elif isinstance(channel, str):
            if channel not in CHANNEL_MODES:
                raise InputError(f"channel must be an index or one of {CHANNEL_MODES}")
            if channel == "luminance" and n_ch not in (3, 4):
                raise InputError("channel='luminance' needs 3 or 4 (RGB/RGBA) channels")
        else:
            idx = int(channel)
            if not -n_ch <= idx < n_ch:
                raise InputError(f"channel={channel} is out of range for {n_ch} channels")
            ch = idx % n_ch
    elif channel not in (None, 0, "mean", "max"):
        raise InputError(f"channel={channel!r} given but the image has no 'C' axis (axes {ax!r})")
    else:
        ch = None
    stack_axes = "".join(a for a in ax if a in STACK_AXES)
    return PlanePlan(
        axes=ax,
        out_axes=ax.replace("C", ""),
        stack_shape=tuple(sizes[a] for a in stack_axes),
        plane_shape=(sizes["Y"], sizes["X"]),
        n_channels=n_ch,
        channel=ch,
    )


def canonical_view(image: Any, plan: PlanePlan) -> Any:
    """Transpose lazily to ``stack axes + [C] + Y + X`` (a view for numpy, lazy for dask)."""
    ax = plan.axes
    order = [ax.index(a) for a in ax if a in STACK_AXES]
    if "C" in ax:
        order.append(ax.index("C"))
    order += [ax.index("Y"), ax.index("X")]
    if order == list(range(len(ax))):
        return image
    return image.transpose(order)


def _reduce_channels(block: np.ndarray, channel: int | str | None) -> np.ndarray:
    """(C, H, W) -> (H, W) float32 by index, mean, max or luminance; alpha is ignored."""
    if isinstance(channel, int):
        return np.asarray(block[channel], dtype=np.float32)
    colour = block[:3] if block.shape[0] == 4 else block
    if channel == "max":
        return np.asarray(colour.max(axis=0), dtype=np.float32)
    if channel == "luminance":
        out = np.zeros(block.shape[1:], dtype=np.float32)
        for w, c in zip(_LUMA, colour, strict=True):
            out += w * c.astype(np.float32)
        return out
    out = np.zeros(block.shape[1:], dtype=np.float32)
    for c in colour:
        out += c.astype(np.float32)
    return out / np.float32(len(colour))


def _materialize(block: Any) -> np.ndarray:
    if hasattr(block, "compute") and not isinstance(block, np.ndarray):
        block = block.compute()
    return np.asarray(block)


def iter_planes(image: Any, plan: PlanePlan) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(stack_index, plane)`` with ``plane`` a (H, W) array, one plane in memory at once.

    Integer planes keep their dtype when no channel is reduced (normalisation converts them);
    reduced channels come back as float32. Dask arrays are computed one plane at a time.
    """
    view = canonical_view(image, plan)
    for idx in np.ndindex(*plan.stack_shape) if plan.stack_shape else [()]:
        block = _materialize(view[idx] if idx else view)
        if "C" in plan.axes:
            plane = _reduce_channels(block, plan.channel)
        else:
            plane = block
        if plane.dtype == np.bool_:
            plane = plane.astype(np.float32)
        yield tuple(int(i) for i in idx), plane


def to_output_order(arr: np.ndarray, plan: PlanePlan) -> np.ndarray:
    """Move an array in canonical ``stack + Y + X`` order back to ``plan.out_axes`` order."""
    out_ax = plan.out_axes
    canon = "".join(a for a in out_ax if a in STACK_AXES) + "YX"
    if canon == out_ax:
        return arr
    return np.transpose(arr, [canon.index(a) for a in out_ax])


def points_to_output_order(points: np.ndarray, plan: PlanePlan) -> np.ndarray:
    """Reorder point columns from canonical ``stack + Y + X`` to ``plan.out_axes`` order."""
    out_ax = plan.out_axes
    canon = "".join(a for a in out_ax if a in STACK_AXES) + "YX"
    if canon == out_ax:
        return points
    return points[:, [canon.index(a) for a in out_ax]]
