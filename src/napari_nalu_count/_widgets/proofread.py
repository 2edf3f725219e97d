"""Proofreading a count (plain functions, no widgets): the detected cells, as the user corrected
them in the Points layer, counted per plane and per region beside the model's counts, and the
export table with both columns.

Points are in the result layers' data coordinates (stack indices first, then ``y, x``), the
grid of the density map; a point belongs to the plane of its rounded stack indices and to the
regions whose mask holds its rounded pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the export column with the corrected counts (after ``count``)
CORRECTED = "corrected"


def _planes_and_pixels(
    points: np.ndarray, stack_shape: tuple[int, ...], plane_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat plane index, row, col)`` of the points inside the image (others dropped)."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(stack_shape) + 2)
    idx = np.rint(pts).astype(np.int64)
    bounds = np.array(tuple(stack_shape) + tuple(plane_shape))
    inside = np.all((idx >= 0) & (idx < bounds), axis=1)
    idx = idx[inside]
    if stack_shape:
        flat = np.ravel_multi_index(tuple(idx[:, : len(stack_shape)].T), stack_shape)
    else:
        flat = np.zeros(len(idx), dtype=np.int64)
    return flat, idx[:, -2], idx[:, -1]


def points_per_plane(
    points: np.ndarray, stack_shape: tuple[int, ...], plane_shape: tuple[int, int]
) -> np.ndarray:
    """Points per plane, shaped like the stack (a 0-d array for a 2-D image)."""
    flat, _, _ = _planes_and_pixels(points, stack_shape, plane_shape)
    n = int(np.prod(stack_shape)) if stack_shape else 1
    return np.bincount(flat, minlength=n).astype(float).reshape(stack_shape)


def points_per_region(
    points: np.ndarray,
    regions: Any,
    stack_shape: tuple[int, ...],
    plane_shape: tuple[int, int],
) -> dict[int, np.ndarray]:
    """``{region id: points per plane (flat)}`` for ``regions``: ``(k, Y, X)`` boolean masks
    (ids 1..k, as the Count dock numbers shapes) or an integer label mask (``(Y, X)`` for every
    plane, or one per plane)."""
    if regions is None:
        return {}
    flat, rows, cols = _planes_and_pixels(points, stack_shape, plane_shape)
    n = int(np.prod(stack_shape)) if stack_shape else 1
    reg = np.asarray(regions)
    out: dict[int, np.ndarray] = {}
    if reg.dtype == bool:
        masks = reg.reshape((-1,) + tuple(plane_shape))
        for k, mask in enumerate(masks):
            hit = mask[rows, cols]
            out[k + 1] = np.bincount(flat[hit], minlength=n).astype(float)
        return out
    if reg.ndim == 2:
        ids = reg[rows, cols]
    else:
        ids = reg.reshape((n,) + tuple(plane_shape))[flat, rows, cols]
    for rid in np.unique(reg[reg > 0]):
        hit = ids == rid
        out[int(rid)] = np.bincount(flat[hit], minlength=n).astype(float)
    return out


def corrected_table(
    header: tuple[str, ...],
    rows: list[list[str]],
    per_plane: np.ndarray,
    per_region: dict[int, np.ndarray],
    sd: np.ndarray | None = None,
) -> tuple[tuple[str, ...], list[list[str]]]:
    """The export table with a ``corrected`` column after ``count`` (the points per plane for
    the whole-plane rows, per region for region rows; empty for volume rows) and, with ``sd``,
    a ``count_sd`` column after it (whole-plane rows)."""
    cols = list(header)
    at = cols.index("count") + 1
    flat = np.ravel(per_plane)
    new_cols = [CORRECTED] + (["count_sd"] if sd is not None else [])
    out_rows = []
    for r in rows:
        frame = int(r[cols.index("frame")])
        kind = r[cols.index("kind")] if "kind" in cols else "plane"
        region = r[cols.index("region")] if "region" in cols else "all"
        value, sd_text = "", ""
        if kind == "plane":
            if region == "all":
                value = _fmt(flat[frame]) if frame < flat.size else ""
                if sd is not None:
                    sd_text = f"{float(np.ravel(sd)[frame]):.2f}"
            elif region.isdigit() and int(region) in per_region:
                value = _fmt(per_region[int(region)][frame])
        extra = [value] + ([sd_text] if sd is not None else [])
        out_rows.append(list(r[:at]) + extra + list(r[at:]))
    return tuple(cols[:at] + new_cols + cols[at:]), out_rows


def _fmt(v: float) -> str:
    return str(int(round(float(v))))


def model_vs_corrected(model: float, corrected: float, unit: str = "cells") -> str:
    """``"model 134.2 / corrected 136 cells"``."""
    return f"model {float(model):.1f} / corrected {int(round(float(corrected)))} {unit}"


def suggest_boxes(output: Any, n: int, size: int, frame: int = 0) -> list[list[float]]:
    """``n`` rectangles (napari corners ``[[y0, x0], [y1, x1]]``, stack indices first) of
    ``size`` px where the run's uncertainty map is highest (:func:`napari_nalu_count.
    suggest_regions`); plane ``frame`` (flat index) of a stack."""
    from napari_nalu_count.infer.uncertainty import suggest_regions

    res = output.result
    boxes = suggest_regions(None, n=n, size=size, result=res, frame=frame)
    stack = np.unravel_index(frame, res.plane_counts.shape) if res.plane_counts.ndim else ()
    lead = [float(i) for i in stack]
    return [[lead + [y0 - 0.5, x0 - 0.5], lead + [y1 - 0.5, x1 - 0.5]] for y0, x0, y1, x1 in boxes]
