"""The "Count cells" dock: density map, detected cells, totals per frame and per region.

Plain parts (no widget needed): :func:`count_job` (the engine generator the dock's worker
drives), :func:`run_count` (the same, driven here), :func:`apply_count_results` (the result
into a viewer); where to annotate next and the proofreading counts are in :mod:`.proofread`.

Human in the loop: the cells layer is editable; as points are added, moved or deleted the
dock shows "model N / corrected M" per frame and per region and Export CSV adds a
``corrected`` column. "uncertainty" shows ``count ± sd`` and the uncertainty map;
"Suggest regions" puts the boxes where the model is least sure in a Shapes layer; "Send to
Fine-tune" hands the image and its corrected cells to the Fine-tune dock.
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
    background_detail,
    corrections_detail,
    diameter_detail,
    island_detail,
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
    region_mask: Any = None  # the regions counted (Shapes masks or a label mask), for proofreading

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
    return CountOutput(result, columns, diameter, source, table, regions)


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
    sd = None
    if result.uncertainty is not None:
        layers.append(
            _viewer.replace_result_layer(
                viewer,
                source,
                "uncertainty",
                "image",
                np.asarray(result.uncertainty, dtype=np.float32),
                name=f"{source.name} uncertainty",
                colormap="viridis",
                blending="additive",
                opacity=0.7,
                visible=False,
                **geometry,
            )
        )
        sd = np.asarray(result.plane_sd, dtype=float)
    details = diameter_detail(output.diameter, output.diameter_source)
    details += island_detail(output.result)
    details += background_detail(output.result)
    details += corrections_detail(output.result)
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
    extra = {} if sd is None else {"± sd": sd}
    extra.update(output.regions)
    if sd is not None:
        cal = (result.uncertainty_info or {}).get("calibration", {})
        details.append(f"± 1 sd: 8 augmented passes, {cal.get('source', 'uncalibrated')}")
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
        sd=sd,
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
        from magicgui.widgets import CheckBox

        super().__init__(napari_viewer, parent)
        self.uncertainty_check = CheckBox(
            text="uncertainty (count ± sd, map)",
            tooltip="8 augmented passes instead of 1 (slower): a calibrated error bar and a "
            "map of where the model is unsure; needed for 'Suggest regions'",
        )
        self.form.append(self.uncertainty_check)
        self.last: tuple[Any, CountOutput, Any] | None = None  # (source, output, cells layer)
        self._build_loop_row()
        self.on_close(self._unwatch_cells)
        self.ready()

    def _build_loop_row(self) -> None:
        from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QSpinBox

        grid = QGridLayout()
        self.n_boxes_spin, self.box_size_spin = QSpinBox(), QSpinBox()
        self.n_boxes_spin.setRange(1, 20)
        self.n_boxes_spin.setValue(3)
        self.box_size_spin.setRange(16, 4096)
        self.box_size_spin.setSingleStep(32)
        self.box_size_spin.setValue(256)
        self.suggest_button = QPushButton("Suggest regions to annotate")
        self.suggest_button.setToolTip("boxes where the model is least sure (needs uncertainty)")
        self.send_button = QPushButton("Send corrected cells to Fine-tune")
        self.send_button.setToolTip("the image and its edited cells layer as annotations")
        grid.addWidget(QLabel("boxes"), 0, 0)
        grid.addWidget(self.n_boxes_spin, 0, 1)
        grid.addWidget(QLabel("size px"), 0, 2)
        grid.addWidget(self.box_size_spin, 0, 3)
        grid.addWidget(self.suggest_button, 1, 0, 1, 4)
        grid.addWidget(self.send_button, 2, 0, 1, 4)
        self.body.addLayout(grid)
        self.suggest_button.clicked.connect(lambda: self.suggest_regions())
        self.send_button.clicked.connect(lambda: self.send_to_finetune())
        self._sync_loop_buttons()

    def _sync_loop_buttons(self) -> None:
        ok = self.last is not None and self.last[0] in self.viewer.layers
        unc = ok and self.last[1].result.uncertainty is not None
        self.suggest_button.setEnabled(bool(unc))
        self.send_button.setEnabled(bool(ok and self.last[2] in self.viewer.layers))

    def params(self) -> RunParams:
        import dataclasses

        from napari_nalu_count.errors import InputError

        params = super().params()
        if self.uncertainty_check.value:
            if params.level is not None:
                raise InputError("uncertainty needs whole planes: not available for pyramids")
            params = dataclasses.replace(params, uncertainty=True)
        return params

    def job_steps(self, source: Any, params: RunParams, cancel: CancelToken):
        from napari.layers import Shapes

        extras = self.quantities(source, params)
        regions = extras["regions"]
        masks = regions if isinstance(self.regions_combo.value, Shapes) else None
        data = _viewer.engine_data(source)
        return count_job(data, params, region_masks=masks, cancel=cancel, **extras)

    def apply(self, source: Any, params: RunParams, value: CountOutput) -> Summary:
        summary = apply_count_results(self.viewer, source, value, params)
        self._unwatch_cells()
        cells = summary.layers[1]
        self.last = (source, value, cells)
        self._base_table = summary.table
        cells.events.data.connect(self._on_cells_edited)
        self._sync_loop_buttons()
        return summary

    # ------------------------------------------------------------------ proofreading
    def _unwatch_cells(self) -> None:
        if self.last is not None:
            try:
                self.last[2].events.data.disconnect(self._on_cells_edited)
            except (TypeError, RuntimeError, ValueError):
                pass

    def _on_cells_edited(self, event: Any = None) -> None:
        try:
            self.recount_corrected()
        except RuntimeError:  # the dock is gone
            pass

    def recount_corrected(self) -> Summary | None:
        """Count the (edited) cells layer per plane and region; show and export both."""
        from napari_nalu_count._widgets import proofread

        summary = self.results.summary
        if self.last is None or summary is None:
            return None
        _, output, cells = self.last
        res = output.result
        stack = tuple(res.plane_counts.shape)
        plane = tuple(np.shape(res.density)[-2:])
        pts = np.asarray(cells.data, dtype=float)
        per_plane = proofread.points_per_plane(pts, stack, plane)
        per_region = proofread.points_per_region(pts, output.region_mask, stack, plane)
        summary.corrected = per_plane
        summary.extra["corrected"] = per_plane
        for rid, values in per_region.items():
            if f"region {rid}" in summary.extra:
                summary.extra[f"corrected {rid}"] = values.reshape(stack)
        if self._base_table is not None:
            summary.table = proofread.corrected_table(
                *self._base_table, per_plane, per_region, summary.sd
            )
        self.results.show_summary(summary)
        frame = output.table.regions if output.table is not None else None
        if frame is not None and per_region and "region" in frame:
            frame = frame.copy()
            frame["corrected"] = [
                per_region.get(int(r), np.zeros(1))[int(f)] if str(r).isdigit() else np.nan
                for f, r in zip(frame["frame"], frame["region"], strict=True)
            ]
            self.region_table.show_frame(frame, "", f"{self.last[0].name}_regions.csv")
        return summary

    # ------------------------------------------------------------------ the loop
    def suggest_regions(self) -> Any:
        """Put the suggested boxes into a Shapes layer bound to the counted image."""
        from napari_nalu_count._widgets import proofread

        if self.last is None or self.last[1].result.uncertainty is None:
            _viewer.notify_warning("tick 'uncertainty' and Count first: boxes come from its map")
            return None
        source, output, _ = self.last
        frame = self.results.current_row() or 0
        try:
            rects = proofread.suggest_boxes(
                output, self.n_boxes_spin.value(), self.box_size_spin.value(), frame
            )
        except Exception as exc:  # noqa: BLE001 - a notification, never a traceback dialog
            _viewer.notify_error(f"Suggest regions: {exc}")
            return None
        geometry = _viewer.result_geometry(source, output.result.axes, output.result.axes)
        layer = _viewer.replace_result_layer(
            self.viewer,
            source,
            "suggested",
            "shapes",
            rects,
            shape_type="rectangle",
            name=f"{source.name} regions to annotate",
            edge_color="#ffd700",
            face_color="transparent",
            edge_width=3,
            **geometry,
        )
        _viewer.notify_info(
            f"{len(rects)} regions where the model is least sure: correct the cells inside "
            "them, then fine-tune on those boxes only"
        )
        return layer

    def send_to_finetune(self) -> Any:
        """Open the Fine-tune dock with this image and its corrected cells layer picked (and
        the suggested boxes, when there are some, as the only annotated area)."""
        if self.last is None or self.last[2] not in self.viewer.layers:
            _viewer.notify_warning("Count first: the corrected cells layer is the annotation")
            return None
        source, _, cells = self.last
        try:
            _, dock = self.viewer.window.add_plugin_dock_widget(
                "napari-nalu-count", "Fine-tune model"
            )
        except Exception as exc:  # noqa: BLE001 - e.g. no window (headless use)
            _viewer.notify_error(f"could not open the Fine-tune dock: {exc}")
            return None
        boxes = _viewer.find_result_layer(self.viewer, source, "suggested")
        dock.use_annotation(source, cells, boxes)
        return dock
