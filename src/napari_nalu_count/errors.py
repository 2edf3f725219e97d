"""Exceptions and small shared primitives (cancel token) used by every layer."""

from __future__ import annotations

import threading


class NaluCountError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(NaluCountError, ValueError):
    """Bad user input (image, axes, annotations, arguments): the message says what and why."""


class ModelFileError(NaluCountError, ValueError):
    """A model file or card is missing, truncated, edited or inconsistent."""


class TrainingDiverged(NaluCountError, FloatingPointError):
    """Training produced a non-finite loss (NaN or infinity), usually a too-high learning rate.

    ``epoch`` and ``step`` (both counted from 1) and ``loss`` say where it happened. The loop
    attaches what it had before the divergence: ``best_state`` (a CPU state dict of the best
    validated epoch, or None), ``best_epoch``, ``best_metrics`` and ``history``, so a caller can
    keep the last good model. ``saved`` is set by :func:`~napari_nalu_count.train.fine_tune`
    to the card path of the model it kept (None: nothing was written). It is also a
    :class:`FloatingPointError`, the type raised before this class existed.
    """

    def __init__(
        self,
        epoch: int,
        step: int,
        loss: float,
        *,
        best_state: dict | None = None,
        best_epoch: int | None = None,
        best_metrics: dict | None = None,
        history: list | None = None,
        note: str = "",
    ) -> None:
        self.epoch, self.step, self.loss = int(epoch), int(step), float(loss)
        self.best_state = best_state
        self.best_epoch = best_epoch
        self.best_metrics = dict(best_metrics or {})
        self.history = list(history or [])
        self.saved = None
        self.note = note
        super().__init__(self._message())

    def _message(self) -> str:
        msg = (
            f"training diverged at epoch {self.epoch}, step {self.step} (loss {self.loss}); "
            "try a lower learning rate"
        )
        return f"{msg}; {self.note}" if self.note else msg

    def with_note(self, note: str) -> TrainingDiverged:
        """Set the text appended to the message (what was kept) and return ``self``."""
        self.note = note
        self.args = (self._message(),)
        return self


class Cancelled(NaluCountError):
    """Raised inside a long operation when its :class:`CancelToken` was set."""


class CancelToken:
    """Thread-safe cancel flag shared between a front end and a long-running engine call.

    The engine calls :meth:`raise_if_cancelled` between units of work (tiles, planes,
    training steps); front ends call :meth:`cancel`.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("operation cancelled")
