"""What ``background="auto"`` costs (round 20): in one process, the 2048 x 2048 synthetic image
of ``nalu-count bench speed`` and its 64 small 256 px images, each counted with the size
estimated, alternating ``background="auto"`` (the default) and ``background=False``, ``--rounds``
times; the median time of each, and the judgement alone (``assess_background``) on the 2048 px
plane. Neither image is flattened (their background is even), so the counts are the same and
the difference is the check.

    python benchmarks/notes/r20_background_cost.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from napari_nalu_count.bench.speed import small_images, speed_image
from napari_nalu_count.infer import background as bg
from napari_nalu_count.infer import count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    big = speed_image(2048, 28.66)
    smalls = small_images(64, 256, 28.66)
    times: dict[str, list[float]] = {k: [] for k in ("big auto", "big off", "64 auto", "64 off")}
    counts: dict[str, float] = {}
    count(big)  # warm up
    for _ in range(args.rounds):
        for mode, value in (("auto", "auto"), ("off", False)):
            t = time.perf_counter()
            r = count(big, background=value)
            times[f"big {mode}"].append(time.perf_counter() - t)
            counts[f"big {mode}"] = float(r.count)
            t = time.perf_counter()
            total = sum(float(count(im, background=value).count) for im in smalls)
            times[f"64 {mode}"].append(time.perf_counter() - t)
            counts[f"64 {mode}"] = total
    r = count(big)
    (check,) = r.background_checks
    norm = np.asarray(big, np.float32)
    lo, hi = np.percentile(norm, [1.0, 99.8])
    norm = (norm - lo) / (hi - lo)
    judge = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        bg.assess_background(norm, float(r.diameter))
        judge.append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "threads": args.threads,
        "rounds": args.rounds,
        "median_s": med,
        "counts": counts,
        "check_2048": check,
        "assess_2048_s": float(np.median(judge)),
        "big_ratio_auto_over_off": med["big auto"] / med["big off"],
        "small_ratio_auto_over_off": med["64 auto"] / med["64 off"],
        "small_mpx_per_s": {m: 64 * 256 * 256 / 1e6 / med[f"64 {m}"] for m in ("auto", "off")},
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
