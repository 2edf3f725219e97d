"""Round 11: one timing child for an A/B of two source trees in alternating processes.

    git worktree add /tmp/r10wt fbc20f2
    for i in 1 2 3; do for src in /tmp/r10wt/src src; do
        python benchmarks/notes/r11_children.py $src; done; done

Times count and segment of the 2048 px speed image (best of 3 after a warm-up) and the 64
small images of 256 px (best of 2), size estimated, 2 torch threads, with the package
imported from SRC; prints one JSON line (docs/benchmarks/r11/children_ab.txt).
"""

import json
import sys
import time

src = sys.argv[1]
sys.path.insert(0, src)
import torch  # noqa: E402

torch.set_num_threads(2)
import napari_nalu_count  # noqa: E402

assert napari_nalu_count.__file__.startswith(src), napari_nalu_count.__file__
from napari_nalu_count.data.synthetic import synthetic_cells  # noqa: E402
from napari_nalu_count.infer import count, segment  # noqa: E402

d = 28.66
big = synthetic_cells(
    (2048, 2048), n_cells=int(2048 * 2048 / (d * d * 4)), diameter=d, seed=0
).image
small = [
    synthetic_cells(
        (256, 256), n_cells=max(1, int(256 * 256 / (d * d * 4))), diameter=d, seed=i
    ).image
    for i in range(64)
]
out = {}
count(big, "nuclei-count")
segment(big)


def best(f, n=3):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


out["count"] = best(lambda: count(big, "nuclei-count"))
out["segment"] = best(lambda: segment(big))
[count(im, "nuclei-count") for im in small[:4]]
out["small"] = best(lambda: [count(im, "nuclei-count") for im in small], 2)
out["segment_count"] = int(segment(big).count)
out["count_value"] = float(count(big, "nuclei-count").count)
print(json.dumps(out))
