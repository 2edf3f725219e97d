"""Round 11: ``classes_to_instances`` on the 2048 px speed image's segmenter output, three ways
(docs/benchmarks/speed.md): "old" (scikit-image's watershed of the whole plane, unseeded
components labelled again, small objects dropped and ids renumbered in two passes, as in round
10), "mid" (this round's seeded watershed, the rest as before), "new" (the shipped code).
Alternated 6 rounds in one process, 2 torch threads; prints best / median and whether the
labels are equal.

    python benchmarks/notes/r11_instances.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import allocator, segment
from napari_nalu_count.infer import postprocess as post

sys.path.insert(0, str(Path(__file__).parent))
import r11_peaks  # noqa: E402

NEW = (post._seeded_watershed, post._relabel)
ORIGINAL = post.classes_to_instances


def mid_watershed(elevation, markers, foreground, *, orphans=False):
    labels = NEW[0](elevation, markers, foreground)
    return r11_peaks.label_orphans(labels, foreground) if orphans else labels


def use(which: str) -> None:
    if which == "old":
        post._seeded_watershed = r11_peaks.reference_watershed
        post._relabel = r11_peaks.reference_relabel
    elif which == "mid":
        post._seeded_watershed = mid_watershed
        post._relabel = r11_peaks.reference_relabel
    else:
        post._seeded_watershed, post._relabel = NEW


def main() -> None:
    allocator.apply(True)
    torch.set_num_threads(2)
    captured = {}

    def spy(probs, **kw):
        captured["probs"], captured["kw"] = probs, kw
        return ORIGINAL(probs, **kw)

    post.classes_to_instances = spy
    d, size = 28.66, 2048
    img = synthetic_cells((size, size), n_cells=int(size * size / (d * d * 4)), diameter=d, seed=0)
    segment(img.image)
    post.classes_to_instances = ORIGINAL
    probs, kw = captured["probs"], captured["kw"]
    times: dict[str, list[float]] = {}
    outs = {}
    for _ in range(6):
        for which in ("old", "mid", "new"):
            use(which)
            t = time.perf_counter()
            outs[which] = ORIGINAL(probs, **kw)
            times.setdefault(which, []).append(time.perf_counter() - t)
    use("new")
    for which, v in times.items():
        print(
            f"classes_to_instances {which}: best {1000 * min(v):.1f} ms, "
            f"median {1000 * statistics.median(v):.1f} ms"
        )
    print(
        "labels equal:",
        np.array_equal(outs["old"], outs["new"]),
        np.array_equal(outs["mid"], outs["new"]),
    )


if __name__ == "__main__":
    main()
