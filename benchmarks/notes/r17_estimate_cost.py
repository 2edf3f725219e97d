"""What a size regressor's features cost, against the count they serve (one process, one run).

Per image: the time of ``infer.size.estimate_diameter`` with each regressor (median of
``--repeats``, interleaved so that both see the same machine state) and of ``count()`` with the
diameter given (the count the estimate is added to), on ``nalu-count bench speed``'s synthetic
2048 x 2048 image, the first three of its ``--small`` 256 x 256 images and the first
``--limit`` BBBC039 val images (520 x 696).

    python benchmarks/notes/r17_estimate_cost.py --data ../shared/data --threads 2 \
        r16=r16_regressor.json r17=src/napari_nalu_count/infer/size_regressor.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_nalu_count.bench.speed import small_images, speed_image
from napari_nalu_count.infer import count
from napari_nalu_count.infer import size as size_mod
from napari_nalu_count.models import load_model


def _median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("regressors", nargs="+", metavar="LABEL=JSON")
    p.add_argument("--data", default=None, help="../shared/data (BBBC039 val images too)")
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    regs = {}
    for item in args.regressors:
        label, path = item.split("=", 1)
        regs[label] = size_mod.SizeRegressor(json.loads(Path(path).read_text()))
    images = [("synthetic 2048", speed_image(2048))]
    images += [(f"small 256 #{i}", im) for i, im in enumerate(small_images(3, 256))]
    if args.data:
        from napari_nalu_count.data import load_bbbc039

        for s in load_bbbc039(args.data, "val")[: args.limit]:
            images.append((f"bbbc039 {s.name[:14]}", s.image))
    model = load_model("nuclei-count")
    rows = []
    for name, img in images:
        d = size_mod.estimate_diameter(img, regressor=regs[next(iter(regs))]) or 12.0
        count(img, model, diameter=d)  # warm-up
        t_count = _median_time(lambda img=img, d=d: count(img, model, diameter=d), 3)
        row = {"image": name, "count_s": round(t_count, 4)}
        times: dict[str, list[float]] = {k: [] for k in regs}
        for _ in range(args.repeats):
            for label, reg in regs.items():
                t0 = time.perf_counter()
                est = size_mod.estimate_diameter(img, regressor=reg)
                times[label].append(time.perf_counter() - t0)
                row[f"{label}_diameter"] = round(float(est or 0), 2)
        for label in regs:
            t = float(np.median(times[label]))
            row[f"{label}_s"] = round(t, 4)
            row[f"{label}_share"] = round(t / t_count, 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    head = " | ".join(f"{k}: estimate, share" for k in regs)
    lines = [f"| image | count (d given) | {head} |"]
    lines.append("|---|---:|" + "---:|" * len(regs))
    for r in rows:
        cells = [f"{1000 * r[f'{k}_s']:.1f} ms, {100 * r[f'{k}_share']:.1f} %" for k in regs]
        lines.append(f"| {r['image']} | {1000 * r['count_s']:.0f} ms | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows, "table": table})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
