#!/usr/bin/env python
"""Compare ``nalu-count bench accuracy`` JSON files side by side, per set, scale and method.

Each column is one JSON file (``LABEL=PATH``); each row a (set, scale, method) found in the
first file. Figures are recomputed from the per-image rows (``images``), so a subset can be
taken: ``--exclude-shape 603x1272`` leaves out the images of that shape (DSB's four tissue
images, see docs/models.md), ``--same-images`` keeps, for every scale, only the images that
every copy of that set uses (the 1x figure on the 25 images of the rescaled copies).

    python benchmarks/accuracy_compare.py before=docs/benchmarks/accuracy_before_none.json \\
        after=docs/benchmarks/accuracy_after_none.json --metric rel_mae
"""

from __future__ import annotations

import argparse
import json
import sys

METRICS = ("rel_mae", "bias", "point_f1", "seg_f1_50", "seg_f1_75")


def figures(rows: list[dict], method: str) -> dict[str, float | None]:
    """Relative MAE, bias, point F1 and segmentation F1 of one method over ``rows`` (images of
    one set and scale), computed by the benchmark's own
    :func:`~napari_nalu_count.bench.accuracy.aggregate`."""
    from napari_nalu_count.bench.accuracy import aggregate

    found = aggregate(rows, [method])
    if not found or not found[0]["n_images"]:
        return dict.fromkeys(METRICS)
    g = found[0]
    return {"n": g["n_images"], **{k: g[k] for k in METRICS}}


def fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric == "rel_mae":
        return f"{100 * v:.1f}%"
    if metric == "bias":
        return f"{v:+.2f}"
    return f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", help="LABEL=PATH")
    p.add_argument("--metric", choices=METRICS, default="rel_mae")
    p.add_argument("--methods", default=None, help="comma list (default: all in the first file)")
    p.add_argument("--exclude-shape", action="append", default=[], help="HxW at 1x, e.g. 603x1272")
    p.add_argument("--same-images", action="store_true")
    args = p.parse_args(argv)
    runs = []
    for spec in args.files:
        label, _, path = spec.partition("=")
        with open(path or label) as fh:
            runs.append((label if path else path, json.load(fh)))
    excluded = {tuple(int(x) for x in s.lower().split("x")) for s in args.exclude_shape}

    def rows_of(data: dict, set_: str, scale: float) -> list[dict]:
        ones = {r["name"]: tuple(r["shape"]) for r in data["images"] if r["scale"] == 1.0}
        rows = [r for r in data["images"] if r["set"] == set_ and r["scale"] == scale]
        rows = [r for r in rows if ones.get(r["name"]) not in excluded]
        if args.same_images:
            copies = {r["name"] for r in data["images"] if r["set"] == set_ and r["scale"] != 1.0}
            if copies:
                rows = [r for r in rows if r["name"] in copies]
        return rows

    first = runs[0][1]
    keys = sorted({(r["set"], r["scale"]) for r in first["images"]})
    methods = args.methods.split(",") if args.methods else None
    print(f"{args.metric} | " + " | ".join(label for label, _ in runs))
    print("| set | scale | method | images | " + " | ".join(label for label, _ in runs) + " |")
    print("|---|---|---|---|" + "---|" * len(runs))
    for set_, scale in keys:
        names = methods or sorted({m for r in rows_of(first, set_, scale) for m in r["methods"]})
        for method in names:
            cells, n = [], None
            for _, data in runs:
                f = figures(rows_of(data, set_, scale), method)
                n = n or f.get("n")
                cells.append(fmt(args.metric, f[args.metric]))
            print(f"| {set_} | {scale:g}x | {method} | {n or '-'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
