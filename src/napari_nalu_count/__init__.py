"""napari-nalu-count: cell counting and segmentation for napari.

The public Python API (see README): ``count``, ``segment``, ``measure``, ``run_batch``,
``count_files``, ``segment_files``, ``list_models``, ``load_model``, ``suggest_regions``.
Heavy modules (torch, the engine) are imported lazily so that ``import napari_nalu_count``
stays cheap for napari's plugin discovery.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "count",
    "segment",
    "measure",
    "run_batch",
    "count_files",
    "segment_files",
    "list_models",
    "load_model",
    "suggest_regions",
    "__version__",
]

_API = {
    "count": "napari_nalu_count.infer",
    "segment": "napari_nalu_count.infer",
    "measure": "napari_nalu_count.analysis.measurements",
    "run_batch": "napari_nalu_count.infer.batch",
    "count_files": "napari_nalu_count.infer.batch",
    "segment_files": "napari_nalu_count.infer.batch",
    "list_models": "napari_nalu_count.models",
    "load_model": "napari_nalu_count.models",
    "suggest_regions": "napari_nalu_count.infer.uncertainty",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_nalu_count' has no attribute {name!r}")
