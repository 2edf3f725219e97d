"""Round 9: 64 small images counted one call each, allocator with and without ``mmap``.

    python benchmarks/notes/r9_small_images_ab.py nommap|mmap [--after-big]

One process per configuration (the allocator setting is process-wide): ``nommap`` is the
engine's tuning (``allocator.DISABLE_MMAP`` on), ``mmap`` round 7's (large blocks still
mmapped). ``--after-big`` first segments and counts a 2048 px image twice, so the heap has
grown as in a long session. Prints the best of 3 passes over the 64 images of 256 px (nuclei
28.66 px, as ``bench speed --small 64``), in Mpx/s, with the size estimated and given. Run
alternately, e.g. ``for i in 1 2 3; do for c in nommap mmap; do python ... $c; done; done``.
"""

from __future__ import annotations

import json
import sys
import time

from napari_nalu_count.infer import allocator


def main() -> None:
    conf = sys.argv[1]
    allocator.DISABLE_MMAP = conf == "nommap"
    import torch

    torch.set_num_threads(2)
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, segment

    d, side = 28.66, 256
    cells = int(side * side / (d * d * 4))
    imgs = [
        synthetic_cells((side, side), n_cells=cells, diameter=d, seed=i).image for i in range(64)
    ]
    if "--after-big" in sys.argv:
        big = synthetic_cells((2048, 2048), n_cells=int(2048 * 2048 / (d * d * 4)), diameter=d)
        for _ in range(2):
            segment(big.image, diameter=d)
            count(big.image, diameter=d)
    for im in imgs[:4]:
        count(im)
    best = {}
    for mode in ("estimated", "given"):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for im in imgs:
                count(im, diameter=None if mode == "estimated" else d)
            times.append(time.perf_counter() - t0)
        best[mode] = round(64 * side * side / 1e6 / min(times), 3)
    print(json.dumps({"conf": conf, "after_big": "--after-big" in sys.argv, **best}))


if __name__ == "__main__":
    main()
