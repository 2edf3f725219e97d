"""Annotated boxes: parts of an image where the annotations (dots, masks or a count) are
complete, so training uses only what is inside them.

A box is ``(y0, x0, y1, x1)`` in pixels of the image, end exclusive (the box covers rows
``y0 .. y1 - 1``); a dot ``(y, x)`` is inside when ``y0 - 0.5 <= y < y1 - 0.5`` (pixel centres
at integers, napari's convention), like a pixel ``round(y)`` of the box. ``boxes`` is always a
``(k, 4)`` float64 array; None means the whole image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

__all__ = [
    "as_boxes",
    "box_counts",
    "box_mask",
    "clip_boxes",
    "dots_in_boxes",
    "scale_boxes",
]


def as_boxes(boxes: Any, shape: tuple[int, int] | None = None, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a ``(k, 4)`` float64 array, checked (positive size, inside ``shape`` after
    clipping when it is given); :class:`InputError` otherwise."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be (y0, x0, y1, x1) boxes, got {boxes!r}") from None
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise InputError(f"{name} must be a (k, 4) array of (y0, x0, y1, x1), got {boxes!r}")
    if shape is not None:
        arr = clip_boxes(arr, shape)
    if len(arr) and np.any((arr[:, 2] - arr[:, 0] < 1) | (arr[:, 3] - arr[:, 1] < 1)):
        raise InputError(
            f"{name}: every box needs y1 > y0 and x1 > x0 and must overlap the image, got "
            f"{arr.tolist()}"
        )
    return arr


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    h, w = shape
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, h)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, w)
    return b


def box_mask(shape: tuple[int, int], boxes: np.ndarray | None) -> np.ndarray:
    """Boolean ``shape`` mask: True inside any box (everywhere when ``boxes`` is None)."""
    if boxes is None:
        return np.ones(shape, dtype=bool)
    mask = np.zeros(shape, dtype=bool)
    for y0, x0, y1, x1 in np.rint(np.asarray(boxes, dtype=np.float64)).astype(int):
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def dots_in_boxes(dots: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
    """Boolean: which ``(N, 2)`` dots are inside any box (all when ``boxes`` is None)."""
    d = np.asarray(dots, dtype=np.float64).reshape(-1, 2)
    if boxes is None:
        return np.ones(len(d), dtype=bool)
    keep = np.zeros(len(d), dtype=bool)
    for y0, x0, y1, x1 in np.rint(np.asarray(boxes, dtype=np.float64)):
        inside = (d[:, 0] >= y0 - 0.5) & (d[:, 0] < y1 - 0.5)
        inside &= (d[:, 1] >= x0 - 0.5) & (d[:, 1] < x1 - 0.5)
        keep |= inside
    return keep


def box_counts(dots: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Dots inside each box (a dot in two overlapping boxes counts in both)."""
    d = np.asarray(dots, dtype=np.float64).reshape(-1, 2)
    out = []
    for y0, x0, y1, x1 in np.rint(np.asarray(boxes, dtype=np.float64)):
        inside = (d[:, 0] >= y0 - 0.5) & (d[:, 0] < y1 - 0.5)
        inside &= (d[:, 1] >= x0 - 0.5) & (d[:, 1] < x1 - 0.5)
        out.append(int(inside.sum()))
    return np.asarray(out, dtype=np.float64)


def scale_boxes(boxes: np.ndarray | None, fy: float, fx: float) -> np.ndarray | None:
    """Boxes of an image resampled by ``(fy, fx)`` (edges scale with the image)."""
    if boxes is None:
        return None
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] *= fy
    b[:, [1, 3]] *= fx
    return b
