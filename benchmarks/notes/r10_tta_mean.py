"""Would averaging the uncertainty passes make a better count? (val sets, 1 thread)

    python benchmarks/notes/r10_tta_mean.py [--data ../shared/data] [--json OUT]

Each val image of BBBC039, Aitslab and DSB is counted with ``count(image, uncertainty=True)``
(size estimated): the plain pass's count (what ``count()`` returns) and the mean of the eight
passes of :data:`napari_nalu_count.infer.uncertainty.TTA` plus the plain one (quarter turns,
flips, the model grid resampled 0.8x and 1.25x) are compared with the annotated object count:
relative MAE (MAE / mean true count) and bias per set.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import napari_nalu_count.data as D
from napari_nalu_count import count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    sets = (("bbbc039", D.load_bbbc039), ("aitslab", D.load_aitslab), ("dsb", D.load_dsb2018))
    for name, loader in sets:
        rows = []
        for s in loader(args.data, "val"):
            truth = int(np.count_nonzero(np.unique(s.labels)))
            r = count(s.image, uncertainty=True)
            passes = [float(v) for v in r.uncertainty_info["tta_counts"][0]]
            rows.append({"name": s.name, "truth": truth, "count": float(r.count), "passes": passes})
        out[name] = rows
        t = np.array([r["truth"] for r in rows], dtype=float)
        c = np.array([r["count"] for r in rows])
        m = np.array([np.mean(r["passes"]) for r in rows])
        print(
            f"{name}: {len(rows)} images; plain pass rel. MAE "
            f"{100 * np.abs(c - t).mean() / t.mean():.2f} % (bias {np.mean(c - t):+.2f}), mean "
            f"of the passes {100 * np.abs(m - t).mean() / t.mean():.2f} % "
            f"(bias {np.mean(m - t):+.2f})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
