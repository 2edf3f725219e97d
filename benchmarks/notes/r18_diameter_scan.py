"""The bundled counter on large textured nuclei given 0.8x-1.5x their true diameter (round 18).

At their own size the counter still reads the chromatin grain of large textured nuclei as
cells; this scan chose the island check's ``ISLAND_COARSEN``. For the first ``--limit`` val
images of BBBC039 (enlarged 3.12x, ~90 px nuclei) and Aitslab (2.01x), plain and with a mottled
0.6 / spots 0.8 texture (``r16_textured_large.py``'s textures and seeds), ``count(diameter=k x
true)``; prints the signed relative error of the summed count per k.

    python benchmarks/notes/r18_diameter_scan.py --data ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from r16_textured_large import textured_copies

from napari_nalu_count.bench.accuracy import load_set
from napari_nalu_count.infer import count
from napari_nalu_count.models import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--factors", default="0.8,1.0,1.25,1.5")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("nuclei-count")
    factors = [float(v) for v in args.factors.split(",")]
    textures = (("none", 0.0), ("mottled", 0.6), ("spots", 0.8))
    for set_, scale in (("bbbc039", 3.12), ("aitslab", 2.01)):
        samples = load_set(args.data, set_, args.limit)
        counts = {(kind, k): [] for kind, _ in textures for k in factors}
        truth = []
        for _i, s0, _s, d, variants in textured_copies(samples, scale, textures):
            truth.append(len(np.unique(s0.labels)) - 1)
            for kind, _amp, img in variants:
                for k in factors:
                    counts[kind, k].append(count(img, model, diameter=k * d, device="cpu").count)
        t = float(np.sum(truth))
        for kind, amp in textures:
            errors = "  ".join(
                f"{k:g}x: {100 * (np.sum(counts[kind, k]) - t) / t:+.0f} %" for k in factors
            )
            print(f"{set_} {kind} {amp:g}: {errors}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
