"""Training: one loop for counting and segmentation, fine-tuning, and TPE search.

- :func:`train` / :class:`TrainConfig` / :class:`TrainResult` (:mod:`.loop`)
- :func:`fine_tune` / :class:`FineTuneResult` (:mod:`.finetune`), held-out metrics measured end
  to end (:mod:`.validate`)
- every long call also as an event generator (:mod:`napari_nalu_count.events`):
  :func:`train_events`, :func:`tune_events`, :func:`fine_tune_events`
- :func:`tune` / :class:`TuneResult` (the search lives in the submodule of the same name; Optuna
  is imported only when a search runs). ``napari_nalu_count.train.tune`` is the *function*; the
  submodule stays importable (``from napari_nalu_count.train.tune import TuneResult`` or
  ``importlib.import_module("napari_nalu_count.train.tune")``). ``run_tune`` is an alias.
- metrics in :mod:`.metrics` (count MAE, mIoU, instance F1), patches in :mod:`.dataset`.
"""

from __future__ import annotations

from napari_nalu_count.train.loop import (
    TrainConfig,
    TrainResult,
    evaluate,
    recalibrate_bn,
    train,
    train_events,
)

# Importing the submodule binds the package attribute ``tune`` to the module; the from-import
# then rebinds it to the function (cheap: optuna is imported inside ``tune()``).
from napari_nalu_count.train.tune import TuneResult, TuneSettings, tune, tune_events

run_tune = tune

__all__ = [
    "FineTuneResult",
    "TrainConfig",
    "TrainResult",
    "TuneResult",
    "TuneSettings",
    "evaluate",
    "fine_tune",
    "fine_tune_events",
    "recalibrate_bn",
    "run_tune",
    "train",
    "train_events",
    "tune",
    "tune_events",
]


def __getattr__(name: str):
    if name in ("fine_tune", "fine_tune_events", "FineTuneResult"):
        import importlib

        finetune = importlib.import_module("napari_nalu_count.train.finetune")
        return getattr(finetune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
