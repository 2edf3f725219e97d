#!/usr/bin/env python
"""Record end-to-end benchmark figures (and a warm start's lineage) in a model card.

    python scripts/card_add_bench.py CARD.json --bench docs/benchmarks/X.json \\
        --method counter --how "nalu-count bench accuracy ..." [--parent PARENT_CARD.json]

``--bench``: a ``nalu-count bench accuracy`` JSON; its per-image rows of ``--method`` are
aggregated per set and scale (relative MAE, bias, point F1; segmentation F1 at 0.5 and 0.75 for
the segmenter) by the benchmark's own :func:`~napari_nalu_count.bench.accuracy.aggregate` and
stored under ``metrics.end_to_end``. ``--parent``: the card of the model the training started
from (``train_bundled.py --warm-start``); its training summary goes into
``training.warm_start`` and ``training.total_minutes`` adds both runs. Only the card changes;
the weights and their checksum are untouched. The card is rewritten atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def end_to_end(bench: dict, method: str, how: str) -> dict:
    from napari_nalu_count.bench.accuracy import aggregate

    sets: dict[str, dict] = {}
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in bench["images"]:
        groups.setdefault((row["set"], float(row["scale"])), []).append(row)
    for (name, scale), rows in sorted(groups.items()):
        found = aggregate(rows, [method])
        if not found or not found[0]["n_images"]:
            continue
        g = found[0]
        entry = {
            "n": g["n_images"],
            "rel_mae": round(g["rel_mae"], 4),
            "bias": round(g["bias"], 4),
            "point_f1": None if g["point_f1"] is None else round(g["point_f1"], 4),
        }
        if g.get("seg_f1_50") is not None:
            entry["seg_f1_50"] = round(g["seg_f1_50"], 4)
            entry["seg_f1_75"] = round(g["seg_f1_75"], 4)
        sets[f"{name}@{scale:g}x"] = entry
    return {"how": how, "sets": sets}


def lineage(parent: dict) -> dict:
    t = parent.get("training", {})
    keep = ("steps", "minutes", "command", "machine", "best_epoch", "seed")
    return {
        "name": parent.get("name"),
        "created": parent.get("created"),
        "weights_sha256": parent.get("weights_sha256"),
        **{k: t[k] for k in keep if k in t},
        **({"warm_start": t["warm_start"]} if "warm_start" in t else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("card")
    p.add_argument("--bench")
    p.add_argument("--method", default="counter")
    p.add_argument("--how", default="")
    p.add_argument("--parent")
    args = p.parse_args(argv)
    path = Path(args.card)
    card = json.loads(path.read_text())
    if args.bench:
        bench = json.loads(Path(args.bench).read_text())
        how = args.how or bench.get("command", "")
        card.setdefault("metrics", {})["end_to_end"] = end_to_end(bench, args.method, how)
    if args.parent:
        parent = json.loads(Path(args.parent).read_text())
        t = card.setdefault("training", {})
        t["warm_start"] = lineage(parent)
        total = float(t.get("minutes", 0.0)) + float(t["warm_start"].get("minutes", 0.0))
        inner = t["warm_start"].get("warm_start")
        while inner:
            total += float(inner.get("minutes", 0.0))
            inner = inner.get("warm_start")
        t["total_minutes"] = round(total, 1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
