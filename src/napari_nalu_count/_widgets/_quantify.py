"""Physical units and regions for the Count and Segment docks (plain functions, no widgets).

- :func:`pixel_size_for`: µm per pixel from the dock's field, else from the layer's ``scale``
  (and ``units``, when napari knows them), else None (the tables are then in pixels and say so);
- :func:`region_mask`: a Shapes layer (boolean masks, ids 1..k) or a Labels layer (an atlas or
  tissue mask: every non-zero value a region id) in the image's pixel grid;
- :func:`quantify`: the engine result's table as ``run_batch`` writes it (areas, densities,
  regions, volume rows) and the per-region table to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nalu_count._widgets import _viewer
from napari_nalu_count.errors import InputError

#: metres per unit of the length units napari layers may carry
_UM_PER = {"nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "micrometer": 1.0,
           "micron": 1.0, "mm": 1e3, "millimeter": 1e3, "m": 1e6, "meter": 1e6}  # fmt: skip


def _yx_indices(layer: Any, axes: str | None) -> tuple[int, int]:
    ndim = layer.ndim
    layer_axes = (axes or "").upper()
    if getattr(layer, "rgb", False) and layer_axes.endswith("C"):
        layer_axes = layer_axes[:-1]
    if len(layer_axes) == ndim and "Y" in layer_axes and "X" in layer_axes:
        return layer_axes.index("Y"), layer_axes.index("X")
    return ndim - 2, ndim - 1


def layer_pixel_size(layer: Any, axes: str | None = None) -> tuple[float, float] | None:
    """``(py, px)`` µm per pixel from the layer's Y/X ``scale``: converted when the layer's
    ``units`` are lengths, taken as µm when they are napari's default (pixels) but the scale is
    not 1; None for a scale of 1 (pixels)."""
    iy, ix = _yx_indices(layer, axes)
    scale = [float(layer.scale[iy]), float(layer.scale[ix])]
    units = tuple(getattr(layer, "units", ()) or ())
    names = [str(units[i]) if len(units) == layer.ndim else "pixel" for i in (iy, ix)]
    factors = [_UM_PER.get(n) for n in names]
    if all(f is not None for f in factors):
        return scale[0] * factors[0], scale[1] * factors[1]  # type: ignore[operator]
    if np.allclose(scale, 1.0):
        return None
    return scale[0], scale[1]


def pixel_size_for(text: str, layer: Any, axes: str | None = None) -> tuple[Any, str]:
    """The pixel size a run uses and where it came from: the field (``"given"``: one number or
    ``"y, x"`` in µm), else the layer (``"layer"``), else ``(None, "none")``."""
    from napari_nalu_count.analysis.units import check_pixel_size

    text = (text or "").strip()
    if text:
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"pixel size {text!r}: type µm per pixel, e.g. 0.65") from None
        return check_pixel_size(values[0] if len(values) == 1 else values), "given"
    if layer is not None:
        found = layer_pixel_size(layer, axes)
        if found is not None:
            return check_pixel_size(found), "layer"
    return None, "none"


def pixel_size_detail(pixel_size: Any, how: str) -> str:
    if pixel_size is None:
        return "units: pixels (no pixel size: set one in the dock or the layer's scale)"
    where = {"given": "as given", "layer": "from the layer's scale"}.get(how, how)
    py, px = pixel_size
    size = f"{py:g} µm" if py == px else f"{py:g} x {px:g} µm"
    return f"pixel size {size} ({where}): areas in µm², densities in cells per mm²"


def region_mask(regions_layer: Any, source: Any, plane_shape: tuple[int, int]) -> Any:
    """The regions of ``regions_layer`` in ``source``'s pixel grid: ``(k, Y, X)`` booleans for a
    Shapes layer, the integer label mask of a Labels layer (``(Y, X)`` or one per plane); None
    for no layer. Raises InputError when a Labels mask does not fit the image's planes."""
    from napari.layers import Labels, Shapes

    if regions_layer is None:
        return None
    if isinstance(regions_layer, Shapes):
        if len(regions_layer.data) == 0:
            raise InputError(f"'{regions_layer.name}' has no shapes; draw a region")
        return _viewer.shape_masks(regions_layer, source, tuple(plane_shape))
    if isinstance(regions_layer, Labels):
        mask = np.asarray(_viewer.level0(regions_layer))
        if tuple(mask.shape[-2:]) != tuple(plane_shape):
            raise InputError(
                f"regions '{regions_layer.name}' are {mask.shape[-2]} x {mask.shape[-1]} px; the "
                f"image planes are {plane_shape[0]} x {plane_shape[1]}: use a mask of that size"
            )
        if not mask.any():
            raise InputError(f"regions '{regions_layer.name}' are empty; paint a region")
        return mask
    raise InputError(f"'{regions_layer.name}' is neither a Shapes nor a Labels layer")


@dataclass
class Quantified:
    """The table of one run: ``header`` and ``rows`` with areas and densities (what the dock
    shows), ``export``: ``(header, rows)`` exactly as ``run_batch`` / the CLI write them for the
    same options (area and density columns only with a pixel size or regions), and the
    per-region table (a DataFrame: frame, region, count, area, density) or None."""

    header: tuple[str, ...]
    rows: list[list[str]]
    regions: Any = None
    note: str = ""
    export: tuple[tuple[str, ...], list[list[str]]] | None = None


def quantify(
    file: str, result: Any, task: str, *, regions: Any = None, pixel_size: Any = None,
    how: str = "none",
) -> Quantified:  # fmt: skip
    """:func:`napari_nalu_count.infer.batch.result_table` of a dock's result, plus what to
    show: the region table and the units line. The shown table always has areas and
    densities; the exported one follows the CLI's rule (only with a pixel size or regions)."""
    from napari_nalu_count.infer.batch import result_table

    header, rows, table = result_table(
        file, result, task, regions=regions, pixel_size=pixel_size, areas=True
    )
    if pixel_size is None and regions is None:  # the CLI's table has no area columns then
        ex_header, ex_rows, _ = result_table(file, result, task, areas=False)
    else:  # with a pixel size or regions the CLI adds them too: the same table
        ex_header, ex_rows = header, rows
    frame = table.to_frame() if table is not None else None
    return Quantified(
        header, rows, frame, pixel_size_detail(pixel_size, how), export=(ex_header, ex_rows)
    )


def plane_columns(q: Quantified) -> dict[str, np.ndarray]:
    """The whole-plane area and density per plane (the ``plane`` rows with region ``all``), for
    the per-frame table."""
    cols = list(q.header)
    keep = [
        r for r in q.rows
        if ("kind" not in cols or r[cols.index("kind")] == "plane")
        and ("region" not in cols or r[cols.index("region")] == "all")
    ]  # fmt: skip
    out = {}
    for name in cols[3:]:
        if name.startswith(("area_", "density_")):
            j = cols.index(name)
            out[name] = np.array([float(r[j]) if r[j] else np.nan for r in keep])
    return out
