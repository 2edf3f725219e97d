"""Readers for images, point annotations, label images and the two benchmark data sets.

Formats
-------
- Images: TIFF (``.tif``/``.tiff``, multi-page stacks included, via tifffile) and PNG/JPEG/BMP
  (via scikit-image/imageio). :func:`read_image` returns the array as stored (no normalisation,
  no squeezing beyond what the reader does); :func:`read_image_axes` also returns the axes the
  file records (ImageJ hyperstack and OME-TIFF metadata, tifffile's own shape metadata; plain
  multi-page TIFF pages are frames), see :func:`file_axes` for the rules.
- Points: CSV as written by napari's Points layer (``index,axis-0,axis-1,...``); also plain
  ``y,x`` (or ``z,y,x``/``t,y,x``), ``x,y`` (reordered to ``y, x``) and header-less numeric
  columns. Coordinates are in pixels with pixel centres at integers (napari's convention).
- Label images: any integer image, 0 = background.
- BBBC039 and VGG cells: see :func:`load_bbbc039` and :func:`load_vgg`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_nalu_count.data.masks import (
    as_labels,
    instances_to_dots,
    painted_to_instances,
    relabel_sequential,
    remove_small_instances,
)
from napari_nalu_count.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "Sample",
    "load_aitslab",
    "load_bbbc039",
    "load_dsb2018",
    "load_label_folder",
    "load_labels_sample",
    "load_points_sample",
    "load_vgg",
    "file_axes",
    "read_image",
    "read_image_axes",
    "read_labels",
    "read_points_csv",
    "vgg_dots_from_rgb",
    "write_points_csv",
]

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES


@dataclass
class Sample:
    """One annotated image.

    Attributes
    ----------
    image
        The image as an array, (H, W) for the 2-D data sets (stacks: (T, H, W)).
    dots
        (N, D) float64 cell centres in pixels (``y, x``; stacks ``t, y, x``), or None.
    labels
        Instance labels, int32 of the image's spatial shape (0 = background), or None.
    name
        An identifier (file stem, data-set index, ...).
    meta
        Free-form extra information (source, generator parameters, ...).
    boxes
        ``(k, 4)`` boxes ``(y0, x0, y1, x1)`` (pixels, end exclusive) where the annotations are
        complete, or None for the whole image: training then uses only what is inside them
        (see :mod:`napari_nalu_count.data.boxes`).
    counts
        Count-level labels: the number of cells in each box (or one number for the whole image
        when ``boxes`` is None), for images without dots or labels.
    """

    image: np.ndarray
    dots: np.ndarray | None = None
    labels: np.ndarray | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    boxes: np.ndarray | None = None
    counts: np.ndarray | None = None

    @property
    def count(self) -> int | float | None:
        """Number of annotated cells (inside the boxes when there are boxes): dots, else label
        ids (by their centroids with boxes), else the sum of ``counts``; None without
        annotations."""
        from napari_nalu_count.data.boxes import dots_in_boxes

        if self.dots is not None:
            if self.boxes is None:
                return int(len(self.dots))
            return int(dots_in_boxes(self.dots, self.boxes).sum())
        if self.labels is not None:
            if self.boxes is None:
                return int(len(np.unique(self.labels[self.labels > 0])))
            return int(dots_in_boxes(instances_to_dots(self.labels), self.boxes).sum())
        if self.counts is not None:
            return float(np.sum(self.counts))
        return None


# ---------------------------------------------------------------------------------------------
# images and labels


def _existing_file(path: Any, what: str = "file") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(
            f"{what}: expected a path (str or pathlib.Path), got {type(path).__name__}"
        )
    try:
        p = Path(path)
        exists, is_file = p.exists(), p.is_file()
    except (OSError, ValueError) as exc:  # embedded NUL, name too long, ...
        raise InputError(f"{what} {str(path)[:200]!r} is not a usable path: {exc}") from None
    if not exists:
        raise InputError(f"{what} not found: {p}")
    if not is_file:
        raise InputError(f"{what} is not a file: {p}")
    return p


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    """Read a TIFF and tifffile's axes of it; pages written one by one (several same-shaped
    series) become one stack (a leading ``I`` axis)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series
        if len(series) > 1 and all(
            s.shape == series[0].shape and s.dtype == series[0].dtype for s in series
        ):
            return np.stack([s.asarray() for s in series]), "I" + series[0].axes
        return tf.asarray(), series[0].axes


#: our axis letter for each tifffile axis code; ``F`` = a frame axis (becomes ``T``). tifffile's
#: ``S`` (samples) is handled apart: colour channels when it is the last axis, else frames.
_TIFF_LETTERS = {"Y": "Y", "X": "X", "Z": "Z", "C": "C"}


def file_axes(raw: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]] | None:
    """Map tifffile's axes ``raw`` of an array of ``shape`` to this package's letters.

    Returns ``(axes, new_shape)`` or None when the axes cannot be expressed (then callers fall
    back to guessing from the shape). Rules:

    - ``Y``, ``X``, ``Z`` and ``C`` keep their meaning; ``C`` comes from the file's metadata
      (ImageJ ``channels=``, OME ``SizeC``).
    - ``S`` (samples per pixel) is colour channels only when it is the last axis (RGB(A) pixels,
      as cameras and RGB writers store them). Samples before Y/X (planar configuration) are
      frames: that is how tifffile stores any 3- or 4-plane numpy array unless told otherwise,
      so a 3-page stack is never taken for colour channels.
    - ``T``, ``I`` and ``Q`` (pages, unknown) and every other letter (angle, phase, mosaic ...)
      are frames. Several frame axes are merged into one ``T`` axis in C order (``new_shape``
      says how the array must be reshaped), which keeps the flat frame index of every plane.
    """
    if len(raw) != len(shape):
        return None
    letters = []
    for i, code in enumerate(raw):
        if code == "S":
            letters.append("C" if i == len(raw) - 1 else "F")
        else:
            letters.append(_TIFF_LETTERS.get(code, "F"))
    if any(letters.count(a) != 1 for a in "YX") or any(letters.count(a) > 1 for a in "ZC"):
        return None
    frames = [i for i, a in enumerate(letters) if a == "F"]
    if not frames:
        return "".join(letters), tuple(shape)
    if frames != list(range(frames[0], frames[0] + len(frames))):
        return None  # frame axes apart from each other: leave it to the caller
    first = frames[0]
    n = int(np.prod([shape[i] for i in frames]))
    axes = "".join(letters[:first]) + "T" + "".join(letters[first + len(frames) :])
    new_shape = tuple(shape[:first]) + (n,) + tuple(shape[first + len(frames) :])
    return axes, new_shape


def _decode(p: Path) -> tuple[np.ndarray, str | None]:
    suffix = p.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            arr, raw = _read_tiff(p)
        elif suffix in OTHER_SUFFIXES:
            from skimage import io as skio

            arr, raw = skio.imread(p), None
        else:
            raise InputError(
                f"unsupported image format {suffix!r} for {p.name}; expected one of "
                + ", ".join(IMAGE_SUFFIXES)
            )
        arr = np.asarray(arr)
    except InputError:
        raise
    except Exception as exc:  # decoders raise many types; report them uniformly
        raise InputError(f"cannot read image {p}: {type(exc).__name__}: {exc}") from None
    if arr.size == 0:
        raise InputError(f"image {p} is empty (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"image {p} has unsupported pixel type {arr.dtype}")
    return arr, raw


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into a numpy array (dtype and axes as stored).

    TIFF files (including multi-page stacks, which come back as (pages, H, W[, C])) are read with
    tifffile; PNG/JPEG/BMP with scikit-image. Raises :class:`InputError` for a path that is not
    a str/Path, a missing file, an unsupported suffix or a file that cannot be decoded. Use
    :func:`read_image_axes` to also get the axes the file records.
    """
    return _decode(_existing_file(path, "image file"))[0]


def read_image_axes(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Read an image file and the axes it records, in this package's letters (T, Z, C, Y, X).

    TIFF: tifffile's first series (ImageJ hyperstack metadata, OME-TIFF, tifffile's shape
    metadata, or plain pages), mapped by :func:`file_axes`; plain multi-page files are frames
    (``TYX``), whatever their number of pages. PNG/JPEG/BMP: ``YX`` for grey, ``YXC`` for
    colour (or grey + alpha) pixels. The axes are None when the file says nothing usable
    (callers then infer them from the shape). Several frame axes in a TIFF come back merged
    into one ``T`` axis (the array is reshaped accordingly; frames keep their C order).
    """
    p = _existing_file(path, "image file")
    arr, raw = _decode(p)
    if raw is None:
        if arr.ndim == 2:
            return arr, "YX"
        if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
            return arr, "YXC"
        return arr, None
    mapped = file_axes(raw, arr.shape)
    if mapped is None:
        return arr, None
    axes, shape = mapped
    if shape != arr.shape:
        arr = arr.reshape(shape)
    return arr, axes


def read_labels(path: str | Path, *, split_painted: bool = False, min_size: int = 0) -> np.ndarray:
    """Read a 2-D instance label image (0 = background) and return int32 ids 1..N.

    For an RGB(A) file only the first (red) channel is used, as in BBBC039's masks. With
    ``split_painted=True`` each value is split into 4-connected components (for masks that paint
    touching objects with a few values). Instances smaller than ``min_size`` pixels are dropped.
    """
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise InputError(f"min_size must be a non-negative integer (pixels), got {min_size!r}")
    arr = read_image(path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"label image {path} must be 2-D (H, W), got shape {arr.shape}")
    arr = as_labels(arr, f"label image {Path(path).name}")
    if split_painted:
        return painted_to_instances(arr, connectivity=1, min_size=min_size)
    return remove_small_instances(arr, min_size) if min_size > 1 else relabel_sequential(arr)


# ---------------------------------------------------------------------------------------------
# points CSV

_AXIS_RE = re.compile(r"^axis-(\d+)$")
_NAMED_AXES = ("t", "z", "y", "x")


def _point_columns(header: list[str]) -> list[int] | None:
    """Column indices of the coordinates in ``header`` (ordered as axes), or None if unknown."""
    names = [h.strip().lower() for h in header]
    axis_cols = {int(m.group(1)): i for i, n in enumerate(names) if (m := _AXIS_RE.match(n))}
    if axis_cols:
        order = sorted(axis_cols)
        if order != list(range(len(order))):
            raise InputError(f"points CSV has non-contiguous axis columns: {header}")
        return [axis_cols[k] for k in order]
    named = {n: i for i, n in enumerate(names) if n in _NAMED_AXES}
    if "y" in named and "x" in named:
        return [named[a] for a in _NAMED_AXES if a in named]
    return None


def read_points_csv(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read point coordinates from a CSV file; returns (N, D) float64 in axis order.

    Accepted layouts: napari's Points export (``index,axis-0,axis-1[,...]``; other columns such
    as ``index`` are ignored), named columns ``y,x`` (also ``z``/``t`` before them, any column
    order, ``x,y`` is reordered to ``y, x``), or purely numeric rows (all columns are
    coordinates). ``ndim``, when given, is the number of coordinate columns expected; a mismatch
    raises :class:`InputError`. An empty file (header only) gives shape (0, ndim or 2).
    """
    p = _existing_file(path, "points CSV")
    if ndim is not None and (
        isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)) or ndim < 1
    ):
        raise InputError(f"ndim must be None or a positive integer, got {ndim!r}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read points CSV {p}: {exc}") from None
    if not rows:
        return np.zeros((0, ndim or 2), dtype=np.float64)

    def numeric(row: list[str]) -> bool:
        try:
            [float(c) for c in row]
        except ValueError:
            return False
        return True

    if numeric(rows[0]):
        cols = list(range(len(rows[0])))
        body = rows
    else:
        cols = _point_columns(rows[0])
        if cols is None:
            raise InputError(
                f"points CSV {p.name}: unrecognised header {rows[0]}; expected napari's "
                "'index,axis-0,axis-1,...', or columns named 'y,x' (optionally 'z'/'t')"
            )
        body = rows[1:]
    data = np.zeros((len(body), len(cols)), dtype=np.float64)
    for r, row in enumerate(body):
        try:
            data[r] = [float(row[c]) for c in cols]
        except (ValueError, IndexError):
            raise InputError(
                f"points CSV {p.name}: row {r + 1} is not numeric or too short: {row}"
            ) from None
    if not np.all(np.isfinite(data)):
        raise InputError(f"points CSV {p.name} contains NaN or infinite coordinates")
    if ndim is not None and data.shape[1] != ndim:
        raise InputError(
            f"points CSV {p.name} has {data.shape[1]} coordinate column(s), expected {ndim}"
        )
    return data


def write_points_csv(path: str | Path, points: object) -> Path:
    """Write (N, D) points in napari's Points CSV layout (``index,axis-0,...``)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2:
        raise InputError(f"points must be (N, D), got shape {pts.shape}")
    p = Path(path)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index"] + [f"axis-{i}" for i in range(pts.shape[1])])
        for i, row in enumerate(pts):
            writer.writerow([i] + [repr(float(v)) for v in row])
    return p


# ---------------------------------------------------------------------------------------------
# generic image + annotation pairs


def _spatial_shape(image: np.ndarray, ndim: int) -> tuple[int, ...]:
    if image.ndim == ndim + 1 and image.shape[-1] in (3, 4):  # RGB(A)
        return tuple(image.shape[:ndim])
    return tuple(image.shape[-ndim:])


def load_points_sample(image_path: str | Path, points_path: str | Path) -> Sample:
    """An image file plus a points CSV -> :class:`Sample` (dots checked against the image)."""
    from napari_nalu_count.data.density import points_inside

    image, axes = read_image_axes(image_path)
    dots = read_points_csv(points_path)
    d = dots.shape[1]
    if image.ndim < d:
        raise InputError(
            f"points in {Path(points_path).name} have {d} coordinates but the image has only "
            f"{image.ndim} dimension(s)"
        )
    shape = _spatial_shape(image, d)
    inside = points_inside(dots, shape)
    if not np.all(inside):
        raise InputError(
            f"{int(np.count_nonzero(~inside))} point(s) in {Path(points_path).name} lie outside "
            f"the image of shape {shape}"
        )
    return Sample(
        image=image, dots=dots, name=Path(image_path).stem, meta={"axes": axes} if axes else {}
    )


def load_labels_sample(
    image_path: str | Path,
    labels_path: str | Path,
    *,
    split_painted: bool = False,
    min_size: int = 0,
) -> Sample:
    """An image file plus an instance label image -> :class:`Sample` with centroid dots."""
    image, axes = read_image_axes(image_path)
    labels = read_labels(labels_path, split_painted=split_painted, min_size=min_size)
    if _spatial_shape(image, 2) != labels.shape:
        raise InputError(
            f"label image {Path(labels_path).name} has shape {labels.shape}, but the image "
            f"{Path(image_path).name} has shape {image.shape}"
        )
    return Sample(
        image=image,
        dots=instances_to_dots(labels),
        labels=labels,
        name=Path(image_path).stem,
        meta={"axes": axes} if axes else {},
    )


# ---------------------------------------------------------------------------------------------
# BBBC039


def _dataset_dir(root: str | Path, name: str, marker: str) -> Path:
    """``root`` itself or ``root/name`` (whichever contains ``marker``)."""
    if not isinstance(root, (str, os.PathLike)):
        raise InputError(f"{name} root: expected a folder path, got {type(root).__name__}")
    r = Path(root)
    for cand in (r, r / name):
        try:
            found = (cand / marker).exists()
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{name} root {str(root)[:200]!r} is not a usable path: {exc}"
            ) from None
        if found:
            return cand
    raise InputError(
        f"{name} data not found under {r} (looked for {marker!r} in it and in {name}/)"
    )


def load_bbbc039(
    root: str | Path,
    split: str = "train",
    min_size: int = 0,
    *,
    names: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Sample]:
    """Load BBBC039 (U2OS nuclei, Hoechst) as samples with instance labels and centroid dots.

    Parameters
    ----------
    root
        The ``bbbc039`` folder (with ``images/``, ``masks/``, ``train.txt``, ``val.txt``) or its
        parent.
    split
        ``"train"`` (110 images), ``"val"`` (38) or ``"all"`` (every image in ``images/``).
    min_size
        Drop instances smaller than this many pixels. The default 0 keeps everything, including
        the annotated micronuclei (~5% of the objects are under 40 px, a handful are 1-4 px):
        they are annotated as objects, so they count. Pass e.g. ``min_size=40`` to count only
        nuclei proper.
    names
        Load only these image names (overrides ``split``).
    limit
        Load at most this many images (in split order).

    Returns
    -------
    list of :class:`Sample`: ``image`` uint16 (520, 696), ``labels`` int32 (ids 1..N),
    ``dots`` (N, 2) centroids, ``name`` the file stem. Masks are RGBA PNGs in which only the red
    channel matters; instances are the 4-connected components of each painted value separately.
    """
    base = _dataset_dir(root, "bbbc039", "images")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))):
        raise InputError(f"limit must be None or an integer, got {limit!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise InputError(f"min_size must be a non-negative integer (pixels), got {min_size!r}")
    if names is None:
        if split in ("train", "val"):
            split_file = base / f"{split}.txt"
            if not split_file.is_file():
                raise InputError(f"BBBC039 split file missing: {split_file}")
            names = [n.strip() for n in split_file.read_text().split() if n.strip()]
        elif split == "all":
            names = sorted(p.stem for p in (base / "images").glob("*.tif"))
        else:
            raise InputError(f"split must be 'train', 'val' or 'all', got {split!r}")
    names = [Path(n).stem for n in names]
    if limit is not None:
        names = names[: int(limit)]
    samples = []
    for name in names:
        image = read_image(base / "images" / f"{name}.tif")
        mask = read_image(base / "masks" / f"{name}.png")
        red = mask[..., 0] if mask.ndim == 3 else mask
        labels = painted_to_instances(red, connectivity=1, min_size=min_size)
        samples.append(
            Sample(
                image=image,
                dots=instances_to_dots(labels),
                labels=labels,
                name=name,
                meta={"dataset": "bbbc039", "split": split, "min_size": min_size},
            )
        )
    return samples


# ---------------------------------------------------------------------------------------------
# image + label-image folders (DSB 2018, Aitslab, and the same layout of a user's own data)


def _split_names(base: Path, split: str, images: Path) -> list[str]:
    if split == "all":
        return sorted(p.stem for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    split_file = base / f"{split}.txt"
    if not split_file.is_file():
        raise InputError(
            f"split file missing: {split_file} (expected one image name per line; "
            "use split='all' to load every image)"
        )
    return [Path(n.strip()).stem for n in split_file.read_text().split() if n.strip()]


def _find_file(folder: Path, stem: str, what: str) -> Path:
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        cand = folder / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    tried = ", ".join(IMAGE_SUFFIXES)
    raise InputError(f"{what} for {stem!r} not found in {folder} (tried {tried})")


def load_label_folder(
    root: str | Path,
    split: str = "train",
    min_size: int = 0,
    *,
    images: str = "images",
    labels: str = "labels",
    names: Sequence[str] | None = None,
    limit: int | None = None,
    dataset: str = "",
) -> list[Sample]:
    """Load a folder laid out as ``images/NAME.(png|tif)`` + ``labels/NAME.(tif|png)``.

    The label images hold instance ids (0 = background, any integer dtype); ids are made
    sequential and instances under ``min_size`` pixels are dropped. ``split`` names a
    ``SPLIT.txt`` file beside the two folders (one image name per line) or is ``"all"``.
    Every sample gets its instance-centroid ``dots``; ``meta`` records the data set, split and
    the median equivalent diameter of its objects (``diameter``, pixels; None when empty).
    """
    base = Path(root)
    img_dir, lab_dir = base / images, base / labels
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise InputError(f"folder {d} not found: expected {images}/ and {labels}/ in {base}")
    if names is None:
        names = _split_names(base, split, img_dir)
    names = [Path(n).stem for n in names]
    if limit is not None:
        names = names[: int(limit)]
    samples = []
    for name in names:
        img_path = _find_file(img_dir, name, "image")
        lab_path = _find_file(lab_dir, name, "label image")
        image = read_image(img_path)
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            colour = image[..., :3]
            if np.all(colour == colour[..., :1]):  # grey stored as RGB(A)
                image = np.ascontiguousarray(colour[..., 0])
        lab = read_labels(lab_path, min_size=min_size)
        if _spatial_shape(image, 2) != lab.shape:
            raise InputError(
                f"label image {lab_path.name} has shape {lab.shape}, but the image "
                f"{img_path.name} has shape {image.shape}"
            )
        sizes = np.bincount(lab.ravel())[1:]
        sizes = sizes[sizes > 0]
        diameter = float(np.median(np.sqrt(4.0 * sizes / np.pi))) if len(sizes) else None
        samples.append(
            Sample(
                image=image,
                dots=instances_to_dots(lab),
                labels=lab,
                name=name,
                meta={
                    "dataset": dataset or base.name,
                    "split": split,
                    "min_size": min_size,
                    "diameter": diameter,
                },
            )
        )
    return samples


def load_dsb2018(
    root: str | Path, split: str = "train", min_size: int = 0, *, limit: int | None = None
) -> list[Sample]:
    """DSB 2018 stage-1 fluorescence nuclei (``dsb2018_train/``: 420 train + 74 val, uint8
    grey, 7-94 px nuclei) with instance labels; ``root`` is that folder or its parent."""
    base = _dataset_dir(root, "dsb2018_train", "labels")
    return load_label_folder(base, split, min_size, limit=limit, dataset="dsb2018")


def load_aitslab(
    root: str | Path, split: str = "train", min_size: int = 0, *, limit: int | None = None
) -> list[Sample]:
    """Aitslab-bioimaging1 U2OS nuclei (``aitslab/``: 30 train + 10 val, 1104 x 1104 uint8,
    ~44 px nuclei) with instance labels; ``root`` is that folder or its parent."""
    base = _dataset_dir(root, "aitslab", "labels")
    return load_label_folder(base, split, min_size, limit=limit, dataset="aitslab")


# ---------------------------------------------------------------------------------------------
# VGG cells


def vgg_dots_from_rgb(dots_rgb: np.ndarray) -> np.ndarray:
    """Cell centres from a VGG ``NNNdots.png`` array: (N, 2) float64 ``(y, x)``.

    Every annotated pixel in the distributed files is pure red (255, 0, 0) and all others are
    black (checked on all 200 files: 74..317 dots, mean 175.96). The rule used is "clearly red":
    ``R >= 128`` and ``G < 128`` and ``B < 128``, which matches exactly those pixels and tolerates
    re-encoding.
    """
    arr = np.asarray(dots_rgb)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InputError(f"VGG dot image must be RGB (H, W, 3), got shape {arr.shape}")
    r, g, b = (arr[..., i].astype(np.int32) for i in range(3))
    ys, xs = np.nonzero((r >= 128) & (g < 128) & (b < 128))
    return np.column_stack([ys, xs]).astype(np.float64)


def load_vgg(root: str | Path, indices: Iterable[int] | None = None) -> list[Sample]:
    """Load VGG synthetic cells (Lempitsky & Zisserman 2010).

    Parameters
    ----------
    root
        The ``vgg_cells`` folder (``001cell.png`` ...) or its parent.
    indices
        Image numbers in 1..200 (default: all 200). The standard protocol trains on images drawn
        from 1-100 and tests on 101-200.

    Returns
    -------
    list of :class:`Sample`: ``image`` uint8 (256, 256) = the blue channel (the signal),
    ``dots`` (N, 2) from the red pixels of ``NNNdots.png``, ``name`` ``"NNN"``.
    """
    base = _dataset_dir(root, "vgg_cells", "001cell.png")
    try:
        idx = list(range(1, 201)) if indices is None else [int(i) for i in indices]
    except (TypeError, ValueError):
        raise InputError(f"indices must be image numbers in 1..200, got {indices!r}") from None
    samples = []
    for i in idx:
        if not 1 <= i <= 999:
            raise InputError(f"VGG image index must be in 1..200, got {i}")
        rgb = read_image(base / f"{i:03d}cell.png")
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise InputError(f"VGG cell image {i:03d} is not RGB (shape {rgb.shape})")
        dots = vgg_dots_from_rgb(read_image(base / f"{i:03d}dots.png"))
        samples.append(
            Sample(
                image=np.ascontiguousarray(rgb[..., 2]),
                dots=dots,
                name=f"{i:03d}",
                meta={"dataset": "vgg_cells"},
            )
        )
    return samples
