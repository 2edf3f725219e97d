"""Large, textured nuclei: what chromatin texture does to the size estimate and the count.

The issue's worst out-of-lab set had ~90 px nuclei with visible texture. Here val images are
enlarged so that their nuclei are about ``--diameter`` px (BBBC039 val x ~3, Aitslab val x ~2)
and given a chromatin texture inside every annotated object
(:func:`napari_nalu_count.data.augment.chromatin_texture`: ``mottled`` band-passed noise or
bright ``spots``, at amplitude ``amp``); ``none`` is the plain enlarged copy. The objects do
not move, so the truth is the annotation's object count. ``count()`` defaults (diameter
estimated) and, beside it, the true diameter given. Relative MAE and the median estimate /
true diameter per set and texture.

    python benchmarks/notes/r16_textured_large.py --data ../shared/data \
        --json docs/benchmarks/r16/textured_large.json [--regressor size_regressor.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_nalu_count.bench.accuracy import load_set, seg_counts
from napari_nalu_count.data.augment import chromatin_texture
from napari_nalu_count.infer import count, engine, segment
from napari_nalu_count.infer import size as size_mod
from napari_nalu_count.models import load_model
from napari_nalu_count.train.dataset import rescale_samples


def parse_textures(text: str) -> list[tuple[str, float]]:
    out = []
    for part in text.split(","):
        if part.strip() in ("", "none"):
            out.append(("none", 0.0))
            continue
        kind, amp = part.split(":")
        out.append((kind.strip(), float(amp)))
    return out


#: the textures of the round-16/18 probes besides ``none``: (kind, amplitude)
TEXTURES = (("mottled", 0.3), ("mottled", 0.6), ("spots", 0.5), ("spots", 0.8))


def textured_copies(samples, scale, textures=TEXTURES, start=0):
    """Per sample: ``(i, sample, enlarged sample, true diameter, variants)``, the sample
    enlarged ``scale`` times (images, labels) and ``variants`` a list of ``(kind, amp,
    image)``, one per texture: the enlarged image itself for ``"none"``, else
    :func:`~napari_nalu_count.data.augment.chromatin_texture` inside its objects (seed: the
    image's number ``i``, counted from ``start``)."""
    big = rescale_samples(samples, scale, task="segment")
    for i, (s0, s) in enumerate(zip(samples, big, strict=True), start=start):
        d = float(s0.meta["diameter"]) * scale
        variants = [
            (
                kind,
                amp,
                s.image
                if kind == "none"
                else chromatin_texture(s.image, s.labels, d, amp, kind=kind, seed=i),
            )
            for kind, amp in textures
        ]
        yield i, s0, s, d, variants


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--sets", default="bbbc039,aitslab")
    p.add_argument("--limit", type=int, default=12)
    p.add_argument("--diameter", type=float, default=90.0, help="target nucleus diameter (px)")
    p.add_argument("--textures", default="none,mottled:0.3,mottled:0.6,spots:0.5,spots:0.8")
    p.add_argument("--count-model", default="nuclei-count")
    p.add_argument("--regressor", default=None, help="a size_regressor.json other than the bundled")
    p.add_argument("--no-given", action="store_true", help="skip the count with the true diameter")
    p.add_argument(
        "--segment",
        action="store_true",
        help="also segment() (count-guided seeds), d estimated and given: F1@0.5 columns",
    )
    p.add_argument(
        "--no-size-check",
        action="store_true",
        help="the estimate alone, without the counter's size-head check "
        "(engine.OPTIONS['size_check'] = False)",
    )
    p.add_argument(
        "--no-island-check",
        action="store_true",
        help="without the round-islands check of the estimate (engine.OPTIONS['island_check'])",
    )
    p.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip this many val images first (held-out images for a rule tuned on the first)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.regressor:
        size_mod.REGRESSOR_FILE = Path(args.regressor)
        size_mod.load_regressor.cache_clear()
    if args.no_size_check:
        engine.OPTIONS["size_check"] = False
    if args.no_island_check:
        engine.OPTIONS["island_check"] = False
    model = load_model(args.count_model)
    seg_model = load_model("nuclei-seg") if args.segment else None
    textures = parse_textures(args.textures)
    rows, t0 = [], time.time()
    for set_ in args.sets.split(","):
        samples = load_set(args.data, set_, args.offset + args.limit)[args.offset :]
        ds = [s.meta["diameter"] for s in samples if s.meta.get("diameter")]
        scale = round(args.diameter / float(np.median(ds)), 2)
        copies = textured_copies(samples, scale, textures, start=args.offset)
        for i, s0, s, d_true, variants in copies:
            truth = int(len(np.unique(s0.labels)) - 1)
            for kind, amp, img in variants:
                est = count(img, model, axes="YX", device="cpu")
                row = {
                    "set": set_,
                    "scale": scale,
                    "image": i,
                    "texture": f"{kind}:{amp:g}" if kind != "none" else "none",
                    "true": truth,
                    "true_d": d_true,
                    "est_d": float(est.diameter),
                    "count_est": float(est.count),
                    "islands": (est.size_estimate or {}).get("islands"),
                }
                if not args.no_given:
                    given = count(img, model, axes="YX", device="cpu", diameter=d_true)
                    row["count_given"] = float(given.count)
                if seg_model is not None:
                    for key, d in (("seg_est", None), ("seg_given", d_true)):
                        r = segment(
                            img, seg_model, axes="YX", device="cpu", count_model=model, diameter=d
                        )
                        row[key] = seg_counts(s.labels, r.labels)["0.5"]
                rows.append(row)
            print(f"{set_} {i} ({time.time() - t0:.0f} s)", flush=True)
    lines = [
        "| set (scale) | texture | estimate / true d (median) | rel MAE, d estimated "
        "| rel MAE, d given |" + (" seg F1@0.5, d estimated / given |" if args.segment else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if args.segment else ""),
    ]
    for set_ in args.sets.split(","):
        for tex in dict.fromkeys(r["texture"] for r in rows):
            sub = [r for r in rows if r["set"] == set_ and r["texture"] == tex]
            t = sum(r["true"] for r in sub)
            e = sum(abs(r["count_est"] - r["true"]) for r in sub) / t
            g = (
                f"{100 * sum(abs(r['count_given'] - r['true']) for r in sub) / t:.1f} %"
                if "count_given" in sub[0]
                else "-"
            )
            ratio = float(np.median([r["est_d"] / r["true_d"] for r in sub]))
            f1 = ""
            if "seg_est" in sub[0]:
                parts = []
                for key in ("seg_est", "seg_given"):
                    tp, fp, fn = (sum(r[key][j] for r in sub) for j in range(3))
                    parts.append(f"{2 * tp / max(1, 2 * tp + fp + fn):.3f}")
                f1 = " " + " / ".join(parts) + " |"
            lines.append(
                f"| {set_} ({sub[0]['scale']}x) | {tex} | {ratio:.2f} | {100 * e:.1f} % | {g} |"
                + f1
            )
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": "python " + " ".join(sys.argv),
                    "regressor": str(args.regressor or "bundled"),
                    "size_check": not args.no_size_check,
                    "island_check": not args.no_island_check,
                    "offset": args.offset,
                    "elapsed_s": round(time.time() - t0, 1),
                    "rows": rows,
                    "table": table,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
