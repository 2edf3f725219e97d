"""What the docks' pickers offer: the models (bundled first, then the user's) and the devices,
and the notice board that tells every open dock when a fine-tuned model was saved."""

from __future__ import annotations

from typing import Any

from psygnal import Signal

#: the engine's default model per task, preselected when present
DEFAULT_MODELS = {"count": "nuclei-count", "segment": "nuclei-seg"}


class ModelEvents:
    """Process-wide notice board: the fine-tune dock announces new models here."""

    changed = Signal(str)  # name of the model that was added or updated


model_events = ModelEvents()


def notify_model_added(name: str) -> None:
    """Tell every model picker to refresh (called after a fine-tuned model was saved)."""
    model_events.changed.emit(name)


def model_names(task: str | None = None) -> list[str]:
    """Names of the usable bundled then user models, optionally only those of one task."""
    from napari_nalu_count import models

    return [
        info.name
        for info in models.describe_models(verify=False)
        if info.ok and (task is None or (info.card or {}).get("task") == task)
    ]


def model_card(name: str | None) -> dict[str, Any] | None:
    """The card of a listed model (None when it is unknown or broken)."""
    from napari_nalu_count import models

    for info in models.describe_models(verify=False):
        if info.name == name and info.ok:
            return dict(info.card or {})
    return None


def device_names() -> list[str]:
    """``auto`` and ``cpu``, plus ``cuda``/``cuda:N`` and ``mps`` where present."""
    import torch

    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names += ["cuda"] if n == 1 else [f"cuda:{i}" for i in range(n)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names
