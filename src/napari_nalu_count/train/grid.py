"""How fine-tuning images reach a model's grid: the nucleus size of each image and the factor
it is resampled by, and what the new model's card records about it.

Generalist start models (card ``diameter_mode: "estimate"``) get one factor per image, from
that image's nucleus size (given, else measured from its labels, else found by the start model
as ``infer.count`` finds it), so every image's nuclei have the grid diameter. Other start models
get one factor for all images: ``start card diameter / diameter`` for a given diameter, else
the start card's ``input_scale``; it becomes the new card's ``input_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

from .dataset import prepare
from .loop import TrainConfig

__all__ = ["ModelGrid", "estimated_diameter", "image_diameters", "measured_diameter", "model_grid"]


def measured_diameter(samples: Sequence[Any]) -> float | None:
    from napari_nalu_count.data import typical_diameter

    values = []
    for s in samples:
        if s.labels is not None and np.asarray(s.labels).max() > 0:
            values.append(typical_diameter(s.labels))
    return float(np.median(values)) if values else None


def estimated_diameter(samples: Sequence[Any], task: str, normalization: dict) -> float | None:
    """Median of :func:`~napari_nalu_count.infer.scale.estimate_diameter` over the samples'
    normalised images (first channel), None when no blobs are found."""
    from napari_nalu_count.infer.scale import estimate_diameter

    values = []
    for item in prepare(samples, task, normalization=normalization):
        est = estimate_diameter(item.image[0])
        if est:
            values.append(est)
    return float(np.median(values)) if values else None


#: an image's estimated nucleus size this far (as a factor) from the median of the estimates
#: of the images fine-tuned together is taken for a wrong estimate (:func:`image_diameters`)
OUTLIER_FACTOR = 1.5


def image_diameters(
    samples: Sequence[Any],
    start: Any,
    diameter: float | None,
    notes: list[str] | None = None,
) -> tuple[list[float], str]:
    """Per-image nucleus diameters (pixels of each image) and how they were found: the given
    ``diameter``; else each image's labels; else the start model's own estimate (``count``).

    Estimates that disagree with the others: when three or more images are estimated, one
    more than :data:`OUTLIER_FACTOR` times from their median is replaced by the median (a note
    in ``notes`` says which). Images fine-tuned together nearly always come from one
    microscope, and one wrong estimate poisons the training: each image is resampled by its
    estimate, so its nuclei reach the model at the wrong size, the density learns to count
    them there and the size head learns that size as the right one. On BBBC039 (28 px nuclei),
    the start model estimated 29.5, 13.7, 29.5, 9.9 and 29.2 px for one draw of 5 images (the
    two outliers: a field of 154 nuclei and an empty field); fine-tuned on that, the model
    counted 389 for 109 nuclei on a val image (docs/models.md, round 13)."""
    from napari_nalu_count.data import typical_diameter

    if diameter is not None:
        return [float(diameter)] * len(samples), f"given ({float(diameter):g} px)"
    out, how, estimated = [], set(), []
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
        estimated.append(len(out))
        out.append(float(d))
        how.add("estimated by the start model")
    if len(estimated) >= 3:
        median = float(np.median([out[i] for i in estimated]))
        for i in estimated:
            if not median / OUTLIER_FACTOR <= out[i] <= median * OUTLIER_FACTOR:
                if notes is not None:
                    name = getattr(samples[i], "name", "") or f"#{i + 1}"
                    notes.append(
                        f"image {name!r}: its estimated nucleus size {out[i]:.1f} px is more "
                        f"than {OUTLIER_FACTOR:g}x from the other images' median; fine-tuned "
                        f"at the median, {median:.1f} px (pass diameter= if the sizes differ)"
                    )
                out[i] = median
    return out, " / ".join(sorted(how))


@dataclass
class ModelGrid:
    """How the user's images reach the model grid: a factor per image, and what the card says
    (``card_factor`` becomes ``input_scale``, ``card_diameter`` the grid diameter)."""

    factors: list[float]
    card_factor: float
    card_diameter: float | None
    user_diameter: float | None
    card_extra: dict[str, Any] = field(default_factory=dict)

    def rescale(self, parts: Sequence[Any], originals: Sequence[Any], task: str) -> list[Any]:
        """``parts`` (whole originals, or the strips of a single one) on the model grid."""
        from .dataset import rescale_samples

        index = {id(o): i for i, o in enumerate(originals)}
        out: list[Any] = []
        for part in parts:
            f = self.factors[index.get(id(part), 0)]
            out += rescale_samples([part], f, task)
        return out


def model_grid(
    samples: list[Any],
    start: Any,
    task: str,
    diameter: float | str | None,
    cfg: TrainConfig,
    notes: list[str],
) -> ModelGrid:
    """The resampling of every image (module docstring: generalist start models by each image's
    nucleus size, others by one factor), with notes saying how the size was found."""
    from napari_nalu_count.infer.scale import scale_factor

    card = start.card
    start_diam = card.get("diameter")
    generalist = card.get("diameter_mode") == "estimate" and bool(start_diam)
    if diameter == "auto":
        if generalist:
            diameter = None  # the start model finds each image's size
        else:
            diameter = estimated_diameter(samples, task, cfg.normalization)
            if diameter is None:
                raise InputError("cannot find the nucleus size of these images; type a diameter")
            notes.append(f"diameter estimated from the images: {diameter:.1f} px")
    if generalist:
        image_d, how = image_diameters(samples, start, diameter, notes)
        jitter = card.get("scale_jitter")
        if cfg.scale_jitter is None and jitter:
            cfg.scale_jitter = [float(jitter[0]), float(jitter[1])]
        extra: dict[str, Any] = {"diameter_mode": "estimate"}
        if jitter:
            extra["scale_jitter"] = list(jitter)
        notes.append(
            f"each image resampled so its nuclei ({how}: "
            + ", ".join(f"{d:.1f}" for d in image_d)
            + f" px) are {float(start_diam):g} px, the model grid"
        )
        factors = [scale_factor(d, start_diam) for d in image_d]
        return ModelGrid(factors, 1.0, float(start_diam), diameter, extra)
    if diameter is not None:
        d = float(diameter)
        factor = scale_factor(d, start_diam) if start_diam else float(card.get("input_scale") or 1)
        diam, how = d * factor, f"given ({d:g} px)"
    else:
        factor = float(card.get("input_scale") or 1.0)
        measured, how = measured_diameter(samples), "measured from the labels"
        if measured is None:
            measured = estimated_diameter(samples, task, cfg.normalization)
            how = "estimated from the images"
        if measured is not None:
            diam = measured * factor
        else:
            diam, how = start_diam, "the start model's"
    if factor != 1.0:
        notes.append(f"images resampled by {factor:.4g} to the model grid")
    notes.append(
        f"diameter {how}" + ("" if diam is None else f": {float(diam):.1f} px on the model grid")
    )
    return ModelGrid([factor] * len(samples), factor, diam, diameter)
