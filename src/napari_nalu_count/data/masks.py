"""Instance label images -> dots, 3-class segmentation targets and size statistics.

Labels are integer arrays (H, W) with 0 for background and one positive id per object. Ids need
not be sequential; functions that return a new label image renumber them 1..N in increasing order
of the original id.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.errors import InputError

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "INTERIOR",
    "as_labels",
    "instance_sizes",
    "instances_to_classes",
    "instances_to_dots",
    "painted_to_instances",
    "relabel_sequential",
    "remove_small_instances",
    "typical_diameter",
]

#: Class ids of :func:`instances_to_classes`.
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def as_labels(labels: object, name: str = "labels") -> np.ndarray:
    """Validate a 2-D instance label image and return it as an integer array (no copy if possible).

    Float arrays are accepted when every value is a whole number (e.g. labels saved as float TIFF).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D (H, W) label image, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"{name} must contain whole-number ids; found fractional/NaN values")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} must not contain negative ids (min is {arr.min()})")
    return arr


def relabel_sequential(labels: object) -> np.ndarray:
    """Renumber the ids of ``labels`` to 1..N (order of the original ids kept); int32 (H, W)."""
    arr = as_labels(labels)
    ids = np.unique(arr)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros(arr.shape, dtype=np.int32)
    if ids[-1] == len(ids):  # already sequential
        return arr.astype(np.int32, copy=True)
    lut_index = np.searchsorted(ids, arr)
    out = np.where(arr > 0, lut_index + 1, 0)
    return out.astype(np.int32)


def instance_sizes(labels: object) -> np.ndarray:
    """Pixel area of every id ``0..labels.max()`` (index 0 is the background)."""
    arr = as_labels(labels)
    return np.bincount(arr.ravel(), minlength=int(arr.max(initial=0)) + 1)


def remove_small_instances(labels: object, min_size: int) -> np.ndarray:
    """Drop instances with fewer than ``min_size`` pixels and renumber the rest 1..N (int32)."""
    arr = as_labels(labels)
    if min_size < 0:
        raise InputError(f"min_size must be >= 0 pixels, got {min_size}")
    if min_size > 1:
        sizes = instance_sizes(arr)
        small = sizes < min_size
        small[0] = False
        if np.any(small[1:]):
            arr = np.where(small[arr], 0, arr)
    return relabel_sequential(arr)


def painted_to_instances(painted: object, connectivity: int = 1, min_size: int = 0) -> np.ndarray:
    """Split a "painted" mask into instances: connected components of each value separately.

    Annotation tools (and BBBC039's masks) paint touching objects with different small values
    (1, 2, 3, ...) so that a simple connected-component pass per value recovers the instances.

    Parameters
    ----------
    painted
        (H, W) integer array, 0 = background.
    connectivity
        1 for 4-connectivity (BBBC039's rule), 2 for 8-connectivity.
    min_size
        Drop components smaller than this many pixels (0 keeps everything).

    Returns
    -------
    int32 (H, W) with ids 1..N.
    """
    arr = as_labels(painted, "painted mask")
    if connectivity not in (1, 2):
        raise InputError(
            f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}"
        )
    structure = ndi.generate_binary_structure(2, connectivity)
    out = np.zeros(arr.shape, dtype=np.int32)
    offset = 0
    for value in np.unique(arr):
        if value == 0:
            continue
        comp, n = ndi.label(arr == value, structure=structure)
        out[comp > 0] = comp[comp > 0] + offset
        offset += n
    out = relabel_sequential(_order_by_position(out))
    return remove_small_instances(out, min_size) if min_size > 1 else out


def _order_by_position(labels: np.ndarray) -> np.ndarray:
    """Renumber so that ids increase in raster order of each object's first pixel."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    if len(ids) == 0:
        return labels
    order = np.argsort(first, kind="stable")
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int32)
    lut[ids[order]] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def instances_to_dots(labels: object, min_size: int = 0) -> np.ndarray:
    """Centroids of the instances, (N, 2) float64 ``(y, x)`` in pixels, ordered by id.

    Instances smaller than ``min_size`` pixels are skipped. Ids without pixels (gaps in the
    numbering) produce no dot.
    """
    arr = as_labels(labels)
    n_max = int(arr.max(initial=0))
    if n_max == 0:
        return np.zeros((0, 2), dtype=np.float64)
    flat = arr.ravel()
    sizes = np.bincount(flat, minlength=n_max + 1).astype(np.float64)
    yy, xx = np.indices(arr.shape)
    sy = np.bincount(flat, weights=yy.ravel(), minlength=n_max + 1)
    sx = np.bincount(flat, weights=xx.ravel(), minlength=n_max + 1)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    return np.column_stack([sy[keep] / sizes[keep], sx[keep] / sizes[keep]])


def instances_to_classes(labels: object, boundary_width: int = 1) -> np.ndarray:
    """3-class target: 0 background, 1 interior, 2 boundary (uint8, (H, W)).

    A pixel of an instance is boundary when another label (or background) lies within
    ``boundary_width`` pixels of it (a disk of that radius; width 1 = the 4-neighbours). Touching
    nuclei are thus separated by two boundary rows, one from each side. The image edge does not
    make a boundary (an object cut by the edge keeps its interior there).
    """
    arr = as_labels(labels)
    width = int(boundary_width)
    if width < 1:
        raise InputError(f"boundary_width must be >= 1 pixel, got {boundary_width}")
    r = np.arange(-width, width + 1)
    footprint = (r[:, None] ** 2 + r[None, :] ** 2) <= width**2
    hi = ndi.maximum_filter(arr, footprint=footprint, mode="nearest")
    lo = ndi.minimum_filter(arr, footprint=footprint, mode="nearest")
    out = np.zeros(arr.shape, dtype=np.uint8)
    fg = arr > 0
    out[fg] = INTERIOR
    out[fg & ((hi != arr) | (lo != arr))] = BOUNDARY
    return out


def typical_diameter(labels: object, min_size: int = 0) -> float:
    """Median equivalent diameter ``sqrt(4 * area / pi)`` of the instances, in pixels.

    Instances smaller than ``min_size`` pixels are ignored. Raises :class:`InputError` when no
    instance is left.
    """
    sizes = instance_sizes(labels)[1:]
    sizes = sizes[sizes >= max(int(min_size), 1)]
    if len(sizes) == 0:
        raise InputError("labels contain no objects, so no typical diameter can be measured")
    return float(np.median(np.sqrt(4.0 * sizes / np.pi)))
