#!/usr/bin/env python
"""Do the speed switches change results? Count and segment real validation images with the
previous engine (PyTorch, full-size tiles, no shared work, see ``bench.speed.BASELINE_OPTIONS``)
and the current one, in one process, and compare: counts, points, labels, and each
configuration's accuracy against the ground truth (count error; segmentation F1 at IoU 0.5).

    python benchmarks/speed_agreement.py --data ../shared/data [--sets bbbc039 aitslab]
        [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    """Instance F1 at IoU > 0.5 (one-to-one: IoU > 0.5 pairs are unique)."""
    n_p, n_t = int(pred.max()), int(true.max())
    if n_p == 0 and n_t == 0:
        return 1.0
    both = (pred > 0) & (true > 0)
    sp, st = np.bincount(pred.ravel()), np.bincount(true.ravel())
    pair = pred[both].astype(np.int64) * (n_t + 1) + true[both]
    u, inter = np.unique(pair, return_counts=True)
    ip, it = u // (n_t + 1), u % (n_t + 1)
    iou = inter / (sp[ip] + st[it] - inter)
    tp = int(np.sum(iou > 0.5))
    n_p = len(np.unique(pred)) - (1 if (pred == 0).any() else 0)
    n_t = len(np.unique(true)) - (1 if (true == 0).any() else 0)
    return 2 * tp / max(1, n_p + n_t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--sets", nargs="+", default=["bbbc039", "aitslab"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_nalu_count.bench.speed import BASELINE_OPTIONS, engine_config
    from napari_nalu_count.data import load_aitslab, load_bbbc039
    from napari_nalu_count.infer import backend, count, engine, segment

    loaders = {"bbbc039": load_bbbc039, "aitslab": load_aitslab}
    configs = {"previous": BASELINE_OPTIONS, "current": {}}
    per_set = {}
    t_start = time.time()
    for name in args.sets:
        samples = loaders[name](args.data, "val", limit=args.limit)
        rows = []
        for smp in samples:
            img = np.asarray(smp.image)
            img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
            truth = np.asarray(smp.labels) if getattr(smp, "labels", None) is not None else None
            n_true = len(smp.dots)
            out = {}
            for conf, opts in configs.items():
                with engine_config(opts):
                    c = count(img, device="cpu")
                    s = segment(img, device="cpu")
                out[conf] = (c, s)
            (cp, sp), (cc, sc) = out["previous"], out["current"]
            row = {
                "name": smp.name,
                "true_count": n_true,
                "count_previous": float(cp.count),
                "count_current": float(cc.count),
                "count_abs_diff": abs(float(cc.count) - float(cp.count)),
                "points_identical": bool(np.array_equal(cp.points, cc.points)),
                "n_points": [len(cp.points), len(cc.points)],
                "diameter": [cp.diameter, cc.diameter],
                "objects": [int(sp.count), int(sc.count)],
                "labels_identical": bool(np.array_equal(sp.labels, sc.labels)),
                "label_pixels_differing": float(np.mean(sp.labels != sc.labels)),
            }
            if truth is not None:
                row["f1_previous"] = _f1(sp.labels, truth)
                row["f1_current"] = _f1(sc.labels, truth)
            rows.append(row)
            print(json.dumps(row), flush=True)
        err_p = [abs(r["count_previous"] - r["true_count"]) for r in rows]
        err_c = [abs(r["count_current"] - r["true_count"]) for r in rows]
        summary = {
            "images": len(rows),
            "count_mae_previous": float(np.mean(err_p)),
            "count_mae_current": float(np.mean(err_c)),
            "max_count_abs_diff": max(r["count_abs_diff"] for r in rows),
            "images_with_identical_points": sum(r["points_identical"] for r in rows),
            "images_with_identical_labels": sum(r["labels_identical"] for r in rows),
            "max_label_pixels_differing": max(r["label_pixels_differing"] for r in rows),
        }
        if rows and "f1_previous" in rows[0]:
            summary["seg_f1_previous"] = float(np.mean([r["f1_previous"] for r in rows]))
            summary["seg_f1_current"] = float(np.mean([r["f1_current"] for r in rows]))
        per_set[name] = {"summary": summary, "rows": rows}
        print(name, json.dumps(summary), flush=True)
    result = {
        "command": "python benchmarks/speed_agreement.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads",
        "backend_current": backend.resolve(engine.OPTIONS["backend"], torch.device("cpu")),
        "baseline_options": BASELINE_OPTIONS,
        "split": "val",
        "seconds": round(time.time() - t_start, 1),
        "load_average": list(os.getloadavg()),
        "sets": per_set,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
