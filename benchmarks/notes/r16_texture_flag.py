"""Can the product tell that it read a textured nucleus as several nuclei? (a lead, not shipped)

For each image, ``count()`` defaults give the estimated diameter ``d`` and the cell points; the
image, percentile-normalised and smoothed by a Gaussian of ``d / 2``, is split at its Otsu
threshold into foreground components. The statistic is the share of the counted points that lie
in *round* components (solidity >= 0.9, equivalent diameter <= 6 d) holding four points or more:
a textured nucleus read at a third of its size is one round component with several "cells".
Printed for the val sets at 1x and for the first 8 BBBC039 val images enlarged to ~90 px nuclei,
plain and with chromatin texture (see ``r16_textured_large.py``).

    python benchmarks/notes/r16_texture_flag.py --data ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

from napari_nalu_count.bench.accuracy import load_set
from napari_nalu_count.data.augment import chromatin_texture
from napari_nalu_count.infer import count
from napari_nalu_count.models import load_model
from napari_nalu_count.train.dataset import rescale_samples


def share_in_round_groups(img: np.ndarray, model) -> float:
    r = count(img, model, axes="YX", device="cpu")
    d, pts = float(r.diameter), np.asarray(r.points)
    if len(pts) == 0:
        return 0.0
    x = img.astype(np.float32)
    lo, hi = np.percentile(x, [1, 99.8])
    sm = ndi.gaussian_filter((x - lo) / max(hi - lo, 1e-6), max(d / 2, 1.0))
    lab = label(sm > threshold_otsu(sm))
    yx = np.clip(np.rint(pts).astype(int), 0, np.array(lab.shape) - 1)
    per = np.bincount(lab[yx[:, 0], yx[:, 1]], minlength=lab.max() + 1)
    props = {p.label: p for p in regionprops(lab)}
    flagged = sum(
        int(c)
        for k, c in enumerate(per)
        if k and c >= 4 and props[k].solidity >= 0.9 and props[k].equivalent_diameter_area <= 6 * d
    )
    return flagged / len(pts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("nuclei-count")
    for set_ in ("bbbc039", "aitslab", "dsb"):
        v = [share_in_round_groups(s.image, model) for s in load_set(args.data, set_)]
        print(
            f"{set_} 1x: {len(v)} images, median {np.median(v):.2f}, "
            f"90th pct {np.percentile(v, 90):.2f}, max {max(v):.2f}",
            flush=True,
        )
    samples = load_set(args.data, "bbbc039", 8)
    big = rescale_samples(samples, 3.12, task="segment")
    for kind, amp in (("none", 0.0), ("mottled", 0.3), ("mottled", 0.6), ("spots", 0.5)):
        v = []
        for i, (s0, s) in enumerate(zip(samples, big, strict=True)):
            d = float(s0.meta["diameter"]) * 3.12
            img = (
                s.image
                if kind == "none"
                else chromatin_texture(s.image, s.labels, d, amp, kind=kind, seed=i)
            )
            v.append(share_in_round_groups(img, model))
        print(f"BBBC039 3.12x {kind} {amp:g}: " + " ".join(f"{x:.2f}" for x in v), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
