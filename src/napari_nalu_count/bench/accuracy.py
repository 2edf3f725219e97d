"""Accuracy per data set and per object scale, beside two classical baselines in the same run.

Sets (validation/test splits only, never train; read from ``--data``, default
``$NALU_COUNT_DATA`` or ``../shared/data``):

- ``bbbc039``: BBBC039 val (38 images, U2OS, 12-bit in uint16). *All* annotated objects count
  (``min_size=0``: the micronuclei of a few pixels included), for the count, the points and the
  masks alike.
- ``dsb``: DSB 2018 stage-1 fluorescence val (74 images, uint8, many labs, 7-94 px nuclei).
- ``aitslab``: Aitslab-bioimaging1 val (10 images, 1104 x 1104 uint8, ~44 px nuclei).
- ``vgg``: VGG synthetic cells, test images 101-200 (blue channel; dots only, so no
  segmentation F1). No masks give a diameter: :data:`VGG_DIAMETER` (10 px) is used for point
  matching and ``--diameter true`` (median equivalent diameter of the Otsu components that
  hold exactly one dot, images 101-110).
- Rescaled copies of BBBC039 val and DSB val at each ``--scales`` factor (default 0.5, 2, 3):
  the image is resampled with :func:`~napari_nalu_count.infer.scale.rescale_plane` in float32
  (:func:`~napari_nalu_count.train.dataset.rescale_samples`) and cast back to its own dtype
  (rounded, clipped to the dtype's range: uint8 stays uint8, uint16 stays uint16); labels are
  resampled nearest-neighbour at pixel centres, dots map as ``p' = (p + 0.5) s - 0.5``. The true
  count of a copy is the original object count (objects that vanish from the resampled mask at
  0.5x still count; the segmentation truth is the resampled mask). A copy of an image whose
  true median diameter x scale is under :data:`MIN_DIAMETER` (6 px) is skipped (reported).

Methods, all on the same images in the same run:

- ``counter``: ``count(image, count_model, diameter=D)``; the count is the density integral,
  points its peaks.
- ``segmenter``: ``segment(image, seg_model, diameter=D, count_model=count_model)`` (its
  count-guided seeds come from the same counting model); count = objects, points = their
  centroids, labels for segmentation F1. Its time includes the seed count.
- ``D`` follows ``--diameter``: ``none`` (default, what a user gets with default settings:
  ``diameter=None``), ``true`` (the image's true median equivalent diameter in pixels, times the
  scale for copies; for an image without objects the set's median) or ``auto``.
- ``LoG`` baseline (fixed settings :data:`LOG_SETTINGS`, chosen a priori, identical for every
  set and scale): the image is percentile-normalised (1 - 99.8 %) and clipped to [0, 1],
  downsampled by 2 (:func:`rescale_plane`, Gaussian anti-aliasing, for speed), then
  :func:`skimage.feature.blob_log` with sigmas covering nuclei of 6-120 px
  (``sigma = d / (2 sqrt 2)`` -> 1.06-21.2 px on the half-size image), 10 log-spaced sigmas,
  threshold 0.05 (as in the project's other blob_log calls; a uniform disc of contrast c
  gives a peak response of ``2 c / e = 0.74 c``, so it keeps discs of contrast >= 0.07),
  overlap 0.5, no border exclusion. Count = number of blobs; points = blob centres mapped back
  to full resolution with the pixel-centre convention.
- ``Otsu+WS`` baseline (fixed :data:`WATERSHED_SETTINGS`): the same normalisation, Gaussian
  smoothing (sigma 1 px), Otsu threshold, holes filled, Euclidean distance transform,
  ``peak_local_max`` seeds (``min_distance=7``, i.e. a 15 x 15 footprint, per connected
  component; a component without a peak gets a seed at its distance maximum), marker watershed
  on the negative distance inside the mask, objects under 20 px removed. Count = objects,
  points = centroids, labels for segmentation F1.

Metrics per (set, scale, method): count MAE, relative MAE (MAE / mean true count, the headline),
bias (mean signed error), RMSE, the number of images and the mean true count; point detection
precision / recall / F1, predicted points matched one-to-one to the true centroids within half
the image's true median diameter (:func:`~napari_nalu_count.infer.match_points`), TP/FP/FN summed
over images (micro F1); segmentation F1 at IoU 0.5 and 0.75 where masks exist (one-to-one
matches with IoU above the threshold, TP/FP/FN summed over images, as
:func:`~napari_nalu_count.train.metrics.instance_f1`); wall-clock seconds per image. An error
on one image is recorded (JSON and report) and that image is left out of that method's figures.

``--json OUT`` writes everything (machine, versions, threads, the command, models and the
sha256 of their card files, settings, per-image rows: file stem, true count, per method the
predicted count, point TP/FP/FN, segmentation TP/FP/FN and seconds). While it runs, the per-image
rows are appended to ``OUT.rows.jsonl`` (removed once ``OUT`` is written); ``--resume`` reuses
the rows of an interrupted or finished run with the same settings and models. ``--report DIR``
writes ``accuracy.md`` and ``accuracy_scale.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_nalu_count.data.normalize import cast_like
from napari_nalu_count.errors import InputError

#: data-set keys in report order
SETS: tuple[str, ...] = ("bbbc039", "dsb", "aitslab", "vgg")
#: the sets that get rescaled copies
RESCALED_SETS: tuple[str, ...] = ("bbbc039", "dsb")
SET_TITLES = {
    "bbbc039": "BBBC039 val",
    "dsb": "DSB 2018 val",
    "aitslab": "Aitslab val",
    "vgg": "VGG cells test (101-200)",
}
SET_NOTES = {
    "bbbc039": "all annotated objects (min_size=0, micronuclei included)",
    "dsb": "fluorescence stage-1 images, random val split",
    "aitslab": "the authors' val split",
    "vgg": f"dots only (no masks); diameter fixed at {10.0:g} px",
}
#: copies whose objects would be smaller than this (true diameter x scale, pixels) are skipped
MIN_DIAMETER = 6.0
#: VGG cells have no masks; their typical diameter in pixels (see the module docstring)
VGG_DIAMETER = 10.0
VGG_TEST = tuple(range(101, 201))
#: method keys in report order
METHODS: tuple[str, ...] = ("counter", "segmenter", "LoG", "Otsu+WS")
SEG_METHODS = ("segmenter", "Otsu+WS")
IOU_THRESHOLDS = (0.5, 0.75)

LOG_SETTINGS: dict[str, Any] = {
    "normalize": "percentile 1-99.8, clipped to [0, 1]",
    "downsample": 2,
    "min_diameter": 6.0,
    "max_diameter": 120.0,
    "num_sigma": 10,
    "log_scale": True,
    "threshold": 0.05,
    "overlap": 0.5,
    "exclude_border": False,
}
WATERSHED_SETTINGS: dict[str, Any] = {
    "normalize": "percentile 1-99.8, clipped to [0, 1]",
    "smooth_sigma": 1.0,
    "threshold": "otsu",
    "fill_holes": True,
    "min_distance": 7,
    "min_size": 20,
}


# ---------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="ROOT",
        help="folder with bbbc039/, dsb2018_train/, aitslab/, vgg_cells/ "
        "(default: $NALU_COUNT_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}"
    )
    parser.add_argument(
        "--scales",
        default="0.5,2,3",
        help="rescaled copies of BBBC039 val and DSB val (default 0.5,2,3; '' for none)",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="at most N images per set")
    parser.add_argument(
        "--scale-limit",
        type=int,
        metavar="N",
        help="at most N images per rescaled copy (default: the same as the set)",
    )
    parser.add_argument("--count-model", default="nuclei-count", metavar="NAME|PATH")
    parser.add_argument("--seg-model", default="nuclei-seg", metavar="NAME|PATH")
    parser.add_argument(
        "--diameter",
        default="none",
        choices=("none", "true", "auto"),
        help="diameter given to count/segment: none (default), the true one, or 'auto'",
    )
    parser.add_argument(
        "--background",
        default=None,
        metavar="W",
        help="background= for the counter and segmenter: auto, on, off, or the opening's width "
        "in object diameters (default: auto, what count()/segment() do by default)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip LoG and Otsu+WS")
    parser.add_argument("--no-segment", action="store_true", help="skip the segmentation model")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--report", metavar="DIR", help="write accuracy.md and accuracy_scale.png")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the per-image rows in OUT.rows.jsonl of an interrupted run (needs --json)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def default_data_root() -> Path:
    """``$NALU_COUNT_DATA`` when set, else ``../shared/data`` relative to the current folder."""
    env = os.environ.get("NALU_COUNT_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"


def _parse_sets(text: str) -> list[str]:
    alias = {"dsb2018": "dsb", "bbbc": "bbbc039", "vgg_cells": "vgg"}
    sets = [alias.get(s.strip().lower(), s.strip().lower()) for s in text.split(",") if s.strip()]
    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise InputError(f"--sets: unknown set(s) {bad or text!r}; choose from {','.join(SETS)}")
    return [s for s in SETS if s in sets]


def _parse_scales(text: str) -> list[float]:
    out: list[float] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            s = float(part)
        except ValueError:
            raise InputError(f"--scales: {part!r} is not a number") from None
        if not (math.isfinite(s) and 0.05 <= s <= 8):
            raise InputError(f"--scales: {s:g} is outside [0.05, 8]")
        if abs(s - 1.0) > 1e-9 and s not in out:
            out.append(s)
    return sorted(out)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["nalu-count", "bench", "accuracy"]
    for key in (
        "json",
        "data",
        "sets",
        "scales",
        "limit",
        "scale_limit",
        "count_model",
        "seg_model",
        "diameter",
        "threads",
        "device",
        "report",
    ):
        v = getattr(args, key, None)
        if v is not None:
            parts += [f"--{key.replace('_', '-')}", str(v) if str(v) else "''"]
    for flag in ("no_baselines", "no_segment", "resume"):
        if getattr(args, flag, False):
            parts.append(f"--{flag.replace('_', '-')}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# data


def _vgg_dir(root: Path) -> Path:
    for cand in (root / "vgg_cells", root):
        if any(cand.glob("*cell.png")):
            return cand
    raise InputError(f"vgg_cells data not found under {root}")


def _set_dir_exists(root: Path, name: str) -> Path | None:
    marker = {
        "bbbc039": ("bbbc039", "images"),
        "dsb": ("dsb2018_train", "labels"),
        "aitslab": ("aitslab", "labels"),
    }
    if name == "vgg":
        try:
            return _vgg_dir(root)
        except InputError:
            return None
    folder, inner = marker[name]
    return root / folder if (root / folder / inner).exists() else None


def _load_vgg(root: Path, limit: int | None) -> list[Any]:
    """VGG test images 101-200 (those present), as :func:`load_vgg` reads them."""
    from napari_nalu_count.data import load_vgg
    from napari_nalu_count.data.readers import Sample, read_image, vgg_dots_from_rgb

    base = _vgg_dir(root)
    idx = [i for i in VGG_TEST if (base / f"{i:03d}cell.png").is_file()]
    if limit is not None:
        idx = idx[: int(limit)]
    if (base / "001cell.png").exists():
        samples = load_vgg(base, idx)
    else:  # a partial copy without image 001 (load_vgg looks for it to find the folder)
        samples = []
        for i in idx:
            rgb = read_image(base / f"{i:03d}cell.png")
            dots = vgg_dots_from_rgb(read_image(base / f"{i:03d}dots.png"))
            samples.append(
                Sample(
                    image=np.ascontiguousarray(rgb[..., 2]),
                    dots=dots,
                    name=f"{i:03d}",
                    meta={"dataset": "vgg_cells"},
                )
            )
    for s in samples:
        s.meta["diameter"] = VGG_DIAMETER
    return samples


def load_set(root: str | Path, name: str, limit: int | None = None) -> list[Any]:
    """The evaluation split of one set as Samples with ``meta['diameter']`` (pixels or None)."""
    from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018, typical_diameter

    root = Path(root)
    if name == "bbbc039":
        samples = load_bbbc039(root, "val", min_size=0, limit=limit)
        for s in samples:
            s.meta["diameter"] = typical_diameter(s.labels) if s.labels.max() > 0 else None
        return samples
    if name == "dsb":
        return load_dsb2018(root, "val", limit=limit)
    if name == "aitslab":
        return load_aitslab(root, "val", limit=limit)
    if name == "vgg":
        return _load_vgg(root, limit)
    raise InputError(f"unknown set {name!r}")


def rescaled_copy(
    samples: Sequence[Any], s: float, min_diameter: float = MIN_DIAMETER
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Copies of ``samples`` resampled by ``s`` (images keep their dtype), and the skipped ones.

    An image whose true median diameter x ``s`` is under ``min_diameter`` is skipped; images
    without objects (diameter None) are kept. Labels of the copies are relabelled 1..n.
    """
    from napari_nalu_count.data import relabel_sequential
    from napari_nalu_count.train.dataset import rescale_samples

    keep, skipped = [], []
    for sample in samples:
        d = sample.meta.get("diameter")
        if d is not None and d * s < min_diameter:
            skipped.append(
                {"name": sample.name, "diameter": float(d), "scaled_diameter": float(d * s)}
            )
            continue
        (copy,) = rescale_samples([sample], s, task="count")
        copy.image = cast_like(copy.image, np.asarray(sample.image).dtype)
        if copy.labels is not None:
            copy.labels = relabel_sequential(copy.labels)
        copy.meta["diameter"] = None if d is None else float(d) * s
        keep.append(copy)
    return keep, skipped


# ---------------------------------------------------------------------------------------------
# baselines


def _normalized(image: np.ndarray) -> np.ndarray:
    from napari_nalu_count.data import percentile_normalize

    return np.clip(percentile_normalize(np.asarray(image)), 0.0, 1.0)


def log_baseline(image: np.ndarray, settings: dict[str, Any] = LOG_SETTINGS) -> np.ndarray:
    """LoG blob centres ``(N, 2)`` (y, x, full-resolution pixels) with fixed settings."""
    from skimage.feature import blob_log

    from napari_nalu_count.infer.scale import rescale_plane

    norm = _normalized(image)
    f = float(settings["downsample"])
    small = rescale_plane(norm, 1.0 / f) if f != 1 else norm
    k = 2.0 * math.sqrt(2.0)
    blobs = blob_log(
        small,
        min_sigma=settings["min_diameter"] / f / k,
        max_sigma=settings["max_diameter"] / f / k,
        num_sigma=settings["num_sigma"],
        log_scale=settings["log_scale"],
        threshold=settings["threshold"],
        overlap=settings["overlap"],
        exclude_border=settings["exclude_border"],
    )
    if len(blobs) == 0:
        return np.zeros((0, 2))
    fy = norm.shape[0] / small.shape[0]
    fx = norm.shape[1] / small.shape[1]
    pts = np.empty((len(blobs), 2))
    pts[:, 0] = (blobs[:, 0] + 0.5) * fy - 0.5
    pts[:, 1] = (blobs[:, 1] + 0.5) * fx - 0.5
    return pts


def otsu_watershed(image: np.ndarray, settings: dict[str, Any] = WATERSHED_SETTINGS) -> np.ndarray:
    """Instance labels (int32) from Otsu + distance-transform watershed with fixed settings."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    from napari_nalu_count.data import relabel_sequential, remove_small_instances

    norm = _normalized(image)
    smooth = ndi.gaussian_filter(norm, float(settings["smooth_sigma"]))
    if not smooth.max() > smooth.min():
        return np.zeros(norm.shape, dtype=np.int32)
    mask = smooth > threshold_otsu(smooth)
    if settings.get("fill_holes", True):
        mask = ndi.binary_fill_holes(mask)
    comps, n = ndi.label(mask)
    if n == 0:
        return np.zeros(norm.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(
        dist, min_distance=int(settings["min_distance"]), labels=comps, exclude_border=False
    )
    markers = np.zeros(norm.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    seeded = np.unique(comps[markers > 0])
    missing = np.setdiff1d(np.arange(1, n + 1), seeded)
    if len(missing):  # one seed at the distance maximum of every component without a peak
        where = ndi.maximum_position(dist, comps, missing)
        for j, (y, x) in enumerate(where):
            markers[int(y), int(x)] = len(peaks) + 1 + j
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    labels = remove_small_instances(labels, int(settings["min_size"]))
    return relabel_sequential(labels).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# metrics


def point_counts(pred: np.ndarray, true: np.ndarray, radius: float) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of a one-to-one matching of points within ``radius`` pixels."""
    from napari_nalu_count.infer import match_points

    n_p, n_t = len(pred), len(true)
    if n_p == 0 or n_t == 0:
        return 0, n_p, n_t
    precision, _, _ = match_points(np.asarray(pred), np.asarray(true), float(radius))
    tp = int(round(precision * n_p))
    return tp, n_p - tp, n_t - tp


def seg_counts(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, list[int]]:
    """``{"0.5": [TP, FP, FN], "0.75": [...]}`` of one image (IoU above the threshold)."""
    from napari_nalu_count.train.metrics import match_instances

    out = {}
    for t in IOU_THRESHOLDS:
        m = match_instances(true_labels, pred_labels, t)
        out[f"{t:g}"] = [int(m.tp), int(m.fp), int(m.fn)]
    return out


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    d = 2 * tp + fp + fn
    return p, r, (2 * tp / d if d else float("nan"))


def aggregate(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Figures per (set, scale, method) from per-image rows (see the module docstring)."""
    from napari_nalu_count.train.metrics import count_metrics

    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["set"], float(r["scale"])), []).append(r)
    out = []
    for set_ in SETS:
        for (gs, scale), grp in sorted(groups.items(), key=lambda kv: kv[0][1]):
            if gs != set_:
                continue
            for m in methods:
                ok = [r for r in grp if m in r["methods"] and "error" not in r["methods"][m]]
                errors = [r for r in grp if m in r["methods"] and "error" in r["methods"][m]]
                if not ok and not errors:
                    continue
                cm = count_metrics(
                    [r["methods"][m]["count"] for r in ok], [r["true_count"] for r in ok]
                )
                tp = sum(r["methods"][m]["points"][0] for r in ok)
                fp = sum(r["methods"][m]["points"][1] for r in ok)
                fn = sum(r["methods"][m]["points"][2] for r in ok)
                pp, pr, pf = _f1(tp, fp, fn)
                row: dict[str, Any] = {
                    "set": set_,
                    "scale": scale,
                    "method": m,
                    "n_images": cm["n_images"],
                    "n_errors": len(errors),
                    "mean_true": cm["mean_true"],
                    "mae": cm["mae"],
                    "rel_mae": cm["mre"],
                    "bias": cm["bias"],
                    "rmse": cm["rmse"],
                    "point_tp": tp,
                    "point_fp": fp,
                    "point_fn": fn,
                    "point_precision": pp,
                    "point_recall": pr,
                    "point_f1": pf,
                    "seg_f1_50": None,
                    "seg_f1_75": None,
                    "seconds_per_image": (
                        float(np.mean([r["methods"][m]["seconds"] for r in ok]))
                        if ok
                        else float("nan")
                    ),
                }
                seg_rows = [r for r in ok if r["methods"][m].get("seg")]
                if seg_rows:
                    for t, key in zip(IOU_THRESHOLDS, ("seg_f1_50", "seg_f1_75"), strict=True):
                        sums = np.sum([r["methods"][m]["seg"][f"{t:g}"] for r in seg_rows], 0)
                        row[key] = _f1(*(int(v) for v in sums))[2]
                        row[key.replace("f1", "tp_fp_fn")] = [int(v) for v in sums]
                out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# running


def _sha256(path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _model_info(loaded: Any) -> dict[str, Any]:
    path = getattr(loaded, "path", None)
    return {
        "name": str(getattr(loaded, "name", "")),
        "path": None if path is None else str(path),
        "source": getattr(loaded, "source", None),
        "card_sha256": _sha256(path),
        "weights_sha256": loaded.card.get("weights_sha256"),
        "card_diameter": loaded.card.get("diameter"),
        "input_scale": loaded.card.get("input_scale"),
        "created": loaded.card.get("created"),
    }


def _machine(device: str) -> dict[str, Any]:
    import scipy
    import skimage
    import torch

    from napari_nalu_count import __version__

    commit = None
    try:
        import subprocess

        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except Exception:  # not a checkout, no git: the version is enough
        commit = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit_image": skimage.__version__,
        "package_version": __version__,
        "git_commit": commit,
        "device": device,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _diameter_arg(mode: str, sample: Any, set_median: float | None) -> float | str | None:
    if mode == "none":
        return None
    if mode == "auto":
        return "auto"
    d = sample.meta.get("diameter")
    return float(d) if d is not None else set_median


def evaluate_image(
    sample: Any,
    set_: str,
    scale: float,
    methods: dict[str, Callable[[np.ndarray, Any], dict[str, Any]]],
    *,
    diameter_mode: str = "none",
    set_median: float | None = None,
) -> dict[str, Any]:
    """One per-image row: truth, and per method its count, point TP/FP/FN, seg matches, time.

    ``methods[key](image, diameter)`` returns ``{"count", "points"[, "labels", "diameter"]}``.
    An exception in one method becomes ``{"error": ...}`` for that method only.
    """
    true_pts = np.asarray(sample.dots if sample.dots is not None else np.zeros((0, 2)))
    d_true = sample.meta.get("diameter")
    d_match = d_true if d_true is not None else set_median
    radius = 0.5 * float(d_match) if d_match else 0.5 * VGG_DIAMETER
    given = _diameter_arg(diameter_mode, sample, set_median)
    row: dict[str, Any] = {
        "set": set_,
        "scale": float(scale),
        "name": sample.name,
        "shape": [int(v) for v in np.asarray(sample.image).shape],
        "dtype": str(np.asarray(sample.image).dtype),
        "true_count": int(len(true_pts)),
        "true_diameter": None if d_true is None else float(d_true),
        "match_radius": radius,
        "diameter_given": given,
        "methods": {},
    }
    for key, fn in methods.items():
        try:
            res, sec = _timed(lambda fn=fn: fn(sample.image, given))
            entry: dict[str, Any] = {
                "count": float(res["count"]),
                "seconds": sec,
                "points": list(point_counts(res["points"], true_pts, radius)),
            }
            if res.get("diameter") is not None:
                entry["diameter_used"] = float(res["diameter"])
            if res.get("labels") is not None and sample.labels is not None:
                entry["seg"] = seg_counts(sample.labels, res["labels"])
        except Exception as exc:  # one image must not end the run
            entry = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        row["methods"][key] = entry
    return row


def make_methods(
    counter: Any | None,
    segmenter: Any | None,
    *,
    baselines: bool = True,
    device: str = "cpu",
    background: float | bool | str | None = "auto",
) -> dict[str, Callable[[np.ndarray, Any], dict[str, Any]]]:
    """The method callables of one run, keyed as in :data:`METHODS`; ``background`` is passed
    to ``count`` and ``segment`` as it is (default ``"auto"``, theirs; the baselines never
    flatten)."""
    from napari_nalu_count.data import instances_to_dots
    from napari_nalu_count.infer import count, segment

    methods: dict[str, Callable[[np.ndarray, Any], dict[str, Any]]] = {}
    if counter is not None:

        def run_counter(image: np.ndarray, d: Any) -> dict[str, Any]:
            r = count(image, counter, axes="YX", diameter=d, device=device, background=background)
            return {"count": r.count, "points": r.points, "diameter": r.diameter}

        methods["counter"] = run_counter
    if segmenter is not None:
        seeds_from = counter if counter is not None else "nuclei-count"

        def run_segmenter(image: np.ndarray, d: Any) -> dict[str, Any]:
            r = segment(
                image,
                segmenter,
                axes="YX",
                diameter=d,
                device=device,
                count_model=seeds_from,
                background=background,
            )
            return {
                "count": r.count,
                "points": instances_to_dots(r.labels),
                "labels": r.labels,
                "diameter": r.diameter,
            }

        methods["segmenter"] = run_segmenter
    if baselines:

        def run_log(image: np.ndarray, d: Any) -> dict[str, Any]:
            pts = log_baseline(image)
            return {"count": len(pts), "points": pts}

        def run_ws(image: np.ndarray, d: Any) -> dict[str, Any]:
            lab = otsu_watershed(image)
            return {"count": int(lab.max()), "points": instances_to_dots(lab), "labels": lab}

        methods["LoG"] = run_log
        methods["Otsu+WS"] = run_ws
    return methods


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_rows(
    json_path: Path, rows_path: Path, fingerprint: str
) -> dict[tuple[str, float, str], dict[str, Any]]:
    """Rows of an earlier run with the same settings: its finished JSON, then its row stream."""
    found: list[dict[str, Any]] = []
    if json_path.is_file():
        try:
            found += list(json.loads(json_path.read_text(encoding="utf-8")).get("images", []))
        except (json.JSONDecodeError, AttributeError):
            pass
    if rows_path.is_file():
        for line in rows_path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a half-written last line of an interrupted run
    rows: dict[tuple[str, float, str], dict[str, Any]] = {}
    for r in found:
        if isinstance(r, dict) and r.get("fingerprint") == fingerprint:
            rows[(r["set"], float(r["scale"]), r["name"])] = r
    return rows


def run(args: argparse.Namespace) -> int:
    import torch

    t_start = time.perf_counter()
    sets = _parse_sets(args.sets)
    scales = _parse_scales(args.scales)
    for opt in ("limit", "scale_limit", "threads"):
        v = getattr(args, opt, None)
        if v is not None and v < 1:
            raise InputError(f"--{opt.replace('_', '-')} must be at least 1, got {v}")
    root = Path(args.data) if args.data else default_data_root()
    if not root.is_dir():
        raise InputError(
            f"data root {root} not found: pass --data ROOT or set NALU_COUNT_DATA "
            "(it holds bbbc039/, dsb2018_train/, aitslab/, vgg_cells/)"
        )
    missing = [s for s in sets if _set_dir_exists(root, s) is None]
    if missing:
        raise InputError(
            f"data root {root} lacks the set(s) {','.join(missing)}; pass --sets to leave them out"
        )
    if args.resume and not args.json:
        raise InputError("--resume needs --json OUT (the rows are kept in OUT.rows.jsonl)")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    from napari_nalu_count.infer.device import resolve_device
    from napari_nalu_count.models import load_model

    device = str(resolve_device(args.device))
    machine = _machine(device)  # now, so that its load average is the one at the start
    counter = load_model(args.count_model, device=device)
    if counter.task != "count":
        raise InputError(f"--count-model {args.count_model!r} is a {counter.task!r} model")
    segmenter = None
    if not args.no_segment:
        segmenter = load_model(args.seg_model, device=device)
        if segmenter.task != "segment":
            raise InputError(f"--seg-model {args.seg_model!r} is a {segmenter.task!r} model")
    from napari_nalu_count.infer.background import parse_background

    background = "auto" if args.background is None else parse_background(args.background)
    methods = make_methods(
        counter,
        segmenter,
        baselines=not args.no_baselines,
        device=device,
        background=False if background is None else background,
    )
    models = {"count": _model_info(counter)}
    if segmenter is not None:
        models["segment"] = _model_info(segmenter)
        models["segment"]["seeds_from"] = models["count"]["name"]

    settings = {
        "diameter": args.diameter,
        "scales": scales,
        "min_diameter": MIN_DIAMETER,
        "vgg_diameter": VGG_DIAMETER,
        "methods": list(methods),
        "models": {k: (v["card_sha256"], v["weights_sha256"]) for k, v in models.items()},
        "log": LOG_SETTINGS,
        "watershed": WATERSHED_SETTINGS,
        "device": device,
    }
    if args.background is not None:  # only when given: older runs' fingerprints stay valid
        settings["background"] = background
    fingerprint = _fingerprint(settings)
    rows_path = Path(str(args.json) + ".rows.jsonl") if args.json else None
    done = (
        _read_rows(Path(args.json), rows_path, fingerprint) if (rows_path and args.resume) else {}
    )
    if rows_path and not args.resume and rows_path.exists():
        rows_path.unlink()
    if done:
        log(f"resuming: {len(done)} image rows reused from {rows_path}")

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    set_info: dict[str, Any] = {}
    load_errors: list[dict[str, Any]] = []
    for set_ in sets:
        try:
            base = load_set(root, set_, args.limit)
        except Exception as exc:  # an unreadable set is reported, the others still run
            load_errors.append({"set": set_, "error": f"{type(exc).__name__}: {exc}"[:500]})
            log(f"{set_}: cannot load: {exc}")
            continue
        diams = [s.meta.get("diameter") for s in base if s.meta.get("diameter") is not None]
        median = float(np.median(diams)) if diams else None
        set_info[set_] = {
            "title": SET_TITLES[set_],
            "split": "test 101-200" if set_ == "vgg" else "val",
            "note": SET_NOTES[set_],
            "n_images": len(base),
            "median_diameter": median,
            "limit": args.limit,
        }
        copies: list[tuple[float, list[Any]]] = [(1.0, base)]
        if set_ in RESCALED_SETS:
            for s in scales:
                src = base if args.scale_limit is None else base[: args.scale_limit]
                kept, skip = rescaled_copy(src, s)
                for k in skip:
                    skipped.append({"set": set_, "scale": s, **k})
                copies.append((s, kept))
                set_info[set_].setdefault("copies", {})[f"{s:g}"] = {
                    "n_images": len(kept),
                    "n_skipped": len(skip),
                    "of": len(src),
                }
        for scale, samples in copies:
            t0 = time.perf_counter()
            med = None if median is None else median * scale
            for sample in samples:
                key = (set_, float(scale), sample.name)
                if key in done:
                    rows.append(done[key])
                    continue
                row = evaluate_image(
                    sample, set_, scale, methods, diameter_mode=args.diameter, set_median=med
                )
                row["fingerprint"] = fingerprint
                rows.append(row)
                if rows_path:
                    with open(rows_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
            log(
                f"{set_} x{scale:g}: {len(samples)} images in {time.perf_counter() - t0:.1f} s "
                f"(total {time.perf_counter() - t_start:.0f} s)"
            )

    results = aggregate(rows, list(methods))
    errors = [
        {"set": r["set"], "scale": r["scale"], "name": r["name"], "method": m, "error": e["error"]}
        for r in rows
        for m, e in r["methods"].items()
        if "error" in e
    ]
    elapsed = time.perf_counter() - t_start
    report = {
        "benchmark": "accuracy",
        "command": _command_line(args),
        "argv": sys.argv,
        "machine": {**machine, "torch_threads": torch.get_num_threads()},
        "data_root": str(root.resolve()),
        "sets": set_info,
        "settings": {**settings, "limit": args.limit, "scale_limit": args.scale_limit},
        "models": models,
        "methods": {
            "counter": f"count(image, {models['count']['name']!r}, diameter=D)",
            "segmenter": (
                f"segment(image, {models['segment']['name']!r}, diameter=D, count_model="
                f"{models['count']['name']!r})"
                if "segment" in models
                else None
            ),
            "LoG": "skimage.feature.blob_log, fixed settings (settings.log)",
            "Otsu+WS": "Otsu + distance-transform watershed, fixed settings (settings.watershed)",
        },
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "load_errors": load_errors,
        "elapsed_s": elapsed,
        "rows_reused": sum(1 for r in rows if (r["set"], r["scale"], r["name"]) in done),
        "images": rows,
    }
    report["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    text = format_report(report)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(_jsonable(report), fh, indent=1)
        if rows_path and rows_path.exists():
            rows_path.unlink()  # everything is in the JSON now (and --resume reads it there)
    if args.report:
        write_report(report, args.report)
    return 0


def _jsonable(obj: Any) -> Any:
    """NaN -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# report


def _fmt(v: Any, spec: str, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(100 * v if pct else v, spec) + ("%" if pct else "")


def _method_label(report: dict[str, Any], m: str) -> str:
    models = report.get("models", {})
    if m == "counter" and "count" in models:
        return f"counter ({models['count']['name']})"
    if m == "segmenter" and "segment" in models:
        return f"segmenter ({models['segment']['name']})"
    return m


def format_tables(report: dict[str, Any]) -> str:
    """Markdown tables, one per set (rows: scale x method)."""
    lines: list[str] = []
    res = report["results"]
    for set_ in SETS:
        rows = [r for r in res if r["set"] == set_]
        info = report["sets"].get(set_)
        if not rows or info is None:
            continue
        lines.append(
            f"### {info['title']} ({info['n_images']} images; {info['note']}; median diameter "
            f"{_fmt(info.get('median_diameter'), '.1f')} px at 1x)"
        )
        lines.append("")
        for s, c in (info.get("copies") or {}).items():
            if c["n_skipped"]:
                lines.append(
                    f"- {s}x copy: {c['n_skipped']} of {c['of']} images skipped "
                    f"(nuclei under {MIN_DIAMETER:g} px)"
                )
            elif c["of"] < info["n_images"]:
                lines.append(f"- {s}x copy: first {c['of']} images")
        if lines and lines[-1].startswith("- "):
            lines.append("")
        lines.append(
            "| scale | method | images | mean true | MAE | rel. MAE | bias | RMSE | point P | "
            "point R | point F1 | seg F1@0.5 | seg F1@0.75 | s/image |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            n = f"{r['n_images']}" + (f" ({r['n_errors']} failed)" if r["n_errors"] else "")
            lines.append(
                f"| {r['scale']:g}x | {_method_label(report, r['method'])} | {n} | "
                f"{_fmt(r['mean_true'], '.1f')} | {_fmt(r['mae'], '.2f')} | "
                f"{_fmt(r['rel_mae'], '.1f', True)} | {_fmt(r['bias'], '+.2f')} | "
                f"{_fmt(r['rmse'], '.2f')} | {_fmt(r['point_precision'], '.3f')} | "
                f"{_fmt(r['point_recall'], '.3f')} | {_fmt(r['point_f1'], '.3f')} | "
                f"{_fmt(r['seg_f1_50'], '.3f')} | {_fmt(r['seg_f1_75'], '.3f')} | "
                f"{_fmt(r['seconds_per_image'], '.3f')} |"
            )
        lines.append("")
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    head = [
        "## nalu-count bench accuracy",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads), device {m['device']}",
        f"- diameter given to the models: `{report['settings']['diameter']}`",
        "- models: "
        + "; ".join(
            f"{k}: {v['name']} (card sha256 {str(v['card_sha256'])[:12]})"
            for k, v in report["models"].items()
        ),
        f"- elapsed: {report['elapsed_s'] / 60:.1f} min"
        + (
            f" (this invocation; {report['rows_reused']} image rows reused by --resume)"
            if report.get("rows_reused")
            else ""
        ),
    ]
    if report["settings"].get("limit") or report["settings"].get("scale_limit"):
        head.append(
            f"- limits: {report['settings'].get('limit') or 'all'} images per set, "
            f"{report['settings'].get('scale_limit') or 'same'} per rescaled copy"
        )
    n_skip = len(report["skipped"])
    if n_skip:
        head.append(f"- skipped rescaled images (nuclei under {MIN_DIAMETER:g} px): {n_skip}")
    if report["errors"]:
        head.append(f"- errors: {len(report['errors'])} (image, method) pairs failed:")
        for e in report["errors"][:20]:
            head.append(f"  - {e['set']} x{e['scale']:g} {e['name']} {e['method']}: {e['error']}")
    for e in report.get("load_errors", []):
        head.append(f"- set {e['set']} could not be loaded: {e['error']}")
    return "\n".join(head) + "\n\n" + format_tables(report)


def write_report(report: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """``accuracy.md`` (settings + tables) and ``accuracy_scale.png`` in ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "accuracy.md"
    png = out / "accuracy_scale.png"
    settings = report["settings"]
    text = [
        format_report(report),
        "### Baselines (fixed settings, the same for every set and scale)",
        "",
        "- LoG: " + ", ".join(f"{k}={v}" for k, v in settings["log"].items()),
        "- Otsu+WS: " + ", ".join(f"{k}={v}" for k, v in settings["watershed"].items()),
        "",
        f"![count error and segmentation F1 against scale]({png.name})",
        "",
    ]
    md.write_text("\n".join(text), encoding="utf-8")
    plot_scale(report, png)
    return md, png


_STYLE = {
    "counter": ("#1f77b4", "o"),
    "segmenter": ("#2ca02c", "s"),
    "LoG": ("#d62728", "^"),
    "Otsu+WS": ("#ff7f0e", "D"),
}


def plot_scale(report: dict[str, Any], path: str | Path) -> Path:
    """Relative count MAE (top) and segmentation F1@0.5 (bottom) against scale, one column per
    rescaled set (BBBC039 val, DSB val), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    res = report["results"]
    sets = [s for s in RESCALED_SETS if any(r["set"] == s for r in res)] or list(RESCALED_SETS)
    fig, axes = plt.subplots(
        2, len(sets), figsize=(6.2 * len(sets), 8.4), squeeze=False, sharex=True
    )
    handles: dict[str, Any] = {}
    all_err: list[float] = []
    for j, set_ in enumerate(sets):
        ax1, ax2 = axes[0, j], axes[1, j]
        scales = sorted({r["scale"] for r in res if r["set"] == set_}) or [1.0]
        for m in METHODS:
            rows = sorted(
                (r for r in res if r["set"] == set_ and r["method"] == m), key=lambda r: r["scale"]
            )
            if not rows:
                continue
            color, marker = _STYLE[m]
            xs = [r["scale"] for r in rows]
            ys = [np.nan if r["rel_mae"] is None else 100 * r["rel_mae"] for r in rows]
            all_err += [y for y in ys if np.isfinite(y) and y > 0]
            (h,) = ax1.plot(xs, ys, "-", color=color, marker=marker, lw=2, ms=7)
            handles[m] = h
            f1 = [r["seg_f1_50"] for r in rows]
            if any(v is not None for v in f1):
                ax2.plot(
                    xs,
                    [np.nan if v is None else v for v in f1],
                    "-",
                    color=color,
                    marker=marker,
                    lw=2,
                    ms=7,
                )
        title = SET_TITLES[set_]
        ax1.set_title(f"{title}: count error", fontsize=12)
        ax2.set_title(f"{title}: segmentation F1 @ IoU 0.5", fontsize=12)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(scales))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}x" for t in scales])
            ax.grid(True, alpha=0.3)
        ax2.set_xlabel("image rescaled by (1x = as acquired)")
        ax1.set_yscale("log")
        ax2.set_ylim(0, 1.02)
        if j == 0:
            ax1.set_ylabel("count relative MAE (%)")
            ax2.set_ylabel("segmentation F1 @ 0.5")
    ticks = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    if all_err:
        lo, hi = min(all_err), max(all_err)
        ticks_in = [t for t in ticks if lo / 2 <= t <= hi * 2] or ticks
        for j in range(len(sets)):
            ax = axes[0, j]
            ax.set_ylim(lo / 1.4, hi * 1.4)
            ax.yaxis.set_major_locator(FixedLocator(ticks_in))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_yticklabels([f"{t:g}%" for t in ticks_in])
    labels = [_method_label(report, m) for m in handles]
    fig.legend(
        list(handles.values()),
        labels,
        loc="lower center",
        ncol=len(handles),
        fontsize=11,
        frameon=False,
    )
    d = report["settings"]["diameter"]
    fig.suptitle(
        f"nalu-count bench accuracy: error against object scale (models given diameter={d})",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
