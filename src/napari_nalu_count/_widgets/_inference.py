"""What the Count and Segment docks share: the form (image, model, device, nucleus diameter,
axes, channel), its check through the engine's own rules, and a run bound to its source layer.

:class:`RunParams` and :func:`check_run` are plain (no widget): they hold and check what an
``infer.count`` / ``infer.segment`` call gets.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, LineEdit

from napari_nalu_count import infer
from napari_nalu_count._widgets import _models, _quantify, _viewer
from napari_nalu_count._widgets._base import JobDock, Prepared
from napari_nalu_count._widgets._jobs import Outcome
from napari_nalu_count._widgets._results import ResultsPanel, Summary
from napari_nalu_count._widgets._table import TablePanel
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.events import Event

#: what the channel picker offers besides the indices: ``None`` lets the model's card decide
CHANNEL_LABELS = {None: "automatic (the model's rule)", "mean": "mean", "max": "max"}

#: the background picker (Count, Segment, Run on folder): its labels and the engine's
#: ``background=`` for each mode
BACKGROUND_MODES = {
    "auto": ("flatten when uneven (auto)", "auto"),
    "on": ("always flatten", True),
    "off": ("never flatten", False),
}
BACKGROUND_TOOLTIP = (
    "a smooth uneven background (haze, uneven illumination, vignetting) hides the nuclei on "
    "its dim side. auto: subtract it where it is strong and smooth (the docks say when); "
    "always: every image; never: leave it. 'always' also counts the out-of-focus nuclei of "
    "dense tissue"
)


def background_kwargs(mode: str) -> dict[str, Any]:
    """The engine's ``background=`` for a picker ``mode``; empty for ``"auto"`` (its default)."""
    return {} if mode == "auto" else {"background": BACKGROUND_MODES[mode][1]}


def check_background_mode(mode: Any) -> str:
    """``"auto"``, ``"on"`` or ``"off"`` (True / False are ``"on"`` / ``"off"``)."""
    if mode is True or mode is False:
        return "on" if mode else "off"
    if mode not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {', '.join(BACKGROUND_MODES)}, got {mode!r}")
    return str(mode)


def background_combo(**kwargs: Any) -> ComboBox:
    """The background picker, on ``auto``."""
    return ComboBox(
        label="background",
        choices=[(label, mode) for mode, (label, _v) in BACKGROUND_MODES.items()],
        value="auto",
        tooltip=BACKGROUND_TOOLTIP,
        **kwargs,
    )


@dataclass(frozen=True)
class RunParams:
    """The arguments of one ``infer.count`` / ``infer.segment`` call besides the image."""

    model: str
    device: str = "auto"
    diameter: float | str | None = None
    axes: str | None = None
    channel: int | str | None = None
    level: int | None = None  # pyramid level of a multiscale layer (None: not multiscale)
    volume: bool = False  # also count each Z-stack as volumes (3-D cells / linked objects)
    uncertainty: bool = False  # counting: count_sd and the uncertainty map (8 passes)
    background: str = "auto"  # uneven background: "auto", "on" or "off" (BACKGROUND_MODES)

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "axes": self.axes,
            "diameter": self.diameter,
            "device": self.device,
            "channel": self.channel,
        }
        if self.level is not None:
            kwargs["level"] = self.level
        if self.volume:
            kwargs["volume"] = True
        if self.uncertainty:
            kwargs["uncertainty"] = True
        kwargs.update(background_kwargs(self.background))
        return kwargs


def check_run(
    layer: Any,
    model: str | None,
    *,
    task: str,
    device: str = "auto",
    diameter: str = "",
    axes: str = "",
    channel: int | str | None = None,
    level: int | None = None,
    volume: bool = False,
    background: str | bool = "auto",
) -> RunParams:
    """:class:`RunParams` for running ``model`` on ``layer``, checked with the engine's rules
    (diameter, axes, channel against the model's input rule); raises InputError saying why."""
    from napari_nalu_count.infer.axes import input_rule, make_plan

    _viewer.check_image_layer(layer)
    if not model:
        raise InputError(f"no {task} model available; fine-tune or install one")
    params = RunParams(
        model=model,
        device=device or "auto",
        diameter=infer.parse_diameter(diameter),
        axes=axes.strip().upper() or None,
        channel=channel,
        level=level if _viewer.n_levels(layer) > 1 else None,
        volume=bool(volume),
        background=check_background_mode(background),
    )
    data = _viewer.level0(layer)
    make_plan(data, params.axes, params.channel, input_rule(_models.model_card(model)))
    if params.volume:
        axes_used = params.axes or infer.guess_axes(data.shape, bool(layer.rgb), None)
        if "Z" not in axes_used:
            raise InputError("'count as volume' needs a Z axis: set the axes (e.g. ZYX)")
    return params


def result_diameter(result: Any, model: str) -> tuple[float | None, str]:
    """The nucleus diameter a run used (image pixels) and where it came from: the engine's
    (``"given"`` / ``"estimated"``), else the model's own resolution (``"model"``)."""
    source = str(getattr(result, "diameter_source", "model"))
    if getattr(result, "diameter", None):
        return float(result.diameter), source
    return infer.native_diameter(_models.model_card(model)), "model"


def diameter_detail(diameter: float | None, source: str) -> list[str]:
    if not diameter:
        return []
    how = {"estimated": "found automatically", "given": "as given"}.get(source, "the model's own")
    return [f"nucleus diameter {float(diameter):.1f} px ({how})"]


def island_detail(result: Any) -> list[str]:
    """The result's line saying the size came from round nuclei outlines (the engine's island
    check replaced the estimate: large nuclei whose texture the first estimate read as cells)."""
    islands = (getattr(result, "size_estimate", None) or {}).get("islands") or {}
    if not islands.get("used"):
        return []
    return [
        f"size from {int(islands['islands'])} round nucleus outlines (textured nuclei: counted "
        f"{islands['coarsen']:g}x coarser)"
    ]


def background_detail(result: Any) -> list[str]:
    """The result's line saying that an uneven background was subtracted as asked (none when
    not, and none when ``"auto"`` found it: the corrections line says so)."""
    flattened = getattr(result, "background", None)
    if not flattened or (getattr(result, "corrections", None) or {}).get("uneven_background"):
        return []
    return [f"background flattened ({flattened:g} diameters)"]


def corrections_detail(result: Any) -> list[str]:
    """The result's line saying what the normalisation corrected in the image (none when
    nothing): hot pixels clamped, bright artefacts left out of the brightness range."""
    from napari_nalu_count.infer.engine import describe_corrections, result_pixels

    line = describe_corrections(getattr(result, "corrections", None), result_pixels(result))
    return [line] if line else []


class InferenceDock(JobDock):
    """Base of the Count and Segment docks: subclasses set ``task``/``verb``, add rows to the
    form, and implement :meth:`job` (the event generator) and :meth:`apply` (the result into
    the viewer, as a :class:`Summary`)."""

    task = "count"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self._axes_layer: Any = None  # the layer whose axes the field shows
        self._axes_memory: dict[str, str] = {}  # layer id -> the axes the user typed
        self.channel_needed = False  # the image has a C axis: the channel picker is shown
        self.volume_allowed = False  # the axes have a Z: "count as volume" is offered
        self.image_combo = ComboBox(
            label="image", choices=self._image_choices, tooltip="results are bound to this layer"
        )
        self.form.append(self.image_combo)
        self.add_model_picker("model", "bundled models first, then your fine-tuned ones")
        self.device_combo = ComboBox(label="device", choices=_models.device_names())
        self.diameter_edit = LineEdit(
            label="cell diameter",
            tooltip="typical nucleus diameter in pixels of this image; blank finds it "
            "automatically (the result shows the diameter used); a number you type always wins",
        )
        self.diameter_edit.native.setPlaceholderText("automatic; or pixels")
        self.axes_edit = LineEdit(
            label="axes", tooltip="one letter per data axis: T time, Z depth, C channel, Y, X"
        )
        self.channel_combo = ComboBox(
            label="channel",
            choices=self._channel_choices,
            tooltip="which channel to count in (automatic: the model's rule; RGB: max colour)",
        )
        self.form.extend([self.device_combo, self.diameter_edit, self.axes_edit])
        self.form.append(self.channel_combo)
        self.level_combo = ComboBox(
            label="level",
            choices=self._level_choices,
            tooltip="multiscale image: the resolution level to run on (0 = full resolution, "
            "read lazily in blocks); results lie over the image",
        )
        self.pixel_edit = LineEdit(
            label="pixel size",
            tooltip="micrometres per pixel (one number, or 'y, x'); blank: from the layer's "
            "scale. Areas are then in µm² and densities in cells per mm²; without: pixels",
        )
        self.pixel_edit.native.setPlaceholderText("from the layer's scale; or µm")
        self.regions_combo = ComboBox(
            label="regions",
            choices=self._region_choices,
            tooltip="optional: a Shapes layer (each shape a region) or a Labels layer (an "
            "atlas or tissue mask, each id a region): count, area and density per region",
        )
        self.volume_check = CheckBox(
            text="count as volume",
            tooltip="Z-stacks: also detect each nucleus once in 3-D (one count per volume and "
            "a 3-D layer), beside the per-plane counts",
        )
        self.background_combo = background_combo()
        self.form.extend([self.level_combo, self.pixel_edit, self.regions_combo])
        self.form.extend([self.volume_check, self.background_combo])
        self.results = ResultsPanel(napari_viewer)
        self.region_table = TablePanel("counts per region")
        self.body.addWidget(self.results)
        self.body.addWidget(self.region_table)
        self.on_close(self.results.disconnect_viewer)
        self.image_combo.changed.connect(self._on_image_changed)
        self.axes_edit.changed.connect(self._on_axes_edited)
        self._on_image_changed()

    # ------------------------------------------------------------------ pickers
    def model_task(self) -> str:
        return self.task

    def _image_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return _viewer.layers_of(self.viewer, Image)

    def _region_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Labels, Shapes

        own = [layer for layer in self.results.summary.layers] if self._has_summary() else []
        choices = _viewer.layers_of(self.viewer, (Shapes, Labels))
        return [("(none)", None), *[c for c in choices if not any(c[1] is o for o in own)]]

    def _has_summary(self) -> bool:
        return getattr(self, "results", None) is not None and self.results.summary is not None

    def _level_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        layer = self.image_combo.value
        if layer is None or _viewer.n_levels(layer) < 2:
            return [("0", 0)]
        return [
            (f"{k} ({' x '.join(str(n) for n in level.shape[-2:])})", k)
            for k, level in enumerate(layer.data)
        ]

    def _channel_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        layer, axes = self.image_combo.value, self.axes_edit.value.strip().upper()
        data = _viewer.level0(layer) if layer is not None else None
        if layer is None or "C" not in axes or len(axes) != data.ndim:
            return [(CHANNEL_LABELS[None], None)]
        n = int(data.shape[axes.index("C")])
        labels = {**CHANNEL_LABELS, "luminance": "luminance"}
        return [(CHANNEL_LABELS[None], None)] + [
            (f"channel {c}" if isinstance(c, int) else labels[c], c)
            for c in infer.channel_choices(n)
        ]

    def _on_image_changed(self, *args: Any) -> None:
        """A different image: show its axes (as typed before for that layer, else a guess).
        The same layer again (a refresh re-emitting the picker) leaves the field alone."""
        layer = self.image_combo.value
        if layer is not self._axes_layer:
            self._axes_layer = layer
            if layer is not None:
                key = str(layer.unique_id)
                labels = tuple(getattr(layer, "axis_labels", ()) or ()) or None
                shape = _viewer.level0(layer).shape
                guess = infer.guess_axes(shape, bool(layer.rgb), labels)
                self.axes_edit.value = self._axes_memory.get(key, guess)
        stack = layer is not None and (layer.ndim > 2 or bool(layer.rgb))
        self.axes_edit.visible = bool(stack)
        self.level_combo.reset_choices()
        self.level_combo.visible = layer is not None and _viewer.n_levels(layer) > 1
        self._on_axes_edited()

    def _on_axes_edited(self, *args: Any) -> None:
        layer = self.image_combo.value
        if layer is not None and layer is self._axes_layer:
            self._axes_memory[str(layer.unique_id)] = self.axes_edit.value
        self.channel_combo.reset_choices()
        self.channel_needed = len(self.channel_combo.choices) > 1
        self.channel_combo.visible = self.channel_needed
        self.volume_allowed = "Z" in self.axes_edit.value.strip().upper()
        self.volume_check.visible = self.volume_allowed

    # ------------------------------------------------------------------ running
    def params(self) -> RunParams:
        """The run's parameters, checked; raises InputError with the reason."""
        return check_run(
            self.image_combo.value,
            self.model_combo.value if self.model_combo is not None else None,
            task=self.task,
            device=self.device_combo.value,
            diameter=self.diameter_edit.value,
            axes=self.axes_edit.value,
            channel=self.channel_combo.value if self.channel_needed else None,
            level=self.level_combo.value,
            volume=self.volume_check.value and self.volume_allowed,
            background=self.background_combo.value,
        )

    def quantities(self, source: Any, params: RunParams) -> dict[str, Any]:
        """What the job needs besides the image, read on the main thread: the pixel size (and
        where it came from), the region mask, the CSV ``file`` label."""
        pixel_size, how = _quantify.pixel_size_for(self.pixel_edit.value, source, params.axes)
        shape = _viewer.level0(source).shape
        plane = shape[:-1] if source.rgb else shape
        axes = (params.axes or "").replace("C", "")
        if len(axes) == len(plane) and "Y" in axes and "X" in axes:
            plane_yx = (plane[axes.index("Y")], plane[axes.index("X")])
        else:
            plane_yx = tuple(plane[-2:])
        if params.level:  # a coarser level: its planes, its pixels
            level = source.data[params.level].shape
            factor = [s / t for s, t in zip(shape, level, strict=False)]
            plane_yx = tuple(int(round(n / f)) for n, f in zip(plane_yx, factor[-2:], strict=False))
            if pixel_size is not None:
                pixel_size = (pixel_size[0] * factor[-2], pixel_size[1] * factor[-1])
        regions = _quantify.region_mask(self.regions_combo.value, source, plane_yx)
        return {
            "pixel_size": pixel_size,
            "how": how,
            "regions": regions,
            "file": _viewer.layer_file_label(source),
        }

    def prepare(self, cancel: CancelToken | None) -> Prepared:
        params = self.params()
        source = self.image_combo.value
        _quantify.pixel_size_for(self.pixel_edit.value, source, params.axes)  # checked here
        if cancel is None:
            return iter(()), lambda outcome: None  # type: ignore[return-value]
        steps = self.job_steps(source, params, cancel)
        self.status_label.setText(f"{self.verb}ing '{source.name}'...")
        return steps, lambda outcome: self.finished(source, params, outcome)

    def job_steps(
        self, source: Any, params: RunParams, cancel: CancelToken
    ) -> Generator[Event, None, Any]:
        raise NotImplementedError

    def apply(self, source: Any, params: RunParams, value: Any) -> Summary:
        raise NotImplementedError

    def finished(self, source: Any, params: RunParams, outcome: Outcome) -> None:
        if outcome.cancelled:
            outcome = Outcome(cancelled=True)  # a result finished after Cancel is not shown
        if self.fail(outcome):
            return
        if source not in self.viewer.layers:
            self.status_label.setText("source layer was removed; result discarded")
            _viewer.notify_warning(f"'{source.name}' was removed during the run; result discarded")
            return
        summary = self.apply(source, params, outcome.value)
        self.status_label.setText(f"done: '{source.name}' with {params.model}")
        self.results.show_summary(summary)
        table = getattr(outcome.value, "table", None)
        frame = table.regions if table is not None else None
        self.region_table.show_frame(frame, "", f"{source.name}_regions.csv")  # units: above

    # ------------------------------------------------------------------ results (shortcuts)
    def export_csv(self, path: Any = None) -> Any:
        return self.results.export_csv(path)
