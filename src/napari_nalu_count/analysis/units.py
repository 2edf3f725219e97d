"""Physical units: pixel sizes in micrometres, areas in µm², densities in cells per mm².

A pixel size is ``(py, px)`` micrometres per pixel along Y and X (a scalar means square pixels).
Without one everything stays in pixels, and the column names say so:

==================  =========================  ==================================
quantity            with a pixel size          without (pixels)
==================  =========================  ==================================
area                ``area_um2`` (µm²)         ``area_px`` (pixels)
density             ``density_per_mm2``        ``density_per_mpx`` (cells per 10⁶ px)
length, diameter    ``..._um`` (µm)            ``..._px`` (pixels)
==================  =========================  ==================================
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

AREA_UM2 = "area_um2"
AREA_PX = "area_px"
DENSITY_PER_MM2 = "density_per_mm2"
DENSITY_PER_MPX = "density_per_mpx"

#: µm² per mm²
UM2_PER_MM2 = 1.0e6
#: pixels per "Mpx", the area unit of densities without a pixel size
PX_PER_MPX = 1.0e6


def check_pixel_size(value: Any) -> tuple[float, float] | None:
    """``None`` or ``(py, px)`` µm per pixel from a positive scalar or a ``(y, x)`` pair.

    Raises :class:`InputError` for anything else (zero, negative, NaN, wrong length).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise InputError(f"pixel_size must be a number of micrometres per pixel, got {value!r}")
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        vals = [float(value), float(value)]
    else:
        try:
            vals = [float(v) for v in np.asarray(value, dtype=np.float64).ravel()]
        except (TypeError, ValueError):
            raise InputError(
                f"pixel_size must be a number or a (y, x) pair of micrometres per pixel, got "
                f"{value!r}"
            ) from None
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2:
            raise InputError(
                f"pixel_size must be a number or a (y, x) pair, got {len(vals)} values"
            )
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError(f"pixel_size must be positive micrometres per pixel, got {value!r}")
    return vals[0], vals[1]


def pixel_area_um2(pixel_size: tuple[float, float] | None) -> float | None:
    """Area of one pixel in µm² (None without a pixel size)."""
    if pixel_size is None:
        return None
    return float(pixel_size[0]) * float(pixel_size[1])


def area_column(pixel_size: tuple[float, float] | None) -> str:
    return AREA_UM2 if pixel_size is not None else AREA_PX


def density_column(pixel_size: tuple[float, float] | None) -> str:
    return DENSITY_PER_MM2 if pixel_size is not None else DENSITY_PER_MPX


def length_suffix(pixel_size: tuple[float, float] | None) -> str:
    return "um" if pixel_size is not None else "px"


def unit_note(pixel_size: tuple[float, float] | None) -> str:
    """One line saying which units a table is in."""
    if pixel_size is None:
        return (
            "units: pixels (no pixel size given); areas in pixels, densities in cells per "
            "10^6 pixels"
        )
    py, px = pixel_size
    return (
        f"units: micrometres (pixel size {py:g} x {px:g} um, y x); areas in um^2, densities in "
        "cells per mm^2"
    )


def areas(n_pixels: Any, pixel_size: tuple[float, float] | None) -> np.ndarray:
    """Pixel counts -> areas in µm² (or pixels without a pixel size); float64."""
    n = np.asarray(n_pixels, dtype=np.float64)
    a = pixel_area_um2(pixel_size)
    return n * a if a is not None else n


def densities(counts: Any, n_pixels: Any, pixel_size: tuple[float, float] | None) -> np.ndarray:
    """Cells per mm² (or per 10⁶ pixels) from counts and region sizes in pixels; NaN where the
    region is empty."""
    c = np.asarray(counts, dtype=np.float64)
    n = np.asarray(n_pixels, dtype=np.float64)
    a = pixel_area_um2(pixel_size)
    unit_area = n * a / UM2_PER_MM2 if a is not None else n / PX_PER_MPX
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(unit_area > 0, c / np.where(unit_area > 0, unit_area, 1.0), np.nan)


def lengths(values_px: Any, pixel_size: tuple[float, float] | None) -> np.ndarray:
    """Isotropic lengths (diameters) in pixels -> µm; with non-square pixels the geometric mean
    of the two pixel sizes is used (exact for areas turned into equivalent diameters)."""
    v = np.asarray(values_px, dtype=np.float64)
    if pixel_size is None:
        return v
    return v * math.sqrt(float(pixel_size[0]) * float(pixel_size[1]))
