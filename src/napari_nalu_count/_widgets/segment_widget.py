"""The "Segment cells" dock: instance labels and object counts per frame.

``run_segment`` and ``apply_segment_results`` are plain functions usable without the widget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nalu_count._widgets._common import (
    InferenceWidget,
    layer_file_label,
    pump,
    record_result_info,
    replace_result_layer,
    result_axes,
)
from napari_nalu_count._widgets.count_widget import _layer_geometry, per_plane
from napari_nalu_count.errors import CancelToken


@dataclass
class SegmentOutput:
    """Instance labels (``out_axes`` order, ids unique per plane) and objects per plane."""

    labels: np.ndarray
    counts: np.ndarray  # per plane (0-d for a 2-D image)
    out_axes: str
    diameter: float | None = None  # the nucleus diameter used (pixels), when rescaled
    diameter_source: str = "model"

    @property
    def total(self) -> int:
        return int(np.sum(self.counts))


def run_segment(
    image: np.ndarray,
    params: dict[str, Any],
    *,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> SegmentOutput:
    """Segment nuclei in ``image`` with ``params`` (model, device, diameter, axes)."""
    from napari_nalu_count import infer

    axes = params.get("axes")
    result = infer.segment(
        image,
        params["model"],
        axes=axes,
        diameter=params.get("diameter"),
        device=params.get("device", "auto"),
        progress=progress,
        cancel=cancel,
    )
    labels = np.asarray(result.labels)
    out_axes = result_axes(result, axes)
    counts = per_plane(result.count, labels.shape[:-2])
    if counts.ndim == 0 and labels.ndim > 2:
        planes = labels.reshape(-1, *labels.shape[-2:])
        counts = np.array([len(np.unique(p[p > 0])) for p in planes], dtype=float)
        counts = counts.reshape(labels.shape[:-2])
    return SegmentOutput(
        labels=labels,
        counts=counts,
        out_axes=out_axes,
        diameter=getattr(result, "diameter", None),
        diameter_source=str(getattr(result, "diameter_source", "model")),
    )


def apply_segment_results(
    viewer: Any, source: Any, output: SegmentOutput, params: dict[str, Any]
) -> dict[str, Any]:
    """Add (or replace) the labels layer of ``source``; return a result summary."""
    axes = params.get("axes") or output.out_axes
    layer = replace_result_layer(
        viewer,
        source,
        "labels",
        "labels",
        output.labels,
        name=f"{source.name} labels",
        opacity=0.6,
        **_layer_geometry(source, axes, output.out_axes),
    )
    record_result_info((layer,), diameter=output.diameter, diameter_source=output.diameter_source)
    return {
        "name": source.name,
        "file": layer_file_label(source),
        "counts": output.counts,
        "extra": {},
        "unit": "objects",
        "integer": True,
        "model": params.get("model"),
        "layers": (layer,),
        "frame_layer": layer,
        "diameter": output.diameter,
        "diameter_source": output.diameter_source,
    }


class SegmentWidget(InferenceWidget):
    """Dock widget: segment nuclei in an image layer with a segmentation model."""

    task = "segment"
    verb = "Segment"

    def _job(self, source: Any, image: np.ndarray, params: dict[str, Any], cancel: Any):
        def job():
            return (yield from pump(run_segment, image, params, cancel=cancel))

        return job

    def _apply(self, source: Any, params: dict[str, Any], value: SegmentOutput) -> dict[str, Any]:
        return apply_segment_results(self.viewer, source, value, params)
