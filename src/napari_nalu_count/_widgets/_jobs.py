"""Running an engine event generator from a dock: one napari ``thread_worker`` drives it (one
thread, no polling), its events arrive on the main thread, and napari's activity dock shows it
(``napari.utils.progress``; its cancel button stops the job as the dock's does)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari_nalu_count.errors import Cancelled, CancelToken, NaluCountError
from napari_nalu_count.events import Event, Progress, Stage, TrainStep


@dataclass
class Outcome:
    """How a job ended: its value, or the error that stopped it, or a cancel (a value may come
    with a cancel: training stopped early still returns its best model)."""

    value: Any = None
    error: BaseException | None = None
    cancelled: bool = False


def guarded(
    steps: Generator[Event, None, Any], cancel: CancelToken | None = None
) -> Generator[Event, None, Outcome]:
    """``steps`` with every ending turned into an :class:`Outcome` (errors never escape)."""
    try:
        value = yield from steps
    except Cancelled:
        return Outcome(cancelled=True)
    except Exception as exc:  # noqa: BLE001 - handed to the dock, shown as a notification
        return Outcome(error=exc)
    return Outcome(value=value, cancelled=bool(cancel is not None and cancel.cancelled))


def error_message(exc: BaseException, what: str) -> str:
    """One-line message for a notification: input errors as they are, others with context."""
    if isinstance(exc, NaluCountError | FileNotFoundError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"{what} ran out of memory; try a smaller image or the CPU device"
    return f"{what} failed: {type(exc).__name__}: {exc}"


class Job:
    """One run of ``steps`` in a napari thread worker.

    ``on_event`` gets every event on the main thread, ``on_done`` the :class:`Outcome`. A dock
    closed while the job runs is no error: its callbacks are skipped.
    """

    def __init__(
        self,
        steps: Generator[Event, None, Any],
        *,
        label: str,
        cancel: CancelToken,
        on_event: Callable[[Event], None],
        on_done: Callable[[Outcome], None],
    ) -> None:
        from napari.qt.threading import thread_worker

        self.cancel_token = cancel
        self.ended = False
        self.activity = _activity(label)
        self._on_event, self._on_done = on_event, on_done

        def work() -> Generator[Event, None, Outcome]:
            return (yield from guarded(steps, cancel))

        self.worker = thread_worker(work, start_thread=False, ignore_errors=True)()
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.start()

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def _yielded(self, event: Event) -> None:
        # the dock first: updating napari's activity dock may process pending Qt events
        # (the next events, the end of the job) before it returns
        if self.ended:
            return
        _deliver(self._on_event, event)
        if self.activity is not None and not self.ended:
            _feed(self.activity, event)
            if self.activity.is_canceled:
                self.cancel_token.cancel()  # the activity dock's cancel button

    def _returned(self, outcome: Outcome) -> None:
        self.ended = True
        if self.activity is not None:
            self.activity.close()
        _deliver(self._on_done, outcome)


def _deliver(callback: Callable[[Any], None], value: Any) -> None:
    try:
        callback(value)
    except RuntimeError as exc:  # the dock was closed while the job ran
        if "deleted" not in str(exc):
            raise


def _activity(label: str) -> Any:
    """A progress entry in napari's activity dock (None where napari cannot make one)."""
    try:
        from napari.utils import cancelable_progress

        return cancelable_progress(total=0, desc=label)
    except Exception:  # noqa: BLE001 - the job runs without an activity entry
        return None


def _feed(bar: Any, event: Event) -> None:
    """Mirror an event in a napari progress bar: ``done`` of ``total`` and the message."""
    if bar is None:
        return
    if isinstance(event, Progress):
        done, total, text = event.done, event.total, event.message
    elif isinstance(event, TrainStep):
        done, total, text = event.step, event.total_steps, ""
    elif isinstance(event, Stage):
        done, total, text = 0, 0, event.message
    else:
        return
    if total != bar.total:
        bar.total = total
    bar.n = min(done, total) if total else 0
    bar.update(0)
    if text and text != bar.desc:
        bar.set_description(text)
