"""Held-out metrics measured the way the docks and the CLI run a model.

Each held-out image goes through :func:`napari_nalu_count.infer.count_events` or
:func:`~napari_nalu_count.infer.segment_events` at its own resolution (tiled, rescaled for the
nucleus diameter, channels reduced, the seeds the Segment dock uses), so a fine-tuning's
before/after figures say what the user will see, not what the training loop's quick
whole-image pass (model grid, argmax classes, interior seeds) reports.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from torch import nn

from napari_nalu_count.data.boxes import as_boxes, box_mask
from napari_nalu_count.errors import CancelToken
from napari_nalu_count.events import Event, Progress

__all__ = ["as_model", "end_to_end_events", "end_to_end_metrics", "outside_boxes_events"]


def as_model(net: nn.Module, card: dict[str, Any], name: str) -> Any:
    """A ``LoadedModel``-like view of an in-memory network (and the card it will be saved
    with) for the inference engine."""
    return SimpleNamespace(net=net, card=card, task=card["task"], config=card["config"], name=name)


def end_to_end_events(
    model: Any,
    samples: Sequence[Any],
    diameters: Sequence[Any],
    *,
    device: str = "cpu",
    seeds: str = "count",
    count_model: Any = "nuclei-count",
    cancel: CancelToken | None = None,
    label: str = "validating",
) -> Generator[Event, None, dict[str, Any]]:
    """Metrics of ``model`` on whole ``samples`` (``diameters`` per image: None lets the engine
    decide, as a blank diameter field does); yields a :class:`Progress` per image.

    Counting: ``mae``, ``rmse``, ``mre``, ``bias``, ``mean_true``, ``n_images``, ``n_cells``
    (annotated cells). Samples with ``boxes`` are measured inside their boxes only (the
    density integral there against the dots, objects or ``counts`` there). Segmentation
    (``seeds`` and ``count_model`` as for :func:`~napari_nalu_count.infer.segment`): ``f1``,
    ``precision``, ``recall`` and ``mean_iou`` (of the matched objects) at IoU 0.5,
    ``f1_75``, ``miou`` (of the interior/boundary/background maps drawn from the labels),
    ``mae`` (objects per image), ``n_images``, ``n_cells`` (annotated objects).
    """
    from napari_nalu_count import infer

    task = getattr(model, "task", None) or model.card["task"]
    n = len(samples)
    predicted: list[Any] = []
    for i, (s, d) in enumerate(zip(samples, diameters, strict=True)):
        yield Progress(i, n, f"{label}: image {i + 1}/{n}")
        image = np.asarray(s.image)
        if task == "count":
            res = yield from infer.count_events(
                image, model, diameter=d, device=device, cancel=cancel
            )
            boxes = getattr(s, "boxes", None)
            if boxes is None:
                predicted.append(float(res.count))
            else:  # the annotated boxes only
                mask = box_mask(np.shape(res.density), as_boxes(boxes, np.shape(res.density)))
                predicted.append(float(res.density[mask].sum(dtype=np.float64)))
        else:
            res = yield from infer.segment_events(
                image,
                model,
                diameter=d,
                device=device,
                cancel=cancel,
                seeds=seeds,
                count_model=count_model,
            )
            predicted.append(_in_boxes(np.asarray(res.labels), getattr(s, "boxes", None)))
    yield Progress(n, n, f"{label}: done")
    if task == "count":
        return _count_metrics(predicted, samples)
    return _segment_metrics(predicted, samples)


#: relative change of the count outside the boxes above which fine_tune warns (and 2 cells)
OUTSIDE_WARN = 0.25


def outside_boxes_events(
    start: Any,
    model: Any,
    samples: Sequence[Any],
    diameters: Sequence[Any],
    *,
    device: str = "cpu",
    cancel: CancelToken | None = None,
    label: str = "checking outside the boxes",
) -> Generator[Event, None, dict[str, Any] | None]:
    """How much a counter fine-tuned on boxes changed its count where nothing was annotated.

    Every sample with ``boxes`` is counted end to end (as :func:`end_to_end_events` does) by
    ``start`` and by ``model``; the density integrals outside the boxes are summed over the
    images. Returns ``images``, ``start``, ``after`` (cells outside the boxes), ``change``
    (relative to ``start``) and ``warn`` (the change exceeds :data:`OUTSIDE_WARN` and 2
    cells), or None when no sample has boxes. The boxes say nothing about the rest of the image,
    so this is no error measure; a large change says the new model counts the unannotated
    parts of these images differently from the start model, which the boxes cannot confirm.
    """
    from napari_nalu_count import infer

    boxed = [
        (s, d)
        for s, d in zip(samples, diameters, strict=True)
        if getattr(s, "boxes", None) is not None
    ]
    if not boxed:
        return None
    totals = [0.0, 0.0]
    n = len(boxed)
    for i, (s, d) in enumerate(boxed):
        yield Progress(i, n, f"{label}: image {i + 1}/{n}")
        image = np.asarray(s.image)
        for k, m in enumerate((start, model)):
            res = yield from infer.count_events(image, m, diameter=d, device=device, cancel=cancel)
            dens = res.density
            inside = box_mask(np.shape(dens), as_boxes(s.boxes, np.shape(dens)))
            totals[k] += float(dens[~inside].sum(dtype=np.float64))
    yield Progress(n, n, f"{label}: done")
    a, b = totals
    change = (b - a) / max(a, 1.0)
    return {
        "images": n,
        "start": a,
        "after": b,
        "change": change,
        "warn": bool(abs(change) > OUTSIDE_WARN and abs(b - a) >= 2.0),
    }


def _in_boxes(labels: np.ndarray, boxes: Any) -> np.ndarray:
    """Labels outside the annotated boxes set to 0 (all of them kept without boxes)."""
    if boxes is None:
        return labels
    return np.where(box_mask(labels.shape, as_boxes(boxes, labels.shape)), labels, 0)


def end_to_end_metrics(
    model: Any, samples: Sequence[Any], diameters: Sequence[Any], **kwargs: Any
) -> dict[str, Any]:
    """:func:`end_to_end_events` run to its end (no events)."""
    from napari_nalu_count.events import drive

    return drive(end_to_end_events(model, samples, diameters, **kwargs))


def _count_metrics(predicted: list[float], samples: Sequence[Any]) -> dict[str, Any]:
    from .metrics import count_metrics

    true = [float(s.count or 0) for s in samples]
    out: dict[str, Any] = count_metrics(predicted, true)
    out["n_cells"] = int(round(sum(true)))
    return out


def _segment_metrics(predicted: list[np.ndarray], samples: Sequence[Any]) -> dict[str, Any]:
    from napari_nalu_count.data import instances_to_classes

    from .metrics import confusion_matrix, count_metrics, instance_f1, mean_iou

    truths = [_in_boxes(np.asarray(s.labels), getattr(s, "boxes", None)) for s in samples]
    matches = instance_f1(list(zip(truths, predicted, strict=True)), (0.5, 0.75))
    cm = np.zeros((3, 3), np.int64)
    for true, pred in zip(truths, predicted, strict=True):
        cm += confusion_matrix(instances_to_classes(true), instances_to_classes(pred), 3)
    m50 = matches[0.5]
    true_n = [float(len(np.unique(t[t > 0]))) for t in truths]
    pred_n = [float(len(np.unique(p[p > 0]))) for p in predicted]
    return {
        "f1": m50.f1,
        "precision": m50.precision,
        "recall": m50.recall,
        "mean_iou": m50.mean_matched_iou,
        "f1_75": matches[0.75].f1,
        "miou": mean_iou(cm)[0],
        "mae": count_metrics(pred_n, true_n)["mae"],
        "n_images": len(samples),
        "n_cells": int(round(sum(true_n))),
    }
