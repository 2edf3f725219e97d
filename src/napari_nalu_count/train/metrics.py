"""Validation metrics for counting and segmentation.

Counting: per-image absolute count error, aggregated as MAE, RMSE and MAE relative to the mean
true count (:func:`count_metrics`).

Segmentation: mean IoU over the three classes of a class map (background / interior / boundary)
accumulated over a whole data set (:func:`confusion_matrix`, :func:`mean_iou`), and instance F1
at IoU thresholds (:func:`match_instances`, :func:`instance_f1`), where a predicted object
matches a true one when their IoU exceeds the threshold (one-to-one; Hungarian matching on IoU).

:func:`classes_to_instances` turns a class map into instance labels; it calls
``napari_nalu_count.infer.postprocess.classes_to_instances`` when that exists and falls back to a
local minimal version (interior components expanded into the boundary) otherwise.

Everything here is plain numpy/scipy (no torch), so inference code may import it freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "InstanceMatch",
    "classes_to_instances",
    "confusion_matrix",
    "count_metrics",
    "instance_f1",
    "iou_matrix",
    "match_instances",
    "mean_iou",
]


def count_metrics(predicted: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Count errors over images.

    Returns ``mae`` (mean |pred - true|, cells per image), ``rmse``, ``mre`` (MAE divided by the
    mean true count; ``nan`` when that is 0), ``bias`` (mean pred - true), ``mean_true`` and
    ``n_images``.
    """
    p = np.asarray(predicted, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predicted counts but {t.size} true counts")
    if p.size == 0:
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "mre": nan, "bias": nan, "mean_true": nan, "n_images": 0}
    err = p - t
    mae = float(np.mean(np.abs(err)))
    mean_true = float(np.mean(t))
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mre": mae / mean_true if mean_true > 0 else float("nan"),
        "bias": float(np.mean(err)),
        "mean_true": mean_true,
        "n_images": int(p.size),
    }


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts, rows = true class, columns = predicted class.

    Pixels whose true class is outside ``[0, n_classes)`` (e.g. an ignore value) are skipped.
    """
    t = np.asarray(true).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"class maps differ in size: {t.size} vs {p.size}")
    ok = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
    idx = t[ok] * n_classes + p[ok]
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, list[float]]:
    """``(mIoU, per-class IoU)`` from a confusion matrix; classes absent from both the truth and
    the prediction get ``nan`` and are left out of the mean."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.maximum(denom, 1e-12), np.nan)
    valid = iou[~np.isnan(iou)]
    return (float(valid.mean()) if valid.size else float("nan")), [float(v) for v in iou]


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU between every true object (rows, labels 1..) and predicted object (columns, 1..).

    Labels are relabelled to consecutive integers first; returns a ``(n_true, n_pred)`` float
    array (0 where objects do not overlap).
    """
    t = np.asarray(true_labels)
    p = np.asarray(pred_labels)
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {t.shape} vs {p.shape}")
    _, t_inv = np.unique(t.ravel(), return_inverse=True)
    _, p_inv = np.unique(p.ravel(), return_inverse=True)
    # make background index 0 only when the label 0 is present
    t_has0 = bool((t == 0).any())
    p_has0 = bool((p == 0).any())
    t_idx = t_inv + (0 if t_has0 else 1)
    p_idx = p_inv + (0 if p_has0 else 1)
    nt, np_ = int(t_idx.max(initial=0)) + 1, int(p_idx.max(initial=0)) + 1
    overlap = np.bincount(t_idx * np_ + p_idx, minlength=nt * np_).reshape(nt, np_)
    area_t = overlap.sum(1, keepdims=True)
    area_p = overlap.sum(0, keepdims=True)
    union = area_t + area_p - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    return iou[1:, 1:].astype(np.float64)


@dataclass(frozen=True)
class InstanceMatch:
    """Matching result at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0


def match_instances(
    true_labels: np.ndarray, pred_labels: np.ndarray, threshold: float = 0.5
) -> InstanceMatch:
    """Match objects one-to-one with IoU > ``threshold``.

    For ``threshold >= 0.5`` such matches are unique by construction; below it the Hungarian
    assignment on IoU picks them.
    """
    iou = iou_matrix(true_labels, pred_labels)
    n_true, n_pred = iou.shape
    if n_true == 0 or n_pred == 0:
        return InstanceMatch(threshold, 0, n_pred, n_true, float("nan"))
    if threshold >= 0.5:
        hits = iou > threshold
        tp = int(hits.sum())
        matched = iou[hits]
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-iou)
        vals = iou[rows, cols]
        matched = vals[vals > threshold]
        tp = int(matched.size)
    mean_iou_ = float(matched.mean()) if matched.size else float("nan")
    return InstanceMatch(threshold, tp, n_pred - tp, n_true - tp, mean_iou_)


def instance_f1(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[float] = (0.5,),
) -> dict[float, InstanceMatch]:
    """Data-set level matching: TP/FP/FN summed over ``(true_labels, pred_labels)`` pairs.

    Returns ``{threshold: InstanceMatch}``; ``.f1`` of each is the instance F1 at that IoU.
    """
    sums = {t: [0, 0, 0, 0.0, 0] for t in thresholds}
    for true_labels, pred_labels in pairs:
        for t in thresholds:
            m = match_instances(true_labels, pred_labels, t)
            s = sums[t]
            s[0] += m.tp
            s[1] += m.fp
            s[2] += m.fn
            if m.tp:
                s[3] += m.mean_matched_iou * m.tp
                s[4] += m.tp
    return {
        t: InstanceMatch(t, s[0], s[1], s[2], s[3] / s[4] if s[4] else float("nan"))
        for t, s in sums.items()
    }


def _local_classes_to_instances(classes: np.ndarray, min_size: int = 4) -> np.ndarray:
    """Interior (class 1) 4-connected components, grown into the boundary (class 2)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    classes = np.asarray(classes)
    interior = classes == 1
    foreground = classes >= 1
    markers, n = ndi.label(interior)
    if n and min_size > 1:
        sizes = np.bincount(markers.ravel())
        small = sizes < min_size
        small[0] = False
        markers[small[markers]] = 0
    if not markers.any():
        return np.zeros(classes.shape, np.int32)
    dist = ndi.distance_transform_edt(~interior)
    labels = watershed(dist, markers, mask=foreground)
    # consecutive ids
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels.astype(np.int32))[0]


def classes_to_instances(classes: np.ndarray) -> np.ndarray:
    """Instance labels (int32) from a 0/1/2 class map (background / interior / boundary)."""
    try:
        from napari_nalu_count.infer.postprocess import classes_to_instances as _c2i
    except ImportError:
        return _local_classes_to_instances(classes)
    return np.asarray(_c2i(classes)).astype(np.int32)
