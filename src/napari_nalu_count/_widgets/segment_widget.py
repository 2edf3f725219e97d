"""The "Segment cells" dock: instance labels and object counts per frame.

Plain parts: :func:`segment_job` (the engine generator the dock's worker drives),
:func:`run_segment` (the same, driven here), :func:`apply_segment_results`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nalu_count import infer
from napari_nalu_count._widgets import _viewer
from napari_nalu_count._widgets._inference import (
    InferenceDock,
    RunParams,
    diameter_detail,
    result_diameter,
)
from napari_nalu_count._widgets._results import Summary
from napari_nalu_count.errors import CancelToken
from napari_nalu_count.events import Event, drive


@dataclass
class SegmentOutput:
    """One segmentation run: the engine's result and the nucleus diameter used."""

    result: infer.SegmentResult
    diameter: float | None = None
    diameter_source: str = "model"

    @property
    def counts(self) -> np.ndarray:
        """Objects per plane, shaped like the stack (0-d for a 2-D image)."""
        return self.result.plane_counts

    @property
    def total(self) -> int:
        return int(np.sum(self.counts))


def segment_job(
    image: Any, params: RunParams, *, cancel: CancelToken | None = None
) -> Generator[Event, None, SegmentOutput]:
    """Segment nuclei in ``image`` (``infer.segment_events``: count-guided seeds)."""
    result = yield from infer.segment_events(
        image, params.model, cancel=cancel, **params.engine_kwargs()
    )
    diameter, source = result_diameter(result, params.model)
    return SegmentOutput(result, diameter, source)


def run_segment(
    image: Any,
    params: RunParams,
    *,
    progress: Callable[[Event], Any] | None = None,
    cancel: CancelToken | None = None,
) -> SegmentOutput:
    """:func:`segment_job` run to its end; ``progress`` gets its events."""
    return drive(segment_job(image, params, cancel=cancel), progress)


def apply_segment_results(
    viewer: Any, source: Any, output: SegmentOutput, params: RunParams
) -> Summary:
    """Add (or replace) the labels layer of ``source``; return what to show."""
    result = output.result
    layer = _viewer.replace_result_layer(
        viewer,
        source,
        "labels",
        "labels",
        np.asarray(result.labels),
        name=f"{source.name} labels",
        opacity=0.6,
        **_viewer.result_geometry(source, params.axes or result.axes, result.axes),
    )
    _viewer.record_result_info(
        (layer,), diameter=output.diameter, diameter_source=output.diameter_source
    )
    return Summary(
        name=source.name,
        file=_viewer.layer_file_label(source),
        counts=output.counts,
        unit="objects",
        integer=True,
        details=diameter_detail(output.diameter, output.diameter_source),
        layers=(layer,),
        frame_layer=layer,
    )


class SegmentWidget(InferenceDock):
    """Dock widget: segment nuclei in an image layer with a segmentation model."""

    task = "segment"
    verb = "Segment"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self.ready()

    def job_steps(self, source: Any, params: RunParams, cancel: CancelToken):
        return segment_job(source.data, params, cancel=cancel)

    def apply(self, source: Any, params: RunParams, value: SegmentOutput) -> Summary:
        return apply_segment_results(self.viewer, source, value, params)
