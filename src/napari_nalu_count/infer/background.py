"""Uneven background removed on the model grid, where the object size is known.

A smooth background (out-of-focus haze, uneven illumination of the dish, autofluorescence)
lifts the percentile normalisation's zero in part of the field: nuclei there sit on a pedestal
and those elsewhere get less of the normalised range. The counter then misses nuclei (val
images with an added ramp of 0.6x the objects' range: BBBC039 3.7 -> 5.4 %, Aitslab 9.8 ->
16.3 %, bias -6; ``benchmarks/appearance_robustness.py``).

:func:`flatten_background` subtracts an estimate of that background: a grey opening (minimum
then maximum filter) with a square window of ``size`` pixels, a few object diameters wide, so
that it passes under every nucleus and over the gaps between them, smoothed by a mean filter of
the same width. Everything is a local filter of support ``1.5 size`` (minimum, maximum and mean
windows of ``size``, each centred), so a block with a halo at least that wide gives the same
values as the whole plane, and the cost is linear in the pixels (SciPy's 1-D minimum and
maximum filters do not depend on the window length).

``background="auto"`` (the engine's default) flattens only a background that is both strong
and smooth (:func:`assess_background`): the estimated background varies by at least
:data:`AUTO_MIN_AMPLITUDE` of the normalised range, and a cubic surface follows it to within
:data:`AUTO_MAX_RESIDUAL`. Uneven illumination, vignetting and broad haze are such surfaces;
the background of dense tissue is out-of-focus nuclei, which vary from one nucleus to the
next, and flattening it would count them (docs/models.md, "Round 20").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.errors import InputError

#: the opening's width in object diameters that ``background=True`` means
DEFAULT_FACTOR = 3.0

#: ``background="auto"``: flatten when the background is uneven and smooth (see
#: :func:`assess_background`)
AUTO = "auto"
#: the object diameter (pixels) of the coarse grid the background is judged on
AUTO_GRID = 6.0
#: least spread (2nd to 98th percentile, normalised units) of an uneven background
AUTO_MIN_AMPLITUDE = 0.15
#: most that a smooth background departs from its cubic surface (95th percentile, normalised)
AUTO_MAX_RESIDUAL = 0.06
#: the cubic surface is fitted to this many x this many samples of the background
AUTO_SAMPLES = 32
#: the surface's degree (all terms x^i y^j with i + j <= AUTO_DEGREE)
AUTO_DEGREE = 3


def parse_background(value: Any) -> float | str | None:
    """``background=`` of ``count`` / ``segment``: ``"auto"`` -> :data:`AUTO` (flatten where
    :func:`assess_background` finds an uneven, smooth background); None / False / 0 -> None
    (off); True -> :data:`DEFAULT_FACTOR`; a number of at least 2 -> that width in object
    diameters."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_FACTOR
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text in ("", "none", "off", "false", "no"):
            return None
        if text in ("on", "true", "yes", "flatten"):
            return DEFAULT_FACTOR
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"background={value!r} is not understood: use 'auto', True, False, or the "
                "opening's width in object diameters (a number of at least 2, e.g. 3)"
            ) from None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"background must be 'auto', True, False, None or a number of object diameters, "
            "got "
            f"{type(value).__name__}"
        ) from None
    if f == 0:
        return None
    if not (np.isfinite(f) and 2.0 <= f <= 50.0):
        raise InputError(
            f"background={value!r}: the opening must be 2 to 50 object diameters wide "
            "(narrower would cut into the nuclei); use True for the default of 3"
        )
    return f


def background_window(diameter: float, factor: float) -> int:
    """The opening's window (odd, pixels) for objects of ``diameter`` px: ``factor`` diameters."""
    k = int(round(float(factor) * float(diameter)))
    return max(3, k | 1)


def background_support(diameter: float, factor: float) -> int:
    """How far (pixels) the background at one pixel reads: a safe halo for blocks."""
    k = background_window(diameter, factor)
    return 3 * (k // 2) + 1


def estimate_background(plane: np.ndarray, window: int) -> np.ndarray:
    """Smoothed grey opening of ``plane`` with a ``window`` x ``window`` square (float32)."""
    x = np.asarray(plane, dtype=np.float32)
    bg = ndi.minimum_filter(x, size=window, mode="reflect")
    bg = ndi.maximum_filter(bg, size=window, mode="reflect", output=bg)
    return ndi.uniform_filter(bg, size=window, mode="reflect", output=bg)


def flatten_background(plane: np.ndarray, diameter: float, factor: float = 3.0) -> np.ndarray:
    """``plane`` minus its smooth background (see the module docstring), float32, new array.

    ``diameter``: the objects' diameter in pixels of ``plane``; ``factor``: the opening's
    window in diameters (at least 2: a narrower window would cut into the nuclei)."""
    if not factor >= 2.0:
        raise ValueError(f"background factor must be at least 2 diameters, got {factor!r}")
    if not (diameter and diameter > 0):
        raise ValueError(f"object diameter must be positive, got {diameter!r}")
    x = np.asarray(plane, dtype=np.float32)
    out = estimate_background(x, background_window(diameter, factor))
    np.subtract(x, out, out=out)
    return out


@lru_cache(maxsize=16)
def _surface(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sample rows and columns of an ``h x w`` plane (:data:`AUTO_SAMPLES` each, evenly
    spaced), the cubic surface's design matrix on them (coordinates scaled to [-1, 1]) and its
    least-squares projector (``coef = projector @ values``, by the normal equations: 10 terms on
    [-1, 1] are well conditioned)."""
    n = AUTO_SAMPLES
    ys = np.linspace(0, h - 1, n).round().astype(np.intp)
    xs = np.linspace(0, w - 1, n).round().astype(np.intp)
    yy, xx = np.meshgrid(ys / (h - 1) * 2.0 - 1.0, xs / (w - 1) * 2.0 - 1.0, indexing="ij")
    terms = [
        (xx**i * yy**j).ravel() for i in range(AUTO_DEGREE + 1) for j in range(AUTO_DEGREE + 1 - i)
    ]
    design = np.stack(terms, axis=1)
    projector = np.linalg.solve(design.T @ design, design.T)
    for a in (ys, xs, design, projector):
        a.flags.writeable = False
    return ys, xs, design, projector


def assess_background(norm: np.ndarray, diameter: float) -> dict[str, Any]:
    """Whether a normalised plane's background is uneven and smooth enough to flatten.

    ``diameter``: the objects' diameter in pixels of ``norm``. The plane is shrunk so that
    objects are :data:`AUTO_GRID` px (not enlarged), its background estimated as
    :func:`flatten_background` does (an opening :data:`DEFAULT_FACTOR` diameters wide), and a
    cubic surface fitted to :data:`AUTO_SAMPLES` x :data:`AUTO_SAMPLES` samples of it.
    Returns ``amplitude`` (2nd to 98th percentile of the background), ``residual`` (95th
    percentile of its distance to the surface) and ``uneven`` (amplitude at least
    :data:`AUTO_MIN_AMPLITUDE` and residual at most :data:`AUTO_MAX_RESIDUAL`). Planes too small
    to judge (under 3 windows a side on that grid) are not uneven.

    On the val images, judged with their true diameter (docs/models.md, "Round 20";
    ``benchmarks/notes/r20_background_probe.py``): clean BBBC039, DSB and Aitslab images have
    amplitudes of at most 0.128; copies with an added ramp and bump 0.24-0.46 with residuals of
    at most 0.039; DSB's tissue images (background of out-of-focus nuclei) residuals of
    0.08-0.19, with or without that ramp."""
    from napari_nalu_count.infer.scale import rescale_plane, scaled_shape

    if not (diameter and np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"object diameter must be positive, got {diameter!r}")
    x = np.asarray(norm, dtype=np.float32)
    f = min(1.0, AUTO_GRID / float(diameter))
    window = background_window(float(diameter) * f, DEFAULT_FACTOR)
    out: dict[str, Any] = {"amplitude": 0.0, "residual": 0.0, "uneven": False}
    if min(scaled_shape(x.shape, f)) < 3 * window:  # known before resampling
        return out
    plane = rescale_plane(x, f) if f < 1.0 else x
    h, w = plane.shape
    back = estimate_background(plane, window)
    lo, hi = np.percentile(back, [2.0, 98.0])
    ys, xs, design, projector = _surface(h, w)
    values = back[np.ix_(ys, xs)].astype(np.float64).ravel()
    residual = float(np.percentile(np.abs(values - design @ (projector @ values)), 95.0))
    amplitude = float(hi - lo)
    out.update(
        amplitude=amplitude,
        residual=residual,
        uneven=bool(amplitude >= AUTO_MIN_AMPLITUDE and residual <= AUTO_MAX_RESIDUAL),
    )
    return out
