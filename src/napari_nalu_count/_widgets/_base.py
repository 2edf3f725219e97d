"""The dock base every job dock shares: a magicgui parameter form, Run and Cancel, the hint that
says why Run is off, a progress bar and a status line, the model picker kept fresh, teardown.

A dock subclasses :class:`JobDock` and fills in three things:

- ``self.form`` (a magicgui ``Container``): its parameter widgets, appended in ``__init__``,
  which ends with :meth:`JobDock.ready`;
- :meth:`JobDock.prepare`: read and check the form (raise :class:`InputError` with the reason),
  return an engine *event generator* and the function that takes the job's :class:`Outcome`;
- optionally :meth:`JobDock.on_event` (live feedback) and :meth:`JobDock.model_task`.

The base validates on every form change (``prepare(None)``, no job is started), runs the
generator with :class:`~._jobs.Job` and restores the buttons when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import ComboBox, Container
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_nalu_count._widgets import _models, _viewer
from napari_nalu_count._widgets._jobs import Job, Outcome, error_message
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.events import Event, Progress

#: the colour of hints (why Run is off); readable on napari's dark and light themes
HINT_STYLE = "color: #e08a00;"
Prepared = tuple[Generator[Event, None, Any], Callable[[Outcome], None]]


class JobDock(QWidget):
    """Base of the Count, Segment and Fine-tune docks (see the module docstring)."""

    #: text of the Run button and the word used in messages
    verb = "Run"
    #: text of the Cancel button and what pressing it says
    cancel_text, cancelling_text = "Cancel", "cancelling..."

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.model_combo: ComboBox | None = None
        self._cleanups: list[Callable[[], None]] = []
        self._ready = False  # set by :meth:`ready` once the subclass built its form
        self._model_memory: dict[str, str] = {}  # task -> the model last chosen for it

        self.setMinimumWidth(330)
        layout = QVBoxLayout(self)
        self.form = Container(labels=True)
        self.form.margins = (0, 0, 0, 0)
        layout.addWidget(self.form.native)
        buttons = QHBoxLayout()
        self.run_button = QPushButton(self.verb)
        self.cancel_button = QPushButton(self.cancel_text)
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet(HINT_STYLE)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        for widget in (self.hint_label, self.progress_bar, self.status_label):
            layout.addWidget(widget)
        self.body = QVBoxLayout()  # the dock's own results (tables, plots)
        layout.addLayout(self.body)
        layout.addStretch(1)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.form.changed.connect(self.validate)
        self.on_close(_viewer.connect_layer_events(self.viewer, self._on_layers))
        _models.model_events.changed.connect(self._on_models)
        self.on_close(lambda: _models.model_events.changed.disconnect(self._on_models))
        self.destroyed.connect(_teardown_of(self))

    # ------------------------------------------------------------------ for subclasses
    def prepare(self, cancel: CancelToken | None) -> Prepared:
        """The job for the form as it is: ``(event generator, on_done)``; raises InputError.

        Called with ``cancel=None`` to validate only (the generator is then not run)."""
        raise NotImplementedError

    def on_event(self, event: Event) -> None:
        """Live feedback; the base shows :class:`Progress` events in the bar and status line."""
        if isinstance(event, Progress):
            self.progress_bar.setRange(0, max(event.total, 1))
            self.progress_bar.setValue(min(event.done, max(event.total, 1)))
            if event.message:
                self.status_label.setText(event.message)

    def model_task(self) -> str | None:
        """Which models the model picker offers (``"count"``, ``"segment"``)."""
        return None

    def refresh_layers(self) -> None:
        """Layers came, went or moved: refresh the layer pickers."""
        self.form.reset_choices()

    def ready(self) -> None:
        """The form is complete (call at the end of the subclass's ``__init__``): check it."""
        self._ready = True
        self.validate()

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the dock is destroyed (disconnect from outside objects)."""
        self._cleanups.append(cleanup)

    # ------------------------------------------------------------------ the model picker
    def add_model_picker(self, label: str, tooltip: str) -> ComboBox:
        self.model_combo = ComboBox(label=label, choices=self._model_choices, tooltip=tooltip)
        self.form.append(self.model_combo)
        self.refresh_models()
        self._remember_model(self.model_combo.value)
        self.model_combo.changed.connect(self._remember_model)
        return self.model_combo

    def _model_choices(self, widget: Any = None) -> list[tuple[str, str]]:
        try:
            return [(n, n) for n in _models.model_names(self.model_task())]
        except Exception as exc:  # noqa: BLE001 - a broken model file must not kill the dock
            _viewer.notify_warning(f"could not list models: {exc}")
            return []

    def refresh_models(self) -> None:
        """Refill the model picker, keeping the choice; else the one last chosen for this task,
        else the task's default model."""
        if self.model_combo is None:
            return
        task = self.model_task() or ""
        current, remembered = self.model_combo.value, self._model_memory.get(task)
        self.model_combo.reset_choices()  # may pick (and remember) the first name on its own
        names = list(self.model_combo.choices)
        if current in names:
            return
        for name in (remembered, _models.DEFAULT_MODELS.get(task)):
            if name in names:
                self.model_combo.value = name
                return

    def _remember_model(self, name: str | None) -> None:
        if name:
            self._model_memory[self.model_task() or ""] = name

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self.job is not None

    def validate(self, *args: Any) -> str:
        """Check the form; show why Run is off (the hint) and enable Run when all is well."""
        if not self._ready:
            return ""
        try:
            self.prepare(None)
            hint = ""
        except InputError as exc:
            hint = str(exc)
        self.hint_label.setText(hint)
        self.hint_label.setVisible(bool(hint))
        self.run_button.setEnabled(not hint and self.job is None)
        return hint

    def run(self) -> Job | None:
        """Start the job (the running one when busy; None with a notification for bad inputs)."""
        if self.job is not None:
            return self.job
        cancel = CancelToken()
        try:
            steps, on_done = self.prepare(cancel)
        except InputError as exc:
            _viewer.notify_error(str(exc))
            return None
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the first report
        self.job = Job(
            steps,
            label=f"{self.verb}: {self.status_label.text() or 'running'}",
            cancel=cancel,
            on_event=self.on_event,
            on_done=lambda outcome: self._done(outcome, on_done),
        )
        return self.job

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (between tiles, planes, steps)."""
        if self.job is not None:
            self.job.cancel()
            self.status_label.setText(self.cancelling_text)

    def fail(self, outcome: Outcome) -> bool:
        """Report a cancel or an error of ``outcome`` (True when it was one of those)."""
        if outcome.error is not None:
            self.status_label.setText("failed")
            _viewer.notify_error(error_message(outcome.error, self.verb))
            return True
        if outcome.cancelled and outcome.value is None:
            self.status_label.setText("cancelled")
            _viewer.notify_info(f"{self.verb} cancelled")
            return True
        return False

    def _done(self, outcome: Outcome, on_done: Callable[[Outcome], None]) -> None:
        self.job = None
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0 if outcome.error or outcome.cancelled else 1)
        try:
            on_done(outcome)
        except Exception as exc:  # noqa: BLE001 - shown as a notification, never a dialog
            _viewer.notify_error(error_message(exc, self.verb))
        self.validate()

    def _on_layers(self, event: Any = None) -> None:
        try:
            self.refresh_layers()
            self.validate()
        except RuntimeError:  # the Qt side of this dock is gone
            pass

    def _on_models(self, name: str = "") -> None:
        try:
            self.refresh_models()
            self.validate()
        except RuntimeError:
            pass


def _teardown_of(dock: JobDock) -> Callable[..., None]:
    """What runs when ``dock`` is destroyed: stop its job, let go of the viewer and the notice
    board. The Qt side is gone by then, so only plain Python state is touched (a free function:
    Qt drops connections to the methods of an object it destroys)."""

    def teardown(*args: Any) -> None:
        if dock.job is not None:
            dock.job.cancel()
        for cleanup in dock._cleanups:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - already disconnected or gone
                pass

    return teardown
