#!/usr/bin/env python
"""Round 14: the allocator while ``segment()`` cuts a large plane into blocks.

One run per process (peak RSS is per process): ``segment(image, "nuclei-seg")`` on a
``SIZE x SIZE`` uint16 image built from 1024 px synthetic tiles (350 nuclei of 28.66 px each, as
``benchmarks/memory_count.py`` builds its image), 2 torch threads, after one small warm-up
call; prints seconds, Mpx/s and the process's peak RSS (``ru_maxrss``) as one JSON line.

MODE: ``new`` (the engine as it is: :func:`~napari_nalu_count.infer.allocator.large_mapped`
around the blocks), ``paused`` (round 13's :func:`~napari_nalu_count.infer.allocator.paused`:
glibc's defaults inside), ``tuned`` (the tuning left as it is: mmap disabled, 256 MiB trim).

    for m in new paused new paused; do python benchmarks/notes/r14_segment_blocks.py $m 8192; done
"""

import contextlib
import json
import resource
import sys
import time

import numpy as np
import torch


def main() -> int:
    mode, size = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import allocator, engine, segment

    im = np.zeros((size, size), np.uint16)
    k = 0
    for y in range(0, size, 1024):
        for x in range(0, size, 1024):
            tile = synthetic_cells((1024, 1024), n_cells=350, diameter=28.66, seed=k).image
            im[y : y + 1024, x : x + 1024] = tile[: size - y, : size - x]
            k += 1
    if mode == "paused":
        engine._allocator.large_mapped = allocator.paused
    elif mode == "tuned":
        engine._allocator.large_mapped = contextlib.nullcontext
    elif mode != "new":
        raise SystemExit(f"MODE must be new, paused or tuned, got {mode!r}")
    segment(im[:512, :512], "nuclei-seg", device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    out = segment(im, "nuclei-seg", device="cpu")
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "mode": mode,
        "size": size,
        "seconds": round(dt, 2),
        "mpx_s": round(size * size / 1e6 / dt, 3),
        "peak_rss_mib": round(peak, 1),
        "rss_before_mib": round(before, 1),
        "count": int(out.count),
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
