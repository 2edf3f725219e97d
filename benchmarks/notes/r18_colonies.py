"""Colonies of small nuclei against the island check (round 18).

A colony, spheroid or small organoid of packed nuclei is a round foreground island, as a
large textured nucleus is; the island check must not take it for one nucleus. For synthetic
colonies (:func:`napari_nalu_count.data.synthetic.synthetic_tissue` with ``colonies=9``) of
several colony and nucleus diameters, ``count()`` with the island check off and on: the
true number of nuclei, both counts, the cells per island the check measured and whether it
replaced the estimate.

    python benchmarks/notes/r18_colonies.py --json docs/benchmarks/r18/colonies.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_nalu_count.data.synthetic import synthetic_tissue
from napari_nalu_count.infer import count, engine
from napari_nalu_count.infer import size as size_mod
from napari_nalu_count.models import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--colonies", default="60,80,100,130", help="colony diameters (px)")
    p.add_argument("--nuclei", default="8,12,16", help="nucleus diameters (px)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--side", type=int, default=768)
    p.add_argument("--regressor", default=None, help="a size_regressor.json other than the bundled")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.regressor:
        size_mod.REGRESSOR_FILE = Path(args.regressor)
        size_mod.load_regressor.cache_clear()
    model = load_model("nuclei-count")
    rows, t0 = [], time.time()
    for cd in (float(v) for v in args.colonies.split(",")):
        for nd in (float(v) for v in args.nuclei.split(",")):
            if cd < 2 * nd:
                continue
            for seed in range(args.seeds):
                s = synthetic_tissue(
                    (args.side, args.side), seed, diameter=nd, colonies=9, colony_diameter=cd
                )
                row = {
                    "colony_d": cd,
                    "nucleus_d": nd,
                    "seed": seed,
                    "colonies": s.meta["colonies"],
                    "true": int(s.labels.max()),
                }
                for check in (False, True):
                    engine.OPTIONS["island_check"] = check
                    r = count(s.image, model, device="cpu")
                    key = "on" if check else "off"
                    row[f"count_{key}"] = float(r.count)
                    row[f"diameter_{key}"] = float(r.diameter)
                    if check:
                        row["islands"] = (r.size_estimate or {}).get("islands")
                engine.OPTIONS["island_check"] = True
                rows.append(row)
    lines = [
        "| colony d | nucleus d | nuclei per colony | rel. error, check off | on | cells per "
        "island | islands used |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cd in dict.fromkeys(r["colony_d"] for r in rows):
        for nd in dict.fromkeys(r["nucleus_d"] for r in rows if r["colony_d"] == cd):
            sub = [r for r in rows if r["colony_d"] == cd and r["nucleus_d"] == nd]
            t = sum(r["true"] for r in sub)
            off = sum(abs(r["count_off"] - r["true"]) for r in sub) / t
            on = sum(abs(r["count_on"] - r["true"]) for r in sub) / t
            per = t / sum(r["colonies"] for r in sub)
            cells = [
                f"{r['islands']['cells_per_island']:.0f}"
                if r["islands"] and r["islands"].get("cells_per_island") is not None
                else "-"
                for r in sub
            ]
            used = sum(bool(r["islands"] and r["islands"]["used"]) for r in sub)
            lines.append(
                f"| {cd:g} | {nd:g} | {per:.0f} | {100 * off:.1f} % | {100 * on:.1f} % | "
                f"{' / '.join(cells)} | {used} of {len(sub)} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "regressor": str(args.regressor or "bundled"),
                    "elapsed_s": round(time.time() - t0, 1),
                    "rows": rows,
                    "table": table,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
