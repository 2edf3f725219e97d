"""How sure a count is: test-time augmentation, its calibration, and where to annotate next.

``count(image, uncertainty=True)`` runs the counter on :data:`TTA` transformed copies of each
plane on the model grid besides the plain pass (flips, 90-degree rotations and two resamplings,
x0.8 and x1.25, because an object size estimate that is off is a real source of count error),
maps every density back and takes, per plane:

- ``tta_sd``: the standard deviation of the eight counts (the plain one included), and per
  pixel the standard deviation of the eight density maps;
- ``count_sd``: the calibrated standard deviation (:class:`Calibration`),
  ``sqrt((tta * tta_sd)^2 + (rel * count)^2 + abs^2)``. The spread of the augmentations
  alone is far too narrow (it misses systematic errors such as merged, overlapping cells), so
  the factor and the added terms were fitted on the *train* splits of the development sets
  (``benchmarks/uncertainty_calibration.py``) and are stored per model weights in
  ``uncertainty_calibration.json`` beside this module; models without an entry get its
  ``default`` entry (fitted for the bundled counter, so only a rough guide for others);
- ``uncertainty``: a per-pixel map with the same form, ``sqrt((tta * sd_px)^2 +
  (rel * density)^2)`` (cells per pixel), high where the augmentations disagree and where
  many cells are.

``count`` itself stays the plain pass's count, so asking for uncertainty never changes it.

:func:`suggest_regions` turns the map into ``n`` non-overlapping boxes where the model is least
sure: the boxes with the largest integral of the map (greedy, one at a time).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

__all__ = [
    "TTA",
    "Calibration",
    "calibration_for",
    "suggest_regions",
    "tta_plane",
]

#: the extra passes: (resampling factor on the model grid, quarter turns, flip left-right);
#: the plain pass is the eighth
TTA: tuple[tuple[float, int, bool], ...] = (
    (1.0, 1, True),
    (1.0, 2, False),
    (1.0, 3, True),
    (0.8, 0, True),
    (0.8, 2, False),
    (1.25, 1, False),
    (1.25, 3, True),
)

CALIBRATION_FILE = Path(__file__).with_name("uncertainty_calibration.json")


@dataclass(frozen=True)
class Calibration:
    """``count_sd = sqrt((tta * tta_sd)^2 + (rel * count)^2 + abs^2)`` (cells).

    ``source`` says where the figures come from (a fitted entry of the calibration file, or
    its default)."""

    tta: float = 1.0
    rel: float = 0.0
    abs: float = 0.0
    source: str = "uncalibrated"

    def count_sd(self, tta_sd: float, count: float) -> float:
        c = max(float(count), 0.0)
        v = (self.tta * float(tta_sd)) ** 2 + (self.rel * c) ** 2 + self.abs**2
        return float(np.sqrt(v))

    def sd_map(self, sd_px: np.ndarray, density: np.ndarray) -> np.ndarray:
        d = np.clip(np.asarray(density, dtype=np.float32), 0.0, None)
        out = (np.float32(self.tta) * sd_px) ** 2 + (np.float32(self.rel) * d) ** 2
        return np.sqrt(out, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _calibration_table(path: str, mtime: float) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def calibration_for(loaded: Any) -> Calibration:
    """The calibration of a loaded counting model: the file's entry whose ``weights_sha256``
    is the card's, else the file's ``default`` entry (``source`` says which)."""
    try:
        table = _calibration_table(str(CALIBRATION_FILE), CALIBRATION_FILE.stat().st_mtime)
    except OSError:
        table = {}
    card = getattr(loaded, "card", {}) or {}
    sha = card.get("weights_sha256")
    for entry in table.get("models", []):
        if sha and entry.get("weights_sha256") == sha:
            return _entry(entry, f"calibrated for {entry.get('name', '?')} on train splits")
    default = table.get("default")
    if default:
        name = str(card.get("name", "") or getattr(loaded, "name", ""))
        return _entry(default, f"default calibration (no entry for {name or 'this model'})")
    return Calibration()


def _entry(entry: dict[str, Any], source: str) -> Calibration:
    return Calibration(
        tta=float(entry.get("tta", 1.0)),
        rel=float(entry.get("rel", 0.0)),
        abs=float(entry.get("abs", 0.0)),
        source=source,
    )


def _forward(plane: np.ndarray, s: float, turns: int, flip: bool) -> np.ndarray:
    from napari_nalu_count.infer.scale import rescale_plane

    x = rescale_plane(plane, s) if s != 1.0 else plane
    x = np.rot90(x, turns)
    if flip:
        x = x[:, ::-1]
    return np.ascontiguousarray(x, dtype=np.float32)


def _back(dens: np.ndarray, shape: tuple[int, int], turns: int, flip: bool) -> np.ndarray:
    from napari_nalu_count.infer.scale import density_to_original

    d = dens[:, ::-1] if flip else dens
    d = np.ascontiguousarray(np.rot90(d, -turns), dtype=np.float32)
    return density_to_original(d, shape)


def tta_plane(
    run: Any, plane: np.ndarray, base: np.ndarray
) -> Generator[Any, None, tuple[np.ndarray, np.ndarray]]:
    """The :data:`TTA` passes of one model-grid ``plane`` (``run(x)`` is a generator returning
    the ``(C, H, W)`` prediction of ``x``); ``base`` is the plain pass's density. Returns
    ``(counts (8,), per-pixel sd (H, W) float32)`` on the model grid."""
    shape = tuple(int(n) for n in plane.shape)
    mean = base.astype(np.float64)
    sq = mean * mean
    counts = [float(base.sum(dtype=np.float64))]
    for s, turns, flip in TTA:
        pred = yield from run(_forward(plane, s, turns, flip))
        d = _back(pred[0], shape, turns, flip).astype(np.float64)
        counts.append(float(d.sum()))
        mean += d
        sq += d * d
    n = len(TTA) + 1
    mean /= n
    var = np.clip(sq / n - mean * mean, 0.0, None) * (n / (n - 1))
    return np.asarray(counts), np.sqrt(var).astype(np.float32)


def suggest_regions(
    image: Any,
    model: Any = "nuclei-count",
    n: int = 3,
    size: int = 256,
    *,
    axes: str | None = None,
    diameter: float | str | None = None,
    device: str = "auto",
    channel: int | str | None = None,
    result: Any = None,
    frame: int = 0,
) -> list[tuple[int, int, int, int]]:
    """The ``n`` boxes ``(y0, x0, y1, x1)`` (pixels, end exclusive) of ``size`` x ``size``
    pixels where the counter is least sure: the largest integrals of the uncertainty map of
    ``count(image, model, uncertainty=True)``, picked greedily, not overlapping, inside the
    image. A box edge is clipped to the image when the image is smaller than ``size``; fewer
    than ``n`` boxes come back when no more fit. ``result``: a ``CountResult`` computed with
    ``uncertainty=True`` (the count is then not run again). For stacks, ``frame`` is the plane
    (index into the flattened stack axes) the boxes are for.
    """
    from napari_nalu_count.infer import inputs as _inputs

    if n is None or size is None:
        raise InputError(f"n and size must be integers, got n={n!r}, size={size!r}")
    n = int(_inputs.check_int(n, "n", 1, 1000))
    size = int(_inputs.check_int(size, "size", 8, 1 << 20))
    if result is None:
        from napari_nalu_count.infer.engine import count

        result = count(
            image,
            model,
            axes=axes,
            diameter=diameter,
            device=device,
            channel=channel,
            uncertainty=True,
        )
    umap = getattr(result, "uncertainty", None)
    if umap is None:
        raise InputError("suggest_regions needs a CountResult computed with uncertainty=True")
    umap = np.asarray(umap, dtype=np.float64)
    if umap.ndim > 2:
        planes = umap.reshape((-1,) + umap.shape[-2:])
        if not 0 <= int(frame) < len(planes):
            raise InputError(f"frame must be between 0 and {len(planes) - 1}, got {frame}")
        umap = planes[int(frame)]
    return best_boxes(umap, n, size)


def best_boxes(score: np.ndarray, n: int, size: int) -> list[tuple[int, int, int, int]]:
    """Greedy non-overlapping ``size`` boxes with the largest sums of ``score`` ``(H, W)``."""
    h, w = score.shape
    by, bx = min(size, h), min(size, w)
    ii = np.zeros((h + 1, w + 1), dtype=np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(np.nan_to_num(score), axis=0), axis=1)
    sums = ii[by:, bx:] - ii[:-by, bx:] - ii[by:, :-bx] + ii[:-by, :-bx]  # (h-by+1, w-bx+1)
    free = np.ones(sums.shape, dtype=bool)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        if not free.any():
            break
        masked = np.where(free, sums, -np.inf)
        y0, x0 = np.unravel_index(int(np.argmax(masked)), masked.shape)
        boxes.append((int(y0), int(x0), int(y0) + by, int(x0) + bx))
        # a box starting within (by, bx) of this one would overlap it
        free[max(0, y0 - by + 1) : y0 + by, max(0, x0 - bx + 1) : x0 + bx] = False
    return boxes
