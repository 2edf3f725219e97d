"""The "Count cells" dock: density map, detected cells, totals per frame and per region.

Plain parts (no widget needed): :func:`count_job` (the engine generator the dock's worker
drives), :func:`run_count` (the same, driven here), :func:`apply_count_results` (the result
into a viewer).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox

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
class CountOutput:
    """One count run: the engine's result, per-region counts, the diameter used."""

    result: infer.CountResult
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    diameter: float | None = None  # nucleus diameter in image pixels (see result_diameter)
    diameter_source: str = "model"

    @property
    def counts(self) -> np.ndarray:
        """Per plane, shaped like the stack (0-d for a 2-D image)."""
        return self.result.plane_counts

    @property
    def total(self) -> float:
        return float(np.sum(self.counts))


def count_job(
    image: Any,
    params: RunParams,
    *,
    region_masks: np.ndarray | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Event, None, CountOutput]:
    """Count cells in ``image`` (``infer.count_events``) and inside ``region_masks`` (``(k, Y,
    X)`` booleans, :func:`napari_nalu_count.infer.region_counts`)."""
    result = yield from infer.count_events(
        image, params.model, cancel=cancel, **params.engine_kwargs()
    )
    regions = {}
    if region_masks is not None and len(region_masks):
        regions = infer.region_counts(result.density, region_masks)
    diameter, source = result_diameter(result, params.model)
    return CountOutput(result, regions, diameter, source)


def run_count(
    image: Any,
    params: RunParams,
    *,
    region_masks: np.ndarray | None = None,
    progress: Callable[[Event], Any] | None = None,
    cancel: CancelToken | None = None,
) -> CountOutput:
    """:func:`count_job` run to its end; ``progress`` gets its events."""
    return drive(count_job(image, params, region_masks=region_masks, cancel=cancel), progress)


def apply_count_results(
    viewer: Any, source: Any, output: CountOutput, params: RunParams
) -> Summary:
    """Add (or replace) the density and cells layers of ``source``; return what to show."""
    result = output.result
    geometry = _viewer.result_geometry(source, params.axes or result.axes, result.axes)
    density = _viewer.replace_result_layer(
        viewer,
        source,
        "density",
        "image",
        np.asarray(result.density, dtype=np.float32),
        name=f"{source.name} density",
        colormap="inferno",
        blending="additive",
        opacity=0.8,
        **geometry,
    )
    points = np.asarray(result.points, dtype=float).reshape(-1, np.ndim(result.density))
    cells = _viewer.replace_result_layer(
        viewer,
        source,
        "cells",
        "points",
        points,
        name=f"{source.name} cells",
        size=_point_size(output.diameter),
        face_color="transparent",
        border_color="#39ff14",
        border_width=0.15,
        border_width_is_relative=True,
        **geometry,
    )
    _viewer.record_result_info(
        (density, cells), diameter=output.diameter, diameter_source=output.diameter_source
    )
    return Summary(
        name=source.name,
        file=_viewer.layer_file_label(source),
        counts=output.counts,
        unit="cells",
        extra=output.regions,
        details=diameter_detail(output.diameter, output.diameter_source),
        layers=(density, cells),
        frame_layer=density,
    )


def _point_size(diameter: float | None) -> float:
    return float(np.clip(diameter * 0.6, 4, 40)) if diameter else 8.0


class CountWidget(InferenceDock):
    """Dock widget: count cells in an image layer with a counting model."""

    task = "count"
    verb = "Count"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self.regions_combo = ComboBox(
            label="regions",
            choices=self._region_choices,
            tooltip="optional Shapes layer: the table shows the count inside each shape",
        )
        self.form.append(self.regions_combo)
        self.ready()

    def _region_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        return [("(none)", None), *_viewer.layers_of(self.viewer, Shapes)]

    def job_steps(self, source: Any, params: RunParams, cancel: CancelToken):
        shapes = self.regions_combo.value
        masks = None
        if shapes is not None and shapes in self.viewer.layers:
            plane = source.data.shape[:-1] if source.rgb else source.data.shape
            masks = _viewer.shape_masks(shapes, source, tuple(plane[-2:]))
        return count_job(source.data, params, region_masks=masks, cancel=cancel)

    def apply(self, source: Any, params: RunParams, value: CountOutput) -> Summary:
        return apply_count_results(self.viewer, source, value, params)
