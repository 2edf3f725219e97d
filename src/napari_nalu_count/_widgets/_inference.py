"""What the Count and Segment docks share: the form (image, model, device, nucleus diameter,
axes, channel), its check through the engine's own rules, and a run bound to its source layer.

:class:`RunParams` and :func:`check_run` are plain (no widget): they hold and check what an
``infer.count`` / ``infer.segment`` call gets.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import ComboBox, LineEdit

from napari_nalu_count import infer
from napari_nalu_count._widgets import _models, _viewer
from napari_nalu_count._widgets._base import JobDock, Prepared
from napari_nalu_count._widgets._jobs import Outcome
from napari_nalu_count._widgets._results import ResultsPanel, Summary
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.events import Event

#: what the channel picker offers besides the indices: ``None`` lets the model's card decide
CHANNEL_LABELS = {None: "automatic (the model's rule)", "mean": "mean", "max": "max"}


@dataclass(frozen=True)
class RunParams:
    """The arguments of one ``infer.count`` / ``infer.segment`` call besides the image."""

    model: str
    device: str = "auto"
    diameter: float | str | None = None
    axes: str | None = None
    channel: int | str | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "axes": self.axes,
            "diameter": self.diameter,
            "device": self.device,
            "channel": self.channel,
        }


def check_run(
    layer: Any,
    model: str | None,
    *,
    task: str,
    device: str = "auto",
    diameter: str = "",
    axes: str = "",
    channel: int | str | None = None,
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
    )
    make_plan(layer.data, params.axes, params.channel, input_rule(_models.model_card(model)))
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
        self.results = ResultsPanel(napari_viewer)
        self.body.addWidget(self.results)
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

    def _channel_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        layer, axes = self.image_combo.value, self.axes_edit.value.strip().upper()
        if layer is None or "C" not in axes or len(axes) != layer.data.ndim:
            return [(CHANNEL_LABELS[None], None)]
        n = int(layer.data.shape[axes.index("C")])
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
                guess = infer.guess_axes(layer.data.shape, bool(layer.rgb), labels)
                self.axes_edit.value = self._axes_memory.get(key, guess)
        stack = layer is not None and (layer.data.ndim > 2 or bool(layer.rgb))
        self.axes_edit.visible = bool(stack)
        self._on_axes_edited()

    def _on_axes_edited(self, *args: Any) -> None:
        layer = self.image_combo.value
        if layer is not None and layer is self._axes_layer:
            self._axes_memory[str(layer.unique_id)] = self.axes_edit.value
        self.channel_combo.reset_choices()
        self.channel_needed = len(self.channel_combo.choices) > 1
        self.channel_combo.visible = self.channel_needed

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
        )

    def prepare(self, cancel: CancelToken | None) -> Prepared:
        params = self.params()
        source = self.image_combo.value
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

    # ------------------------------------------------------------------ results (shortcuts)
    def export_csv(self, path: Any = None) -> Any:
        return self.results.export_csv(path)
