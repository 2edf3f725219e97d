"""Where the counter's mass goes on a val set: nuclei, fragments, background.

    python benchmarks/notes/r10_aitslab_mass.py [--set aitslab|bbbc039|dsb] [--data ROOT]

Each val image is counted with ``count()`` defaults (size estimated). Every pixel within half
the image's median nucleus diameter of an annotated object is given to its nearest object
(Euclidean distance transform of the background); the density summed over an object's pixels is
the mass the counter gives it. Objects are split into nuclei (equivalent diameter at least half
the median) and fragments (under half the median: micronuclei, debris, cut-off pieces).
"Background" is every pixel farther than that from all objects; its mass is split into the part
where the density is above 5 % of a cell's mean density (``0.05 / (pi d^2 / 4)`` at the
diameter used) and a low-level floor below it. Prints per image (truth, count, nuclei and their
mass, fragments and their mass, background mass, the diameter used and the true median) and
the totals, and the quantiles of the mass per nucleus.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops

import napari_nalu_count.data as D
from napari_nalu_count import count

LOADERS = {"aitslab": D.load_aitslab, "bbbc039": D.load_bbbc039, "dsb": D.load_dsb2018}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="aitslab", choices=sorted(LOADERS))
    ap.add_argument("--data", default="../shared/data")
    args = ap.parse_args()
    samples = LOADERS[args.set](args.data, "val")
    tot = dict.fromkeys(
        ("truth", "count", "nuclei", "nuclei_mass", "frags", "frag_mass", "bg", "bg_floor"), 0.0
    )
    per_nucleus: list[float] = []
    print(
        "image | truth | count | nuclei (mass) | fragments (mass) | background (floor) "
        "| d used | d true"
    )
    for s in samples:
        lab = s.labels
        props = regionprops(lab)
        if not props:
            continue
        r = count(s.image)
        dens = np.asarray(r.density, dtype=np.float64)
        ids = np.array([p.label for p in props])
        diam = np.array([2.0 * np.sqrt(p.area / np.pi) for p in props])
        med = float(np.median(diam))
        dist, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
        owner = lab[iy, ix]
        owner[dist > 0.5 * med] = 0
        mass = ndi.sum(dens, owner, index=ids)
        frag = diam < 0.5 * med
        bg = owner == 0
        area = np.pi * (float(r.diameter or med) / 2.0) ** 2
        floor = dens[bg][dens[bg] <= 0.05 / area].sum()
        row = {
            "truth": len(props),
            "count": float(r.count),
            "nuclei": int((~frag).sum()),
            "nuclei_mass": float(mass[~frag].sum()),
            "frags": int(frag.sum()),
            "frag_mass": float(mass[frag].sum()),
            "bg": float(dens[bg].sum()),
            "bg_floor": float(floor),
        }
        for k, v in row.items():
            tot[k] += v
        per_nucleus += list(mass[~frag])
        print(
            f"{s.name[:28]} | {row['truth']} | {row['count']:.1f} | {row['nuclei']} "
            f"({row['nuclei_mass']:.1f}) | {row['frags']} ({row['frag_mass']:.1f}) | "
            f"{row['bg']:.1f} ({row['bg_floor']:.1f}) | {float(r.diameter or 0):.1f} | {med:.1f}"
        )
    print(
        f"total: truth {tot['truth']:.0f}, count {tot['count']:.1f}; nuclei {tot['nuclei']:.0f} "
        f"get {tot['nuclei_mass']:.1f}; fragments {tot['frags']:.0f} get {tot['frag_mass']:.1f}; "
        f"background {tot['bg']:.1f} (floor {tot['bg_floor']:.1f})"
    )
    q = np.percentile(per_nucleus, [5, 25, 50, 75, 95])
    print("mass per nucleus, 5/25/50/75/95 %:", " / ".join(f"{v:.2f}" for v in q))


if __name__ == "__main__":
    main()
