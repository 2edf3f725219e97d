"""Quantification after inference: physical units, regions, per-object measurements.

Core code (numpy, scipy, scikit-image, pandas; never torch, napari or Qt):

- :mod:`.units`: pixel sizes (micrometres per pixel), area and density units and column names;
- :mod:`.regions`: counts, areas and densities per region of a label mask (atlas, tissue mask)
  or of boolean masks (Shapes), from a density (counting) or from instance labels (segmentation);
- :mod:`.measurements`: the per-object table (:func:`measure`, exported as
  ``napari_nalu_count.measure``).
"""

from __future__ import annotations

from napari_nalu_count.analysis.measurements import measure
from napari_nalu_count.analysis.regions import (
    RegionTable,
    as_regions,
    count_in_regions,
    objects_in_regions,
    region_counts,
)
from napari_nalu_count.analysis.units import check_pixel_size

__all__ = [
    "RegionTable",
    "as_regions",
    "check_pixel_size",
    "count_in_regions",
    "measure",
    "objects_in_regions",
    "region_counts",
]
