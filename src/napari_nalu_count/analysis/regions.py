"""Counts, areas and densities per region: label masks (atlas, tissue mask) and boolean masks.

Two kinds of region input (:func:`as_regions`):

- a **label mask**: an integer array, ``(Y, X)`` (applies to every plane of a stack) or of the
  stack's full shape ``(*stack, Y, X)`` (one mask per plane); every non-zero value is a region id,
  0 is outside every region. Regions cannot overlap.
- **boolean masks**: ``(Y, X)`` (one region, id 1), ``(k, Y, X)`` (k regions applied to every
  plane) or ``(k, *stack, Y, X)``; region ``i`` has id ``i + 1``. Masks may overlap (a Shapes
  layer's shapes), and a cell inside two masks counts in both.

Counting (:func:`count_in_regions`): the integral of the density inside each region, per plane.
Segmentation (:func:`objects_in_regions`): the objects of each plane whose centroid (rounded to
the nearest pixel) falls inside the region. Both return a :class:`RegionTable` with the region
area per plane and the density in cells per mm² (per 10⁶ px without a pixel size; see
:mod:`.units`).

:func:`region_counts`: the Count dock's per-Shapes-region columns (``{"region 1": counts,
...}``), also :func:`napari_nalu_count.infer.region_counts`: one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_nalu_count.analysis import units as _units
from napari_nalu_count.errors import InputError

__all__ = [
    "RegionTable",
    "Regions",
    "as_regions",
    "count_in_regions",
    "object_centroids",
    "objects_in_regions",
    "region_counts",
]


@dataclass
class Regions:
    """Regions normalised for one image's stack and plane shape.

    ``ids``: (k,) int64 region ids. Exactly one of ``labels`` (int64, ``(Y, X)`` or
    ``(*stack, Y, X)``) and ``masks`` (bool, ``(k, Y, X)`` or ``(k, *stack, Y, X)``) is set.
    """

    ids: np.ndarray
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    per_plane: bool = False  # True when the regions differ per plane

    @property
    def kind(self) -> str:
        return "labels" if self.labels is not None else "masks"

    def plane(self, k: int, stack_shape: tuple[int, ...]) -> np.ndarray:
        """Regions of flat plane ``k``: a ``(Y, X)`` label image or ``(k, Y, X)`` masks."""
        if self.labels is not None:
            if not self.per_plane:
                return self.labels
            return self.labels.reshape(-1, *self.labels.shape[-2:])[k]
        assert self.masks is not None
        if not self.per_plane:
            return self.masks
        m = self.masks
        return m.reshape(m.shape[0], -1, *m.shape[-2:])[:, k]


def as_regions(
    regions: Any, plane_shape: tuple[int, int], stack_shape: tuple[int, ...] = ()
) -> Regions:
    """Check and normalise ``regions`` (see the module docstring) for an image whose planes are
    ``plane_shape`` and whose stack axes have ``stack_shape``; raises :class:`InputError`."""
    if isinstance(regions, Regions):
        return regions
    if regions is None:
        raise InputError("regions is None; give a label mask or boolean masks")
    arr = np.asarray(regions)
    plane_shape = tuple(int(s) for s in plane_shape)
    stack_shape = tuple(int(s) for s in stack_shape)
    full = stack_shape + plane_shape
    if arr.ndim < 2 or tuple(arr.shape[-2:]) != plane_shape:
        raise InputError(
            f"regions of shape {tuple(arr.shape)} do not match the image planes {plane_shape}; "
            f"give a (Y, X) mask or one of the image's shape {full}"
        )
    if arr.dtype == np.bool_:
        if arr.ndim == 2:
            arr = arr[None]
        if arr.shape[1:] == plane_shape:
            per_plane = False
        elif stack_shape and arr.shape[1:] == full:
            per_plane = True
        else:
            raise InputError(
                f"boolean region masks of shape {tuple(arr.shape)} do not fit the image "
                f"{full}: expected (k, Y, X) or (k, *stack, Y, X)"
            )
        ids = np.arange(1, arr.shape[0] + 1, dtype=np.int64)
        return Regions(ids=ids, masks=arr, per_plane=per_plane)
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise InputError(
                f"a region label mask must hold whole numbers (region ids), got dtype {arr.dtype}"
            )
    if arr.shape == plane_shape:
        per_plane = False
    elif arr.shape == full and stack_shape:
        per_plane = True
    else:
        raise InputError(
            f"a region label mask of shape {tuple(arr.shape)} does not fit the image {full}: "
            f"expected {plane_shape} (every plane) or {full} (one mask per plane)"
        )
    if arr.size and arr.min() < 0:
        raise InputError("region ids must be >= 0 (0 = outside every region)")
    labels = arr.astype(np.int64, copy=False)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    return Regions(ids=ids.astype(np.int64), labels=labels, per_plane=per_plane)


@dataclass
class RegionTable:
    """Per-plane, per-region counts and areas.

    ``ids`` (k,) region ids; ``counts`` and ``areas_px`` are ``(n_planes, k)`` float64 (planes
    flattened in C order, the ``frame`` of the counts table); ``pixel_size`` µm per pixel
    ``(py, px)`` or None. :attr:`areas` and :attr:`densities` are in the units
    :attr:`area_column` / :attr:`density_column` name (µm² and cells per mm², or pixels and
    cells per 10⁶ px).
    """

    ids: np.ndarray
    counts: np.ndarray
    areas_px: np.ndarray
    pixel_size: tuple[float, float] | None = None
    integer: bool = False
    names: list[str] = field(default_factory=list)

    @property
    def area_column(self) -> str:
        return _units.area_column(self.pixel_size)

    @property
    def density_column(self) -> str:
        return _units.density_column(self.pixel_size)

    @property
    def areas(self) -> np.ndarray:
        return _units.areas(self.areas_px, self.pixel_size)

    @property
    def densities(self) -> np.ndarray:
        return _units.densities(self.counts, self.areas_px, self.pixel_size)

    def to_frame(self) -> Any:
        """A pandas DataFrame: ``frame, region, count, <area column>, <density column>``."""
        import pandas as pd

        n_planes, k = self.counts.shape
        df = pd.DataFrame(
            {
                "frame": np.repeat(np.arange(n_planes), k),
                "region": np.tile(self.ids, n_planes),
                "count": self.counts.ravel(),
                self.area_column: self.areas.ravel(),
                self.density_column: self.densities.ravel(),
            }
        )
        df.attrs["units"] = "um" if self.pixel_size is not None else "px"
        df.attrs["pixel_size"] = self.pixel_size
        df.attrs["note"] = _units.unit_note(self.pixel_size)
        return df


def _region_sizes(regs: Regions, k: int, stack_shape: tuple[int, ...]) -> np.ndarray:
    """Pixels in each region of flat plane ``k``; float64 (n_regions,)."""
    plane = regs.plane(k, stack_shape)
    if regs.labels is not None:
        idx, inside = _index_of(regs, plane)
        return np.bincount(idx[inside], minlength=len(regs.ids))[: len(regs.ids)].astype(np.float64)
    return plane.reshape(plane.shape[0], -1).sum(axis=1, dtype=np.float64)


def _index_of(regs: Regions, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat region index per pixel and the mask of pixels inside a listed region."""
    flat = plane.ravel()
    idx = np.searchsorted(regs.ids, flat)
    idx_c = np.minimum(idx, max(len(regs.ids) - 1, 0))
    inside = (
        (idx < len(regs.ids)) & (regs.ids[idx_c] == flat)
        if len(regs.ids)
        else np.zeros(flat.shape, dtype=bool)
    )
    return idx_c, inside


def count_in_regions(
    density: Any,
    regions: Any,
    *,
    pixel_size: Any = None,
) -> RegionTable:
    """Integral of ``density`` ((Y, X) or (*stack, Y, X), cells per pixel) inside each region,
    per plane, with each region's area (see the module docstring for ``regions``)."""
    dens = np.asarray(density, dtype=np.float64)
    if dens.ndim < 2:
        raise InputError(f"density must be at least 2-D, got shape {dens.shape}")
    ps = _units.check_pixel_size(pixel_size)
    stack_shape, plane_shape = dens.shape[:-2], dens.shape[-2:]
    regs = as_regions(regions, plane_shape, stack_shape)
    planes = dens.reshape(-1, *plane_shape)
    k = len(regs.ids)
    counts = np.zeros((len(planes), k))
    sizes = np.zeros((len(planes), k))
    cached: tuple[np.ndarray, np.ndarray] | None = None
    for f, plane in enumerate(planes):
        if regs.labels is not None:
            if cached is None or regs.per_plane:
                cached = _index_of(regs, regs.plane(f, stack_shape))
            idx, inside = cached
            counts[f] = np.bincount(idx[inside], weights=plane.ravel()[inside], minlength=k)[:k]
            sizes[f] = np.bincount(idx[inside], minlength=k)[:k]
        else:
            m = regs.plane(f, stack_shape).reshape(k, -1)
            counts[f] = m.astype(np.float64) @ plane.ravel()
            sizes[f] = m.sum(axis=1)
    return RegionTable(ids=regs.ids, counts=counts, areas_px=sizes, pixel_size=ps)


def object_centroids(labels2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, centroids (n, 2) y, x)`` of the objects of a 2-D label image."""
    from scipy import ndimage as ndi

    lab = np.asarray(labels2d)
    ids = np.unique(lab)
    ids = ids[ids != 0]
    if len(ids) == 0:
        return ids.astype(np.int64), np.zeros((0, 2))
    cents = np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids), dtype=np.float64)
    return ids.astype(np.int64), cents.reshape(-1, 2)


def objects_in_regions(
    labels: Any,
    regions: Any,
    *,
    pixel_size: Any = None,
) -> RegionTable:
    """Objects of ``labels`` ((Y, X) or (*stack, Y, X) instance labels, numbered per plane)
    whose centroid falls inside each region, per plane, with the regions' areas."""
    lab = np.asarray(labels)
    if lab.ndim < 2:
        raise InputError(f"labels must be at least 2-D, got shape {lab.shape}")
    ps = _units.check_pixel_size(pixel_size)
    stack_shape, plane_shape = lab.shape[:-2], lab.shape[-2:]
    regs = as_regions(regions, plane_shape, stack_shape)
    planes = lab.reshape(-1, *plane_shape)
    k = len(regs.ids)
    counts = np.zeros((len(planes), k))
    sizes = np.zeros((len(planes), k))
    for f, plane in enumerate(planes):
        sizes[f] = _region_sizes(regs, f, stack_shape)
        _, cents = object_centroids(plane)
        if not len(cents) or not k:
            continue
        iy = np.clip(np.rint(cents[:, 0]).astype(np.intp), 0, plane_shape[0] - 1)
        ix = np.clip(np.rint(cents[:, 1]).astype(np.intp), 0, plane_shape[1] - 1)
        reg = regs.plane(f, stack_shape)
        if regs.labels is not None:
            at = reg[iy, ix]
            idx = np.searchsorted(regs.ids, at)
            idx_c = np.minimum(idx, k - 1)
            ok = (idx < k) & (regs.ids[idx_c] == at)
            counts[f] = np.bincount(idx_c[ok], minlength=k)[:k]
        else:
            counts[f] = reg[:, iy, ix].sum(axis=1)
    return RegionTable(ids=regs.ids, counts=counts, areas_px=sizes, pixel_size=ps, integer=True)


def region_counts(
    density: np.ndarray, masks: np.ndarray, *, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """``{name: counts}`` with the integral of ``density`` over each mask, per plane.

    ``density``: ``(..., Y, X)`` (stack axes first, as ``CountResult.density`` for the usual
    axes orders). ``masks``: booleans ``(k, Y, X)``, applied to every plane, or
    ``(k, *density.shape)``, counting each plane only where its mask is set. ``counts`` has
    the stack's shape (a 0-d array for a 2-D density). Names default to ``"region 1"`` ...
    """
    density = np.asarray(density, dtype=np.float64)
    masks = np.asarray(masks)
    if density.ndim < 2:
        raise InputError(f"a density map needs (Y, X) axes, got shape {density.shape}")
    if masks.ndim < 3:
        raise InputError(f"region masks must be (k, Y, X) booleans, got shape {masks.shape}")
    if masks.dtype != np.bool_:
        masks = masks.astype(bool)
    plane_shape = density.shape[-2:]
    if masks.shape[-2:] != plane_shape:
        raise InputError(
            f"region masks of shape {masks.shape[-2:]} do not match the image {plane_shape}"
        )
    planes = density.reshape(-1, *plane_shape)  # (F, Y, X)
    if masks.ndim == 3:
        per_plane = np.einsum("fyx,kyx->kf", planes, masks.astype(np.float64))
    elif masks.shape[1:] == density.shape:
        flat = masks.reshape(len(masks), -1, *plane_shape).astype(np.float64)
        per_plane = np.einsum("fyx,kfyx->kf", planes, flat)
    else:
        raise InputError(f"region masks of shape {masks.shape[1:]} do not fit {density.shape}")
    labels = list(names) if names is not None else [f"region {k + 1}" for k in range(len(masks))]
    if len(labels) != len(masks):
        raise InputError(f"{len(labels)} names for {len(masks)} region masks")
    stack_shape = density.shape[:-2]
    return {label: per_plane[k].reshape(stack_shape) for k, label in enumerate(labels)}
