"""Object size: rescale images so cells match the model's training diameter, and map back.

With ``diameter=d`` (pixels of the user's image) and a model card diameter ``D``, every plane is
resampled by ``s = D / d`` before inference (the *model grid*), and results come back to the
original grid:

- density: bilinear resampling, then renormalised so its integral (the count) is unchanged;
- points: ``p = (p' + 0.5) / s - 0.5`` per axis (pixel-centre convention);
- labels: nearest-neighbour (every original pixel takes the label under its centre), then
  relabelled 1..n.

:func:`estimate_diameter` estimates ``d`` with the learned scale-profile regressor of
:mod:`.size` (fast, 5-150 px). The previous estimator, a scale-normalised Laplacian-of-Gaussian
blob search (:func:`skimage.feature.blob_log`, ``2 sqrt(2) x`` the median sigma of the blobs),
stays available as :func:`estimate_diameter_log` (``method="log"``) for comparison: it answers
the size of chromatin texture on large nuclei and costs seconds per image.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.errors import InputError
from napari_nalu_count.infer.postprocess import _relabel

#: resampling factors outside this range are refused (the image would grow or vanish)
MIN_SCALE, MAX_SCALE = 1.0 / 16.0, 8.0
#: bilinear upsampling by two separable NumPy passes instead of scipy.ndimage.zoom (same
#: values up to float32 rounding, several times faster; see :func:`_bilinear_numpy`)
FAST_UPSAMPLING = True
#: shrinking (Gaussian anti-aliasing, then bilinear) as one banded sparse matrix per axis applied
#: to the plane, instead of SciPy's Gaussian filter of the whole plane followed by
#: ``ndi.zoom``: the same linear map (equal up to float32 rounding), 3-6x faster at 2048 px
#: because the filter is evaluated only at the samples the zoom reads, and no full-size
#: filtered copy of the plane is made (see :func:`_shrink_banded`)
FAST_DOWNSAMPLING = True
#: factors this close to 1 skip resampling entirely
SCALE_TOLERANCE = 0.02


def scale_factor(diameter: float | None, card_diameter: float | None) -> float:
    """``card_diameter / diameter`` (1.0 when either is unknown); validates the range."""
    if diameter is None or card_diameter is None:
        return 1.0
    d = float(diameter)
    if not math.isfinite(d) or d <= 0:
        raise InputError(f"diameter must be a positive number of pixels, got {diameter!r}")
    s = float(card_diameter) / d
    if not MIN_SCALE <= s <= MAX_SCALE:
        raise InputError(
            f"diameter={d:g} px is too far from the model's training diameter "
            f"({float(card_diameter):g} px): the image would be resampled by {s:.3g}x"
        )
    return 1.0 if abs(s - 1.0) < SCALE_TOLERANCE else s


def input_scale_factor(value: float | None) -> float:
    """A card's ``input_scale`` as a resampling factor: 1.0 when absent or within
    :data:`SCALE_TOLERANCE` of 1; :class:`InputError` outside ``[MIN_SCALE, MAX_SCALE]``."""
    if value is None:
        return 1.0
    s = float(value)
    if not (math.isfinite(s) and MIN_SCALE <= s <= MAX_SCALE):
        raise InputError(
            f"the model card's input_scale {value!r} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}]"
        )
    return 1.0 if abs(s - 1.0) < SCALE_TOLERANCE else s


def native_diameter(card: dict | None) -> float | None:
    """The object diameter, in pixels of the user's image, that a model expects when the image
    is not rescaled for a diameter: the card's ``diameter`` (on the model grid) divided by its
    ``input_scale`` (the model sees the image resampled by that factor). None when the card
    records no diameter."""
    value = (card or {}).get("diameter")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    s = (card or {}).get("input_scale")
    if isinstance(s, int | float) and not isinstance(s, bool) and s > 0:
        return float(value) / float(s)
    return float(value)


def scaled_shape(shape: tuple[int, int], s: float) -> tuple[int, int]:
    """Shape of a ``(H, W)`` plane on the model grid (at least 1 x 1)."""
    return (max(1, round(shape[0] * s)), max(1, round(shape[1] * s)))


def _zoom_to(arr: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Resample a 2-D float32 array to exactly ``shape`` (pixel-area aligned)."""
    if tuple(arr.shape) == tuple(shape):
        return arr
    if order == 1 and FAST_UPSAMPLING and shape[0] >= arr.shape[0] and shape[1] >= arr.shape[1]:
        # upsampling (density maps back to the image); shrinking (the network's input)
        # stays with scipy
        return _bilinear_numpy(arr, shape)
    factors = (shape[0] / arr.shape[0], shape[1] / arr.shape[1])
    out = ndi.zoom(arr, factors, order=order, mode="nearest", grid_mode=True, output=np.float32)
    if out.shape != tuple(shape):  # rounding guard; zoom rounds input*factor
        fixed = np.zeros(shape, dtype=np.float32)
        h, w = min(shape[0], out.shape[0]), min(shape[1], out.shape[1])
        fixed[:h, :w] = out[:h, :w]
        out = fixed
    return out


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``(i0, i1)`` and float32 weights of ``i1`` for linear resampling of
    ``n_in`` samples to ``n_out`` (pixel centres aligned, edges clamped: ``ndi.zoom``'s
    ``grid_mode=True, mode="nearest"``)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _bilinear_numpy(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``ndi.zoom(order=1, mode="nearest", grid_mode=True)`` to ``shape`` as two separable
    2-tap passes in float32 (equal up to float32 rounding, ~7x faster for 872 -> 2048 px, and
    no thread pool to wake, unlike torch's interpolation)."""
    a = np.asarray(arr, dtype=np.float32)
    y0, y1, wy = _linear_taps(a.shape[0], int(shape[0]))
    x0, x1, wx = _linear_taps(a.shape[1], int(shape[1]))
    # columns first, on the small array; then whole rows (contiguous copies) of the output
    cols = np.take(a, x0, axis=1)
    right = np.take(a, x1, axis=1)
    right -= cols
    right *= wx[None, :]
    cols += right
    del right
    out = np.empty((len(y0), len(x0)), dtype=np.float32)
    for r0 in range(0, len(y0), 512):  # 512 output rows at a time: one small temporary
        r1 = min(len(y0), r0 + 512)
        top = out[r0:r1]
        np.take(cols, y0[r0:r1], axis=0, out=top)
        below = np.take(cols, y1[r0:r1], axis=0)
        below -= top
        below *= wy[r0:r1, None]
        top += below
    return out


def _gaussian_taps(sigma: float) -> np.ndarray:
    """The 1-D kernel of ``ndi.gaussian_filter(sigma)`` (truncated at 4 sigma, sum 1)."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return g / g.sum()


@functools.lru_cache(maxsize=32)
def _shrink_matrix(n_in: int, n_out: int, sigma: float):
    """``(n_out, n_in)`` CSR float32 matrix of one axis of :func:`rescale_plane`'s shrink:
    the Gaussian filter (``mode="nearest"``: indices clamped at the edges) composed with the
    2-tap linear resampling of :func:`_linear_taps` (``ndi.zoom``'s ``order=1,
    grid_mode=True, mode="nearest"``). Clamped taps that land on the same pixel add up."""
    from scipy import sparse

    i0, i1, w = _linear_taps(n_in, n_out)
    g = _gaussian_taps(sigma) if sigma > 0 else np.ones(1)
    k = np.arange(len(g)) - (len(g) - 1) // 2
    w = w.astype(np.float64)[:, None]
    cols = np.concatenate(
        [np.clip(i0[:, None] + k, 0, n_in - 1), np.clip(i1[:, None] + k, 0, n_in - 1)], axis=1
    )
    vals = np.concatenate([(1.0 - w) * g, w * g], axis=1)
    rows = np.repeat(np.arange(n_out), cols.shape[1])
    m = sparse.csr_matrix(
        (vals.ravel(), (rows, cols.ravel())), shape=(n_out, n_in), dtype=np.float64
    )
    return m.astype(np.float32)


def _shrink_banded(plane: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian filter then bilinear resampling of a float32 plane to ``shape`` as
    ``My @ plane @ Mx.T`` with the banded matrices of :func:`_shrink_matrix`."""
    my = _shrink_matrix(plane.shape[0], int(shape[0]), float(sigma))
    mx = _shrink_matrix(plane.shape[1], int(shape[1]), float(sigma))
    rows = my @ np.ascontiguousarray(plane)  # (out_h, W): the rows the output reads
    # the column pass on a transposed copy, and the result transposed back, both by torch:
    # SciPy's product with the transposed view (a strided operand) and NumPy's transposing
    # copy took most of the 44 ms of a 2048 -> 1430 px shrink; this way 17 ms in all,
    # the same sums in the same order (bit-identical)
    out = mx @ _transposed(rows)
    return _transposed(np.asarray(out, dtype=np.float32))


def _transposed(a: np.ndarray) -> np.ndarray:
    """A C-contiguous transposed copy of a 2-D array (torch's blocked copy: 3.4x NumPy's)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).t().contiguous().numpy()


def rescale_plane(plane: np.ndarray, s: float) -> np.ndarray:
    """Resample a ``(H, W)`` plane by ``s`` (bilinear, Gaussian anti-aliasing when shrinking)."""
    plane = np.asarray(plane, dtype=np.float32)
    if s == 1.0:
        return plane
    if s < 1.0:
        sigma = max(0.0, (1.0 / s - 1.0) / 2.0)
        shape = scaled_shape(plane.shape, s)
        if FAST_DOWNSAMPLING and shape[0] <= plane.shape[0] and shape[1] <= plane.shape[1]:
            return _shrink_banded(plane, shape, sigma)
        plane = ndi.gaussian_filter(plane, sigma, mode="nearest", output=np.float32)
    return _zoom_to(plane, scaled_shape(plane.shape, s), order=1)


def density_to_original(density: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a model-grid density to ``shape`` keeping its integral (float32)."""
    if tuple(density.shape) == tuple(shape):
        return density
    total = float(density.sum(dtype=np.float64))
    out = _zoom_to(np.asarray(density, dtype=np.float32), shape, order=1)
    out *= np.float32(density.size / out.size)  # area factor keeps the integral of smooth maps
    got = float(out.sum(dtype=np.float64))
    if abs(got) > 1e-6 and 0.5 < total / got < 2.0:
        out *= np.float32(total / got)  # exact integral after resampling
    return out


def points_to_original(
    points: np.ndarray, model_shape: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """Map ``(N, 2)`` (y, x) points from the model grid back to the original grid."""
    if tuple(model_shape) == tuple(shape) or len(points) == 0:
        return points
    fy, fx = shape[0] / model_shape[0], shape[1] / model_shape[1]
    out = np.empty_like(points, dtype=np.float64)
    out[:, 0] = (points[:, 0] + 0.5) * fy - 0.5
    out[:, 1] = (points[:, 1] + 0.5) * fx - 0.5
    return out


def labels_to_original(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of instance labels to ``shape``, relabelled 1..n (int32)."""
    if tuple(labels.shape) == tuple(shape):
        return labels.astype(np.int32, copy=False)
    mh, mw = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mh / shape[0]).astype(np.intp), mh - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mw / shape[1]).astype(np.intp), mw - 1)
    # columns first on the small array, then whole rows (contiguous copies): 8x faster than
    # labels[rows][:, cols] at 1170 -> 2048 px, the same pixels
    out = np.take(np.take(labels, cols, axis=1), rows, axis=0)
    return _relabel(out)


def estimate_diameter(
    plane: np.ndarray, *, method: str = "learned", normalized: bool = False
) -> float | None:
    """Typical object diameter (pixels) of a ``(H, W)`` fluorescence plane, or None when the
    plane has no contrast. ``method``: ``"learned"`` (:func:`.size.estimate_diameter`) or
    ``"log"`` (:func:`estimate_diameter_log`). ``normalized``: ``plane`` is already
    percentile-normalised (1 / 99.8) for the learned estimator."""
    if method == "learned":
        from napari_nalu_count.infer.size import estimate_diameter as learned

        return learned(plane, normalized=normalized)
    if method == "log":
        return estimate_diameter_log(plane)
    raise InputError(f"unknown diameter estimation method {method!r}; use 'learned' or 'log'")


def estimate_diameter_log(
    plane: np.ndarray, *, crop: int = 768, min_diameter: float = 4.0, max_diameter: float = 120.0
) -> float | None:
    """Typical diameter (pixels) of bright round objects in a normalised ``(H, W)`` plane.

    Uses a central ``crop x crop`` window (objects are assumed to look alike across the image)
    and :func:`skimage.feature.blob_log` over 14 log-spaced sigmas; returns
    ``2 sqrt(2) * median(sigma)``, or None when nothing blob-like is found.
    """
    from skimage.feature import blob_log

    img = np.asarray(plane, dtype=np.float32)
    h, w = img.shape
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    img = img[y0 : y0 + crop, x0 : x0 + crop]
    lo, hi = np.percentile(img, [1.0, 99.8])
    if not hi > lo:
        return None
    img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    k = 2.0 * math.sqrt(2.0)
    max_sigma = min(max_diameter, min(img.shape) / 2.0) / k
    min_sigma = min_diameter / k
    if max_sigma <= min_sigma:
        return None
    blobs = blob_log(
        img,
        min_sigma=min_sigma,
        max_sigma=max_sigma,
        num_sigma=14,
        log_scale=True,
        threshold=0.05,
        overlap=0.5,
        exclude_border=False,
    )
    if len(blobs) == 0:
        return None
    return float(k * np.median(blobs[:, 2]))
