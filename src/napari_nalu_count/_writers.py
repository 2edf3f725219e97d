"""Export functions with the npe2 writer signature ``write_x(path, data, attributes) -> [paths]``.

Plain functions (no napari import): the manifest (``napari.yaml``) contributes them as writers
(see docs/internals.md for the entries), and the API and tests call them directly.

- :func:`write_points_csv`: a Points layer -> CSV ``frame,y,x`` (+ ``axis-k`` columns when the
  leading coordinates are not one integer frame index, + every feature column);
- :func:`write_labels_tiff`: a Labels layer -> TIFF (integer labels, zlib-compressed pages);
- :func:`write_labels_imagej_rois`: a Labels layer -> ImageJ ROI set (``.zip``, one polygon
  ROI per object and frame, for Fiji's ROI Manager).

``data`` is the layer's data (for multiscale layers the list of levels; level 0 is written),
``attributes`` napari's layer attributes (``features``, ``metadata``, ``name`` ...; only
``features`` and ``metadata["stack_shape"]`` are used). Each function returns the list of
files written.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError


def _level0(data: Any) -> np.ndarray:
    if type(data).__name__ == "MultiScaleData" or (
        isinstance(data, (list, tuple)) and data and hasattr(data[0], "shape")
    ):
        data = data[0]
    if hasattr(data, "compute") and not isinstance(data, np.ndarray):
        data = data.compute()
    return np.asarray(data)


def _features(attributes: dict | None, n: int) -> dict[str, list[Any]]:
    feats = (attributes or {}).get("features")
    if feats is None:
        feats = (attributes or {}).get("properties")
    if feats is None:
        return {}
    if hasattr(feats, "to_dict"):  # a DataFrame
        cols = {str(c): list(feats[c]) for c in feats.columns}
    else:
        cols = {str(k): list(np.asarray(v).ravel()) for k, v in dict(feats).items()}
    return {k: v for k, v in cols.items() if len(v) == n}


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer, np.bool_)):
        return str(value.item())
    return str(value)


def frame_index(coords: np.ndarray, stack_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Flat C-order frame index of integer stack coordinates ``(N, k)`` (the counts table's
    ``frame``); ``stack_shape`` defaults to one more than the largest index per axis."""
    c = np.rint(np.asarray(coords, dtype=np.float64)).astype(np.int64)
    if c.shape[1] == 0:
        return np.zeros(len(c), dtype=np.int64)
    if stack_shape is None:
        stack_shape = tuple(int(v) + 1 for v in c.max(axis=0)) if len(c) else (1,) * c.shape[1]
    return np.ravel_multi_index(tuple(np.clip(c, 0, None).T), stack_shape, mode="clip")


def write_points_csv(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Points layer's ``(N, D)`` data as CSV ``frame,y,x`` plus its features.

    ``frame`` is the flat C-order index over the leading ``D - 2`` coordinates (0 for 2-D
    points; the stack shape is ``attributes["metadata"]["stack_shape"]`` when given, else one
    more than the largest index). When those coordinates are not whole numbers (3-D volume
    points) or there are two or more of them, they are also written as ``axis-0`` ...
    ``axis-{D-3}`` after ``x``.
    """
    pts = np.asarray(data, dtype=np.float64)
    if pts.ndim != 2 or (pts.size and pts.shape[1] < 2):
        raise InputError(f"points must be (N, D) with D >= 2, got shape {pts.shape}")
    pts = pts.reshape(len(pts), -1) if pts.size else np.zeros((0, max(2, pts.shape[-1])))
    lead = pts[:, :-2]
    meta = (attributes or {}).get("metadata") or {}
    stack_shape = meta.get("stack_shape")
    stack_shape = tuple(int(s) for s in stack_shape) if stack_shape else None
    if stack_shape is not None and len(stack_shape) != lead.shape[1]:
        stack_shape = None
    frames = frame_index(lead, stack_shape)
    whole = bool(np.all(lead == np.rint(lead))) if lead.size else True
    axis_cols = lead.shape[1] >= 2 or not whole
    feats = _features(attributes, len(pts))
    header = ["frame", "y", "x"]
    if axis_cols:
        header += [f"axis-{k}" for k in range(lead.shape[1])]
    header += [c for c in feats if c not in header]
    out = Path(path)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for i, row in enumerate(pts):
            line = [str(int(frames[i])), repr(float(row[-2])), repr(float(row[-1]))]
            if axis_cols:
                line += [repr(float(v)) for v in row[:-2]]
            line += [_cell(feats[c][i]) for c in header[len(line) :]]
            w.writerow(line)
    return [os.fspath(out)]


def _labels_array(data: Any) -> np.ndarray:
    lab = _level0(data)
    if lab.ndim < 2:
        raise InputError(f"labels must be at least 2-D, got shape {lab.shape}")
    if lab.dtype == np.bool_:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    return lab


def write_labels_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer as a TIFF: int32 when the ids fit (else as they are), one
    zlib-compressed page per plane, ``photometric="minisblack"`` (never read back as colour)."""
    import tifffile

    lab = _labels_array(data)
    if lab.size and lab.min() >= np.iinfo(np.int32).min and lab.max() <= np.iinfo(np.int32).max:
        lab = lab.astype(np.int32, copy=False)
    out = Path(path)
    tifffile.imwrite(out, lab, compression="zlib", photometric="minisblack")
    return [os.fspath(out)]


def label_polygons(labels2d: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(label, (n, 2) x, y polygon)`` per object of a 2-D label image, in ImageJ coordinates
    (pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``).

    The polygon is the outer 0.5-level contour of the object's mask (scikit-image
    ``find_contours``), which runs on the pixel edges and cuts corners halfway, so exactly the
    object's pixel centres lie inside it; for an object in several pieces the largest piece's;
    holes are filled.
    """
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    lab = np.asarray(labels2d)
    out: list[tuple[int, np.ndarray]] = []
    for i, sl in enumerate(ndi.find_objects(lab.astype(np.int64, copy=False))):
        if sl is None:
            continue
        value = i + 1
        mask = np.pad(lab[sl] == value, 1)
        contours = find_contours(mask.astype(np.float32), 0.5)
        if not contours:
            continue

        def area(c: np.ndarray) -> float:
            y, x = c[:, 0], c[:, 1]
            return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

        best = max(contours, key=area)
        if np.allclose(best[0], best[-1]):
            best = best[:-1]
        y = best[:, 0] - 1 + sl[0].start + 0.5
        x = best[:, 1] - 1 + sl[1].start + 0.5
        out.append((value, np.column_stack([x, y])))
    return out


def write_labels_imagej_rois(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer as an ImageJ ROI set (``.zip``): one polygon ROI per object and
    frame, named ``FFFF-LLLLL`` (1-based frame, label), with the 1-based stack ``position`` of
    its frame (flat C-order over the leading axes) for stacks. Fiji: File > Open, or ROI
    Manager > More > Open."""
    import roifile

    lab = _labels_array(data)
    planes = lab.reshape(-1, *lab.shape[-2:])
    stack = lab.ndim > 2
    rois = []
    for f, plane in enumerate(planes):
        for value, poly in label_polygons(plane):
            roi = roifile.ImagejRoi.frompoints(
                poly.astype(np.float32),
                name=f"{f + 1:04d}-{value:05d}",
                position=f if stack else None,
            )
            roi.roitype = roifile.ROI_TYPE.POLYGON
            rois.append(roi)
    out = Path(path)
    if out.exists():
        out.unlink()  # roiwrite appends to an existing zip
    if not rois:
        import zipfile

        zipfile.ZipFile(out, "w").close()
        return [os.fspath(out)]
    roifile.roiwrite(out, rois, mode="w")
    return [os.fspath(out)]


#: the npe2 contributions these writers need in napari.yaml (documented in docs/internals.md;
#: tests/test_writers.py validates them merged into the manifest)
MANIFEST_COMMANDS = [
    {
        "id": "napari-nalu-count.write_points_csv",
        "python_name": "napari_nalu_count._writers:write_points_csv",
        "title": "Save cell centres as CSV (frame,y,x)",
    },
    {
        "id": "napari-nalu-count.write_labels_tiff",
        "python_name": "napari_nalu_count._writers:write_labels_tiff",
        "title": "Save labels as TIFF",
    },
    {
        "id": "napari-nalu-count.write_labels_imagej_rois",
        "python_name": "napari_nalu_count._writers:write_labels_imagej_rois",
        "title": "Save labels as an ImageJ ROI set (.zip)",
    },
]
MANIFEST_WRITERS = [
    {
        "command": "napari-nalu-count.write_points_csv",
        "layer_types": ["points"],
        "filename_extensions": [".csv"],
        "display_name": "cell centres (frame,y,x)",
    },
    {
        "command": "napari-nalu-count.write_labels_tiff",
        "layer_types": ["labels"],
        "filename_extensions": [".tif", ".tiff"],
        "display_name": "labels TIFF",
    },
    {
        "command": "napari-nalu-count.write_labels_imagej_rois",
        "layer_types": ["labels"],
        "filename_extensions": [".zip"],
        "display_name": "ImageJ ROI set",
    },
]
