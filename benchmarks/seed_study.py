"""Seed study: instance segmentation with interior seeds vs. the counter's peaks (BBBC039).

``segment(image, "nuclei-seg", seeds="interior")`` against ``seeds="count"`` (count-guided
instance segmentation, seeds = ``nuclei-count``'s density peaks) with the bundled models, on the
38 BBBC039 val images at full resolution. Reported, for both object rules of docs/models.md
(annotated objects >= 40 px, and all annotated objects): instance F1 at IoU 0.5 and 0.75,
precision and recall at IoU 0.5 (TP / FP / FN summed over all images), and the count MAE of the
instances (number of predicted objects vs. true objects per image). Metrics come from
:mod:`napari_nalu_count.train.metrics`.

``--tune`` instead searches the watershed post-processing parameters on a subset of the TRAIN
split (never val): the networks run once per image, then every setting of
:func:`~napari_nalu_count.infer.postprocess.classes_to_instances` is scored on the cached
probabilities / peaks.

    python benchmarks/seed_study.py --data ../shared/data/bbbc039 --json seeds.json
    python benchmarks/seed_study.py --data ../shared/data/bbbc039 --tune --n-train 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

from napari_nalu_count.data.readers import load_bbbc039
from napari_nalu_count.train.metrics import count_metrics, instance_f1

RULES = (("objects >= 40 px", 40), ("all objects", 0))


def _keep_large(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Ground truth under an object rule: objects smaller than ``min_size`` px removed."""
    if min_size <= 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def score(truths: list[np.ndarray], preds: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Metrics of predicted label images against the ground truth, per object rule."""
    out = {}
    for rule, min_size in RULES:
        gts = [_keep_large(t, min_size) for t in truths]
        m = instance_f1(list(zip(gts, preds, strict=True)), (0.5, 0.75))
        n_true = [len(np.unique(g[g > 0])) for g in gts]
        n_pred = [len(np.unique(p[p > 0])) for p in preds]
        c = count_metrics(n_pred, n_true)
        out[rule] = {
            "f1_50": m[0.5].f1,
            "f1_75": m[0.75].f1,
            "precision": m[0.5].precision,
            "recall": m[0.5].recall,
            "count_mae": c["mae"],
            "count_bias": c["bias"],
            "mean_true": c["mean_true"],
            "tp": m[0.5].tp,
            "fp": m[0.5].fp,
            "fn": m[0.5].fn,
        }
    return out


def run_val(args: argparse.Namespace) -> dict:
    from napari_nalu_count.infer import segment
    from napari_nalu_count.models import load_model

    samples = load_bbbc039(args.data, "val", min_size=0, limit=args.limit)
    seg = load_model(args.seg_model)
    counter = load_model(args.count_model)
    truths = [s.labels for s in samples]
    results: dict = {}
    for mode in ("interior", "count"):
        preds, t0 = [], time.perf_counter()
        for s in samples:
            r = segment(s.image, seg, device="cpu", seeds=mode, count_model=counter)
            preds.append(r.labels)
        results[mode] = {"metrics": score(truths, preds), "seconds": time.perf_counter() - t0}
        print(f"seeds={mode}: {results[mode]['seconds']:.0f} s", flush=True)
    return {"split": f"BBBC039 val ({len(samples)} images, full resolution)", "modes": results}


def _probs_and_points(samples, seg, counter):
    """Class probabilities (as segment() computes them) and the counter's peaks, per image."""
    from napari_nalu_count.infer import count, engine

    dev = torch.device("cpu")
    net = engine.prepare_net(seg, dev)
    fwd = engine._forward_fn(net, "segment", 1.0)
    cached = []
    for s in samples:
        norm = engine._normalize(s.image, seg.card)
        x = torch.from_numpy(np.ascontiguousarray(norm))[None, None]
        probs = fwd(x)[0].numpy()
        points = count(s.image, counter, device="cpu").points
        cached.append((probs, points))
    return cached


def run_tune(args: argparse.Namespace) -> dict:
    from napari_nalu_count.infer.postprocess import classes_to_instances
    from napari_nalu_count.models import load_model

    names = [
        ln.strip()
        for ln in open(f"{args.data}/train.txt", encoding="utf-8").read().splitlines()
        if ln.strip()
    ]
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(names), size=min(args.n_train, len(names)), replace=False))
    samples = load_bbbc039(args.data, "train", min_size=0, names=[names[i] for i in pick])
    seg = load_model(args.seg_model)
    counter = load_model(args.count_model)
    t0 = time.perf_counter()
    cached = _probs_and_points(samples, seg, counter)
    print(f"networks on {len(samples)} train images: {time.perf_counter() - t0:.0f} s", flush=True)
    truths = [s.labels for s in samples]
    grid = {
        "seeds": ("interior", "count"),
        "min_size": (20, 40, 80),
        "interior_threshold": (None, 0.6, 0.7),
        "smooth": (0.0, 1.0, 2.0),
    }
    trials = []
    for combo in itertools.product(*grid.values()):
        kw = dict(zip(grid.keys(), combo, strict=True))
        preds = [
            classes_to_instances(p, points=pts if kw["seeds"] == "count" else None, **kw)
            for p, pts in cached
        ]
        m = score(truths, preds)
        trials.append({"params": kw, "metrics": m})
        r = m["objects >= 40 px"]
        print(f"{kw}: F1 {r['f1_50']:.4f} F1@.75 {r['f1_75']:.4f} MAE {r['count_mae']:.2f}")
    best = max(trials, key=lambda t: t["metrics"]["objects >= 40 px"]["f1_50"])
    print("best on train:", best["params"])
    return {
        "split": f"BBBC039 train subset ({len(samples)} images, rng seed 0)",
        "images": [s.name for s in samples],
        "grid": grid,
        "trials": trials,
        "best": best,
    }


def _table(res: dict) -> None:
    for rule, _ in RULES:
        print(f"\n{rule}")
        print(f"{'seeds':10s} {'F1@0.5':>7s} {'F1@0.75':>7s} {'P':>6s} {'R':>6s} {'MAE':>6s}")
        for mode, r in res["modes"].items():
            m = r["metrics"][rule]
            print(
                f"{mode:10s} {m['f1_50']:7.4f} {m['f1_75']:7.4f} {m['precision']:6.3f} "
                f"{m['recall']:6.3f} {m['count_mae']:6.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="BBBC039 root (images/, masks/, *.txt)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--seg-model", default="nuclei-seg")
    p.add_argument("--count-model", default="nuclei-count")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    p.add_argument("--limit", type=int, help="first N val images only (smoke test)")
    p.add_argument("--tune", action="store_true", help="tune post-processing on train images")
    p.add_argument("--n-train", type=int, default=20, help="train images for --tune (20)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run_tune(args) if args.tune else run_val(args)
    if not args.tune:
        _table(res)
    res["command"] = "python benchmarks/seed_study.py " + " ".join(argv or [])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
