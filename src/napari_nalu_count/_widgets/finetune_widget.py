"""The "Fine-tune model" dock: train a copy of a model on the layers you annotated.

Plain parts (no widget needed): :func:`collect_samples` turns (image, annotation) layer pairs
into training samples with every check the Run button relies on, :func:`run_finetune` does the
(optionally tuned) fine-tuning, :class:`TrainingLog` keeps the curves for the plot.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_nalu_count._widgets._common import (
    DEFAULT_MODELS,
    CancelToken,
    Outcome,
    connect_layer_events,
    error_message,
    layers_of,
    model_card,
    model_events,
    model_names,
    notify_error,
    notify_info,
    notify_model_added,
    on_teardown,
    parse_diameter,
    pump,
    set_combo_items,
    show_hint,
    start_job,
    transform_points,
)
from napari_nalu_count.errors import InputError, TrainingDiverged

MIN_DOTS = 5
#: key metric shown first for each task, and whether lower is better
KEY_METRIC = {"count": ("mae", True), "segment": ("f1", False)}
#: metrics worth comparing before/after, in display order
SHOWN_METRICS = {
    "count": ("mae", "rmse", "mre", "bias"),
    "segment": ("f1", "miou", "mean_iou", "precision", "recall"),
}


# =========================================================================== plain logic
def _gray_shape(layer: Any) -> tuple[int, ...]:
    shape = tuple(layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def _as_gray(layer: Any, rule: dict[str, Any] | None = None) -> np.ndarray:
    """The layer's planes as inference sees them: RGB(A) reduced by the start model's image ->
    plane rule (``infer.axes.to_planes``; max over the colours by default)."""
    from napari_nalu_count.infer.axes import to_planes

    data = np.asarray(layer.data)
    if getattr(layer, "rgb", False):
        data = to_planes(data, "TYXC" if data.ndim == 4 else "YXC", rule=rule)
    return data


def _pair_task(annotation: Any) -> str:
    from napari.layers import Labels, Points

    if isinstance(annotation, Points):
        return "count"
    if isinstance(annotation, Labels):
        return "segment"
    raise InputError(f"'{annotation.name}' is neither a Points nor a Labels layer")


def collect_samples(
    pairs: list[tuple[Any, Any]], check_only: bool = False, rule: dict[str, Any] | None = None
) -> tuple[str, list[Any]]:
    """Training samples from ``(image layer, Points or Labels layer)`` pairs.

    RGB layers are reduced to one plane by ``rule`` (the start model's image -> plane rule,
    ``infer.axes.input_rule``; max over the colours by default), the same rule inference uses.

    Points train a counting model, Labels a segmentation model (all pairs must agree). A stack
    (T, Y, X) with 3-D annotations gives one sample per annotated plane. Raises InputError
    naming the problem: missing layers, empty annotations, points with the wrong number of
    dims or outside the image, labels of another shape, fewer than ``MIN_DOTS`` dots.
    ``check_only`` runs the checks without reading the images (returns no samples).
    """

    if not pairs:
        raise InputError("pick an image layer and its annotation layer")
    tasks = set()
    samples: list[Any] = []
    total_dots = 0
    for image_layer, annotation in pairs:
        if image_layer is None:
            raise InputError("pick an image layer for every row")
        if annotation is None:
            raise InputError(
                f"annotate '{image_layer.name}': add a Points layer (dots on cells, for "
                "counting) or a Labels layer (painted nuclei, for segmentation)"
            )
        task = _pair_task(annotation)
        tasks.add(task)
        shape = _gray_shape(image_layer)
        if len(shape) not in (2, 3):
            raise InputError(f"'{image_layer.name}' must be 2-D or a (T, Y, X) stack")
        if task == "count":
            dots = _dots_in_image(annotation, image_layer, shape)
            total_dots += len(dots)
            if not check_only:
                samples += _split_dots(_as_gray(image_layer, rule), dots, image_layer.name)
        else:
            labels = _checked_labels(annotation, image_layer, shape)
            if not check_only:
                samples += _split_labels(_as_gray(image_layer, rule), labels, image_layer.name)
    if len(tasks) > 1:
        raise InputError("mixes Points (counting) and Labels (segmentation); use one kind")
    task = tasks.pop()
    if task == "count" and total_dots < MIN_DOTS:
        raise InputError(
            f"only {total_dots} dot(s) annotated; mark at least {MIN_DOTS} cells with the "
            "Points tool"
        )
    if not samples and not check_only:
        raise InputError("no annotated image to train on")
    return task, samples


def _dots_in_image(points: Any, image_layer: Any, shape: tuple[int, ...]) -> np.ndarray:
    data = np.asarray(points.data, dtype=float)
    if len(data) == 0:
        raise InputError(f"'{points.name}' has no dots; click on cells with the Points tool")
    if points.ndim != len(shape):
        raise InputError(
            f"'{points.name}' is {points.ndim}-D but '{image_layer.name}' is {len(shape)}-D; "
            "add the Points layer while that image is selected"
        )
    dots = transform_points(data, points, image_layer)
    inside = np.all((dots > -0.5) & (dots < np.array(shape) - 0.5), axis=1)
    if not inside.all():
        raise InputError(
            f"{int((~inside).sum())} of {len(dots)} dots of '{points.name}' lie outside "
            f"'{image_layer.name}'; delete them"
        )
    return dots


def _split_dots(image: np.ndarray, dots: np.ndarray, name: str) -> list[Any]:
    from napari_nalu_count.data.readers import Sample

    if image.ndim == 2:
        return [Sample(image=image, dots=dots, name=name)]
    frames = np.round(dots[:, 0]).astype(int)
    return [
        Sample(image=image[t], dots=dots[frames == t, 1:], name=f"{name}[{t}]")
        for t in np.unique(frames)
    ]


def _checked_labels(labels_layer: Any, image_layer: Any, shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(labels_layer.data)
    if labels.shape != shape:
        raise InputError(
            f"'{labels_layer.name}' has shape {labels.shape} but '{image_layer.name}' has "
            f"{shape}; add the Labels layer while that image is selected"
        )
    if not labels.any():
        raise InputError(f"'{labels_layer.name}' is empty; paint some nuclei first")
    return labels


def _split_labels(image: np.ndarray, labels: np.ndarray, name: str) -> list[Any]:
    from napari_nalu_count.data.readers import Sample

    if image.ndim == 2:
        return [Sample(image=image, labels=labels.astype(np.int32), name=name)]
    return [
        Sample(image=image[t], labels=labels[t].astype(np.int32), name=f"{name}[{t}]")
        for t in range(len(labels))
        if labels[t].any()
    ]


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


@dataclass
class FineTuneParams:
    """Everything :func:`run_finetune` needs besides the samples."""

    start_model: str
    name: str
    task: str
    epochs: int = 10
    steps_per_epoch: int = 20
    lr: float = 3e-4
    patch_size: int = 128
    fre: dict[str, Any] | None = None  # None: no FRE
    tune: bool = False
    tune_trials: int = 6
    tune_epochs: int = 2
    diameter: float | str | None = None  # recorded in the card; "auto": measured from image 1
    device: str = "cpu"
    holdout: float = 0.25

    def train_config(self) -> Any:
        from napari_nalu_count.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
            lr=self.lr,
            patch_size=self.patch_size,
            fre=self.fre,
            device=self.device,
        )


def run_finetune(
    samples: list[Any],
    params: FineTuneParams,
    *,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> Any:
    """Fine-tune ``params.start_model`` on ``samples``; returns the engine's FineTuneResult.

    With ``params.tune`` a short TPE search over FRE's B and X runs first (events of
    ``kind="tune"`` go to ``progress``) and its best values are used.
    """
    from napari_nalu_count import train

    cfg = params.train_config()
    diameter = params.diameter
    if diameter == "auto":
        diameter = estimate_cell_diameter(samples[0].image)
    if params.tune:
        cfg = _tuned_config(samples, params, cfg, progress, cancel)
    return train.fine_tune(
        params.start_model,
        samples,
        name=params.name,
        task=params.task,
        cfg=cfg,
        callback=progress,
        cancel=cancel,
        holdout=params.holdout,
        use_fre=cfg.fre is not None,
        diameter=diameter,
        overwrite=True,
    )


def estimate_cell_diameter(image: np.ndarray) -> float | None:
    """Typical cell diameter (pixels) of an image, as the engine estimates it for counting."""
    from napari_nalu_count.data.normalize import percentile_normalize
    from napari_nalu_count.infer import estimate_diameter

    return estimate_diameter(percentile_normalize(np.asarray(image, dtype=np.float32)))


def _tuned_config(
    samples: list[Any], params: FineTuneParams, cfg: Any, progress: Any, cancel: Any
) -> Any:
    """``cfg`` with FRE's B and X from a short TPE search (``train.tune``).

    Each trial trains the start model's architecture briefly on the training part and scores
    it on the held-out part (the same split fine-tuning uses); the learning rate stays the
    user's, since a from-scratch optimum does not carry over to fine-tuning.
    """
    import dataclasses

    from napari_nalu_count.errors import Cancelled
    from napari_nalu_count.models import load_model
    from napari_nalu_count.train.finetune import split_holdout
    from napari_nalu_count.train.tune import tune

    start = load_model(params.start_model)
    train_s, held_s, _ = split_holdout(samples, params.holdout, cfg.seed)
    trial_cfg = dataclasses.replace(
        cfg,
        epochs=params.tune_epochs,
        steps_per_epoch=min(cfg.steps_per_epoch, 10),
        normalization=dict(start.card["normalization"]),
    )
    if params.task == "count":
        trial_cfg.density_scale = float(start.card["density_scale"])

    def on_trial(event: dict[str, Any]) -> None:
        if progress is not None:
            progress({**event, "kind": "tune", "n_trials": params.tune_trials})

    if progress is not None:
        progress({"kind": "tune", "number": None, "n_trials": params.tune_trials})
    result = tune(
        dict(start.config),
        train_s,
        held_s,
        params.task,
        n_trials=params.tune_trials,
        cfg=trial_cfg,
        callback=on_trial,
        cancel=cancel,
    )
    if result.cancelled:
        raise Cancelled("tuning cancelled")
    best = dict(result.best_params or {})
    if "B" not in best or "X" not in best:
        return cfg
    fre = {"B": int(best["B"]), "X": float(best["X"]), "seed": int(cfg.seed)}
    if progress is not None:
        progress({"kind": "tuned", "fre": fre})
    return dataclasses.replace(cfg, fre=fre)


@dataclass
class TrainingLog:
    """Loss per step and validation metric per epoch, fed from the engine's events."""

    task: str = "count"
    total_steps: int = 1
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)  # in units of steps, for one x axis
    metric: list[float] = field(default_factory=list)
    step: int = 0
    status: str = ""
    tune_fraction: float | None = None  # progress of the B/X search while it runs
    tuned: dict[str, Any] | None = None

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "step":
            self.step = int(event.get("step", self.step + 1))
            loss = float(event.get("loss", math.nan))
            if math.isfinite(loss):
                self.steps.append(self.step)
                self.losses.append(loss)
            self.status = f"epoch {event.get('epoch')}  step {self.step}  loss {loss:.4g}"
        elif kind == "epoch":
            key = KEY_METRIC[self.task][0]
            value = (event.get("metrics") or {}).get(key)
            if value is not None and math.isfinite(float(value)):
                self.epochs.append(int(event.get("step", self.step)))
                self.metric.append(float(value))
                self.status = f"epoch {event.get('epoch')}: validation {key} {float(value):.3g}"
        elif kind == "tune":
            number, n = event.get("number"), int(event.get("n_trials") or 1)
            self.tune_fraction = 0.0 if number is None else (int(number) + 1) / n
            value = event.get("value")
            done = "" if number is None else f" {int(number) + 1}/{n}"
            score = f", score {float(value):.3g}" if isinstance(value, int | float) else ""
            self.status = f"tuning B/X: trial{done}{score}"
        elif kind == "tuned":
            fre = event.get("fre") or {}
            self.tuned = fre
            self.tune_fraction = None
            self.status = f"tuned: B={fre.get('B')}, X={float(fre.get('X', 0)):.3g}; training..."

    @property
    def fraction(self) -> float:
        if self.tune_fraction is not None:
            return min(self.tune_fraction, 1.0)
        return min(self.step / max(self.total_steps, 1), 1.0)


def metrics_summary(task: str, before: dict[str, Any], after: dict[str, Any]) -> list[tuple]:
    """Rows ``(metric, before, after)`` for the metrics both dicts have, key metric first."""
    before, after = before or {}, after or {}
    keys = [k for k in SHOWN_METRICS[task] if k in before and k in after]
    return [(k, float(before[k]), float(after[k])) for k in keys if _is_number(after[k])]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# =========================================================================== widgets
class _PairRow(QWidget):
    """One (image, annotation) pair with a remove button."""

    def __init__(self, on_change: Any, on_remove: Any) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.image_combo = QComboBox()
        self.annotation_combo = QComboBox()
        self.image_combo.setToolTip("image to learn from")
        self.annotation_combo.setToolTip("Points (dots, counting) or Labels (masks, segmentation)")
        self.remove_button = QPushButton("-")
        self.remove_button.setMaximumWidth(28)
        self.remove_button.setToolTip("remove this pair")
        layout.addWidget(self.image_combo, 1)
        layout.addWidget(self.annotation_combo, 1)
        layout.addWidget(self.remove_button)
        self.image_combo.currentIndexChanged.connect(on_change)
        self.annotation_combo.currentIndexChanged.connect(on_change)
        self.remove_button.clicked.connect(lambda: on_remove(self))

    def refresh(self, viewer: Any) -> None:
        from napari.layers import Image, Labels, Points

        set_combo_items(self.image_combo, layers_of(viewer, Image))
        annotations = [(f"{n} (dots)", lyr) for n, lyr in layers_of(viewer, Points)]
        annotations += [(f"{n} (masks)", lyr) for n, lyr in layers_of(viewer, Labels)]
        set_combo_items(self.annotation_combo, [("(none)", None), *annotations])

    def pair(self) -> tuple[Any, Any]:
        return self.image_combo.currentData(), self.annotation_combo.currentData()


class FineTuneWidget(QWidget):
    """Dock widget: fine-tune a bundled or user model on annotated layers."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker: Any = None
        self._cancel: CancelToken | None = None
        self._task = "count"
        self._log = TrainingLog()
        self._last_draw = 0.0
        self._watched: set[int] = set()
        self.result: Any = None

        self.setMinimumWidth(340)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("images and their annotations"))
        self.rows_layout = QVBoxLayout()
        layout.addLayout(self.rows_layout)
        self.rows: list[_PairRow] = []
        self.add_button = QPushButton("+ add image")
        layout.addWidget(self.add_button)

        form = QFormLayout()
        layout.addLayout(form)
        self.model_combo = QComboBox()
        self.epochs_spin = _spin(1, 1000, 10)
        self.steps_spin = _spin(1, 10000, 20)
        self.lr_edit = QLineEdit("3e-4")
        self.patch_spin = _spin(16, 1024, 128, step=16)
        self.fre_check = QCheckBox("on (Feature Random Enhancement)")
        self.fre_b_spin = _spin(0, 4096, 8)
        self.fre_x_spin = QDoubleSpinBox()
        self.fre_x_spin.setRange(0.0, 1000.0)
        self.fre_x_spin.setDecimals(2)
        self.fre_x_spin.setSingleStep(0.5)
        self.fre_x_spin.setValue(2.0)
        self.fre_x_spin.setToolTip("factor applied to the B randomly chosen channels")
        self.fre_b_spin.setToolTip("channels at the bottleneck scaled by X, re-drawn each epoch")
        self.tune_check = QCheckBox("tune B/X first")
        self.tune_check.setToolTip("a short TPE search (train.tune) picks B and X before training")
        self.diameter_edit = QLineEdit()
        self.diameter_edit.setPlaceholderText("from masks / start model; or 'estimate'")
        self.diameter_edit.setToolTip(
            "typical cell diameter in your images (pixels), stored with the new model"
        )
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name of the new model")
        form.addRow("start from", self.model_combo)
        form.addRow("epochs", self.epochs_spin)
        form.addRow("steps / epoch", self.steps_spin)
        form.addRow("learning rate", self.lr_edit)
        form.addRow("patch size", self.patch_spin)
        form.addRow("FRE", self.fre_check)
        fre_row = QHBoxLayout()
        fre_row.addWidget(QLabel("B"))
        fre_row.addWidget(self.fre_b_spin)
        fre_row.addWidget(QLabel("X"))
        fre_row.addWidget(self.fre_x_spin)
        form.addRow("", fre_row)
        form.addRow("", self.tune_check)
        form.addRow("cell diameter", self.diameter_edit)
        form.addRow("new name", self.name_edit)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("stop now and keep the best model so far")
        self.stop_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet("color: #f0a030;")
        layout.addWidget(self.hint_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel()
        layout.addWidget(self.status_label)
        self.plot = LossPlot()
        layout.addWidget(self.plot)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        layout.addWidget(self.result_label)
        layout.addStretch(1)

        self.add_button.clicked.connect(lambda: self.add_row())
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.fre_check.toggled.connect(self._sync_fre)
        for signal in (
            self.lr_edit.textChanged,
            self.name_edit.textChanged,
            self.diameter_edit.textChanged,
        ):
            signal.connect(self._validate)
        self._disconnect_layers = connect_layer_events(self.viewer, self.reset_choices)
        model_events.changed.connect(self._on_models_changed)
        on_teardown(self, self._disconnect_layers, (model_events.changed, self._on_models_changed))
        self.add_row()
        self.refresh_models()
        self._sync_fre()

    # --------------------------------------------------------------------- pairs
    def add_row(self) -> _PairRow:
        row = _PairRow(self._on_pairs_changed, self.remove_row)
        self.rows.append(row)
        self.rows_layout.addWidget(row)
        row.refresh(self.viewer)
        self._pick_annotation(row)
        self._on_pairs_changed()
        return row

    def remove_row(self, row: _PairRow) -> None:
        if len(self.rows) <= 1:
            return
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self._on_pairs_changed()

    def _pick_annotation(self, row: _PairRow) -> None:
        """Preselect an annotation layer that fits the image (same data shape/ndim)."""
        image = row.image_combo.currentData()
        if image is None or row.annotation_combo.currentData() is not None:
            return
        for i in range(row.annotation_combo.count()):
            layer = row.annotation_combo.itemData(i)
            if layer is not None and _fits(layer, image):
                row.annotation_combo.setCurrentIndex(i)
                return

    def reset_choices(self, event: Any = None) -> None:
        for row in self.rows:
            row.refresh(self.viewer)
            self._pick_annotation(row)
        self._on_pairs_changed()

    def pairs(self) -> list[tuple[Any, Any]]:
        return [row.pair() for row in self.rows]

    def _on_pairs_changed(self, *args: Any) -> None:
        from napari.layers import Labels

        annotations = [a for _, a in self.pairs() if a is not None]
        task = "segment" if annotations and isinstance(annotations[0], Labels) else "count"
        if task != self._task:
            self._task = task
            self.refresh_models()
        self._watch(annotations)
        self._validate()

    def _watch(self, annotations: list[Any]) -> None:
        """Re-check the inputs whenever an annotation layer gets new dots or paint."""
        for layer in annotations:
            if id(layer) in self._watched:
                continue
            self._watched.add(id(layer))
            for name in ("data", "paint", "set_data"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.connect(self._validate)

    # --------------------------------------------------------------------- models
    def refresh_models(self) -> None:
        try:
            names = model_names(self._task)
        except Exception as exc:  # noqa: BLE001 - a broken file must not kill the dock
            names = []
            notify_error(f"could not list models: {exc}")
        current = self.model_combo.currentData()
        keep = current if current in names else DEFAULT_MODELS.get(self._task)
        set_combo_items(self.model_combo, [(n, n) for n in names], keep=keep)

    def _on_models_changed(self, name: str = "") -> None:
        try:
            self.refresh_models()
        except RuntimeError:  # the Qt side of this widget is gone
            pass

    def _on_model_changed(self, *args: Any) -> None:
        name = self.model_combo.currentData()
        card = model_card(name) if name else None
        enabled, b, x = fre_defaults(card)
        self.fre_b_spin.setMaximum(bottleneck_width(card))
        self.fre_check.setChecked(enabled)
        self.fre_b_spin.setValue(b)
        self.fre_x_spin.setValue(x)
        if name and (not self.name_edit.text() or self.name_edit.text().endswith("-finetuned")):
            self.name_edit.setText(f"{name}-finetuned")
        self._validate()

    def _sync_fre(self, *args: Any) -> None:
        on = self.fre_check.isChecked()
        self.fre_b_spin.setEnabled(on)
        self.fre_x_spin.setEnabled(on)
        self.tune_check.setEnabled(on)
        if not on:
            self.tune_check.setChecked(False)

    # --------------------------------------------------------------------- inputs
    def params(self) -> FineTuneParams:
        """The run's settings, checked; raises InputError with the reason."""
        from napari_nalu_count._widgets._common import check_model_name

        start = self.model_combo.currentData()
        if not start:
            raise InputError(f"no {self._task} model to start from")
        try:
            lr = float(self.lr_edit.text())
        except ValueError:
            raise InputError(f"learning rate {self.lr_edit.text()!r} is not a number") from None
        if not (math.isfinite(lr) and 0 < lr < 1):
            raise InputError("learning rate must be between 0 and 1 (e.g. 3e-4)")
        fre = None
        if self.fre_check.isChecked():
            fre = {"B": self.fre_b_spin.value(), "X": self.fre_x_spin.value(), "seed": 0}
        return FineTuneParams(
            start_model=start,
            name=check_model_name(self.name_edit.text()),
            task=self._task,
            epochs=self.epochs_spin.value(),
            steps_per_epoch=self.steps_spin.value(),
            lr=lr,
            patch_size=self.patch_spin.value(),
            fre=fre,
            tune=self.tune_check.isChecked(),
            diameter=parse_diameter(self.diameter_edit.text()),
        )

    def _validate(self, *args: Any) -> str:
        try:
            collect_samples(self.pairs(), check_only=True)
            params = self.params()
            hint = ""
            if params.start_model == params.name:
                hint = "the new name must differ from the starting model's"
            elif _is_bundled(params.name):
                hint = f"'{params.name}' is a bundled model's name; choose another"
        except InputError as exc:
            hint = str(exc)
        return show_hint(self.hint_label, self.run_button, hint, self._worker is not None)

    # --------------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self) -> Any:
        if self._worker is not None:
            return self._worker
        from napari_nalu_count.infer.axes import input_rule

        try:
            params = self.params()
            rule = input_rule(model_card(params.start_model))
            task, samples = collect_samples(self.pairs(), rule=rule)
        except InputError as exc:
            notify_error(str(exc))
            return None
        self._cancel = CancelToken()
        cancel = self._cancel
        self._log = TrainingLog(task=task, total_steps=params.epochs * params.steps_per_epoch)
        self.plot.reset(KEY_METRIC[task][0])
        self.result_label.setText("")
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self.status_label.setText(f"fine-tuning {params.start_model} on {len(samples)} image(s)")

        def job():
            return (yield from pump(run_finetune, samples, params, cancel=cancel))

        self._worker = start_job(
            job, on_event=self._on_event, on_done=lambda o: self._on_done(params, o)
        )
        return self._worker

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            self.status_label.setText("stopping (keeping the best model so far)...")

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        self._log.add(event)
        self.progress_bar.setValue(int(1000 * self._log.fraction))
        self.status_label.setText(self._log.status)
        now = time.monotonic()
        if event.get("kind") != "step" or now - self._last_draw > 0.5:
            self._last_draw = now
            self.plot.draw_log(self._log)

    def _on_done(self, params: FineTuneParams, outcome: Outcome) -> None:
        self._worker = None
        self._cancel = None
        self.stop_button.setEnabled(False)
        self._validate()
        self.plot.draw_log(self._log)
        if isinstance(outcome.error, TrainingDiverged):
            self._on_diverged(params, outcome.error)
            return
        if outcome.error is not None:
            self.status_label.setText("failed")
            notify_error(error_message(outcome.error, "Fine-tuning"))
            return
        result = outcome.value
        if result is None or getattr(result, "path", None) is None:
            self.status_label.setText("stopped before the first epoch finished; no model was saved")
            notify_info("Fine-tuning stopped before the first epoch finished; no model was saved")
            return
        self.result = result
        self.progress_bar.setValue(1000)
        stopped = " (stopped: best so far)" if outcome.cancelled or result.cancelled else ""
        self.status_label.setText(f"saved '{result.name}'{stopped}")
        notes = "".join(f"<br><i>{note}</i>" for note in getattr(result, "notes", []) or [])
        self.result_label.setText(
            _summary_html(params.task, result.metrics_before, result.metrics_after) + notes
        )
        notify_model_added(result.name)
        notify_info(f"new model '{result.name}' is ready in the Count/Segment pickers")

    def _on_diverged(self, params: FineTuneParams, exc: TrainingDiverged) -> None:
        """Show the divergence; point to the model that was kept (never a half-written file:
        saves are atomic and nothing is saved without a validated epoch)."""
        if exc.saved is not None:
            kept = f"kept '{params.name}' from epoch {exc.best_epoch}, before the divergence"
            notify_model_added(params.name)
        else:
            kept = f"no model saved; '{params.start_model}' is unchanged"
        self.status_label.setText(
            f"diverged at epoch {exc.epoch}, step {exc.step}: lower the learning rate; {kept}"
        )
        self.result_label.setText(str(exc))
        notify_error(str(exc))


def _is_bundled(name: str) -> bool:
    from napari_nalu_count.models import bundled_model_dir

    return (bundled_model_dir() / f"{name}.json").is_file()


def _fits(annotation: Any, image: Any) -> bool:
    from napari.layers import Labels

    if isinstance(annotation, Labels):
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        return tuple(annotation.data.shape) == tuple(shape)
    return annotation.ndim == image.ndim


def _summary_html(task: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    rows = metrics_summary(task, before or {}, after or {})
    if not rows:
        return "no held-out metrics (too few annotated images to hold some out)"
    lines = "".join(
        f"<tr><td>{k}</td><td align='right'>{b:.3g}</td><td align='right'>{a:.3g}</td></tr>"
        for k, b, a in rows
    )
    return (
        "<b>held-out part, before → after</b><table cellspacing='6'>"
        "<tr><th></th><th>before</th><th>after</th></tr>" + lines + "</table>"
    )


def _spin(low: int, high: int, value: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


class LossPlot(QWidget):
    """Training loss per step and the validation metric per epoch (matplotlib)."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 2.2), dpi=90, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.loss_ax = self.figure.add_subplot(111)
        self.metric_ax = self.loss_ax.twinx()
        self.metric_name = "metric"
        self.reset("metric")

    def reset(self, metric_name: str) -> None:
        self.metric_name = metric_name
        for ax in (self.loss_ax, self.metric_ax):
            ax.clear()
            ax.set_facecolor("#262930")
            ax.tick_params(colors="#d0d0d0", labelsize=7)
            for spine in ax.spines.values():
                spine.set_color("#808080")
        self.metric_ax.yaxis.tick_right()
        self.metric_ax.yaxis.set_label_position("right")
        self.loss_ax.set_xlabel("step", color="#d0d0d0", fontsize=8)
        self.loss_ax.set_ylabel("loss", color="#f0a030", fontsize=8)
        self.metric_ax.set_ylabel(f"validation {metric_name}", color="#50c8ff", fontsize=8)
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def draw_log(self, log: TrainingLog) -> None:
        self.reset(self.metric_name)
        if log.losses:
            self.loss_ax.plot(log.steps, log.losses, color="#f0a030", lw=0.8)
            if min(log.losses) > 0 and max(log.losses) / min(log.losses) > 30:
                self.loss_ax.set_yscale("log")
        if log.metric:
            self.metric_ax.plot(log.epochs, log.metric, "o-", color="#50c8ff", ms=3, lw=1)
        self.figure.tight_layout()
        self.canvas.draw_idle()
