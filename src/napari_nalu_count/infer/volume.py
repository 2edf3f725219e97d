"""Z-stacks counted as volumes: cells detected in 3-D from the per-plane densities.

A counting network sees one plane, so a nucleus that spans ``n`` planes of a ``ZYX`` stack is
counted in each of them (the per-plane counts are right for a plane, their sum is not a count
of the volume). :func:`volume_peaks` finds the nuclei in 3-D instead:

1. the per-plane densities are stacked into ``(Z, Y, X)`` and smoothed with a Gaussian of
   ``sigma = (max(0.5, z_diameter / 4), d / 8, d / 8)`` (``d``: the cell diameter in pixels,
   ``z_diameter``: the extent of a nucleus along Z in planes), so each nucleus becomes one
   hill whose top is at its middle plane;
2. the local maxima within an anisotropic box of ``±round(z_diameter / 2)`` planes and
   ``±round(d / 2)`` pixels are candidates (flat tops merged into their centroid) when the smoothed
   density there is at least ``min_mass / d²`` and the density mass in a ``d x d`` box of that
   plane is at least ``min_mass`` cells, as for 2-D points;
3. candidates closer than the same ellipsoidal distance are thinned, the highest first; the
   ``z`` of each kept peak is refined to the mass-weighted mean plane of its hill.

Segmentation (``segment(..., volume=True)``): :func:`link_labels` joins the per-plane objects
of neighbouring planes that overlap by at least half of the smaller one (one partner per plane,
largest overlaps first) into 3-D labels; each 3-D object is one nucleus.

``z_diameter`` is estimated, when not given, by :func:`estimate_z_extent`: the per-plane cell
centres are linked across neighbouring planes (nearest neighbour within ``d / 2``), and the
median length of the chains (in planes) is the nucleus extent along Z.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.errors import InputError


def link_chains(points_per_plane: list[np.ndarray], radius: float) -> list[list[tuple[int, int]]]:
    """Link ``(n_z, 2)`` (y, x) centres of consecutive planes into chains.

    Each point joins the chain of its nearest unclaimed neighbour in the previous plane within
    ``radius`` pixels (mutual nearest first). Returns chains as lists of ``(plane, index)``.
    """
    from scipy.spatial import cKDTree

    chains: list[list[tuple[int, int]]] = []
    open_: dict[int, int] = {}  # index in previous plane -> chain number
    prev: np.ndarray | None = None
    for z, pts in enumerate(points_per_plane):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        now: dict[int, int] = {}
        if prev is not None and len(prev) and len(pts):
            dist, nn = cKDTree(prev).query(pts, k=1, distance_upper_bound=radius)
            order = np.argsort(dist)
            taken: set[int] = set()
            for i in order:
                j = int(nn[i])
                if not np.isfinite(dist[i]) or j in taken or j not in open_:
                    continue
                taken.add(j)
                c = open_[j]
                chains[c].append((z, int(i)))
                now[int(i)] = c
        for i in range(len(pts)):
            if i not in now:
                chains.append([(z, i)])
                now[i] = len(chains) - 1
        open_ = now
        prev = pts
    return chains


def estimate_z_extent(points_per_plane: list[np.ndarray], diameter: float) -> float | None:
    """Median length (planes) of the chains of linked per-plane centres; None without chains of
    at least 2 planes."""
    chains = link_chains(points_per_plane, max(1.0, float(diameter) / 2.0))
    lengths = [len(c) for c in chains if len(c) >= 2]
    if not lengths:
        return None
    return float(np.median(lengths))


def volume_peaks(
    density: Any,
    diameter: float,
    z_diameter: float,
    *,
    min_mass: float = 0.3,
) -> np.ndarray:
    """Cell centres ``(N, 3)`` float64 ``(z, y, x)`` of a ``(Z, Y, X)`` stack of per-plane
    densities (cells per pixel), see the module docstring. ``diameter``: pixels of the planes;
    ``z_diameter``: planes."""
    from scipy.spatial import cKDTree

    dens = np.asarray(density, dtype=np.float32)
    if dens.ndim != 3:
        raise InputError(f"volume_peaks expects a (Z, Y, X) density, got shape {dens.shape}")
    d = max(2.0, float(diameter))
    zd = max(1.0, float(z_diameter))
    sigma = (max(0.5, zd / 4.0), max(0.5, d / 8.0), max(0.5, d / 8.0))
    work = ndi.gaussian_filter(dens, sigma, mode="constant", output=np.float32)
    if not np.any(work > 0):
        return np.zeros((0, 3))
    rz = max(1, int(round(zd / 2.0)))
    rxy = max(1, int(round(d / 2.0)))
    size = (2 * rz + 1, 2 * rxy + 1, 2 * rxy + 1)
    peak = (work == ndi.maximum_filter(work, size=size, mode="constant")) & (
        work >= min_mass / (d * d)
    )
    if not peak.any():
        return np.zeros((0, 3))
    lab, n = ndi.label(peak, structure=np.ones((3, 3, 3), dtype=bool))
    cents = np.asarray(ndi.center_of_mass(peak, lab, np.arange(1, n + 1)), dtype=np.float64)
    cents = cents.reshape(-1, 3)
    box = max(1, int(round(d)))
    mass2d = ndi.uniform_filter(dens, size=(1, box, box), mode="constant", output=np.float32)
    mass2d *= np.float32(box * box)
    iz, iy, ix = (
        np.clip(np.rint(cents[:, i]).astype(np.intp), 0, dens.shape[i] - 1) for i in range(3)
    )
    keep = mass2d[iz, iy, ix] >= min_mass
    cents, heights = cents[keep], work[iz[keep], iy[keep], ix[keep]]
    if not len(cents):
        return np.zeros((0, 3))
    # thin: the highest first, nothing else within the ellipsoid (rz, rxy, rxy)
    scaled = cents * np.array([rxy / rz, 1.0, 1.0])
    tree = cKDTree(scaled)
    order = np.argsort(-heights, kind="stable")
    alive = np.ones(len(cents), dtype=bool)
    for i in order:
        if not alive[i]:
            continue
        for j in tree.query_ball_point(scaled[i], r=rxy - 1e-9):
            if j != i:
                alive[j] = False
    cents = cents[alive]
    # z refined to the mass-weighted mean plane of the hill (within +-rz planes)
    out = cents.copy()
    for n_, (z, y, x) in enumerate(cents):
        zi, yi, xi = int(round(z)), int(round(y)), int(round(x))
        z0, z1 = max(0, zi - rz), min(dens.shape[0], zi + rz + 1)
        prof = np.clip(mass2d[z0:z1, yi, xi], 0.0, None).astype(np.float64)
        if prof.sum() > 0:
            out[n_, 0] = float((np.arange(z0, z1) * prof).sum() / prof.sum())
    order = np.lexsort((out[:, 2], out[:, 1], out[:, 0]))
    return out[order]


def link_labels(labels: Any, min_overlap: float = 0.5) -> tuple[np.ndarray, int]:
    """Link per-plane instance labels ``(Z, Y, X)`` (numbered per plane) into 3-D objects.

    Objects of neighbouring planes are joined when they overlap by at least ``min_overlap`` of
    the smaller one, one partner per object and plane (the largest overlaps first). Returns
    ``(labels_3d, n)``: int32 of the same shape, each 3-D object numbered 1..n in the order
    of its first plane.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"link_labels expects (Z, Y, X) labels, got shape {lab.shape}")
    nz = lab.shape[0]
    flat = lab.reshape(nz, -1).astype(np.int64)
    maxes = [int(p.max(initial=0)) for p in flat]
    offsets = np.concatenate([[0], np.cumsum([m + 1 for m in maxes])]).astype(np.int64)
    parent = np.arange(int(offsets[-1]) + 1, dtype=np.int64)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for z in range(nz - 1):
        a, b = flat[z], flat[z + 1]
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        mb = maxes[z + 1] + 1
        pairs, cnt = np.unique(a[both] * mb + b[both], return_counts=True)
        la, lb = pairs // mb, pairs % mb
        size_a = np.bincount(a, minlength=maxes[z] + 1)
        size_b = np.bincount(b, minlength=mb)
        frac = cnt / np.minimum(size_a[la], size_b[lb])
        used_a: set[int] = set()
        used_b: set[int] = set()
        for k in np.argsort(-cnt, kind="stable"):
            ia, ib = int(la[k]), int(lb[k])
            if frac[k] < min_overlap or ia in used_a or ib in used_b:
                continue
            used_a.add(ia)
            used_b.add(ib)
            ra, rb = find(int(offsets[z] + ia)), find(int(offsets[z + 1] + ib))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    out = np.zeros(flat.shape, dtype=np.int32)
    lut: dict[int, int] = {}
    for z in range(nz):
        ids = np.unique(flat[z])
        ids = ids[ids > 0]
        table = np.zeros(maxes[z] + 1, dtype=np.int32)
        for i in ids:
            root = find(int(offsets[z] + i))
            if root not in lut:
                lut[root] = len(lut) + 1
            table[i] = lut[root]
        out[z] = table[flat[z]]
    return out.reshape(lab.shape), len(lut)
