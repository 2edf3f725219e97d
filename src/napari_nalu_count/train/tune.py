"""Hyper-parameter search over FRE's B and X and the learning rate with Optuna's TPE sampler.

The FRE paper searches the number of enhanced bottleneck channels ``B`` and the enhancement
factor ``X`` with the Tree-structured Parzen Estimator (TPE, Bergstra et al. 2011); here the
learning rate is searched as well. Each trial trains a fresh network (:func:`~.loop.train`) for
a few epochs and scores it on the validation images by the monitored metric (count MAE, lower is
better; instance F1 at IoU 0.5, higher is better). ``B`` is an integer in ``[b_min, b_max]``
(default ``0 .. bottleneck width``), ``X`` log-uniform in ``[x_min, x_max]`` (default 1 to 1000:
the paper's best values were X = 632 and X = 250), the learning rate log-uniform.

Fine-tuning searches differently (:class:`TuneSettings`, ``fine_tune(..., tune=...)``): every
trial starts from the start model's weights and trains at the fine-tuning's learning rate, so
only ``B`` and ``X`` vary and the winner is what the fine-tuning itself will use.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from napari_nalu_count.errors import CancelToken, InputError, TrainingDiverged
from napari_nalu_count.events import Event, Progress, TrainStep, TuneTrial, drive

from .loop import _LOWER_IS_BETTER, TrainConfig, train_events

__all__ = ["TuneResult", "TuneSettings", "tune", "tune_events"]


@dataclass
class TuneResult:
    """Outcome of :func:`tune`.

    ``trials`` has one dict per finished trial: ``number``, ``B``, ``X``, ``lr``, ``value``
    (the monitored metric; None for a failed trial), ``state`` and ``metrics``.
    """

    best_params: dict[str, Any]
    best_value: float | None
    monitor: str
    direction: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_params": self.best_params,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "direction": self.direction,
            "trials": self.trials,
            "cancelled": self.cancelled,
        }


@dataclass(frozen=True)
class TuneSettings:
    """The B/X search that ``fine_tune(..., tune=...)`` runs before it trains.

    ``n_trials`` short trainings of ``epochs`` x ``steps_per_epoch`` steps (None: the
    fine-tuning's steps per epoch, at most 10), each starting from the start model's weights at
    the fine-tuning's learning rate, scored on the same held-out part; ``b_range`` (None:
    0 .. bottleneck width) and ``x_range`` bound the search.
    """

    n_trials: int = 6
    epochs: int = 2
    steps_per_epoch: int | None = None
    b_range: tuple[int, int] | None = None
    x_range: tuple[float, float] = (1.0, 1000.0)

    @classmethod
    def of(cls, value: Any) -> TuneSettings | None:
        """``tune=`` as settings: None/False -> no search, True -> the defaults, an int -> that
        many trials, a :class:`TuneSettings` as it is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            settings = value
        elif isinstance(value, int):
            settings = cls(n_trials=value)
        else:
            raise InputError(
                f"tune must be None, True, a number of trials or TuneSettings, got {value!r}"
            )
        if not isinstance(settings.n_trials, int) or settings.n_trials < 1:
            raise InputError(f"tune needs at least one trial, got {settings.n_trials!r}")
        if not isinstance(settings.epochs, int) or settings.epochs < 1:
            raise InputError(f"tune needs at least one epoch per trial, got {settings.epochs!r}")
        return settings


def tune(
    config: Any,
    train_samples: Sequence[Any],
    val_samples: Sequence[Any],
    task: str | None = None,
    *,
    n_trials: int = 20,
    cfg: TrainConfig | None = None,
    b_range: tuple[int, int] | None = None,
    x_range: tuple[float, float] = (1.0, 1000.0),
    lr_range: tuple[float, float] | None = (1e-4, 1e-2),
    seed: int = 0,
    callback: Callable[[Event], None] | None = None,
    cancel: CancelToken | None = None,
) -> TuneResult:
    """Search FRE's ``B``, ``X`` (and the learning rate) for ``config`` with TPE.

    ``config`` is an architecture config (every trial starts from fresh weights) or a loaded
    model (every trial starts from its weights: a fine-tuning search). ``cfg`` sets everything
    else of each trial's training (epochs per trial, patch size, ...); every trial uses
    ``cfg.seed``, so trials differ only by their parameters. ``lr_range=None`` keeps ``cfg.lr``
    for every trial and searches ``B`` and ``X`` only. ``callback`` gets a
    :class:`~napari_nalu_count.events.TuneTrial` after each trial and
    :class:`~napari_nalu_count.events.Progress` while trials train (``done`` of all trials'
    steps); they read like ``{"kind": "trial", "number", "params", "value", "best_value",
    "best_params"}``. A set ``cancel`` token stops the search; the best trial so far is
    returned.
    """
    steps = tune_events(
        config,
        train_samples,
        val_samples,
        task,
        n_trials=n_trials,
        cfg=cfg,
        b_range=b_range,
        x_range=x_range,
        lr_range=lr_range,
        seed=seed,
        cancel=cancel,
    )
    return drive(steps, callback)


def tune_events(
    config: Any,
    train_samples: Sequence[Any],
    val_samples: Sequence[Any],
    task: str | None = None,
    *,
    n_trials: int = 20,
    cfg: TrainConfig | None = None,
    b_range: tuple[int, int] | None = None,
    x_range: tuple[float, float] = (1.0, 1000.0),
    lr_range: tuple[float, float] | None = (1e-4, 1e-2),
    seed: int = 0,
    cancel: CancelToken | None = None,
) -> Generator[Event, None, TuneResult]:
    """:func:`tune` as an event generator (Optuna's ask-and-tell interface, so each trial's
    training runs in this generator): yields ``Progress`` and ``TuneTrial``, returns the
    :class:`TuneResult`."""
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise InputError("tuning needs optuna: pip install optuna") from exc
    from napari_nalu_count.nn import registry

    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise InputError(f"the number of trials must be a positive integer, got {n_trials!r}")
    start = config if hasattr(config, "net") and hasattr(config, "config") else None
    base = registry.validate_config(dict(start.config if start is not None else config))
    task = task or registry.task_of(base)
    cfg = copy.deepcopy(cfg) if cfg is not None else TrainConfig(epochs=5, steps_per_epoch=50)
    monitor = cfg.monitor or ("mae" if task == "count" else "f1")
    direction = "minimize" if monitor in _LOWER_IS_BETTER else "maximize"
    bottleneck = int(base["widths"][-1])
    b_lo, b_hi = b_range if b_range is not None else (0, bottleneck)
    if not 0 <= b_lo <= b_hi <= bottleneck:
        raise InputError(
            f"B range {b_lo}..{b_hi} must lie within 0..{bottleneck} (the bottleneck width)"
        )
    x_lo, x_hi = float(x_range[0]), float(x_range[1])
    if not 0 < x_lo <= x_hi:
        raise InputError(f"X range must be positive with min <= max, got {x_range}")
    if lr_range is not None:
        lr_lo, lr_hi = float(lr_range[0]), float(lr_range[1])
        if not 0 < lr_lo <= lr_hi:
            raise InputError(
                f"learning-rate range must be positive with min <= max, got {lr_range}"
            )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, n_trials // 3)))
    study = optuna.create_study(direction=direction, sampler=sampler)
    records: list[dict[str, Any]] = []
    cancelled = False
    per_trial = cfg.epochs * cfg.steps_per_epoch
    total = n_trials * per_trial
    for number in range(n_trials):
        if cancel is not None and cancel.cancelled:
            cancelled = True
            break
        trial = study.ask()
        B = trial.suggest_int("B", b_lo, b_hi)
        X = trial.suggest_float("X", x_lo, x_hi, log=True)
        lr = trial.suggest_float("lr", lr_lo, lr_hi, log=True) if lr_range else cfg.lr
        trial_cfg = copy.deepcopy(cfg)
        trial_cfg.lr = lr
        trial_cfg.fre = {"B": B, "X": X, "seed": int(cfg.seed)}
        rec: dict[str, Any] = {"number": trial.number, "B": B, "X": X, "lr": lr}
        label = f"tuning B/X: trial {number + 1}/{n_trials}"
        value: float | None = None
        try:
            res = yield from _trial_steps(
                train_events(
                    start if start is not None else dict(base),
                    train_samples,
                    val_samples,
                    task,
                    trial_cfg,
                    cancel=cancel,
                ),
                number * per_trial,
                total,
                label,
            )
        except TrainingDiverged as exc:
            rec.update(value=None, state="diverged", metrics={}, error=str(exc))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            cancelled = bool(res.cancelled)
            v = float(res.best_metrics.get(monitor, float("nan")))
            metrics = {k: m for k, m in res.best_metrics.items() if isinstance(m, (int, float))}
            value = v if math.isfinite(v) else None
            rec.update(value=value, metrics=metrics, state="cancelled" if cancelled else "complete")
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
        records.append(rec)
        best_value, best_params = _best(study)
        yield TuneTrial(number, n_trials, dict(trial.params), value, best_value, best_params)
        if cancelled or (cancel is not None and cancel.cancelled):
            cancelled = True
            break
    best_value, best_params = _best(study)
    return TuneResult(best_params, best_value, monitor, direction, records, cancelled)


def _best(study: Any) -> tuple[float | None, dict[str, Any]]:
    try:
        return float(study.best_value), dict(study.best_params)
    except ValueError:  # no completed trial yet
        return None, {}


def _trial_steps(
    steps: Generator[Event, None, Any], offset: int, total: int, label: str
) -> Generator[Event, None, Any]:
    """Run one trial's training, reporting its steps as :class:`Progress` over all trials."""
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, TrainStep):
            yield Progress(offset + event.step, total, label)
