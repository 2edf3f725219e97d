"""Round foreground islands of a plane against the true diameter (the island check's table).

Round 17 left large textured nuclei (~90 px) counted at 0.2-0.55x their size: the size
regressor answers ~0.9x, but the counter's size check (its size head) reads the chromatin
texture as small cells and shrinks the estimate. Coarse pyramid levels smooth the texture
away; each nucleus then is one round island of the Otsu mask. This probe records, per image,
the true diameter, the regressor's estimate, the checked estimate of ``count()`` with the
island check off, and :func:`~napari_nalu_count.infer.size.island_diameter` of the whole
plane with the regressor's and with the checked estimate as the hint (and with the regressor's
and the engine's second measurement, ``isl_2``; and as the engine calls it, with ``need``,
``isl_need``: the same decisions), for plain val images
(1x, 2x, 3x copies), the textured large copies of ``r16_textured_large.py`` and synthetic
tissues. The island check's thresholds (``engine.ISLAND_*``) were chosen on this table;
``r16_textured_large.py --offset`` measures them on other images.

    python benchmarks/notes/r18_island_probe.py --data ../shared/data \
        --json docs/benchmarks/r18/island_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from r16_textured_large import textured_copies

from napari_nalu_count.bench.accuracy import load_set, rescaled_copy
from napari_nalu_count.data.synthetic import synthetic_tissue
from napari_nalu_count.infer import count, engine
from napari_nalu_count.infer import size as size_mod
from napari_nalu_count.models import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--copies", type=int, default=12)
    p.add_argument("--textured", type=int, default=12)
    p.add_argument("--tissue", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("nuclei-count")
    rows = []

    engine.OPTIONS["island_check"] = False  # the checked estimate before the islands

    def add(kind, img, d, n_true):
        t0 = time.perf_counter()
        r = count(img, model)
        est = r.size_estimate
        x = size_mod._normalise(img)
        rows.append(
            {
                "kind": kind,
                "d": float(d),
                "n": int(n_true),
                "reg": float(est.get("regressor", est.get("diameter", np.nan)) or np.nan),
                "ref": float(est["refined"]) if est.get("refined") else None,
                "count": float(r.count),
                "isl_reg": size_mod.island_diameter(x, est["regressor"]),
                "isl_ref": size_mod.island_diameter(x, est["refined"]),
                "isl_2": size_mod.island_diameter(
                    x, est["regressor"], remeasure=engine.ISLAND_REMEASURE
                ),
                "isl_need": size_mod.island_diameter(
                    x,
                    est["regressor"],
                    remeasure=engine.ISLAND_REMEASURE,
                    need=(
                        engine.ISLAND_VETO * est["refined"],
                        engine.ISLAND_MIN_COUNT,
                        engine.ISLAND_MIN_SAMPLES,
                    ),
                ),
                "sec": time.perf_counter() - t0,
            }
        )

    def ntrue(s):
        return int(s.labels.max()) if s.labels is not None else len(s.dots)

    for set_ in ("bbbc039", "dsb", "aitslab", "vgg"):
        samples = load_set(args.data, set_, None)
        for s in samples:
            d = s.meta.get("diameter")
            if d:
                add(f"{set_} 1x", s.image, d, ntrue(s))
        if set_ in ("bbbc039", "dsb"):
            for sc in (2.0, 3.0):
                copies, _ = rescaled_copy(samples[: args.copies], sc)
                for s in copies:
                    if s.meta.get("diameter"):
                        add(f"{set_} {sc:g}x", s.image, s.meta["diameter"], ntrue(s))
        print(set_, len(rows), flush=True)
    for set_, scale in (("bbbc039", 3.12), ("aitslab", 2.01)):
        samples = load_set(args.data, set_, args.textured)
        for _i, _s0, s, d, variants in textured_copies(samples, scale):
            for kind, amp, img in variants:
                add(f"{set_} {kind}{amp}", img, d, int(s.labels.max()))
        print("textured", len(rows), flush=True)
    for i in range(args.tissue):
        s = synthetic_tissue((768, 768), seed=90_000 + i)
        add("tissue", s.image, s.meta["diameter"], int(s.labels.max()))
    Path(args.json).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
