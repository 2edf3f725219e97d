"""The "Run on folder" dock: count or segment every image of a folder (or glob) into one CSV,
with the engine's batch runner (:func:`napari_nalu_count.infer.batch.run_batch`, the one behind
``nalu-count count|segment``).

Plain parts: :class:`BatchParams` and :func:`check_batch` (the form, checked), :func:`batch_job`
(the event generator the dock's worker drives), :func:`batch_report` (the lines shown after a
run: done, skipped with reasons, cancelled).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, LineEdit

from napari_nalu_count import infer
from napari_nalu_count._widgets import _models, _quantify
from napari_nalu_count._widgets._base import JobDock, Prepared
from napari_nalu_count._widgets._inference import (
    background_combo,
    background_kwargs,
    check_background_mode,
)
from napari_nalu_count._widgets._jobs import Outcome
from napari_nalu_count._widgets._table import TablePanel
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.infer.batch import BatchEvent, BatchResult


@dataclass(frozen=True)
class BatchParams:
    """One batch: ``inputs`` (a folder, file or glob), ``task``, ``model``, the engine options,
    the output ``csv`` and the optional per-image ``maps_dir`` (density maps when counting,
    labels when segmenting), region mask file, pixel size, volume and measurement flags."""

    inputs: str
    task: str
    model: str
    csv: Path
    device: str = "auto"
    diameter: float | str | None = None
    axes: str | None = None
    pixel_size: tuple[float, float] | None = None
    regions: str | None = None
    volume: bool = False
    measure: bool = False
    maps_dir: Path | None = None
    background: str = "auto"  # uneven background: "auto", "on" or "off" (count / segment)

    def batch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``run_batch`` (besides ``paths``, ``progress``, ``cancel``)."""
        measure_csv = None
        if self.measure and self.task == "segment":
            measure_csv = self.csv.with_name(f"{self.csv.stem}_objects.csv")
        maps = {"density_dir" if self.task == "count" else "labels_dir": self.maps_dir}
        options = background_kwargs(self.background)  # empty on auto, the engine's default
        return {
            "task": self.task,
            "model": self.model,
            "device": self.device,
            "diameter": self.diameter,
            "axes": self.axes,
            "pixel_size": self.pixel_size,
            "regions": self.regions,
            "volume": self.volume,
            "measure_csv": measure_csv,
            "csv": self.csv,
            **(maps if self.maps_dir is not None else {}),
            **({"engine_options": options} if options else {}),
        }


def _text(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text in (".", "") else text


def check_batch(
    inputs: str,
    task: str,
    model: str | None,
    csv: str,
    *,
    device: str = "auto",
    diameter: str = "",
    axes: str = "",
    pixel_size: str = "",
    regions: str = "",
    volume: bool = False,
    measure: bool = False,
    maps_dir: str = "",
    background: str | bool = "auto",
) -> BatchParams:
    """:class:`BatchParams` from the form's texts; raises InputError saying what is missing."""
    from napari_nalu_count.infer.batch import expand_inputs

    inputs, csv, regions, maps_dir = map(_text, (inputs, csv, regions, maps_dir))
    if not inputs:
        raise InputError("choose a folder (or type a glob such as /data/*.tif)")
    files, problems = expand_inputs([inputs])
    if not files:
        raise InputError(problems[0] if problems else f"no images in {inputs}")
    if not model:
        raise InputError(f"no {task} model available")
    if not csv:
        raise InputError("choose where to save the table (CSV)")
    if regions and not Path(regions).is_file():
        raise InputError(f"region mask {regions}: no such file")
    ps, _ = _quantify.pixel_size_for(pixel_size, None)
    return BatchParams(
        inputs=inputs,
        task=task,
        model=model,
        csv=Path(csv),
        device=device or "auto",
        diameter=infer.parse_diameter(diameter),
        axes=axes.strip().upper() or None,
        pixel_size=ps,
        regions=regions or None,
        volume=bool(volume),
        measure=bool(measure) and task == "segment",
        maps_dir=Path(maps_dir) if maps_dir else None,
        background=check_background_mode(background),
    )


def batch_job(
    params: BatchParams, cancel: CancelToken | None = None
) -> Generator[BatchEvent, None, BatchResult]:
    """Run the batch (:func:`~napari_nalu_count.infer.batch.batch_events`); returns the
    :class:`~napari_nalu_count.infer.batch.BatchResult` (cancelled ones keep their rows)."""
    from napari_nalu_count.infer.batch import batch_events

    return (yield from batch_events(params.inputs, cancel=cancel, **params.batch_kwargs()))


def batch_report(result: BatchResult) -> list[str]:
    """What the dock says after a run: the summary line, the CSV, each skipped input."""
    lines = [result.message]
    lines += [f"skipped {Path(p).name}: {why}" for p, why in result.skipped]
    return lines


def event_fraction(event: BatchEvent) -> tuple[int, int]:
    """Progress of a batch event in thousandths (files done plus the current file's tiles)."""
    total = max(event.total, 1)
    inside = event.done / event.tiles if event.kind == "tiles" and event.tiles else 0.0
    done = event.index + (1.0 if event.kind in ("file", "skipped") else inside)
    return int(1000 * min(done, total) / total), 1000


class BatchWidget(JobDock):
    """Dock widget: count or segment a folder of images into one table."""

    verb = "Run on folder"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self.inputs_edit = FileEdit(
            label="images", mode="d", tooltip="a folder of TIFF/PNG images, or a glob "
            "such as /data/**/*.tif (type it); unreadable files are listed and skipped",
        )  # fmt: skip
        self.task_combo = ComboBox(label="task", choices=["count", "segment"], value="count")
        self.form.extend([self.inputs_edit, self.task_combo])
        self.add_model_picker("model", "bundled models first, then your fine-tuned ones")
        self.device_combo = ComboBox(label="device", choices=_models.device_names())
        self.diameter_edit = LineEdit(label="cell diameter", tooltip="pixels; blank: found "
                                      "automatically in each image")  # fmt: skip
        self.axes_edit = LineEdit(label="axes", tooltip="blank: each file's own (or guessed)")
        self.pixel_edit = LineEdit(label="pixel size", tooltip="µm per pixel (one number or "
                                   "'y, x'): areas in µm², densities per mm²")  # fmt: skip
        self.regions_edit = FileEdit(label="region mask", mode="r", filter="*.tif*",
                                     tooltip="optional label image (atlas / tissue mask) "
                                     "for every image: counts per region id")  # fmt: skip
        self.volume_check = CheckBox(text="count Z-stacks as volumes")
        self.measure_check = CheckBox(text="measure objects (one more CSV)", value=True)
        self.background_combo = background_combo()
        self.csv_edit = FileEdit(label="save table", mode="w", filter="*.csv")
        self.maps_edit = FileEdit(label="maps folder", mode="d", tooltip="optional: a density "
                                  "map (count) or labels (segment) per image")  # fmt: skip
        for edit, hint in ((self.diameter_edit, "automatic; or pixels"),
                           (self.axes_edit, "each file's own"),
                           (self.pixel_edit, "pixels; or µm per pixel")):  # fmt: skip
            edit.native.setPlaceholderText(hint)
        self.form.extend([self.device_combo, self.diameter_edit, self.axes_edit, self.pixel_edit])
        self.form.extend([self.regions_edit, self.volume_check, self.measure_check])
        self.form.append(self.background_combo)
        self.form.extend([self.csv_edit, self.maps_edit])
        self.result: BatchResult | None = None
        self.table = TablePanel("table (one row per plane, region, volume)")
        self.body.addWidget(self.table)
        self.task_combo.changed.connect(self._on_task)
        self._on_task()
        self.ready()

    def model_task(self) -> str:
        return self.task_combo.value if hasattr(self, "task_combo") else "count"

    def _on_task(self, *args: Any) -> None:
        self.measure_check.visible = self.task_combo.value == "segment"
        self.refresh_models()

    def refresh_layers(self) -> None:  # the form has no layer pickers
        pass

    def params(self) -> BatchParams:
        return check_batch(
            self.inputs_edit.line_edit.value,
            self.task_combo.value,
            self.model_combo.value if self.model_combo is not None else None,
            self.csv_edit.line_edit.value,
            device=self.device_combo.value,
            diameter=self.diameter_edit.value,
            axes=self.axes_edit.value,
            pixel_size=self.pixel_edit.value,
            regions=self.regions_edit.line_edit.value,
            volume=self.volume_check.value,
            measure=self.measure_check.value,
            maps_dir=self.maps_edit.line_edit.value,
            background=self.background_combo.value,
        )

    def prepare(self, cancel: CancelToken | None) -> Prepared:
        params = self.params()
        if cancel is None:
            return iter(()), lambda outcome: None  # type: ignore[return-value]
        self.status_label.setText(f"{params.task}: {params.inputs}...")
        return batch_job(params, cancel), lambda outcome: self.finished(params, outcome)

    def on_event(self, event: Any) -> None:
        if isinstance(event, BatchEvent):
            done, total = event_fraction(event)
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)
            if event.message and event.kind != "tiles":
                self.status_label.setText(event.message)
        else:
            super().on_event(event)

    def finished(self, params: BatchParams, outcome: Outcome) -> None:
        if self.fail(outcome):
            return
        result: BatchResult = outcome.value
        self.result = result
        lines = batch_report(result)
        if result.rows or not result.cancelled:
            lines.insert(1, f"table: {params.csv}")
        self.status_label.setText("\n".join(lines))
        if result.cancelled:
            self.progress_bar.setValue(0)
        frame = result.to_frame()
        shown = frame.copy()
        if "file" in shown:  # the file names fit the dock; the CSV keeps the paths
            shown["file"] = [Path(str(f)).name for f in shown["file"]]
        self.table.show_frame(frame, "", params.csv.name, display=shown)
