#!/usr/bin/env python
"""Train the object-size regressor of :mod:`napari_nalu_count.infer.size` and measure it.

Usage (the command that produced the shipped ``size_regressor.json``, round 17, 2026-12-07;
it was written to a scratch path and copied there)::

    python scripts/train_size_estimator.py --data ../shared/data --no-log --mask \\
        --texture 0.25 --tissue 300 --out src/napari_nalu_count/infer/size_regressor.json \\
        --report docs/benchmarks/r17/size_regressor_report.json

(``--octave-crop 256 --pyramid binomial``, the defaults, since 2026-12-05; the regressor
before it was trained with ``--octave-crop 0 --pyramid gauss``. Rounds 6-16 shipped the one
of ``--no-log --report docs/benchmarks/size_estimate_r6.json``, without ``--mask``,
``--texture`` or ``--tissue``.)

Training rows: windows of the *train* splits of BBBC039 (x5 each), DSB 2018 (x3) and Aitslab
(x16), and ``--synthetic`` :func:`~napari_nalu_count.data.synthetic.synthetic_varied` images,
each resampled so that its median nucleus diameter (from its masks, over the whole image, since
objects cut by a window edge look smaller than they are) is log-uniform in 5-150 px,
then cast back to the image's own integer type like a real camera image; ``--texture P`` gives
that share of them a mottled chromatin texture; ``--tissue N`` adds N
:func:`~napari_nalu_count.data.synthetic.synthetic_tissue` images (nuclei 5-40 px) and
``--colonies N`` as many of its round-colony variant (round 18, tried). The target
is log(diameter). An ensemble of ``--ensemble`` MLPs 54 (74 with ``--mask``) -> 64 -> 64 -> 1
(GELU, AdamW, smooth-L1, different seeds; outputs averaged) is fitted on the CPU in seconds.

Evaluation: the *val* splits of the three sets at scales 0.5x, 1x, 2x and 3x (objects of 6 to
120 px counted in the headline figures), per set and scale: median relative error and the share of
images within 15 % / 30 % of the truth, with the old LoG blob-search estimate and the time per
image of both beside it.
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

from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.data.augment import chromatin_texture
from napari_nalu_count.data.normalize import cast_like
from napari_nalu_count.data.synthetic import synthetic_tissue, synthetic_varied
from napari_nalu_count.infer import size as size_mod
from napari_nalu_count.infer.scale import estimate_diameter_log, rescale_plane


def median_diameter(labels: np.ndarray) -> float | None:
    sizes = np.bincount(labels.ravel())[1:]
    sizes = sizes[sizes > 0]
    return float(np.median(np.sqrt(4.0 * sizes / np.pi))) if len(sizes) else None


def window_at_scale(image, labels, scale, rng, crop=640):
    """A random window of ``image`` that is at most ``crop`` px after resampling by ``scale``:
    ``(window resampled, float32; its labels, not resampled)``, or ``(None, None)`` when the
    window holds no object."""
    h, w = image.shape
    c = int(np.ceil(crop / scale))
    y0 = int(rng.integers(0, max(1, h - c + 1)))
    x0 = int(rng.integers(0, max(1, w - c + 1)))
    win, lab = image[y0 : y0 + c, x0 : x0 + c], labels[y0 : y0 + c, x0 : x0 + c]
    if lab.max() == 0:
        return None, None
    return rescale_plane(win.astype(np.float32), scale), lab


def rescaled_window(image, labels, scale, rng, crop=640, d_image=None, texture=0.0):
    """A window of ``image`` (:func:`window_at_scale`), cast back to the image dtype; and the
    nucleus diameter there (or None when the window holds no object): the median diameter of
    the whole image's objects (``d_image``), because objects cut by the window edge would make
    large nuclei look small. With ``texture``, that share of the windows get a mottled
    chromatin texture on the resampled nuclei (their grain in output pixels)."""
    out, lab = window_at_scale(image, labels, scale, rng, crop)
    if out is None:
        return None, None
    d = d_image if d_image is not None else median_diameter(lab)
    if texture > 0 and rng.random() < texture:
        # the labels by ndi.zoom, as for the r16 reports (infer.scale's
        # labels_to_original differs by a pixel on some edges where zoom rounds the shape
        # differently)
        lab_s = ndi.zoom(lab, scale, order=0, grid_mode=True, mode="nearest")
        pad = [(0, max(0, a - b)) for a, b in zip(out.shape, lab_s.shape, strict=True)]
        lab_s = np.pad(lab_s, pad)[: out.shape[0], : out.shape[1]]
        out = chromatin_texture(
            out,
            lab_s,
            d * scale,
            float(rng.uniform(0.15, 0.8)),
            kind="mottled",
            grain=float(rng.uniform(0.05, 0.15)),
            seed=rng,
        )
    if np.issubdtype(image.dtype, np.integer):
        out = cast_like(out, image.dtype)
    return out, d * scale


def rows_for(samples, reps, rng, scales=None, lo=5.0, hi=130.0, texture=0.0):
    out = []
    for s in samples:
        if s.labels is None or s.labels.max() == 0:
            continue
        d0 = median_diameter(s.labels)
        todo = list(scales) if scales is not None else []
        for _ in range(reps):
            target = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            todo.append(float(np.clip(target / d0, 1 / 10, 5)))
        for sc in todo:
            img, d = rescaled_window(s.image, s.labels, sc, rng, d_image=d0, texture=texture)
            if img is None:
                continue
            out.append((img, d, s.meta.get("dataset", "synthetic"), s.name, sc))
    return out


def profiles(rows, options):
    X, t = [], []
    for img, *_ in rows:
        t0 = time.perf_counter()
        x = size_mod._normalise(img)
        win = size_mod.choose_window(x, 640, clip=size_mod.CLIP)
        X.append(size_mod.scale_profile(win, **options))
        t.append(time.perf_counter() - t0)
    return np.array(X), np.array(t)


def fit(X, y, seed=0, hidden=64, iters=4000):
    torch.manual_seed(seed)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xt = torch.tensor((X - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, 1),
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-2, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    for it in range(iters):
        idx = torch.randint(0, len(Xt), (256,), generator=g)
        loss = torch.nn.functional.smooth_l1_loss(net(Xt[idx])[:, 0], yt[idx], beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it == int(iters * 0.7):
            for group in opt.param_groups:
                group["lr"] = 1e-3
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    return size_mod.SizeRegressor(
        {
            "mean": mu.tolist(),
            "std": sd.tolist(),
            "layers": [
                [m.weight.detach().double().numpy().tolist(), m.bias.detach().double().tolist()]
                for m in layers
            ],
        }
    )


def summarise(err, mask):
    e = np.abs(err[mask])
    if len(e) == 0:
        return None
    return {
        "n": int(len(e)),
        "median_rel_err": round(float(np.median(np.exp(e) - 1)), 4),
        "within_15": round(float(np.mean(e < np.log(1.15))), 3),
        "within_30": round(float(np.mean(e < np.log(1.3))), 3),
        "within_50": round(float(np.mean(e < np.log(1.5))), 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="src/napari_nalu_count/infer/size_regressor.json")
    p.add_argument("--report", default=None, help="write the evaluation as JSON here")
    p.add_argument("--synthetic", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--texture",
        type=float,
        default=0.0,
        help="share of the training windows given a 'mottled' chromatin texture (amplitude "
        "0.15-0.8, grain 0.05-0.15 diameters; data.augment.chromatin_texture); 'spots' stays "
        "out of training, for the held-out check",
    )
    p.add_argument("--no-log", action="store_true", help="skip the (slow) LoG comparison")
    p.add_argument("--ensemble", type=int, default=5, help="MLPs averaged (different seeds)")
    p.add_argument("--hidden", type=int, default=64, help="width of each MLP's hidden layers")
    p.add_argument(
        "--octave-crop",
        type=int,
        default=256,
        help="read each octave of the profile on at most this many samples square "
        "(0: the whole window; see infer.size.scale_profile)",
    )
    p.add_argument(
        "--pyramid",
        choices=size_mod.PYRAMIDS,
        default="binomial",
        help="the profile's pyramid filter (see infer.size._decimate)",
    )
    p.add_argument(
        "--tissue",
        type=int,
        default=0,
        help="this many data.synthetic.synthetic_tissue images (small nuclei packed in a large "
        "region), rescaled to nuclei of 5-40 px",
    )
    p.add_argument(
        "--colonies",
        type=int,
        default=0,
        help="this many synthetic_tissue(colonies=3-12) images (packed small nuclei in round "
        "colonies of 60-160 px), rescaled to nuclei of 5-40 px",
    )
    p.add_argument(
        "--mask",
        action="store_true",
        help="append the foreground-shape features (infer.size.mask_features) to the profile",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    train = []
    for loader, reps in ((load_bbbc039, 5), (load_dsb2018, 3), (load_aitslab, 16)):
        train += rows_for(
            loader(args.data, "train"), reps, rng, lo=5.0, hi=150.0, texture=args.texture
        )
    synth = [
        synthetic_varied((int(rng.choice([256, 384, 512])),) * 2, seed=10_000 + i)
        for i in range(args.synthetic)
    ]
    train += rows_for(synth, 1, rng, lo=5.0, hi=150.0, texture=args.texture)
    tissue = [
        synthetic_tissue((int(rng.choice([384, 512, 768])),) * 2, seed=20_000 + i)
        for i in range(args.tissue)
    ]
    train += rows_for(tissue, 1, rng, lo=5.0, hi=40.0)
    colonies = []
    for i in range(args.colonies):
        side = int(rng.choice([512, 768]))
        nucleus = float(np.exp(rng.uniform(np.log(5.0), np.log(20.0))))
        colonies.append(
            synthetic_tissue(
                (side, side),
                seed=30_000 + i,
                diameter=nucleus,
                colonies=int(rng.integers(3, 13)),
                colony_diameter=(max(60.0, 4 * nucleus), 160.0),
            )
        )
    train += rows_for(colonies, 1, rng, lo=5.0, hi=40.0)
    val = []
    for loader in (load_bbbc039, load_dsb2018, load_aitslab):
        val += rows_for(loader(args.data, "val"), 0, rng, scales=(0.5, 1.0, 2.0, 3.0))
    print(f"{len(train)} train rows, {len(val)} val rows ({time.time() - t0:.0f}s)", flush=True)
    options = {"octave_crop": args.octave_crop or None, "pyramid": args.pyramid}
    if args.mask:
        options["mask"] = True
    X, _ = profiles(train, options)
    y = np.log([r[1] for r in train])
    Xv, tv = profiles(val, options)
    yv = np.log([r[1] for r in val])
    members = [fit(X, y, args.seed + k, hidden=args.hidden) for k in range(args.ensemble)]
    reg = size_mod.SizeRegressor({"members": [m.to_dict() for m in members]})
    pred = np.array([reg(x) for x in Xv])
    err = pred - yv
    sets = [r[2] for r in val]
    scales = np.array([r[4] for r in val])
    dia = np.exp(yv)
    in_range = (dia >= 6) & (dia <= 120)
    report = {
        "command": "python scripts/train_size_estimator.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, 1 thread",
        "train_rows": len(train),
        "val_rows": len(val),
        "time_ms_per_image_median": round(float(np.median(tv) * 1000), 1),
        "time_ms_per_image_max": round(float(np.max(tv) * 1000), 1),
        "regressor": {"all 6-120 px": summarise(err, in_range)},
        "per_set_scale": {},
    }
    log_err = None
    if not args.no_log:
        log_pred, log_t = [], []
        for img, *_ in val:
            t1 = time.perf_counter()
            x = size_mod._normalise(img)
            d = estimate_diameter_log(np.clip(x, *size_mod.CLIP)) if x is not None else None
            log_t.append(time.perf_counter() - t1)
            log_pred.append(np.log(d) if d else np.log(10.0))
        log_err = np.array(log_pred) - yv
        report["log_blob_search"] = {
            "all 6-120 px": summarise(log_err, in_range),
            "time_ms_per_image_median": round(float(np.median(log_t) * 1000), 1),
        }
    for name in sorted(set(sets)):
        for sc in (0.5, 1.0, 2.0, 3.0):
            m = np.array([s == name for s in sets]) & (scales == sc) & in_range
            row = {"regressor": summarise(err, m)}
            if log_err is not None:
                row["log"] = summarise(log_err, m)
            report["per_set_scale"][f"{name} x{sc:g}"] = row
    reg.info = {
        "trained": time.strftime("%Y-%m-%d"),
        "command": report["command"],
        "train_rows": len(train),
        "profile": options,
        "val": report["regressor"],
    }
    Path(args.out).write_text(json.dumps(reg.to_dict()))
    print(json.dumps(report, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
