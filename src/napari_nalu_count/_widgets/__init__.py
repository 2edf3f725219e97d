"""napari docks: Count cells, Segment cells, Count in regions, Fine-tune model.

Each dock module keeps plain, GUI-free functions (``count_job``/``run_count``,
``segment_job``/``run_segment``, ``region_summary``, ``collect_samples``/``finetune_job``)
beside the widget that drives them in a thread worker. Shared parts: ``_base`` (the job
lifecycle), ``_inference`` (the Count/Segment form), ``_results`` (totals and the per-frame
table), ``_jobs`` (worker and activity dock), ``_viewer`` (layers), ``_models`` (pickers).
"""

from __future__ import annotations

__all__ = ["BatchWidget", "CountWidget", "FineTuneWidget", "RegionsWidget", "SegmentWidget"]


def __getattr__(name: str):
    import importlib

    modules = {
        "CountWidget": "count_widget",
        "SegmentWidget": "segment_widget",
        "RegionsWidget": "regions_widget",
        "FineTuneWidget": "finetune_widget",
        "BatchWidget": "batch_widget",
    }
    if name in modules:
        module = importlib.import_module(f"{__name__}.{modules[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
