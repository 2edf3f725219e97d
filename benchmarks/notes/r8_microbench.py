"""Micro-timings behind speed.md round 8 (one process, switches flipped in place).

    python benchmarks/notes/r8_microbench.py [--threads 2] [--reps 6]

1. ``rescale_plane`` shrinking a 2048 px and an 8192 px plane with ``scale.FAST_DOWNSAMPLING``
   on and off (best of 3, torch not involved: SciPy/NumPy, one thread).
2. ``labels_to_original`` 1170 -> 2048 px against the old gather + ``np.unique`` relabel.
3. Alternating A/B of ``OPTIONS["split_decoders"]`` on the benchmark's 2048² synthetic image:
   count (2 x reps calls each) and segment (reps calls each), medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def best(fn, n=3):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def old_labels_to_original(labels, shape):
    mh, mw = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mh / shape[0]).astype(np.intp), mh - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mw / shape[1]).astype(np.intp), mw - 1)
    out = labels[rows][:, cols]
    ids = np.unique(out)
    ids = ids[ids != 0]
    if len(ids) and ids[-1] != len(ids):
        lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        out = lut[out]
    return out.astype(np.int32, copy=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, engine, scale, segment

    rng = np.random.default_rng(0)
    for size in (2048, 8192):
        a = rng.random((size, size), dtype=np.float32)
        for s in (0.43, 0.57, 0.76):
            t = {}
            for flag in (True, False):
                scale.FAST_DOWNSAMPLING = flag
                t[flag] = best(lambda a=a, s=s: scale.rescale_plane(a, s), 3 if size == 2048 else 1)
            scale.FAST_DOWNSAMPLING = True
            print(
                f"rescale_plane {size} px x{s}: banded {t[True] * 1e3:.1f} ms, "
                f"filter + zoom {t[False] * 1e3:.1f} ms"
            )
    lab = rng.integers(0, 3000, (1170, 1170)).astype(np.int32)
    lab[lab % 5 == 0] = 0
    new = best(lambda: scale.labels_to_original(lab, (2048, 2048)))
    old = best(lambda: old_labels_to_original(lab, (2048, 2048)))
    same = np.array_equal(
        scale.labels_to_original(lab, (2048, 2048)), old_labels_to_original(lab, (2048, 2048))
    )
    print(f"labels_to_original 1170 -> 2048: {new * 1e3:.1f} ms vs {old * 1e3:.1f} ms, same {same}")

    d = 28.66
    img = synthetic_cells(
        (2048, 2048), n_cells=int(2048 * 2048 / (d * d * 4)), diameter=d, seed=0
    ).image
    for flag in (True, False):
        engine.OPTIONS["split_decoders"] = flag
        count(img)
        segment(img)
    t: dict = {}
    for task, fn, reps in (("count", count, 2 * args.reps), ("segment", segment, args.reps)):
        for r in range(reps):
            for flag in (True, False) if r % 2 else (False, True):
                engine.OPTIONS["split_decoders"] = flag
                t0 = time.perf_counter()
                fn(img)
                t.setdefault((task, flag), []).append(time.perf_counter() - t0)
        on, off = statistics.median(t[(task, True)]), statistics.median(t[(task, False)])
        print(f"split_decoders {task}: off {off:.3f} s, on {on:.3f} s (median), {off / on:.2f}x")
    engine.OPTIONS["split_decoders"] = True


if __name__ == "__main__":
    main()
