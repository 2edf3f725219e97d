"""Volume counts of synthetic Z-stacks with the bundled ``nuclei-count`` (and an oracle).

Each stack holds ``N`` ellipsoidal nuclei spanning 3-9 planes (``data.synthetic_volume``). For
every stack the script reports the true number of nuclei, the sum of the per-plane counts (what
plane-by-plane counting gives), the volume count of ``count(..., axes="ZYX", volume=True)``
with the bundled model for three diameter settings (the true diameter given, ``"auto"``,
and None = the model card's default resampling), and the volume count of an oracle density
(one cell per visible cross-section) through the same 3-D peak finder, with relative errors
and the F1 of the volume points against the true centres (match radius: half a diameter).

    python benchmarks/volume_count.py [--seeds 0 1 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shape", type=int, nargs=3, default=[20, 256, 256])
    ap.add_argument("--cells", type=int, default=60)
    ap.add_argument("--diameter", type=float, default=16.0)
    ap.add_argument("--model", default="nuclei-count")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from napari_nalu_count.data.density import dots_to_density
    from napari_nalu_count.data.synthetic import synthetic_volume
    from napari_nalu_count.infer import count
    from napari_nalu_count.infer.postprocess import match_points
    from napari_nalu_count.infer.volume import estimate_z_extent, volume_peaks

    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        s = synthetic_volume(tuple(args.shape), n_cells=args.cells, diameter=args.diameter,
                             seed=seed)  # fmt: skip
        truth = s.meta["n_cells"]
        oracle = np.stack([dots_to_density(p, tuple(args.shape[1:]), sigma=args.diameter / 5)
                           for p in s.meta["plane_dots"]])  # fmt: skip
        zd = estimate_z_extent(s.meta["plane_dots"], args.diameter)
        opk = volume_peaks(oracle, args.diameter, zd)
        _, _, of1 = match_points(opk, s.dots, radius=args.diameter / 2)
        for mode in ("given", "auto", "default"):
            diameter = {"given": args.diameter, "auto": "auto", "default": None}[mode]
            t0 = time.perf_counter()
            res = count(s.image, args.model, axes="ZYX", device="cpu", volume=True,
                        diameter=diameter)  # fmt: skip
            secs = time.perf_counter() - t0
            _, _, f1 = match_points(res.volume_points, s.dots, radius=args.diameter / 2)
            row = {
                "seed": seed,
                "diameter_mode": mode,
                "true": truth,
                "cross_sections": int(sum(s.meta["z_planes"])),
                "plane_sum": round(float(np.sum(res.count)), 2),
                "model_volume": float(res.volume_count),
                "model_error_pct": round(100 * (float(res.volume_count) - truth) / truth, 2),
                "model_f1": round(f1, 3),
                "diameter_used": None if res.diameter is None else round(res.diameter, 2),
                "z_diameter_used": res.z_diameter,
                "oracle_volume": len(opk),
                "oracle_error_pct": round(100 * (len(opk) - truth) / truth, 2),
                "oracle_f1": round(of1, 3),
                "seconds": round(secs, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for mode in ("given", "auto", "default"):
        errs = [abs(r["model_error_pct"]) for r in rows if r["diameter_mode"] == mode]
        summary[mode] = float(np.mean(errs))
        print(f"model {args.model}, diameter {mode}: mean |volume count error| "
              f"{summary[mode]:.2f} %")  # fmt: skip
    oracle_abs = float(np.mean([abs(r["oracle_error_pct"]) for r in rows]))
    print(f"oracle density: mean |volume count error| {oracle_abs:.2f} %")
    mean_abs = summary
    out = {
        "command": "python benchmarks/volume_count.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None and k != "json"
        ),
        "machine": f"{platform.machine()} {platform.processor() or ''} torch "
        f"{torch.__version__}, 1 thread",
        "rows": rows,
        "mean_abs_error_pct_by_diameter_mode": mean_abs,
        "oracle_mean_abs_error_pct": oracle_abs,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
