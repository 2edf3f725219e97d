"""Pieces shared by the dock widgets: pickers, input checks, workers, result layers.

Everything above the "Qt" marker works without a display so tests can call it directly.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_nalu_count.errors import Cancelled, CancelToken, InputError

#: metadata key put on every layer a widget creates
META_KEY = "nalu_count"
#: axis letters the engine understands
AXIS_LETTERS = "TZCYX"
#: the engine's default model per task, preselected when present
DEFAULT_MODELS = {"count": "nuclei-count", "segment": "nuclei-seg"}


# --------------------------------------------------------------------------- model registry
class ModelEvents:
    """Process-wide notice board: the fine-tune widget announces new models here."""

    changed = Signal(str)  # name of the model that was added or updated


model_events = ModelEvents()


def notify_model_added(name: str) -> None:
    """Tell every model picker to refresh (called after a fine-tuned model was saved)."""
    model_events.changed.emit(name)


def model_names(task: str | None = None) -> list[str]:
    """Names of the usable bundled then user models, optionally only those of one task."""
    from napari_nalu_count import models

    names = []
    for info in models.describe_models(verify=False):
        if info.ok and (task is None or (info.card or {}).get("task") == task):
            names.append(info.name)
    return names


def model_card(name: str) -> dict[str, Any] | None:
    """The card of a listed model (None when it is unknown or broken)."""
    from napari_nalu_count import models

    for info in models.describe_models(verify=False):
        if info.name == name and info.ok:
            return dict(info.card or {})
    return None


def device_names() -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda``/``cuda:N`` and ``mps`` where present."""
    names = ["auto", "cpu"]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return names
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names += ["cuda"] if n == 1 else [f"cuda:{i}" for i in range(n)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


# --------------------------------------------------------------------------- input checks
def parse_diameter(text: str) -> float | str | None:
    """Diameter field: blank = automatic (None: the engine finds the nucleus size for models
    that can, else uses the model's own resolution), ``auto``/``estimate`` = "auto"."""
    text = text.strip().lower()
    if not text:
        return None
    if text in {"auto", "estimate"}:
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"cell diameter {text!r} is not a number of pixels (leave it blank to find the "
            "size automatically)"
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"cell diameter must be a positive number of pixels, got {text!r}")
    return value


def default_axes(ndim: int, rgb: bool = False) -> str:
    """A first guess of the axes of a layer's data (the user may edit it)."""
    if rgb:
        return {3: "YXC", 4: "TYXC"}.get(ndim, "YXC")
    return {2: "YX", 3: "TYX", 4: "TZYX", 5: "TZCYX"}.get(ndim, "YX")


def check_axes(axes: str, ndim: int) -> str:
    """Normalised axes string for data with ``ndim`` dimensions, or InputError saying why."""
    axes = axes.strip().upper()
    if len(axes) != ndim:
        raise InputError(f"axes {axes!r} has {len(axes)} letters but the image has {ndim} dims")
    bad = sorted(set(axes) - set(AXIS_LETTERS))
    if bad:
        raise InputError(f"axes may use only the letters {AXIS_LETTERS}, not {''.join(bad)}")
    if len(set(axes)) != len(axes):
        raise InputError(f"axes {axes!r} repeats a letter")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"axes {axes!r} must contain Y and X")
    return axes


def result_axes(result: Any, requested: str | None) -> str:
    """Axes of an engine result without the channel axis (the result's own, else the request)."""
    return str(getattr(result, "axes", None) or requested or "YX").replace("C", "") or "YX"


def show_hint(hint_label: Any, run_button: Any, hint: str, busy: bool) -> str:
    """Show ``hint`` (why Run is disabled) and enable Run only without a hint and when idle."""
    hint_label.setText(hint)
    hint_label.setVisible(bool(hint))
    run_button.setEnabled(not hint and not busy)
    return hint


def check_image_layer(layer: Any) -> None:
    """Reject layers the engine cannot take (missing, multiscale, empty)."""
    if layer is None:
        raise InputError("add an image layer (File > Open Sample > NALU Cell Counter)")
    if getattr(layer, "multiscale", False):
        raise InputError(f"'{layer.name}' is multiscale; open a single resolution level")
    if 0 in layer.data.shape:
        raise InputError(f"'{layer.name}' is empty")


def layer_file_label(layer: Any) -> str:
    """What the CSV ``file`` column says: the path the layer came from, else its name."""
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path else str(layer.name)


def check_model_name(name: str) -> str:
    """A name usable as a file stem for a new model."""
    name = name.strip()
    if not name:
        raise InputError("type a name for the new model")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise InputError(
            f"model name {name!r}: use letters, digits, '-', '_' or '.' (up to 64 characters)"
        )
    return name


# --------------------------------------------------------------------------- per-frame tables
def frame_labels(counts: np.ndarray) -> list[str]:
    """Row labels for per-plane counts: the flat plane index over the stack axes in C order
    (``0``, ``1``, ...), the ``frame`` column of every counts table (see ``io_csv``)."""
    counts = np.asarray(counts)
    return [str(i) for i in range(max(counts.size, 1))]


def write_counts_csv(
    path: str | Path,
    file_label: str,
    counts: np.ndarray | float,
    extra: dict[str, np.ndarray] | None = None,
    *,
    integer: bool = False,
) -> Path:
    """Write ``file,frame,count[,extra...]`` with the shared writer the CLI uses
    (:func:`napari_nalu_count.io_csv.write_counts_csv`): one row per plane, frame 0 for 2-D."""
    from napari_nalu_count.io_csv import write_counts_csv as write

    return write(path, file_label, counts, integer=integer, extra=extra)


# --------------------------------------------------------------------------- coordinates
def transform_points(points: np.ndarray, src_layer: Any, dst_layer: Any) -> np.ndarray:
    """Map points from ``src_layer``'s data coordinates into ``dst_layer``'s."""
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        return points.reshape(0, dst_layer.ndim)
    world = src_layer._transforms[1:].simplified(points)
    world = _pad_left(world, dst_layer.ndim)
    return np.asarray(dst_layer._transforms[1:].simplified.inverse(world[:, -dst_layer.ndim :]))


def _pad_left(coords: np.ndarray, ndim: int) -> np.ndarray:
    if coords.shape[1] >= ndim:
        return coords
    pad = np.zeros((coords.shape[0], ndim - coords.shape[1]))
    return np.concatenate([pad, coords], axis=1)


# --------------------------------------------------------------------------- workers
@dataclass
class Outcome:
    """What a worker returns: the value, or the error that stopped it, or a cancel."""

    value: Any = None
    error: BaseException | None = None
    cancelled: bool = False


def pump(
    func: Callable[..., Any], *args: Any, cancel: CancelToken | None = None, **kwargs: Any
) -> Generator[Any, None, Outcome]:
    """Run ``func(*args, progress=..., cancel=..., **kwargs)`` in a helper thread.

    Everything the function reports through ``progress(*event)`` is yielded (a tuple, or the
    single argument), so a napari generator worker can ``yield from pump(...)`` and stay
    responsive. Errors never escape: they come back in the :class:`Outcome`.
    """
    events: queue.Queue = queue.Queue()
    done = object()
    box: dict[str, Any] = {}

    def progress(*event: Any) -> None:
        events.put(event[0] if len(event) == 1 else event)

    def target() -> None:
        try:
            box["value"] = func(*args, progress=progress, cancel=cancel, **kwargs)
        except BaseException as exc:  # handed to the caller through the Outcome
            box["error"] = exc
        finally:
            events.put(done)

    thread = threading.Thread(target=target, name="nalu-count-job", daemon=True)
    thread.start()
    while True:
        try:
            event = events.get(timeout=0.1)
        except queue.Empty:
            yield None  # gives the worker a chance to notice quit()
            continue
        if event is done:
            break
        yield event
    thread.join()
    error = box.get("error")
    if isinstance(error, Cancelled) or (error is None and cancel is not None and cancel.cancelled):
        return Outcome(value=box.get("value"), cancelled=True)
    if error is not None:
        return Outcome(error=error)
    return Outcome(value=box.get("value"))


def error_message(exc: BaseException, what: str) -> str:
    """One-line message for a notification: input errors as they are, others with context."""
    from napari_nalu_count.errors import NaluCountError

    if isinstance(exc, NaluCountError | FileNotFoundError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"{what} ran out of memory; try a smaller image or the CPU device"
    return f"{what} failed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- result layers
def result_metadata(source: Any, kind: str, **extra: Any) -> dict[str, Any]:
    return {META_KEY: {"source_id": str(source.unique_id), "kind": kind, **extra}}


def record_result_info(layers: Iterable[Any], **info: Any) -> None:
    """Store run facts (e.g. the nucleus diameter used) in result layers' plugin metadata."""
    for layer in layers:
        meta = layer.metadata.get(META_KEY)
        if isinstance(meta, dict):
            meta.update({k: v for k, v in info.items() if v is not None})


def find_result_layer(viewer: Any, source: Any, kind: str) -> Any | None:
    """The layer this plugin made earlier from ``source`` for ``kind``, if still there."""
    sid = str(source.unique_id)
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
        if meta and meta.get("source_id") == sid and meta.get("kind") == kind:
            return layer
    return None


def replace_result_layer(
    viewer: Any,
    source: Any,
    kind: str,
    layer_type: str,
    data: Any,
    *,
    name: str,
    **kwargs: Any,
) -> Any:
    """Add a result layer bound to ``source``, replacing the one from an earlier run.

    The new layer takes the old one's place in the layer list and copies ``source``'s
    scale and translate (trailing dims, so a 2-D result of an RGB image lines up too).
    """
    old = find_result_layer(viewer, source, kind)
    index = None
    if old is not None:
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
    ndim = np.ndim(data) if layer_type != "points" else np.shape(data)[1]
    kwargs.setdefault("scale", tuple(source.scale)[-ndim:])
    kwargs.setdefault("translate", tuple(source.translate)[-ndim:])
    kwargs["metadata"] = {**kwargs.get("metadata", {}), **result_metadata(source, kind)}
    from napari import layers

    cls = {"image": layers.Image, "points": layers.Points, "labels": layers.Labels}[layer_type]
    layer = cls(data, name=name, **kwargs)
    if index is None:
        viewer.layers.append(layer)
    else:
        viewer.layers.insert(index, layer)
    return layer


# --------------------------------------------------------------------------- notifications
def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


# =========================================================================== Qt
def layers_of(viewer: Any, kinds: Sequence[type] | type) -> list[tuple[str, Any]]:
    """``(name, layer)`` choices for a combo box."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kinds)]


def connect_layer_events(viewer: Any, callback: Callable[..., Any]) -> Callable[[], None]:
    """Call ``callback`` whenever layers come, go, move or get renamed; returns a disconnect."""
    events = viewer.layers.events
    emitters = [events.inserted, events.removed, events.reordered]
    if hasattr(events, "renamed"):
        emitters.append(events.renamed)
    for emitter in emitters:
        emitter.connect(callback)

    def disconnect() -> None:
        for emitter in emitters:
            try:
                emitter.disconnect(callback)
            except (RuntimeError, ValueError, TypeError):  # already gone
                pass

    return disconnect


def set_combo_items(combo: Any, items: Iterable[tuple[str, Any]], keep: Any = None) -> None:
    """Refill a QComboBox with ``(text, data)`` items, keeping the current choice if present."""
    keep = combo.currentData() if keep is None else keep
    combo.blockSignals(True)
    combo.clear()
    selected = 0
    for i, (text, data) in enumerate(items):
        combo.addItem(text, data)
        if data is keep or (isinstance(keep, str) and data == keep):
            selected = i
    combo.setCurrentIndex(selected if combo.count() else -1)
    combo.blockSignals(False)
    combo.currentIndexChanged.emit(combo.currentIndex())


def on_teardown(widget: Any, *cleanups: Any) -> None:
    """When ``widget`` is destroyed: cancel its job and drop its outside connections.

    Each cleanup is a callable or an ``(emitter, callback)`` pair to disconnect. The handler
    must not touch the widget's Qt side (it is gone by then), only plain Python state.
    """

    def teardown(*args: Any) -> None:
        token = getattr(widget, "_cancel", None)
        if token is not None:
            token.cancel()
        for item in cleanups:
            try:
                if callable(item):
                    item()
                else:
                    item[0].disconnect(item[1])
            except Exception:  # noqa: BLE001 - already disconnected or gone
                pass

    widget.destroyed.connect(teardown)


def start_job(
    job: Callable[[], Generator[Any, None, Outcome]],
    *,
    on_event: Callable[[Any], None],
    on_done: Callable[[Outcome], None],
) -> Any:
    """Start ``job`` (a generator function) in a napari thread worker.

    ``on_event`` gets each yielded event on the main thread (``None`` heartbeats are
    dropped), ``on_done`` the :class:`Outcome`. The job must not raise (``pump`` never does);
    anything unexpected still ends as an Outcome so the user sees a notification, not a
    traceback dialog.
    """
    from napari.qt.threading import thread_worker

    def guarded() -> Generator[Any, None, Outcome]:
        try:
            return (yield from job())
        except Exception as exc:  # noqa: BLE001 - reported through on_done
            return Outcome(error=exc)

    def deliver(callback: Callable[[Any], None], value: Any) -> None:
        if value is None:
            return
        try:
            callback(value)
        except RuntimeError as exc:  # the dock was closed while the job ran
            if "deleted" not in str(exc):
                raise

    worker = thread_worker(guarded, start_thread=False, ignore_errors=True)()
    worker.yielded.connect(lambda event: deliver(on_event, event))
    worker.returned.connect(lambda outcome: deliver(on_done, outcome))
    worker.start()
    return worker


class InferenceWidget(QWidget):
    """Shared form of the Count and Segment docks.

    Subclasses set ``task``/``verb`` and implement ``_job`` (returns a generator for the
    worker), ``_apply`` (puts the result into the viewer and returns per-plane counts
    and extra table columns) and may add rows to ``self.form``.
    """

    task = "count"
    verb = "Count"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker: Any = None
        self._cancel: CancelToken | None = None
        self._result: dict[str, Any] | None = None  # last applied result (for CSV)
        self._frame_layer: Any = None

        self.setMinimumWidth(320)
        layout = QVBoxLayout(self)
        self.form = QFormLayout()
        layout.addLayout(self.form)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("image to analyse (results are bound to this layer)")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("bundled models first, then your fine-tuned ones")
        self.device_combo = QComboBox()
        for name in device_names():
            self.device_combo.addItem(name, name)
        self.diameter_edit = QLineEdit()
        self.diameter_edit.setPlaceholderText("automatic; or pixels")
        self.diameter_edit.setToolTip(
            "typical nucleus diameter in pixels of this image; blank finds it automatically "
            "(the result shows the diameter used); a number you type always wins"
        )
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("one letter per data axis: T time, Z depth, C channel, Y, X")
        self.axes_label = QLabel("axes")
        self.form.addRow("image", self.image_combo)
        self.form.addRow("model", self.model_combo)
        self.form.addRow("device", self.device_combo)
        self.form.addRow("cell diameter", self.diameter_edit)
        self.form.addRow(self.axes_label, self.axes_edit)

        buttons = QHBoxLayout()
        self.run_button = QPushButton(self.verb)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet("color: #f0a030;")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label = QLabel()
        self.total_label = QLabel()
        font = QFont()
        font.setPointSize(font.pointSize() + 4)
        font.setBold(True)
        self.total_label.setFont(font)
        self.detail_label = QLabel()
        self.table = QTableWidget(0, 1)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setVisible(False)
        self.table.setMinimumHeight(140)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.export_button = QPushButton("Export CSV")
        self.export_button.setEnabled(False)

        layout.addLayout(buttons)
        layout.addWidget(self.hint_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.total_label)
        layout.addWidget(self.detail_label)
        layout.addWidget(self.table)
        layout.addWidget(self.export_button)
        layout.addStretch(1)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        for signal in (
            self.model_combo.currentIndexChanged,
            self.diameter_edit.textChanged,
            self.axes_edit.textChanged,
        ):
            signal.connect(self._validate)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self._disconnect_layers = connect_layer_events(self.viewer, self.reset_choices)
        self.viewer.dims.events.current_step.connect(self._highlight_frame)
        model_events.changed.connect(self._on_models_changed)
        on_teardown(
            self,
            self._disconnect_layers,
            (self.viewer.dims.events.current_step, self._highlight_frame),
            (model_events.changed, self._on_models_changed),
        )
        self.reset_choices()
        self.refresh_models()

    # ----------------------------------------------------------------- choices
    def reset_choices(self, event: Any = None) -> None:
        """Refresh every layer picker (called when layers change)."""
        from napari.layers import Image

        set_combo_items(self.image_combo, layers_of(self.viewer, Image))

    def refresh_models(self) -> None:
        try:
            names = model_names(self.task)
        except Exception as exc:  # noqa: BLE001 - a broken model file must not kill the dock
            names = []
            notify_warning(f"could not list models: {exc}")
        keep = self.model_combo.currentData() or DEFAULT_MODELS.get(self.task)
        set_combo_items(self.model_combo, [(n, n) for n in names], keep=keep)

    def _on_models_changed(self, name: str = "") -> None:
        try:
            self.refresh_models()
        except RuntimeError:  # the Qt side of this widget is gone
            pass

    def _on_image_changed(self, index: int = -1) -> None:
        layer = self.image_combo.currentData()
        stack = layer is not None and (layer.data.ndim > 2 or layer.rgb)
        if layer is not None:
            self.axes_edit.setText(default_axes(layer.data.ndim, layer.rgb))
        self.axes_edit.setVisible(bool(stack))
        self.axes_label.setVisible(bool(stack))
        self._validate()

    # ----------------------------------------------------------------- inputs
    def params(self) -> dict[str, Any]:
        """The run's parameters, checked; raises InputError with the reason."""
        layer = self.image_combo.currentData()
        check_image_layer(layer)
        model = self.model_combo.currentData()
        if not model:
            raise InputError(f"no {self.task} model available; fine-tune or install one")
        return {
            "model": model,
            "device": self.device_combo.currentData() or "auto",
            "diameter": parse_diameter(self.diameter_edit.text()),
            "axes": check_axes(self.axes_edit.text(), layer.data.ndim),
        }

    def _validate(self, *args: Any) -> str:
        try:
            self.params()
            hint = ""
        except InputError as exc:
            hint = str(exc)
        return show_hint(self.hint_label, self.run_button, hint, self._worker is not None)

    # ----------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self) -> Any:
        """Start a run on the chosen layer; returns the worker (None if inputs are bad)."""
        if self._worker is not None:
            return self._worker
        try:
            params = self.params()
        except InputError as exc:
            notify_error(str(exc))
            return None
        source = self.image_combo.currentData()
        image = source.data  # numpy or dask: the engine reads it plane by plane
        self._cancel = CancelToken()
        job = self._job(source, image, params, self._cancel)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the first report
        self.status_label.setText(f"{self.verb}ing '{source.name}'...")
        self._worker = start_job(
            job,
            on_event=self._on_progress,
            on_done=lambda outcome: self._on_done(source, params, outcome),
        )
        return self._worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (between tiles/planes)."""
        if self._cancel is not None:
            self._cancel.cancel()
            self.status_label.setText("cancelling...")

    def _on_progress(self, event: Any) -> None:
        if isinstance(event, tuple) and len(event) >= 2:
            done, total = int(event[0]), int(event[1])
            message = str(event[2]) if len(event) > 2 else ""
            self.progress_bar.setRange(0, max(total, 1))
            self.progress_bar.setValue(min(done, max(total, 1)))
            if message:
                self.status_label.setText(message)

    def _on_done(self, source: Any, params: dict[str, Any], outcome: Outcome) -> None:
        self._worker = None
        self._cancel = None
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self._validate()
        if outcome.cancelled:
            self.status_label.setText("cancelled")
            notify_info(f"{self.verb} cancelled")
            return
        if outcome.error is not None:
            self.status_label.setText("failed")
            notify_error(error_message(outcome.error, self.verb))
            return
        if source not in self.viewer.layers:
            self.status_label.setText("source layer was removed; result discarded")
            notify_warning(f"'{source.name}' was removed during the run; result discarded")
            return
        try:
            self._result = self._apply(source, params, outcome.value)
        except Exception as exc:  # noqa: BLE001 - shown as a notification
            notify_error(error_message(exc, self.verb))
            return
        self.progress_bar.setValue(1)
        self.status_label.setText(f"done: '{source.name}' with {params['model']}")
        self._show_result(self._result)

    def _job(self, source: Any, image: np.ndarray, params: dict[str, Any], cancel: Any):
        raise NotImplementedError

    def _apply(self, source: Any, params: dict[str, Any], value: Any) -> dict[str, Any]:
        raise NotImplementedError

    # ----------------------------------------------------------------- results
    def _show_result(self, result: dict[str, Any]) -> None:
        counts = np.atleast_1d(np.asarray(result["counts"], dtype=float))
        extra: dict[str, np.ndarray] = result.get("extra", {})
        self.total_label.setText(f"{_fmt_total(counts.sum())} {result['unit']}")
        details = []
        if counts.size > 1:
            details.append(f"sum over {counts.size} planes: {_fmt_total(counts.sum())}")
        if result.get("diameter"):
            how = {"estimated": "found automatically", "given": "as given"}.get(
                result.get("diameter_source", ""), "the model's own"
            )
            details.append(f"nucleus diameter {float(result['diameter']):.1f} px ({how})")
        self.detail_label.setText("\n".join(details))
        self.detail_label.setVisible(bool(details))
        labels = frame_labels(counts)
        headers = ["frame", "count", *extra]
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(labels))
        for row, label in enumerate(labels):
            values = [label, _fmt_total(counts.ravel()[row])]
            values += [_fmt_total(np.ravel(v)[row]) for v in extra.values()]
            for col, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(row, col, item)
        self.table.setVisible(len(labels) > 1 or bool(extra))
        self.table.resizeColumnsToContents()
        self._frame_layer = result.get("frame_layer")
        self.export_button.setEnabled(True)
        self._highlight_frame()

    def current_row(self) -> int | None:
        """Row of the table for the plane the viewer shows now (None for 2-D results)."""
        layer = self._frame_layer
        if self._result is None or layer is None or layer not in self.viewer.layers:
            return None
        counts = np.asarray(self._result["counts"])
        if counts.ndim == 0 or counts.size <= 1:
            return None
        position = layer.world_to_data(self.viewer.dims.point)[: counts.ndim]
        index = np.clip(np.round(position).astype(int), 0, np.array(counts.shape) - 1)
        return int(np.ravel_multi_index(tuple(index), counts.shape))

    def _highlight_frame(self, event: Any = None) -> None:
        try:
            row = self.current_row()
            if row is None or row >= self.table.rowCount() or self._result is None:
                return
            counts = np.ravel(np.asarray(self._result["counts"], dtype=float))
            frame = self.table.item(row, 0).text()
            self.total_label.setText(
                f"{_fmt_total(counts[row])} {self._result['unit']} in frame {frame}"
            )
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)
            self.table.scrollToItem(self.table.item(row, 0))
        except RuntimeError:  # widget deleted while the viewer lives on
            pass

    def _on_row_selected(self) -> None:
        """Clicking a row jumps the viewer to that frame."""
        layer = self._frame_layer
        rows = self.table.selectionModel().selectedRows()
        if not rows or self._result is None or layer is None or layer not in self.viewer.layers:
            return
        counts = np.asarray(self._result["counts"])
        if counts.ndim == 0:
            return
        index = np.unravel_index(rows[0].row(), counts.shape)
        data_pos = np.zeros(layer.ndim)
        data_pos[: len(index)] = index
        world = layer.data_to_world(data_pos)
        step = list(self.viewer.dims.point)
        offset = len(step) - layer.ndim
        for axis in range(len(index)):
            step[offset + axis] = world[axis]
        self.viewer.dims.point = step

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the last result as ``file,frame,count,...`` (asks for a path if none)."""
        if self._result is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export counts", f"{self._result['name']}_counts.csv", "CSV (*.csv)"
            )
            if not path:
                return None
        out = write_counts_csv(
            path,
            self._result["file"],
            self._result["counts"],
            self._result.get("extra"),
            integer=bool(self._result.get("integer", False)),
        )
        notify_info(f"wrote {out}")
        return out


def _fmt_total(value: float) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() else f"{v:.1f}"
