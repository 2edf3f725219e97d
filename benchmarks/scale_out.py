#!/usr/bin/env python
"""Many files: one process against a dask.distributed LocalCluster, same run, same files.

Writes N synthetic images (``napari_nalu_count.data.synthetic``, seeds 0..N-1) to a scratch
folder and runs the batch engine (``run_batch``, what ``nalu-count count|segment`` runs) on
all of them:

- ``1 process``: ``run_batch(files, ...)``, torch on every core of the machine;
- ``1 process, 1 torch thread``: the same with one torch thread (what each worker gets on a
  2-core machine; tells the gain of processes from the gain of threads);
- ``local:W (start included)``: ``run_batch(files, ..., client="local:W")``, i.e.
  ``--scheduler local:W``: a LocalCluster of W worker processes started for the run (its
  start-up and the model load on each worker are in the time), torch threads split between
  the workers;
- ``W workers, cluster up``: the same on a cluster started beforehand (steady state: what a
  long batch or an existing ``tcp://`` cluster pays per file).

Each configuration runs ``--repeats`` times, interleaved; the best and every time are kept,
and the tables are compared byte for byte. The machine's load average is read before and
after each run (``os.getloadavg``), since other work on the machine changes the figures.

    python benchmarks/scale_out.py [--n 200] [--size 256] [--workers 2] [--task count]
        [--repeats 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _images(folder: Path, n: int, size: int) -> list[Path]:
    import tifffile

    from napari_nalu_count.data.synthetic import synthetic_cells

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:04d}.tif"
        if not p.exists():
            cells = 20 + (i * 7) % 40
            img = synthetic_cells((size, size), n_cells=cells, diameter=14.0, seed=i).image
            tifffile.imwrite(p, img)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="number of files")
    p.add_argument("--size", type=int, default=256, help="image edge in pixels")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the cluster")
    p.add_argument("--task", choices=("count", "segment"), default="count")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--diameter", default=None, help="nucleus diameter (default: found per image)")
    p.add_argument("--folder", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import dask
    import torch
    from distributed import Client, LocalCluster

    from napari_nalu_count.infer.batch import run_batch
    from napari_nalu_count.infer.scaleout import _LOCAL_CONFIG, _cpu_count

    cores = _cpu_count()
    torch.set_num_threads(cores)
    scratch = Path(args.folder or tempfile.mkdtemp(prefix="nalu-scale-out-"))
    files = _images(scratch / f"imgs_{args.size}", args.n, args.size)
    model = "nuclei-count" if args.task == "count" else "nuclei-seg"
    diameter = float(args.diameter) if args.diameter else None
    kw = dict(device="cpu", diameter=diameter)
    w = args.workers

    run_batch(files[:2], args.task, model, **kw)  # warm up this process (imports, caches)
    with dask.config.set(_LOCAL_CONFIG):  # the workers --scheduler local:W starts
        cluster = LocalCluster(
            n_workers=w,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # no fixed port
            scheduler_kwargs={"dashboard": False},
            silence_logs=40,
        )
    client = Client(cluster)
    threads = max(1, cores // w)
    client.run(torch.set_num_threads, threads)  # the same split as --scheduler local:W
    run_batch(files[:w], args.task, model, client=client, **kw)  # model load, imports

    labels = [
        "1 process",
        "1 process, 1 torch thread",
        f"local:{w} (start included)",
        f"{w} workers, cluster up",
    ]
    times: dict[str, list[float]] = {k: [] for k in labels}
    loads: dict[str, list[list[float]]] = {k: [] for k in labels}
    tables: dict[str, bytes] = {}
    failures: dict[str, int] = {}
    for rep in range(args.repeats):
        for label in labels:
            out = scratch / f"table_{rep}_{labels.index(label)}.csv"
            k = labels.index(label)
            client_arg = {0: None, 1: None, 2: f"local:{w}", 3: client}[k]
            torch.set_num_threads(1 if k == 1 else cores)
            before = os.getloadavg()
            t0 = time.perf_counter()
            res = run_batch(files, args.task, model, csv=out, client=client_arg, **kw)
            dt = time.perf_counter() - t0
            torch.set_num_threads(cores)
            after = os.getloadavg()
            times[label].append(dt)
            loads[label].append([round(before[0], 2), round(after[0], 2)])
            tables[label] = out.read_bytes()
            failures[label] = len(res.skipped)
            print(f"{label:30s} run {rep + 1}: {dt:7.1f} s  {args.n / dt:6.2f} files/s  "
                  f"load {before[0]:.2f} -> {after[0]:.2f}", flush=True)  # fmt: skip
    client.close()
    cluster.close()

    px = args.n * args.size * args.size
    best = {k: min(v) for k, v in times.items()}
    base = best["1 process"]
    summary = {
        k: {
            "best_s": round(best[k], 2),
            "runs_s": [round(t, 2) for t in times[k]],
            "files_per_s": round(args.n / best[k], 2),
            "ms_per_file": round(1000 * best[k] / args.n, 1),
            "mpx_per_s": round(px / best[k] / 1e6, 3),
            "speedup_vs_1_process": round(base / best[k], 2),
            "loadavg_1min_before_after": loads[k],
            "files_failed": failures[k],
        }
        for k in labels
    }
    identical = len(set(tables.values())) == 1
    print()
    for k, v in summary.items():
        print(f"{k:30s} best {v['best_s']:7.1f} s  {v['files_per_s']:6.2f} files/s  "
              f"{v['ms_per_file']:6.1f} ms/file  x{v['speedup_vs_1_process']:.2f}")  # fmt: skip
    print(f"identical tables: {identical}")
    if args.json:
        record = {
            "command": "python benchmarks/scale_out.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {cores} cores, torch {torch.__version__}, "
            f"Python {platform.python_version()}",
            "files": f"{args.n} synthetic {args.size}x{args.size} uint16 TIFFs "
            f"(20-59 nuclei of 14 px, seeds 0-{args.n - 1})",
            "task": args.task,
            "model": model,
            "diameter": "found per image" if diameter is None else diameter,
            "one_process_torch_threads": cores,
            "workers": w,
            "torch_threads_per_worker": threads,
            "repeats": args.repeats,
            "results": summary,
            "identical_tables": identical,
            "loadavg_note": "os.getloadavg() 1-minute load before/after each run; other work "
            "shared the machine when it is above 0",
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
