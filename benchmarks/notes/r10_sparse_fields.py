"""Sparse fields: a few nuclei in a large, otherwise empty image, counted four ways.

    python benchmarks/notes/r10_sparse_fields.py [--json OUT]

Images: :func:`napari_nalu_count.data.synthetic.synthetic_cells` (nuclei with camera noise,
uint16) of 512 to 2048 px holding 1 to 100 nuclei of 14 to 40 px, and the same counts of
Gaussian spots (background 100 +- 5 grey levels, peaks 400 above it) whose pixels above the
noise cover under 0.2 % of the image. Each is counted with ``count()`` with the size estimated
and with the true diameter given, under four settings of the two fixes of round 10:

- ``before``: the plain 1 / 99.8 percentiles and no background gate;
- ``normalization``: :func:`~napari_nalu_count.data.normalize.normalization_range` only;
- ``gate``: :func:`~napari_nalu_count.infer.engine.gate_background` only;
- ``both`` (the engine's default).

``segment()`` (its default settings, both fixes) is printed beside them for reference.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_nalu_count.data import normalize as N
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count, engine, segment
from napari_nalu_count.infer import size as S

CASES = (
    ("cells", 2048, 5, 28.0),
    ("cells", 2048, 20, 14.0),
    ("cells", 1024, 3, 28.0),
    ("cells", 1024, 10, 28.0),
    ("cells", 1024, 30, 28.0),
    ("cells", 1024, 100, 28.0),
    ("cells", 512, 1, 40.0),
    ("spots", 1024, 3, 20.0),
    ("spots", 512, 1, 20.0),
    ("spots", 2048, 10, 30.0),
    ("spots", 1024, 5, 12.0),
    ("spots", 1024, 2, 40.0),
)


def spots(size: int, n: int, d: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in rng.integers(int(d), size - int(d), (n, 2)):
        img += 400.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (d / 2.5) ** 2))
    return np.clip(img, 0, 65535).astype(np.uint16)


def configure(sparse_norm: bool, gate: bool) -> None:
    engine.OPTIONS["gate_background"] = gate
    # normalization_range reads SPARSE_SIGMAS at each call; below 0 its sparse test never passes
    N.SPARSE_SIGMAS = 6.0 if sparse_norm else -1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    settings = {
        "before": (False, False),
        "normalization": (True, False),
        "gate": (False, True),
        "both": (True, True),
    }
    rows = []
    print("image | truth | " + " | ".join(f"{k} est / given" for k in settings) + " | segment")
    for i, (kind, size, n, d) in enumerate(CASES):
        if kind == "cells":
            img = synthetic_cells((size, size), n_cells=n, diameter=d, seed=n).image
        else:
            img = spots(size, n, d, seed=i)
        row = {"kind": kind, "size": size, "truth": n, "diameter": d}
        for name, (sn, g) in settings.items():
            configure(sn, g)
            est = count(img)
            given = count(img, diameter=d)
            row[name] = {
                "estimated": float(est.count),
                "diameter_estimated": est.diameter,
                "given": float(given.count),
            }
        configure(True, True)
        row["segment"] = int(segment(img).count)
        rows.append(row)
        cells = " | ".join(f"{row[k]['estimated']:.1f} / {row[k]['given']:.1f}" for k in settings)
        print(f"{kind} {size} px, {n} x {d:g} px | {n} | {cells} | {row['segment']}", flush=True)
    for name in settings:
        for mode in ("estimated", "given"):
            err = [abs(r[name][mode] - r["truth"]) for r in rows]
            print(f"{name}, diameter {mode}: mean absolute error {np.mean(err):.2f} cells")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": rows, "size_estimator": str(S.REGRESSOR_FILE.name)}, f, indent=1)


if __name__ == "__main__":
    main()
