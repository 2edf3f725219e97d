#!/usr/bin/env python
"""Fine-tuning the counter from image-level counts alone: BBBC005 (counts.csv, no dots).

BBBC005 has 8 images at each of 24 count levels (1-100 nuclei). Per seed, ``--per-level``
images of every level are the training part (their counts are all the model gets) and the
rest are held back. :func:`napari_nalu_count.train.fine_tune` adapts the start model with
``counts=`` (a loss on the density integral per image; nothing else), then both models count
the held-back images end to end with :func:`napari_nalu_count.count` and its defaults
(nucleus size found automatically). Reported: MAE, relative MAE, bias, before and after.

    python benchmarks/count_labels_bbbc005.py --data ../shared/data --per-level 2 \\
        --seeds 0 1 --json docs/benchmarks/count_labels_bbbc005.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def load(root: Path) -> list[tuple[str, np.ndarray, float]]:
    from napari_nalu_count.data import read_image

    base = root / "bbbc005"
    rows = list(csv.DictReader((base / "counts.csv").open()))
    return [(r["file"], read_image(base / "images" / r["file"]), float(r["count"])) for r in rows]


def evaluate(model, items) -> dict:
    from napari_nalu_count.infer import count
    from napari_nalu_count.train.metrics import count_metrics

    pred = [float(count(img, model, device="cpu").count) for _, img, _ in items]
    true = [n for _, _, n in items]
    m = count_metrics(pred, true)
    out = {k: round(float(m[k]), 4) for k in ("mae", "mre", "bias", "rmse")}
    out["per_image"] = [
        {"file": f, "true": n, "pred": round(p, 2)}
        for (f, _, n), p in zip(items, pred, strict=True)
    ]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    p.add_argument("--model", default="nuclei-count")
    p.add_argument("--per-level", type=int, default=2, help="training images per count level")
    p.add_argument(
        "--held-per-level", type=int, default=None, help="held-back images per level (all)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=15, help="steps per epoch")
    p.add_argument("--batch", type=int, default=4, help="whole images per step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NALU_COUNT_MODEL_DIR", tempfile.mkdtemp(prefix="count-labels-"))

    from napari_nalu_count.models import load_model
    from napari_nalu_count.train import TrainConfig, fine_tune

    t_start = time.perf_counter()
    data = load(Path(args.data))
    levels = sorted({n for _, _, n in data})
    start = load_model(args.model)
    runs = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        train_idx, held_idx = [], []
        for level in levels:
            idx = [i for i, (_, _, n) in enumerate(data) if n == level]
            idx = [idx[j] for j in rng.permutation(len(idx))]
            train_idx += idx[: args.per_level]
            rest = idx[args.per_level :]
            held_idx += rest if args.held_per_level is None else rest[: args.held_per_level]
        held = [data[i] for i in held_idx]
        before = evaluate(start, held)
        cfg = TrainConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            batch_size=args.batch,
            lr=args.lr,
            patience=args.epochs,
            seed=seed,
        )
        t0 = time.perf_counter()
        res = fine_tune(
            start,
            [data[i][1] for i in train_idx],
            counts=[data[i][2] for i in train_idx],
            name=f"bbbc005-counts-{seed}",
            cfg=cfg,
            overwrite=True,
        )
        minutes = (time.perf_counter() - t0) / 60
        after = evaluate(load_model(res.path), held)
        runs.append(
            {
                "seed": seed,
                "train_images": len(train_idx),
                "train_cells": float(sum(data[i][2] for i in train_idx)),
                "held_back_images": len(held),
                "minutes": round(minutes, 2),
                "steps": res.card["training"]["steps"],
                "fine_tune_held_out": {
                    "split": res.card["metrics"]["split"],
                    "before_mae": res.metrics_before.get("mae"),
                    "after_mae": res.metrics_after.get("mae"),
                },
                "before": before,
                "after": after,
            }
        )
        print(
            f"seed {seed}: {len(train_idx)} images' counts, {minutes:.1f} min; held-back "
            f"{len(held)} images MAE {before['mae']:.2f} -> {after['mae']:.2f} "
            f"({100 * before['mre']:.1f} % -> {100 * after['mre']:.1f} %, bias "
            f"{before['bias']:+.2f} -> {after['bias']:+.2f})",
            flush=True,
        )
    out = {
        "benchmark": "count_labels_bbbc005",
        "command": "python benchmarks/count_labels_bbbc005.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s)",
        "model": args.model,
        "model_created": start.card.get("created"),
        "settings": {
            "per_level": args.per_level,
            "held_per_level": args.held_per_level,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "batch_size": args.batch,
            "lr": args.lr,
            "loss": "(density integral - count)^2 / (count + 1) per whole image",
        },
        "runs": runs,
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
