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

One image -> planes rule (:func:`to_planes`), shared by inference, training and fine-tuning so a
model always sees the plane it was trained on. With ``channel=None`` an image with a ``C`` axis
is reduced by the model card's ``input`` rule (:func:`input_rule`; ``{"rgb": "max", "channel":
None}`` for cards without it):

- one channel -> that channel;
- RGB(A), i.e. a last ``C`` axis of 3 or 4 -> ``rule["rgb"]`` (``"max"``, ``"mean"``,
  ``"luminance"`` or an index; alpha is ignored). ``max`` keeps a signal that sits in one
  colour (blue nuclei) at full strength;
- any other number or position of channels -> ``rule["channel"]`` (an index or a reducer); when
  that is None the caller must choose with ``channel=``.

An explicit ``channel=`` always wins over the card.
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

#: the rule of cards that do not record one (today's inference behaviour: max for RGB)
DEFAULT_INPUT_RULE: dict[str, Any] = {"rgb": "max", "channel": None}


def check_channel(channel: Any, what: str = "channel") -> int | str | None:
    """``channel`` checked: None, an integer index or one of :data:`CHANNEL_MODES`."""
    if channel is None:
        return None
    if isinstance(channel, str):
        mode = channel.strip().lower()
        if mode not in CHANNEL_MODES:
            raise InputError(
                f"{what} must be a channel index or one of {', '.join(CHANNEL_MODES)}, "
                f"got {channel!r}"
            )
        return mode
    if isinstance(channel, (bool, np.bool_)) or not isinstance(channel, (int, np.integer)):
        raise InputError(
            f"{what} must be a channel index (int) or one of {', '.join(CHANNEL_MODES)}, "
            f"got {channel!r} ({type(channel).__name__})"
        )
    return int(channel)


def input_rule(card: Any = None) -> dict[str, Any]:
    """The image -> plane rule of a model card (``card["input"]``), defaults filled in.

    Raises :class:`InputError` for a malformed rule (cards are checked on load, so this only
    happens for hand-made cards).
    """
    rule = dict(DEFAULT_INPUT_RULE)
    given = card.get("input") if isinstance(card, dict) else None
    if given is None:
        return rule
    if not isinstance(given, dict):
        raise InputError(f"the model card's 'input' must be an object, got {given!r}")
    for key in ("rgb", "channel"):
        if key in given:
            rule[key] = check_channel(given[key], f"input rule {key!r}")
    if rule["rgb"] is None:
        rule["rgb"] = DEFAULT_INPUT_RULE["rgb"]
    return rule


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


#: the docks' first guess per number of dimensions when :func:`infer_axes` cannot tell
_FALLBACK_AXES = {2: "YX", 3: "TYX", 4: "TZYX", 5: "TZCYX"}


def guess_axes(
    shape: tuple[int, ...], rgb: bool = False, labels: tuple[str, ...] | None = None
) -> str:
    """A first guess of the axes of ``shape``, for a field the user may edit (never raises).

    ``labels``: per-dimension names (a napari layer's ``axis_labels``, without the colour axis
    of an RGB layer); used when they are one axis letter each and fit ``shape``. ``rgb``: the
    last axis holds colours (``C``). Otherwise :func:`infer_axes`, and where it cannot tell,
    the stack first: ``TYX``, ``TZYX``, ``TZCYX``.
    """
    shape = tuple(int(s) for s in shape)
    if labels is not None:
        guess = "".join(str(a).strip().upper() for a in labels) + ("C" if rgb else "")
        if all(len(str(a).strip()) == 1 for a in labels):
            try:
                return validate_axes(guess, shape)
            except InputError:
                pass
    if rgb:
        return {3: "YXC", 4: "TYXC", 5: "TZYXC"}.get(len(shape), "YXC")
    try:
        return infer_axes(shape)
    except InputError:
        return _FALLBACK_AXES.get(len(shape), "YX")


def channel_choices(n_channels: int) -> list[int | str]:
    """What ``channel=`` may be for an image with ``n_channels`` channels: every index, then
    the reducers (``luminance`` only for 3 or 4 channels)."""
    modes = [m for m in CHANNEL_MODES if m != "luminance" or n_channels in (3, 4)]
    return [*range(int(n_channels)), *modes]


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


def _checked_channel(value: int | str, n_ch: int, source: str) -> int | str:
    if isinstance(value, str):
        if value == "luminance" and n_ch not in (3, 4):
            raise InputError(f"{source}='luminance' needs 3 or 4 (RGB/RGBA) channels, not {n_ch}")
        return value
    if not -n_ch <= value < n_ch:
        raise InputError(f"{source}={value} is out of range for {n_ch} channels")
    return value % n_ch


def make_plan(
    image: Any,
    axes: str | None = None,
    channel: int | str | None = None,
    rule: dict[str, Any] | None = None,
) -> PlanePlan:
    """Validate or infer axes and the channel rule for ``image`` (numpy or dask array).

    ``rule`` is a model card's image -> plane rule (:func:`input_rule`), used when ``channel``
    is None; None means :data:`DEFAULT_INPUT_RULE`.
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise InputError(
            f"an image needs at least 2 dimensions (Y, X), got shape {shape}; pass a 2-D array "
            "or a stack"
        )
    dtype = np.dtype(image.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(
        dtype, np.complexfloating
    ):
        raise InputError(f"unsupported image dtype {dtype}; use integer or float pixels")
    channel = check_channel(channel)
    rule = dict(DEFAULT_INPUT_RULE) if rule is None else {**DEFAULT_INPUT_RULE, **rule}
    ax = infer_axes(shape) if axes is None else validate_axes(axes, shape)
    sizes = dict(zip(ax, shape, strict=True))
    if sizes["Y"] < 1 or sizes["X"] < 1:
        raise InputError(f"empty image of shape {shape}")
    n_ch = sizes.get("C", 1)
    ch: int | str | None = channel
    if "C" in ax:
        if n_ch < 1:
            raise InputError(f"the image has no channels (shape {shape}, axes {ax!r})")
        if channel is None:
            rgb = ax.endswith("C") and n_ch in (3, 4)
            if n_ch == 1:
                ch = 0
            elif rgb:
                # RGB(A): the model's rule, "max" unless its card says otherwise (the signal
                # may sit in one colour, e.g. blue nuclei)
                ch = _checked_channel(rule["rgb"], n_ch, "the model's input rule 'rgb'")
            elif rule.get("channel") is not None:
                ch = _checked_channel(rule["channel"], n_ch, "the model's input rule 'channel'")
            else:
                raise InputError(
                    f"the image has {n_ch} channels (axes {ax!r}); choose one with channel=INDEX "
                    f"(--channel on the command line, the channel picker in the docks) or "
                    f"combine them with channel='mean' or 'max'"
                )
        else:
            ch = _checked_channel(channel, n_ch, "channel")
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


def to_planes(
    image: Any,
    axes: str | None = None,
    channel: int | str | None = None,
    rule: dict[str, Any] | None = None,
) -> np.ndarray:
    """The image as the network sees it before normalisation: ``stack + (H, W)`` planes.

    The one image -> planes rule of inference (:func:`make_plan` + :func:`iter_planes`), for
    training and fine-tuning to call on their images: channels reduced by ``channel`` or, when
    None, by ``rule`` (a card's :func:`input_rule`). Stack axes come first in their original
    order; a 2-D result for a single plane. Integer planes keep their dtype unless channels are
    reduced (then float32).
    """
    plan = make_plan(image, axes, channel, rule)
    planes = [p for _, p in iter_planes(image, plan)]
    if not plan.is_stack:
        return planes[0]
    dtype = np.result_type(*[p.dtype for p in planes])
    return np.stack(planes).astype(dtype, copy=False).reshape(plan.stack_shape + plan.plane_shape)
