"""Per-object measurements of instance labels: :func:`measure` (``napari_nalu_count.measure``).

One row per object and plane, from :func:`skimage.measure.regionprops_table`. Stacks are
measured plane by plane (objects are numbered per plane, as :func:`~napari_nalu_count.segment`
returns them) and ``frame`` is the flat C-order plane index over the stack axes, the ``frame``
of the counts table (:mod:`napari_nalu_count.io_csv`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_nalu_count.analysis import units as _units
from napari_nalu_count.errors import InputError

#: regionprops properties read for every object (pixel grid)
_PROPS = ("label", "centroid", "area", "eccentricity", "solidity")
_INTENSITY = ("intensity_mean", "intensity_max")


def _canonical(arr: np.ndarray, axes: str | None, what: str, extra_last: bool = False) -> tuple:
    """``arr`` with its stack axes first (C order kept) and Y, X last; returns (array, axes)."""
    if axes is None:
        return arr, None
    ax = axes.upper()
    n = arr.ndim - (1 if extra_last else 0)
    if len(ax) != n or "Y" not in ax or "X" not in ax or set(ax) - set("TZYX"):
        raise InputError(
            f"axes {axes!r} do not describe the {what} of shape {tuple(arr.shape)}; use the "
            "letters T, Z, Y, X, one per axis"
        )
    order = [ax.index(a) for a in ax if a in "TZ"] + [ax.index("Y"), ax.index("X")]
    if extra_last:
        order.append(arr.ndim - 1)
    return np.transpose(arr, order), "".join(a for a in ax if a in "TZ") + "YX"


def measure(
    labels: Any,
    image: Any = None,
    *,
    pixel_size: Any = None,
    axes: str | None = None,
) -> Any:
    """Measure every object of ``labels``; return a :class:`pandas.DataFrame`, one row each.

    Parameters
    ----------
    labels
        Integer instance labels (0 = background), ``(Y, X)`` or a stack ``(..., Y, X)``
        (e.g. :attr:`SegmentResult.labels`); a stack is measured plane by plane.
    image
        Optional intensity image of the same shape (or the same shape plus a trailing channel
        axis: one intensity column per channel, suffixed ``_0``, ``_1`` ...).
    pixel_size
        µm per pixel, a scalar or ``(y, x)``; then areas are in µm², diameters and centroid
        positions also in µm. None: pixels.
    axes
        Axis letters of ``labels`` (``"YX"``, ``"ZYX"``, ``"TZYX"``, ``"YXZ"`` ...); None means
        the leading axes are stack axes and the last two are Y, X.

    Returns
    -------
    DataFrame with the columns, in this order:

    - ``label`` (int, the object's id in its plane), ``frame`` (int, flat plane index);
    - ``centroid_y_px``, ``centroid_x_px`` (pixels, always) and, with a pixel size,
      ``centroid_y_um``, ``centroid_x_um``;
    - ``area_um2`` or ``area_px``; ``equivalent_diameter_um`` or ``equivalent_diameter_px``
      (the diameter of the disc of the same area);
    - ``mean_intensity``, ``max_intensity`` (image units; only with ``image``);
    - ``eccentricity`` (0 = circle, -> 1 elongated; of the ellipse with the same second moments,
      on the pixel grid, i.e. square pixels assumed), ``solidity`` (area / convex hull area).

    ``df.attrs`` holds ``units`` (``"um"`` or ``"px"``), ``pixel_size`` (``(py, px)`` or None)
    and ``note`` (one line saying which units the table is in).
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    ps = _units.check_pixel_size(pixel_size)
    lab = np.asarray(labels)
    if lab.ndim < 2:
        raise InputError(f"labels must be at least 2-D, got shape {lab.shape}")
    if lab.dtype == np.bool_:
        lab = lab.astype(np.int32)
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"labels must be integer instance labels, got dtype {lab.dtype}")
    lab, _ = _canonical(lab, axes, "labels")
    img = None
    if image is not None:
        img = np.asarray(image)
        if img.dtype.kind not in "biuf":
            raise InputError(f"image must hold numbers, got dtype {img.dtype}")
        extra = img.ndim == np.asarray(labels).ndim + 1
        img, _ = _canonical(img, axes, "image", extra_last=extra)
        if img.shape[: lab.ndim] != lab.shape or img.ndim > lab.ndim + 1:
            raise InputError(
                f"image of shape {tuple(np.asarray(image).shape)} does not match the labels "
                f"{tuple(np.asarray(labels).shape)} (same shape, or plus a channel axis last)"
            )
    plane_shape = lab.shape[-2:]
    planes = lab.reshape(-1, *plane_shape)
    img_planes = None
    if img is not None:
        img_planes = img.reshape(-1, *img.shape[lab.ndim - 2 :])
    props = list(_PROPS) + (list(_INTENSITY) if img is not None else [])
    frames = []
    for f, plane in enumerate(planes):
        if not plane.any():
            continue
        table = regionprops_table(
            plane.astype(np.int64, copy=False),
            intensity_image=None if img_planes is None else img_planes[f],
            properties=props,
        )
        part = pd.DataFrame(table)
        part.insert(1, "frame", f)
        frames.append(part)
    if frames:
        raw = pd.concat(frames, ignore_index=True)
    else:
        names = ["label", "frame", "centroid-0", "centroid-1", "area", "eccentricity", "solidity"]
        multichannel = img is not None and img.ndim > lab.ndim
        if img is not None and not multichannel:
            names += list(_INTENSITY)
        raw = pd.DataFrame({p: np.zeros(0) for p in names})
    return _tidy(raw, ps, img is not None, None if img is None else img.ndim > lab.ndim)


def _tidy(raw: Any, ps: tuple[float, float] | None, has_image: bool, multichannel: Any) -> Any:
    import pandas as pd

    sfx = _units.length_suffix(ps)
    out = pd.DataFrame()
    out["label"] = raw["label"].astype(np.int64)
    out["frame"] = raw["frame"].astype(np.int64)
    out["centroid_y_px"] = raw["centroid-0"].astype(np.float64)
    out["centroid_x_px"] = raw["centroid-1"].astype(np.float64)
    if ps is not None:
        out["centroid_y_um"] = out["centroid_y_px"] * ps[0]
        out["centroid_x_um"] = out["centroid_x_px"] * ps[1]
    area_px = raw["area"].astype(np.float64).to_numpy()
    out[_units.area_column(ps)] = _units.areas(area_px, ps)
    out[f"equivalent_diameter_{sfx}"] = _units.lengths(np.sqrt(4.0 * area_px / np.pi), ps)
    if has_image:
        if multichannel:
            for name, key in (
                ("mean_intensity", "intensity_mean"),
                ("max_intensity", "intensity_max"),
            ):
                cols = sorted(c for c in raw.columns if c.startswith(key + "-"))
                for c in cols:
                    out[f"{name}_{c.split('-')[-1]}"] = raw[c].astype(np.float64)
        else:
            out["mean_intensity"] = raw["intensity_mean"].astype(np.float64)
            out["max_intensity"] = raw["intensity_max"].astype(np.float64)
    out["eccentricity"] = raw.get("eccentricity", pd.Series(dtype=np.float64)).astype(np.float64)
    out["solidity"] = raw.get("solidity", pd.Series(dtype=np.float64)).astype(np.float64)
    out.attrs["units"] = "um" if ps is not None else "px"
    out.attrs["pixel_size"] = ps
    out.attrs["note"] = _units.unit_note(ps)
    return out
