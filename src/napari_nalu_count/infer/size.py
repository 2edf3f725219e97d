"""Fast object-size estimate: scale-space features and a small learned regressor.

``estimate_diameter(plane)`` returns the typical nucleus diameter (pixels) of a fluorescence
image in a few tens of milliseconds, for any size from about 5 to 150 px:

1. the plane is percentile-normalised (1 / 99.8) and a window of at most ``crop`` x ``crop``
   pixels is taken (of five candidate windows, the one with the most contrast);
2. a pyramid (each level the previous one filtered by a 3-tap binomial and decimated by 2)
   gives the scale-normalised Laplacian-of-Gaussian response ``-s^2 LoG_s`` at 18 log-spaced
   scales (3 per octave, effective sigma 1.2 to ~60 px); a disc of diameter ``d`` responds
   most strongly at ``sigma = d / (2 sqrt 2)``. Each octave is read on at most 256 x 256
   samples of its level (the fine octaves, where small objects are plentiful, cost the most;
   the coarse ones still see the whole window). Per scale three statistics (99.5th and 95th
   percentile, mean positive response), each divided by its maximum over the scales and
   logged, form a 54-number scale profile that does not depend on brightness (each octave's
   three responses come from one FFT of the mirror-padded level, and the two percentiles from
   two partial partitions: the same numbers as SciPy's ``gaussian_laplace`` and
   ``np.percentile`` to float32 rounding). The pyramid filter and the per-octave crop are the
   regressor's (``info["profile"]``, see :func:`scale_profile`).
   Regressors trained with ``info["profile"]["mask"]`` append the foreground-shape features of
   :func:`mask_features` (20 numbers from pyramid levels 2-5): the foreground's islands and
   gaps at coarse scales, which tell a tissue of small touching nuclei from a few large
   textured nuclei where the LoG profile alone cannot;
3. a 2-layer MLP (:class:`SizeRegressor`, weights in ``size_regressor.json`` beside this
   module, trained by ``scripts/train_size_estimator.py`` on the train splits of BBBC039, DSB
   2018 and Aitslab plus synthetic nuclei, each rescaled to diameters 5-130 px) maps the profile
   to ``log(diameter)``.

The profile is what a single LoG blob search (:func:`~.scale.estimate_diameter_log`) reduces to
one arg-max; learning the whole profile copes with chromatin texture (which makes a LoG search
answer the size of the texture), clumps and uneven background. Counting models with a size head
refine this estimate with their own output (see :mod:`.engine`).
"""

from __future__ import annotations

import json
import math
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.special import erf

from napari_nalu_count.errors import ModelFileError

#: octaves and scales per octave of the pyramid; first sigma (pixels)
N_OCTAVES, PER_OCTAVE, SIGMA0 = 6, 3, 1.2
N_SCALES = N_OCTAVES * PER_OCTAVE
#: estimates are clipped to this range (pixels)
MIN_DIAMETER, MAX_DIAMETER = 3.0, 250.0
REGRESSOR_FILE = Path(__file__).with_name("size_regressor.json")
#: the scale profile's pyramid filters (see :func:`_decimate`)
PYRAMIDS = ("gauss", "binomial")

_lock = threading.Lock()


#: the estimator's normalisation: percentiles (as model cards' default) and the clip range
NORM_PERCENTILES = (1.0, 99.8)
CLIP = (-0.2, 1.5)


def _normalise(plane: np.ndarray) -> np.ndarray | None:
    """The plane percentile-normalised (not yet clipped) as the engine normalises it for a
    card of these percentiles (bright artefacts and hot pixels included), or None when it
    has no contrast."""
    from napari_nalu_count.infer.engine import _normalize

    low, high = NORM_PERCENTILES
    card = {"normalization": {"method": "percentile", "low": low, "high": high}}
    x = _normalize(np.asarray(plane), card)
    if not np.any(x):
        return None
    return x


def window_slices(
    x: np.ndarray, crop: int, clip: tuple[float, float] | None = None
) -> tuple[slice, slice]:
    """Where :func:`choose_window` looks: the ``(rows, cols)`` slices of the ``crop x crop``
    window (of the centre and four off-centre ones) with the most contrast (standard deviation
    of a 4x block-mean image, judged on ``np.clip(x, *clip)`` when ``clip`` is given); the
    whole plane if it is smaller."""
    h, w = x.shape
    if h <= crop and w <= crop:
        return slice(0, h), slice(0, w)
    ch, cw = min(h, crop), min(w, crop)
    starts = {((h - ch) // 2, (w - cw) // 2)}
    for fy in (0.2, 0.8):
        for fx in (0.2, 0.8):
            starts.add((int((h - ch) * fy), int((w - cw) * fx)))
    best, best_sd = (slice(0, ch), slice(0, cw)), -1.0
    for y0, x0 in sorted(starts):
        sub = x[y0 : y0 + ch : 4, x0 : x0 + cw : 4]
        sd = float((sub if clip is None else np.clip(sub, *clip)).std())
        if sd > best_sd:
            best, best_sd = (slice(y0, y0 + ch), slice(x0, x0 + cw)), sd
    return best


def choose_window(x: np.ndarray, crop: int, clip: tuple[float, float] | None = None) -> np.ndarray:
    """The ``crop x crop`` window of :func:`window_slices` (the whole plane if smaller).

    ``clip=(lo, hi)``: judge and return the windows of ``np.clip(x, lo, hi)`` without clipping
    the whole plane (the same window and values as clipping first)."""
    win = x[window_slices(x, crop, clip)]
    return win if clip is None else np.clip(win, *clip)


def _kernels(sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The sampled, normalised Gaussian of ``sigma`` and its second derivative on
    ``-radius..radius`` (what SciPy's ``gaussian_filter1d`` uses with orders 0 and 2 and its
    default truncation of 4 sigma, padded with zeros to ``radius``)."""
    own = int(4.0 * sigma + 0.5)
    x = np.arange(-own, own + 1, dtype=np.float64)
    g = np.exp(-0.5 * x * x / (sigma * sigma))
    g /= g.sum()
    d2 = (x * x / sigma**4 - 1.0 / sigma**2) * g
    pad = radius - own
    return np.pad(g, pad), np.pad(d2, pad)


@lru_cache(maxsize=8)
def _log_transfer(shape: tuple[int, int], sigmas: tuple[float, ...], radius: int) -> np.ndarray:
    """Real-FFT transfer functions ``(S, H, W // 2 + 1)`` of ``-s^2 LoG_s`` on ``shape``.

    The 2-D kernel ``d2 (x) g + g (x) d2`` is separable, so its spectrum is built from 1-D
    spectra of the kernels (centred on index 0): ``D2_y G_x + G_y D2_x``. At most 8 shapes
    are kept (about 5 MB each for the estimator's 640 px window)."""
    from scipy import fft

    h, w = shape

    def spectra(k: np.ndarray, n: int, real: bool) -> np.ndarray:
        pad = np.zeros(n, dtype=np.float64)
        pad[: k.size] = k
        pad = np.roll(pad, -radius)  # centre the kernel on index 0
        return (fft.rfft(pad) if real else fft.fft(pad)).astype(np.complex64)

    out = []
    for s in sigmas:
        g, d2 = _kernels(s, radius)
        gy, d2y = spectra(g, h, False), spectra(d2, h, False)
        gx, d2x = spectra(g, w, True), spectra(d2, w, True)
        t = np.outer(d2y, gx)
        t += np.outer(gy, d2x)
        t *= np.float32(-(s * s))
        out.append(t)
    return np.stack(out)


def _log_responses(level: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """``-s^2 LoG_s`` of ``level`` for each ``s`` in ``sigmas``, shape ``(len(sigmas), H, W)``.

    The same linear filter as ``ndi.gaussian_laplace(level, s, mode="reflect")`` (the sum of
    the second derivative along each axis, smoothed along the other, with SciPy's sampled
    kernels), computed for all scales from one FFT of the plane mirror-padded by the largest
    kernel radius: inside that border the circular convolution is the linear one. Levels
    smaller than the radius are padded by repeated mirroring, which is what SciPy's
    ``"reflect"`` mode does there too. Equal to SciPy's up to float32 rounding (one thread:
    threaded FFTs were slower on 256-640 px)."""
    from scipy import fft

    radius = max(int(4.0 * s + 0.5) for s in sigmas)
    padded = np.pad(np.asarray(level, dtype=np.float32), radius, mode="symmetric")
    shape = tuple(fft.next_fast_len(n, real=True) for n in padded.shape)
    spec = fft.rfft2(padded, s=shape)
    tf = _log_transfer(shape, tuple(sigmas), radius)  # type: ignore[arg-type]
    h, w = level.shape
    out = np.empty((len(sigmas), h, w), dtype=np.float32)
    for k in range(len(sigmas)):
        # one inverse transform per scale: SciPy's batched irfft2 over a leading axis took
        # 4-5x as long as these three on the estimator's 288 px spectra
        out[k] = fft.irfft2(spec * tf[k], s=shape)[radius : radius + h, radius : radius + w]
    return out


#: arrays of at least this many values are pre-filtered by :func:`_upper_percentiles`
PREFILTER_MIN = 1 << 16


def _upper_percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (linear interpolation) for high ``qs``, faster: one
    partition at the lowest rank, then a second one of only the values above it.

    Large arrays are first cut to the values at or above a threshold read from a 1-in-16
    subsample a little below the lowest rank: when at least ``n - k0`` values pass, the
    ranks from ``k0`` up are exactly those of the passing values (all smaller values are
    below the threshold), so the result is unchanged; otherwise the whole array is used."""
    v = np.ravel(values)
    n = v.size
    pos = [q / 100.0 * (n - 1) for q in qs]
    low = [int(math.floor(p)) for p in pos]
    k0 = min(low)
    if n >= PREFILTER_MIN:
        sub = v[::16]
        r = int(sub.size * max(0.0, k0 / n - 0.01))
        t = np.partition(sub, r)[r]
        kept = v[v >= t]
        if kept.size >= n - k0:
            # ranks shift by the values left out, all smaller than every kept one
            off = n - kept.size
            top = np.partition(kept, k0 - off)[k0 - off :]
            return _interpolate(top, pos, low, k0)
    top = np.partition(v, k0)[k0:]
    return _interpolate(top, pos, low, k0)


def _interpolate(top: np.ndarray, pos: list[float], low: list[int], k0: int) -> list[float]:
    """The percentiles at ``pos`` from ``top``: the sorted-rank values ``k0..`` of the array
    (partitioned at ``k0``, the rest in any order), NumPy's linear interpolation."""
    ranks = sorted({min(i - k0 + d, top.size - 1) for i in low for d in (0, 1)})
    top = np.partition(top, ranks)
    out = []
    for p, i in zip(pos, low, strict=True):
        a = float(top[i - k0])
        b = float(top[min(i - k0 + 1, top.size - 1)])
        t = p - i  # NumPy's lerp: from the nearer end
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t))
    return out


def _stats(resp: np.ndarray) -> tuple[float, float, float]:
    """(99.5th percentile, 95th percentile, mean positive) of one scale's response."""
    p95, p995 = _upper_percentiles(resp, (95.0, 99.5))
    return p995, p95, float(np.maximum(resp, 0).mean())


def _decimate(level: np.ndarray, pyramid: str = "gauss") -> np.ndarray:
    """The next pyramid level: every second row and column of ``level`` low-pass filtered.

    ``"gauss"``: ``ndi.gaussian_filter(level, 1.0, mode="reflect")[::2, ::2]``, the same
    numbers with half the second pass (SciPy filters axis 0 then axis 1, so the rows the
    decimation drops are dropped before the second pass). ``"binomial"``: the 3-tap binomial
    ``[1, 2, 1] / 4`` along each axis at the kept samples only (mirror edges), about 6x faster
    on the estimator's 640 px window."""
    if pyramid == "gauss":
        rows = ndi.gaussian_filter1d(level, 1.0, axis=0, mode="reflect")[::2]
        return ndi.gaussian_filter1d(rows, 1.0, axis=1, mode="reflect")[:, ::2]
    if pyramid not in PYRAMIDS:
        raise ValueError(f"pyramid must be one of {PYRAMIDS}, got {pyramid!r}")
    h, w = level.shape
    # mirror by one sample ("reflect" in SciPy's sense: the edge sample repeated)
    p = np.pad(level, ((1, 1 + h % 2), (1, 1 + w % 2)), mode="symmetric")
    q = np.float32(0.25)
    rows = (p[0:-2:2] + 2 * p[1:-1:2] + p[2::2]) * q
    return (rows[:, 0:-2:2] + 2 * rows[:, 1:-1:2] + rows[:, 2::2]) * q


#: pyramid levels (octaves) the foreground-shape features of :func:`mask_features` are read on
MASK_LEVELS = (2, 3, 4, 5)
#: features per level (see :func:`mask_features`)
MASK_PER_LEVEL = 5


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (a histogram of ``bins`` bins over their range)."""
    v = np.ravel(values)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def mask_features(levels: list[np.ndarray]) -> np.ndarray:
    """Foreground-shape features of a window's pyramid levels (``levels[k]`` decimated
    ``2**k`` times), :data:`MASK_PER_LEVEL` per level of :data:`MASK_LEVELS`.

    The scale profile sees blobs of every size; it cannot tell a tissue of many small
    touching nuclei from a few large nuclei with a grainy chromatin texture (both answer at
    the small scale). What tells them apart is the shape of the foreground at coarse levels,
    where the texture is smoothed away: large textured nuclei become round islands of their
    own size on a dark background, a tissue one large irregular region. Per level, on the
    mask ``level > t`` (``t``: Otsu's threshold of the first level, one threshold for all):
    the foreground fraction, then, each as ``log(1 + value)``: the area-weighted median
    equivalent diameter of the mask's connected components and the median of their inscribed
    diameters (twice each one's largest distance to the background), both in window pixels;
    the median distance of a background pixel to the foreground, times two (window pixels);
    and the number of components per 10^4 window pixels. A level without foreground or
    without background gives its fraction and zeros; levels the window is too small for
    repeat the last one's numbers."""
    t = _otsu(levels[MASK_LEVELS[0]])
    out: list[float] = []
    for k in MASK_LEVELS:
        if k >= len(levels):
            out.extend(out[-MASK_PER_LEVEL:] if out else [0.0] * MASK_PER_LEVEL)
            continue
        lev = levels[k]
        f = float(2**k)
        m = lev > t
        frac = float(m.mean())
        if frac <= 0.0 or frac >= 1.0:
            out.extend([frac, 0.0, 0.0, 0.0, 0.0])
            continue
        lab, n = ndi.label(m)
        areas = np.bincount(lab.ravel())[1:].astype(np.float64)
        eq = np.sqrt(4.0 * areas / math.pi)
        order = np.argsort(eq)
        cw = np.cumsum(areas[order])
        eq_med = float(eq[order][int(np.searchsorted(cw, 0.5 * cw[-1]))])
        dist = ndi.distance_transform_edt(m)
        inscribed = np.zeros(n + 1, dtype=np.float64)
        np.maximum.at(inscribed, lab.ravel(), dist.ravel())
        inscribed = inscribed[1:]
        gaps = ndi.distance_transform_edt(~m)[~m]
        out.extend(
            [
                frac,
                math.log(1.0 + f * eq_med),
                math.log(1.0 + 2.0 * f * float(np.median(inscribed))),
                math.log(1.0 + 2.0 * f * float(np.median(gaps))),
                math.log(1.0 + 1e4 * n / (lev.size * f * f)),
            ]
        )
    return np.asarray(out, dtype=np.float64)


#: :func:`island_diameter`: the hint's size on the grid the islands are measured on (px),
#: the largest side of that grid, and the least roundness of an island taken as one nucleus
ISLAND_GRID_DIAMETER = 16.0
ISLAND_MAX_SIDE = 384
ISLAND_MIN_ROUNDNESS = 0.8


def island_diameter(
    x: np.ndarray,
    hint: float,
    remeasure: float | None = None,
    need: tuple[float, int, float] | None = None,
) -> dict[str, float]:
    """Sizes of the round foreground islands of a plane, a check on a size estimate.

    A nucleus with a grainy chromatin texture looks, to a density network or a blob filter,
    like many small cells; smoothed at its own scale it is one round bright island. ``x`` (a
    normalised ``(H, W)`` plane) is block-averaged so that ``hint`` (a diameter in pixels of
    ``x``, e.g. the estimate under check) spans about :data:`ISLAND_GRID_DIAMETER` samples
    (never more than :data:`ISLAND_MAX_SIDE` samples a side, never upsampled), smoothed by an
    eighth of that, thresholded at Otsu's level, holes filled. An island counts as one
    nucleus when it does not touch the plane's edge, spans at least 5 samples, and is round:
    its inscribed diameter (twice its largest distance to the background) at least
    :data:`ISLAND_MIN_ROUNDNESS` of its equivalent diameter (a touching pair scores ~0.7, a
    tissue region far less).

    Returns ``diameter`` (median equivalent diameter of those islands, pixels of ``x``; NaN
    when there are none), ``islands`` (their number), ``cover`` (their share of the
    foreground's area) and ``samples`` (``diameter`` in samples of the grid: how well the
    islands were resolved).

    ``remeasure``: islands at least this many times ``hint`` are measured again with their
    own diameter as the hint (a grid and a smoothing of their scale: a hint 3x too small
    leaves the grain of some nuclei unsmoothed and splits them).

    ``need=(diameter, count, samples)``: the caller acts only on at least ``count`` round
    islands whose median reaches ``diameter`` (pixels of ``x``) and ``samples`` (samples of
    the grid). Such a median needs at least half of ``count`` (rounded up) islands that large,
    round or not; with fewer candidates the roundness is not measured and the result is that
    of no round island (``islands`` 0): the usual case on plain images, at about half the
    cost. A first pass that ends so is not measured again (a coarser second grid could in
    principle have merged fragments into large islands; on the 370 images of
    ``benchmarks/notes/r18_island_probe.py`` the engine's decision was the same with and
    without ``need``)."""
    return round_islands(x, hint, remeasure, need)[0]


def round_islands(
    x: np.ndarray,
    hint: float,
    remeasure: float | None = None,
    need: tuple[float, int, float] | None = None,
) -> tuple[dict[str, float], np.ndarray | None, int]:
    """:func:`island_diameter`'s numbers, the label image of the round islands it took
    (on its grid; 0 elsewhere; None when there are none) and that grid's block size ``f``:
    sample ``(i, j)`` covers pixels ``[i f, (i + 1) f) x [j f, (j + 1) f)`` of ``x``."""
    out = _islands(x, hint, need)
    if remeasure is not None and out[0]["diameter"] >= remeasure * hint:
        out = _islands(x, out[0]["diameter"], need)
    return out


def _islands(
    x: np.ndarray, hint: float, need: tuple[float, int, float] | None
) -> tuple[dict[str, float], np.ndarray | None, int]:
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape
    f = max(
        1,
        int(math.ceil(hint / ISLAND_GRID_DIAMETER)),
        int(math.ceil(max(h, w) / ISLAND_MAX_SIDE)),
    )
    hh, ww = h // f, w // f
    out = {"diameter": float("nan"), "islands": 0.0, "cover": 0.0, "samples": 0.0}
    if min(hh, ww) < 8:
        return out, None, f
    # block means (sums: the threshold below does not care about the scale)
    g = x[: hh * f, : ww * f].reshape(hh, f, ww * f).sum(axis=1)
    g = g.reshape(hh, ww, f).sum(axis=2)
    g = ndi.gaussian_filter(g, max(0.5, hint / f / 8.0), mode="reflect")
    m = g > _otsu(g)
    # fill holes: background components that do not reach the edge
    bg, nb = ndi.label(~m)
    if nb:
        open_ = np.zeros(nb + 1, dtype=bool)
        for border in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
            open_[border] = True
        m |= ~open_[bg]
    lab, n = ndi.label(m)
    if n == 0:
        return out, None, f
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    eq = np.sqrt(4.0 * areas / math.pi)
    edge = np.zeros(n + 1, dtype=bool)
    for border in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        edge[border] = True
    candidate = (~edge[1:]) & (eq >= 5.0)
    if need is not None:
        least = max(float(need[0]) / f, float(need[2]))
        large = int(np.count_nonzero(candidate & (eq >= least)))
        if large < math.ceil(int(need[1]) / 2):
            return out, None, f
    dist = ndi.distance_transform_edt(m)
    inscribed = np.asarray(ndi.maximum(dist, lab, np.arange(1, n + 1)), dtype=np.float64)
    one = candidate & (2.0 * inscribed >= ISLAND_MIN_ROUNDNESS * eq)
    if not one.any():
        return out, None, f
    out["diameter"] = float(np.median(eq[one])) * f
    out["islands"] = float(one.sum())
    out["cover"] = float(areas[one].sum() / areas.sum())
    out["samples"] = float(np.median(eq[one]))
    keep = np.concatenate([[0], np.where(one, np.arange(1, n + 1), 0)]).astype(np.int32)
    return out, keep[lab], f


def scale_profile(
    x: np.ndarray,
    octave_crop: int | None = None,
    pyramid: str = "gauss",
    mask: bool = False,
) -> np.ndarray:
    """The 54-number scale profile (see the module docstring) of a normalised window.

    Each octave's three LoG responses come from one FFT (:func:`_log_responses`), down to
    the smallest levels (a few samples).

    ``octave_crop``: each octave's responses are read on at most ``octave_crop`` x
    ``octave_crop`` samples of its pyramid level (the sub-window of :func:`window_slices`)
    instead of the whole level: the fine octaves, whose objects are small and plentiful in a
    small window, cost the most, while the coarse octaves (whose levels are already small)
    still see the whole window. A regressor is trained for one setting (its
    ``info["profile"]``), as for ``pyramid`` (see :func:`_decimate`) and ``mask``.

    ``mask=True``: the :func:`mask_features` of the same pyramid's levels (whole, not
    cropped) are appended, 74 numbers in all."""
    level = np.ascontiguousarray(x, dtype=np.float32)
    stats = []
    levels = [level]
    for _octave in range(N_OCTAVES):
        sigmas = [SIGMA0 * 2 ** (j / PER_OCTAVE) for j in range(PER_OCTAVE)]
        read = level
        if octave_crop and max(level.shape) > octave_crop:
            read = np.ascontiguousarray(level[window_slices(level, int(octave_crop))])
        stats.extend(_stats(r) for r in _log_responses(read, sigmas))
        if min(level.shape) < 16:
            break
        level = _decimate(level, pyramid)
        levels.append(level)
    arr = np.maximum(np.asarray(stats, dtype=np.float64), 1e-6)  # (scales, 3)
    if len(arr) < N_SCALES:  # tiny windows: repeat the coarsest scale
        arr = np.vstack([arr, np.repeat(arr[-1:], N_SCALES - len(arr), axis=0)])
    arr = np.log(arr / arr.max(axis=0, keepdims=True))
    profile = arr.T.reshape(-1).astype(np.float64)  # p99.5 x 18, p95 x 18, mean x 18
    if mask:
        while len(levels) <= MASK_LEVELS[0]:
            levels.append(_decimate(levels[-1], pyramid))
        profile = np.concatenate([profile, mask_features(levels)])
    return profile


def _profile_options(info: dict) -> dict:
    """:func:`scale_profile` keywords from a regressor's ``info["profile"]`` (files without one
    were trained on whole-window profiles of a Gaussian pyramid), checked."""
    opts = dict(info.get("profile") or {})
    crop = opts.get("octave_crop")
    if crop is not None and (not isinstance(crop, int) or isinstance(crop, bool) or crop < 16):
        raise ModelFileError(
            f"size regressor info.profile.octave_crop must be an integer >= 16, got {crop!r}"
        )
    pyramid = opts.get("pyramid", "gauss")
    if pyramid not in PYRAMIDS:
        raise ModelFileError(
            f"size regressor info.profile.pyramid must be one of {PYRAMIDS}, got {pyramid!r}"
        )
    mask = opts.get("mask", False)
    if not isinstance(mask, bool):
        raise ModelFileError(
            f"size regressor info.profile.mask must be true or false, got {mask!r}"
        )
    return {"octave_crop": crop, "pyramid": pyramid, "mask": mask}


class SizeRegressor:
    """``log(diameter)`` from a scale profile: standardise, two GELU layers, linear output.

    ``params`` holds one network (``mean``, ``std``, ``layers``) or an ensemble
    (``members``: a list of such dicts), whose outputs are averaged.
    """

    def __init__(self, params: dict) -> None:
        self.info = dict(params.get("info", {})) if isinstance(params, dict) else {}
        _profile_options(self.info)  # a malformed profile fails at load, not mid-count
        self.members: list[SizeRegressor] = []
        if isinstance(params, dict) and "members" in params:
            if not isinstance(params["members"], list) or not params["members"]:
                raise ModelFileError("size regressor 'members' must be a non-empty list")
            self.members = [SizeRegressor(m) for m in params["members"]]
            return
        try:
            self.mean = np.asarray(params["mean"], dtype=np.float64)
            self.std = np.asarray(params["std"], dtype=np.float64)
            self.layers = [
                (np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
                for w, b in params["layers"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"size regressor parameters are malformed: {exc}") from exc
        n = self.mean.shape[0]
        if self.std.shape != (n,) or self.layers[0][0].shape[1] != n:
            raise ModelFileError("size regressor parameters have inconsistent shapes")

    @property
    def profile_options(self) -> dict:
        """The :func:`scale_profile` keywords this regressor was trained for."""
        return _profile_options(self.info)

    def __call__(self, profile: np.ndarray) -> float:
        if self.members:
            return float(np.mean([m(profile) for m in self.members]))
        h = (np.asarray(profile, dtype=np.float64) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = w @ h + b
            if i < len(self.layers) - 1:
                h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        return float(h[0])

    def to_dict(self) -> dict:
        if self.members:
            return {"members": [m.to_dict() for m in self.members], "info": self.info}
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "layers": [[w.tolist(), b.tolist()] for w, b in self.layers],
            "info": self.info,
        }


@lru_cache(maxsize=4)
def load_regressor(path: str | None = None) -> SizeRegressor:
    """The regressor in ``path`` (default: the bundled ``size_regressor.json``), cached."""
    p = Path(path) if path else REGRESSOR_FILE
    with _lock:
        try:
            params = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelFileError(f"size regressor file missing: {p}") from None
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read the size regressor {p}: {exc}") from exc
    return SizeRegressor(params)


def estimate_diameter(
    plane: np.ndarray,
    *,
    crop: int = 640,
    regressor: SizeRegressor | None = None,
    normalized: bool = False,
) -> float | None:
    """Typical object diameter (pixels) of a raw ``(H, W)`` fluorescence plane, or None for a
    plane without contrast. See the module docstring for the method.

    ``normalized=True``: ``plane`` is already ``percentile_normalize(raw, 1, 99.8)`` (as the
    engine has it for models with that card normalisation), which is then not repeated."""
    if normalized:
        x = np.asarray(plane, dtype=np.float32)
        if not np.any(x):
            return None
    else:
        x = _normalise(plane)
        if x is None:
            return None
    reg = regressor or load_regressor()
    win = choose_window(x, int(crop), clip=CLIP)
    profile = scale_profile(win, **reg.profile_options)
    d = math.exp(reg(profile))
    return float(min(max(d, MIN_DIAMETER), MAX_DIAMETER))
