"""Round 12: where segment() loses its F1, and a small-object detector tried beside the networks.

    python benchmarks/notes/r12_small_objects.py misses [--sets aitslab,bbbc039] [--data ROOT]
    python benchmarks/notes/r12_small_objects.py spots --set aitslab|bbbc039|dsb
        [--split train|val] [--t 0.25,0.35,0.5] [--frac 0.3,0.45,0.6] [--data ROOT]
    python benchmarks/notes/r12_small_objects.py hybrid [--sets aitslab,bbbc039,dsb]
    python benchmarks/notes/r12_small_objects.py seg-card --grid 16 --out DIR

``misses``: every val image segmented with ``segment()`` defaults (size estimated); each
annotated object is put in a bin of its equivalent diameter over the image's median (0-0.3,
0.3-0.5, 0.5-0.7, 0.7-1.5, >1.5) and counted as matched (IoU > 0.5) or missed; unmatched
predictions likewise. A missed object is "no_fg" when less than 30 % of it is covered by any
prediction, "merged" when the prediction covering most of it also covers another annotated
object, else "partial".

``spots``: a classical detector of small bright objects (micronuclei, fragments) run beside
``segment()`` and ``count()``, its two settings searched on a *train* split. On the
percentile-normalised image smoothed with sigma ``0.03 d`` (``d``: the diameter the call
used), a grey opening of width ``0.4 d`` keeps the nuclei and the background and removes what
is smaller; the top-hat (image minus opening) holds the small objects. Nuclei and background
levels come from the call's own result (segment: inside / away from its labels; count: at
its points / farther than ``0.8 d`` from them); "occupied" is the opening above background +
0.3 x contrast (the call's labels added for segment). Candidates are top-hat maxima (window
``0.2 d``) outside the occupied pixels (1 px gap) above ``max(t x contrast, 8 x noise)`` (noise:
the top-hat's robust spread on free pixels). An object is the connected part of the top-hat
above ``frac`` x its peak, between ``(0.06 d)^2 pi/4`` (at least 2 px) and ``(0.45 d)^2 pi/4``
pixels. Segment: objects added as new labels (F1 at IoU 0.5 before -> after). Count: every
object adds ``1 -`` the density mass within ``0.3 d`` of its centroid (at least 0).

``hybrid``: segment()'s count-guided seeds plus one seed per interior component (arg-max
interior class) that holds no count seed and has at least 4 or 16 model-grid pixels: do the
segmenter's own interior blobs hold the missed small objects? F1@0.5 on the val sets.

``seg-card``: a copy of the bundled segmenter whose card puts nuclei at ``--grid`` px on its
model grid instead of 20 (same weights), for ``nalu-count bench accuracy --seg-model
DIR/nuclei-seg.safetensors``: a coarser grid makes segment() faster.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage as ndi

import napari_nalu_count.data as D
from napari_nalu_count import count, segment
from napari_nalu_count.data.masks import instance_sizes
from napari_nalu_count.data.normalize import normalization_range
from napari_nalu_count.infer import postprocess as post
from napari_nalu_count.train.metrics import iou_matrix, match_instances

LOADERS = {"aitslab": D.load_aitslab, "bbbc039": D.load_bbbc039, "dsb": D.load_dsb2018}
BINS = (0.0, 0.3, 0.5, 0.7, 1.5, np.inf)


def load(root: str, name: str, split: str) -> list:
    if name == "bbbc039":
        return D.load_bbbc039(root, split, min_size=0)
    return LOADERS[name](root, split)


def gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(-1) if a.shape[-1] <= 4 else a.mean(0)
    return a


def equivalent_diameters(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids present, their equivalent diameters)``."""
    area = instance_sizes(labels)
    ids = np.flatnonzero(area[1:]) + 1
    return ids, np.sqrt(4.0 / np.pi * area[ids].astype(np.float64))


def misses(root: str, sets: list[str]) -> None:
    for name in sets:
        tp = fp = fn = 0
        n_bins = len(BINS) - 1
        gt_bin, miss_bin, fp_bin = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
        reasons = {"no_fg": 0, "merged": 0, "partial": 0}
        for s in load(root, name, "val"):
            lab = np.asarray(segment(s.image).labels)
            ids_t, dt = equivalent_diameters(s.labels)
            ids_p, dp = equivalent_diameters(lab)
            med = float(np.median(dt))
            iou = iou_matrix(s.labels, lab)
            hit = iou > 0.5
            mt = hit.any(1) if iou.size else np.zeros(len(ids_t), bool)
            mp = hit.any(0) if iou.size else np.zeros(len(ids_p), bool)
            tp, fn, fp = tp + int(mt.sum()), fn + int((~mt).sum()), fp + int((~mp).sum())
            bt = np.digitize(dt / med, BINS) - 1
            bp = np.digitize(dp / med, BINS) - 1
            for b in range(n_bins):
                gt_bin[b] += (bt == b).sum()
                miss_bin[b] += ((bt == b) & ~mt).sum()
                fp_bin[b] += ((bp == b) & ~mp).sum()
            for i in np.flatnonzero(~mt):
                cov = lab[s.labels == ids_t[i]]
                if (cov > 0).mean() < 0.3:
                    reasons["no_fg"] += 1
                    continue
                vals, cnt = np.unique(cov[cov > 0], return_counts=True)
                others = np.unique(s.labels[(lab == vals[np.argmax(cnt)]) & (s.labels > 0)])
                reasons["merged" if len(others) > 1 else "partial"] += 1
        p, r = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * p * r / (p + r)
        print(f"{name} val: TP {tp} FP {fp} FN {fn}  P {p:.3f} R {r:.3f} F1 {f1:.3f}")
        for b in range(n_bins):
            print(
                f"  d / median {BINS[b]:g}-{BINS[b + 1]:g}: annotated {int(gt_bin[b])}, "
                f"missed {int(miss_bin[b])}; unmatched predictions {int(fp_bin[b])}"
            )
        print(f"  missed objects: {reasons}")


def _levels(vs, d, labels, points):
    """``(nuclei level, background level, occupied-by-labels)`` from the call's own result."""
    if labels is not None and (labels > 0).any():
        inside = labels > 0
        far = ~ndi.binary_dilation(inside, iterations=max(1, int(0.2 * d)))
        return float(np.median(vs[inside])), far, inside
    if points is None or not len(points):
        return None, None, None
    h, w = vs.shape
    p = np.round(np.asarray(points)[:, -2:]).astype(int)
    p = p[(p[:, 0] >= 0) & (p[:, 0] < h) & (p[:, 1] >= 0) & (p[:, 1] < w)]
    if not len(p):
        return None, None, None
    mark = np.zeros(vs.shape, bool)
    mark[p[:, 0], p[:, 1]] = True
    far = ndi.distance_transform_edt(~mark) > 0.8 * d
    return float(np.median(vs[p[:, 0], p[:, 1]])), far, None


def small_objects(image, d, *, labels=None, points=None, t=0.35, frac=0.45) -> np.ndarray:
    """Labels (1..n) of small bright objects outside the call's nuclei (module docstring)."""
    a = gray(image)
    lo, hi = normalization_range(a)
    vs = ndi.gaussian_filter((a - lo) / max(hi - lo, 1e-6), max(0.5, 0.03 * d))
    k = max(3, int(round(0.4 * d)))
    opened = ndi.maximum_filter(ndi.minimum_filter(vs, k), k)
    top = vs - opened
    out = np.zeros(vs.shape, np.int32)
    level, far, inside = _levels(vs, d, labels, points)
    if level is None or far.sum() < 10:
        return out
    b0 = float(np.median(vs[far]))
    contrast = level - b0
    if contrast <= 0:
        return out
    occ = opened > b0 + 0.3 * contrast
    if inside is not None:
        occ |= inside
    occ = ndi.binary_dilation(occ)
    free = top[~occ]
    noise = 1.4826 * float(np.median(np.abs(free - np.median(free)))) if free.size else 0.0
    win = max(3, int(round(0.2 * d)) | 1)
    peaks = (top == ndi.maximum_filter(top, win)) & (top > max(t * contrast, 8 * noise)) & ~occ
    ys, xs = np.nonzero(peaks)
    a_max = np.pi / 4 * (0.45 * d) ** 2
    a_min = max(2.0, np.pi / 4 * (0.06 * d) ** 2)
    r = int(np.ceil(0.45 * d))
    h, w = vs.shape
    n = 0
    for i in np.argsort(-top[ys, xs]):
        y, x = ys[i], xs[i]
        if out[y, x]:
            continue
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        part = (top[y0:y1, x0:x1] > frac * top[y, x]) & ~occ[y0:y1, x0:x1]
        part &= out[y0:y1, x0:x1] == 0
        comp, _ = ndi.label(part)
        m = comp == comp[y - y0, x - x0]
        if not a_min <= m.sum() <= a_max:
            continue
        if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
            continue
        n += 1
        out[y0:y1, x0:x1][m] = n
    return out


def missing_mass(objects: np.ndarray, density: np.ndarray, d: float) -> float:
    """Sum over the objects of ``1 -`` the density mass within ``0.3 d`` (at least 0)."""
    k = int(objects.max())
    if k == 0:
        return 0.0
    centres = ndi.center_of_mass(np.ones_like(objects), objects, np.arange(1, k + 1))
    rr = int(np.ceil(0.3 * d))
    yy, xx = np.mgrid[-rr : rr + 1, -rr : rr + 1]
    disk = yy**2 + xx**2 <= (0.3 * d) ** 2
    h, w = density.shape
    total = 0.0
    for cy, cx in centres:
        y, x = int(round(cy)), int(round(cx))
        y0, y1, x0, x1 = max(0, y - rr), min(h, y + rr + 1), max(0, x - rr), min(w, x + rr + 1)
        dk = disk[y0 - y + rr : y1 - y + rr, x0 - x + rr : x1 - x + rr]
        total += max(0.0, 1.0 - float(density[y0:y1, x0:x1][dk].sum()))
    return total


def spots(root: str, name: str, split: str, ts: list[float], fracs: list[float]) -> None:
    grid = [(t, f) for t in ts for f in fracs]
    acc = {g: np.zeros(8) for g in grid}
    n, truth = 0, 0.0
    for s in load(root, name, split):
        sr, cr = segment(s.image), count(s.image)
        lab, dens = np.asarray(sr.labels), np.asarray(cr.density)
        true_n = len(np.unique(s.labels)) - 1
        m0 = match_instances(s.labels, lab, 0.5)
        n, truth = n + 1, truth + true_n
        for t, f in grid:
            extra = small_objects(s.image, float(sr.diameter), labels=lab, t=t, frac=f)
            new = np.where(extra > 0, extra + lab.max(), lab)
            m1 = match_instances(s.labels, new, 0.5)
            cobj = small_objects(s.image, float(cr.diameter), points=cr.points, t=t, frac=f)
            added = missing_mass(cobj, dens, float(cr.diameter))
            acc[(t, f)] += [m0.tp, m0.fp, m0.fn, m1.tp, m1.fp, m1.fn, 0, 0]
            acc[(t, f)][6] += abs(cr.count - true_n)
            acc[(t, f)][7] += abs(cr.count + added - true_n)
    for (t, f), a in acc.items():
        f0 = 2 * a[0] / (2 * a[0] + a[1] + a[2])
        f1 = 2 * a[3] / (2 * a[3] + a[4] + a[5])
        print(
            f"{name}/{split} ({n} images) t {t:g} frac {f:g}: seg F1@0.5 {f0:.4f} -> {f1:.4f} "
            f"(TP {int(a[3] - a[0]):+d}, FP {int(a[4] - a[1]):+d}); count rel. MAE "
            f"{a[6] / truth:.2%} -> {a[7] / truth:.2%}"
        )


def _hybrid_instances(classes, *, seeds="interior", points=None, min_size=8, **kw):
    """``classes_to_instances`` with count seeds plus the interior blobs no count seed is in."""
    min_seed = HYBRID["min_seed"]
    if min_seed is None or seeds != "count" or np.ndim(classes) != 3:
        return ORIGINAL(classes, seeds=seeds, points=points, min_size=min_size, **kw)
    probs = np.asarray(classes, dtype=np.float32)
    foreground, is_one = post._argmax_masks(probs)
    elevation = -ndi.gaussian_filter(probs[1], 1.0, output=np.float32)
    markers = post._point_markers(points, foreground)
    comp, n = ndi.label(is_one & foreground)
    if n:
        seeded = np.zeros(n + 1, bool)
        seeded[comp[markers > 0]] = True
        extra = ~seeded & (np.bincount(comp.ravel(), minlength=n + 1) >= min_seed)
        extra[0] = False
        sel = extra[comp]
        markers[sel] = comp[sel] + markers.max()
    labels = post._seeded_watershed(elevation, markers, foreground, orphans=True)
    return post._relabel(labels, min_size)


ORIGINAL = post.classes_to_instances
HYBRID: dict = {"min_seed": None}


def hybrid(root: str, sets: list[str]) -> None:
    post.classes_to_instances = _hybrid_instances
    try:
        for name in sets:
            acc = {m: np.zeros(3) for m in (None, 4, 16)}
            for s in load(root, name, "val"):
                for m in acc:
                    HYBRID["min_seed"] = m
                    r = match_instances(s.labels, segment(s.image).labels, 0.5)
                    acc[m] += [r.tp, r.fp, r.fn]
            for m, a in acc.items():
                f1 = 2 * a[0] / (2 * a[0] + a[1] + a[2])
                what = "count seeds only" if m is None else f"+ unseeded interior >= {m} px"
                print(f"{name} val, {what}: F1@0.5 {f1:.4f} (TP {a[0]:.0f} FP {a[1]:.0f})")
    finally:
        post.classes_to_instances = ORIGINAL


def seg_card(grid: float, out: str) -> None:
    import json
    import shutil
    from pathlib import Path

    from napari_nalu_count.models import load_model

    src = Path(load_model("nuclei-seg").path)
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.with_suffix(".safetensors"), dst / "nuclei-seg.safetensors")
    card = json.loads(src.with_suffix(".json").read_text())
    card["diameter"] = float(grid)
    (dst / "nuclei-seg.json").write_text(json.dumps(card, indent=1))
    print(f"wrote {dst / 'nuclei-seg.safetensors'} (card diameter {grid:g})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("misses", "spots", "hybrid", "seg-card"))
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--sets", default="aitslab,bbbc039")
    ap.add_argument("--set", default="aitslab", choices=sorted(LOADERS))
    ap.add_argument("--split", default="train", choices=("train", "val"))
    ap.add_argument("--t", default="0.25,0.35,0.5")
    ap.add_argument("--frac", default="0.3,0.45,0.6")
    ap.add_argument("--grid", type=float, default=16.0)
    ap.add_argument("--out", default="seg-grid")
    args = ap.parse_args()
    if args.what == "misses":
        misses(args.data, args.sets.split(","))
    elif args.what == "hybrid":
        hybrid(args.data, args.sets.split(","))
    elif args.what == "seg-card":
        seg_card(args.grid, args.out)
    else:
        ts = [float(v) for v in args.t.split(",")]
        fracs = [float(v) for v in args.frac.split(",")]
        spots(args.data, args.set, args.split, ts, fracs)


if __name__ == "__main__":
    main()
