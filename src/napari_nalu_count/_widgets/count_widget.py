"""The "Count cells" dock: density map, detected cells, totals per frame and per region.

``run_count`` and ``apply_count_results`` are plain functions (no widget needed); the dock
only collects parameters, runs ``run_count`` in a worker and hands the result to
``apply_count_results``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox

from napari_nalu_count._widgets._common import (
    InferenceWidget,
    layer_file_label,
    layers_of,
    pump,
    record_result_info,
    replace_result_layer,
    result_axes,
    set_combo_items,
    transform_points,
)
from napari_nalu_count.errors import CancelToken, InputError


@dataclass
class CountOutput:
    """What one count run produced, in the order of ``out_axes`` (the axes minus ``C``)."""

    density: np.ndarray
    points: np.ndarray
    counts: np.ndarray  # per plane (0-d for a 2-D image)
    out_axes: str
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # name -> per-plane counts
    diameter: float | None = None  # the cell diameter the engine used, when it rescaled
    diameter_source: str = "model"  # "given", "estimated" or "model" (see infer.CountResult)

    @property
    def total(self) -> float:
        return float(np.sum(self.counts))


def run_count(
    image: np.ndarray,
    params: dict[str, Any],
    *,
    region_masks: np.ndarray | None = None,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> CountOutput:
    """Count cells in ``image`` with ``params`` (model, device, diameter, axes).

    ``region_masks`` (k, Y, X) or (k, *density.shape) booleans add per-region counts: the
    integral of the density over each mask, per plane.
    """
    from napari_nalu_count import infer

    axes = params.get("axes")
    result = infer.count(
        image,
        params["model"],
        axes=axes,
        diameter=params.get("diameter"),
        device=params.get("device", "auto"),
        progress=progress,
        cancel=cancel,
    )
    density = np.asarray(result.density, dtype=np.float32)
    out_axes = result_axes(result, axes)
    counts = per_plane(result.count, density.shape[:-2])
    if counts.ndim == 0 and density.ndim > 2:
        counts = density.sum(axis=(-2, -1), dtype=np.float64)
    points = np.asarray(result.points, dtype=float).reshape(-1, density.ndim)
    diameter = getattr(result, "diameter", None) or _model_diameter(params["model"])
    output = CountOutput(
        density=density,
        points=points,
        counts=counts,
        out_axes=out_axes,
        diameter=float(diameter) if diameter else None,
        diameter_source=str(getattr(result, "diameter_source", "model")),
    )
    if region_masks is not None and len(region_masks):
        output.regions = region_counts(density, region_masks)
    return output


def _model_diameter(model: Any) -> float | None:
    """The training diameter on a model's card (the cell size when the image is not rescaled)."""
    from napari_nalu_count._widgets._common import model_card

    card = model_card(model) if isinstance(model, str) else getattr(model, "card", None)
    value = (card or {}).get("diameter")
    if not (isinstance(value, int | float) and value > 0):
        return None
    # the card's diameter is on the model grid; a model run at input_scale s sees the image
    # resampled by s, so its cells are diameter / s pixels of the image
    s = (card or {}).get("input_scale") or 1.0
    return float(value) / float(s) if isinstance(s, int | float) and s > 0 else float(value)


def per_plane(count: Any, stack_shape: tuple[int, ...]) -> np.ndarray:
    """Counts as an array of the stack's shape (the engine flattens stack axes)."""
    counts = np.asarray(count, dtype=float)
    if stack_shape and counts.size == int(np.prod(stack_shape)):
        return counts.reshape(stack_shape)
    return counts


def region_counts(density: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Integral of ``density`` over each mask, per plane: ``{"region 1": counts, ...}``.

    2-D masks (k, Y, X) apply to every plane; masks of the density's full shape
    (k, *density.shape) count only where they are set.
    """
    density = np.asarray(density, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    plane_shape = density.shape[-2:]
    if masks.shape[-2:] != plane_shape:
        raise InputError(
            f"region masks of shape {masks.shape[-2:]} do not match the image {plane_shape}"
        )
    planes = density.reshape(-1, *plane_shape)  # (F, Y, X)
    if masks.ndim == 3:
        per_plane = np.einsum("fyx,kyx->kf", planes, masks.astype(np.float64))
    elif masks.shape[1:] == density.shape:
        flat = masks.reshape(len(masks), -1, *plane_shape).astype(np.float64)
        per_plane = np.einsum("fyx,kfyx->kf", planes, flat)
    else:
        raise InputError(f"region masks of shape {masks.shape[1:]} do not fit {density.shape}")
    stack_shape = density.shape[:-2]
    return {
        f"region {k + 1}": per_plane[k].reshape(stack_shape) if stack_shape else per_plane[k, 0]
        for k in range(len(per_plane))
    }


def shape_masks(shapes_layer: Any, source: Any, plane_shape: tuple[int, int]) -> np.ndarray:
    """Boolean masks (k, Y, X) of a Shapes layer's shapes, in ``source``'s pixel grid."""
    from napari.layers import Shapes

    if len(shapes_layer.data) == 0:
        return np.zeros((0, *plane_shape), dtype=bool)
    moved = []
    for vertices in shapes_layer.data:
        in_source = transform_points(vertices, shapes_layer, source)
        moved.append(in_source[:, -2:])
    flat = Shapes(moved, shape_type=list(shapes_layer.shape_type))
    return np.asarray(flat.to_masks(mask_shape=plane_shape), dtype=bool)


def _layer_geometry(source: Any, axes: str, out_axes: str) -> dict[str, tuple[float, ...]]:
    """Scale and translate of ``source`` for the result axes (``C`` dropped)."""
    layer_axes = axes[:-1] if source.rgb and axes.endswith("C") else axes
    if len(layer_axes) != source.ndim:
        n = len(out_axes)
        return {"scale": tuple(source.scale)[-n:], "translate": tuple(source.translate)[-n:]}
    pick = [layer_axes.index(a) for a in out_axes]
    return {
        "scale": tuple(float(source.scale[i]) for i in pick),
        "translate": tuple(float(source.translate[i]) for i in pick),
    }


def apply_count_results(
    viewer: Any, source: Any, output: CountOutput, params: dict[str, Any]
) -> dict[str, Any]:
    """Add (or replace) the density and cells layers of ``source``; return a result summary."""
    axes = params.get("axes") or output.out_axes
    geometry = _layer_geometry(source, axes, output.out_axes)
    density_layer = replace_result_layer(
        viewer,
        source,
        "density",
        "image",
        output.density,
        name=f"{source.name} density",
        colormap="inferno",
        blending="additive",
        opacity=0.8,
        **geometry,
    )
    size = _point_size(output.diameter or params.get("diameter"))
    points_layer = replace_result_layer(
        viewer,
        source,
        "cells",
        "points",
        output.points,
        name=f"{source.name} cells",
        size=size,
        face_color="transparent",
        border_color="#39ff14",
        border_width=0.15,
        border_width_is_relative=True,
        **geometry,
    )
    record_result_info(
        (density_layer, points_layer),
        diameter=output.diameter,
        diameter_source=output.diameter_source,
    )
    return {
        "name": source.name,
        "file": layer_file_label(source),
        "counts": output.counts,
        "extra": output.regions,
        "unit": "cells",
        "integer": False,
        "model": params.get("model"),
        "layers": (density_layer, points_layer),
        "frame_layer": density_layer,
        "diameter": output.diameter,
        "diameter_source": output.diameter_source,
    }


def _point_size(diameter: Any) -> float:
    if isinstance(diameter, int | float) and diameter > 0:
        return float(np.clip(diameter * 0.6, 4, 40))
    return 8.0


class CountWidget(InferenceWidget):
    """Dock widget: count cells in an image layer with a counting model."""

    task = "count"
    verb = "Count"

    def __init__(self, napari_viewer: Any, parent: Any = None) -> None:
        self.regions_combo = QComboBox()
        self.regions_combo.setToolTip(
            "optional Shapes layer: the table shows the count inside each shape"
        )
        super().__init__(napari_viewer, parent)
        self.form.addRow("regions", self.regions_combo)

    def reset_choices(self, event: Any = None) -> None:
        from napari.layers import Shapes

        super().reset_choices(event)
        items = [("(none)", None), *layers_of(self.viewer, Shapes)]
        set_combo_items(self.regions_combo, items)

    def _job(self, source: Any, image: np.ndarray, params: dict[str, Any], cancel: Any):
        shapes = self.regions_combo.currentData()
        masks = None
        if shapes is not None and shapes in self.viewer.layers:
            plane = image.shape[:-1] if source.rgb else image.shape
            masks = shape_masks(shapes, source, tuple(plane[-2:]))

        def job():
            return (yield from pump(run_count, image, params, region_masks=masks, cancel=cancel))

        return job

    def _apply(self, source: Any, params: dict[str, Any], value: CountOutput) -> dict[str, Any]:
        return apply_count_results(self.viewer, source, value, params)
