"""Exceptions and small shared primitives (cancel token) used by every layer."""

from __future__ import annotations

import threading


class NaluCountError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(NaluCountError, ValueError):
    """Bad user input (image, axes, annotations, arguments): the message says what and why."""


class ModelFileError(NaluCountError, ValueError):
    """A model file or card is missing, truncated, edited or inconsistent."""


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
