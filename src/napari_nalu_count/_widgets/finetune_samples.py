"""Training samples from the layers a user annotated (the Fine-tune dock's plain part).

:func:`collect_samples` turns ``(image layer, Points or Labels layer)`` pairs into
``data.readers.Sample`` objects with every check the Run button relies on; images go through
the start model's image -> plane rule (:func:`napari_nalu_count.infer.axes.to_planes`), the one
inference uses, so the model trains on the plane it will count in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_nalu_count._widgets._viewer import transform_points
from napari_nalu_count.errors import InputError

#: fewest dots a counting fine-tune accepts
MIN_DOTS = 5


def _gray_shape(layer: Any) -> tuple[int, ...]:
    shape = tuple(layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def _as_gray(layer: Any, rule: dict[str, Any] | None = None) -> np.ndarray:
    """The layer's planes as inference sees them: RGB(A) reduced by the start model's image ->
    plane rule (``infer.axes.to_planes``; max over the colours by default)."""
    from napari_nalu_count.infer.axes import to_planes

    data = np.asarray(layer.data)
    if getattr(layer, "rgb", False):
        data = to_planes(data, "TYXC" if data.ndim == 4 else "YXC", rule=rule)
    return data


def _pair_task(annotation: Any) -> str:
    from napari.layers import Labels, Points

    if isinstance(annotation, Points):
        return "count"
    if isinstance(annotation, Labels):
        return "segment"
    raise InputError(f"'{annotation.name}' is neither a Points nor a Labels layer")


def shape_boxes(shapes: Any, image_layer: Any) -> dict[int | None, np.ndarray]:
    """The bounding boxes ``(y0, x0, y1, x1)`` (pixels of ``image_layer``, end exclusive) of a
    Shapes layer's shapes: ``{None: (k, 4)}`` for 2-D shapes, ``{frame: (k, 4)}`` for shapes
    on the frames of a (T, Y, X) stack."""
    if shapes is None:
        return {}
    if len(shapes.data) == 0:
        raise InputError(f"'{shapes.name}' has no shapes; draw the boxes you annotated")
    out: dict[int | None, list[list[float]]] = {}
    for verts in shapes.data:
        v = transform_points(np.asarray(verts, dtype=float), shapes, image_layer)
        frame = int(round(float(v[0, 0]))) if v.shape[1] > 2 else None
        lo, hi = v[:, -2:].min(axis=0), v[:, -2:].max(axis=0)
        box = [round(lo[0] + 0.5), round(lo[1] + 0.5), round(hi[0] + 0.5), round(hi[1] + 0.5)]
        out.setdefault(frame, []).append([float(b) for b in box])
    return {k: np.asarray(b) for k, b in out.items()}


def restrict_to_boxes(samples: list[Any], boxes: dict[int | None, np.ndarray]) -> list[Any]:
    """Every sample with its image's boxes (``Sample.boxes``: the loss sees only them); a
    frame of a stack without boxes is dropped (nothing of it is annotated)."""
    import dataclasses
    import re

    if not boxes:
        return samples
    out = []
    for s in samples:
        m = re.search(r"\[(\d+)\]$", s.name)
        key = int(m.group(1)) if m and None not in boxes else None
        if key in boxes:
            out.append(dataclasses.replace(s, boxes=boxes[key]))
    if not out:
        raise InputError("no annotated image has a box on it; draw boxes over the annotations")
    return out


def collect_samples(
    pairs: list[tuple[Any, Any]],
    check_only: bool = False,
    rule: dict[str, Any] | None = None,
    boxes: Any = None,
) -> tuple[str, list[Any]]:
    """Training samples from ``(image layer, Points or Labels layer)`` pairs.

    RGB layers are reduced to one plane by ``rule`` (the start model's image -> plane rule,
    ``infer.axes.input_rule``; max over the colours by default), the same rule inference uses.

    Points train a counting model, Labels a segmentation model (all pairs must agree). A stack
    (T, Y, X) with 3-D annotations gives one sample per annotated plane. Raises InputError
    naming the problem: missing layers, empty annotations, points with the wrong number of
    dims or outside the image, labels of another shape, fewer than ``MIN_DOTS`` dots.
    ``check_only`` runs the checks without reading the images (returns no samples).

    ``boxes`` (a Shapes layer): the annotations are complete inside its shapes only (their
    bounding boxes, e.g. the Count dock's suggested regions): every sample gets them as
    ``Sample.boxes`` and training and the before/after figures look inside them only.
    """

    if not pairs:
        raise InputError("pick an image layer and its annotation layer")
    tasks = set()
    samples: list[Any] = []
    total_dots = 0
    for image_layer, annotation in pairs:
        if image_layer is None:
            raise InputError("pick an image layer for every row")
        if annotation is None:
            raise InputError(
                f"annotate '{image_layer.name}': add a Points layer (dots on cells, for "
                "counting) or a Labels layer (painted nuclei, for segmentation)"
            )
        task = _pair_task(annotation)
        tasks.add(task)
        shape = _gray_shape(image_layer)
        if len(shape) not in (2, 3):
            raise InputError(f"'{image_layer.name}' must be 2-D or a (T, Y, X) stack")
        if task == "count":
            dots = _dots_in_image(annotation, image_layer, shape)
            total_dots += len(dots)
            if not check_only:
                samples += _split_dots(_as_gray(image_layer, rule), dots, image_layer.name)
        else:
            labels = _checked_labels(annotation, image_layer, shape)
            if not check_only:
                samples += _split_labels(_as_gray(image_layer, rule), labels, image_layer.name)
    if len(tasks) > 1:
        raise InputError("mixes Points (counting) and Labels (segmentation); use one kind")
    task = tasks.pop()
    if task == "count" and total_dots < MIN_DOTS:
        raise InputError(
            f"only {total_dots} dot(s) annotated; mark at least {MIN_DOTS} cells with the "
            "Points tool"
        )
    if boxes is not None:
        by_frame = shape_boxes(boxes, pairs[0][0])
        if not check_only:
            samples = restrict_to_boxes(samples, by_frame)
    if not samples and not check_only:
        raise InputError("no annotated image to train on")
    return task, samples


def _dots_in_image(points: Any, image_layer: Any, shape: tuple[int, ...]) -> np.ndarray:
    data = np.asarray(points.data, dtype=float)
    if len(data) == 0:
        raise InputError(f"'{points.name}' has no dots; click on cells with the Points tool")
    if points.ndim != len(shape):
        raise InputError(
            f"'{points.name}' is {points.ndim}-D but '{image_layer.name}' is {len(shape)}-D; "
            "add the Points layer while that image is selected"
        )
    dots = transform_points(data, points, image_layer)
    inside = np.all((dots > -0.5) & (dots < np.array(shape) - 0.5), axis=1)
    if not inside.all():
        raise InputError(
            f"{int((~inside).sum())} of {len(dots)} dots of '{points.name}' lie outside "
            f"'{image_layer.name}'; delete them"
        )
    return dots


def _split_dots(image: np.ndarray, dots: np.ndarray, name: str) -> list[Any]:
    from napari_nalu_count.data.readers import Sample

    if image.ndim == 2:
        return [Sample(image=image, dots=dots, name=name)]
    frames = np.round(dots[:, 0]).astype(int)
    return [
        Sample(image=image[t], dots=dots[frames == t, 1:], name=f"{name}[{t}]")
        for t in np.unique(frames)
    ]


def _checked_labels(labels_layer: Any, image_layer: Any, shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(labels_layer.data)
    if labels.shape != shape:
        raise InputError(
            f"'{labels_layer.name}' has shape {labels.shape} but '{image_layer.name}' has "
            f"{shape}; add the Labels layer while that image is selected"
        )
    if not labels.any():
        raise InputError(f"'{labels_layer.name}' is empty; paint some nuclei first")
    return labels


def _split_labels(image: np.ndarray, labels: np.ndarray, name: str) -> list[Any]:
    from napari_nalu_count.data.readers import Sample

    if image.ndim == 2:
        return [Sample(image=image, labels=labels.astype(np.int32), name=name)]
    return [
        Sample(image=image[t], labels=labels[t].astype(np.int32), name=f"{name}[{t}]")
        for t in range(len(labels))
        if labels[t].any()
    ]


def fits(annotation: Any, image: Any) -> bool:
    """Whether an annotation layer could belong to ``image`` (same shape / number of dims)."""
    from napari.layers import Labels

    if isinstance(annotation, Labels):
        return tuple(annotation.data.shape) == _gray_shape(image)
    return annotation.ndim == image.ndim
