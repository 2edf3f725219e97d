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
from napari_nalu_count._widgets import _models, _quantify, _viewer
from napari_nalu_count._widgets._inference import (
    InferenceDock,
    RunParams,
    background_detail,
    corrections_detail,
    diameter_detail,
    result_diameter,
)
from napari_nalu_count._widgets._results import Summary
from napari_nalu_count._widgets._table import TablePanel
from napari_nalu_count._widgets.count_widget import volume_detail
from napari_nalu_count.errors import CancelToken
from napari_nalu_count.events import Event, drive


@dataclass
class SegmentOutput:
    """One segmentation run: the engine's result and the nucleus diameter used."""

    result: infer.SegmentResult
    diameter: float | None = None
    diameter_source: str = "model"
    table: _quantify.Quantified | None = None  # the batch table: units, regions, volumes
    measurements: Any = None  # per-object table (napari_nalu_count.measure), a DataFrame

    @property
    def counts(self) -> np.ndarray:
        """Objects per plane, shaped like the stack (0-d for a 2-D image)."""
        return self.result.plane_counts

    @property
    def total(self) -> int:
        return int(np.sum(self.counts))


def segment_job(
    image: Any,
    params: RunParams,
    *,
    cancel: CancelToken | None = None,
    regions: Any = None,
    pixel_size: Any = None,
    how: str = "none",
    file: str = "image",
    measure: bool = True,
) -> Generator[Event, None, SegmentOutput]:
    """Segment nuclei in ``image`` (``infer.segment_events``: count-guided seeds), then the
    table (:func:`._quantify.quantify`: areas, densities, objects whose centroid is in each
    region of ``regions``, volume rows) and, with ``measure``, the per-object measurements
    (:func:`napari_nalu_count.measure` with the image's intensities, in µm with
    ``pixel_size``)."""
    result = yield from infer.segment_events(
        image, params.model, cancel=cancel, **params.engine_kwargs()
    )
    diameter, source = result_diameter(result, params.model)
    table = _quantify.quantify(
        file, result, "segment", regions=regions, pixel_size=pixel_size, how=how
    )
    measurements = None
    if measure:
        measurements = measure_objects(image, result, params, pixel_size)
    return SegmentOutput(result, diameter, source, table, measurements)


def measure_objects(image: Any, result: Any, params: RunParams, pixel_size: Any) -> Any:
    """Per-object table of ``result.labels`` with the intensities of ``image`` (reduced to the
    labels' planes by the model's channel rule; without intensities when that fails)."""
    from napari_nalu_count import measure
    from napari_nalu_count.infer import axes as _axes
    from napari_nalu_count.infer import multiscale

    level = multiscale.resolve(image, params.level)
    data = level.array if level is not None else image
    intensity = None
    try:
        rule = _axes.input_rule(_models.model_card(params.model))
        planes = _axes.to_planes(np.asarray(data), params.axes, params.channel, rule)
        plan = _axes.make_plan(np.asarray(data), params.axes, params.channel, rule)
        intensity = np.asarray(_axes.to_output_order(np.asarray(planes), plan))
        if intensity.shape != result.labels.shape:
            intensity = None
    except Exception:  # noqa: BLE001 - measured without intensities
        intensity = None
    axes = result.axes.replace("C", "")
    return measure(result.labels, intensity, pixel_size=pixel_size, axes=axes)


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
    geometry = _viewer.result_geometry(source, params.axes or result.axes, result.axes)
    geometry = _viewer.level_geometry(geometry, result.level_scale)
    layer = _viewer.replace_result_layer(
        viewer,
        source,
        "labels",
        "labels",
        np.asarray(result.labels),
        name=f"{source.name} labels",
        opacity=0.6,
        **geometry,
    )
    if output.measurements is not None:
        features = output.measurements.copy()
        features.insert(0, "index", features["label"].to_numpy())
        layer.features = features  # napari shows the row of the label under the cursor
    layers = [layer]
    details = diameter_detail(output.diameter, output.diameter_source)
    details += background_detail(output.result)
    details += corrections_detail(output.result)
    if result.volume_labels is not None:
        layers.append(
            _viewer.replace_result_layer(
                viewer,
                source,
                "labels3d",
                "labels",
                np.asarray(result.volume_labels),
                name=f"{source.name} labels (3-D)",
                opacity=0.6,
                visible=False,
                **geometry,
            )
        )
        details.insert(0, volume_detail(result.volume_count, "objects"))
    _viewer.record_result_info(
        layers, diameter=output.diameter, diameter_source=output.diameter_source
    )
    table = output.table
    extra = {}
    if table is not None:
        extra = _quantify.plane_columns(table)
        details.append(table.note)
    return Summary(
        name=source.name,
        file=_viewer.layer_file_label(source),
        counts=output.counts,
        unit="objects",
        integer=True,
        extra=extra,
        details=details,
        layers=tuple(layers),
        frame_layer=layer,
        table=table.export if table is not None else None,
    )


class SegmentWidget(InferenceDock):
    """Dock widget: segment nuclei in an image layer with a segmentation model."""

    task = "segment"
    verb = "Segment"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self.measure_table = TablePanel("measurements (one row per object)", "Export measurements")
        self.body.addWidget(self.measure_table)
        self.ready()

    def job_steps(self, source: Any, params: RunParams, cancel: CancelToken):
        extras = self.quantities(source, params)
        return segment_job(_viewer.engine_data(source), params, cancel=cancel, **extras)

    def apply(self, source: Any, params: RunParams, value: SegmentOutput) -> Summary:
        summary = apply_segment_results(self.viewer, source, value, params)
        frame = value.measurements
        note = frame.attrs.get("note", "") if frame is not None else ""
        self.measure_table.show_frame(frame, note, f"{source.name}_objects.csv")
        return summary

    def export_measurements(self, path: Any = None) -> Any:
        return self.measure_table.export_csv(path)
