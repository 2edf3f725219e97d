"""Counts inside regions: the integral of a density map over boolean masks, per plane.

A density map's sum is a cell count, so the count inside a region is the sum of the density
under its mask: fractional cells at the border are shared, nothing is thresholded. The masks
come from anywhere (a napari Shapes layer in the Count and Region-count docks). The one
implementation lives in :mod:`napari_nalu_count.analysis.regions` (with label-mask regions,
areas and densities); this module keeps the ``infer`` name.
"""

from __future__ import annotations

from napari_nalu_count.analysis.regions import region_counts

__all__ = ["region_counts"]
