"""Training: one loop for counting and segmentation, fine-tuning, and TPE search.

- :func:`train` / :class:`TrainConfig` / :class:`TrainResult` (:mod:`.loop`)
- :func:`fine_tune` / :class:`FineTuneResult` (:mod:`.finetune`)
- :func:`tune` / :class:`TuneResult` (:mod:`.tune`, needs Optuna)
- metrics in :mod:`.metrics` (count MAE, mIoU, instance F1), patches in :mod:`.dataset`.
"""

from __future__ import annotations

from napari_nalu_count.train.loop import TrainConfig, TrainResult, evaluate, train

__all__ = ["FineTuneResult", "TrainConfig", "TrainResult", "evaluate", "fine_tune", "train"]


def __getattr__(name: str):
    if name in ("fine_tune", "FineTuneResult"):
        from napari_nalu_count.train import finetune

        return getattr(finetune, name)
    if name in ("tune", "TuneResult"):
        from napari_nalu_count.train import tune as _tune

        return getattr(_tune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
