"""Where ``background="auto"`` acts (round 20): every image of BBBC039, DSB 2018 and Aitslab
(train and val, as stored), the VGG cells' test images (101-200), and the val images with the uneven
background and the vignetting of ``benchmarks/appearance_robustness.py``, counted with the
engine's defaults (size estimated, ``background="auto"``). Per group: how many planes the rule
flattened, the spread of its two measures (``CountResult.background_checks``), and, on the
images it flattened, the count's relative error with it and with ``background=False``.

    python benchmarks/notes/r20_background_rule.py --data ../shared/data \\
        --json docs/benchmarks/r20/background_rule.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_nalu_count.bench.accuracy import load_set
from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.infer import count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appearance_robustness import KINDS, TISSUE_SHAPE, perturb  # noqa: E402

LOADERS = {
    # every annotated object, micronuclei included, as `nalu-count bench accuracy` counts them
    "bbbc039": lambda root, split: load_bbbc039(root, split, min_size=0),
    "dsb": load_dsb2018,
    "aitslab": load_aitslab,
}


def _plane(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image[..., 0]


def _groups(root: str):
    """``(group, sample, image)`` for every image the rule is tried on."""
    for name, load in LOADERS.items():
        for split in ("train", "val"):
            for i, s in enumerate(load(root, split)):
                img = _plane(s.image)
                tissue = "_tissue" if list(img.shape) == TISSUE_SHAPE else ""
                yield f"{name}{tissue} {split} clean", s, img
                if split == "val":
                    for kind in ("uneven_bg", "vignetting"):
                        # appearance_robustness.py's seeds when it runs all its KINDS
                        seed = 1000 * KINDS.index(kind) + i
                        d = s.meta.get("diameter")
                        yield f"{name}{tissue} val {kind}", s, perturb(kind, img, d, seed)
    for s in load_set(root, "vgg", None):
        yield "vgg test clean", s, _plane(s.image)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = []
    for group, s, img in _groups(args.data):
        r = count(img)
        (check,) = r.background_checks or [{"amplitude": 0.0, "residual": 0.0, "uneven": False}]
        row = {
            "group": group,
            "name": s.name,
            "shape": list(img.shape),
            "true": len(s.dots) if s.dots is not None else None,
            "amplitude": check["amplitude"],
            "residual": check["residual"],
            "flattened": bool(r.corrections.get("uneven_background")),
            "count_auto": float(r.count),
        }
        if row["flattened"]:
            row["count_off"] = float(count(img, background=False).count)
            print(
                f"{group} {s.name[:16]} {img.shape}: amplitude {check['amplitude']:.3f}, "
                f"residual {check['residual']:.3f}; count {row['count_off']:.1f} -> "
                f"{row['count_auto']:.1f} (true {row['true']})",
                flush=True,
            )
        rows.append(row)
    summary = []
    print(
        "\n| group | images | flattened | amplitude (min / median / max) | residual | "
        "rel. error of the flattened, off -> auto |"
    )
    print("|---|---|---|---|---|---|")
    for group in dict.fromkeys(r["group"] for r in rows):
        sub = [r for r in rows if r["group"] == group]
        amp = np.array([r["amplitude"] for r in sub])
        res = np.array([r["residual"] for r in sub])
        flat = [r for r in sub if r["flattened"] and r["true"]]
        err = None
        if flat:
            true = np.array([r["true"] for r in flat], dtype=float)
            off = np.mean(np.abs([r["count_off"] for r in flat] - true) / true)
            auto = np.mean(np.abs([r["count_auto"] for r in flat] - true) / true)
            err = (float(off), float(auto))
        n_flat = sum(r["flattened"] for r in sub)
        summary.append(
            {"group": group, "images": len(sub), "flattened": n_flat, "rel_error_off_auto": err}
        )
        print(
            f"| {group} | {len(sub)} | {n_flat} | {amp.min():.3f} / {np.median(amp):.3f} / "
            f"{amp.max():.3f} | {res.min():.3f} / {np.median(res):.3f} / {res.max():.3f} | "
            + (f"{100 * err[0]:.1f} -> {100 * err[1]:.1f} %" if err else "-")
            + " |"
        )
    print(f"{time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": "python benchmarks/notes/r20_background_rule.py "
                    + " ".join(sys.argv[1:]),
                    "elapsed_s": round(time.time() - t0, 1),
                    "summary": summary,
                    "rows": rows,
                },
                indent=None,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
