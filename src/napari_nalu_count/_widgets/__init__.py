"""napari dock widgets: Count cells, Segment cells, Fine-tune model.

Each module keeps a plain, GUI-free function (``run_count``, ``run_segment``,
``collect_samples``/``run_finetune``) beside the widget class that calls it in a worker.
"""

from __future__ import annotations

__all__ = ["CountWidget", "FineTuneWidget", "SegmentWidget"]


def __getattr__(name: str):
    import importlib

    modules = {
        "CountWidget": "count_widget",
        "SegmentWidget": "segment_widget",
        "FineTuneWidget": "finetune_widget",
    }
    if name in modules:
        module = importlib.import_module(f"{__name__}.{modules[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
