#!/usr/bin/env python
"""Calibrate and check ``count(..., uncertainty=True)``: is ``count_sd`` an honest error bar?

1. Count every image of the *train* splits (BBBC039 train, a seeded draw of DSB train,
   Aitslab train, VGG 001-100) and of the *val* splits (BBBC039 val, DSB val, Aitslab val,
   VGG test 101-200) with ``uncertainty=True`` and the package's defaults (nucleus size found
   automatically); keep per image the plain count, the eight augmentation counts and the truth
   (every annotated object). Rows are cached in ``--rows`` (JSON lines) so step 2 can be rerun.
2. Fit ``count_sd = sqrt((tta * tta_sd)^2 + (rel * count)^2 + abs^2)`` on the *train* rows
   only: for every ``tta`` and ``abs`` of a small grid, the smallest ``rel`` that puts
   ``--target`` of each train set's images within 2 sd; of those, the one with the smallest
   mean log sd (the sharpest error bars) wins. Val rows are never used for fitting.
3. Report per set, train and val: coverage (share of images with |count - truth| <= 2 sd),
   median sd, median |error|, and the same for the raw augmentation spread (tta = 1, no added
   terms). ``--write`` stores the fitted entry, keyed by the model's weights hash, in
   ``src/napari_nalu_count/infer/uncertainty_calibration.json`` (and as its default).

    python benchmarks/uncertainty_calibration.py --data ../shared/data \\
        --json docs/benchmarks/uncertainty_calibration.json --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SETS = ("bbbc039", "dsb", "aitslab", "vgg")
CAL_FILE = Path(__file__).resolve().parents[1] / (
    "src/napari_nalu_count/infer/uncertainty_calibration.json"
)


def load_split(root: Path, name: str, split: str, dsb_train: int, seed: int) -> list:
    from napari_nalu_count.bench.accuracy import load_set
    from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018, load_vgg

    if split == "val":
        return load_set(root, name)
    if name == "bbbc039":
        return load_bbbc039(root, "train", min_size=0)
    if name == "dsb":
        pool = load_dsb2018(root, "train")
        pick = np.sort(np.random.default_rng(seed).permutation(len(pool))[:dsb_train])
        return [pool[i] for i in pick]
    if name == "aitslab":
        return load_aitslab(root, "train")
    if name == "vgg":
        base = root / "vgg_cells" if (root / "vgg_cells").is_dir() else root
        return load_vgg(base, range(1, 101))
    raise ValueError(name)


def collect(args: argparse.Namespace, rows_path: Path) -> list[dict]:
    from napari_nalu_count.infer import count
    from napari_nalu_count.models import load_model

    model = load_model(args.model)
    sha = model.card.get("weights_sha256")
    done: dict[tuple, dict] = {}
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            if r.get("weights_sha256") == sha:
                done[(r["set"], r["split"], r["name"])] = r
    with rows_path.open("a") as fh:
        for split in ("train", "val"):
            for name in args.sets:
                samples = load_split(Path(args.data), name, split, args.dsb_train, args.seed)
                t0 = time.perf_counter()
                for s in samples:
                    key = (name, split, str(s.name))
                    if key in done:
                        continue
                    res = count(s.image, model, device="cpu", uncertainty=True)
                    row = {
                        "set": name,
                        "split": split,
                        "name": str(s.name),
                        "truth": float(s.count),
                        "count": float(res.count),
                        "tta_counts": [round(v, 4) for v in res.uncertainty_info["tta_counts"][0]],
                        "diameter": res.diameter,
                        "shape": list(np.shape(res.density)),
                        "weights_sha256": sha,
                    }
                    done[key] = row
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                print(
                    f"{split} {name}: {len(samples)} images, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    return [r for r in done.values() if r["set"] in args.sets]


def sd_of(rows: list[dict], tta: float, rel: float, abs_: float) -> np.ndarray:
    t = np.array([np.std(r["tta_counts"], ddof=1) for r in rows])
    c = np.clip(np.array([r["count"] for r in rows]), 0, None)
    return np.sqrt((tta * t) ** 2 + (rel * c) ** 2 + abs_**2)


def coverage(rows: list[dict], sd: np.ndarray) -> float:
    err = np.abs(np.array([r["count"] - r["truth"] for r in rows]))
    return float(np.mean(err <= 2 * sd))


def fit(train: dict[str, list[dict]], target: float) -> dict:
    """The sharpest (tta, rel, abs) whose 2-sd coverage is >= target on every train set."""
    best = None
    rels = np.round(np.arange(0.0, 0.6001, 0.0025), 4)
    for tta in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0):
        for abs_ in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
            for rel in rels:
                if all(
                    coverage(rows, sd_of(rows, tta, rel, abs_)) >= target for rows in train.values()
                ):
                    sharp = float(
                        np.mean([np.mean(np.log(sd_of(r, tta, rel, abs_))) for r in train.values()])
                    )
                    if best is None or sharp < best["mean_log_sd"]:
                        best = {"tta": tta, "rel": float(rel), "abs": abs_, "mean_log_sd": sharp}
                    break
    if best is None:
        raise SystemExit("no calibration in the grid reaches the target on every train set")
    return best


def table(by_set: dict[str, list[dict]], params: dict) -> dict[str, dict]:
    out = {}
    for name, rows in by_set.items():
        sd = sd_of(rows, params["tta"], params["rel"], params["abs"])
        raw = sd_of(rows, 1.0, 0.0, 0.0)
        err = np.abs(np.array([r["count"] - r["truth"] for r in rows]))
        truth = np.array([r["truth"] for r in rows])
        out[name] = {
            "n_images": len(rows),
            "coverage_2sd": round(coverage(rows, sd), 3),
            "median_sd": round(float(np.median(sd)), 2),
            "median_abs_err": round(float(np.median(err)), 2),
            "mean_true": round(float(np.mean(truth)), 1),
            "raw_tta_coverage_2sd": round(coverage(rows, raw), 3),
            "raw_tta_median_sd": round(float(np.median(raw)), 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    p.add_argument("--model", default="nuclei-count")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--dsb-train", type=int, default=150, help="DSB train images drawn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.85, help="2-sd coverage asked on train")
    p.add_argument(
        "--rows", default="docs/benchmarks/uncertainty_rows.jsonl", help="per-image rows (cache)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--write", action="store_true", help="store the fit in the package")
    args = p.parse_args(argv)
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = collect(args, Path(args.rows))
    split = {
        sp: {n: [r for r in rows if r["set"] == n and r["split"] == sp] for n in args.sets}
        for sp in ("train", "val")
    }
    params = fit(split["train"], args.target)
    from napari_nalu_count.models import load_model

    card = load_model(args.model).card
    report = {
        "benchmark": "uncertainty_calibration",
        "command": "python benchmarks/uncertainty_calibration.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s)",
        "model": args.model,
        "model_created": card.get("created"),
        "weights_sha256": card.get("weights_sha256"),
        "form": "count_sd = sqrt((tta * tta_sd)^2 + (rel * count)^2 + abs^2)",
        "fitted_on": "train splits: bbbc039 train, dsb train "
        f"({args.dsb_train} drawn, seed {args.seed}), aitslab train, vgg 001-100",
        "target_train_coverage": args.target,
        "calibration": {k: params[k] for k in ("tta", "rel", "abs")},
        "train": table(split["train"], params),
        "val": table(split["val"], params),
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    # the trade-off: one form has to cover VGG's systematic under-count; fitted without VGG
    # the error bars of the nuclei sets are much sharper and VGG is not covered
    others = {n: r for n, r in split["train"].items() if n != "vgg"}
    if len(others) < len(split["train"]) and others:
        alt = fit(others, args.target)
        report["alternative_without_vgg"] = {
            "calibration": {k: alt[k] for k in ("tta", "rel", "abs")},
            "val": table(split["val"], alt),
        }
    for sp in ("train", "val"):
        print(f"\n{sp}: set, images, coverage (raw TTA), median sd (raw), median |err|")
        for n, t in report[sp].items():
            cov, raw_cov = t["coverage_2sd"], t["raw_tta_coverage_2sd"]
            sd, raw_sd = t["median_sd"], t["raw_tta_median_sd"]
            print(
                f"  {n:8s} {t['n_images']:4d}  {cov:.2f} ({raw_cov:.2f})"
                f"  {sd:6.2f} ({raw_sd:.2f})  {t['median_abs_err']:6.2f}"
            )
    print("calibration:", report["calibration"])
    if "alternative_without_vgg" in report:
        alt = report["alternative_without_vgg"]
        print("fitted without vgg:", alt["calibration"])
        for n, t in alt["val"].items():
            print(f"  val {n:8s} coverage {t['coverage_2sd']:.2f}  median sd {t['median_sd']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.write:
        entry = {
            "name": args.model,
            "weights_sha256": card.get("weights_sha256"),
            "created": card.get("created"),
            **report["calibration"],
            "fitted_on": report["fitted_on"],
            "target_train_coverage": args.target,
            "command": report["command"],
        }
        table_ = json.loads(CAL_FILE.read_text()) if CAL_FILE.is_file() else {}
        models = [m for m in table_.get("models", []) if m.get("name") != args.model]
        table_ = {
            "about": "count_sd = sqrt((tta * tta_sd)^2 + (rel * count)^2 + abs^2); fitted on "
            "train splits by benchmarks/uncertainty_calibration.py; see docs/uncertainty.md",
            "default": {k: entry[k] for k in ("tta", "rel", "abs")},
            "models": models + [entry],
        }
        CAL_FILE.write_text(json.dumps(table_, indent=1) + "\n")
        print("wrote", CAL_FILE)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
