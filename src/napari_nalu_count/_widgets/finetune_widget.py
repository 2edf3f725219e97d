"""The "Fine-tune model" dock: train a copy of a model on the layers you annotated.

Plain parts (no widget needed): :class:`FineTuneParams` (the form's values) and
:func:`finetune_job` / :func:`run_finetune` (``train.fine_tune_events``: optional B/X tuning
from the start model, training, before/after measured as the Count and Segment docks run);
the samples come from :func:`~.finetune_samples.collect_samples`, the curves from
:class:`~.finetune_log.TrainingLog`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtWidgets import QLabel

from napari_nalu_count import models
from napari_nalu_count._widgets import _models, _viewer
from napari_nalu_count._widgets._base import JobDock, Prepared
from napari_nalu_count._widgets._jobs import Outcome, error_message
from napari_nalu_count._widgets.finetune_log import KEY_METRIC, TrainingLog, summary_html
from napari_nalu_count._widgets.finetune_pairs import PairList
from napari_nalu_count._widgets.finetune_samples import collect_samples
from napari_nalu_count._widgets.loss_plot import LossPlot
from napari_nalu_count.errors import CancelToken, InputError, TrainingDiverged
from napari_nalu_count.events import Event, drive


@dataclass(frozen=True)
class FineTuneParams:
    """Everything :func:`finetune_job` needs besides the samples."""

    start_model: str
    name: str
    task: str
    epochs: int = 20
    steps_per_epoch: int = 20
    lr: float = 3e-4
    patch_size: int = 128
    fre: dict[str, Any] | None = None  # None: no FRE
    tune: bool = False
    tune_trials: int = 6
    tune_epochs: int = 2
    diameter: float | str | None = None  # pixels of the user's images; "auto": estimated
    device: str = "auto"
    holdout: float = 0.25
    overwrite: bool = False  # replace an existing user model of that name

    def train_config(self, start_card: dict[str, Any] | None = None) -> Any:
        """``fine_tune``'s own schedule (early stopping, the start model's density sigma; see
        ``train.finetune.default_config``) with the dock's epochs, steps, learning rate, patch
        size, FRE and device."""
        from napari_nalu_count.infer.device import resolve_device
        from napari_nalu_count.train.finetune import default_config

        cfg = default_config(start_card or {})
        cfg.epochs = self.epochs
        cfg.steps_per_epoch = self.steps_per_epoch
        cfg.lr = self.lr
        cfg.patch_size = self.patch_size
        cfg.fre = self.fre
        cfg.device = str(resolve_device(self.device))
        return cfg


def finetune_job(
    samples: list[Any], params: FineTuneParams, *, cancel: CancelToken | None = None
) -> Generator[Event, None, Any]:
    """``train.fine_tune_events`` with the dock's parameters; returns the FineTuneResult."""
    from napari_nalu_count.train import TuneSettings, fine_tune_events

    tune = TuneSettings(params.tune_trials, params.tune_epochs) if params.tune else None
    return (
        yield from fine_tune_events(
            params.start_model,
            samples,
            name=params.name,
            task=params.task,
            cfg=params.train_config(_models.model_card(params.start_model)),
            cancel=cancel,
            holdout=params.holdout,
            use_fre=params.fre is not None,
            diameter=params.diameter,
            overwrite=params.overwrite,
            tune=tune,
        )
    )


def run_finetune(
    samples: list[Any],
    params: FineTuneParams,
    *,
    progress: Callable[[Event], Any] | None = None,
    cancel: CancelToken | None = None,
) -> Any:
    """:func:`finetune_job` run to its end; ``progress`` gets its events."""
    return drive(finetune_job(samples, params, cancel=cancel), progress)


def fre_defaults(card: dict[str, Any] | None) -> tuple[bool, int, float]:
    """(enabled, B, X) for the FRE fields: the starting model's own FRE, else the engine's
    fine-tuning default (a quarter of the bottleneck channels, X = 2)."""
    from napari_nalu_count.train.finetune import default_fre

    config = (card or {}).get("config") or {}
    fre = config.get("fre") or (default_fre(config) if config.get("widths") else None)
    if not fre:
        return True, 8, 2.0
    return True, int(fre["B"]), float(fre["X"])


def bottleneck_width(card: dict[str, Any] | None) -> int:
    """Channels at the bottleneck of a model (the upper limit of FRE's B)."""
    widths = ((card or {}).get("config") or {}).get("widths") or []
    return int(widths[-1]) if widths else 4096


class FineTuneWidget(JobDock):
    """Dock widget: fine-tune a bundled or user model on annotated layers."""

    verb = "Fine-tune"
    cancel_text, cancelling_text = "Stop", "stopping (keeping the best model so far)..."

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        super().__init__(napari_viewer, parent)
        self._task = "count"
        self._defaults_for: str | None = None  # the start model whose defaults the form shows
        self._auto_name = ""  # the name this dock filled in (replaced when taken)
        self._log = TrainingLog()
        self._last_draw = 0.0
        self.result: Any = None
        self.cancel_button.setToolTip("stop now and keep the best model so far")

        self.pairs = PairList(napari_viewer, self._on_pairs_changed)
        self.layout().insertWidget(0, QLabel("images and their annotations"))
        self.layout().insertWidget(1, self.pairs)
        self.on_close(self.pairs.watch.close)
        self.add_model_picker("start from", "the model to adapt (bundled or your own)")
        self.device_combo = ComboBox(label="device", choices=_models.device_names())
        self.epochs_spin = SpinBox(label="epochs", min=1, max=1000, value=FineTuneParams.epochs)
        self.steps_spin = SpinBox(
            label="steps / epoch", min=1, max=10000, value=FineTuneParams.steps_per_epoch
        )
        self.lr_edit = LineEdit(label="learning rate", value="3e-4")
        self.patch_spin = SpinBox(
            label="patch size", min=16, max=1024, step=16, value=FineTuneParams.patch_size
        )
        self.holdout_spin = FloatSpinBox(
            label="held out",
            min=0.1,
            max=0.9,
            step=0.05,
            value=FineTuneParams.holdout,
            tooltip="fraction of the images kept out of training to measure before/after "
            "(of 5 images: 0.25 holds out 1, 0.4 holds out 2; one image: a strip of it). "
            "More held out: a steadier figure, less to train on",
        )
        self.fre_check = CheckBox(text="FRE (Feature Random Enhancement)", value=True)
        self.fre_b_spin = SpinBox(
            label="B", min=0, max=4096, value=8, tooltip="bottleneck channels scaled by X"
        )
        self.fre_x_spin = FloatSpinBox(
            label="X", min=0.0, max=1000.0, step=0.5, value=2.0, tooltip="the factor"
        )
        fre_row = Container(layout="horizontal", widgets=[self.fre_b_spin, self.fre_x_spin])
        fre_row.margins = (0, 0, 0, 0)
        fre_row.label = ""
        self.tune_check = CheckBox(
            text="tune B/X first", tooltip="a short TPE search from the start model"
        )
        self.trials_spin = SpinBox(label="trials", min=1, max=100, value=6)
        self.diameter_edit = LineEdit(
            label="cell diameter",
            tooltip="typical nucleus diameter in your images (pixels); blank: measured from the "
            "masks or found by the start model; 'estimate': estimated from the images",
        )
        self.diameter_edit.native.setPlaceholderText("automatic; or pixels")
        self.name_edit = LineEdit(label="new name")
        self.name_edit.native.setPlaceholderText("name of the new model")
        self.replace_check = CheckBox(
            text="replace a model of that name", tooltip="off: never overwrite one"
        )
        self.form.extend(
            [
                self.device_combo,
                self.epochs_spin,
                self.steps_spin,
                self.lr_edit,
                self.patch_spin,
                self.holdout_spin,
            ]
        )
        self.form.extend([self.fre_check, fre_row, self.tune_check, self.trials_spin])
        self.boxes_combo = ComboBox(
            label="only inside",
            choices=self._box_choices,
            tooltip="a Shapes layer (e.g. the Count dock's suggested regions): the annotations "
            "are complete inside its boxes only, and training looks only there",
        )
        self.form.extend([self.diameter_edit, self.boxes_combo, self.name_edit])
        self.form.append(self.replace_check)
        self.plot = LossPlot(napari_viewer)
        self.on_close(self.plot.disconnect_viewer)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.body.addWidget(self.plot)
        self.body.addWidget(self.result_label)

        self.model_combo.changed.connect(self._on_model_changed)
        self.fre_check.changed.connect(self._sync_fre)
        self.tune_check.changed.connect(self._sync_fre)
        self.pairs.add_row()
        self._on_model_changed()
        self.ready()

    # ------------------------------------------------------------------ pairs and models
    def model_task(self) -> str:
        return self._task

    def refresh_layers(self) -> None:
        self.pairs.refresh()
        self.boxes_combo.reset_choices()

    def _box_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        return [("(whole images)", None), *_viewer.layers_of(self.viewer, Shapes)]

    def use_annotation(self, image: Any, annotation: Any, boxes: Any = None) -> None:
        """Pick ``image`` and its ``annotation`` (e.g. the Count dock's corrected cells) in the
        first row (a new row when the first one is taken by another image), and ``boxes``."""
        self.refresh_layers()
        row = self.pairs.rows[0]
        if row.image_combo.value is not image and row.annotation_combo.value is not None:
            row = self.pairs.add_row()
        row.image_combo.value = image
        row.annotation_combo.value = annotation
        if boxes is not None:
            self.boxes_combo.value = boxes
        self.pairs.refresh()

    def _on_pairs_changed(self, *args: Any) -> None:
        from napari.layers import Labels

        annotations = [a for _, a in self.pairs.pairs() if a is not None]
        task = "segment" if annotations and isinstance(annotations[0], Labels) else "count"
        if task != self._task:
            self._task = task
            self.refresh_models()
        self.validate()

    def _on_model_changed(self, *args: Any) -> None:
        """Another start model: show its FRE defaults and a free name. A refresh that keeps
        the same model (a re-emitted picker) leaves the user's settings alone."""
        name = self.model_combo.value
        if name == self._defaults_for:
            return
        self._defaults_for = name
        card = _models.model_card(name) if name else None
        enabled, b, x = fre_defaults(card)
        self.fre_b_spin.max = bottleneck_width(card)
        self.fre_check.value, self.fre_b_spin.value, self.fre_x_spin.value = enabled, b, x
        if name and self.name_edit.value in ("", self._auto_name):
            self._fill_name()
        self._sync_fre()

    def _fill_name(self) -> None:
        """A free name for the new model (``START-finetuned``, then ``-2``, ``-3`` ...)."""
        start = self.model_combo.value
        if start:
            self._auto_name = models.free_name(f"{start}-finetuned")
            self.name_edit.value = self._auto_name

    def _sync_fre(self, *args: Any) -> None:
        on = bool(self.fre_check.value)
        self.fre_b_spin.enabled = self.fre_x_spin.enabled = self.tune_check.enabled = on
        if not on:
            self.tune_check.value = False
        self.trials_spin.visible = bool(self.tune_check.value)

    # ------------------------------------------------------------------ inputs
    def params(self) -> FineTuneParams:
        """The run's settings, checked; raises InputError with the reason."""
        from napari_nalu_count.infer import parse_diameter

        start = self.model_combo.value
        if not start:
            raise InputError(f"no {self._task} model to start from")
        try:
            lr = float(self.lr_edit.value)
        except ValueError:
            raise InputError(f"learning rate {self.lr_edit.value!r} is not a number") from None
        if not (math.isfinite(lr) and 0 < lr < 1):
            raise InputError("learning rate must be between 0 and 1 (e.g. 3e-4)")
        name = models.check_name(self.name_edit.value.strip() or "?")
        if name == start:
            raise InputError("the new name must differ from the starting model's")
        taken = models.name_taken(name)
        if taken == "bundled":
            raise InputError(f"'{name}' is a bundled model's name; choose another")
        if taken == "exists" and not self.replace_check.value:
            raise InputError(
                f"a model named '{name}' exists; choose another name or tick 'replace'"
            )
        fre = None
        if self.fre_check.value:
            fre = {"B": int(self.fre_b_spin.value), "X": float(self.fre_x_spin.value), "seed": 0}
        return FineTuneParams(
            start_model=start,
            name=name,
            task=self._task,
            epochs=int(self.epochs_spin.value),
            steps_per_epoch=int(self.steps_spin.value),
            lr=lr,
            patch_size=int(self.patch_spin.value),
            fre=fre,
            tune=bool(self.tune_check.value),
            tune_trials=int(self.trials_spin.value),
            diameter=parse_diameter(self.diameter_edit.value),
            device=self.device_combo.value or "auto",
            holdout=float(self.holdout_spin.value),
            overwrite=taken == "exists" and bool(self.replace_check.value),
        )

    def prepare(self, cancel: CancelToken | None) -> Prepared:
        from napari_nalu_count.infer.axes import input_rule

        boxes = self.boxes_combo.value
        if cancel is None:  # validate: check the pairs without reading the images
            collect_samples(self.pairs.pairs(), check_only=True, boxes=boxes)
            self.params()
            return iter(()), lambda outcome: None  # type: ignore[return-value]
        params = self.params()
        rule = input_rule(_models.model_card(params.start_model))
        task, samples = collect_samples(self.pairs.pairs(), rule=rule, boxes=boxes)
        self._log = TrainingLog(task=task)
        self.plot.reset(KEY_METRIC[task][0])
        self.result_label.setText("")
        self.status_label.setText(f"fine-tuning {params.start_model} on {len(samples)} image(s)")
        return finetune_job(samples, params, cancel=cancel), lambda o: self._finished(params, o)

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        self.cancel()

    def on_event(self, event: Event) -> None:
        self._log.add(event)
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(int(1000 * self._log.fraction))
        self.status_label.setText(self._log.status)
        now = time.monotonic()
        if event.kind != "step" or now - self._last_draw > 0.5:
            self._last_draw = now
            self.plot.draw_log(self._log)

    def _finished(self, params: FineTuneParams, outcome: Outcome) -> None:
        self.plot.draw_log(self._log)
        if isinstance(outcome.error, TrainingDiverged):
            self._on_diverged(params, outcome.error)
            return
        if outcome.error is not None:
            self.status_label.setText("failed")
            _viewer.notify_error(error_message(outcome.error, "Fine-tuning"))
            return
        result = outcome.value
        if result is None or getattr(result, "path", None) is None:
            notes = " ".join(getattr(result, "notes", [])[-1:]) if result is not None else ""
            self.status_label.setText(notes or "stopped before a model was saved")
            _viewer.notify_info("Fine-tuning stopped before a model was saved")
            return
        self.result = result
        self.progress_bar.setValue(self.progress_bar.maximum())
        stopped = " (stopped: best so far)" if outcome.cancelled or result.cancelled else ""
        regression = getattr(result, "regression", None)
        worse = f": worse than '{params.start_model}' on the held-out part" if regression else ""
        self.status_label.setText(f"saved '{result.name}'{stopped}{worse}")
        notes = "".join(
            f"<br><b>{note}</b>" if note == regression else f"<br><i>{note}</i>"
            for note in getattr(result, "notes", []) or []
        )
        self.result_label.setText(
            summary_html(params.task, result.metrics_before, result.metrics_after) + notes
        )
        self._model_saved(result.name)
        if regression:
            _viewer.notify_warning(f"new model '{result.name}' is {regression}")
        else:
            _viewer.notify_info(f"new model '{result.name}' is ready in the Count/Segment pickers")

    def _on_diverged(self, params: FineTuneParams, exc: TrainingDiverged) -> None:
        """Show the divergence; point to the model that was kept (never a half-written file:
        saves are atomic and nothing is saved without a validated epoch)."""
        if exc.saved is not None:
            kept = f"kept '{params.name}' from epoch {exc.best_epoch}, before the divergence"
            self._model_saved(params.name)
        else:
            kept = f"no model saved; '{params.start_model}' is unchanged"
        self.status_label.setText(
            f"diverged at epoch {exc.epoch}, step {exc.step}: lower the learning rate; {kept}"
        )
        self.result_label.setText(str(exc))
        _viewer.notify_error(str(exc))

    def _model_saved(self, name: str) -> None:
        """Tell every picker, and move an auto-filled name on so the next run cannot replace
        this model without the user saying so."""
        if self.name_edit.value == self._auto_name:
            self._fill_name()
        self.replace_check.value = False
        _models.notify_model_added(name)
