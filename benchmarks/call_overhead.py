#!/usr/bin/env python
"""Per-call overhead of counting many small images with a *named* model.

Before this change every ``count(img, "nuclei-count")`` deep-copied the cached model
(``load_model`` returns a fresh copy) and, the copy being a new object, missed the engine's
prepared-network cache (another deep copy, BN folding and its check). The engine now uses the
cached model read-only (``models.store.load_model_shared``). This script times both paths in
the same run on the same images: "copy per call" passes ``load_model(name)`` on every call,
which is exactly what the engine used to do internally; "named" passes the name.

    python benchmarks/call_overhead.py [--n 64] [--size 256] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count
from napari_nalu_count.models import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="nuclei-count")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    imgs = [
        synthetic_cells((args.size, args.size), n_cells=30, diameter=14.0, seed=i).image
        for i in range(args.n)
    ]
    count(imgs[0], args.model, device="cpu", diameter=14.0)  # warm up
    times: dict[str, list[float]] = {"copy per call (previous engine)": [], "named": []}
    counts: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for label in times:
            t0 = time.perf_counter()
            out = []
            for im in imgs:
                model = load_model(args.model) if label.startswith("copy") else args.model
                out.append(float(count(im, model, device="cpu", diameter=14.0).count))
            times[label].append((time.perf_counter() - t0) / args.n * 1000)
            counts[label] = out
    best = {k: min(v) for k, v in times.items()}
    ratio = best["copy per call (previous engine)"] / best["named"]
    same = counts["named"] == counts["copy per call (previous engine)"]
    for k, v in times.items():
        print(f"{k}: best {best[k]:.1f} ms per call (runs: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"speed-up {ratio:.2f}x; identical counts: {same}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "command": "python benchmarks/call_overhead.py " + " ".join(sys.argv[1:]),
                    "machine": f"{platform.machine()}, torch {torch.__version__}, "
                    f"{args.threads} threads",
                    "images": f"{args.n} synthetic {args.size}x{args.size}, diameter given 14 px",
                    "ms_per_call": times,
                    "best_ms_per_call": best,
                    "speedup": ratio,
                    "identical_counts": same,
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
