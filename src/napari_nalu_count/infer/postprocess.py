"""Post-processing: density peaks -> cell centres, point matching, classes -> instance labels.

Cell centres (:func:`density_peaks`): the density is smoothed (Gaussian, ``sigma = d / 8``) and
its local maxima at least ``d / 2`` apart are kept when the density mass in a ``d x d`` box around
them is at least ``min_mass`` cells (0.3 by default), so a noisy background produces no points
while two touching cells (mass ~2) keep both peaks. ``d`` is the object diameter on the grid the
density lives on (the model card's diameter).

Instances (:func:`classes_to_instances`): the segmentation network predicts background /
interior / boundary. Foreground = interior + boundary. Seeds are either the connected components
of the interior (``seeds="interior"``) or the counting model's peaks (``seeds="count"``,
count-guided instance segmentation). A marker-controlled watershed on the interior probability
(or the distance transform for hard class maps) grows the seeds inside the foreground; any
foreground component that got no seed becomes an instance of its own. Objects smaller than
``min_size`` pixels are dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.errors import InputError

SEED_MODES = ("interior", "count")


def density_peaks(
    density: np.ndarray, diameter: float, *, min_mass: float = 0.3, smooth: bool = True
) -> np.ndarray:
    """Cell centres ``(N, 2)`` float64 (y, x) from a ``(H, W)`` density (cells per pixel).

    ``diameter`` is the typical object diameter in pixels of this grid.
    """
    from skimage.feature import peak_local_max

    dens = np.asarray(density, dtype=np.float32)
    if dens.ndim != 2:
        raise ValueError(f"density_peaks expects a 2-D density, got shape {dens.shape}")
    d = max(2.0, float(diameter))
    work = ndi.gaussian_filter(dens, max(0.5, d / 8.0), output=np.float32) if smooth else dens
    if not np.any(work > 0):
        return np.zeros((0, 2), dtype=np.float64)
    min_distance = max(1, int(round(d / 2.0)))
    # mass threshold first, as a floor on the peak height: the mass in a d x d box of a peak
    # can not exceed (peak height) * d^2, so lower peaks can never pass.
    floor = min_mass / (d * d)
    coords = peak_local_max(
        work, min_distance=min_distance, threshold_abs=floor, exclude_border=False
    )
    if len(coords) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    size = max(1, int(round(d)))
    mass = ndi.uniform_filter(dens, size=size, mode="constant", output=np.float32)
    keep = mass[coords[:, 0], coords[:, 1]] * np.float32(size * size) >= min_mass
    pts = coords[keep].astype(np.float64)
    order = np.lexsort((pts[:, 1], pts[:, 0])) if len(pts) else np.zeros(0, dtype=int)
    return pts[order]


def match_points(pred: np.ndarray, true: np.ndarray, radius: float) -> tuple[float, float, float]:
    """Match predicted to true points one-to-one within ``radius`` (pixels).

    Optimal (Hungarian, :func:`scipy.optimize.linear_sum_assignment`) on the pairs closer than
    ``radius``; points of any dimension ``(N, D)``. Returns ``(precision, recall, f1)``; an empty
    prediction of an empty truth scores 1.0 everywhere.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1) if len(pred) else np.zeros((0, 2))
    t = np.asarray(true, dtype=np.float64).reshape(len(true), -1) if len(true) else np.zeros((0, 2))
    n_p, n_t = len(p), len(t)
    if n_p == 0 and n_t == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or n_t == 0:
        return (0.0 if n_p else 1.0), (0.0 if n_t else 1.0), 0.0
    pairs = cKDTree(p).query_ball_tree(cKDTree(t), r=float(radius))
    rows, cols = [], []
    for i, js in enumerate(pairs):
        rows.extend([i] * len(js))
        cols.extend(js)
    tp = 0
    if rows:
        rows_a, cols_a = np.asarray(rows), np.asarray(cols)
        # solve each connected group of candidate pairs separately (small dense problems)
        graph = coo_matrix(
            (np.ones(len(rows_a)), (rows_a, cols_a + n_p)), shape=(n_p + n_t, n_p + n_t)
        )
        _, comp = connected_components(graph, directed=False)
        pair_comp = comp[rows_a]
        for c in np.unique(pair_comp):
            sel = pair_comp == c
            r, q = rows_a[sel], cols_a[sel]
            ur, ri = np.unique(r, return_inverse=True)
            uq, qi = np.unique(q, return_inverse=True)
            cost = np.full((len(ur), len(uq)), 1e9)
            cost[ri, qi] = np.linalg.norm(p[r] - t[q], axis=1)
            a, b = linear_sum_assignment(cost)
            tp += int(np.sum(cost[a, b] <= radius))
    precision = tp / n_p
    recall = tp / n_t
    f1 = 2 * tp / (n_p + n_t)
    return float(precision), float(recall), float(f1)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Ids of non-negative integer ``labels`` renumbered 1..n in their order (int32); the
    ids present are found with one ``bincount`` (a hash or sort of every pixel, as
    ``np.unique`` does, costs several times more on large planes)."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    if top <= 0:
        return np.zeros(labels.shape, dtype=np.int32)
    present = np.bincount(labels.ravel(), minlength=top + 1) > 0
    present[0] = False
    n = int(present.sum())
    if n == top:
        return labels.astype(np.int32, copy=False)
    lut = np.zeros(top + 1, dtype=np.int32)
    lut[present] = np.arange(1, n + 1, dtype=np.int32)
    return lut[labels]


def _argmax_masks(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(argmax != 0, argmax == 1)`` of ``(C, H, W)`` scores without the int64 arg-max map
    (the first maximum wins, as in :func:`numpy.argmax`)."""
    p0, p1 = probs[0], probs[1]
    foreground = p1 > p0
    is_one = foreground.copy()
    for c in range(2, probs.shape[0]):
        pc = probs[c]
        foreground |= pc > p0
        is_one &= p1 >= pc
    return foreground, is_one


def classes_to_instances(
    classes: np.ndarray,
    *,
    seeds: str = "interior",
    points: np.ndarray | None = None,
    min_size: int = 8,
    min_seed_size: int = 4,
    interior_threshold: float | None = None,
    smooth: float = 1.0,
) -> np.ndarray:
    """Instance labels (int32, 0 = background, 1..n) from a class map or class probabilities.

    ``classes`` is either a ``(H, W)`` integer map (0 background, 1 interior, 2 boundary) or
    ``(3, H, W)`` float probabilities in that order. ``seeds="count"`` needs ``points``
    (``(N, 2)`` (y, x) cell centres on the same grid, e.g. from :func:`density_peaks`).

    For probabilities, ``interior_threshold`` (None: the arg-max class) makes the interior seeds
    the pixels with interior probability above it, and ``smooth`` is the Gaussian sigma applied
    to the interior probability before it becomes the watershed elevation (0: none).
    """
    from skimage.segmentation import watershed

    if seeds not in SEED_MODES:
        raise InputError(f"seeds must be one of {SEED_MODES}, got {seeds!r}")
    arr = np.asarray(classes)
    if arr.ndim == 3:
        if arr.shape[0] < 2:
            raise ValueError(f"class probabilities need >= 2 channels, got {arr.shape}")
        probs = arr.astype(np.float32, copy=False)
        foreground, is_one = _argmax_masks(probs)
        p_in = probs[1]
        interior = is_one if interior_threshold is None else p_in > float(interior_threshold)
        interior &= foreground
        if smooth > 0:
            elevation = ndi.gaussian_filter(p_in, float(smooth), output=np.float32)
            np.negative(elevation, out=elevation)
        else:
            elevation = -p_in
    elif arr.ndim == 2:
        cls = arr.astype(np.int64, copy=False)
        foreground = cls != 0
        interior = cls == 1
        elevation = -ndi.distance_transform_edt(foreground)
    else:
        raise ValueError(f"classes must be (H, W) or (C, H, W), got shape {arr.shape}")
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.int32)

    if seeds == "count":
        if points is None:
            raise InputError("seeds='count' needs the counting model's points")
        markers = np.zeros(foreground.shape, dtype=np.int32)
        pts = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.intp)
        if len(pts):
            pts[:, 0] = np.clip(pts[:, 0], 0, foreground.shape[0] - 1)
            pts[:, 1] = np.clip(pts[:, 1], 0, foreground.shape[1] - 1)
            pts = pts[foreground[pts[:, 0], pts[:, 1]]]
            markers[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1, dtype=np.int32)
    else:
        markers, _ = ndi.label(interior)
        markers = _remove_small(markers.astype(np.int32), min_seed_size)

    labels = watershed(elevation, markers=markers, mask=foreground)
    # foreground components that received no seed become instances of their own
    orphan = foreground & (labels == 0)
    if orphan.any():
        extra, n_extra = ndi.label(orphan)
        if n_extra:
            labels = np.where(extra > 0, extra + labels.max(), labels)
    labels = _remove_small(labels.astype(np.int32), min_size)
    return _relabel(labels)
