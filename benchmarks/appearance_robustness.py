#!/usr/bin/env python
"""What a user's camera and illumination do to the count: val images with their appearance
changed (the objects do not move, so the truth stays the same).

For BBBC039 val, DSB 2018 val (its four 603 x 1272 tissue images, whose annotations leave out
many dim nuclei, reported apart as ``dsb_tissue``) and Aitslab val, each image is re-rendered
as another microscope would give it, deterministically (seeded per image):

- ``clean``: as stored;
- ``8bit_20``: 8-bit with the objects' range (1st - 99.8th percentile) spread over 20 grey
  levels on an offset of 5 (a dim 8-bit export);
- ``photon_30``: a photon-limited camera: the range mapped to a mean of 30 photons at the
  99.8th percentile, Poisson noise, offset 100 and Gaussian read noise (sd 2), uint16;
- ``uneven_bg``: an additive background ramp plus a broad bump, up to 0.6x the objects' range
  (out-of-focus haze, uneven illumination of the background), cast back to the image's dtype
  (uint8 images are first compressed so nothing saturates);
- ``vignetting``: multiplicative illumination falling to 40 % of the centre in the corners;
- ``saturated``: clipped at 40 % of the range (a camera set too bright: flat-topped nuclei);
- ``blur``: defocus, Gaussian of sigma 0.15 x the true nucleus diameter;
- only when named in ``--kinds``: ``uneven_local`` (four Gaussian bumps of sd 0.08-0.15x the
  image size, up to 0.6x the objects' range: a background that varies over a few nuclei) and
  ``dark_corners`` (the whole field, background on an offset of half the range included,
  falling to 40 % in the corners).

Methods (the same callables as ``nalu-count bench accuracy``): the bundled counter, the segmenter
(count-guided seeds) and the two classical baselines with their fixed settings; default
settings (diameter not given) except the background: the plain columns never flatten it
(``background=False``), ``--auto`` adds columns with the engine's default ``"auto"`` and
``--flatten`` with ``True``. Count relative MAE per set and perturbation, and segmentation
F1@0.5 for the methods with masks.

    python benchmarks/appearance_robustness.py --data ../shared/data \\
        --json docs/benchmarks/appearance_robustness.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_nalu_count.bench.accuracy import (
    aggregate,
    cast_like,
    evaluate_image,
    load_set,
    make_methods,
)
from napari_nalu_count.infer.background import DEFAULT_FACTOR
from napari_nalu_count.models import load_model

TISSUE_SHAPE = [603, 1272]


def _range(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, (1.0, 99.8))
    return float(lo), float(max(hi, lo + 1e-6))


def _fit_dtype(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``y`` cast to ``dtype``; integer images whose values would overflow are first scaled
    down (as an exposure that avoids saturation would)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        top = float(np.iinfo(dtype).max)
        m = float(y.max())
        if m > top:
            y = y * (top / m)
    return cast_like(y, dtype)


def _background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth field in [0, 1]: a ramp in a random direction plus a broad Gaussian bump."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(a) * yy / h + np.sin(a) * xx / w).astype(np.float32)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    s = 0.3 * max(h, w)
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    f = 0.6 * ramp + 0.4 * bump
    return f / max(float(f.max()), 1e-6)


def _local_background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A field in [0, 1] that varies over a tenth of the image: four Gaussian bumps of sd
    0.08-0.15x its size at random places (haze around clumps, uneven mounting medium)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = np.zeros(shape, np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(0.08, 0.15) * max(h, w)
        f += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return f / max(float(f.max()), 1e-6)


def perturb(kind: str, image: np.ndarray, diameter: float | None, seed: int) -> np.ndarray:
    """``image`` as another microscope would give it (see the module docstring)."""
    img = np.asarray(image)
    if kind == "clean":
        return img
    rng = np.random.default_rng(seed)
    x = img.astype(np.float32)
    lo, hi = _range(x)
    r = hi - lo
    u = (x - lo) / r  # 0 .. ~1 over the objects' range
    if kind == "8bit_20":
        return cast_like(5.0 + 20.0 * np.clip(u, 0, None), np.uint8)
    if kind == "photon_30":
        photons = rng.poisson(30.0 * np.clip(u, 0, None)).astype(np.float32)
        y = photons + 100.0 + rng.normal(0.0, 2.0, size=x.shape).astype(np.float32)
        return cast_like(y, np.uint16)
    if kind == "uneven_bg":
        return _fit_dtype(x + 0.6 * r * _background(x.shape, rng), img.dtype)
    if kind == "uneven_local":
        return _fit_dtype(x + 0.6 * r * _local_background(x.shape, rng), img.dtype)
    if kind == "dark_corners":
        # vignetting of the whole signal, background included, on a bright offset (a camera
        # whose field is lit unevenly: the background falls off with the nuclei)
        h, w = x.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rr = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
        gain = 1.0 - 0.3 * rr
        return _fit_dtype((x - lo + 0.5 * r) * gain + lo, img.dtype)
    if kind == "vignetting":
        h, w = x.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rr = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
        gain = 1.0 - 0.3 * rr  # 1 at the centre, 0.4 in the corners (rr = 2)
        return cast_like(lo + (x - lo) * gain, img.dtype)
    if kind == "saturated":
        return cast_like(np.minimum(x, lo + 0.4 * r), img.dtype)
    if kind == "blur":
        sigma = 0.15 * float(diameter or 20.0)
        return cast_like(ndi.gaussian_filter(x, sigma), img.dtype)
    raise ValueError(f"unknown perturbation {kind!r}")


KINDS = ("clean", "8bit_20", "photon_30", "uneven_bg", "vignetting", "saturated", "blur")
#: kinds run only when asked for (``--kinds``): not part of the default list, so that the
#: default run's seeds (``1000 * kind index + image``) stay those of the earlier reports
EXTRA_KINDS = ("uneven_local", "dark_corners")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--sets", default="bbbc039,dsb,aitslab")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--limit", type=int, default=None, help="first N images of each set")
    p.add_argument("--count-model", default="nuclei-count")
    p.add_argument("--seg-model", default="nuclei-seg")
    p.add_argument("--no-segment", action="store_true")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument(
        "--flatten",
        action="store_true",
        help="also the counter and segmenter with background=True ('... +bg' columns)",
    )
    p.add_argument(
        "--flatten-factors",
        default=None,
        help="comma-separated opening widths in object diameters, each a column pair "
        "('counter +bgW', e.g. 3,6,10); the default width's column is named '+bg' as with "
        "--flatten",
    )
    p.add_argument(
        "--auto",
        action="store_true",
        help="also the counter and segmenter with background='auto', the engine's default "
        "('... auto' columns; the plain columns are background off)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = [k for k in args.kinds.split(",") if k]
    counter = load_model(args.count_model)
    segmenter = None if args.no_segment else load_model(args.seg_model)
    # the plain columns never flatten (background off, as before "auto" was the default)
    methods = make_methods(counter, segmenter, baselines=not args.no_baselines, background=False)
    factors = [float(f) for f in (args.flatten_factors or "").split(",") if f.strip()]
    if args.flatten and not factors:
        factors = [DEFAULT_FACTOR]
    variants = [("auto", "auto")] if args.auto else []
    variants += [("+bg" if f == DEFAULT_FACTOR else f"+bg{f:g}", f) for f in factors]
    if variants:
        methods = _with_flattening(methods, counter, segmenter, variants)
    t0 = time.time()
    rows = []
    groups = []
    for set_ in [s for s in args.sets.split(",") if s]:
        samples = load_set(args.data, set_, args.limit)
        if set_ == "dsb":
            tissue = [s for s in samples if list(np.asarray(s.image).shape) == TISSUE_SHAPE]
            samples = [s for s in samples if list(np.asarray(s.image).shape) != TISSUE_SHAPE]
            groups.append((set_, samples))
            if tissue:
                groups.append(("dsb_tissue", tissue))
        else:
            groups.append((set_, samples))
    for set_, samples in groups:
        ds = [s.meta.get("diameter") for s in samples if s.meta.get("diameter")]
        set_median = float(np.median(ds)) if ds else None
        for k_i, kind in enumerate(kinds):
            for i, s in enumerate(samples):
                orig = s.image
                s.image = perturb(kind, orig, s.meta.get("diameter"), seed=1000 * k_i + i)
                try:
                    row = evaluate_image(s, set_, 1.0, methods, set_median=set_median)
                finally:
                    s.image = orig
                row["perturbation"] = kind
                rows.append(row)
            print(f"{set_} {kind}: {len(samples)} images ({time.time() - t0:.0f} s)", flush=True)
    results = []
    for set_ in sorted({r["set"] for r in rows}):
        for kind in kinds:
            sub = [r for r in rows if r["set"] == set_ and r["perturbation"] == kind]
            # aggregate() knows the bench's own set names: the tissue images go as "dsb"
            as_known = [dict(r, set="dsb") if set_ == "dsb_tissue" else r for r in sub]
            for agg in aggregate(as_known, list(methods)):
                agg["set"] = set_
                agg["perturbation"] = kind
                results.append(agg)
    table = format_table(results, list(methods), kinds)
    print(table)
    report = {
        "benchmark": "appearance_robustness",
        "command": "python benchmarks/appearance_robustness.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {args.threads} torch threads",
        "models": {"count": args.count_model, "segment": args.seg_model},
        "kinds": kinds,
        "elapsed_s": round(time.time() - t0, 1),
        "results": results,
        "rows": rows,
        "table": table,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, separators=(",", ":"), default=float))
    return 0


def _with_flattening(methods: dict, counter, segmenter, variants: list[tuple[str, object]]) -> dict:
    """``methods`` plus ``counter SUFFIX`` / ``segmenter SUFFIX`` for each ``(suffix,
    background)`` of ``variants`` (``"auto"`` or an opening width in object diameters):
    ``make_methods``' own calls with that ``background=``, each placed after its plain column.
    The default width's columns are ``+bg``, the others ``+bgW``, auto's ``auto``."""
    made = {
        suffix: make_methods(counter, segmenter, baselines=False, background=value)
        for suffix, value in variants
    }
    out = {}
    for key, fn in methods.items():
        out[key] = fn
        if key in ("counter", "segmenter"):
            for suffix, _value in variants:
                if key in made[suffix]:
                    out[f"{key} {suffix}"] = made[suffix][key]
    return out


def format_table(results: list[dict], methods: list[str], kinds: list[str]) -> str:
    """Markdown: count relative MAE (and F1@0.5 where there are masks) per set and kind."""

    def cell(r: dict | None) -> str:
        if r is None or r.get("rel_mae") is None:
            return "-"
        s = f"{100 * r['rel_mae']:.1f} %"
        if r.get("seg_f1_50") is not None:
            s += f" / {r['seg_f1_50']:.3f}"
        return s

    head = "| set | appearance | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for set_ in sorted({r["set"] for r in results}):
        for kind in kinds:
            by = {r["method"]: r for r in results if r["set"] == set_ and r["perturbation"] == kind}
            lines.append(
                f"| {set_} | {kind} | " + " | ".join(cell(by.get(m)) for m in methods) + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
