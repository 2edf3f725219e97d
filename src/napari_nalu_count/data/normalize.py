"""Robust intensity normalisation (the model card's ``{"method": "percentile", ...}``)."""

from __future__ import annotations

import numpy as np

from napari_nalu_count.errors import InputError

__all__ = ["cast_like", "normalization_range", "percentile_normalize", "percentiles"]

#: integer images with at least this many pixels get their percentiles from a histogram
HISTOGRAM_MIN_SIZE = 1 << 14

#: sparse foreground (see :func:`normalization_range`): a value is above the noise when it is
#: more than SPARSE_SIGMAS noise standard deviations over the median; the objects' top is the
#: SPARSE_TOP-th percentile of those values, used when it is at least SPARSE_GAP times as far
#: above the median as the high percentile
SPARSE_SIGMAS = 6.0
SPARSE_GAP = 4.0
SPARSE_TOP = 99.0
#: the 1st percentile of a normal distribution is this many standard deviations below its median
_Z1 = 2.3263


def percentiles(arr: np.ndarray, q: list[float] | tuple[float, ...]) -> list[float]:
    """``np.percentile(arr, q)`` (linear interpolation) as floats, the same values.

    uint8 / uint16 arrays of at least :data:`HISTOGRAM_MIN_SIZE` pixels are not partitioned:
    the order statistics come from a histogram (``np.bincount``, one pass, ~6x faster on a
    2048 x 2048 uint16 plane) and are interpolated as NumPy does.
    """
    a = np.asarray(arr)
    if a.dtype not in (np.uint8, np.uint16) or a.size < HISTOGRAM_MIN_SIZE:
        return [float(v) for v in np.percentile(a, q)]
    cum = np.cumsum(np.bincount(a.ravel(), minlength=1), dtype=np.int64)
    n = int(cum[-1])
    out = []
    for p in q:
        virtual = np.true_divide(float(p), 100.0) * (n - 1)
        lo = int(np.floor(virtual))
        hi = min(lo + 1, n - 1)
        t = float(virtual - lo)
        # the value of rank k (0-based) is the first bin whose cumulative count exceeds k
        a_lo = float(np.searchsorted(cum, lo, side="right"))
        a_hi = float(np.searchsorted(cum, hi, side="right"))
        diff = a_hi - a_lo
        # NumPy's _lerp: a + d t, or b - d (1 - t) from t >= 0.5 on (the same rounding)
        out.append(a_hi - diff * (1.0 - t) if t >= 0.5 else a_lo + diff * t)
    return out


def normalization_range(
    arr: np.ndarray, low: float = 1.0, high: float = 99.8, *, sparse: bool = True
) -> tuple[float, float]:
    """``(lo, hi)``: the ``low``-th and ``high``-th percentiles of ``arr``, with ``hi`` raised
    for a sparse foreground when ``sparse`` is true.

    When the objects of an image cover less than ``100 - high`` percent of it (a few nuclei
    in a large field: 0.2 % of the pixels at the default 99.8), the high percentile is a
    background value: normalising to it would stretch the background noise over ``[0, 1]``
    and put the objects tens of units above it, which a counting network reads as many cells
    (or a negative count). Such an image is recognised by two facts: the high percentile is
    within :data:`SPARSE_SIGMAS` noise standard deviations of the median (the noise estimated
    from the darker half, ``(p50 - p1) / 2.326``, at least one grey level for integer images),
    and the pixels above that noise level reach at least :data:`SPARSE_GAP` times as far above
    the median as the high percentile. ``hi`` is then the :data:`SPARSE_TOP`-th percentile of
    those bright pixels (the objects' own top, as the high percentile is for a typical image).
    None of the 1,114 images of BBBC039, DSB 2018, Aitslab and VGG (train and val / test) nor
    240 synthetic training images meets both conditions: for them the range is the plain
    percentiles.
    """
    a = np.asarray(arr)
    if not sparse:
        lo, hi = percentiles(a, [low, high])
        return lo, hi
    lo, hi, p1, mid = percentiles(a, [low, high, 1.0, 50.0])
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        floor = 1.0
    else:
        floor = 1e-7 * max(abs(mid), abs(hi), abs(lo))
    noise = max((mid - p1) / _Z1, floor)
    level = mid + SPARSE_SIGMAS * noise
    if hi - mid <= SPARSE_SIGMAS * noise:
        bright = a[a > level]
        if bright.size:
            top = float(np.percentile(bright, SPARSE_TOP))
            if top - mid >= SPARSE_GAP * (hi - mid):
                hi = top
    return lo, hi


def percentile_normalize(
    image: object,
    low: float = 1.0,
    high: float = 99.8,
    *,
    clip: bool = False,
    eps: float = 1e-20,
    sparse: bool = False,
) -> np.ndarray:
    """Map the ``low``-th percentile to 0 and the ``high``-th to 1.

    Parameters
    ----------
    image
        Array of any shape and a real dtype (bool, uint8, uint16, int, float). Percentiles are
        taken over all its values.
    low, high
        Percentiles in ``[0, 100]`` with ``low < high``.
    clip
        Clip the result to ``[0, 1]`` (off by default: values beyond the percentiles keep their
        relative brightness, which counting networks rely on).
    eps
        A percentile range at most this wide counts as constant.
    sparse
        Raise the high reference for images whose objects cover less than ``100 - high``
        percent of the pixels (see :func:`normalization_range`; the engine, the size estimator
        and training use it); images with a typical foreground are unaffected.

    Returns
    -------
    float32 array of the same shape, roughly in ``[0, 1]``. A constant image (or one whose two
    percentiles coincide) gives zeros instead of dividing by zero.

    Raises
    ------
    InputError
        For NaN or infinite values, an empty or non-numeric image, or bad percentiles.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(
            f"image must have a real numeric dtype (uint8, uint16, float, ...), got {arr.dtype}"
        )
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    low, high = float(low), float(high)
    if not (0.0 <= low < high <= 100.0):
        raise InputError(
            f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}"
        )
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            n_inf = int(arr.size - np.count_nonzero(finite) - n_nan)
            raise InputError(
                f"image contains {n_nan} NaN and {n_inf} infinite value(s); "
                "replace or mask them before normalising"
            )
    lo, hi = normalization_range(arr, low, high, sparse=sparse)
    if not hi - lo > eps:
        return np.zeros(arr.shape, dtype=np.float32)
    # float64 input is scaled in float64 (huge ranges would overflow float32 before scaling).
    work_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    if work_dtype is np.float32:
        # in place on one float32 copy: the same arithmetic as (x - lo) * (1 / span)
        out = arr.astype(np.float32, copy=True)
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
    else:
        work = arr.astype(work_dtype, copy=False)
        out = ((work - work_dtype(lo)) * work_dtype(1.0 / (hi - lo))).astype(np.float32)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def cast_like(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float image cast to ``dtype``: integers rounded and clipped to the dtype's range."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return np.asarray(image, dtype=dtype)
