"""Multiscale (pyramid) inputs: pick a level, know its scale factor.

A multiscale image is a sequence of arrays of the same number of dimensions, level 0 the
largest, each level's spatial shape no larger than the one before: a ``list`` or ``tuple`` of
numpy / dask / zarr arrays (an OME-Zarr pyramid as a reader returns it), or napari's
``MultiScaleData`` (recognised by its class name, napari is never imported here). A list of
arrays that all have the same shape is *not* multiscale: it stays what it always was, an
array-like that numpy stacks into one array.

:func:`resolve` returns the chosen level (lazy arrays stay lazy) and its scale factor per axis
relative to level 0 (``level 0 shape / level shape``, 1 on axes that are not downsampled), so a
result of the level's geometry can be shown over level 0 with ``scale = level0_scale * factor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError


@dataclass(frozen=True)
class Level:
    """The level picked from a pyramid: ``array`` (lazy if the pyramid was), its ``index``,
    ``n_levels``, ``factors`` (per axis of ``array``: level-0 size / this level's size) and
    ``shapes`` of every level."""

    array: Any
    index: int
    n_levels: int
    factors: tuple[float, ...]
    shapes: tuple[tuple[int, ...], ...]


def _arrayish(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or all(
        hasattr(obj, a) for a in ("shape", "dtype", "ndim", "__getitem__")
    )


def is_multiscale(obj: Any) -> bool:
    """True for napari ``MultiScaleData`` and for lists/tuples of >= 2 arrays of equal ``ndim``
    whose shapes never grow and shrink at least once (see the module docstring)."""
    if type(obj).__name__ == "MultiScaleData":
        return True
    if not isinstance(obj, (list, tuple)) or len(obj) < 1:
        return False
    try:
        if not all(_arrayish(a) for a in obj):
            return False
        shapes = [tuple(int(s) for s in a.shape) for a in obj]
    except Exception:  # noqa: BLE001 - an odd object is simply not a pyramid
        return False
    if len({len(s) for s in shapes}) != 1 or len(shapes) < 2:
        return False
    grows = any(
        b[i] > a[i] for a, b in zip(shapes[:-1], shapes[1:], strict=True) for i in range(len(a))
    )
    shrinks = any(b != a for a, b in zip(shapes[:-1], shapes[1:], strict=True))
    return shrinks and not grows


def resolve(obj: Any, level: Any = None) -> Level | None:
    """The level ``level`` (default 0) of a multiscale ``obj``; None when ``obj`` is not
    multiscale (then ``level`` must be None or 0). Raises :class:`InputError` for a bad
    level."""
    if level is not None and (
        isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer))
    ):
        raise InputError(f"level must be a whole number (0 = full resolution), got {level!r}")
    if not is_multiscale(obj):
        if level not in (None, 0):
            raise InputError(
                f"level={level} given but the image is not multiscale (one resolution level)"
            )
        return None
    levels = list(obj)
    n = len(levels)
    k = 0 if level is None else int(level)
    if not -n <= k < n:
        raise InputError(f"level {level} does not exist; the image has levels 0..{n - 1}")
    k %= n
    shapes = tuple(tuple(int(s) for s in a.shape) for a in levels)
    base, this = shapes[0], shapes[k]
    if len(base) != len(this):
        raise InputError(f"pyramid levels differ in dimensions: level 0 {base}, level {k} {this}")
    factors = tuple(float(b) / float(t) if t else 1.0 for b, t in zip(base, this, strict=True))
    return Level(array=levels[k], index=k, n_levels=n, factors=factors, shapes=shapes)
