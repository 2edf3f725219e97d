"""Child process of ``nalu-count bench speed --memory``: one count or segment call on a large
synthetic uint16 image, its peak resident memory and time as one JSON line on stdout.

    python -m napari_nalu_count.bench._memory_child count|segment SIZE THREADS [CONF [REPEATS]]

CONF: ``current`` (default), ``baseline`` (the previous engine's switches, glibc's allocator
defaults) or ``untuned`` (the
current engine with glibc's allocator left at its defaults, ``NALU_COUNT_MALLOC_TUNING=0``: a
process-wide setting, so compared in separate processes) or ``mmap`` (the tuned thresholds
with ``mmap`` still allowed for blocks above glibc's 32 MiB threshold cap, round 7's tuning:
``allocator.DISABLE_MMAP`` off). REPEATS > 1: one untimed call on the
whole image first, then the best of REPEATS timed calls (steady state, as ``bench speed``).

The image is tiled from 1024 px synthetic fields (nuclei of 28.66 px, as the speed image), so
building it costs no more than the image itself. After a warm-up call on a 256 px crop, the
kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), so ``peak_rss_mib`` is the
largest resident size of the whole process (Python, torch, models, the image, the result)
during the timed call(s); ``minor_faults`` are the page faults per timed call. Linux only.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


#: CONF argument -> the configuration's name in the JSON line (``bench speed`` reads it back)
CONFIGURATIONS = {
    "current": "current engine",
    "baseline": "previous engine",
    "untuned": "current engine, glibc allocator defaults",
    "mmap": "current engine, allocator tuned with mmap allowed",
}


def main(argv: list[str]) -> int:
    task, size, threads = argv[0], int(argv[1]), int(argv[2])
    conf = argv[3] if len(argv) > 3 else "current"
    if conf not in CONFIGURATIONS:
        raise SystemExit(f"unknown configuration {conf!r}: {', '.join(CONFIGURATIONS)}")
    repeats = max(1, int(argv[4])) if len(argv) > 4 else 1
    baseline = conf == "baseline"
    if conf != "current":
        from napari_nalu_count.infer import allocator

        if conf == "mmap":  # tuned thresholds, large blocks still mmapped (round 7's tuning)
            allocator.DISABLE_MMAP = False
        else:  # untuned, and the previous engine, which did not tune the allocator
            os.environ[allocator.ENV] = "0"
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from napari_nalu_count.bench.speed import BASELINE_OPTIONS, engine_config
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, segment

    d, tile = 28.66, 1024
    n_cells = int(tile * tile / (d * d * 4))
    image = np.zeros((size, size), dtype=np.uint16)
    k = 0
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            part = synthetic_cells((tile, tile), n_cells=n_cells, diameter=d, seed=k).image
            h, w = min(tile, size - y), min(tile, size - x)
            image[y : y + h, x : x + w] = np.asarray(part[:h, :w], dtype=np.uint16)
            k += 1
    fn = count if task == "count" else segment
    with engine_config(BASELINE_OPTIONS if baseline else {}):
        fn(image[:256, :256], device="cpu")  # warm up: imports, model, backend
        if repeats > 1:
            fn(image, device="cpu")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        before = _status("VmRSS")
        times, faults = [], []
        for _ in range(repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            res = fn(image, device="cpu")
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        seconds = min(times)
    peak = _status("VmHWM")
    from napari_nalu_count.infer import allocator as _alloc

    out = {
        "task": task,
        "size": size,
        "threads": threads,
        "configuration": CONFIGURATIONS[conf],
        "seconds": round(seconds, 3),
        "times": [round(t, 3) for t in times],
        "minor_faults": faults,
        "allocator_tuned": bool(_alloc.state()),
        "mpx_per_s": round(size * size / 1e6 / seconds, 3),
        "peak_rss_mib": round(peak / 2**20, 1),
        "rss_before_call_mib": round(before / 2**20, 1),
        "image_mib": round(image.nbytes / 2**20, 1),
        "count": float(np.sum(res.count)),
        "load_average": list(os.getloadavg()),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
