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

from napari_nalu_count import infer
from napari_nalu_count._widgets import _quantify, _viewer
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
    table: _quantify.Quantified | None = None  # the batch table: units, regions, volumes

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
    regions: Any = None,
    pixel_size: Any = None,
    how: str = "none",
    file: str = "image",
) -> Generator[Event, None, CountOutput]:
    """Count cells in ``image`` (``infer.count_events``) and inside ``region_masks`` (``(k, Y,
    X)`` booleans, :func:`napari_nalu_count.infer.region_counts`). The table
    (:func:`._quantify.quantify`) has areas and densities (µm² and cells per mm² with
    ``pixel_size``, else pixels), one row per region of ``regions`` (a label mask or boolean
    masks: the density integral inside each) and the volume rows of ``params.volume``."""
    result = yield from infer.count_events(
        image, params.model, cancel=cancel, **params.engine_kwargs()
    )
    columns = {}
    if region_masks is not None and len(region_masks):
        columns = infer.region_counts(result.density, region_masks)
    diameter, source = result_diameter(result, params.model)
    table = _quantify.quantify(
        file, result, "count", regions=regions, pixel_size=pixel_size, how=how
    )
    return CountOutput(result, columns, diameter, source, table)


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
    geometry = _viewer.level_geometry(geometry, result.level_scale)
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
    layers = [density, cells]
    details = diameter_detail(output.diameter, output.diameter_source)
    if result.volume_points is not None:
        vpoints = np.asarray(result.volume_points, dtype=float).reshape(-1, points.shape[1])
        layers.append(
            _viewer.replace_result_layer(
                viewer,
                source,
                "cells3d",
                "points",
                vpoints,
                name=f"{source.name} cells (3-D)",
                size=_point_size(output.diameter) * 1.3,
                face_color="transparent",
                border_color="#ff3df5",
                border_width=0.15,
                border_width_is_relative=True,
                **geometry,
            )
        )
        details.insert(0, volume_detail(result.volume_count, "cells"))
    elif result.level is not None:
        details.append(f"pyramid level {result.level} counted")
    _viewer.record_result_info(
        layers, diameter=output.diameter, diameter_source=output.diameter_source
    )
    table = output.table
    extra = dict(output.regions)
    if table is not None:
        extra.update(_quantify.plane_columns(table))
        details.append(table.note)
    return Summary(
        name=source.name,
        file=_viewer.layer_file_label(source),
        counts=output.counts,
        unit="cells",
        extra=extra,
        details=details,
        layers=tuple(layers),
        frame_layer=density,
        table=table.export if table is not None else None,
    )


def volume_detail(volume_count: Any, unit: str) -> str:
    """The per-volume count line (the per-plane table counts a nucleus in every plane)."""
    counts = np.atleast_1d(np.asarray(volume_count, dtype=float))
    text = ", ".join(f"{v:.0f}" for v in counts)
    where = "per volume" if counts.size > 1 else "in the volume"
    return f"{text} {unit} {where} (3-D; the table counts per plane; the CSV's kind column)"


def _point_size(diameter: float | None) -> float:
    return float(np.clip(diameter * 0.6, 4, 40)) if diameter else 8.0


class CountWidget(InferenceDock):
    """Dock widget: count cells in an image layer with a counting model."""

    task = "count"
    verb = "Count"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self.ready()

    def job_steps(self, source: Any, params: RunParams, cancel: CancelToken):
        from napari.layers import Shapes

        extras = self.quantities(source, params)
        regions = extras["regions"]
        masks = regions if isinstance(self.regions_combo.value, Shapes) else None
        data = _viewer.engine_data(source)
        return count_job(data, params, region_masks=masks, cancel=cancel, **extras)

    def apply(self, source: Any, params: RunParams, value: CountOutput) -> Summary:
        return apply_count_results(self.viewer, source, value, params)
