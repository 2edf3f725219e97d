#!/usr/bin/env python
"""Annotate where the model is least sure, or anywhere? Suggested against random boxes.

For each seed: draw ``--n-images`` images of Aitslab *train* (a set the generalist counter
has to adapt to). Two ways to pick ``--n-boxes`` boxes of ``--size`` px per image:

- ``suggested``: :func:`napari_nalu_count.suggest_regions` with the start model;
- ``random``: boxes at random positions (non-overlapping, inside the image; seeded).

The boxes are "annotated" with the instance centroids inside them (what a user clicks), and
:func:`napari_nalu_count.train.fine_tune` adapts the start model on those boxes only (the loss
sees nothing outside them), with the same images, schedule and seed for both ways. Both new
models then count the Aitslab *val* images end to end with :func:`napari_nalu_count.count`
and its defaults. The comparison is paired per seed; the spread over seeds says whether a
difference is more than noise.

    python benchmarks/active_boxes.py --data ../shared/data --seeds 0 1 2 \\
        --json docs/benchmarks/active_boxes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def random_boxes(shape, n, size, rng, tries=1000):
    h, w = shape
    by, bx = min(size, h), min(size, w)
    boxes = []
    for _ in range(tries):
        if len(boxes) == n:
            break
        y0, x0 = int(rng.integers(0, h - by + 1)), int(rng.integers(0, w - bx + 1))
        b = (y0, x0, y0 + by, x0 + bx)
        if all(
            min(b[2], o[2]) <= max(b[0], o[0]) or min(b[3], o[3]) <= max(b[1], o[1]) for o in boxes
        ):
            boxes.append(b)
    return boxes


def evaluate(model, samples) -> dict:
    from napari_nalu_count.infer import count
    from napari_nalu_count.train.metrics import count_metrics

    pred = [float(count(s.image, model, device="cpu").count) for s in samples]
    true = [float(s.count) for s in samples]
    m = count_metrics(pred, true)
    return {k: round(float(m[k]), 4) for k in ("mae", "mre", "bias", "rmse")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    p.add_argument("--model", default="nuclei-count")
    p.add_argument("--n-images", type=int, default=3)
    p.add_argument("--n-boxes", type=int, default=3)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=15, help="steps per epoch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--keep-weight",
        type=float,
        default=None,
        help="TrainConfig.keep_weight (default: TrainConfig's)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NALU_COUNT_MODEL_DIR", tempfile.mkdtemp(prefix="active-boxes-"))

    from napari_nalu_count import suggest_regions
    from napari_nalu_count.data import load_aitslab
    from napari_nalu_count.data.boxes import box_counts, dots_in_boxes
    from napari_nalu_count.data.readers import Sample
    from napari_nalu_count.models import load_model
    from napari_nalu_count.train import TrainConfig, fine_tune

    t_start = time.perf_counter()
    pool = load_aitslab(args.data, "train")
    val = load_aitslab(args.data, "val")
    start = load_model(args.model)
    before = evaluate(start, val)
    print(f"before: Aitslab val MAE {before['mae']:.2f} ({100 * before['mre']:.1f} %)", flush=True)
    runs = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(pool), args.n_images, replace=False).tolist())
        row = {"seed": seed, "images": [pool[i].name for i in pick]}
        for how in ("suggested", "random"):
            samples, cells, n_boxes = [], 0, 0
            box_rng = np.random.default_rng(1000 + seed)
            for i in pick:
                s = pool[i]
                if how == "suggested":
                    boxes = suggest_regions(
                        s.image, start, n=args.n_boxes, size=args.size, device="cpu"
                    )
                else:
                    boxes = random_boxes(s.image.shape, args.n_boxes, args.size, box_rng)
                boxes = np.asarray(boxes, dtype=np.float64)
                keep = dots_in_boxes(s.dots, boxes)
                samples.append(Sample(image=s.image, dots=s.dots[keep], boxes=boxes, name=s.name))
                cells += int(box_counts(s.dots, boxes).sum())
                n_boxes += len(boxes)
            cfg = TrainConfig(
                epochs=args.epochs,
                steps_per_epoch=args.steps,
                batch_size=8,
                patch_size=128,
                lr=3e-4,
                patience=args.epochs,
                seed=seed,
                **({} if args.keep_weight is None else {"keep_weight": args.keep_weight}),
            )
            t0 = time.perf_counter()
            res = fine_tune(start, samples, name=f"ab-{how}-{seed}", cfg=cfg, overwrite=True)
            minutes = (time.perf_counter() - t0) / 60
            after = evaluate(load_model(res.path), val)
            row[how] = {
                "boxes": int(n_boxes),
                "cells_annotated": cells,
                "minutes": round(minutes, 2),
                "val_after": after,
                "fine_tune_held_out": {
                    "split": res.card["metrics"]["split"],
                    "before_mae": res.metrics_before.get("mae"),
                    "after_mae": res.metrics_after.get("mae"),
                },
            }
            print(
                f"seed {seed} {how:9s}: {cells} cells in {n_boxes} boxes, {minutes:.1f} min, "
                f"val MAE {before['mae']:.2f} -> {after['mae']:.2f} "
                f"({100 * after['mre']:.1f} %, bias {after['bias']:+.2f})",
                flush=True,
            )
        row["mae_suggested_minus_random"] = round(
            row["suggested"]["val_after"]["mae"] - row["random"]["val_after"]["mae"], 4
        )
        runs.append(row)
    diffs = np.array([r["mae_suggested_minus_random"] for r in runs])
    sug = np.array([r["suggested"]["val_after"]["mae"] for r in runs])
    ran = np.array([r["random"]["val_after"]["mae"] for r in runs])
    summary = {
        "suggested_mae_mean": round(float(sug.mean()), 3),
        "suggested_mae_sd": round(float(sug.std(ddof=1)) if len(sug) > 1 else 0.0, 3),
        "random_mae_mean": round(float(ran.mean()), 3),
        "random_mae_sd": round(float(ran.std(ddof=1)) if len(ran) > 1 else 0.0, 3),
        "diff_mean": round(float(diffs.mean()), 3),
        "diff_sd": round(float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0, 3),
        "suggested_better_in": int((diffs < 0).sum()),
        "seeds": len(diffs),
    }
    summary["beats_random_beyond_spread"] = bool(
        summary["diff_mean"] < 0
        and abs(summary["diff_mean"]) > summary["diff_sd"]
        and sug.max() < ran.min()
    )
    out = {
        "benchmark": "active_boxes",
        "command": "python benchmarks/active_boxes.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s)",
        "model": args.model,
        "model_created": start.card.get("created"),
        "set": "aitslab: fine-tuned on train images, measured on val (10 images)",
        "settings": {
            "n_images": args.n_images,
            "n_boxes": args.n_boxes,
            "size": args.size,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "batch_size": 8,
            "patch_size": 128,
            "lr": 3e-4,
            "keep_weight": cfg.keep_weight,
        },
        "before": before,
        "runs": runs,
        "summary": summary,
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
