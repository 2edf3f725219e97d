"""The progress protocol: small frozen dataclasses that every long engine call reports.

Long engine calls exist in two forms. The *event generators* (``infer.count_events``,
``infer.segment_events``, ``train.train_events``, ``train.tune_events``,
``train.fine_tune_events``) yield these events and return their result (``StopIteration.value``,
so ``result = yield from count_events(...)`` works); a napari ``thread_worker`` drives them
directly: one thread, no queue, no polling. The plain functions (``count``, ``segment``,
``train``, ``tune``, ``fine_tune``) drive the same generators with :func:`drive` and hand each
event to a callback.

Events (``kind`` in brackets):

- :class:`Progress` (``"progress"``): ``done`` of ``total`` units (tiles, images, trial steps)
  and a message; inference reports one per tile.
- :class:`Stage` (``"stage"``): a named phase of a job starts (``"measure"``, ``"tune"``,
  ``"train"``, ``"validate"``).
- :class:`TrainStep` (``"step"``), :class:`EpochEnd` (``"epoch"``), :class:`TrainDone`
  (``"done"``): the training loop.
- :class:`TuneTrial` (``"trial"``), :class:`Tuned` (``"tuned"``): the TPE search over FRE's B/X.

Events read like the dicts the training callbacks used to receive (``event["kind"]``,
``event.get("metrics")``), so callers written against those keep working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

R = TypeVar("R")

__all__ = [
    "EpochEnd",
    "Event",
    "Progress",
    "Stage",
    "TrainDone",
    "TrainStep",
    "TuneTrial",
    "Tuned",
    "drive",
]


@dataclass(frozen=True)
class Event:
    """Base of every event; ``kind`` names the type in plain text."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., field: value, ...}`` (values as they are, not copied)."""
        out: dict[str, Any] = {"kind": self.kind}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        return out

    # read-only mapping access, for callbacks written against the dict events
    def __getitem__(self, key: str) -> Any:
        if key == "kind":
            return self.kind
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key == "kind" or key in self._names()

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def keys(self) -> Iterator[str]:
        return iter(("kind", *self._names()))

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))


@dataclass(frozen=True)
class Progress(Event):
    """``done`` of ``total`` units of work (``total`` 0: not known yet)."""

    kind: ClassVar[str] = "progress"
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total > 0 else 0.0


@dataclass(frozen=True)
class Stage(Event):
    """A phase of a long job begins: ``name`` is a key, ``message`` the words to show."""

    kind: ClassVar[str] = "stage"
    name: str
    message: str = ""


@dataclass(frozen=True)
class TrainStep(Event):
    """One optimiser step (``epoch`` and ``step`` count from 1; ``total_steps`` planned)."""

    kind: ClassVar[str] = "step"
    epoch: int
    step: int
    loss: float
    lr: float
    total_steps: int = 0
    metrics: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EpochEnd(Event):
    """An epoch was trained and validated; ``best`` says whether it is the best so far."""

    kind: ClassVar[str] = "epoch"
    epoch: int
    step: int
    loss: float
    lr: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    best: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainDone(Event):
    """Training ended (finished, stopped early or cancelled); ``metrics`` of the best epoch."""

    kind: ClassVar[str] = "done"
    epoch: int
    step: int
    loss: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    cancelled: bool = False
    stopped_early: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class TuneTrial(Event):
    """A trial of the B/X search finished (``number`` counts from 0; ``value`` None: failed)."""

    kind: ClassVar[str] = "trial"
    number: int
    n_trials: int
    params: Mapping[str, Any]
    value: float | None
    best_value: float | None = None
    best_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tuned(Event):
    """The search chose FRE's settings (``{"B", "X", "seed"}``) for the training that follows."""

    kind: ClassVar[str] = "tuned"
    fre: Mapping[str, Any]
    value: float | None = None


def drive(steps: Generator[Event, Any, R], callback: Callable[[Event], Any] | None = None) -> R:
    """Run an event generator to its end, handing each event to ``callback``; return its value."""
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
