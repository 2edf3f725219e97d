"""Round 14: how much of the count error on a val set is the size estimate?

    python benchmarks/notes/r14_diameter.py [--sets aitslab,dsb,bbbc039] [--data ROOT]
        [--factors 0.85,1,1.15] [--threads 2] [--json OUT]

Every val image is counted with ``count()`` defaults (diameter estimated) and again with the
annotated diameter (median equivalent diameter of its instance masks) times each factor. Per
set: relative MAE (sum of |error| over sum of true counts, as ``bench accuracy``) and bias for
each setting; DSB's four 603 x 1272 tissue images (whose annotations leave out many dim nuclei)
are reported apart. Small objects: the share of annotated objects whose area is under a
quarter of the image's median object area (fragments, micronuclei).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import napari_nalu_count.data as D
from napari_nalu_count import count
from napari_nalu_count.data.masks import instance_sizes, typical_diameter

LOADERS = {"aitslab": D.load_aitslab, "bbbc039": D.load_bbbc039, "dsb": D.load_dsb2018}
TISSUE_SHAPE = (603, 1272)


def groups(root: str, names: list[str]) -> list[tuple[str, list]]:
    out = []
    for name in names:
        samples = LOADERS[name](root, "val")
        if name == "dsb":
            is_tissue = [np.asarray(s.image).shape[:2] == TISSUE_SHAPE for s in samples]
            out.append(
                ("dsb (no tissue)", [s for s, t in zip(samples, is_tissue, strict=True) if not t])
            )
            out.append(("dsb tissue", [s for s, t in zip(samples, is_tissue, strict=True) if t]))
        else:
            out.append((name, samples))
    return out


def summary(true: list[float], pred: list[float]) -> dict:
    t, p = np.asarray(true), np.asarray(pred)
    return {
        "rel_mae": float(np.abs(p - t).sum() / max(t.sum(), 1.0)),
        "bias": float((p - t).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--sets", default="aitslab,dsb,bbbc039")
    ap.add_argument("--factors", default="0.85,1,1.15")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    factors = [float(f) for f in args.factors.split(",")]
    report = {
        "command": "python benchmarks/notes/r14_diameter.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "data"),
        "sets": {},
    }
    for name, samples in groups(args.data, args.sets.split(",")):
        true, est, dias = [], [], []
        small = total = 0
        by_factor: dict[float, list[float]] = {f: [] for f in factors}
        for s in samples:
            labels = s.labels
            area = instance_sizes(labels)[1:]
            area = area[area > 0]
            small += int((area < 0.25 * np.median(area)).sum())
            total += len(area)
            true.append(float(len(area)))
            d = typical_diameter(labels)
            res = count(s.image)
            est.append(float(res.count))
            dias.append((d, float(res.diameter) if res.diameter is not None else float("nan")))
            for f in factors:
                by_factor[f].append(float(count(s.image, diameter=d * f).count))
        row = {
            "images": len(samples),
            "cells": int(sum(true)),
            "small_object_share": small / max(total, 1),
            "median_true_diameter": float(np.median([a for a, _ in dias])),
            "median_estimate_over_true": float(np.median([b / a for a, b in dias])),
            "estimated": summary(true, est),
        }
        for f in factors:
            row[f"true_d_x{f:g}"] = summary(true, by_factor[f])
        report["sets"][name] = row
        print(name, json.dumps(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
