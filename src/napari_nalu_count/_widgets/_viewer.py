"""The docks' side of the napari viewer (no Qt widgets here): layer checks, coordinates, Shapes
as masks, result layers bound to their source, layer-event connections, notifications."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

#: metadata key put on every layer a dock creates
META_KEY = "nalu_count"


# --------------------------------------------------------------------------- source layers
def check_image_layer(layer: Any) -> None:
    """Reject layers the engine cannot take (missing, empty). A multiscale layer is taken: the
    engine counts one of its levels (:func:`engine_data`)."""
    if layer is None:
        raise InputError("add an image layer (File > Open Sample > NALU Cell Counter)")
    if 0 in level0(layer).shape:
        raise InputError(f"'{layer.name}' is empty")


def level0(layer: Any) -> Any:
    """The layer's data, or its full-resolution level when it is multiscale."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def n_levels(layer: Any) -> int:
    """How many resolution levels the layer has (1 for a plain layer)."""
    return len(layer.data) if getattr(layer, "multiscale", False) else 1


def engine_data(layer: Any) -> Any:
    """What the engine gets for ``layer``: its array, or for a multiscale layer the list of its
    levels (read lazily; the engine picks one with ``level=`` and counts it in blocks)."""
    return list(layer.data) if getattr(layer, "multiscale", False) else layer.data


def layer_file_label(layer: Any) -> str:
    """What the CSV ``file`` column says: the path the layer came from, else its name."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else str(layer.name)


def layers_of(viewer: Any, kinds: type | tuple[type, ...]) -> list[tuple[str, Any]]:
    """``(name, layer)`` choices for a picker."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kinds)]


def transform_points(points: np.ndarray, src_layer: Any, dst_layer: Any) -> np.ndarray:
    """Map points from ``src_layer``'s data coordinates into ``dst_layer``'s (through world
    coordinates, with the layers' public transforms: docks get proxied layers)."""
    points = np.asarray(points, dtype=float)
    n = dst_layer.ndim
    if len(points) == 0:
        return points.reshape(0, n)
    world = np.array([src_layer.data_to_world(p) for p in points], dtype=float)
    if world.shape[1] < n:
        world = np.concatenate([np.zeros((len(world), n - world.shape[1])), world], axis=1)
    return np.array([dst_layer.world_to_data(w[-n:]) for w in world], dtype=float)


def shape_masks(shapes_layer: Any, source: Any, plane_shape: tuple[int, int]) -> np.ndarray:
    """Boolean masks ``(k, Y, X)`` of a Shapes layer's shapes, in ``source``'s pixel grid."""
    from napari.layers import Shapes

    if len(shapes_layer.data) == 0:
        return np.zeros((0, *plane_shape), dtype=bool)
    moved = [transform_points(v, shapes_layer, source)[:, -2:] for v in shapes_layer.data]
    flat = Shapes(moved, shape_type=list(shapes_layer.shape_type))
    return np.asarray(flat.to_masks(mask_shape=plane_shape), dtype=bool)


# --------------------------------------------------------------------------- result layers
def result_geometry(source: Any, axes: str, out_axes: str) -> dict[str, Any]:
    """Scale, translate and ``axis_labels`` of a result with ``out_axes`` (the run's ``axes``
    without ``C``) computed from ``source``."""
    layer_axes = axes[:-1] if getattr(source, "rgb", False) and axes.endswith("C") else axes
    if len(layer_axes) == source.ndim:
        pick = [layer_axes.index(a) for a in out_axes]
        scale = tuple(float(source.scale[i]) for i in pick)
        translate = tuple(float(source.translate[i]) for i in pick)
    else:
        n = len(out_axes)
        scale, translate = tuple(source.scale)[-n:], tuple(source.translate)[-n:]
    return {"scale": scale, "translate": translate, "axis_labels": tuple(out_axes)}


def level_geometry(geometry: dict[str, Any], level_scale: Any) -> dict[str, Any]:
    """``geometry`` of a result computed on a coarser pyramid level: the scale times the
    level's size factor per axis (``CountResult.level_scale``), so it lies over level 0 as
    napari shows the layer's own levels (level pixel ``i`` at level-0 pixel ``i * factor``)."""
    if not level_scale or len(level_scale) != len(geometry["scale"]):
        return geometry
    factors = [float(f) for f in level_scale]
    scale = tuple(s * f for s, f in zip(geometry["scale"], factors, strict=True))
    return {**geometry, "scale": scale}


def find_result_layer(viewer: Any, source: Any, kind: str) -> Any | None:
    """The layer this plugin made earlier from ``source`` for ``kind``, if still there."""
    sid = str(source.unique_id)
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
        if meta and meta.get("source_id") == sid and meta.get("kind") == kind:
            return layer
    return None


def replace_result_layer(
    viewer: Any, source: Any, kind: str, layer_type: str, data: Any, **kwargs: Any
) -> Any:
    """Add a result layer bound to ``source``, replacing the one from an earlier run (it takes
    the old one's place in the layer list). ``kwargs`` go to the layer (name, scale, ...)."""
    from napari import layers

    old = find_result_layer(viewer, source, kind)
    index = None
    if old is not None:
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
    meta = {META_KEY: {"source_id": str(source.unique_id), "kind": kind}}
    kwargs["metadata"] = {**kwargs.get("metadata", {}), **meta}
    cls = {
        "image": layers.Image,
        "points": layers.Points,
        "labels": layers.Labels,
        "shapes": layers.Shapes,
    }[layer_type]
    layer = cls(data, **kwargs)
    if index is None:
        viewer.layers.append(layer)
    else:
        viewer.layers.insert(index, layer)
    return layer


def record_result_info(layers: Iterable[Any], **info: Any) -> None:
    """Store run facts (e.g. the nucleus diameter used) in result layers' plugin metadata."""
    for layer in layers:
        meta = layer.metadata.get(META_KEY)
        if isinstance(meta, dict):
            meta.update({k: v for k, v in info.items() if v is not None})


# --------------------------------------------------------------------------- connections
def connect_layer_events(viewer: Any, callback: Callable[..., Any]) -> Callable[[], None]:
    """Call ``callback`` whenever layers come, go, move or get renamed; returns a disconnect."""
    events = viewer.layers.events
    emitters = [events.inserted, events.removed, events.reordered]
    if hasattr(events, "renamed"):
        emitters.append(events.renamed)
    for emitter in emitters:
        emitter.connect(callback)

    def disconnect() -> None:
        for emitter in emitters:
            try:
                emitter.disconnect(callback)
            except (RuntimeError, ValueError, TypeError):  # already gone
                pass

    return disconnect


class LayerWatch:
    """Calls ``callback`` when the data of the watched layers changes (dots added, labels
    painted, shapes drawn). :meth:`watch` sets the watched layers (the others are let go);
    :meth:`close` lets go of all. Layers are held by identity, never by ``id()``."""

    EVENTS = ("data", "paint", "set_data")

    def __init__(self, callback: Callable[..., Any]) -> None:
        self.callback = callback
        self._watched: list[tuple[Any, list[Any]]] = []

    @property
    def layers(self) -> list[Any]:
        return [layer for layer, _ in self._watched]

    def watch(self, layers: Iterable[Any]) -> None:
        wanted = [layer for layer in dict.fromkeys(layers) if layer is not None]
        keep = []
        for layer, emitters in self._watched:
            if any(layer is w for w in wanted):
                keep.append((layer, emitters))
            else:
                self._disconnect(emitters)
        for layer in wanted:
            if not any(layer is k for k, _ in keep):
                events = layer.events
                emitters = [getattr(events, n) for n in self.EVENTS if hasattr(events, n)]
                for emitter in emitters:
                    emitter.connect(self.callback)
                keep.append((layer, emitters))
        self._watched = keep

    def close(self) -> None:
        for _, emitters in self._watched:
            self._disconnect(emitters)
        self._watched = []

    def _disconnect(self, emitters: list[Any]) -> None:
        for emitter in emitters:
            try:
                emitter.disconnect(self.callback)
            except (RuntimeError, ValueError, TypeError):
                pass


# --------------------------------------------------------------------------- notifications
def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
