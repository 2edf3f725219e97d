"""Synthetic fluorescence nuclei with exact ground truth (centres and instance labels).

The generator places ``n_cells`` elliptical, softly-edged, textured blobs of varying size,
elongation, orientation and brightness; optionally clumps them and lets neighbours overlap;
blurs the result (optical PSF); adds a background offset and gradient; and simulates the camera
(Poisson shot noise at ``photons`` per unit intensity, Gaussian read noise, a dark offset,
uint16 quantisation). Every centre lies inside the image, so ``len(sample.dots) == n_cells``
exactly, and the same seed always gives identical arrays.

Overlaps are resolved in the labels by giving each pixel to the cell whose normalised elliptical
radius ``r = |A (p - c)|`` (0 at the centre, 1 on the edge) is smallest, i.e. overlapping nuclei
are split along the line where both are "equally deep", and each cell's centre pixel always
carries its own id, so the labels hold exactly ``n_cells`` instances (``ids 1..n_cells`` in the
order of ``dots``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.data.readers import Sample
from napari_nalu_count.errors import InputError

__all__ = [
    "extrapolation_split",
    "synthetic_crowded",
    "synthetic_varied",
    "synthetic_cells",
    "synthetic_dataset",
    "synthetic_timelapse",
    "synthetic_volume",
]

OutputDtype = Literal["uint16", "uint8", "float32"]


@dataclass
class _Cells:
    """Per-cell parameters, each an array of length N (pixels, radians, relative brightness)."""

    centres: np.ndarray  # (N, 2) y, x
    semi_major: np.ndarray
    semi_minor: np.ndarray
    angle: np.ndarray
    brightness: np.ndarray

    def subset(self, n: int) -> _Cells:
        return _Cells(
            self.centres[:n],
            self.semi_major[:n],
            self.semi_minor[:n],
            self.angle[:n],
            self.brightness[:n],
        )


def _check(shape: Sequence[int], n_cells: int, diameter: float, overlap: float) -> tuple:
    if len(shape) != 2 or min(int(s) for s in shape) < 8:
        raise InputError(f"shape must be (H, W) with H, W >= 8, got {tuple(shape)}")
    if int(n_cells) != n_cells or n_cells < 0:
        raise InputError(f"n_cells must be a whole number >= 0, got {n_cells}")
    if n_cells > shape[0] * shape[1] / 8:
        raise InputError(
            f"n_cells={n_cells} is too many for a {shape[0]}x{shape[1]} image "
            f"(at most one cell per 8 pixels, i.e. {shape[0] * shape[1] // 8})"
        )
    if not (np.isfinite(diameter) and 2.0 <= diameter <= min(shape)):
        raise InputError(
            f"diameter must be between 2 px and the image size {min(shape)} px, got {diameter}"
        )
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    return (int(shape[0]), int(shape[1])), int(n_cells)


class _Grid:
    """Uniform grid of cell size ``g`` holding up to 4 point indices per cell.

    Points kept at least ``g`` apart fit at most 4 to a ``g x g`` cell, so neighbour queries only
    look at the 3 x 3 surrounding cells (vectorised over a batch of candidates).
    """

    def __init__(self, shape: tuple[int, int], g: float, points: np.ndarray) -> None:
        self.g = g
        self.gh = int(shape[0] / g) + 3
        self.gw = int(shape[1] / g) + 3
        self.slots = np.full((self.gh, self.gw, 4), -1, dtype=np.int64)
        self.points = np.zeros((0, 2))
        for i, p in enumerate(points):
            self.add(i, p)

    def _cell(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (p[..., 0] / self.g).astype(np.int64) + 1, (p[..., 1] / self.g).astype(np.int64) + 1

    def add(self, i: int, p: np.ndarray) -> None:
        cy, cx = self._cell(p)
        free = np.flatnonzero(self.slots[cy, cx] < 0)
        self.slots[cy, cx, free[0]] = i

    def min_dist2(self, cand: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Squared distance from each candidate (B, 2) to its nearest neighbour (inf if none)."""
        cy, cx = self._cell(cand)
        off = np.arange(-1, 2)
        ny = (cy[:, None, None] + off[None, :, None]).repeat(3, axis=2)
        nx = (cx[:, None, None] + off[None, None, :]).repeat(3, axis=1)
        idx = self.slots[ny, nx].reshape(len(cand), -1)
        pts = centres[np.maximum(idx, 0)]
        d2 = ((pts - cand[:, None, :]) ** 2).sum(-1)
        d2[idx < 0] = np.inf
        return d2.min(axis=1)


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    diameter: float,
    overlap: float,
    clumping: float,
) -> np.ndarray:
    """Centres (n, 2) inside ``[0, H-1] x [0, W-1]`` at least ~(1 - overlap) * diameter apart.

    When the image gets crowded the minimum distance shrinks gradually (never below 2 px) so
    that exactly ``n`` centres are always placed.
    """
    h, w = shape
    hi = np.array([h - 1.0, w - 1.0])
    centres = np.zeros((n, 2))
    min_dist = max((1.0 - overlap) * diameter, 2.0)
    grid = _Grid(shape, min_dist, centres[:0])
    batch = 64
    k = 0
    failures = 0
    while k < n:
        cand = rng.uniform(0.0, 1.0, size=(batch, 2)) * hi
        if k > 0 and clumping > 0:
            near = rng.random(batch) < clumping
            if np.any(near):
                parent = centres[rng.integers(0, k, size=int(near.sum()))]
                ang = rng.uniform(0, 2 * np.pi, size=len(parent))
                dist = min_dist * rng.uniform(1.0, 1.35, size=len(parent))
                cand[near] = parent + dist[:, None] * np.column_stack([np.sin(ang), np.cos(ang)])
        ok = np.all((cand >= 0) & (cand <= hi), axis=1)
        if k > 0:
            ok &= grid.min_dist2(np.clip(cand, 0, hi), centres) >= min_dist**2
        good = np.flatnonzero(ok)
        if len(good):
            centres[k] = cand[good[0]]
            grid.add(k, centres[k])
            k += 1
            failures = 0
        else:
            failures += 1
            if failures >= 4 and min_dist > 2.0:
                min_dist = max(min_dist * 0.9, 2.0)
                grid = _Grid(shape, min_dist, centres[:k])
                failures = 0
            elif failures >= 2000:
                raise InputError(
                    f"cannot place {n} cells at least 2 px apart in a {h}x{w} image "
                    f"(placed {k}); use fewer cells or a larger image"
                )
    return centres


def _sample_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    diameter: float,
    diameter_sd: float,
    elongation: tuple[float, float],
    brightness_sd: float,
    overlap: float,
    clumping: float,
) -> _Cells:
    centres = _place(rng, shape, n, diameter, overlap, clumping)
    d = diameter * np.exp(rng.normal(0.0, diameter_sd, n) - 0.5 * diameter_sd**2)
    d = np.clip(d, 2.0, None)
    ratio = rng.uniform(elongation[0], elongation[1], n)
    # keep the area of the ellipse equal to that of a circle of diameter d
    semi_major = 0.5 * d * np.sqrt(ratio)
    semi_minor = 0.5 * d / np.sqrt(ratio)
    angle = rng.uniform(0.0, np.pi, n)
    brightness = np.exp(rng.normal(0.0, brightness_sd, n) - 0.5 * brightness_sd**2)
    return _Cells(centres, semi_major, semi_minor, angle, brightness)


def _render(cells: _Cells, shape: tuple[int, int], softness: float) -> tuple:
    """Noise-free signal (float64, peak ~brightness) and int32 labels of ``cells``."""
    h, w = shape
    signal = np.zeros(shape)
    best_r = np.full(shape, np.inf)
    labels = np.zeros(shape, dtype=np.int32)
    for i in range(len(cells.centres)):
        cy, cx = cells.centres[i]
        a, b, th = cells.semi_major[i], cells.semi_minor[i], cells.angle[i]
        reach = a + 3.0 * softness + 1.0
        y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, h)
        x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, w)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        c, s = np.cos(th), np.sin(th)
        u = (dx * c + dy * s) / a
        v = (-dx * s + dy * c) / b
        r = np.sqrt(u * u + v * v)
        # soft edge (width ~softness px) and a slightly brighter middle
        edge = 0.5 * (1.0 - np.tanh((r - 1.0) * b / max(softness, 1e-3)))
        signal[y0:y1, x0:x1] += cells.brightness[i] * edge * (1.0 - 0.25 * np.minimum(r, 1) ** 2)
        win_r = best_r[y0:y1, x0:x1]
        take = (r <= 1.0) & (r < win_r)
        win_r[take] = r[take]
        labels[y0:y1, x0:x1][take] = i + 1
    # each centre pixel belongs to its own cell (guarantees exactly N instances)
    iy = np.clip(np.rint(cells.centres[:, 0]).astype(int), 0, h - 1)
    ix = np.clip(np.rint(cells.centres[:, 1]).astype(int), 0, w - 1)
    labels[iy, ix] = np.arange(1, len(cells.centres) + 1, dtype=np.int32)
    return signal, labels


def _acquire(
    rng: np.random.Generator,
    signal: np.ndarray,
    diameter: float,
    texture: float,
    blur: float,
    background: float,
    gradient: float,
    photons: float,
    read_noise: float,
    dark: float,
    dtype: OutputDtype,
) -> np.ndarray:
    """Texture, PSF blur, background and camera noise applied to a noise-free signal."""
    h, w = signal.shape
    if texture > 0:
        field = ndi.gaussian_filter(rng.normal(size=(h, w)), max(diameter / 8.0, 0.7))
        field /= field.std() + 1e-12
        signal = signal * np.clip(1.0 + texture * field, 0.0, None)
    if blur > 0:
        signal = ndi.gaussian_filter(signal, blur)
    yy, xx = np.mgrid[0:h, 0:w]
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.sin(ang) * (yy / max(h - 1, 1) - 0.5)) + (np.cos(ang) * (xx / max(w - 1, 1) - 0.5))
    bg = background * rng.uniform(0.5, 1.5) + gradient * ramp
    expected = np.clip(signal + bg, 0.0, None)
    if photons > 0:
        counts = rng.poisson(expected * photons).astype(np.float64)
    else:
        counts = expected.copy()
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, size=counts.shape)
    counts += dark
    if dtype == "uint16":
        return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    if dtype == "uint8":  # an 8-bit camera: counts beyond 255 saturate
        return np.clip(np.rint(counts), 0, 255).astype(np.uint8)
    scale = photons if photons > 0 else 1.0
    return ((counts - dark) / scale).astype(np.float32)


def synthetic_cells(
    shape: Sequence[int] = (256, 256),
    n_cells: int = 40,
    diameter: float = 14.0,
    seed: int | None = 0,
    *,
    diameter_sd: float = 0.15,
    elongation: tuple[float, float] = (1.0, 1.6),
    brightness_sd: float = 0.3,
    overlap: float = 0.15,
    clumping: float = 0.0,
    softness: float = 1.0,
    texture: float = 0.15,
    blur: float = 1.0,
    background: float = 0.1,
    gradient: float = 0.05,
    photons: float = 400.0,
    read_noise: float = 3.0,
    dark: float = 100.0,
    dtype: OutputDtype = "uint16",
) -> Sample:
    """One synthetic fluorescence image of nuclei with exact centres and instance labels.

    Parameters
    ----------
    shape
        ``(H, W)`` in pixels.
    n_cells
        Exact number of cells (``len(sample.dots) == n_cells``; every centre is inside the image,
        cells near the border may be cut by it).
    diameter
        Mean equivalent diameter in pixels (``diameter_sd``: log-normal relative spread).
    seed
        Seed of a numpy Generator; the same seed gives identical arrays.
    elongation
        Range of the major/minor axis ratio (area kept); orientation is uniform.
    brightness_sd
        Log-normal spread of the per-cell brightness (mean 1).
    overlap
        Allowed fractional overlap: centres are at least ``(1 - overlap) * diameter`` apart
        (relaxed automatically, never below 2 px, when the image is too crowded).
    clumping
        Probability in [0, 1] that a cell is placed right next to an earlier one.
    softness
        Width of the blurred nucleus edge in pixels.
    texture
        Relative amplitude of the chromatin-like intensity texture.
    blur
        Gaussian PSF sigma in pixels (0: none).
    background, gradient
        Background offset and the amplitude of a linear gradient in a random direction, in
        units of a mean cell's peak intensity.
    photons
        Expected photons per unit intensity (Poisson noise; 0 disables it).
    read_noise, dark
        Camera read noise (sd) and dark offset, in counts.
    dtype
        ``"uint16"`` (camera counts, default), ``"uint8"`` (an 8-bit camera: counts above 255
        saturate) or ``"float32"`` (intensity units, dark offset removed, noise included).

    Returns
    -------
    :class:`Sample` with ``image`` (H, W) uint16/float32, ``dots`` (N, 2) float64 ``(y, x)``,
    ``labels`` int32 (H, W) with ids 1..N in the order of ``dots``, ``meta`` the parameters.
    """
    shp, n = _check(shape, n_cells, diameter, overlap)
    if dtype not in ("uint16", "uint8", "float32"):
        raise InputError(f"dtype must be 'uint16', 'uint8' or 'float32', got {dtype!r}")
    if not 0.0 <= clumping <= 1.0:
        raise InputError(f"clumping must be in [0, 1], got {clumping}")
    if not (elongation[0] >= 1.0 and elongation[1] >= elongation[0]):
        raise InputError(
            f"elongation must be a range (lo, hi) with 1 <= lo <= hi, got {elongation}"
        )
    rng = np.random.default_rng(seed)
    cells = _sample_cells(
        rng, shp, n, diameter, diameter_sd, elongation, brightness_sd, overlap, clumping
    )
    signal, labels = _render(cells, shp, softness)
    image = _acquire(
        rng, signal, diameter, texture, blur, background, gradient, photons, read_noise, dark, dtype
    )
    meta = {
        "generator": "synthetic_cells",
        "seed": seed,
        "n_cells": n,
        "diameter": float(diameter),
        "overlap": overlap,
        "clumping": clumping,
    }
    return Sample(
        image=image,
        dots=cells.centres.copy(),
        labels=labels,
        name=f"synthetic-{n}-seed{seed}",
        meta=meta,
    )


def synthetic_timelapse(
    n_frames: int = 8,
    shape: Sequence[int] = (256, 256),
    start: int = 20,
    growth: float = 2.0,
    diameter: float = 14.0,
    seed: int | None = 0,
    **kwargs: object,
) -> Sample:
    """A (T, H, W) stack of a growing population: cells persist and new ones appear.

    The count grows exponentially from ``start`` to ``round(start * growth)`` over the frames
    (``meta["counts"]`` holds the per-frame counts). New cells tend to appear next to existing
    ones (``clumping`` 0.5 unless given), like divisions. Every frame has fresh noise.

    Returns
    -------
    :class:`Sample` with ``image`` (T, H, W), ``dots`` (sum of counts, 3) ``(t, y, x)``,
    ``labels`` int32 (T, H, W), ``meta["counts"]`` a list of T ints. Other keyword arguments are
    those of :func:`synthetic_cells`.
    """
    if int(n_frames) != n_frames or n_frames < 1:
        raise InputError(f"n_frames must be a whole number >= 1, got {n_frames}")
    if not (np.isfinite(growth) and growth > 0):
        raise InputError(f"growth must be a positive factor, got {growth}")
    t = np.arange(int(n_frames))
    frac = t / max(int(n_frames) - 1, 1)
    counts = np.rint(start * float(growth) ** frac).astype(int)
    shp, n_max = _check(shape, int(counts.max(initial=0)), diameter, kwargs.get("overlap", 0.15))
    opts = dict(
        diameter_sd=0.15,
        elongation=(1.0, 1.6),
        brightness_sd=0.3,
        overlap=0.15,
        clumping=0.5,
        softness=1.0,
        texture=0.15,
        blur=1.0,
        background=0.1,
        gradient=0.05,
        photons=400.0,
        read_noise=3.0,
        dark=100.0,
        dtype="uint16",
    )
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise InputError(f"unknown synthetic_timelapse option(s): {sorted(unknown)}")
    opts.update(kwargs)
    rng = np.random.default_rng(seed)
    cells = _sample_cells(
        rng,
        shp,
        n_max,
        diameter,
        opts["diameter_sd"],
        opts["elongation"],
        opts["brightness_sd"],
        opts["overlap"],
        opts["clumping"],
    )
    images, labels, dots = [], [], []
    for frame, n in enumerate(counts):
        sub = cells.subset(int(n))
        signal, lab = _render(sub, shp, opts["softness"])
        img = _acquire(
            rng,
            signal,
            diameter,
            opts["texture"],
            opts["blur"],
            opts["background"],
            opts["gradient"],
            opts["photons"],
            opts["read_noise"],
            opts["dark"],
            opts["dtype"],
        )
        images.append(img)
        labels.append(lab)
        dots.append(np.column_stack([np.full(int(n), float(frame)), sub.centres]))
    return Sample(
        image=np.stack(images),
        dots=np.concatenate(dots) if dots else np.zeros((0, 3)),
        labels=np.stack(labels),
        name=f"synthetic-timelapse-seed{seed}",
        meta={"generator": "synthetic_timelapse", "seed": seed, "counts": counts.tolist()},
    )


def synthetic_volume(
    shape: Sequence[int] = (16, 192, 192),
    n_cells: int = 30,
    diameter: float = 14.0,
    seed: int | None = 0,
    *,
    z_extent: tuple[int, int] = (3, 9),
    diameter_sd: float = 0.1,
    brightness_sd: float = 0.2,
    z_gap: int = 2,
    **kwargs: object,
) -> Sample:
    """A ``(Z, H, W)`` stack of ellipsoidal nuclei, each spanning a known number of planes.

    Nucleus ``i`` covers the planes ``z0 .. z0 + n_i - 1`` with ``n_i`` drawn uniformly from
    ``z_extent`` (inclusive, planes); it is an ellipsoid with semi-axes ``n_i / 2`` planes along
    Z and ``diameter_i / 2`` pixels in Y and X, so its cross-section in plane ``z`` is a disc of
    radius ``diameter_i / 2 * sqrt(1 - ((z - zc) / (n_i / 2))^2)`` (``zc`` its middle). Two
    nuclei are at least ``0.85 * diameter`` apart in (Y, X) unless their plane ranges are at
    least ``z_gap`` empty planes apart. Each plane is rendered and acquired like
    :func:`synthetic_cells` (other keyword arguments are its acquisition options: ``blur``,
    ``photons``, ``texture``, ``background``, ``dtype`` ...), with fresh noise per plane.

    Returns
    -------
    :class:`Sample` with ``image`` (Z, H, W), ``dots`` (N, 3) ``(zc, y, x)`` centres, ``labels``
    int32 (Z, H, W) (nucleus ``i`` has id ``i + 1`` in every plane it crosses) and ``meta``:
    ``n_cells``, ``z_planes`` (N,) planes per nucleus, ``plane_dots`` (one (n_z, 2) array of
    cross-section centres per plane: what a perfect 2-D counter finds).
    """
    if len(shape) != 3 or int(shape[0]) < 1:
        raise InputError(f"shape must be (Z, H, W), got {tuple(shape)}")
    nz = int(shape[0])
    shp, n = _check(tuple(shape[1:]), n_cells, diameter, 0.15)
    lo, hi = int(z_extent[0]), int(z_extent[1])
    if not 1 <= lo <= hi <= nz:
        raise InputError(f"z_extent must be (lo, hi) with 1 <= lo <= hi <= {nz}, got {z_extent}")
    opts = dict(
        softness=1.0,
        texture=0.1,
        blur=1.0,
        background=0.1,
        gradient=0.05,
        photons=400.0,
        read_noise=3.0,
        dark=100.0,
        dtype="uint16",
    )
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise InputError(f"unknown synthetic_volume option(s): {sorted(unknown)}")
    opts.update(kwargs)
    rng = np.random.default_rng(seed)
    h, w = shp
    min_xy = 0.85 * diameter
    centres, planes, starts = [], [], []
    tries = 0
    while len(centres) < n:
        tries += 1
        if tries > 200 * max(n, 1):
            raise InputError(f"cannot place {n} nuclei in a volume of shape {tuple(shape)}")
        m = int(rng.integers(lo, hi + 1))
        z0 = int(rng.integers(0, nz - m + 1))
        c = rng.uniform(0.0, 1.0, 2) * np.array([h - 1.0, w - 1.0])
        ok = True
        for cc, mm, zz in zip(centres, planes, starts, strict=True):
            apart_z = z0 >= zz + mm + z_gap or zz >= z0 + m + z_gap
            if not apart_z and np.hypot(*(cc - c)) < min_xy:
                ok = False
                break
        if ok:
            centres.append(c)
            planes.append(m)
            starts.append(z0)
    cy = np.array([c[0] for c in centres]).reshape(-1)
    cx = np.array([c[1] for c in centres]).reshape(-1)
    m_arr = np.array(planes, dtype=int)
    z0_arr = np.array(starts, dtype=int)
    d = diameter * np.exp(rng.normal(0.0, diameter_sd, n) - 0.5 * diameter_sd**2)
    bright = np.exp(rng.normal(0.0, brightness_sd, n) - 0.5 * brightness_sd**2)
    zc = z0_arr + (m_arr - 1) / 2.0
    images, labels, plane_dots = [], [], []
    for z in range(nz):
        inside = np.flatnonzero((z >= z0_arr) & (z < z0_arr + m_arr))
        t = (z - zc[inside]) / (m_arr[inside] / 2.0)
        r = 0.5 * d[inside] * np.sqrt(np.clip(1.0 - t * t, 0.0, None))
        r = np.maximum(r, 1.0)
        cells = _Cells(
            np.column_stack([cy[inside], cx[inside]]).reshape(-1, 2),
            r,
            r,
            np.zeros(len(inside)),
            bright[inside] * (0.6 + 0.4 * r / (0.5 * d[inside])),
        )
        signal, lab = _render(cells, shp, float(opts["softness"]))
        ids = np.zeros(len(inside) + 1, dtype=np.int32)
        ids[1:] = inside + 1
        labels.append(ids[lab])
        images.append(
            _acquire(
                rng,
                signal,
                diameter,
                float(opts["texture"]),
                float(opts["blur"]),
                float(opts["background"]),
                float(opts["gradient"]),
                float(opts["photons"]),
                float(opts["read_noise"]),
                float(opts["dark"]),
                opts["dtype"],  # type: ignore[arg-type]
            )
        )
        plane_dots.append(cells.centres.copy())
    return Sample(
        image=np.stack(images),
        dots=np.column_stack([zc, cy, cx]).reshape(-1, 3),
        labels=np.stack(labels),
        name=f"synthetic-volume-{n}-seed{seed}",
        meta={
            "generator": "synthetic_volume",
            "seed": seed,
            "n_cells": n,
            "diameter": float(diameter),
            "z_planes": m_arr.tolist(),
            "plane_dots": plane_dots,
        },
    )


def synthetic_dataset(
    n_images: int,
    count_range: tuple[int, int] = (20, 60),
    shape: Sequence[int] = (256, 256),
    diameter: float = 14.0,
    seed: int = 0,
    **kwargs: object,
) -> list[Sample]:
    """``n_images`` synthetic images with counts drawn uniformly from ``count_range`` (inclusive).

    Image ``i`` uses a seed derived from ``(seed, i)``, so data sets are reproducible and
    extending ``n_images`` keeps the earlier images unchanged.
    """
    lo, hi = int(count_range[0]), int(count_range[1])
    if not 0 <= lo <= hi:
        raise InputError(f"count_range must be (lo, hi) with 0 <= lo <= hi, got {count_range}")
    out = []
    for i in range(int(n_images)):
        sub = np.random.default_rng([int(seed), i])
        n = int(sub.integers(lo, hi + 1))
        img_seed = int(sub.integers(0, 2**31 - 1))
        out.append(synthetic_cells(shape, n, diameter, img_seed, **kwargs))
        out[-1].name = f"synthetic-{seed}-{i:04d}"
    return out


def extrapolation_split(
    n_train: int = 16,
    n_test: int = 8,
    low: tuple[int, int] = (5, 20),
    factor: float = 6.0,
    shape: Sequence[int] = (256, 256),
    diameter: float = 12.0,
    seed: int = 0,
    **kwargs: object,
) -> tuple[list[Sample], list[Sample]]:
    """Train on low counts, test on ``factor`` x higher counts (the NALU extrapolation setting).

    Training counts are drawn from ``low``; test counts from ``(low[0] * factor,
    low[1] * factor)`` (use ``factor`` 5-10). Images are otherwise drawn from the same generator.
    """
    if not factor >= 1.0:
        raise InputError(f"factor must be >= 1, got {factor}")
    high = (int(round(low[0] * factor)), int(round(low[1] * factor)))
    train = synthetic_dataset(n_train, low, shape, diameter, seed, **kwargs)
    test = synthetic_dataset(n_test, high, shape, diameter, seed + 1_000_003, **kwargs)
    return train, test


def _draw_diameter(
    rng: np.random.Generator, diameter: float | tuple[float, float], cap: float | None = None
) -> float:
    """A fixed ``diameter``, or one drawn log-uniformly in the range ``(lo, hi)`` (``hi`` cut
    to ``max(lo, cap)`` when ``cap`` is given); the range is checked."""
    if isinstance(diameter, (int, float)):
        return float(diameter)
    lo, hi = (float(v) for v in diameter)
    if not 0 < lo <= hi:
        raise InputError(f"diameter range must be (lo, hi) with 0 < lo <= hi, got {diameter}")
    if cap is not None:
        hi = min(hi, max(lo, cap))
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _camera(
    img: np.ndarray, rng: np.random.Generator, grey8: tuple[float, float], offset8: float
) -> tuple[np.ndarray, str, float, float]:
    """``(image, camera, level, offset)``: ``img`` (nucleus brightness about 1) recorded by an
    8-bit camera (a nucleus at ``grey8`` grey levels, log-uniform; offset 0-``offset8``) or a
    16-bit one (200-20000 grey levels, offset 0-500), one chance in two; rounded and clipped
    to the type's range (the brightest saturate)."""
    if rng.random() < 0.5:
        level = float(np.exp(rng.uniform(np.log(grey8[0]), np.log(grey8[1]))))
        offset = float(rng.uniform(0.0, offset8))
        image = np.clip(np.rint(img * level + offset), 0, 255).astype(np.uint8)
        return image, "uint8", level, offset
    level = float(np.exp(rng.uniform(np.log(200.0), np.log(20000.0))))
    offset = float(rng.uniform(0.0, 500.0))
    image = np.clip(np.rint(img * level + offset), 0, 65535).astype(np.uint16)
    return image, "uint16", level, offset


def synthetic_varied(
    shape: Sequence[int] = (256, 256),
    seed: int | None = 0,
    *,
    diameter: float | tuple[float, float] = (5.0, 120.0),
    coverage: tuple[float, float] = (0.03, 0.45),
    max_cells: int = 400,
) -> Sample:
    """One synthetic image whose microscope and nuclei are drawn at random, widely.

    For training models that must work on any fluorescence microscope: the nucleus diameter
    (log-uniform in ``diameter`` px, at most the image size / 2.5, or fixed), the fraction of
    the image the nuclei cover (``coverage``, which sets the count, at most ``max_cells``),
    elongation, brightness spread,
    clumping, chromatin texture (0-0.7), optical blur (up to an eighth of the diameter), an
    uneven background (linear gradient plus broad bumps, up to 0.6 of a nucleus' brightness),
    shot noise (5-3000 photons per unit), read noise, and the camera: 16-bit, or an 8-bit one
    whose nuclei span 12-250 grey levels, saturating the brightest. Exact dots and labels as
    :func:`synthetic_cells`; ``meta`` records every drawn parameter.
    """
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in shape)
    d = _draw_diameter(rng, diameter, cap=min(h, w) / 2.5)  # a few nuclei must fit
    cov = float(rng.uniform(*coverage))
    n = int(np.clip(round(cov * h * w / (np.pi * d * d / 4.0)), 1, max_cells))
    params = dict(
        diameter_sd=float(rng.uniform(0.05, 0.35)),
        elongation=(1.0, float(rng.uniform(1.05, 2.2))),
        brightness_sd=float(rng.uniform(0.1, 0.6)),
        overlap=float(rng.uniform(0.0, 0.3)),
        clumping=float(rng.uniform(0.0, 0.6)),
        softness=float(rng.uniform(0.5, 1.0 + d / 15.0)),
        texture=float(rng.uniform(0.0, 0.7)),
        blur=float(rng.uniform(0.0, max(0.5, d / 8.0))),
        background=float(rng.uniform(0.0, 0.3)),
        gradient=float(rng.uniform(0.0, 0.3)),
        photons=float(np.exp(rng.uniform(np.log(5.0), np.log(3000.0)))),
        read_noise=float(rng.uniform(0.0, 4.0)),
    )
    base = synthetic_cells(
        (h, w), n, d, int(rng.integers(0, 2**31 - 1)), dtype="float32", dark=0.0, **params
    )
    img = base.image.astype(np.float64)
    # broad bumps of uneven background (cytoplasm glow, vignetting, out-of-focus haze)
    bumps = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.6 else 0.0
    if bumps > 0:
        yy = np.linspace(-0.5, 0.5, h)[:, None]
        xx = np.linspace(-0.5, 0.5, w)[None, :]
        field = np.zeros((h, w))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(-0.6, 0.6, 2)
            r = rng.uniform(0.15, 0.7)
            field += rng.uniform(0.3, 1.0) * np.exp(
                -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)
            )
        img += bumps * field / max(field.max(), 1e-12)
    return _recorded(
        base, img, rng, (12.0, 250.0), params, "synthetic_varied", seed, coverage=cov, bumps=bumps
    )


def _recorded(
    base: Sample,
    img: np.ndarray,
    rng: np.random.Generator,
    grey8: tuple[float, float],
    params: dict,
    generator: str,
    seed: int | None,
    **drawn: float,
) -> Sample:
    """``img`` (the nuclei of ``base`` with whatever was added to them) through
    :func:`_camera` (8-bit: a nucleus at ``grey8`` grey levels, offset 0-20), as a
    :class:`Sample` with ``base``'s dots and labels and a ``meta`` of ``base``'s, the
    generator's name and seed, the ``drawn`` values, the camera and the cell ``params``."""
    image, camera, level, offset = _camera(img, rng, grey8=grey8, offset8=20.0)
    meta = {
        **base.meta,
        "generator": generator,
        "seed": seed,
        **drawn,
        "camera": camera,
        "level": level,
        "offset": offset,
        **{k: v for k, v in params.items() if k not in ("elongation",)},
        "elongation": list(params["elongation"]),
    }
    name = f"{generator.removeprefix('synthetic_')}-seed{seed}"
    return Sample(image=image, dots=base.dots, labels=base.labels, name=name, meta=meta)


def synthetic_crowded(
    shape: Sequence[int] = (256, 256),
    seed: int | None = 0,
    *,
    diameter: float | tuple[float, float] = (6.0, 24.0),
    coverage: tuple[float, float] = (0.2, 0.7),
    overlap: tuple[float, float] = (0.3, 0.8),
    max_cells: int = 1500,
) -> Sample:
    """Crowded cells that overlap in the image: a dense culture at low magnification, cells
    piled up in a thick sample seen in projection, or the VGG synthetic-cells benchmark.

    :func:`synthetic_varied` keeps neighbours apart (centres at least 0.7 diameters apart, at
    most 45 % of the image covered), as nuclei in a monolayer are; here the summed cell area is
    ``coverage`` (uniform) of the image, so that with centres only ``1 - overlap`` diameters
    apart (uniform in ``overlap``; relaxed where the image is full) many cells lie partly on top
    of one another, in chains and clumps (clumping 0-0.8). Their light adds up; half of the
    images then compress the bright end (``c tanh(x / c)``, ``c`` 0.6-1.5 of a cell's
    brightness: a saturating stain or camera), so that an overlap is no brighter than a cell
    and only the outline tells two cells from one. Blur up to a fifth of the diameter (out of
    focus), the uneven background, noise and 8- or 16-bit camera of :func:`synthetic_varied`.
    ``dots`` holds every centre (exact count); ``labels`` gives each pixel to the cell whose
    centre is "deepest" (see the module docstring), so a cell mostly covered by others keeps a
    small label: ``meta["diameter"]`` is the drawn diameter, which ``labels`` underestimate.
    """
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in shape)
    d = _draw_diameter(rng, diameter, cap=min(h, w) / 2.5)
    if not (0.0 < coverage[0] <= coverage[1]):
        raise InputError(f"coverage must be a range (lo, hi) with 0 < lo <= hi, got {coverage}")
    if not (0.0 <= overlap[0] <= overlap[1] < 1.0):
        raise InputError(f"overlap must be a range (lo, hi) within [0, 1), got {overlap}")
    cov = float(rng.uniform(*coverage))
    n = int(np.clip(round(cov * h * w / (np.pi * d * d / 4.0)), 1, max_cells))
    n = min(n, h * w // 8)
    params = dict(
        diameter_sd=float(rng.uniform(0.05, 0.25)),
        elongation=(1.0, float(rng.uniform(1.0, 1.6))),
        brightness_sd=float(rng.uniform(0.1, 0.4)),
        overlap=float(rng.uniform(*overlap)),
        clumping=float(rng.uniform(0.0, 0.8)),
        softness=float(rng.uniform(0.5, 1.0 + d / 8.0)),
        texture=float(rng.uniform(0.0, 0.3)),
        blur=float(rng.uniform(0.3, max(0.6, d / 5.0))),
        background=float(rng.uniform(0.0, 0.3)),
        gradient=float(rng.uniform(0.0, 0.3)),
        photons=float(np.exp(rng.uniform(np.log(10.0), np.log(3000.0)))),
        read_noise=float(rng.uniform(0.0, 4.0)),
    )
    base = synthetic_cells(
        (h, w), n, d, int(rng.integers(0, 2**31 - 1)), dtype="float32", dark=0.0, **params
    )
    img = base.image.astype(np.float64)
    compress = float(rng.uniform(0.6, 1.5)) if rng.random() < 0.5 else 0.0
    if compress > 0:
        floor = float(np.percentile(img, 1.0))
        img = floor + compress * np.tanh((img - floor) / compress)
    return _recorded(
        base,
        img,
        rng,
        (20.0, 250.0),
        params,
        "synthetic_crowded",
        seed,
        coverage=cov,
        compress=compress,
    )


def _colony_region(
    shape: tuple[int, int],
    n: int,
    diameter: float | tuple[float, float],
    nucleus: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Up to ``n`` round colonies of one drawn diameter, each inside the image and at least
    1.15 diameters from the others' centres (rejection sampling); the mask and the diameter."""
    h, w = shape
    cd = _draw_diameter(rng, diameter)
    if cd < 2 * nucleus or cd > min(h, w) - 2:
        raise InputError(
            f"colony diameter {cd:.3g} px must be at least twice the nuclei ({nucleus:.3g} px) "
            f"and fit in {h} x {w}"
        )
    centres: list[tuple[float, float]] = []
    for _ in range(200 * n):
        if len(centres) == n:
            break
        cy, cx = rng.uniform(cd / 2, h - cd / 2), rng.uniform(cd / 2, w - cd / 2)
        if all((cy - y) ** 2 + (cx - x) ** 2 >= (1.15 * cd) ** 2 for y, x in centres):
            centres.append((cy, cx))
    yy, xx = np.ogrid[:h, :w]
    region = np.zeros((h, w), dtype=bool)
    for cy, cx in centres:
        region |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (cd / 2) ** 2
    return region, float(cd)


def synthetic_tissue(
    shape: Sequence[int] = (384, 384),
    seed: int | None = 0,
    *,
    diameter: float | tuple[float, float] = (5.0, 24.0),
    colonies: int = 0,
    colony_diameter: float | tuple[float, float] = (60.0, 160.0),
) -> Sample:
    """A tissue, embryo or organoid: a large region packed with small touching nuclei.

    Such images (e.g. DSB 2018's 603 x 1272 tissue sections) are where a size estimate is
    easiest to fool: the region is one large bright shape with a grainy inside, as a few large
    textured nuclei are. The region is a smoothed random field thresholded to cover 25-85 % of
    the image (a broad blob, possibly cut by the edges); inside it nuclei of one diameter
    (log-uniform in ``diameter``, or fixed; 15 % size spread, elongation up to 1.4) sit on a
    jittered hexagonal grid at a spacing of 0.95-1.35 diameters, i.e. touching or nearly so, each
    with its own brightness; the region's brightness falls off inwards or not at all (deeper
    nuclei dimmer), and an out-of-focus haze of the nuclei plus a dim fill lies between them.
    Then optical blur, shot and read noise and an 8- or 16-bit camera as
    :func:`synthetic_varied` (8-bit: a nucleus at 20-250 grey levels, offset 0-15).
    ``labels`` holds every nucleus (exact), ``dots`` their centres.

    ``colonies=k``: the region is instead ``k`` round colonies (spheroids, small organoids)
    of one diameter (log-uniform in ``colony_diameter``, or fixed), apart from each other and
    inside the image (fewer when they do not fit): round islands of many nuclei each, which a
    size check must not take for single large nuclei. The default draws are unchanged.
    """
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in shape)
    d = _draw_diameter(rng, diameter)
    if d <= 0 or d > min(h, w) / 4:
        raise InputError(f"nucleus diameter {d:.3g} px does not fit a tissue in {h} x {w}")
    colony_d = None
    if colonies > 0:
        region, colony_d = _colony_region((h, w), int(colonies), colony_diameter, d, rng)
        cover = float(region.mean())
    else:
        # the tissue region: a broad smoothed noise field, thresholded at a drawn coverage
        field = ndi.gaussian_filter(rng.standard_normal((h, w)), min(h, w) / rng.uniform(4.0, 8.0))
        cover = float(rng.uniform(0.25, 0.85))
        region = field > np.quantile(field, 1.0 - cover)
    depth = ndi.distance_transform_edt(region)
    falloff = float(rng.uniform(0.0, 0.7))  # deeper nuclei this much dimmer at the centre
    depth_n = depth / max(float(depth.max()), 1e-9)
    spacing = d * float(rng.uniform(0.95, 1.35))
    rows = np.arange(spacing / 2, h, spacing * np.sqrt(3) / 2)
    centres = []
    for i, y in enumerate(rows):
        for x in np.arange(spacing / 2 + (i % 2) * spacing / 2, w, spacing):
            centres.append((y, x))
    c = np.asarray(centres) + rng.normal(0.0, 0.12 * spacing, (len(centres), 2))
    inside = (c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)
    c = c[inside]
    keep = region[c[:, 0].astype(int), c[:, 1].astype(int)]
    c = c[keep]
    labels = np.zeros((h, w), dtype=np.int32)
    nuclei = np.zeros((h, w), dtype=np.float64)
    elong = float(rng.uniform(1.0, 1.4))
    dots = []
    for cy, cx in c[rng.permutation(len(c))]:
        r = 0.5 * d * float(np.clip(rng.normal(1.0, 0.15), 0.6, 1.5))
        a, b = r * np.sqrt(elong), r / np.sqrt(elong)
        th = rng.uniform(0, np.pi)
        y0, y1 = int(max(0, cy - a - 1)), int(min(h, cy + a + 2))
        x0, x1 = int(max(0, cx - a - 1)), int(min(w, cx + a + 2))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)
        v = -(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)
        disc = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        free = disc & (labels[y0:y1, x0:x1] == 0)
        if free.sum() < 0.5 * disc.sum():
            continue
        dots.append((cy, cx))
        labels[y0:y1, x0:x1][free] = len(dots)
        depth_here = depth_n[int(cy), int(cx)]
        nuclei[y0:y1, x0:x1][free] = float(rng.uniform(0.4, 1.0)) * (1.0 - falloff * depth_here)
    haze = ndi.gaussian_filter(nuclei, d * float(rng.uniform(0.5, 1.5))) * rng.uniform(0.1, 0.6)
    fill = ndi.gaussian_filter(region.astype(np.float64), d) * rng.uniform(0.0, 0.25)
    img = nuclei + haze + fill
    img = ndi.gaussian_filter(img, float(rng.uniform(0.3, max(0.5, d / 6.0))))
    photons = float(np.exp(rng.uniform(np.log(10.0), np.log(3000.0))))
    img = rng.poisson(np.clip(img, 0, None) * photons) / photons
    img = img + rng.normal(0.0, float(rng.uniform(0.0, 3.0)) / photons, img.shape)
    image, camera, level, offset = _camera(img, rng, grey8=(20.0, 250.0), offset8=15.0)
    meta = {
        "generator": "synthetic_tissue",
        "seed": seed,
        "diameter": d,
        "spacing": spacing,
        "cover": cover,
        "colonies": int(colonies),
        "colony_diameter": colony_d,
        "falloff": falloff,
        "camera": camera,
        "level": level,
        "n_cells": len(dots),
    }
    return Sample(
        image=image,
        dots=np.asarray(dots, dtype=np.float64).reshape(-1, 2),
        labels=labels,
        name=f"tissue-seed{seed}",
        meta=meta,
    )
