"""Dot annotations -> density maps whose integral is the number of dots.

Coordinate convention (the same as napari's): a point ``(y, x)`` is in pixel units and the
centre of pixel ``[i, j]`` is at ``(i, j)``. Pixel ``i`` covers ``[i - 0.5, i + 0.5]``, so the
image of height ``H`` covers ``-0.5 <= y <= H - 0.5`` and a point there is inside. The interval is
closed on both ends so that flips and rotations map inside points to inside points.

Each dot contributes one Gaussian whose mass is integrated over every pixel (differences of the
error function, so sub-pixel positions and very small sigmas are exact) and then renormalised over
the pixels that lie inside the image. The map therefore sums to ``len(points) * scale`` up to
float32 rounding, also for dots on or next to the border. Each Gaussian is rendered in a local
window of ``+-ceil(truncate * sigma)`` pixels, so the cost is ``O(N * window**2)`` and independent
of the image size (apart from allocating the output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.special import erf

from napari_nalu_count.errors import InputError

#: Default Gaussian sigma in pixels. Nuclei 10-30 px wide (BBBC039, VGG cells at their native
#: resolution) are well represented by sigma = 3 px: the blob stays inside the nucleus, and nearby
#: cells remain separate peaks that point detection can find.
DEFAULT_SIGMA = 3.0

#: Half-width of the rendering window, in units of sigma.
DEFAULT_TRUNCATE = 4.0

#: Sigmas below this (pixels) are treated as 0: all of a dot's mass goes to its pixel.
_MIN_SIGMA = 1e-6

OutOfBounds = Literal["raise", "clip", "drop"]

__all__ = [
    "DEFAULT_SIGMA",
    "DEFAULT_TRUNCATE",
    "as_points",
    "dots_to_density",
    "points_inside",
]


def as_points(points: object, ndim: int = 2) -> np.ndarray:
    """Validate points and return them as a float64 array of shape (N, ndim).

    Accepts anything array-like with shape (N, ndim) (including an empty list). Raises
    :class:`InputError` for a wrong shape or non-finite coordinates.
    """
    if points is None:
        return np.zeros((0, ndim), dtype=np.float64)
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"points must be numeric (N, {ndim}) coordinates: {exc}") from None
    if arr.size == 0:
        return np.zeros((0, ndim), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise InputError(
            f"points must have shape (N, {ndim}) (one row per dot, columns y, x), "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise InputError(f"{bad} point(s) have NaN or infinite coordinates")
    return arr


def points_inside(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Boolean mask (N,) of the points that fall on a pixel of an image of ``shape``.

    A coordinate ``c`` along an axis of length ``n`` is inside when ``-0.5 <= c <= n - 0.5``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros(len(pts), dtype=bool)
    upper = np.asarray(shape[-pts.shape[1] :], dtype=np.float64) - 0.5
    return np.all((pts >= -0.5) & (pts <= upper), axis=1)


def _axis_weights(coord: np.ndarray, n: int, sigma: float, radius: int) -> tuple:
    """Per-dot 1-D pixel weights along one axis, renormalised inside ``[0, n)``.

    Returns ``(index, weight)``, both (N, 2 * radius + 1): the pixel indices of each dot's window
    (out-of-range indices are clipped and carry zero weight) and the weights (rows sum to 1).
    """
    # nearest pixel; a point exactly on the far edge (n - 0.5) belongs to pixel n - 1
    centre = np.minimum(np.floor(coord + 0.5), n - 1).astype(np.int64)
    offsets = np.arange(-radius, radius + 1, dtype=np.int64)
    index = centre[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < n)
    if sigma > _MIN_SIGMA:
        d = index.astype(np.float64) - coord[:, None]
        k = 1.0 / (np.sqrt(2.0) * sigma)
        weight = 0.5 * (erf((d + 0.5) * k) - erf((d - 0.5) * k))
    else:
        weight = (offsets[None, :] == 0).astype(np.float64).repeat(len(coord), axis=0)
    weight = np.where(inside, weight, 0.0)
    total = weight.sum(axis=1, keepdims=True)
    # A dot inside the image always has its own pixel in the window; guard the far tail anyway.
    empty = total[:, 0] <= 0
    if np.any(empty):
        nearest = np.clip(centre[empty], 0, n - 1)
        weight[empty] = 0.0
        index[empty] = nearest[:, None]
        weight[empty, radius] = 1.0
        total[empty] = 1.0
    weight /= total
    return np.clip(index, 0, n - 1), weight


def dots_to_density(
    points: object,
    shape: Sequence[int],
    sigma: float = DEFAULT_SIGMA,
    scale: float = 1.0,
    *,
    out_of_bounds: OutOfBounds = "raise",
    truncate: float = DEFAULT_TRUNCATE,
    chunk: int = 4096,
) -> np.ndarray:
    """Render dot annotations as a density map.

    Parameters
    ----------
    points
        (N, 2) array of dot positions ``(y, x)`` in pixels (pixel centres at integers).
    shape
        ``(H, W)`` of the output (extra leading entries are ignored, so an image's shape works).
    sigma
        Gaussian standard deviation in pixels (>= 0; 0 puts each dot's mass on its pixel).
        ``truncate`` must be positive when sigma is.
    scale
        Every dot integrates to ``scale`` (the model card's ``density_scale``).
    out_of_bounds
        What to do with dots that do not fall on a pixel: ``"raise"`` (default) raises
        :class:`InputError`, ``"clip"`` moves them onto the nearest border pixel (they still
        count), ``"drop"`` ignores them (they do not count).
    truncate
        Window half-width in sigmas. The truncated Gaussian is renormalised, so this only changes
        the shape of the far tail, never the integral.
    chunk
        Dots rendered per vectorised batch (bounds temporary memory).

    Returns
    -------
    float32 array (H, W) whose sum is ``n_kept * scale`` (relative error ~1e-6).
    """
    if len(shape) < 2:
        raise InputError(f"shape must be (H, W), got {tuple(shape)}")
    h, w = int(shape[-2]), int(shape[-1])
    if h <= 0 or w <= 0:
        raise InputError(f"shape must be positive, got {(h, w)}")
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise InputError(f"sigma must be a finite number >= 0 (pixels), got {sigma}")
    if not (np.isfinite(truncate) and truncate > 0):
        raise InputError(f"truncate must be a positive number of sigmas, got {truncate}")
    scale = float(scale)
    if not np.isfinite(scale):
        raise InputError(f"scale must be finite, got {scale}")
    if out_of_bounds not in ("raise", "clip", "drop"):
        raise InputError(f"out_of_bounds must be 'raise', 'clip' or 'drop', got {out_of_bounds!r}")
    pts = as_points(points, 2)
    inside = points_inside(pts, (h, w))
    if not np.all(inside):
        n_out = int(np.count_nonzero(~inside))
        if out_of_bounds == "raise":
            first = pts[~inside][0]
            raise InputError(
                f"{n_out} dot(s) lie outside the {h}x{w} image (first at y={first[0]:.2f}, "
                f"x={first[1]:.2f}); valid coordinates are -0.5 <= y <= {h - 0.5} and "
                f"-0.5 <= x <= {w - 0.5}. Use out_of_bounds='clip' or 'drop'."
            )
        if out_of_bounds == "drop":
            pts = pts[inside]
        else:
            pts = np.column_stack([np.clip(pts[:, 0], 0, h - 1), np.clip(pts[:, 1], 0, w - 1)])

    flat = np.zeros(h * w, dtype=np.float64)
    radius = int(np.ceil(truncate * sigma)) if sigma > _MIN_SIGMA else 0
    for start in range(0, len(pts), max(int(chunk), 1)):
        part = pts[start : start + chunk]
        iy, wy = _axis_weights(part[:, 0], h, sigma, radius)
        ix, wx = _axis_weights(part[:, 1], w, sigma, radius)
        idx = (iy[:, :, None] * w + ix[:, None, :]).ravel()
        val = (wy[:, :, None] * wx[:, None, :]).ravel()
        keep = val > 0
        flat += np.bincount(idx[keep], weights=val[keep], minlength=h * w)
    density = flat.reshape(h, w)
    if scale != 1.0:
        density *= scale
    return density.astype(np.float32)
