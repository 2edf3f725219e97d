"""Segmenter rows of several ``nalu-count bench accuracy`` JSON files side by side.

    python benchmarks/notes/compare_segmenters.py A.json B.json ...

Per set and scale: count relative MAE, F1@0.5, F1@0.75 and seconds per image of the
``segmenter`` method, on all images and on DSB without its four tissue images (docs/models.md).
"""

import json
import sys

TISSUE = ("20b20ab0", "a102535b", "cb4df20a", "f29fd9c5")


def agg(path, method, drop_tissue=False):
    d = json.load(open(path))
    out = {}
    for r in d["images"]:
        if drop_tissue and any(r["name"].startswith(t) for t in TISSUE):
            continue
        m = r["methods"].get(method)
        if not m or "count" not in m:
            continue
        k = (r["set"], r["scale"])
        o = out.setdefault(
            k,
            {
                "ae": 0,
                "true": 0,
                "n": 0,
                "tp": 0,
                "fp": 0,
                "fn": 0,
                "tp75": 0,
                "fp75": 0,
                "fn75": 0,
                "s": 0,
            },
        )
        o["ae"] += abs(m["count"] - r["true_count"])
        o["true"] += r["true_count"]
        o["n"] += 1
        o["s"] += m["seconds"]
        if "seg" in m:
            a, b, c = m["seg"]["0.5"]
            o["tp"] += a
            o["fp"] += b
            o["fn"] += c
            a, b, c = m["seg"]["0.75"]
            o["tp75"] += a
            o["fp75"] += b
            o["fn75"] += c
    res = {}
    for k, o in out.items():
        f1 = (
            2 * o["tp"] / max(1, 2 * o["tp"] + o["fp"] + o["fn"])
            if o["tp"] + o["fp"] + o["fn"]
            else None
        )
        f75 = (
            2 * o["tp75"] / max(1, 2 * o["tp75"] + o["fp75"] + o["fn75"])
            if o["tp75"] + o["fp75"] + o["fn75"]
            else None
        )
        res[k] = (o["ae"] / max(1e-9, o["true"]) * 100, f1, f75, o["s"] / o["n"], o["n"])
    return res


method = "segmenter"
for drop in (False, True):
    rs = [agg(p, method, drop) for p in sys.argv[1:]]
    print(
        "without tissue" if drop else "all images",
        "| set scale | "
        + " | ".join(f"relMAE F1@.5 F1@.75 s/img ({p.split('/')[-1]})" for p in sys.argv[1:]),
    )
    for k in sorted(rs[0]):
        if drop and k[0] != "dsb":
            continue
        cells = []
        for r in rs:
            v = r.get(k)
            if v is None:
                cells.append("-")
                continue
            f50 = "-" if v[1] is None else f"{v[1]:.3f}"
            f75 = "-" if v[2] is None else f"{v[2]:.3f}"
            cells.append(f"{v[0]:.1f}% {f50} {f75} {v[3]:.2f}s n={v[4]}")
        print(k, " | ".join(cells))
