"""Size regressors side by side on the same val windows, plain and with chromatin texture.

The val splits of BBBC039, DSB 2018 and Aitslab at 0.5x, 1x, 2x and 3x (windows drawn once,
seed 0, the same for every regressor), as ``scripts/train_size_estimator.py`` evaluates them,
plus copies of the 2x and 3x windows (nuclei 30 px and more) with a chromatin texture
(:func:`napari_nalu_count.data.augment.chromatin_texture`): ``mottled`` (the kind
``train_size_estimator.py --texture`` trains on) and ``spots`` (never trained on: the held-out
kind), amplitudes 0.3 / 0.6 and 0.5 / 0.8. DSB's four tissue sections (603 x 1272) are a group
of their own (``dsb2018 tissue``; in round 16 they were in ``dsb2018``), and ``--tissue N``
synthetic tissue images (:func:`~napari_nalu_count.data.synthetic.synthetic_tissue`, seeds apart
from training's) another. Per regressor and group: median relative error of the diameter, share
within 15 % and 30 % (objects of 6-120 px).

    python benchmarks/notes/r16_size_texture.py --data ../shared/data \
        bundled=src/napari_nalu_count/infer/size_regressor.json new=/tmp/new.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from train_size_estimator import median_diameter, profiles, window_at_scale  # noqa: E402

from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018  # noqa: E402
from napari_nalu_count.data.augment import chromatin_texture  # noqa: E402
from napari_nalu_count.data.normalize import cast_like  # noqa: E402
from napari_nalu_count.data.synthetic import synthetic_tissue  # noqa: E402
from napari_nalu_count.infer import size as size_mod  # noqa: E402
from napari_nalu_count.infer.scale import labels_to_original  # noqa: E402

TEXTURES = (("mottled", 0.3), ("mottled", 0.6), ("spots", 0.5), ("spots", 0.8))


def val_rows(data: str, seed: int = 0, crop: int = 640):
    """(image, diameter, group) rows: plain at each scale, textured copies at 2x and 3x."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, loader in (
        ("bbbc039", load_bbbc039),
        ("dsb2018", load_dsb2018),
        ("aitslab", load_aitslab),
    ):
        for s in loader(data, "val"):
            if s.labels is None or s.labels.max() == 0:
                continue
            d0 = median_diameter(s.labels)
            for sc in (0.5, 1.0, 2.0, 3.0):
                out, lab = window_at_scale(s.image, s.labels, sc, rng, crop)
                if out is None:
                    continue
                d = d0 * sc
                variants = [("plain", out)]
                if sc >= 2.0:
                    lab_s = labels_to_original(lab, out.shape)
                    for kind, amp in TEXTURES:
                        tex = chromatin_texture(out, lab_s, d, amp, kind=kind, seed=len(rows))
                        variants.append((f"{kind}:{amp:g}", tex))
                for tag, img in variants:
                    if np.issubdtype(s.image.dtype, np.integer):
                        img = cast_like(img, s.image.dtype)
                    # DSB's four tissue sections (603 x 1272), the size estimate's hardest
                    # images, are a group of their own
                    tissue = name == "dsb2018" and s.image.shape == (603, 1272)
                    src = "dsb2018 tissue" if tissue else name
                    group = f"{src} x{sc:g}" if tag == "plain" else f"{tag} x{sc:g}"
                    rows.append((img, d, group))
    return rows


def tissue_rows(n: int, seed: int = 90_000):
    """(image, diameter, group) rows of ``n`` :func:`synthetic_tissue` images (seeds apart from
    ``train_size_estimator.py --tissue``'s) as drawn, nuclei of 5-24 px."""
    rows = []
    for i in range(n):
        s = synthetic_tissue((512, 512), seed=seed + i)
        rows.append((s.image, median_diameter(s.labels), "synthetic tissue x1"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("regressors", nargs="+", metavar="LABEL=JSON")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--tissue", type=int, default=40, help="synthetic tissue images (a group of their own)"
    )
    args = p.parse_args(argv)
    regs = {}
    for item in args.regressors:
        label, path = item.split("=", 1)
        regs[label] = size_mod.SizeRegressor(json.loads(Path(path).read_text()))
    rows = val_rows(args.data) + tissue_rows(args.tissue)
    feats: dict[tuple, np.ndarray] = {}
    for reg in regs.values():
        key = tuple(sorted(reg.profile_options.items(), key=str))
        if key not in feats:
            feats[key], _ = profiles(rows, reg.profile_options)
    d = np.array([r[1] for r in rows])
    groups = [r[2] for r in rows]
    ok = (d >= 6) & (d <= 120)
    report = {"command": "python " + " ".join(sys.argv), "groups": {}}
    header = (
        "| group | n | " + " | ".join(f"{k}: median err, within 15 / 30 %" for k in regs) + " |"
    )
    lines = [header, "|---|---:|" + "---|" * len(regs)]
    order = list(dict.fromkeys(groups))
    plain_all = np.array(
        [not any(g.startswith(t) for t in ("mottled", "spots", "synthetic")) for g in groups]
    )
    for g in ["all plain", *order]:
        m = ok & (plain_all if g == "all plain" else np.array([x == g for x in groups]))
        if not m.any():
            continue
        cells, entry = [], {"n": int(m.sum())}
        for label, reg in regs.items():
            X = feats[tuple(sorted(reg.profile_options.items(), key=str))]
            pred = np.exp([reg(x) for x in X[m]])
            rel = np.abs(pred / d[m] - 1.0)
            entry[label] = {
                "median_rel_err": round(float(np.median(rel)), 4),
                "within_15": round(float(np.mean(rel <= 0.15)), 3),
                "within_30": round(float(np.mean(rel <= 0.30)), 3),
                "median_ratio": round(float(np.median(pred / d[m])), 3),
            }
            e = entry[label]
            cells.append(
                f"{100 * e['median_rel_err']:.1f} %, {e['within_15']:.2f} / {e['within_30']:.2f}"
            )
        report["groups"][g] = entry
        lines.append(f"| {g} | {entry['n']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    report["table"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
