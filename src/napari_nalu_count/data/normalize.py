"""Robust intensity normalisation (the model card's ``{"method": "percentile", ...}``)."""

from __future__ import annotations

import numpy as np

from napari_nalu_count.errors import InputError

__all__ = [
    "artefact_high",
    "cast_like",
    "normalization_range",
    "percentile_normalize",
    "percentiles",
    "suppress_hot_pixels",
]

#: integer images with at least this many pixels get their percentiles from a histogram
HISTOGRAM_MIN_SIZE = 1 << 14

#: sparse foreground (see :func:`normalization_range`): a value is above the noise when it is
#: more than SPARSE_SIGMAS noise standard deviations over the median; the objects' top is the
#: SPARSE_TOP-th percentile of those values, used when it is at least SPARSE_GAP times as far
#: above the median as the high percentile
SPARSE_SIGMAS = 6.0
SPARSE_GAP = 4.0
SPARSE_TOP = 99.0
#: hot pixels (see :func:`suppress_hot_pixels`): a candidate is above HOT_FLOOR in normalised
#: units (the high percentile's level) and more than HOT_FACTOR times, and HOT_EXCESS
#: above, the brightest of its neighbours that are not candidates; at least HOT_MIN_CLEAR of
#: its 8 neighbours must be below the floor or outside the plane (an isolated pixel, a pair,
#: a streak of three; the corner of a flat bright square has only 5)
HOT_FLOOR = 1.0
HOT_FACTOR = 2.0
HOT_EXCESS = 0.5
HOT_MIN_CLEAR = 6
#: bright artefacts (see :func:`artefact_high`): at most ARTEFACT_K components above half the
#: high level hold ARTEFACT_SHARE of its pixels while ARTEFACT_MANY or more objects stand
#: above ARTEFACT_LOW of it; the analysis runs on a regular subsample at most ARTEFACT_SIDE a side
ARTEFACT_K = 3
ARTEFACT_SHARE = 0.8
ARTEFACT_MANY = 20
ARTEFACT_LOW = 0.1
ARTEFACT_SIDE = 512
#: ... and only when the artefacts are at least ARTEFACT_RATIO times as far above the median as
#: the rest's high percentile, which stands ARTEFACT_SNR noise standard deviations above it
ARTEFACT_RATIO = 3.0
ARTEFACT_SNR = 8.0
#: a small field (fewer than ARTEFACT_MANY objects): the rest must hold at least ARTEFACT_FEW
#: objects of ARTEFACT_MIN_AREA pixels or more (of the image; specks do not count) above half
#: its own high level, and the largest artefact must be at least ARTEFACT_SIZE times the median
#: of their areas (a blob, not a bright nucleus or a cluster of them)
ARTEFACT_FEW = 3
ARTEFACT_MIN_AREA = 12.0
ARTEFACT_SIZE = 12.0
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


def artefact_high(
    arr: np.ndarray, high: float, mid: float, hi: float, regions: dict | None = None
) -> float | None:
    """The high percentile without a few large bright artefacts, or None when there are none.

    Dust, a clump of dead cells or precipitated dye can be ten times brighter than the nuclei
    and cover more than the top 0.2 % of the pixels: the 99.8th percentile then lies on the
    artefact, the nuclei are normalised to a tenth of the range, and the counter sees almost
    none of them (two such blobs on the 16-bit BBBC039 val images: counts 85 % low on
    average, ``benchmarks/notes/r19_artefacts.py``).

    Recognised on a regular subsample of ``arr`` (2-D; every ``b``-th pixel, ``b`` chosen so
    that it is at most :data:`ARTEFACT_SIDE` a side; 2 ms on a 2048 x 2048 plane):
    above half the high level (``mid + (hi - mid) / 2``) at most :data:`ARTEFACT_K`
    connected components hold :data:`ARTEFACT_SHARE` of the pixels, while above
    :data:`ARTEFACT_LOW` of it there are at least :data:`ARTEFACT_MANY` objects (a field of
    nuclei under a few bright blobs). A typical image has many components at the half level
    (the cores of its brighter nuclei); a sparse one has few objects at either level. The
    objects that the large components reach at the low level are then left out, and the
    ``high``-th percentile of the rest (of the subsample) is returned if the rest is at least
    half of it, the artefacts stand at least :data:`ARTEFACT_RATIO` times as far above the
    median (the counter copes with nuclei dimmed to 0.4 of the range: it is trained so) and
    the rest's top at least :data:`ARTEFACT_SNR` noise standard deviations above it (noise as
    in the sparse rule of :func:`normalization_range`; a field of noise specks is not one of
    nuclei).

    A small field (fewer than :data:`ARTEFACT_MANY` objects at the low level; a blob that
    dwarfs the nuclei leaves only their cores there) passes when, besides the conditions
    above, the rest holds at least :data:`ARTEFACT_FEW` objects of :data:`ARTEFACT_MIN_AREA`
    image pixels or more above half its own high level, and the largest artefact covers at
    least :data:`ARTEFACT_SIZE` times their median area: a blob, not a bright nucleus or a
    cluster of a few (round 20).
    Of the 682 real training and val images (BBBC039, DSB 2018, Aitslab) it acts on three,
    each with a bright clump among its nuclei (docs/models.md, "Round 19" and "Round 20").

    ``regions``: a dict that receives, when artefacts are found, ``"mask"`` (bool, the
    subsample's pixels left out: the objects the artefacts reach at the low level) and
    ``"step"`` (the subsample's stride ``b``), for :func:`grow_artefacts` and
    :func:`artefact_area`.
    """
    from scipy import ndimage as ndi

    a = np.asarray(arr)
    if a.ndim != 2 or not hi > mid:
        return None
    h, w = a.shape
    b = max(1, int(np.ceil(max(h, w) / ARTEFACT_SIDE)))
    sample = a[::b, ::b]
    top, n_top = ndi.label(sample > mid + 0.5 * (hi - mid))
    if n_top == 0:
        return None
    areas = np.bincount(top.ravel())[1:]
    k = min(ARTEFACT_K, n_top)
    big = np.argsort(areas)[::-1][:k] + 1
    if areas[big - 1].sum() < ARTEFACT_SHARE * areas.sum():
        return None
    low_lab, n_low = ndi.label(sample > mid + ARTEFACT_LOW * (hi - mid))
    reach = ndi.binary_dilation(np.isin(top, big), iterations=2)
    hit = np.unique(low_lab[reach])
    keep = ~np.isin(low_lab, hit[hit > 0])
    rest = sample[keep]
    if rest.size < sample.size // 2:
        return None
    clean = percentiles(rest, [high])[0]
    if not (hi - mid >= ARTEFACT_RATIO * (clean - mid)):
        return None
    if clean - mid < ARTEFACT_SNR * _noise_sd(a, percentiles(a, [1.0])[0], mid, hi):
        return None
    if n_low < ARTEFACT_MANY:
        # a small field: its own objects, at half the level the rest normalises to, must be
        # several and each far smaller than the largest artefact
        objects, n_obj = ndi.label(keep & (sample > mid + 0.5 * (clean - mid)))
        sizes = np.bincount(objects.ravel())[1:]
        sizes = sizes[sizes >= ARTEFACT_MIN_AREA / (b * b)]  # specks are not nuclei
        if sizes.size < ARTEFACT_FEW:
            return None
        if areas.max() < ARTEFACT_SIZE * float(np.median(sizes)):
            return None
    if regions is not None:
        regions["mask"] = ~keep
        regions["step"] = b
    return clean


#: :func:`artefact_area`: each artefact is widened by this share of its equivalent radius
#: (its skirt: a Gaussian blob falls from a tenth of its peak, where the rule's mask ends, to
#: below the nuclei's level over 0.2-0.35 of it; 0.15 is the compromise measured in round 20
#: between 8-bit images, whose clipped blobs leave a bright rim that is counted as cells, and
#: 16-bit ones, whose nuclei stay visible on the skirt)
ARTEFACT_MARGIN = 0.15


def grow_artefacts(mask: np.ndarray) -> np.ndarray:
    """:func:`artefact_high`'s subsample ``mask`` with each artefact widened by
    :data:`ARTEFACT_MARGIN` of its equivalent radius plus one sample (its skirt, still brighter
    than the nuclei once the plane is normalised without it); bool, same shape."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(np.asarray(mask, dtype=bool))
    if n == 0:
        return np.zeros(lab.shape, dtype=bool)
    radius = np.sqrt(np.bincount(lab.ravel())[1:] / np.pi)  # subsample pixels
    margin = np.concatenate([[0.0], ARTEFACT_MARGIN * radius + 1.0])
    dist, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
    return dist <= margin[lab[iy, ix]]


def artefact_area(
    grown: np.ndarray,
    step: int,
    shape: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
    spacing: int = 1,
) -> np.ndarray:
    """Where the bright artefacts :func:`artefact_high` found lie on a ``shape`` array of the
    plane: ``grown`` (its subsample mask, stride ``step`` on the plane, widened by
    :func:`grow_artefacts`, once for all the arrays of a plane) read at the array's pixels:
    rows ``origin[0] + spacing * i``, columns ``origin[1] + spacing * j`` of the plane (the
    whole plane by default; a block; a strided sample). Bool array of ``shape``."""
    g = grown
    h, w = int(shape[0]), int(shape[1])
    rows = np.minimum((origin[0] + spacing * np.arange(h)) // step, g.shape[0] - 1)
    cols = np.minimum((origin[1] + spacing * np.arange(w)) // step, g.shape[1] - 1)
    return g[np.ix_(rows, cols)]


def _noise_sd(a: np.ndarray, p1: float, mid: float, *refs: float) -> float:
    """The background noise's standard deviation, from the darker half of ``a`` (``(p50 -
    p1) / 2.326``), at least one grey level for integer (and bool) images, and for float
    images ``1e-7`` of the largest magnitude among ``mid`` and ``refs``."""
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        floor = 1.0
    else:
        floor = 1e-7 * max(abs(v) for v in (mid, *refs))
    return max((mid - p1) / _Z1, floor)


def normalization_range(
    arr: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    *,
    sparse: bool = True,
    artefacts: bool = False,
    info: dict | None = None,
    regions: dict | None = None,
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

    ``artefacts``: the high reference leaves out a few large bright artefacts
    (:func:`artefact_high`; 2-D planes; the engine uses it, training does not). ``info``: a
    dict whose ``"bright_artefacts"`` entry is incremented when that happens; ``regions``: a
    dict that then receives where they are (see :func:`artefact_high`).
    """
    a = np.asarray(arr)
    if not sparse:
        lo, hi = percentiles(a, [low, high])
        if not artefacts:
            return lo, hi
        mid = percentiles(a, [50.0])[0]
    else:
        lo, hi, p1, mid = percentiles(a, [low, high, 1.0, 50.0])
        noise = _noise_sd(a, p1, mid, hi, lo)
        level = mid + SPARSE_SIGMAS * noise
        if hi - mid <= SPARSE_SIGMAS * noise:
            bright = a[a > level]
            if bright.size:
                top = float(np.percentile(bright, SPARSE_TOP))
                if top - mid >= SPARSE_GAP * (hi - mid):
                    return lo, top
    if artefacts:
        clean = artefact_high(a, high, mid, hi, regions)
        if clean is not None and clean > lo:
            hi = clean
            tally(info, "bright_artefacts")
    return lo, hi


def tally(info: dict | None, key: str, n: int = 1) -> None:
    """Add ``n`` to ``info[key]`` (a result's ``corrections``; nothing when ``info`` is None or
    ``n`` is 0)."""
    if info is not None and n:
        info[key] = info.get(key, 0) + n


def percentile_normalize(
    image: object,
    low: float = 1.0,
    high: float = 99.8,
    *,
    clip: bool = False,
    eps: float = 1e-20,
    sparse: bool = False,
    artefacts: bool = False,
    info: dict | None = None,
    regions: dict | None = None,
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
    artefacts
        Leave a few large bright artefacts out of the high reference (see
        :func:`artefact_high`; the engine uses it).
    info, regions
        See :func:`normalization_range` and :func:`artefact_high`.

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
    lo, hi = normalization_range(
        arr, low, high, sparse=sparse, artefacts=artefacts, info=info, regions=regions
    )
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


def suppress_hot_pixels(
    norm: np.ndarray,
    count_in: tuple[int, int, int, int] | None = None,
    info: dict | None = None,
) -> int:
    """Clamp the hot pixels of a normalised 2-D plane to their neighbourhood, in place.

    A camera's hot or stuck pixels, and cosmic-ray hits, are single pixels (or pairs) many
    times brighter than anything around them. After percentile normalisation they are tens of
    units high, and a counting network resampled to its grid reads each one as a cell
    (40 saturated pixels on a 16-bit BBBC039 image: 129 nuclei counted as 158). A nucleus
    is never like that: even 6 px across it spans dozens of pixels whose brightness rises
    smoothly to its centre.

    A pixel is hot when it is above :data:`HOT_FLOOR` (the plane is normalised so that the high
    percentile is 1: an 8-bit image whose nuclei reach 220 puts a stuck pixel of 255 at 1.07),
    at least :data:`HOT_MIN_CLEAR` of its 8 neighbours are below that floor (or outside the
    plane), and it is more than :data:`HOT_FACTOR` times, and :data:`HOT_EXCESS` above, the
    brightest of those neighbours (an optical point source sampled at Nyquist keeps its
    neighbours above half its peak); it is then set to that neighbour. Only pixels above the
    floor are looked at (one comparison per pixel otherwise).
    ``norm``: float array (H, W), changed in place. Returns the number of pixels clamped, or
    of those inside ``count_in = (y0, y1, x0, x1)`` (a block's own part, without its halo);
    that number is also added to ``info["hot_pixels"]`` (as :func:`normalization_range` notes
    its artefacts).
    """
    if norm.ndim != 2 or norm.size == 0:
        raise ValueError(f"suppress_hot_pixels needs a 2-D plane, got shape {norm.shape}")
    h, w = norm.shape
    cand = np.flatnonzero(norm > HOT_FLOOR)
    if cand.size == 0:
        return 0
    ys, xs = np.divmod(cand, w)
    vals = norm.ravel()[cand]
    best = np.full(cand.size, -np.inf, dtype=np.float64)
    clear = np.zeros(cand.size, dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            v = np.full(cand.size, -np.inf)
            v[inside] = norm[ny[inside], nx[inside]]
            below = v <= HOT_FLOOR  # outside the plane counts as clear, adds no value
            clear += below
            np.maximum(best, np.where(below, v, -np.inf), out=best)
    hot = (
        (clear >= HOT_MIN_CLEAR)
        & np.isfinite(best)
        & (vals > HOT_FACTOR * best)
        & (vals > best + HOT_EXCESS)
    )
    if hot.any():
        norm.ravel()[cand[hot]] = best[hot].astype(norm.dtype)
    if count_in is None:
        n = int(hot.sum())
    else:
        y0, y1, x0, x1 = count_in
        yh, xh = ys[hot], xs[hot]
        n = int(np.count_nonzero((yh >= y0) & (yh < y1) & (xh >= x0) & (xh < x1)))
    tally(info, "hot_pixels", n)
    return n
