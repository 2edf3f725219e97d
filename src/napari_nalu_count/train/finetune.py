"""Fine-tuning: adapt a bundled or user model to a few annotated images and save it.

:func:`fine_tune` (and its event generator :func:`fine_tune_events`) starts from any model (a
bundled/user name, a path, or a ``LoadedModel``), holds out part of the user's annotations,
measures the start model on it, optionally searches FRE's B and X (``tune=``: trials start from
the start model at the user's learning rate), trains with Feature Random Enhancement on (FRE,
the B/X module at the bottleneck; added to the config when the start model has none), measures
again and saves the best weights as a new user model whose card records the data, the settings
and the before/after metrics.

Held-out part: with two or more images, ``holdout`` of the images (at least one) chosen with the
seed; with a single image, a strip along its longer side (the last ``holdout`` fraction, see
:func:`~.dataset.spatial_split`), so one image with a few dozen dots is enough. A strip of the
training image flatters the result (same field, same cells' neighbours), so it is a last
resort and the result says so; the before/after metrics always report how many images and
cells they rest on. They are measured end to end (:mod:`.validate`): ``infer.count`` /
``infer.segment`` on the held-out images at their own resolution, the calls the docks make.

Generalist start models (card ``diameter_mode: "estimate"``, such as the bundled ones) are
fine-tuned the way they were trained: every image is resampled so that its nuclei have the
model's grid diameter (measured per image from its labels, or given, or found by the start
model itself as ``count`` finds it), with the same scale jitter, so the new model still finds
the nucleus size itself.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from napari_nalu_count.errors import CancelToken, InputError, TrainingDiverged
from napari_nalu_count.events import Event, Stage, Tuned, drive

from .dataset import spatial_split
from .grid import model_grid
from .loop import TrainConfig, TrainResult, start_model_sigma, train_events
from .tune import TuneSettings, tune_events
from .validate import as_model, end_to_end_events, outside_boxes_events

__all__ = [
    "FineTuneResult",
    "attach_annotations",
    "default_fre",
    "fine_tune",
    "fine_tune_events",
    "make_trained_card",
    "split_holdout",
]

#: FRE defaults for fine-tuning: B = bottleneck channels // 4, X = 2
DEFAULT_FRE_FRACTION = 0.25
DEFAULT_FRE_X = 2.0

#: the held-out metric that says whether fine-tuning helped, per task, and whether lower is
#: better (the dock's before/after table shows it first)
KEY_METRIC = {"count": ("mae", True), "segment": ("f1", False)}


def held_out_regression(
    task: str, before: dict[str, Any], after: dict[str, Any], start_name: str
) -> str | None:
    """A note when the fine-tuned model does worse than its start model on the held-out part
    (its key metric, :data:`KEY_METRIC`), else None (also when either figure is missing).

    Fine-tuning can make a model worse: on 5 BBBC039 images one of three draws took the
    held-out image from MAE 21.8 to 140.7 (docs/models.md, round 13). The model is saved all
    the same (the user asked for it, and one held-out image is a small sample), but the
    result, the card and the dock say so."""
    key, lower_better = KEY_METRIC[task]
    b, a = (before or {}).get(key), (after or {}).get(key)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    worse = a > b if lower_better else a < b
    if not worse:
        return None
    n = (after or {}).get("n_cells")
    what = "cells" if task == "count" else "objects"
    on = f" ({n} {what})" if n else ""
    return (
        f"worse than {start_name} on the held-out part{on}: {key} {b:.3g} -> {a:.3g}. Keep "
        f"using {start_name}, or annotate more images and fine-tune again"
    )


#: relative count error of the start model on the annotated images under which ``fine_tune``
#: notes that it already counts them well (the bundled counter is at 3.8 % on BBBC039 val, and
#: 24 of 25 five-image BBBC039 fine-tunes measured made the rest of that set worse:
#: docs/models.md, rounds 13-15)
ALREADY_GOOD_MRE = 0.05


def pooled_count_metrics(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The count metrics of several :func:`~.validate.end_to_end_events` results as one set:
    ``mae`` per image, ``mre`` (summed absolute error over summed true count), ``n_images``,
    ``n_cells``; None when no part holds an image."""
    parts = [p for p in parts if p and p.get("n_images")]
    if not parts:
        return None
    n = sum(int(p["n_images"]) for p in parts)
    abs_err = sum(float(p["mae"]) * int(p["n_images"]) for p in parts)
    true = sum(float(p["mean_true"]) * int(p["n_images"]) for p in parts)
    return {
        "mae": abs_err / n,
        "mre": abs_err / true if true > 0 else None,
        "n_images": n,
        "n_cells": int(sum(int(p.get("n_cells") or 0) for p in parts)),
    }


def already_good_note(on_annotated: dict[str, Any] | None, start_name: str) -> str | None:
    """A note when the start model already counts the annotated images within
    :data:`ALREADY_GOOD_MRE`, else None."""
    mre = (on_annotated or {}).get("mre")
    if not isinstance(mre, int | float) or not math.isfinite(mre) or mre >= ALREADY_GOOD_MRE:
        return None
    return (
        f"{start_name} already counted your annotated images within {100 * mre:.1f} % "
        f"(MAE {on_annotated['mae']:.3g} cells per image, {on_annotated['n_cells']} cells). "
        f"Where it was this close, fine-tuning on 5 images made the rest of the set worse in "
        f"24 of our 25 tests on BBBC039 (3.8 % before, 9.8 % after on average with these "
        f"defaults); compare both models on images you did not annotate before switching"
    )


@dataclass
class FineTuneResult:
    """Outcome of :func:`fine_tune`.

    ``path`` is the saved card (None when cancelled before the first epoch finished: nothing
    is saved then; a run cancelled later saves its best epoch, ``cancelled`` True); ``net`` the best
    weights (eval mode); ``metrics_before`` / ``metrics_after`` are measured on the held-out
    part; ``fre`` the FRE settings used (None when unavailable, see ``notes``); ``regression``
    says when the new model is worse than the start model there.
    """

    path: Path | None
    name: str
    metrics_before: dict[str, Any]
    metrics_after: dict[str, Any]
    history: list[dict[str, Any]]
    cancelled: bool
    net: nn.Module | None = None
    fre: dict | None = None
    notes: list[str] = field(default_factory=list)
    card: dict[str, Any] | None = None
    #: the note of :func:`held_out_regression` when the new model did worse than its start
    #: model on the held-out part (also first in ``notes``, and ``worse_than_start`` in the
    #: card's metrics), else None
    regression: str | None = None


def default_fre(config: dict, seed: int = 0) -> dict:
    """FRE settings for ``config``: a quarter of the bottleneck channels, X = 2."""
    widths = config.get("widths") or []
    channels = int(widths[-1]) if widths else 0
    return {
        "B": max(1, int(round(channels * DEFAULT_FRE_FRACTION))),
        "X": DEFAULT_FRE_X,
        "seed": int(seed),
    }


def split_holdout(
    samples: Sequence[Any], holdout: float = 0.25, seed: int = 0
) -> tuple[list[Any], list[Any], str]:
    """``(train, held_out, description)``: whole images when there are >= 2, else a strip."""
    if not 0 < holdout < 1:
        raise InputError(f"holdout must be between 0 and 1, got {holdout}")
    samples = list(samples)
    if not samples:
        raise InputError("fine-tuning needs at least one annotated image")
    if len(samples) == 1 and getattr(samples[0], "boxes", None) is not None:
        return _split_boxes(samples[0], seed)
    if len(samples) == 1 and getattr(samples[0], "counts", None) is not None:
        raise InputError(
            "count-level labels of a single image cannot be split to measure the result: give "
            "two or more images (or boxes) with their counts"
        )
    if len(samples) == 1:
        train_part, held = spatial_split(samples[0], holdout)
        h = np.asarray(held.image).shape
        return [train_part], [held], f"held-out strip of the single image ({h[0]}x{h[1]} px)"
    n_hold = min(len(samples) - 1, max(1, int(round(holdout * len(samples)))))
    order = np.random.default_rng(seed).permutation(len(samples))
    held_idx = set(int(i) for i in order[:n_hold])
    train_s = [s for i, s in enumerate(samples) if i not in held_idx]
    held_s = [s for i, s in enumerate(samples) if i in held_idx]
    return train_s, held_s, f"{n_hold} held-out image(s) of {len(samples)}"


def _split_boxes(sample: Any, seed: int) -> tuple[list[Any], list[Any], str]:
    """One image annotated in boxes: one box (chosen with the seed) is held out."""
    import dataclasses

    from napari_nalu_count.data.boxes import as_boxes

    boxes = as_boxes(sample.boxes)
    if len(boxes) < 2:
        raise InputError(
            "one image annotated in one box leaves nothing to measure the result on: annotate "
            "a second box or a second image"
        )
    k = int(np.random.default_rng(seed).integers(len(boxes)))
    rest = [i for i in range(len(boxes)) if i != k]
    counts = None if sample.counts is None else np.atleast_1d(np.asarray(sample.counts, float))

    def part(idx: list[int]) -> Any:
        sub = None if counts is None else counts[idx]
        return dataclasses.replace(sample, boxes=boxes[idx], counts=sub)

    return [part(rest)], [part([k])], f"held-out box {k + 1} of {len(boxes)} of the single image"


def attach_annotations(
    samples: Sequence[Any] | Any, counts: Sequence[Any] | None, boxes: Sequence[Any] | None
) -> list[Any]:
    """``samples`` (Samples, or plain images when ``counts`` are given) with ``counts[i]``
    (a number for the whole image, or one per box) and ``boxes[i]`` (``(k, 4)``, or None for
    the whole image) attached to sample ``i``."""
    import dataclasses

    from napari_nalu_count.data.readers import Sample

    if counts is None and boxes is None:
        return samples
    if not isinstance(samples, (list, tuple)):
        samples = [samples]
    out = []
    for i, s in enumerate(samples):
        if not hasattr(s, "image"):
            if counts is None:
                raise InputError(
                    f"sample {i} is not a Sample; plain images need counts= (count-level labels)"
                )
            s = Sample(image=np.asarray(s), name=f"image {i}")
        changes: dict[str, Any] = {}
        for key, values in (("counts", counts), ("boxes", boxes)):
            if values is None:
                continue
            if len(values) != len(samples):
                raise InputError(
                    f"{key} must have one entry per image ({len(samples)}), got {len(values)}"
                )
            changes[key] = None if values[i] is None else np.asarray(values[i], dtype=np.float64)
        out.append(dataclasses.replace(s, **changes))
    return out


def _data_summary(samples: Sequence[Any], task: str) -> dict[str, Any]:
    shapes, n_dots, n_objects = [], 0, 0
    for s in samples:
        shapes.append(list(np.asarray(s.image).shape))
        if s.dots is not None:
            n_dots += int(len(s.dots))
        if s.labels is not None:
            lab = np.asarray(s.labels)
            n_objects += int(len(np.unique(lab[lab > 0])))
    out: dict[str, Any] = {"n_images": len(samples), "shapes": shapes}
    boxed = [
        np.reshape(b, (-1, 4)) for s in samples if (b := getattr(s, "boxes", None)) is not None
    ]
    if boxed:
        out["n_boxes"] = int(sum(len(b) for b in boxed))
    counted = [
        s
        for s in samples
        if getattr(s, "counts", None) is not None and s.dots is None and s.labels is None
    ]
    if counted:
        out["count_labels"] = {
            "n_images": len(counted),
            "cells": float(sum(np.sum(s.counts) for s in counted)),
        }
    if task == "count":
        out["n_dots"] = n_dots if n_dots else n_objects
    out["n_objects"] = n_objects if n_objects else n_dots
    return out


def make_trained_card(
    result: TrainResult,
    name: str,
    task: str,
    *,
    normalization: dict,
    density_scale: float | None,
    diameter: float | None,
    training: dict[str, Any],
    metrics: dict[str, Any],
    description: str | None = None,
    input_scale: float | None = None,
    input: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A model card for a trained network (see ``models.make_card``); ``input_scale`` (the
    factor the training images were resampled by) is stored when it is not 1; ``input`` is the
    image -> plane rule the training images went through (default: max over RGB(A))."""
    from napari_nalu_count.infer.axes import DEFAULT_INPUT_RULE
    from napari_nalu_count.models import make_card

    if result.config is None:
        raise InputError("the trained network has no architecture config, so it cannot be saved")
    fields: dict[str, Any] = dict(
        normalization=dict(normalization),
        density_scale=density_scale if task == "count" else None,
        diameter=None if diameter is None else round(float(diameter), 2),
        training=training,
        metrics=metrics,
    )
    if description:
        fields["description"] = description
    if input_scale is not None and float(input_scale) != 1.0:
        fields["input_scale"] = round(float(input_scale), 6)
    fields["input"] = dict(DEFAULT_INPUT_RULE if input is None else input)
    fields.update(extra or {})
    return make_card(name, task, result.config, **fields)


def _load_start(start_model: Any) -> Any:
    from napari_nalu_count.models import load_model

    if hasattr(start_model, "net") and hasattr(start_model, "card"):
        return start_model
    if isinstance(start_model, (str, os.PathLike)):
        return load_model(start_model)
    raise InputError(
        "start_model must be a model name, a path or a loaded model, not "
        f"{type(start_model).__name__}"
    )


def _check_args(
    samples: Any,
    task: Any,
    cfg: Any,
    callback: Any,
    cancel: Any,
    holdout: Any,
    diameter: Any,
    directory: Any,
) -> list[Any]:
    """The samples as a list, every argument checked (:class:`InputError` saying why)."""
    import numbers

    from napari_nalu_count.infer.inputs import parse_diameter

    if samples is None or isinstance(samples, (str, bytes, os.PathLike)):
        raise InputError(
            "samples must be annotated images: data.readers.Sample objects (image plus dots or "
            f"labels) or a list of them, got {type(samples).__name__}"
        )
    if not isinstance(samples, (list, tuple)):
        samples = [samples]
    samples = list(samples)
    for i, s in enumerate(samples):
        if getattr(s, "image", None) is None:
            raise InputError(
                f"sample {i} ({type(s).__name__}) has no image; expected data.readers.Sample "
                "objects with an image and dots or labels"
            )
    if task is not None and task not in ("count", "segment"):
        raise InputError(f"task must be 'count', 'segment' or None, got {task!r}")
    if cfg is not None and not isinstance(cfg, TrainConfig):
        raise InputError(f"cfg must be a TrainConfig or None, got {type(cfg).__name__}")
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be a function or None, got {type(callback).__name__}")
    if cancel is not None and not callable(getattr(cancel, "raise_if_cancelled", None)):
        raise InputError(f"cancel must be a CancelToken or None, got {type(cancel).__name__}")
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real):
        raise InputError(f"holdout must be a fraction between 0 and 1, got {holdout!r}")
    parse_diameter(diameter)
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise InputError(f"directory must be a folder path or None, got {directory!r}")
    return samples


def default_config(start_card: dict[str, Any]) -> TrainConfig:
    """The schedule :func:`fine_tune` uses when it is given no ``cfg``: 20 epochs x 20 steps,
    lr 3e-4, patience 8, no warm-up, and the density sigma the start model was trained with."""
    return TrainConfig(
        epochs=20,
        steps_per_epoch=20,
        lr=3e-4,
        patience=8,
        warmup_steps=0,
        sigma=start_model_sigma(start_card),
    )


def fine_tune(
    start_model: Any,
    samples: Sequence[Any] | Any,
    *,
    name: str,
    task: str | None = None,
    cfg: TrainConfig | None = None,
    callback: Callable[[Event], None] | None = None,
    cancel: CancelToken | None = None,
    holdout: float = 0.25,
    use_fre: bool = True,
    diameter: float | str | None = None,
    directory: str | os.PathLike | None = None,
    overwrite: bool = False,
    tune: TuneSettings | int | bool | None = None,
    seeds: str = "count",
    count_model: Any = "nuclei-count",
    counts: Sequence[Any] | None = None,
    boxes: Sequence[Any] | None = None,
) -> FineTuneResult:
    """Fine-tune ``start_model`` on ``samples`` (``Sample`` objects with dots or labels) and save
    the result as the user model ``name`` (in ``directory``, default the user model directory).

    Partial annotations: ``boxes`` (one entry per sample: ``(k, 4)`` boxes ``(y0, x0, y1, x1)``
    in pixels, or None for the whole image; or ``Sample.boxes``) restrict every loss to those
    boxes, so dots or masks need to be complete inside them only. Count-level labels
    (counting only): ``counts`` (one entry per sample: the number of cells in the image, or
    one number per box; or ``Sample.counts``) train the density integral instead, for images
    with no dots or labels; ``samples`` may then be plain images. The before/after metrics of
    boxed samples are measured inside their boxes (a single image with several boxes holds one
    box out).

    ``cfg`` defaults to a short schedule (20 epochs x 20 steps, lr 3e-4, patience 8); its
    normalisation and density scale are taken from the start model's card, and so is its
    density sigma unless ``cfg.sigma`` is set (None, the default, means the start model's). With
    ``use_fre`` (default) and no ``cfg.fre``, FRE is switched on with B = bottleneck // 4 and
    X = 2 unless the start model already has FRE.

    ``tune`` (a :class:`~.tune.TuneSettings`, a number of trials or True) first searches FRE's
    B and X with TPE: every trial starts from the start model's weights at ``cfg.lr`` and is
    scored on the held-out part; the winner is the FRE the fine-tuning then trains with (the
    card's ``training.tuning`` keeps the trials).

    Images: multi-channel images are reduced to one plane by the start model's image -> plane
    rule (its card's ``input``, max over RGB(A) colours by default), as inference does; the new
    card records that rule, so counting with the new model sees the same plane.

    Object size (``diameter``: pixels of the user's images, ``"auto"`` to estimate it, or None;
    see :func:`~napari_nalu_count.infer.parse_diameter`): generalist start models (card
    ``diameter_mode: "estimate"``) are fine-tuned on their model grid, each image resampled so
    that its nuclei (given, else measured from its labels, else found by the start model as
    ``count`` finds it) have the grid diameter, and the new model still finds the size itself.
    Other start models: with a diameter ``d`` the samples are resampled by ``start card diameter
    / d``; without, by the start model's ``input_scale`` (1.0 when absent), as inference does
    with ``diameter=None``. That factor becomes the new card's ``input_scale``; the card's
    ``diameter`` is the object diameter on the model grid.

    Held-out part (see :func:`split_holdout`, taken from the images as given): the before/after
    metrics are measured end to end, with :func:`napari_nalu_count.infer.count` or
    :func:`~napari_nalu_count.infer.segment` on the held-out images at their own resolution
    (segmentation with ``seeds`` / ``count_model`` as the Segment dock runs it; interior seeds
    when that counting model cannot be loaded, and a note says so); the training loop's
    per-epoch validation on the model grid only picks the best epoch.

    Names: an existing model ``name`` is replaced only with ``overwrite=True``; without it the
    call raises :class:`InputError` before any training.

    Returns a :class:`FineTuneResult`. A set ``cancel`` token stops within one step: when at
    least one epoch finished (trained and validated), the best weights so far are saved as usual
    (the card's ``training`` says ``"cancelled": true`` and how many epochs were done) and
    ``path`` points to them; when cancelled before that (or while tuning), nothing is saved
    (``path`` None and a note says so).

    Divergence (a NaN or infinite loss) raises :class:`~napari_nalu_count.errors.
    TrainingDiverged`. The last good model is kept: when an epoch was validated before it, the
    best such epoch is saved (atomically) under ``name`` with ``"diverged"`` in its card's
    ``training`` and the error's ``saved`` is its card path; otherwise nothing is written (the
    start model and any existing model ``name`` stay as they were) and ``saved`` is None.
    Bad arguments raise :class:`~napari_nalu_count.errors.InputError`; unreadable model files
    :class:`~napari_nalu_count.errors.ModelFileError`.

    ``callback`` receives the events of :func:`fine_tune_events`.
    """
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be a function or None, got {type(callback).__name__}")
    steps = fine_tune_events(
        start_model,
        samples,
        name=name,
        task=task,
        cfg=cfg,
        cancel=cancel,
        holdout=holdout,
        use_fre=use_fre,
        diameter=diameter,
        directory=directory,
        overwrite=overwrite,
        tune=tune,
        seeds=seeds,
        count_model=count_model,
        counts=counts,
        boxes=boxes,
    )
    return drive(steps, callback)


def fine_tune_events(
    start_model: Any,
    samples: Sequence[Any] | Any,
    *,
    name: str,
    task: str | None = None,
    cfg: TrainConfig | None = None,
    cancel: CancelToken | None = None,
    holdout: float = 0.25,
    use_fre: bool = True,
    diameter: float | str | None = None,
    directory: str | os.PathLike | None = None,
    overwrite: bool = False,
    tune: TuneSettings | int | bool | None = None,
    seeds: str = "count",
    count_model: Any = "nuclei-count",
    counts: Sequence[Any] | None = None,
    boxes: Sequence[Any] | None = None,
) -> Generator[Event, None, FineTuneResult]:
    """:func:`fine_tune` as an event generator: yields ``Stage`` (``"measure"``, ``"tune"``,
    ``"train"``, ``"validate"``), ``Progress`` (held-out images, tuning steps), ``TuneTrial``,
    ``Tuned`` and the training loop's events; returns the :class:`FineTuneResult`."""
    from napari_nalu_count.infer.axes import input_rule
    from napari_nalu_count.infer.inputs import parse_diameter
    from napari_nalu_count.models import check_name, save_model
    from napari_nalu_count.nn import registry

    from .dataset import reduce_samples

    check_name(name)
    if not isinstance(samples, (str, bytes, os.PathLike)) and samples is not None:
        samples = attach_annotations(samples, counts, boxes)
    samples = _check_args(samples, task, cfg, None, cancel, holdout, diameter, directory)
    settings = TuneSettings.of(tune)
    diameter = parse_diameter(diameter)
    if not overwrite:
        _refuse_taken(name, directory)
    start = _load_start(start_model)
    start_task = start.task
    if task is not None and task != start_task:
        raise InputError(f"model {start.name!r} is a {start_task!r} model, not {task!r}")
    task = start_task
    if settings is not None and not use_fre:
        raise InputError("tune searches FRE's B and X; it needs use_fre=True")

    start_card = start.card
    config = dict(start.config)
    in_ch = int(config.get("in_channels", 1))
    rule = input_rule(start_card)
    samples = reduce_samples(samples, rule, in_ch)
    if cfg is None:
        cfg = default_config(start_card)
    else:
        cfg = copy.deepcopy(cfg)
    if cfg.sigma is None:
        cfg.sigma = start_model_sigma(start_card)
    cfg.normalization = dict(start_card["normalization"])
    if task == "count":
        cfg.density_scale = float(start_card["density_scale"])

    notes: list[str] = []
    if cfg.fre is None and use_fre:
        if config.get("fre"):
            notes.append(f"kept the start model's FRE {config['fre']}")
        else:
            fre = default_fre(config, cfg.seed)
            try:
                registry.validate_config({**config, "fre": fre})
            except Exception as exc:  # noqa: BLE001 - reported, training goes on without FRE
                notes.append(f"FRE is not available for {config.get('architecture')}: {exc}")
            else:
                cfg.fre = fre
                notes.append(f"added FRE {fre} at the bottleneck")

    grid = model_grid(samples, start, task, diameter, cfg, notes)
    originals = list(samples)
    train_o, held_o, held_desc = split_holdout(originals, holdout, cfg.seed)
    if len(originals) == 1:
        notes.append(
            "only one image: the before/after metrics come from a strip of the training image, "
            "which flatters them; annotate a second image to measure on an unseen one"
        )
    samples = grid.rescale(originals, originals, task)
    train_s = grid.rescale(train_o, originals, task)
    held_s = grid.rescale(held_o, originals, task)

    # measured as the user will count: with the diameter they gave, else found by the model
    held_d = [grid.user_diameter] * len(held_o)
    seeds, counter = _seed_counter(task, seeds, count_model, cfg.device, notes)

    def validate(model: Any, label: str) -> Generator[Event, None, dict[str, Any]]:
        return end_to_end_events(
            model, held_o, held_d, device=cfg.device, seeds=seeds, count_model=counter, label=label
        )

    yield Stage("measure", f"measuring {start.name} on the held-out part ({held_desc})")
    before = yield from validate(start, f"measuring {start.name}")
    start_on_annotated = good = None
    if task == "count" and train_o:  # is there anything to fix? (cheap: a few counts)
        on_train = yield from end_to_end_events(
            start,
            train_o,
            [grid.user_diameter] * len(train_o),
            device=cfg.device,
            label=f"measuring {start.name} on the training images",
        )
        start_on_annotated = pooled_count_metrics([before, on_train])
        good = already_good_note(start_on_annotated, start.name)

    tuning: dict[str, Any] = {}
    if settings is not None:
        yield Stage("tune", f"tuning FRE's B and X: {settings.n_trials} trials")
        found = yield from _tune_fre(start, train_s, held_s, task, cfg, settings, cancel)
        if found is None:
            notes.append("stopped while tuning B/X; no model was saved")
            return FineTuneResult(None, name, before, {}, [], True, None, None, notes)
        fre, tuning = found
        if fre is not None:
            cfg.fre = fre
            yield Tuned(fre, tuning.get("best_value"))
            notes.append(
                f"tuned FRE: B={fre['B']}, X={fre['X']:.3g} ({settings.n_trials} trials from "
                f"{start.name} at lr {cfg.lr:g})"
            )
        else:
            notes.append("no tuning trial finished; trained with the FRE settings given")

    def finish(
        result: TrainResult, extra_training: dict[str, Any]
    ) -> Generator[Event, None, FineTuneResult]:
        fre_used = (result.config or {}).get("fre")
        how = "end to end (infer.count / infer.segment on the held-out images as given)"
        training = {
            "start_model": start.name,
            "data": {
                **_data_summary(samples, task),
                "train": _data_summary(train_s, task),
                "held_out": {**_data_summary(held_s, task), "how": held_desc},
            },
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "cancelled": bool(result.cancelled),
            "seed": cfg.seed,
            "fre": fre_used,
            "settings": cfg.to_dict(),
            "notes": notes,
            "command": f"fine_tune({start.name!r}, name={name!r})",
            **({"tuning": tuning} if tuning else {}),
            **extra_training,
        }

        def card_with(metrics: dict[str, Any]) -> dict[str, Any]:
            return make_trained_card(
                result,
                name,
                task,
                normalization=cfg.normalization,
                density_scale=cfg.density_scale,
                diameter=grid.card_diameter,
                training=training,
                metrics=metrics,
                description=f"fine-tuned from {start.name}",
                input_scale=grid.card_factor,
                input=rule,
                extra=grid.card_extra,
            )

        yield Stage("validate", f"measuring {name} on the held-out part")
        new_model = as_model(result.net, card_with({}), name)
        after = yield from validate(new_model, f"measuring {name}")
        metrics = {
            "split": f"fine-tuning hold-out: {held_desc}, {before['n_cells']} cells; {how}",
            **after,
            "before": before,
            "after": after,
        }
        if start_on_annotated is not None:
            metrics["start_on_annotated"] = start_on_annotated
        regression = held_out_regression(task, before, after, start.name)
        metrics["worse_than_start"] = regression is not None
        if good is not None:  # next to the before/after, ahead of the how-it-was-done notes
            notes.insert(0, good)
        if regression is not None:
            notes.insert(0, regression)
        if task == "count":
            outside = yield from outside_boxes_events(
                start,
                new_model,
                originals,
                [grid.user_diameter] * len(originals),
                device=cfg.device,
            )
            if outside is not None:
                metrics["outside_boxes"] = outside
                if outside["warn"]:
                    notes.append(
                        f"check before use: outside the annotated boxes of these "
                        f"{outside['images']} image(s) the new model counts "
                        f"{outside['after']:.0f} cells where {start.name} counted "
                        f"{outside['start']:.0f} ({100 * outside['change']:+.0f} %); nothing "
                        "there was annotated, so the boxes cannot say which is right. Count a "
                        "whole image and compare, or annotate more (or larger) boxes"
                    )
        card = card_with(metrics)
        path = save_model(result.net, card, name, directory=directory, overwrite=overwrite)
        return FineTuneResult(
            Path(path),
            name,
            before,
            after,
            result.history,
            bool(result.cancelled),
            result.net,
            fre_used,
            notes,
            card,
            regression,
        )

    yield Stage("train", f"fine-tuning {start.name} on {len(train_s)} image(s)")
    try:
        result = yield from train_events(start, train_s, held_s, task, cfg, cancel=cancel)
    except TrainingDiverged as exc:
        if exc.best_state is None:
            raise exc.with_note(
                f"no model was saved: the start model {start.name!r} and any model named "
                f"{name!r} are unchanged"
            ) from None
        used = registry.validate_config(
            {**config, "fre": dict(cfg.fre)} if cfg.fre is not None else config
        )
        net = registry.build_model(used)
        net.load_state_dict(exc.best_state)
        net.eval()
        kept = TrainResult(
            net=net,
            history=list(exc.history),
            best_metrics=dict(exc.best_metrics),
            best_epoch=exc.best_epoch,
            cancelled=False,
            stopped_early=False,
            config=used,
            train_config=copy.deepcopy(cfg),
            steps=exc.step,
            seconds=0.0,
        )
        notes.append(
            f"training diverged at epoch {exc.epoch}, step {exc.step}; saved the best epoch "
            f"before it ({exc.best_epoch})"
        )
        diverged = {"epoch": exc.epoch, "step": exc.step, "loss": str(exc.loss)}
        saved = yield from finish(kept, {"diverged": diverged})
        exc.saved = saved.path
        raise exc.with_note(
            f"kept the best epoch before it (epoch {exc.best_epoch}) as model {name!r}"
        ) from None

    if result.cancelled and (result.best_epoch is None or not result.history):
        notes.append("stopped before the first epoch finished; no model was saved")
        return FineTuneResult(
            None,
            name,
            before,
            dict(result.best_metrics),
            result.history,
            True,
            result.net,
            (result.config or {}).get("fre"),
            notes,
        )
    if result.cancelled:
        notes.append(
            f"stopped after {len(result.history)} epoch(s); saved the best so far "
            f"(epoch {result.best_epoch})"
        )
    return (yield from finish(result, {}))


def _refuse_taken(name: str, directory: str | os.PathLike | None) -> None:
    """:class:`InputError` before any training when saving as ``name`` would need to replace
    a model (the caller did not say ``overwrite=True``) or is refused (a bundled name)."""
    from napari_nalu_count.models import name_taken

    taken = name_taken(name, directory)
    if taken == "bundled":
        raise InputError(f"model name {name!r} is taken by a bundled model; choose another")
    if taken == "exists":
        raise InputError(
            f"a model named {name!r} exists already; choose another name or pass "
            "overwrite=True to replace it"
        )


def _seed_counter(
    task: str, seeds: str, count_model: Any, device: str, notes: list[str]
) -> tuple[str, Any]:
    """The watershed seeds for segmentation validation and the counting model behind them,
    loaded once (interior seeds, with a note, when it cannot be loaded)."""
    from napari_nalu_count.errors import ModelFileError
    from napari_nalu_count.infer.postprocess import SEED_MODES

    if seeds not in SEED_MODES:
        raise InputError(f"seeds must be one of {SEED_MODES}, got {seeds!r}")
    if task != "segment" or seeds != "count":
        return seeds, count_model
    if hasattr(count_model, "net") and hasattr(count_model, "card"):
        return seeds, count_model
    from napari_nalu_count.models import load_model

    try:
        counter = load_model(count_model, device=device)
    except (InputError, ModelFileError) as exc:
        notes.append(f"validated with interior seeds: the counting model is unavailable ({exc})")
        return "interior", count_model
    if counter.task != "count":
        raise InputError(f"count_model {counter.name!r} is not a counting model")
    return seeds, counter


def _tune_fre(
    start: Any,
    train_s: list[Any],
    held_s: list[Any],
    task: str,
    cfg: TrainConfig,
    settings: TuneSettings,
    cancel: CancelToken | None,
) -> Generator[Event, None, tuple[dict | None, dict[str, Any]] | None]:
    """FRE's ``{"B", "X", "seed"}`` from a TPE search whose trials start from ``start`` at
    ``cfg.lr`` (None for B/X when no trial finished), with a record of the search; None when
    the search was cancelled."""
    import dataclasses

    trial_cfg = dataclasses.replace(
        copy.deepcopy(cfg),
        epochs=settings.epochs,
        steps_per_epoch=settings.steps_per_epoch or min(cfg.steps_per_epoch, 10),
    )
    result = yield from tune_events(
        start,
        train_s,
        held_s,
        task,
        n_trials=settings.n_trials,
        cfg=trial_cfg,
        b_range=settings.b_range,
        x_range=settings.x_range,
        lr_range=None,
        seed=cfg.seed,
        cancel=cancel,
    )
    if result.cancelled:
        return None
    record = {
        "n_trials": settings.n_trials,
        "epochs_per_trial": trial_cfg.epochs,
        "steps_per_epoch": trial_cfg.steps_per_epoch,
        "lr": cfg.lr,
        "monitor": result.monitor,
        "best_value": result.best_value,
        "trials": result.trials,
    }
    best = result.best_params
    if "B" not in best or "X" not in best:
        return None, record
    return {"B": int(best["B"]), "X": float(best["X"]), "seed": int(cfg.seed)}, record
