"""What the Fine-tune dock shows while and after it trains (plain, no widget): the curves and
the status line built from the engine's typed events, and the before/after table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from napari_nalu_count.events import (
    EpochEnd,
    Event,
    Progress,
    Stage,
    TrainDone,
    TrainStep,
    Tuned,
    TuneTrial,
)
from napari_nalu_count.train import finetune as _finetune

#: key metric shown first for each task, and whether lower is better (the core's, which also
#: decides whether a fine-tuned model is worse than its start)
KEY_METRIC = _finetune.KEY_METRIC
#: metrics worth comparing before/after, in display order
SHOWN_METRICS = {
    "count": ("mae", "rmse", "mre", "bias"),
    "segment": ("f1", "precision", "recall", "miou", "mean_iou"),
}


@dataclass
class TrainingLog:
    """Loss per step, the validation metric per epoch, and the stage with its progress."""

    task: str = "count"
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)  # in units of steps, for one x axis
    metric: list[float] = field(default_factory=list)
    stage: str = ""
    status: str = ""
    fraction: float = 0.0  # of the current stage
    tuned: dict[str, Any] | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Stage):
            self.stage, self.status, self.fraction = event.name, event.message, 0.0
        elif isinstance(event, Progress):
            self.fraction = event.fraction
            self.status = event.message or self.status
        elif isinstance(event, TrainStep):
            if math.isfinite(event.loss):
                self.steps.append(event.step)
                self.losses.append(event.loss)
            self.fraction = event.step / event.total_steps if event.total_steps else 0.0
            self.status = f"epoch {event.epoch}  step {event.step}  loss {event.loss:.4g}"
        elif isinstance(event, EpochEnd):
            key = KEY_METRIC[self.task][0]
            value = event.metrics.get(key)
            if isinstance(value, int | float) and math.isfinite(float(value)):
                self.epochs.append(event.step)
                self.metric.append(float(value))
                self.status = f"epoch {event.epoch}: validation {key} {float(value):.3g}"
        elif isinstance(event, TuneTrial):
            score = "" if event.value is None else f", score {event.value:.3g}"
            self.status = f"tuning B/X: trial {event.number + 1}/{event.n_trials}{score}"
            self.fraction = (event.number + 1) / event.n_trials
        elif isinstance(event, Tuned):
            self.tuned = dict(event.fre)
            self.status = f"tuned: B={event.fre['B']}, X={float(event.fre['X']):.3g}"
        elif isinstance(event, TrainDone):
            self.fraction = 1.0


def metrics_summary(task: str, before: dict[str, Any], after: dict[str, Any]) -> list[tuple]:
    """Rows ``(metric, before, after)`` for the metrics both dicts have, key metric first."""
    before, after = before or {}, after or {}
    keys = [k for k in SHOWN_METRICS[task] if k in before and k in after]
    return [(k, float(before[k]), float(after[k])) for k in keys if _is_number(after[k])]


def summary_html(task: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    """The before/after table of the held-out part, as the dock shows it."""
    rows = metrics_summary(task, before or {}, after or {})
    if not rows:
        return "no held-out metrics (too few annotated images to hold some out)"
    lines = "".join(
        f"<tr><td>{k}</td><td align='right'>{b:.3g}</td><td align='right'>{a:.3g}</td></tr>"
        for k, b, a in rows
    )
    n = (after or {}).get("n_cells")
    what = f", {n} {'cells' if task == 'count' else 'objects'}" if n else ""
    return (
        f"<b>held-out part{what}, before → after</b><table cellspacing='6'>"
        "<tr><th></th><th>before</th><th>after</th></tr>" + lines + "</table>"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
