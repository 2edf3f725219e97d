#!/usr/bin/env python
"""The size estimator's scale profile: FFT + partial partitions against the SciPy filters.

Times, in one run and interleaved, :func:`napari_nalu_count.infer.size.scale_profile` (each
octave's LoG responses from one FFT of the mirror-padded level; percentiles from two partial
partitions) against the same profile computed as first written (one ``ndi.gaussian_laplace``
and one ``np.percentile`` per scale), on windows of 256 and 640 px, and ``count()`` on 64
images of 256 px one call each with the diameter estimated (each variant) and given. Checks
that both profiles agree (max abs difference) and that the counts agree.

    python benchmarks/size_profile_speed.py --json docs/benchmarks/size_profile_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

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


def profile_no_prefilter(x: np.ndarray) -> np.ndarray:
    """The fast profile with its percentiles from whole-array partitions (the round-4 code,
    before ``size._upper_percentiles`` pre-filtered large arrays)."""
    keep = S.PREFILTER_MIN
    S.PREFILTER_MIN = 1 << 62
    try:
        return FAST(x)
    finally:
        S.PREFILTER_MIN = keep


FAST = S.scale_profile


def best_of(fn, n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--diameter", type=float, default=28.66)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fast = S.scale_profile
    out: dict = {
        "benchmark": "size_profile_speed",
        "command": "python benchmarks/size_profile_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads",
        "windows": [],
    }
    d = args.diameter
    for side in (256, 640):
        im = synthetic_cells((side, side), max(1, int(side * side / (d * d * 4))), d, seed=1).image
        x = np.clip(percentile_normalize(im, *S.NORM_PERCENTILES), *S.CLIP)
        t_ref = t_new = t_old = float("inf")
        for _ in range(args.repeats):  # interleaved
            t_ref = min(t_ref, best_of(lambda x=x: profile_scipy(x), 10))
            t_old = min(t_old, best_of(lambda x=x: profile_no_prefilter(x), 10))
            t_new = min(t_new, best_of(lambda x=x: fast(x), 10))
        diff = float(np.abs(fast(x) - profile_scipy(x)).max())
        same = bool(np.array_equal(fast(x), profile_no_prefilter(x)))
        out["windows"].append(
            {
                "side": side,
                "scipy_ms": 1e3 * t_ref,
                "fast_ms": 1e3 * t_new,
                "speedup": t_ref / t_new,
                "no_prefilter_ms": 1e3 * t_old,
                "prefilter_speedup": t_old / t_new,
                "prefilter_identical": same,
                "max_abs_profile_difference": diff,
            }
        )
        print(
            f"{side} px window: SciPy {1e3 * t_ref:.2f} ms, fast {1e3 * t_new:.2f} ms, "
            f"{t_ref / t_new:.2f}x; without the percentile prefilter {1e3 * t_old:.2f} ms "
            f"({t_old / t_new:.2f}x, identical: {same}); profiles differ by at most {diff:.2g}",
            flush=True,
        )
    imgs = [
        synthetic_cells((256, 256), max(1, int(256 * 256 / (d * d * 4))), d, seed=i).image
        for i in range(64)
    ]
    for im in imgs[:4]:
        count(im)
    mpx = 64 * 256 * 256 / 1e6
    times: dict[str, list[float]] = {
        "scipy profile": [],
        "fast, no prefilter": [],
        "fast profile": [],
        "given": [],
    }
    totals: dict[str, float] = {}
    try:
        for _ in range(args.repeats):
            for name, prof, kw in (
                ("scipy profile", profile_scipy, {}),
                ("fast, no prefilter", profile_no_prefilter, {}),
                ("fast profile", fast, {}),
                ("given", fast, {"diameter": d}),
            ):
                S.scale_profile = prof
                t0 = time.perf_counter()
                totals[name] = float(sum(count(im, **kw).count for im in imgs))
                times[name].append(time.perf_counter() - t0)
    finally:
        S.scale_profile = fast
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
            f"64 images of 256 px, {'diameter given' if name == 'given' else name}: "
            f"{v['mpx_per_s']:.2f} Mpx/s (total count {v['total_count']:.4f})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
