"""Fast object-size estimate: scale-space features and a small learned regressor.

``estimate_diameter(plane)`` returns the typical nucleus diameter (pixels) of a fluorescence
image in a few tens of milliseconds, for any size from about 5 to 150 px:

1. the plane is percentile-normalised (1 / 99.8) and a window of at most ``crop`` x ``crop``
   pixels is taken (of five candidate windows, the one with the most contrast);
2. a Gaussian pyramid gives the scale-normalised Laplacian-of-Gaussian response
   ``-s^2 LoG_s`` at 18 log-spaced scales (3 per octave, effective sigma 1.2 to ~60 px); a disc
   of diameter ``d`` responds most strongly at ``sigma = d / (2 sqrt 2)``. Per scale three
   statistics (99.5th and 95th percentile, mean positive response), each divided by its maximum
   over the scales and logged, form a 54-number scale profile that does not depend on
   brightness;
3. a 2-layer MLP (:class:`SizeRegressor`, weights in ``size_regressor.json`` beside this
   module, trained by ``scripts/train_size_estimator.py`` on the train splits of BBBC039, DSB
   2018 and Aitslab plus synthetic nuclei, each rescaled to diameters 5-130 px) maps the profile
   to ``log(diameter)``.

The profile is what a single LoG blob search (:func:`~.scale.estimate_diameter_log`) reduces to
one arg-max; learning the whole profile copes with chromatin texture (which makes a LoG search
answer the size of the texture), clumps and uneven background. Counting models with a size head
refine this estimate with their own output (see :mod:`.engine`).
"""

from __future__ import annotations

import json
import math
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.special import erf

from napari_nalu_count.errors import ModelFileError

#: octaves and scales per octave of the pyramid; first sigma (pixels)
N_OCTAVES, PER_OCTAVE, SIGMA0 = 6, 3, 1.2
N_SCALES = N_OCTAVES * PER_OCTAVE
#: estimates are clipped to this range (pixels)
MIN_DIAMETER, MAX_DIAMETER = 3.0, 250.0
REGRESSOR_FILE = Path(__file__).with_name("size_regressor.json")

_lock = threading.Lock()


#: the estimator's normalisation: percentiles (as model cards' default) and the clip range
NORM_PERCENTILES = (1.0, 99.8)
CLIP = (-0.2, 1.5)


def _normalise(plane: np.ndarray) -> np.ndarray | None:
    """The plane percentile-normalised (not yet clipped), or None when it has no contrast."""
    from napari_nalu_count.data.normalize import percentile_normalize

    x = percentile_normalize(np.asarray(plane), *NORM_PERCENTILES)
    if not np.any(x):
        return None
    return x


def choose_window(x: np.ndarray, crop: int, clip: tuple[float, float] | None = None) -> np.ndarray:
    """The ``crop x crop`` window (of the centre and four off-centre ones) with the most
    contrast (standard deviation of a 4x block-mean image); the whole plane if smaller.

    ``clip=(lo, hi)``: judge and return the windows of ``np.clip(x, lo, hi)`` without clipping
    the whole plane (the same window and values as clipping first)."""
    h, w = x.shape
    if h <= crop and w <= crop:
        return x if clip is None else np.clip(x, *clip)
    ch, cw = min(h, crop), min(w, crop)
    starts = {((h - ch) // 2, (w - cw) // 2)}
    for fy in (0.2, 0.8):
        for fx in (0.2, 0.8):
            starts.add((int((h - ch) * fy), int((w - cw) * fx)))
    best, best_sd = None, -1.0
    for y0, x0 in sorted(starts):
        win = x[y0 : y0 + ch, x0 : x0 + cw]
        sub = win[::4, ::4] if clip is None else np.clip(win[::4, ::4], *clip)
        sd = float(sub.std())
        if sd > best_sd:
            best, best_sd = win, sd
    if clip is not None:
        return np.clip(best, *clip)
    return best  # type: ignore[return-value]


def scale_profile(x: np.ndarray) -> np.ndarray:
    """The 54-number scale profile (see the module docstring) of a normalised window."""
    level = np.ascontiguousarray(x, dtype=np.float32)
    stats = []
    for _octave in range(N_OCTAVES):
        for j in range(PER_OCTAVE):
            s = SIGMA0 * 2 ** (j / PER_OCTAVE)
            resp = -(s * s) * ndi.gaussian_laplace(level, s, mode="reflect")
            q = np.percentile(resp, [95.0, 99.5])
            stats.append((q[1], q[0], float(np.maximum(resp, 0).mean())))
        if min(level.shape) < 16:
            break
        level = ndi.gaussian_filter(level, 1.0, mode="reflect")[::2, ::2]
    arr = np.maximum(np.asarray(stats, dtype=np.float64), 1e-6)  # (scales, 3)
    if len(arr) < N_SCALES:  # tiny windows: repeat the coarsest scale
        arr = np.vstack([arr, np.repeat(arr[-1:], N_SCALES - len(arr), axis=0)])
    arr = np.log(arr / arr.max(axis=0, keepdims=True))
    return arr.T.reshape(-1).astype(np.float64)  # p99.5 x 18, p95 x 18, mean x 18


class SizeRegressor:
    """``log(diameter)`` from a scale profile: standardise, two GELU layers, linear output.

    ``params`` holds one network (``mean``, ``std``, ``layers``) or an ensemble
    (``members``: a list of such dicts), whose outputs are averaged.
    """

    def __init__(self, params: dict) -> None:
        self.info = dict(params.get("info", {})) if isinstance(params, dict) else {}
        self.members: list[SizeRegressor] = []
        if isinstance(params, dict) and "members" in params:
            if not isinstance(params["members"], list) or not params["members"]:
                raise ModelFileError("size regressor 'members' must be a non-empty list")
            self.members = [SizeRegressor(m) for m in params["members"]]
            return
        try:
            self.mean = np.asarray(params["mean"], dtype=np.float64)
            self.std = np.asarray(params["std"], dtype=np.float64)
            self.layers = [
                (np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
                for w, b in params["layers"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"size regressor parameters are malformed: {exc}") from exc
        n = self.mean.shape[0]
        if self.std.shape != (n,) or self.layers[0][0].shape[1] != n:
            raise ModelFileError("size regressor parameters have inconsistent shapes")

    def __call__(self, profile: np.ndarray) -> float:
        if self.members:
            return float(np.mean([m(profile) for m in self.members]))
        h = (np.asarray(profile, dtype=np.float64) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = w @ h + b
            if i < len(self.layers) - 1:
                h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        return float(h[0])

    def to_dict(self) -> dict:
        if self.members:
            return {"members": [m.to_dict() for m in self.members], "info": self.info}
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "layers": [[w.tolist(), b.tolist()] for w, b in self.layers],
            "info": self.info,
        }


@lru_cache(maxsize=4)
def load_regressor(path: str | None = None) -> SizeRegressor:
    """The regressor in ``path`` (default: the bundled ``size_regressor.json``), cached."""
    p = Path(path) if path else REGRESSOR_FILE
    with _lock:
        try:
            params = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelFileError(f"size regressor file missing: {p}") from None
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read the size regressor {p}: {exc}") from exc
    return SizeRegressor(params)


def estimate_diameter(
    plane: np.ndarray,
    *,
    crop: int = 640,
    regressor: SizeRegressor | None = None,
    normalized: bool = False,
) -> float | None:
    """Typical object diameter (pixels) of a raw ``(H, W)`` fluorescence plane, or None for a
    plane without contrast. See the module docstring for the method.

    ``normalized=True``: ``plane`` is already ``percentile_normalize(raw, 1, 99.8)`` (as the
    engine has it for models with that card normalisation), which is then not repeated."""
    if normalized:
        x = np.asarray(plane, dtype=np.float32)
        if not np.any(x):
            return None
    else:
        x = _normalise(plane)
        if x is None:
            return None
    reg = regressor or load_regressor()
    profile = scale_profile(choose_window(x, int(crop), clip=CLIP))
    d = math.exp(reg(profile))
    return float(min(max(d, MIN_DIAMETER), MAX_DIAMETER))
