#!/usr/bin/env python
"""Train the bundled generalist models ``nuclei-count`` and ``nuclei-seg`` on many sources.

Usage (the commands that produced the shipped models are in docs/models.md)::

    python scripts/train_bundled.py --task count --data ../shared/data --minutes 100 \\
        --out src/napari_nalu_count/models/bundled
    python scripts/train_bundled.py --task segment --data ../shared/data --minutes 100 \\
        --out src/napari_nalu_count/models/bundled

Data: the train splits of BBBC039 (110 images, U2OS, Hoechst, 16-bit), DSB 2018 stage 1
fluorescence (420 images, many labs and microscopes, 8-bit, 7-94 px nuclei) and Aitslab (30
images, another microscope, ~44 px), plus synthetic images from
:func:`napari_nalu_count.data.synthetic.synthetic_varied` (any size, texture, uneven
background, 8-bit cameras). Every annotated object counts (``--min-size``, default 0, drops
smaller ones from the targets). Model selection and the card's metrics use the val splits of
the three real sets, each reported separately.

The model grid: every image is resampled so that its median nucleus diameter (measured on its
masks) becomes ``--diameter`` pixels (the card's ``diameter``); training then jitters the scale
of every patch log-uniformly in ``--scale-jitter`` so that the automatic size estimate
(:func:`napari_nalu_count.infer.estimate_diameter`) may be off by that much at little cost.
The card says ``diameter_mode: "estimate"``: ``count(image)`` estimates the nucleus size of
the user's image and resamples it by ``diameter / estimate``.

The counter's loss is the density MSE plus ``--count-weight`` x smooth-L1 of the patch count;
the segmenter's cross-entropy (class weights 1/1/2) plus soft Dice. ``--calibrate-count``
multiplies the card's ``density_scale`` by the mean predicted / true count ratio on the whole
*training* images (val is not used). Selection: the epoch with the lowest mean (over the three
sets) relative count MAE, or the highest mean instance F1.
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

from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.data.readers import Sample
from napari_nalu_count.data.synthetic import synthetic_crowded, synthetic_varied
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.train import TrainConfig, evaluate, train
from napari_nalu_count.train.dataset import prepare, rescale_samples

ARCH = {
    "count": {
        "architecture": "unet_count",
        "in_channels": 1,
        "out_channels": 1,
        "activation": "leaky_relu",
        "unit": "nac",
        "widths": [16, 32, 64, 128],
        "fre": None,
        "deep_supervision": False,
        "size_head": True,
    },
    "segment": {
        "architecture": "se_unet",
        "in_channels": 1,
        "out_channels": 3,
        "activation": "relu",
        "unit": None,
        "widths": [16, 32, 64, 128],
        "fre": {"B": 32, "X": 4.0, "seed": 0},
        "deep_supervision": False,
    },
}
DEFAULT_DIAMETER = {"count": 12.0, "segment": 20.0}
SOURCES = ("bbbc039", "dsb2018", "aitslab", "synthetic", "crowded")
DESCRIPTION = {
    "count": "Generalist nucleus counter (density regression): counting U-Net with {unit} "
    "arithmetic residual units, trained on BBBC039, DSB 2018 fluorescence, Aitslab and "
    "synthetic nuclei at a {d:g} px nucleus diameter; finds the nucleus size itself.",
    "segment": "Generalist nucleus segmenter (background / interior / boundary -> instances): "
    "SE U-Net with Feature Random Enhancement, trained on BBBC039, DSB 2018 fluorescence, "
    "Aitslab and synthetic nuclei at a {d:g} px nucleus diameter; finds the nucleus size itself.",
}


def median_diameter(sample: Sample) -> float | None:
    """Median equivalent diameter (px) of the sample's instances, None without objects."""
    lab = sample.labels
    if lab is None or lab.max() == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    sizes = sizes[sizes > 0]
    return float(np.median(np.sqrt(4.0 * sizes / np.pi)))


def to_model_grid(samples: list[Sample], diameter: float, task: str, source: str) -> list[Sample]:
    """Resample every sample so its median object diameter becomes ``diameter`` px; images
    without objects use the median diameter of their source. ``meta['source']`` is set."""
    # crowded synthetic cells overlap, so their labels under-measure them: use the drawn size
    ds = [
        float(s.meta["diameter"])
        if s.meta.get("generator") == "synthetic_crowded"
        else median_diameter(s)
        for s in samples
    ]
    known = [d for d in ds if d]
    fallback = float(np.median(known)) if known else diameter
    out = []
    for s, d in zip(samples, ds, strict=True):
        factor = float(np.clip(diameter / (d or fallback), 1.0 / 16.0, 4.0))
        (r,) = rescale_samples([s], factor, task)
        r.meta = {
            **r.meta,
            "source": source,
            "diameter": d,
            "scale": factor,
            "size_ratio": (d or fallback) * factor / diameter,
        }
        out.append(r)
    return out


def synthetic_set(n: int, seed: int, min_size: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        side = int(rng.choice([256, 320, 384, 512]))
        s = synthetic_varied((side, side), seed=seed * 100_000 + i)
        if min_size > 1:
            from napari_nalu_count.data import instances_to_dots, remove_small_instances

            s.labels = remove_small_instances(s.labels, min_size)
            s.dots = instances_to_dots(s.labels)
        out.append(s)
    return out


def crowded_set(n: int, seed: int, **kwargs) -> list[Sample]:
    """``n`` :func:`~napari_nalu_count.data.synthetic.synthetic_crowded` images (256 or 320 px);
    ``kwargs``: its ``coverage`` and ``overlap`` ranges."""
    rng = np.random.default_rng(seed)
    return [
        synthetic_crowded((side, side), seed=seed * 100_000 + i, **kwargs)
        for i, side in enumerate(rng.choice([256, 320], size=n))
    ]


def load_sources(
    root: str,
    split: str,
    names: list[str],
    min_size: int,
    limit,
    n_synth: int,
    n_crowded: int = 0,
    crowded: dict | None = None,
):
    loaders = {"bbbc039": load_bbbc039, "dsb2018": load_dsb2018, "aitslab": load_aitslab}
    data = {}
    for name in names:
        if name == "synthetic":
            if split == "train" and n_synth > 0:
                data[name] = synthetic_set(n_synth, 1, min_size)
            continue
        if name == "crowded":
            if split == "train" and n_crowded > 0:
                data[name] = crowded_set(n_crowded, 2, **(crowded or {}))
            continue
        data[name] = loaders[name](root, split, min_size=min_size, limit=limit)
    return data


def textured_copies(
    samples: list[Sample], share: float, seed: int, min_diameter: float = 20.0
) -> list[Sample]:
    """Copies of about ``share`` of the samples whose nuclei are at least ``min_diameter`` px,
    with a ``mottled`` chromatin texture (:func:`~napari_nalu_count.data.augment.chromatin_texture`,
    amplitude 0.15-0.8, grain 0.05-0.15 diameters) at their own resolution; the objects do not
    move, so dots and labels are kept. ``spots`` is left out of training (the held-out kind)."""
    import copy

    from napari_nalu_count.data.augment import chromatin_texture

    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        d = median_diameter(s)
        if d is None or d < min_diameter or rng.random() >= share:
            continue
        c = copy.copy(s)
        c.image = chromatin_texture(
            s.image,
            s.labels,
            d,
            float(rng.uniform(0.15, 0.8)),
            kind="mottled",
            grain=float(rng.uniform(0.05, 0.15)),
            seed=rng,
        )
        c.name = f"{s.name}+texture"
        c.meta = {**s.meta, "texture": True}
        out.append(c)
    return out


def calibrate_count(net, train_items, density_scale: float) -> tuple[float, dict]:
    """``(calibrated density_scale, record)`` from the mean predicted / true count on the whole
    training images (one scalar; val is not used)."""
    m = evaluate(net, train_items, "count", density_scale=density_scale)
    ratio = (m["mean_true"] + m["bias"]) / m["mean_true"]
    record = {
        "images": int(m["n_images"]),
        "train_bias_before": round(float(m["bias"]), 3),
        "train_mae_before": round(float(m["mae"]), 3),
        "ratio": round(float(ratio), 6),
        "training_density_scale": density_scale,
    }
    if not 0.5 <= ratio <= 2.0:
        record["skipped"] = "ratio outside [0.5, 2]"
        return float(density_scale), record
    return float(density_scale * ratio), record


def _appearance_overrides(text: str | None) -> dict:
    """``noise=0.2,saturate=0.3:0.9`` -> ``{"noise": 0.2, "saturate": [0.3, 0.9]}``, checked
    against :class:`~napari_nalu_count.data.augment.Appearance`'s fields."""
    import dataclasses

    from napari_nalu_count.data.augment import Appearance

    if not text:
        return {}
    fields = {f.name for f in dataclasses.fields(Appearance) if f.init}
    out: dict = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in fields or not value:
            raise SystemExit(f"--appearance-set: {item!r} is not FIELD=VALUE of {sorted(fields)}")
        if ":" in value:
            lo, hi = value.split(":")
            kind = int if key == "levels" else float
            out[key] = [kind(lo), kind(hi)]
        else:
            out[key] = float(value)
    Appearance(**out)  # refuse bad values before training starts
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=("count", "segment"), required=True)
    p.add_argument(
        "--data", required=True, help="folder holding bbbc039/, dsb2018_train/, aitslab/"
    )
    p.add_argument(
        "--sources",
        default="bbbc039,dsb2018,aitslab,synthetic",
        help="comma list of " + ", ".join(SOURCES),
    )
    p.add_argument("--weights", default="bbbc039:0.25,dsb2018:0.4,aitslab:0.2,synthetic:0.15")
    p.add_argument("--synthetic", type=int, default=240, help="synthetic training images")
    p.add_argument(
        "--crowded",
        type=int,
        default=0,
        help="synthetic_crowded training images (overlapping cells; needs 'crowded' in "
        "--sources and a weight in --weights)",
    )
    p.add_argument("--crowded-coverage", default="0.2,0.7", help="summed cell area / image")
    p.add_argument("--crowded-overlap", default="0.3,0.8", help="allowed overlap range")
    p.add_argument("--out", default="src/napari_nalu_count/models/bundled")
    p.add_argument("--name", default=None)
    p.add_argument("--minutes", type=float, default=100.0, help="wall-clock training budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--epochs", type=int, default=10_000, help="upper bound; the budget decides")
    p.add_argument(
        "--steps", type=int, default=None, help="a step budget instead of --minutes (pilots)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="at most N images per set (smoke)")
    p.add_argument("--diameter", type=float, default=None, help="nucleus diameter on the grid")
    p.add_argument("--scale-jitter", default="0.7,1.45")
    p.add_argument("--wide-jitter", default="0.3,3.0", help="size-head patches (counter)")
    p.add_argument("--wide-prob", type=float, default=0.25)
    p.add_argument("--no-size-head", action="store_true")
    p.add_argument("--unit", default=None, help="counter: nac, nau, nalu, ... or none (ReLU)")
    p.add_argument("--widths", default=None, help="e.g. 16,32,64,128")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sigma", type=float, default=2.0, help="density target sigma (grid px)")
    p.add_argument("--count-weight", type=float, default=0.01)
    p.add_argument(
        "--edge-margin",
        type=float,
        default=0.0,
        help="counter: grid px along patch sides inside the image left out of the loss",
    )
    p.add_argument("--no-appearance", action="store_true")
    p.add_argument("--appearance-p", type=float, default=0.35, help="probability per effect")
    p.add_argument(
        "--appearance-dim",
        type=float,
        default=0.0,
        help="lowest nucleus gain after normalisation (0: off), see data.augment.Appearance",
    )
    p.add_argument(
        "--appearance-set",
        default=None,
        metavar="K=V,...",
        help="other strengths of data.augment.Appearance, e.g. noise=0.2,blur=2,background=0.6 "
        "(ranges as lo:hi, e.g. saturate=0.3:0.9)",
    )
    p.add_argument(
        "--warm-start",
        default=None,
        metavar="NAME|PATH",
        help="start from this model's weights and architecture (e.g. the bundled model)",
    )
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.0, help="weight EMA decay (0: off)")
    p.add_argument("--calibrate-count", action="store_true")
    p.add_argument(
        "--small-weight",
        type=float,
        default=0.0,
        help="segmenter: extra loss weight on objects under --small-size px and a 1 px ring",
    )
    p.add_argument("--small-size", type=float, default=8.0, help="grid px (equivalent diameter)")
    p.add_argument("--fre-b", type=int, default=None)
    p.add_argument("--fre-x", type=float, default=None)
    p.add_argument(
        "--texture",
        type=float,
        default=0.0,
        help="add a chromatin-textured copy of this share of the training images whose nuclei "
        "are 20 px or more (large nuclei at high magnification are mottled, not smooth)",
    )
    p.add_argument(
        "--texture-sources",
        default=None,
        help="comma list: only these sources get --texture copies (default: every source)",
    )
    p.add_argument("--log-json", default=None, help="write the history here as it grows")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    task = args.task
    diameter = args.diameter or DEFAULT_DIAMETER[task]
    config = json.loads(json.dumps(ARCH[task]))
    if args.unit is not None:
        config["unit"] = None if args.unit.lower() in ("none", "relu") else args.unit
    if args.widths:
        config["widths"] = [int(v) for v in args.widths.split(",")]
    if task == "segment" and (args.fre_b is not None or args.fre_x is not None):
        config["fre"] = {
            "B": args.fre_b if args.fre_b is not None else config["fre"]["B"],
            "X": args.fre_x if args.fre_x is not None else config["fre"]["X"],
            "seed": 0,
        }
    name = args.name or ("nuclei-count" if task == "count" else "nuclei-seg")
    names = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = sorted(set(names) - set(SOURCES))
    if bad:
        p.error(f"unknown sources {bad}")
    weights = {k: float(v) for k, v in (kv.split(":") for kv in args.weights.split(","))}
    weights = {k: v for k, v in weights.items() if k in names}

    t_load = time.time()
    crowded = {
        k: tuple(float(v) for v in getattr(args, f"crowded_{k}").split(","))
        for k in ("coverage", "overlap")
    }
    tr_raw = load_sources(
        args.data, "train", names, args.min_size, args.limit, args.synthetic, args.crowded, crowded
    )
    if args.texture > 0:
        tex_sources = (
            {v.strip() for v in args.texture_sources.split(",")} if args.texture_sources else None
        )
        for k, src in enumerate(list(tr_raw)):
            if tex_sources is not None and src not in tex_sources:
                continue
            extra = textured_copies(tr_raw[src], args.texture, seed=args.seed * 1000 + k)
            print(f"{src}: {len(extra)} textured copies", flush=True)
            tr_raw[src] = tr_raw[src] + extra
    va_raw = load_sources(args.data, "val", names, args.min_size, args.limit, 0)
    tr = [s for src, ss in tr_raw.items() for s in to_model_grid(ss, diameter, task, src)]
    va = [s for src, ss in va_raw.items() for s in to_model_grid(ss, diameter, task, src)]
    summary = {
        src: {
            "train_images": len(tr_raw.get(src, [])),
            "val_images": len(va_raw.get(src, [])),
            "train_objects": int(sum(len(s.dots) for s in tr_raw.get(src, []))),
        }
        for src in names
    }
    print(f"loaded in {time.time() - t_load:.0f}s: {summary}", flush=True)
    lo, hi = (float(v) for v in args.scale_jitter.split(","))
    settings = dict(
        batch_size=args.batch,
        patch_size=args.patch,
        lr=args.lr,
        min_lr=1e-5,
        warmup_steps=args.warmup,
        scale_jitter=[lo, hi],
        appearance=None
        if args.no_appearance
        else {
            "p": args.appearance_p,
            **({"dim": args.appearance_dim} if args.appearance_dim else {}),
            **_appearance_overrides(args.appearance_set),
        },
        source_weights=weights,
        monitor="mre_mean" if task == "count" else "f1_mean",
        ema=args.ema,
    )
    if task == "count":
        settings.update(
            sigma=args.sigma,
            density_scale=100.0,
            count_weight=args.count_weight,
            edge_margin=args.edge_margin,
        )
        if args.no_size_head:
            config["size_head"] = False
        else:
            wlo, whi = (float(v) for v in args.wide_jitter.split(","))
            settings.update(wide_jitter=[wlo, whi], wide_prob=args.wide_prob)
    else:
        settings.update(dice=True, class_weights=[1.0, 1.0, 2.0])
        if args.small_weight:
            settings.update(small_weight=args.small_weight, small_size=args.small_size)
    epochs, minutes_budget = args.epochs, args.minutes
    if args.steps is not None:
        epochs, minutes_budget = max(1, args.steps // args.steps_per_epoch), None
    cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=args.steps_per_epoch,
        patience=10_000,
        seed=args.seed,
        max_minutes=minutes_budget,
        **settings,
    )
    history_log: list[dict] = []

    def progress(ev: dict) -> None:
        if ev["kind"] == "step" and ev["step"] % 50 == 0:
            print(f"  step {ev['step']:6d} loss {ev['loss']:.4f} lr {ev['lr']:.2e}", flush=True)
        elif ev["kind"] == "epoch":
            m = {k: round(v, 4) for k, v in ev["metrics"].items() if isinstance(v, float)}
            star = " *" if ev["best"] else ""
            print(
                f"epoch {ev['epoch']} step {ev['step']} loss {ev['loss']:.4f} {m}{star}", flush=True
            )
            history_log.append({"epoch": ev["epoch"], "step": ev["step"], "loss": ev["loss"], **m})
            if args.log_json:
                Path(args.log_json).write_text(json.dumps(history_log, indent=1))

    start: object = config
    if args.warm_start:
        from napari_nalu_count.models import load_model

        start = load_model(args.warm_start)
        if start.task != task:
            p.error(f"--warm-start {args.warm_start} is a {start.task!r} model, not {task!r}")
        config = dict(start.config)
        print(f"warm start from {args.warm_start}: {config}", flush=True)
    t0 = time.time()
    result = train(start, tr, va, task, cfg, callback=progress)
    minutes = (time.time() - t0) / 60
    print(f"trained {result.steps} steps in {minutes:.1f} min; best epoch {result.best_epoch}")

    norm = cfg.normalization
    density_scale = cfg.density_scale
    calibration = None
    if task == "count" and args.calibrate_count:
        tr_items = prepare(tr, task, normalization=norm)
        density_scale, calibration = calibrate_count(result.net, tr_items, cfg.density_scale)
        print(f"count calibration on the training images: {calibration}", flush=True)
    metrics = evaluate(
        result.net, prepare(va, task, normalization=norm), task, density_scale=density_scale
    )
    card_metrics = {
        "split": "val splits of "
        + ", ".join(s for s in names if s != "synthetic")
        + f" (all annotated objects >= {args.min_size} px), each resampled to the model grid "
        "by its true median diameter; full per-set results: nalu-count bench accuracy",
        **{k: v for k, v in metrics.items() if not isinstance(v, list)},
    }
    command = "python scripts/train_bundled.py " + " ".join(sys.argv[1:] if argv is None else argv)
    card = make_card(
        name,
        task,
        result.config,
        density_scale=round(density_scale, 6) if task == "count" else None,
        diameter=round(diameter, 2),
        diameter_mode="estimate",
        scale_jitter=[lo, hi],
        normalization=dict(norm),
        training={
            "data": summary,
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "minutes": round(minutes, 1),
            "seed": args.seed,
            "command": command,
            "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), "
            f"{args.threads} torch thread(s), 2-core host",
            "settings": cfg.to_dict(),
            **({"count_calibration": calibration} if calibration else {}),
            "history": history_log,
        },
        metrics=card_metrics,
        description=DESCRIPTION[task].format(unit=str(config.get("unit")).upper(), d=diameter),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_model(result.net, card, out / name, overwrite=True)
    print(f"saved {path}")
    print(json.dumps(card_metrics, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
