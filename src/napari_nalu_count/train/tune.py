"""Hyper-parameter search over FRE's B and X and the learning rate with Optuna's TPE sampler.

The FRE paper searches the number of enhanced bottleneck channels ``B`` and the enhancement
factor ``X`` with the Tree-structured Parzen Estimator (TPE, Bergstra et al. 2011); here the
learning rate is searched as well. Each trial trains a fresh network (:func:`~.loop.train`) for
a few epochs and scores it on the validation images by the monitored metric (count MAE, lower is
better; instance F1 at IoU 0.5, higher is better). ``B`` is an integer in ``[b_min, b_max]``
(default ``0 .. bottleneck width``), ``X`` log-uniform in ``[x_min, x_max]`` (default 1 to 1000:
the paper's best values were X = 632 and X = 250), the learning rate log-uniform.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from napari_nalu_count.errors import CancelToken, InputError, TrainingDiverged

from .loop import _LOWER_IS_BETTER, TrainConfig, train

__all__ = ["TuneResult", "tune"]


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


def tune(
    config: Mapping[str, Any],
    train_samples: Sequence[Any],
    val_samples: Sequence[Any],
    task: str | None = None,
    *,
    n_trials: int = 20,
    cfg: TrainConfig | None = None,
    b_range: tuple[int, int] | None = None,
    x_range: tuple[float, float] = (1.0, 1000.0),
    lr_range: tuple[float, float] = (1e-4, 1e-2),
    seed: int = 0,
    callback: Callable[[dict[str, Any]], None] | None = None,
    cancel: CancelToken | None = None,
) -> TuneResult:
    """Search FRE's ``B``, ``X`` and the learning rate for ``config`` with TPE.

    ``cfg`` sets everything else of each trial's training (epochs per trial, patch size, ...);
    every trial uses ``cfg.seed``, so trials differ only by their parameters. ``callback`` gets
    ``{"kind": "trial", "number", "params", "value", "best_value", "best_params"}`` after each
    trial (training events are not forwarded). A set ``cancel`` token stops the search; the best
    trial so far is returned.
    """
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise InputError("tuning needs optuna: pip install optuna") from exc
    from napari_nalu_count.nn import registry

    if not isinstance(n_trials, int) or n_trials < 1:
        raise InputError(f"the number of trials must be a positive integer, got {n_trials!r}")
    base = registry.validate_config(dict(config))
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
    lr_lo, lr_hi = float(lr_range[0]), float(lr_range[1])
    if not 0 < lr_lo <= lr_hi:
        raise InputError(f"learning-rate range must be positive with min <= max, got {lr_range}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, n_trials // 3)))
    study = optuna.create_study(direction=direction, sampler=sampler)
    records: list[dict[str, Any]] = []
    state = {"cancelled": False}

    def objective(trial: Any) -> float:
        B = trial.suggest_int("B", b_lo, b_hi)
        X = trial.suggest_float("X", x_lo, x_hi, log=True)
        lr = trial.suggest_float("lr", lr_lo, lr_hi, log=True)
        trial_cfg = copy.deepcopy(cfg)
        trial_cfg.lr = lr
        trial_cfg.fre = {"B": B, "X": X, "seed": int(cfg.seed)}
        rec: dict[str, Any] = {"number": trial.number, "B": B, "X": X, "lr": lr}
        try:
            res = train(dict(base), train_samples, val_samples, task, trial_cfg, cancel=cancel)
        except TrainingDiverged as exc:
            rec.update(value=None, state="diverged", metrics={}, error=str(exc))
            records.append(rec)
            raise optuna.TrialPruned(str(exc)) from exc
        if res.cancelled:
            state["cancelled"] = True
            study.stop()
        value = float(res.best_metrics.get(monitor, float("nan")))
        metrics = {k: v for k, v in res.best_metrics.items() if isinstance(v, (int, float))}
        rec.update(
            value=value if math.isfinite(value) else None,
            metrics=metrics,
            state="cancelled" if res.cancelled else "complete",
        )
        records.append(rec)
        if not math.isfinite(value):
            raise optuna.TrialPruned("no validation metric")
        return value

    def after_trial(study_: Any, trial: Any) -> None:
        if cancel is not None and cancel.cancelled:
            state["cancelled"] = True
            study_.stop()
        if callback is None:
            return
        try:
            best_value, best_params = study_.best_value, dict(study_.best_params)
        except ValueError:
            best_value, best_params = None, {}
        callback(
            {
                "kind": "trial",
                "number": trial.number,
                "params": dict(trial.params),
                "value": trial.value,
                "best_value": best_value,
                "best_params": best_params,
            }
        )

    study.optimize(objective, n_trials=n_trials, callbacks=[after_trial], catch=())
    try:
        best_params, best_value = dict(study.best_params), float(study.best_value)
    except ValueError:
        best_params, best_value = {}, None
    return TuneResult(best_params, best_value, monitor, direction, records, state["cancelled"])
