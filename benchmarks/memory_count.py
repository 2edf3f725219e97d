"""Peak memory of counting one large uint16 image with the bundled counter.

Runs ``count(image, "nuclei-count", device="cpu")`` on a synthetic ``SIZE x SIZE`` uint16 image
in THIS process and prints the wall time and the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which includes the image itself, torch and the
models). Run it as its own process, ideally under ``/usr/bin/time -v`` as a cross-check:

    /usr/bin/time -v python benchmarks/memory_count.py --size 8192 --threads 1 --json mem.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--model", default="nuclei-count")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count
    from napari_nalu_count.models import load_model

    model = load_model(args.model)
    d = float(model.card.get("diameter") or 16.0)
    # build the big image from 1024 px synthetic tiles (one 8192 px synthetic_cells call would
    # itself dominate the memory figure); cells stay ~4 diameters apart as in bench speed
    tile = 1024
    n_cells = int(tile * tile / (d * d * 4))
    image = np.zeros((args.size, args.size), dtype=np.uint16)
    k = 0
    for y in range(0, args.size, tile):
        for x in range(0, args.size, tile):
            part = synthetic_cells((tile, tile), n_cells=n_cells, diameter=d, seed=k).image
            h, w = min(tile, args.size - y), min(tile, args.size - x)
            image[y : y + h, x : x + w] = np.asarray(part[:h, :w], dtype=np.uint16)
            k += 1
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    t0 = time.perf_counter()
    res = count(image, model, device="cpu")
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = {
        "size": args.size,
        "model": args.model,
        "threads": args.threads,
        "count": float(res.count),
        "n_points": int(len(res.points)),
        "count_seconds": wall,
        "peak_rss_gib": peak,
        "peak_rss_before_count_gib": rss_before,
        "image_gib": image.nbytes / 1024**3,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
