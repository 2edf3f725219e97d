"""Hot pixels and bright artefacts on the val images (round 19).

What a camera and a dirty sample add to an image, with the objects unchanged (so the truth
stays): ``hot``: 40 pixels set to the type's maximum (a camera's hot pixels, cosmic rays);
``blobs``: two Gaussian blobs (sigma 15-40 px) 8 times the image's 1-99.8 percentile range
(dust, a clump of dead cells, precipitated dye), clipped to the type (uint8 images are first
compressed to a quarter of their range, so that the blobs can stand above the nuclei as they
do on a 16-bit camera). Seeded per image. ``count()`` (default settings, size estimated) and,
for the first ``--seg-limit`` images of each set, ``segment()``, with the engine's two guards
(``OPTIONS["hot_pixels"]``, ``OPTIONS["bright_artefacts"]``) off and on. Relative count MAE
and bias per set and kind; segmentation F1@0.5 (matches pooled over the images).

    python benchmarks/notes/r19_artefacts.py --data ../shared/data \\
        --json docs/benchmarks/r19/artefacts.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from napari_nalu_count.bench.accuracy import seg_counts
from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.infer import count, engine, segment

KINDS = ("clean", "hot", "blobs")


def perturb(image: np.ndarray, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "clean":
        return image
    top = float(np.iinfo(image.dtype).max)
    if kind == "hot":
        out = image.copy()
        out.flat[rng.integers(0, out.size, 40)] = np.iinfo(image.dtype).max
        return out
    a = image.astype(np.float64)
    lo, hi = np.percentile(a, [1.0, 99.8])
    if image.dtype == np.uint8:
        a = lo + (a - lo) * 0.25
        hi = lo + (hi - lo) * 0.25
    h, w = a.shape
    yy, xx = np.ogrid[:h, :w]
    for _ in range(2):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 40)
        a += 8.0 * (hi - lo) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(np.rint(a), 0, top).astype(image.dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seg-limit", type=int, default=10)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {
        "bbbc039": load_bbbc039(args.data, "val", limit=args.limit),
        "dsb": load_dsb2018(args.data, "val", limit=args.limit),
        "aitslab": load_aitslab(args.data, "val", limit=args.limit),
    }
    old = dict(engine.OPTIONS)
    rows, summary, t0 = [], [], time.time()
    try:
        for name, samples in sets.items():
            for i, s in enumerate(samples):
                plane = s.image if s.image.ndim == 2 else s.image[..., 0]
                for kind in KINDS:
                    img = perturb(plane, kind, 1000 + i)
                    row = {"set": name, "name": s.name, "kind": kind, "true": len(s.dots)}
                    for on in (False, True):
                        engine.OPTIONS.update(hot_pixels=on, bright_artefacts=on)
                        tag = "on" if on else "off"
                        row[f"count_{tag}"] = float(count(img).count)
                        if i < args.seg_limit and s.labels is not None:
                            lab = segment(img).labels
                            row[f"seg_{tag}"] = seg_counts(s.labels, lab)["0.5"]
                    rows.append(row)
            for kind in KINDS:
                sel = [r for r in rows if r["set"] == name and r["kind"] == kind]
                t = np.array([r["true"] for r in sel], float)
                out = {"set": name, "kind": kind, "images": len(sel)}
                for tag in ("off", "on"):
                    c = np.array([r[f"count_{tag}"] for r in sel])
                    out[f"rel_mae_{tag}"] = float(np.abs(c - t).mean() / t.mean())
                    out[f"bias_{tag}"] = float((c - t).mean())
                    tp, fp, fn = np.sum(
                        [r[f"seg_{tag}"] for r in sel if f"seg_{tag}" in r] or [[0, 0, 0]], axis=0
                    )
                    out[f"f1_{tag}"] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None
                summary.append(out)
                print(
                    f"{name:8s} {kind:6s} count {out['rel_mae_off']:6.1%} -> "
                    f"{out['rel_mae_on']:6.1%}"
                    f"  bias {out['bias_off']:+7.1f} -> {out['bias_on']:+7.1f}"
                    + (
                        f"  F1 {out['f1_off']:.3f} -> {out['f1_on']:.3f}"
                        if out["f1_on"] is not None
                        else ""
                    ),
                    flush=True,
                )
    finally:
        engine.OPTIONS.clear()
        engine.OPTIONS.update(old)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": "python benchmarks/notes/r19_artefacts.py " + " ".join(argv or []),
                    "elapsed_s": time.time() - t0,
                    "summary": summary,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
