#!/usr/bin/env python
"""Does fine-tuning on 5 annotated images of a new set generalise to the rest of that set?

For each seed: draw ``--n-images`` images of the set's *train* split, annotate them with their
instance centroids (what a user clicks in a Points layer), fine-tune the counter with
:func:`napari_nalu_count.train.fine_tune` under a wall-clock budget (default 3 minutes), then
count the set's *val* images (never seen) end to end with :func:`napari_nalu_count.count` and
its defaults (nucleus size found automatically), before and after. Also records what the
fine-tuning itself reported on its own held-out image(s), with the number of cells it rests on.

    python benchmarks/finetune_generalist.py --data ../shared/data --set aitslab \\
        --seeds 0 1 2 --json docs/benchmarks/finetune_aitslab.json
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

from napari_nalu_count._widgets.finetune_widget import FineTuneParams
from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.data.readers import Sample
from napari_nalu_count.infer import count
from napari_nalu_count.models import load_model
from napari_nalu_count.train import TrainConfig, fine_tune
from napari_nalu_count.train.finetune import default_config
from napari_nalu_count.train.metrics import count_metrics

LOADERS = {"aitslab": load_aitslab, "dsb2018": load_dsb2018, "bbbc039": load_bbbc039}


def draw(n_pool: int, n_images: int, seed: int) -> list[int]:
    """The indices of the ``n_images`` training images drawn for ``seed`` (the same draws in
    every fine-tuning benchmark)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_pool, n_images, replace=False).tolist())


def preset_config(name: str, model: str, task: str, start_card: dict):
    """The ``dock`` (the Fine-tune dock's defaults) or ``api`` (``fine_tune``'s own default)
    training config for a fine-tune of ``model``."""
    if name == "dock":
        return FineTuneParams(model, "bench", task).train_config(start_card)
    return default_config(start_card)


def evaluate(model, samples) -> dict:
    pred, true, t = [], [], []
    for s in samples:
        t0 = time.perf_counter()
        pred.append(float(count(s.image, model, device="cpu").count))
        t.append(time.perf_counter() - t0)
        true.append(float(len(s.dots)))
    m = count_metrics(pred, true)
    m["seconds_per_image"] = float(np.mean(t))
    m["per_image"] = [
        {"name": s.name, "true": tr, "pred": round(p, 2)}
        for s, tr, p in zip(samples, true, pred, strict=True)
    ]
    return m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--set", choices=sorted(LOADERS), default="aitslab")
    p.add_argument("--model", default="nuclei-count")
    p.add_argument("--n-images", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=3.0, help="fine-tuning wall-clock budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the config's, 3e-4)"
    )
    p.add_argument(
        "--anchor",
        type=float,
        default=0.0,
        help="TrainConfig.anchor_weight: weight decay towards the start model (0: off)",
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="TrainConfig.freeze_bn: BatchNorm keeps the start model's running statistics",
    )
    p.add_argument(
        "--ema", type=float, default=0.0, help="TrainConfig.ema: weight EMA decay (0: off)"
    )
    p.add_argument(
        "--config",
        choices=("bench", "dock", "api"),
        default="bench",
        help="bench: up to 40 x 15 steps, batch 8, --minutes budget; dock: the Fine-tune "
        "dock's defaults (FineTuneParams().train_config(), FRE on); api: fine_tune()'s own "
        "default (train.finetune.default_config)",
    )
    p.add_argument(
        "--sigma", type=float, default=None, help="density sigma (default: the config's own)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the config's own)")
    p.add_argument(
        "--patience", type=int, default=None, help="early-stopping patience (default: the config's)"
    )
    p.add_argument(
        "--count-weight",
        type=float,
        default=None,
        help="TrainConfig.count_weight (patch count loss)",
    )
    p.add_argument(
        "--scale-jitter",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="TrainConfig.scale_jitter: patches resampled by a log-uniform factor in [LO, HI]",
    )
    p.add_argument(
        "--appearance",
        action="store_true",
        help="TrainConfig.appearance: simulate other microscopes (default settings)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        help="fine_tune's held-out fraction of the images (default 0.25: 1 of 5)",
    )
    p.add_argument(
        "--all-train",
        action="store_true",
        help="probe: train on all drawn images (a copy of the first is added, and one of six "
        "held out, so every drawn image is trained on; fine_tune's before/after then rests on "
        "a trained-on image and flatters)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NALU_COUNT_MODEL_DIR", tempfile.mkdtemp(prefix="ft-bench-"))

    train_pool = LOADERS[args.set](args.data, "train")
    val = LOADERS[args.set](args.data, "val")
    start = load_model(args.model)
    before = evaluate(start, val)
    print(
        f"before: {args.set} val MAE {before['mae']:.2f} ({100 * before['mre']:.1f} %)", flush=True
    )
    runs = []
    for seed in args.seeds:
        pick = draw(len(train_pool), args.n_images, seed)
        samples = [
            Sample(image=train_pool[i].image, dots=train_pool[i].dots, name=train_pool[i].name)
            for i in pick
        ]
        if args.config in ("dock", "api"):
            cfg = preset_config(args.config, args.model, "count", start.card)
        else:
            cfg = TrainConfig(
                epochs=40,
                steps_per_epoch=15,
                batch_size=8,
                patch_size=128,
                lr=3e-4,
                patience=40,
                warmup_steps=0,
                max_minutes=args.minutes,
            )
        cfg.seed = seed
        if args.sigma is not None:
            cfg.sigma = args.sigma
        if args.lr is not None:
            cfg.lr = args.lr
        if args.epochs is not None:
            cfg.epochs = args.epochs
        if args.patience is not None:
            cfg.patience = args.patience
        cfg.anchor_weight = args.anchor
        if args.count_weight is not None:
            cfg.count_weight = args.count_weight
        if args.scale_jitter is not None:
            cfg.scale_jitter = list(args.scale_jitter)
        if args.appearance:
            cfg.appearance = True
        cfg.freeze_bn = args.freeze_bn
        cfg.ema = args.ema
        t0 = time.perf_counter()
        if args.all_train:
            first = samples[0]
            samples = [*samples, Sample(image=first.image, dots=first.dots, name="copy")]
        res = fine_tune(
            start,
            samples,
            name=f"ft-{args.set}-{seed}",
            cfg=cfg,
            overwrite=True,
            holdout=1 / len(samples) if args.all_train else args.holdout,
        )
        minutes = (time.perf_counter() - t0) / 60
        after = evaluate(load_model(res.path), val)
        runs.append(
            {
                "seed": seed,
                "sigma": res.card["training"]["settings"]["sigma"],
                "epochs": cfg.epochs,
                "patience": cfg.patience,
                "lr": cfg.lr,
                "train_images": [train_pool[i].name for i in pick],
                "train_cells": int(sum(len(s.dots) for s in samples[: args.n_images])),
                "minutes_total": round(minutes, 2),
                "steps": res.card["training"]["steps"],
                "reported_by_fine_tune": {
                    "split": res.card["metrics"]["split"],
                    "before_mae": res.metrics_before.get("mae"),
                    "after_mae": res.metrics_after.get("mae"),
                    "before_mre": res.metrics_before.get("mre"),
                    "after_mre": res.metrics_after.get("mre"),
                    "n_cells": res.metrics_after.get("n_cells"),
                },
                "val_after": after,
            }
        )
        print(
            f"seed {seed}: {minutes:.1f} min, {args.set} val MAE {before['mae']:.2f} -> "
            f"{after['mae']:.2f} ({100 * before['mre']:.1f} % -> {100 * after['mre']:.1f} %); "
            f"fine_tune reported {res.metrics_before.get('mae'):.2f} -> "
            f"{res.metrics_after.get('mae'):.2f} on {res.metrics_after.get('n_cells')} cells",
            flush=True,
        )
    out = {
        "benchmark": "finetune_generalist",
        "command": "python benchmarks/finetune_generalist.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads",
        "set": args.set,
        "config": args.config,
        "sigma": args.sigma,
        "anchor_weight": args.anchor,
        "freeze_bn": args.freeze_bn,
        "ema": args.ema,
        "count_weight": args.count_weight,
        "holdout": args.holdout,
        "all_train": args.all_train,
        "scale_jitter": args.scale_jitter,
        "appearance": args.appearance,
        "model": args.model,
        "val_images": len(val),
        "val_cells": int(sum(len(s.dots) for s in val)),
        "before": before,
        "runs": runs,
        "after_mre_mean": float(np.mean([r["val_after"]["mre"] for r in runs])),
        "after_mre_sd": float(np.std([r["val_after"]["mre"] for r in runs])),
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
