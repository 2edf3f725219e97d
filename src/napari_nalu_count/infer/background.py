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
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.errors import InputError

#: the opening's width in object diameters that ``background=True`` means
DEFAULT_FACTOR = 3.0


def parse_background(value: Any) -> float | None:
    """``background=`` of ``count`` / ``segment``: None / False / 0 -> None (off); True ->
    :data:`DEFAULT_FACTOR`; a number of at least 2 -> that width in object diameters."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_FACTOR
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "off", "false", "no"):
            return None
        if text in ("on", "true", "yes", "flatten"):
            return DEFAULT_FACTOR
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"background={value!r} is not understood: use True, False, or the opening's "
                "width in object diameters (a number of at least 2, e.g. 3)"
            ) from None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"background must be True, False, None or a number of object diameters, got "
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
