"""Is the counter's under-count on crowded cells the density or the overlap? (round 19)

``synthetic_cells`` fields of 256 x 256 px, cells of 10 and 14 px covering 20-100 % of the
image (summed cell area), with centres allowed to overlap by ``--overlap`` of a diameter
(0.5: cells on top of one another, as in the VGG set; 0.15: touching nuclei), 4 seeds each;
``count()`` with the size estimated and given. Mean relative error of the count.

    python benchmarks/notes/r19_overlap_probe.py --overlap 0.5
    python benchmarks/notes/r19_overlap_probe.py --overlap 0.15 --cover 0.2,0.35,0.5,0.6
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--cover", default="0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for d in (10.0, 14.0):
        for cover in (float(v) for v in args.cover.split(",")):
            n = int(256 * 256 * cover / (np.pi * (d / 2) ** 2))
            est, given = [], []
            for seed in range(args.seeds):
                s = synthetic_cells((256, 256), n, d, seed=seed, overlap=args.overlap)
                est.append(count(s.image).count / n - 1)
                given.append(count(s.image, diameter=d).count / n - 1)
            print(
                f"d {d:4.0f} px, cover {cover:4.2f}, {n:4d} cells: estimated {np.mean(est):+6.1%}"
                f", given {np.mean(given):+6.1%}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
