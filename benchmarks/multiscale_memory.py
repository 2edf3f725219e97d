"""Peak resident memory of counting a large dask-backed image: blocks vs whole planes.

The image is an ``N x N`` uint16 dask array tiled from one 512 x 512 synthetic field (never a
numpy array of its own); its pyramid is ``[level0, level0[::2, ::2]]``. Each mode runs in a
fresh subprocess and reports ``ru_maxrss`` (peak RSS) and the time:

- ``import``: the process after importing the engine and loading the model (the baseline);
- ``whole``: ``count(level0)`` (a plain dask array: whole planes, the behaviour before);
- ``blocked``: ``count([level0, level1])`` (multiscale: level 0 in blocks of 2048 px);
- ``level1``: ``count([level0, level1], level=1)``.

``--model tiny`` swaps the bundled counter for a randomly initialised 2-scale network with 4 and
8 channels (saved to a temporary model directory in the child): the counts are meaningless, but
the engine's memory path (reading, normalising, tiling, the output density, peak finding) is the
same, and an 8192 px image is counted in about a minute on one core instead of ten, so the
whole-plane vs blocked difference is not hidden behind the network's activations. The JSON
records ``excess_mib``: peak RSS minus the ``import`` baseline minus the output density, i.e. what
a mode needs beyond what it must return.

    python benchmarks/multiscale_memory.py [--size 8192] [--model tiny] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
import dask
import dask.array as da
dask.config.set(scheduler="synchronous")
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count
from napari_nalu_count.models import load_model
mode, size = sys.argv[1], int(sys.argv[2])
tile_size = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "auto" else None
model_name = sys.argv[4] if len(sys.argv) > 4 else "nuclei-count"
if model_name == "tiny":
    import os, tempfile
    os.environ["NALU_COUNT_MODEL_DIR"] = tempfile.mkdtemp()
    from napari_nalu_count import models
    from napari_nalu_count.nn.registry import build_model, default_config
    config = default_config("unet_count")
    config["widths"] = [4, 8]
    torch.manual_seed(0)
    models.save_model(build_model(config), models.make_card("tiny", "count", config,
                      diameter=14.0), "tiny")
model = load_model(model_name)
tile = synthetic_cells((512, 512), n_cells=200, diameter=14.0, seed=0).image
lvl0 = da.tile(da.from_array(tile, chunks=512), (size // 512, size // 512))
lvl1 = lvl0[::2, ::2]
t0 = time.perf_counter()
res = None
if mode == "whole":
    res = count(lvl0, model, device="cpu", tile_size=tile_size)
elif mode == "blocked":
    res = count([lvl0, lvl1], model, device="cpu", tile_size=tile_size)
elif mode == "level1":
    res = count([lvl0, lvl1], model, device="cpu", level=1, tile_size=tile_size)
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = {"mode": mode, "size": size, "tile_size": tile_size or "auto",
       "peak_rss_mib": round(peak / 2**20, 1),
       "seconds": round(secs, 1)}
if res is not None:
    out.update(count=round(float(res.count), 1), density_mib=round(res.density.nbytes / 2**20, 1),
               level=res.level, level_scale=res.level_scale)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--modes", nargs="+", default=["import", "whole", "blocked", "level1"])
    ap.add_argument("--tile-size", default="auto", help="network tile edge (auto: the device's)")
    ap.add_argument("--model", default="nuclei-count", help="nuclei-count or tiny (see above)")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, "-c", CHILD, mode, str(args.size), args.tile_size, args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r["peak_rss_mib"] for r in rows if r["mode"] == "import"), None)
    if base is not None:
        for r in rows:
            if "density_mib" in r:
                r["excess_mib"] = round(r["peak_rss_mib"] - base - r["density_mib"], 1)
    result = {
        "command": f"python benchmarks/multiscale_memory.py --size {args.size} "
        f"--tile-size {args.tile_size} --model {args.model} --modes {' '.join(args.modes)}",
        "machine": f"{platform.machine()}, {platform.python_version()}, 1 torch thread, "
        "dask synchronous scheduler",
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
