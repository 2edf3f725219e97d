#!/usr/bin/env python
"""Reproduce the bundled models ``nuclei-count`` and ``nuclei-seg`` from BBBC039.

Usage (the commands that produced the shipped models)::

    python scripts/train_bundled.py --task count --data /path/to/bbbc039 \
        --out src/napari_nalu_count/models/bundled --minutes 27 --threads 1 \
        --input-scale 0.5 --batch 8 --patch 128 --sigma 2 --bn-recalibrate 30 \
        --steps-per-epoch 150 --calibrate-count
    python scripts/train_bundled.py --task segment --data /path/to/bbbc039 \
        --out src/napari_nalu_count/models/bundled --minutes 36 --threads 1

Trains on the BBBC039 ``train`` split (110 images), selects the best epoch on the ``val`` split
(38 images) and saves the model with ``models.save_model`` (atomic), its card holding the val
metrics and how it was trained. ``--input-scale s`` trains on images, dots and masks resampled
by ``s`` (the card then carries ``input_scale`` and its ``diameter`` is on that grid);
``--bn-recalibrate N`` re-estimates BatchNorm statistics on N whole training images before each
validation; ``--calibrate-count`` rescales the card's ``density_scale`` so the mean count on the
whole training images is right. Objects under ``--min-size`` pixels (default
40: micronuclei and fragments, ~5% of the annotated objects) are dropped from the training
targets and the main metrics; the card also reports the metrics against *all* annotated
objects (``*_all_objects``). The schedule is a cosine decay over the wall-clock budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_nalu_count.data import typical_diameter
from napari_nalu_count.data.readers import load_bbbc039
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.train import TrainConfig, evaluate, train
from napari_nalu_count.train.dataset import prepare, rescale_samples

PRESETS = {
    "count": dict(
        name="nuclei-count",
        config={
            "architecture": "unet_count",
            "in_channels": 1,
            "out_channels": 1,
            "activation": "leaky_relu",
            "unit": "nac",
            "widths": [16, 32, 64, 128],
            "fre": None,
            "deep_supervision": False,
        },
        cfg=dict(
            batch_size=4,
            patch_size=128,
            lr=1e-3,
            min_lr=1e-5,
            warmup_steps=100,
            sigma=3.0,
            density_scale=100.0,
            reg_weight=1e-3,
        ),
        description=(
            "Nucleus counter (density regression): counting U-Net with NAC arithmetic residual "
            "units, trained on BBBC039 (U2OS nuclei, Hoechst)."
        ),
    ),
    "segment": dict(
        name="nuclei-seg",
        config={
            "architecture": "se_unet",
            "in_channels": 1,
            "out_channels": 3,
            "activation": "relu",
            "unit": None,
            "widths": [16, 32, 64, 128],
            "fre": {"B": 32, "X": 4.0, "seed": 0},
            "deep_supervision": False,
        },
        cfg=dict(
            batch_size=4,
            patch_size=128,
            lr=1e-3,
            min_lr=1e-5,
            warmup_steps=100,
            dice=True,
            class_weights=[1.0, 1.0, 2.0],
        ),
        description=(
            "Nucleus segmenter (3 classes: background, interior, boundary -> instances): SE "
            "U-Net with Feature Random Enhancement, trained on BBBC039 (U2OS nuclei, Hoechst)."
        ),
    ),
}


def calibrate_count(
    net: torch.nn.Module, train_samples: list, normalization: dict, density_scale: float
) -> tuple[float, dict]:
    """``(calibrated density_scale, record)``: the training density scale times the ratio of the
    mean predicted to the mean true count over the whole *training* images (a single scalar, so
    a systematic under- or over-count of the trained network is removed; val is not used)."""
    m = evaluate(
        net,
        prepare(train_samples, "count", normalization=normalization),
        "count",
        density_scale=density_scale,
    )
    ratio = (m["mean_true"] + m["bias"]) / m["mean_true"]
    record = {
        "images": int(m["n_images"]),
        "train_bias_before": round(float(m["bias"]), 3),
        "train_mae_before": round(float(m["mae"]), 3),
        "ratio": round(float(ratio), 6),
        "training_density_scale": density_scale,
    }
    if not 0.5 <= ratio <= 2.0:  # an untrained or broken network: leave the scale alone
        record["skipped"] = "ratio outside [0.5, 2]"
        return float(density_scale), record
    return float(density_scale * ratio), record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=("count", "segment"), required=True)
    p.add_argument("--data", required=True, help="the bbbc039 folder")
    p.add_argument("--out", default="src/napari_nalu_count/models/bundled")
    p.add_argument("--minutes", type=float, default=38.0, help="wall-clock training budget")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps-per-epoch", type=int, default=300)
    p.add_argument("--epochs", type=int, default=1000, help="upper bound; the budget decides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=40)
    p.add_argument("--fre-b", type=int, default=None)
    p.add_argument("--fre-x", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="use only N images per split (smoke)")
    p.add_argument("--name", default=None)
    p.add_argument(
        "--input-scale",
        type=float,
        default=1.0,
        help="train on images and targets resampled by this factor (stored as the card's "
        "input_scale: inference resamples user images by it when no diameter is given)",
    )
    p.add_argument("--batch", type=int, default=None, help="patches per step (preset: 4)")
    p.add_argument("--patch", type=int, default=None, help="patch size on the model grid")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--sigma", type=float, default=None, help="density target sigma (model grid)")
    p.add_argument(
        "--calibrate-count",
        action="store_true",
        help="after training, scale the card's density_scale so the mean predicted count on "
        "the whole *training* images equals the mean true count (val is not used)",
    )
    p.add_argument(
        "--bn-recalibrate",
        type=int,
        default=0,
        help="re-estimate BatchNorm statistics on N whole training images before each "
        "validation (0: off)",
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.task]
    name = args.name or preset["name"]
    config = json.loads(json.dumps(preset["config"]))
    if args.task == "segment" and (args.fre_b is not None or args.fre_x is not None):
        fre = dict(config["fre"])
        if args.fre_b is not None:
            fre["B"] = args.fre_b
        if args.fre_x is not None:
            fre["X"] = args.fre_x
        config["fre"] = fre

    t_load = time.time()
    tr = load_bbbc039(args.data, "train", min_size=args.min_size, limit=args.limit)
    va = load_bbbc039(args.data, "val", min_size=args.min_size, limit=args.limit)
    va_all = load_bbbc039(args.data, "val", min_size=0, limit=args.limit)
    diameter = float(np.median([typical_diameter(s.labels) for s in tr if s.labels.max() > 0]))
    if args.input_scale != 1.0:
        tr = rescale_samples(tr, args.input_scale, args.task)
        va = rescale_samples(va, args.input_scale, args.task)
        va_all = rescale_samples(va_all, args.input_scale, args.task)
        diameter *= args.input_scale  # the card's diameter is on the model grid
    print(
        f"loaded {len(tr)} train / {len(va)} val images in {time.time() - t_load:.1f}s; "
        f"typical diameter {diameter:.1f} px",
        flush=True,
    )

    settings = dict(preset["cfg"])
    for key, value in (
        ("batch_size", args.batch),
        ("patch_size", args.patch),
        ("lr", args.lr),
        ("sigma", args.sigma),
    ):
        if value is not None:
            settings[key] = value
    cfg = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        patience=10_000,
        seed=args.seed,
        max_minutes=args.minutes,
        bn_recalibrate=args.bn_recalibrate,
        **settings,
    )

    def progress(ev: dict) -> None:
        if ev["kind"] == "step" and ev["step"] % 50 == 0:
            print(f"  step {ev['step']:6d} loss {ev['loss']:.4f} lr {ev['lr']:.2e}", flush=True)
        elif ev["kind"] == "epoch":
            m = {k: round(v, 4) for k, v in ev["metrics"].items() if isinstance(v, float)}
            star = " *" if ev["best"] else ""
            print(
                f"epoch {ev['epoch']} step {ev['step']} loss {ev['loss']:.4f} {m}{star}", flush=True
            )

    t0 = time.time()
    result = train(config, tr, va, args.task, cfg, callback=progress)
    minutes = (time.time() - t0) / 60
    print(f"trained {result.steps} steps in {minutes:.1f} min; best epoch {result.best_epoch}")

    # metrics of the selected weights (deterministic re-evaluation) on both GT variants
    norm = cfg.normalization
    density_scale = cfg.density_scale
    calibration = None
    if args.task == "count" and args.calibrate_count:
        density_scale, calibration = calibrate_count(result.net, tr, norm, cfg.density_scale)
        print(f"count calibration on the training images: {calibration}", flush=True)
    metrics = evaluate(
        result.net,
        prepare(va, args.task, normalization=norm),
        args.task,
        density_scale=density_scale,
    )
    metrics_all = evaluate(
        result.net,
        prepare(va_all, args.task, normalization=norm),
        args.task,
        density_scale=density_scale,
    )
    card_metrics: dict = {"split": f"BBBC039 val ({len(va)} images, objects >= {args.min_size} px)"}
    for k, v in metrics.items():
        card_metrics[k] = v
    for k, v in metrics_all.items():
        if k != "n_images":
            card_metrics[f"{k}_all_objects"] = v
    command = "python scripts/train_bundled.py " + " ".join(sys.argv[1:] if argv is None else argv)
    extra = {"input_scale": args.input_scale} if args.input_scale != 1.0 else {}
    card = make_card(
        name,
        args.task,
        result.config,
        **extra,
        density_scale=round(density_scale, 6) if args.task == "count" else None,
        diameter=round(diameter, 2),
        normalization=dict(norm),
        training={
            "data": f"BBBC039 train ({len(tr)} images), objects >= {args.min_size} px"
            + (f", resampled by {args.input_scale:g}" if args.input_scale != 1.0 else ""),
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "minutes": round(minutes, 1),
            "seed": args.seed,
            "command": command,
            "machine": f"{platform.machine()} CPU, {args.threads} thread(s), shared 2-core host",
            "settings": cfg.to_dict(),
            **({"count_calibration": calibration} if calibration else {}),
            "history": [
                {
                    "epoch": h["epoch"],
                    "loss": h["loss"],
                    **{k: v for k, v in h["metrics"].items() if isinstance(v, float)},
                }
                for h in result.history
            ],
        },
        metrics=card_metrics,
        description=preset["description"],
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_model(result.net, card, out / name, overwrite=True)
    print(f"saved {path}")
    print(json.dumps(card_metrics, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
