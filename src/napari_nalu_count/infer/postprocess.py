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
    coords = _local_maxima(work, min_distance, floor)
    if len(coords) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    keep = _box_sums(dens, coords, max(1, int(round(d)))) >= min_mass
    pts = coords[keep].astype(np.float64)
    order = np.lexsort((pts[:, 1], pts[:, 0])) if len(pts) else np.zeros(0, dtype=int)
    return pts[order]


def _box_sums(image: np.ndarray, coords: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``image`` over the ``size x size`` box at each of ``coords`` ``(N, 2)``: rows
    ``y - size // 2`` to ``y - size // 2 + size - 1`` (the window of
    ``ndi.uniform_filter(image, size, mode="constant") * size**2``), zero outside the plane.
    Only the boxes asked for are read, a chunk at a time (the whole-plane uniform
    filter took 5.5 ms on a 880 px plane for 1,269 peaks, this 3.0 ms), summed in float64."""
    out = np.zeros(len(coords), dtype=np.float64)
    h, w = image.shape
    r = np.arange(size) - size // 2
    chunk = max(1, min(BOX_CHUNK, BOX_CHUNK_VALUES // (size * size)))
    for start in range(0, len(coords), chunk):
        c = coords[start : start + chunk]
        rows = c[:, 0, None] + r[None, :]
        cols = c[:, 1, None] + r[None, :]
        ok_r = (rows >= 0) & (rows < h)
        ok_c = (cols >= 0) & (cols < w)
        vals = image[np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
        if not (ok_r.all() and ok_c.all()):
            vals = vals * (ok_r[:, :, None] & ok_c[:, None, :])
        out[start : start + len(c)] = vals.sum(axis=(1, 2), dtype=np.float64)
    return out


#: candidates per chunk of :func:`_box_sums`, and at most this many box values at once
#: (bounded temporaries on noisy planes and for large diameters: 16 MiB of float32)
BOX_CHUNK = 4096
BOX_CHUNK_VALUES = 2**22
#: plane rows per block of the local-maximum search (bounded temporaries on large planes)
PEAK_BLOCK_ROWS = 256


def _is_local_max(image: np.ndarray, size: int) -> np.ndarray:
    """``image == ndi.maximum_filter(image, size=size, mode="nearest")``, bit for bit, in
    blocks of :data:`PEAK_BLOCK_ROWS` rows read with ``size // 2`` rows of context (each
    block's own edge padding is only used at the plane's edges)."""
    r = size // 2
    h = image.shape[0]
    out = np.empty(image.shape, dtype=bool)
    for y0 in range(0, h, PEAK_BLOCK_ROWS):
        y1 = min(h, y0 + PEAK_BLOCK_ROWS)
        a0 = max(0, y0 - r)
        peak = _max_filter_nearest(image[a0 : min(h, y1 + r)], size)
        np.equal(image[y0:y1], peak[y0 - a0 : y1 - a0], out=out[y0:y1])
    return out


def _max_filter_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """``ndi.maximum_filter(image, size=size, mode="nearest")`` for an odd ``size``, bit for
    bit: each axis takes its running maximum over windows of 1, 2, 4, ... pixels by doubling
    and combines the two power-of-two windows that cover ``size`` (4 + 1 ``np.maximum`` per
    axis for size 13, where SciPy's filter took 20 ms on a 880 px plane)."""
    r = size // 2
    out = image
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        cur = np.pad(out, pad, mode="edge")
        width = 1
        while width * 2 <= size:
            m = cur.shape[axis]
            lo = [slice(None), slice(None)]
            hi = [slice(None), slice(None)]
            lo[axis] = slice(0, m - width)
            hi[axis] = slice(width, m)
            cur = np.maximum(cur[tuple(lo)], cur[tuple(hi)])
            width *= 2
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis] = slice(0, n)
        hi[axis] = slice(size - width, size - width + n)
        out = np.maximum(cur[tuple(lo)], cur[tuple(hi)])
    return out


def _local_maxima(image: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """The coordinates of ``skimage.feature.peak_local_max(image, min_distance=min_distance,
    threshold_abs=threshold, exclude_border=False)`` (row-major here, by value there; callers
    sort them) without its spacing pass when that pass can remove nothing.

    A candidate equals the maximum of the ``(2 m + 1)`` square around it; two candidates
    within ``m`` (Chebyshev) of each other lie in each other's square and so have the same
    value. When all candidate values differ, no pair is that close and scikit-image's
    spacing pass (a KD-tree query per batch of candidates: 60 of the 62 ms on a 880 px plane
    with 1,268 peaks) keeps every candidate; with ties (plateaus) it runs as before.
    """
    if min_distance < 1 or image.size <= 1:
        return _peak_local_max(image, min_distance, threshold)
    size = 2 * int(min_distance) + 1
    is_max = _is_local_max(image, size)
    if is_max.all():  # a constant plane has no peak
        return np.zeros((0, 2), dtype=np.intp)
    is_max &= image > threshold
    # flat indices (np.argwhere / np.nonzero of a 2-D mask took 3.4 ms on a 880 px plane)
    flat = np.flatnonzero(is_max)
    coords = np.column_stack(np.divmod(flat, image.shape[1])).astype(np.intp, copy=False)
    if (
        len(coords) > 1
        and min_distance > 1
        and _close_ties(coords, image.ravel()[flat], min_distance)
    ):
        return _peak_local_max(image, min_distance, threshold)
    return coords


def _peak_local_max(image: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """scikit-image's peak finder with the arguments :func:`_local_maxima` stands in for."""
    from skimage.feature import peak_local_max

    return peak_local_max(
        image, min_distance=min_distance, threshold_abs=threshold, exclude_border=False
    )


def _close_ties(coords: np.ndarray, values: np.ndarray, distance: int) -> bool:
    """True when two candidates of the same value lie within ``distance`` (Chebyshev) of each
    other, the only case where scikit-image's spacing pass removes a local maximum. Equal
    values far apart are common on large planes (3 pairs among 1,272 peaks of the 2048 px
    benchmark image) and change nothing; a group of more than 64 equal values (a plateau) is
    not examined and counts as close."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    eq = v[1:] == v[:-1]
    if not eq.any():
        return False
    starts = np.flatnonzero(eq & ~np.concatenate(([False], eq[:-1])))
    for start in starts:
        stop = start + 1
        while stop < len(v) and v[stop] == v[start]:
            stop += 1
        if stop - start > 64:
            return True
        group = coords[order[start:stop]]
        gap = np.abs(group[:, None, :] - group[None, :, :]).max(axis=2)
        np.fill_diagonal(gap, distance + 1)
        if (gap <= distance).any():
            return True
    return False


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


def _relabel(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Ids of non-negative integer ``labels`` renumbered 1..n in their order (int32), objects
    under ``min_size`` pixels dropped first when ``min_size > 1`` (:func:`_remove_small` and
    the renumbering from one ``bincount``); the ids present are found with that ``bincount``
    (a hash or sort of every pixel, as ``np.unique`` does, costs several times more on large
    planes)."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    if top <= 0:
        return np.zeros(labels.shape, dtype=np.int32)
    sizes = np.bincount(labels.ravel(), minlength=top + 1)
    keep = sizes >= int(min_size) if min_size > 1 else sizes > 0
    keep[0] = False
    n = int(keep.sum())
    if n == top:
        return labels.astype(np.int32, copy=False)
    lut = np.zeros(top + 1, dtype=np.int32)
    lut[keep] = np.arange(1, n + 1, dtype=np.int32)
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


#: above this share of the plane (bounding boxes of the components to flood), the seeded
#: watershed floods the whole plane (masked) instead of a packed plane of cut-outs
MOSAIC_FRACTION = 0.4


def _seeded_watershed(
    elevation: np.ndarray, markers: np.ndarray, foreground: np.ndarray, *, orphans: bool = False
) -> np.ndarray:
    """``skimage.segmentation.watershed(elevation, markers=markers, mask=foreground)``, same
    labels, flooding only the foreground components that hold two or more marker ids.
    Markers outside the foreground are ignored, as scikit-image ignores them.

    ``orphans=True`` also numbers the components with no marker, after the largest marker id,
    in the order of their first pixel: what ``ndi.label`` of the unlabelled foreground added to
    the labels' maximum gives, without labelling the plane again.

    A 4-connected foreground component with one marker id is flooded whole by it, one with
    none stays 0, whatever the elevation: those are filled from a lookup table. The flood of a
    component never reaches another, so the components with several ids get the labels of the
    whole-plane flood, with one exception: where seeds of a component start at exactly the
    same elevation, scikit-image's heap pops them in an order that depends on every seed in
    the plane, and a pixel on a tie may go to the other seed (no such case in the 122 val
    images: their labels are identical; tests/test_seeded_watershed.py).
    """
    from skimage.segmentation import watershed

    comp, n = ndi.label(foreground)
    flat_markers = markers.ravel()
    at = np.flatnonzero(flat_markers)
    at = at[comp.ravel()[at] > 0]  # markers on the foreground only
    lut = np.zeros(n + 1, dtype=np.int32)
    per_comp = np.zeros(n + 1, dtype=np.int64)
    top = 0
    if len(at):
        ids = flat_markers[at].astype(np.int64)
        top = int(ids.max())
        pairs = np.unique(comp.ravel()[at].astype(np.int64) * (top + 1) + ids)
        pair_comp, pair_id = np.divmod(pairs, top + 1)
        per_comp = np.bincount(pair_comp, minlength=n + 1)
        one = per_comp[pair_comp] == 1
        lut[pair_comp[one]] = pair_id[one]
    if orphans:
        empty = np.flatnonzero(per_comp[1:] == 0) + 1
        lut[empty] = top + np.arange(1, len(empty) + 1, dtype=np.int32)
    labels = lut[comp]
    if not len(at):
        return labels
    multi = per_comp >= 2
    multi[0] = False
    ids = np.flatnonzero(multi)
    if len(ids) == 0:
        return labels
    boxes = ndi.find_objects(comp)
    sizes = [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in (boxes[i - 1] for i in ids)]
    area = sum((h + 1) * (w + 1) for h, w in sizes)
    if area > MOSAIC_FRACTION * comp.size:
        inside = multi[comp]
        flooded = watershed(elevation, markers=np.where(inside, markers, 0), mask=inside)
        np.copyto(labels, flooded, where=inside, casting="unsafe")
        return labels
    # the components to flood, cut out (bounding boxes) and packed on shelves into one small
    # plane, 1 px apart: one flood of that plane instead of the whole one (skimage's
    # watershed costs ~55 ms on a 1430 px plane even when 6 % of it is masked in; a call per
    # component ~0.6 ms each)
    width = max(max(w for _, w in sizes) + 1, int(np.ceil(np.sqrt(area))))
    places = [(0, 0)] * len(ids)
    y = x = shelf = 0
    for k in sorted(range(len(ids)), key=lambda k: -sizes[k][0]):
        h, w = sizes[k]
        if x + w + 1 > width:
            y, x, shelf = y + shelf, 0, 0
        places[k] = (y, x)
        x += w + 1
        shelf = max(shelf, h + 1)
    shape = (y + shelf, width)
    m_elev = np.zeros(shape, dtype=elevation.dtype)
    m_mask = np.zeros(shape, dtype=bool)
    m_markers = np.zeros(shape, dtype=markers.dtype)
    cuts = []
    for k, cid in enumerate(ids):
        box = boxes[cid - 1]
        mine = comp[box] == cid
        (h, w), (py, px) = sizes[k], places[k]
        dst = (slice(py, py + h), slice(px, px + w))
        m_elev[dst] = elevation[box]
        m_mask[dst] = mine
        m_markers[dst] = np.where(mine, markers[box], 0)
        cuts.append((box, dst, mine))
    flooded = watershed(m_elev, markers=m_markers, mask=m_mask)
    for box, dst, mine in cuts:
        np.copyto(labels[box], flooded[dst], where=mine, casting="unsafe")
    return labels


def _point_markers(points: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Watershed markers (int32, ids 1..k) at the rounded ``(N, 2)`` (y, x) ``points``
    (clipped to the plane) that fall on ``foreground``; the count-guided seeds of
    :func:`classes_to_instances`."""
    markers = np.zeros(foreground.shape, dtype=np.int32)
    pts = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.intp)
    if len(pts):
        pts[:, 0] = np.clip(pts[:, 0], 0, foreground.shape[0] - 1)
        pts[:, 1] = np.clip(pts[:, 1], 0, foreground.shape[1] - 1)
        pts = pts[foreground[pts[:, 0], pts[:, 1]]]
        markers[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1, dtype=np.int32)
    return markers


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
        markers = _point_markers(points, foreground)
    else:
        markers, _ = ndi.label(interior)
        markers = _remove_small(markers.astype(np.int32), min_seed_size)

    # foreground components that received no seed become instances of their own (orphans)
    labels = _seeded_watershed(elevation, markers, foreground, orphans=True)
    return _relabel(labels, min_size)
