#!/usr/bin/env python
"""Does fine-tuning the segmenter on 5 annotated images (masks, as a user paints them in a
Labels layer) carry over to the rest of that set?

For each seed: draw ``--n-images`` images of the set's *train* split (the same draws as
``finetune_generalist.py``) with their instance masks, fine-tune ``nuclei-seg`` with
:func:`napari_nalu_count.train.fine_tune` and its default schedule (``--config dock``: the
Fine-tune dock's), then segment the set's *val* images end to end with
:func:`napari_nalu_count.segment` and its defaults (size found automatically, count-guided
seeds from ``nuclei-count``), before and after: instance F1 at IoU 0.5 and 0.75, and the
object count's relative MAE. Also records what the fine-tuning reported on its own held-out
image(s).

    python benchmarks/finetune_segment.py --data ../shared/data --set aitslab \\
        --seeds 0 1 2 --json docs/benchmarks/r15/finetune_segment_aitslab.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from finetune_generalist import LOADERS, draw, preset_config

from napari_nalu_count.data.readers import Sample
from napari_nalu_count.infer import segment
from napari_nalu_count.models import load_model
from napari_nalu_count.train import fine_tune
from napari_nalu_count.train.metrics import instance_f1


def evaluate(model, samples, seeds: str = "count") -> dict:
    pairs, true_n, pred_n, t = [], [], [], []
    for s in samples:
        t0 = time.perf_counter()
        labels = np.asarray(segment(s.image, model, device="cpu", seeds=seeds).labels)
        t.append(time.perf_counter() - t0)
        pairs.append((np.asarray(s.labels), labels))
        true_n.append(len(np.unique(s.labels)) - (1 if (np.asarray(s.labels) == 0).any() else 0))
        pred_n.append(len(np.unique(labels)) - (1 if (labels == 0).any() else 0))
    m = instance_f1(pairs, (0.5, 0.75))
    err = np.abs(np.asarray(pred_n, float) - np.asarray(true_n, float))
    return {
        "f1_50": float(m[0.5].f1),
        "f1_75": float(m[0.75].f1),
        "count_mre": float(err.sum() / max(1, sum(true_n))),
        "seconds_per_image": float(np.mean(t)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--set", choices=sorted(LOADERS), default="aitslab")
    p.add_argument("--model", default="nuclei-seg")
    p.add_argument("--n-images", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", choices=("api", "dock"), default="api")
    p.add_argument(
        "--watershed-seeds",
        choices=("count", "interior"),
        default="count",
        help="segment()'s watershed seeds for the val figures (the fine-tune measures with its "
        "own default)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NALU_COUNT_MODEL_DIR", tempfile.mkdtemp(prefix="ft-seg-bench-"))

    train_pool = LOADERS[args.set](args.data, "train")
    val = LOADERS[args.set](args.data, "val")
    start = load_model(args.model)
    before = evaluate(start, val, args.watershed_seeds)
    print(
        f"before: {args.set} val F1@0.5 {before['f1_50']:.3f}, F1@0.75 {before['f1_75']:.3f}, "
        f"objects {100 * before['count_mre']:.1f} %",
        flush=True,
    )
    runs = []
    for seed in args.seeds:
        pick = draw(len(train_pool), args.n_images, seed)
        samples = [
            Sample(image=train_pool[i].image, labels=train_pool[i].labels, name=train_pool[i].name)
            for i in pick
        ]
        cfg = preset_config(args.config, args.model, "segment", start.card)
        cfg.seed = seed
        t0 = time.perf_counter()
        res = fine_tune(start, samples, name=f"ftseg-{args.set}-{seed}", cfg=cfg, overwrite=True)
        minutes = (time.perf_counter() - t0) / 60
        after = evaluate(load_model(res.path), val, args.watershed_seeds)
        runs.append(
            {
                "seed": seed,
                "train_images": [train_pool[i].name for i in pick],
                "minutes_total": round(minutes, 2),
                "steps": res.card["training"]["steps"],
                "reported_by_fine_tune": {
                    "split": res.card["metrics"]["split"],
                    "before_f1": res.metrics_before.get("f1"),
                    "after_f1": res.metrics_after.get("f1"),
                    "n_cells": res.metrics_after.get("n_cells"),
                },
                "val_after": after,
            }
        )
        print(
            f"seed {seed}: {minutes:.1f} min, {args.set} val F1@0.5 {before['f1_50']:.3f} -> "
            f"{after['f1_50']:.3f}, F1@0.75 {before['f1_75']:.3f} -> {after['f1_75']:.3f}, "
            f"objects {100 * before['count_mre']:.1f} -> {100 * after['count_mre']:.1f} %; "
            f"fine_tune reported F1 {res.metrics_before.get('f1'):.3f} -> "
            f"{res.metrics_after.get('f1'):.3f} on {res.metrics_after.get('n_cells')} objects",
            flush=True,
        )
    out = {
        "benchmark": "finetune_segment",
        "command": "python benchmarks/finetune_segment.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads",
        "set": args.set,
        "config": args.config,
        "watershed_seeds": args.watershed_seeds,
        "model": args.model,
        "val_images": len(val),
        "before": before,
        "runs": runs,
        "after_f1_50_mean": float(np.mean([r["val_after"]["f1_50"] for r in runs])),
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
