"""Inference: counting and segmentation of numpy/dask images of any size, stacks included.

Public API: :func:`count`, :func:`segment` and their event generators :func:`count_events`,
:func:`segment_events` (see :mod:`napari_nalu_count.events`), :class:`CountResult`,
:class:`SegmentResult`; the rules every front end shares: :func:`parse_diameter`,
:func:`guess_axes`, :func:`validate_axes`, :func:`channel_choices`, :func:`native_diameter`,
:func:`region_counts`; post-processing helpers :func:`match_points`, :func:`density_peaks`,
:func:`classes_to_instances`; :func:`estimate_diameter`.
"""

from __future__ import annotations

from napari_nalu_count.infer.axes import channel_choices, guess_axes, validate_axes
from napari_nalu_count.infer.engine import (
    CountResult,
    SegmentResult,
    count,
    count_events,
    segment,
    segment_events,
)
from napari_nalu_count.infer.inputs import parse_diameter
from napari_nalu_count.infer.postprocess import (
    classes_to_instances,
    density_peaks,
    match_points,
)
from napari_nalu_count.infer.regions import region_counts
from napari_nalu_count.infer.scale import estimate_diameter, native_diameter

__all__ = [
    "CountResult",
    "SegmentResult",
    "channel_choices",
    "classes_to_instances",
    "count",
    "count_events",
    "density_peaks",
    "estimate_diameter",
    "guess_axes",
    "match_points",
    "native_diameter",
    "parse_diameter",
    "region_counts",
    "segment",
    "segment_events",
    "validate_axes",
]
