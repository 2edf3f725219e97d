#!/usr/bin/env python
"""What the automatic size estimate costs on real val images, against the whole count.

For the first ``--limit`` val images of BBBC039, DSB 2018 and Aitslab: ``count(image)`` with
the defaults (diameter estimated), its wall time, and ``CountResult.size_estimate["seconds"]``
(the regressor plus any check pass of the size head that the count did not reuse). Reports the
median share per set and the share of the summed times.

    python benchmarks/size_estimate_share.py --data ../shared/data \\
        --json docs/benchmarks/size_estimate_share.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.infer import count

LOADERS = {"bbbc039": load_bbbc039, "dsb": load_dsb2018, "aitslab": load_aitslab}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {
        "benchmark": "size_estimate_share",
        "command": "python benchmarks/size_estimate_share.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads",
        "sets": {},
    }
    for name, load in LOADERS.items():
        val = load(args.data, "val")[: args.limit]
        count(val[0].image)  # warm-up: model load, prepared network
        rows = []
        for s in val:
            t0 = time.perf_counter()
            r = count(s.image)
            total = time.perf_counter() - t0
            est = r.size_estimate or {}
            rows.append(
                {
                    "name": s.name,
                    "shape": list(s.image.shape),
                    "count_seconds": total,
                    "estimate_seconds": est.get("seconds"),
                    "regressor_seconds": est.get("regressor_seconds"),
                    "checks": len(est.get("size_head", [])),
                }
            )
        tot = np.array([r["count_seconds"] for r in rows])
        est = np.array([r["estimate_seconds"] for r in rows])
        summary = {
            "images": len(rows),
            "median_count_seconds": float(np.median(tot)),
            "median_estimate_seconds": float(np.median(est)),
            "median_share": float(np.median(est / tot)),
            "share_of_sums": float(est.sum() / tot.sum()),
        }
        out["sets"][name] = {"summary": summary, "images": rows}
        print(
            f"{name}: count {1e3 * summary['median_count_seconds']:.0f} ms, estimate "
            f"{1e3 * summary['median_estimate_seconds']:.0f} ms (median); share: median "
            f"{100 * summary['median_share']:.1f} %, "
            f"of the sums {100 * summary['share_of_sums']:.1f} %",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
