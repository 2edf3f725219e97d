#!/usr/bin/env python
"""The size estimator's scale profile: speed of its variants, and what they do to counting.

Times, in one run and interleaved, on windows of 256 and 640 px:

- the profile as first written (one ``ndi.gaussian_laplace`` and one ``np.percentile`` per
  scale, every octave on the whole window, Gaussian pyramid);
- :func:`napari_nalu_count.infer.size.scale_profile` with the same definition (each octave's
  LoG responses from one FFT of the mirror-padded level, percentiles from partial partitions;
  checked equal to the first to float32 rounding);
- ``scale_profile`` as the bundled regressor was trained for (``info["profile"]``: each octave
  on at most 256 x 256 samples of its level, binomial pyramid).

Then ``count()`` on 64 images of 256 px one call each: the diameter estimated with the bundled
regressor, with ``--compare-regressor FILE`` (e.g. the regressor of 2026-12-02, whose profile
is the whole-window Gaussian one), and given.

    python benchmarks/size_profile_speed.py --compare-regressor OLD.json \
        --json docs/benchmarks/size_profile_speed_r6.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_nalu_count.data.normalize import percentile_normalize
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count
from napari_nalu_count.infer import size as S


def profile_scipy(x: np.ndarray) -> np.ndarray:
    """The scale profile with one SciPy LoG filter and one np.percentile per scale."""
    level, stats = np.ascontiguousarray(x, dtype=np.float32), []
    for _octave in range(S.N_OCTAVES):
        for j in range(S.PER_OCTAVE):
            s = S.SIGMA0 * 2 ** (j / S.PER_OCTAVE)
            resp = -(s * s) * ndi.gaussian_laplace(level, s, mode="reflect")
            q = np.percentile(resp, [95.0, 99.5])
            stats.append((q[1], q[0], float(np.maximum(resp, 0).mean())))
        if min(level.shape) < 16:
            break
        level = ndi.gaussian_filter(level, 1.0, mode="reflect")[::2, ::2]
    arr = np.maximum(np.asarray(stats, dtype=np.float64), 1e-6)
    if len(arr) < S.N_SCALES:
        arr = np.vstack([arr, np.repeat(arr[-1:], S.N_SCALES - len(arr), axis=0)])
    return np.log(arr / arr.max(axis=0, keepdims=True)).T.reshape(-1)


def best_of(fn, n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _with_regressor(path: Path | None):
    """Point the estimator at ``path`` (None: the bundled file); returns the previous file."""
    old = S.REGRESSOR_FILE
    S.REGRESSOR_FILE = path if path is not None else old
    S.load_regressor.cache_clear()
    return old


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--diameter", type=float, default=28.66)
    p.add_argument("--compare-regressor", default=None, help="a second size_regressor.json")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shipped = S.load_regressor().profile_options
    out: dict = {
        "benchmark": "size_profile_speed",
        "command": "python benchmarks/size_profile_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads",
        "bundled_profile": shipped,
        "windows": [],
    }
    d = args.diameter
    for side in (256, 640):
        im = synthetic_cells((side, side), max(1, int(side * side / (d * d * 4))), d, seed=1).image
        x = np.clip(percentile_normalize(im, *S.NORM_PERCENTILES), *S.CLIP)
        t_ref = t_whole = t_new = float("inf")
        for _ in range(args.repeats):  # interleaved
            t_ref = min(t_ref, best_of(lambda x=x: profile_scipy(x), 10))
            t_whole = min(t_whole, best_of(lambda x=x: S.scale_profile(x), 10))
            t_new = min(t_new, best_of(lambda x=x: S.scale_profile(x, **shipped), 10))
        diff = float(np.abs(S.scale_profile(x) - profile_scipy(x)).max())
        out["windows"].append(
            {
                "side": side,
                "scipy_ms": 1e3 * t_ref,
                "whole_window_fft_ms": 1e3 * t_whole,
                "bundled_profile_ms": 1e3 * t_new,
                "bundled_vs_whole_window": t_whole / t_new,
                "bundled_vs_scipy": t_ref / t_new,
                "max_abs_difference_whole_window_vs_scipy": diff,
            }
        )
        print(
            f"{side} px window: SciPy {1e3 * t_ref:.2f} ms, whole-window FFT {1e3 * t_whole:.2f} "
            f"ms (differs from SciPy by at most {diff:.2g}), bundled profile {shipped} "
            f"{1e3 * t_new:.2f} ms ({t_whole / t_new:.2f}x the whole-window one)",
            flush=True,
        )
    imgs = [
        synthetic_cells((256, 256), max(1, int(256 * 256 / (d * d * 4))), d, seed=i).image
        for i in range(64)
    ]
    for im in imgs[:4]:
        count(im)
    mpx = 64 * 256 * 256 / 1e6
    variants: list[tuple[str, Path | None, dict]] = [("estimated, bundled regressor", None, {})]
    if args.compare_regressor:
        variants.append(
            ("estimated, " + Path(args.compare_regressor).name, Path(args.compare_regressor), {})
        )
    variants.append(("given", None, {"diameter": d}))
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    totals: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved
        for name, path, kw in variants:
            old = _with_regressor(path)
            try:
                t0 = time.perf_counter()
                totals[name] = float(sum(count(im, **kw).count for im in imgs))
                times[name].append(time.perf_counter() - t0)
            finally:
                _with_regressor(old)
    out["small_images"] = {
        name: {
            "seconds": min(t),
            "mpx_per_s": mpx / min(t),
            "times": t,
            "total_count": totals[name],
        }
        for name, t in times.items()
    }
    for name, v in out["small_images"].items():
        print(
            f"64 images of 256 px, diameter {name}: {v['mpx_per_s']:.2f} Mpx/s "
            f"(total count {v['total_count']:.4f})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
