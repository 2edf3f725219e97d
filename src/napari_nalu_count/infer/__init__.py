"""Inference: counting and segmentation of numpy/dask images of any size, stacks included.

Public API: :func:`count`, :func:`segment`, :class:`CountResult`, :class:`SegmentResult`;
post-processing helpers :func:`match_points`, :func:`density_peaks`,
:func:`classes_to_instances`; :func:`estimate_diameter`.
"""

from __future__ import annotations

from napari_nalu_count.infer.engine import CountResult, SegmentResult, count, segment
from napari_nalu_count.infer.postprocess import (
    classes_to_instances,
    density_peaks,
    match_points,
)
from napari_nalu_count.infer.scale import estimate_diameter

__all__ = [
    "CountResult",
    "SegmentResult",
    "classes_to_instances",
    "count",
    "density_peaks",
    "estimate_diameter",
    "match_points",
    "segment",
]
