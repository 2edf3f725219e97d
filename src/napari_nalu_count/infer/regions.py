"""Counts inside regions: the integral of a density map over boolean masks, per plane.

A density map's sum is a cell count, so the count inside a region is the sum of the density
under its mask: fractional cells at the border are shared, nothing is thresholded. The masks
come from anywhere (a napari Shapes layer in the Count and Region-count docks); this module
only takes arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_nalu_count.errors import InputError

__all__ = ["region_counts"]


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
