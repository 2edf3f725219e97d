"""Fine-tuning: adapt a bundled or user model to a few annotated images and save it.

:func:`fine_tune` starts from any model (a bundled/user name, a path, or a ``LoadedModel``),
holds out part of the user's annotations for validation, measures the start model on it, trains
with Feature Random Enhancement on (FRE, the B/X module at the bottleneck; added to the config
when the start model has none), measures again and saves the best weights as a new user model
whose card records the data, the settings and the before/after metrics.

Held-out part: with two or more images, ``holdout`` of the images (at least one) chosen with the
seed; with a single image, a strip along its longer side (the last ``holdout`` fraction, see
:func:`~.dataset.spatial_split`), so one image with a few dozen dots is enough. A strip of the
training image flatters the result (same field, same cells' neighbours), so it is a last
resort and the result says so; the before/after metrics always report how many images and
cells they rest on.

Generalist start models (card ``diameter_mode: "estimate"``, such as the bundled ones) are
fine-tuned the way they were trained: every image is resampled so that its nuclei have the
model's grid diameter (measured per image from its labels, or given, or found by the start
model itself as ``count`` finds it), with the same scale jitter, so the new model still finds
the nucleus size itself. For counting models the before/after figures are measured end to end,
with :func:`napari_nalu_count.infer.count` on the held-out images at their own resolution.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from napari_nalu_count.errors import CancelToken, InputError, TrainingDiverged

from .dataset import prepare, spatial_split
from .loop import TrainConfig, TrainResult, evaluate, train

__all__ = ["FineTuneResult", "default_fre", "fine_tune", "make_trained_card", "split_holdout"]

#: FRE defaults for fine-tuning: B = bottleneck channels // 4, X = 2
DEFAULT_FRE_FRACTION = 0.25
DEFAULT_FRE_X = 2.0


@dataclass
class FineTuneResult:
    """Outcome of :func:`fine_tune`.

    ``path`` is the saved card (None when cancelled before the first epoch finished: nothing
    is saved then; a run cancelled later saves its best epoch, ``cancelled`` True); ``net`` the best
    weights (eval mode); ``metrics_before`` / ``metrics_after`` are measured on the held-out
    part; ``fre`` the FRE settings used (None when unavailable, see ``notes``).
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
    if task == "count":
        out["n_dots"] = n_dots if n_dots else n_objects
    out["n_objects"] = n_objects if n_objects else n_dots
    return out


def _measured_diameter(samples: Sequence[Any]) -> float | None:
    from napari_nalu_count.data import typical_diameter

    values = []
    for s in samples:
        if s.labels is not None and np.asarray(s.labels).max() > 0:
            values.append(typical_diameter(s.labels))
    return float(np.median(values)) if values else None


def _estimated_diameter(samples: Sequence[Any], task: str, normalization: dict) -> float | None:
    """Median of :func:`~napari_nalu_count.infer.scale.estimate_diameter` over the samples'
    normalised images (first channel), None when no blobs are found."""
    from napari_nalu_count.infer.scale import estimate_diameter

    values = []
    for item in prepare(samples, task, normalization=normalization):
        est = estimate_diameter(item.image[0])
        if est:
            values.append(est)
    return float(np.median(values)) if values else None


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


def _image_diameters(
    samples: Sequence[Any], start: Any, diameter: float | None
) -> tuple[list[float], str]:
    """Per-image nucleus diameters (pixels of each image) and how they were found: the given
    ``diameter``; else each image's labels; else the start model's own estimate (``count``)."""
    from napari_nalu_count.data import typical_diameter

    if diameter is not None:
        return [float(diameter)] * len(samples), f"given ({float(diameter):g} px)"
    out, how = [], set()
    for s in samples:
        lab = None if s.labels is None else np.asarray(s.labels)
        if lab is not None and lab.max() > 0:
            out.append(typical_diameter(lab))
            how.add("measured from the labels")
            continue
        d = None
        if start.task == "count":
            from napari_nalu_count.infer import count

            d = count(np.asarray(s.image), start, axes=None).diameter
        if d is None:
            from napari_nalu_count.infer.scale import estimate_diameter

            d = estimate_diameter(np.asarray(s.image))
        if d is None:
            raise InputError(
                f"cannot find the nucleus size of image {getattr(s, 'name', '')!r}; "
                "pass diameter= (pixels)"
            )
        out.append(float(d))
        how.add("estimated by the start model")
    return out, " / ".join(sorted(how))


def _as_model(net: nn.Module, card: dict[str, Any], name: str) -> Any:
    """A LoadedModel-like view of an in-memory network for the inference engine."""
    from types import SimpleNamespace

    return SimpleNamespace(net=net, card=card, task=card["task"], config=card["config"], name=name)


def end_to_end_counts(model: Any, samples: Sequence[Any], diameters: Sequence[Any]) -> dict:
    """Count metrics of ``model`` (``infer.count``) on whole ``samples`` at their own
    resolution, with ``diameters`` per image (None: the engine's default); plus ``n_cells``."""
    from napari_nalu_count.infer import count

    from .metrics import count_metrics

    pred, true = [], []
    for s, d in zip(samples, diameters, strict=True):
        res = count(np.asarray(s.image), model, axes=None, diameter=d, device="cpu")
        pred.append(float(res.count))
        true.append(float(s.count or 0))
    out = count_metrics(pred, true)
    out["n_cells"] = int(round(sum(true)))
    return out


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
    if diameter is not None and (
        isinstance(diameter, bool) or not isinstance(diameter, numbers.Real)
    ):
        raise InputError(f"diameter must be a number of pixels or None, got {diameter!r}")
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise InputError(f"directory must be a folder path or None, got {directory!r}")
    return samples


def fine_tune(
    start_model: Any,
    samples: Sequence[Any] | Any,
    *,
    name: str,
    task: str | None = None,
    cfg: TrainConfig | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    cancel: CancelToken | None = None,
    holdout: float = 0.25,
    use_fre: bool = True,
    diameter: float | None = None,
    directory: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> FineTuneResult:
    """Fine-tune ``start_model`` on ``samples`` (``Sample`` objects with dots or labels) and save
    the result as the user model ``name`` (in ``directory``, default the user model directory).

    ``cfg`` defaults to a short schedule (20 epochs x 20 steps, lr 3e-4, patience 8); its
    normalisation, density scale and sigma are taken from the start model's card. With
    ``use_fre`` (default) and no ``cfg.fre``, FRE is switched on with B = bottleneck // 4 and
    X = 2 unless the start model already has FRE.

    Images: multi-channel images are reduced to one plane by the start model's image -> plane
    rule (its card's ``input``, max over RGB(A) colours by default), as inference does; the new
    card records that rule, so counting with the new model sees the same plane.

    Object size: with ``diameter=d`` (pixels of the user's images) the samples are resampled by
    ``start card diameter / d`` so the cells match the start model's grid; without it, by the
    start model's ``input_scale`` (1.0 when absent), as inference does with ``diameter=None``.
    That factor becomes the new card's ``input_scale``; the card's ``diameter`` is the object
    diameter on the model grid: ``d x factor`` when given, else measured from the labels, else
    estimated from the images (:func:`~napari_nalu_count.infer.scale.estimate_diameter` on the
    normalised images), times the factor, falling back to the start model's.

    Returns a :class:`FineTuneResult`. A set ``cancel`` token stops within one step: when at
    least one epoch finished (trained and validated), the best weights so far are saved as usual
    (the card's ``training`` says ``"cancelled": true`` and how many epochs were done) and
    ``path`` points to them; when cancelled before that, nothing is saved (``path`` None and a
    note says so).

    Divergence (a NaN or infinite loss) raises :class:`~napari_nalu_count.errors.
    TrainingDiverged`. The last good model is kept: when an epoch was validated before it, the
    best such epoch is saved (atomically) under ``name`` with ``"diverged"`` in its card's
    ``training`` and the error's ``saved`` is its card path; otherwise nothing is written (the
    start model and any existing model ``name`` stay as they were) and ``saved`` is None.
    Bad arguments raise :class:`~napari_nalu_count.errors.InputError`; unreadable model files
    :class:`~napari_nalu_count.errors.ModelFileError`.
    """
    from napari_nalu_count.infer.axes import input_rule
    from napari_nalu_count.models import check_name
    from napari_nalu_count.nn import registry

    from .dataset import reduce_samples

    check_name(name)
    samples = _check_args(samples, task, cfg, callback, cancel, holdout, diameter, directory)
    start = _load_start(start_model)
    start_task = start.task
    if task is not None and task != start_task:
        raise InputError(f"model {start.name!r} is a {start_task!r} model, not {task!r}")
    task = start_task

    start_card = start.card
    config = dict(start.config)
    in_ch = int(config.get("in_channels", 1))
    rule = input_rule(start_card)
    samples = reduce_samples(samples, rule, in_ch)
    settings = (start_card.get("training") or {}).get("settings") or {}
    if cfg is None:
        cfg = TrainConfig(epochs=20, steps_per_epoch=20, lr=3e-4, patience=8, warmup_steps=0)
        if "sigma" in settings:
            cfg.sigma = float(settings["sigma"])
    else:
        cfg = copy.deepcopy(cfg)
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

    from napari_nalu_count.infer.scale import scale_factor

    start_diam = start_card.get("diameter")
    start_scale = float(start_card.get("input_scale") or 1.0)
    generalist = start_card.get("diameter_mode") == "estimate" and bool(start_diam)
    originals = list(samples)
    image_d: list[float] = []
    extra_card: dict[str, Any] = {}
    if generalist:
        image_d, diam_how = _image_diameters(samples, start, diameter)
        from .dataset import rescale_samples

        grid = []
        for smp, d in zip(samples, image_d, strict=True):
            grid += rescale_samples([smp], scale_factor(d, start_diam), task)
        samples = grid
        factor, diam = 1.0, float(start_diam)
        jitter = start_card.get("scale_jitter")
        if cfg.scale_jitter is None and jitter:
            cfg.scale_jitter = [float(jitter[0]), float(jitter[1])]
        extra_card = {"diameter_mode": "estimate"}
        if jitter:
            extra_card["scale_jitter"] = list(jitter)
        notes.append(
            f"each image resampled so its nuclei ({diam_how}: "
            + ", ".join(f"{d:.1f}" for d in image_d)
            + f" px) are {float(start_diam):g} px, the model grid"
        )
    elif diameter is not None:
        d = float(diameter)
        if not (np.isfinite(d) and d > 0):
            raise InputError(f"diameter must be a positive number of pixels, got {diameter!r}")
        factor = scale_factor(d, start_diam) if start_diam else start_scale
        diam = d * factor
        diam_how = f"given ({d:g} px)"
    else:
        factor = start_scale
        measured = _measured_diameter(samples)
        diam_how = "measured from the labels"
        if measured is None:
            measured = _estimated_diameter(samples, task, cfg.normalization)
            diam_how = "estimated from the images (LoG blobs)"
        if measured is not None:
            diam = measured * factor
        else:
            diam = start_diam
            diam_how = "the start model's"
    if factor != 1.0:
        from .dataset import rescale_samples

        samples = rescale_samples(samples, factor, task)
        notes.append(f"images resampled by {factor:.4g} to the model grid")
    if not generalist:
        notes.append(
            f"diameter {diam_how}"
            + ("" if diam is None else f": {float(diam):.1f} px on the model grid")
        )

    train_s, held_s, held_desc = split_holdout(samples, holdout, cfg.seed)
    if len(samples) == 1:
        notes.append(
            "only one image: the before/after metrics come from a strip of the training image, "
            "which flatters them; annotate a second image to measure on an unseen one"
        )
    held_names = {id(h) for h in held_s}
    held_orig = [o for o, g in zip(originals, samples, strict=True) if id(g) in held_names]
    # measured as the user will count: with the diameter they gave, else found by the model
    held_d = [diameter] * len(held_orig)
    e2e = generalist and task == "count" and len(originals) >= 2 and len(held_orig) == len(held_s)
    held_items = prepare(held_s, task, normalization=cfg.normalization, in_channels=in_ch)
    n_classes = int(config.get("out_channels", 3))
    if e2e:
        before = end_to_end_counts(start, held_orig, held_d)
    else:
        before = evaluate(
            copy.deepcopy(start.net).float(),
            held_items,
            task,
            density_scale=cfg.density_scale,
            n_classes=n_classes,
            boundary_width=cfg.boundary_width,
        )
        before["n_cells"] = int(round(sum(it.count for it in held_items)))

    def finish(result: TrainResult, extra_training: dict[str, Any]) -> FineTuneResult:
        fre_used = (result.config or {}).get("fre")
        if e2e:
            probe = {**start_card, "config": result.config, "density_scale": cfg.density_scale}
            after = end_to_end_counts(_as_model(result.net, probe, name), held_orig, held_d)
        else:
            after = evaluate(
                result.net,
                held_items,
                task,
                density_scale=cfg.density_scale,
                n_classes=n_classes,
                boundary_width=cfg.boundary_width,
            )
            after["n_cells"] = int(round(sum(it.count for it in held_items)))
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
            **extra_training,
        }
        how = (
            "end to end (infer.count on the held-out images at their own resolution)"
            if e2e
            else "on the model grid (train.evaluate)"
        )
        metrics = {
            "split": f"fine-tuning hold-out: {held_desc}, {before['n_cells']} cells; {how}",
            **{k: v for k, v in after.items()},
            "before": before,
            "after": after,
        }
        card = make_trained_card(
            result,
            name,
            task,
            normalization=cfg.normalization,
            density_scale=cfg.density_scale,
            diameter=diam,
            training=training,
            metrics=metrics,
            description=f"fine-tuned from {start.name}",
            input_scale=factor,
            input=rule,
            extra=extra_card,
        )
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
        )

    from napari_nalu_count.models import save_model

    try:
        result = train(start, train_s, held_s, task, cfg, callback=callback, cancel=cancel)
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
        saved = finish(kept, {"diverged": diverged})
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
    return finish(result, {})
