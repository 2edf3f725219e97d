"""Where the bright-artefact rule acts (round 19): every training and val image of BBBC039,
DSB 2018 and Aitslab, as stored and (val only) with the two bright blobs of
``r19_artefacts.py``; for each image where :func:`~napari_nalu_count.data.normalize.artefact_high`
returns a value, the ratio of the plain high level to the new one (above the median) and the
new one in noise standard deviations. Then how many blob copies it acts on, per set.

    python benchmarks/notes/r19_artefact_rule.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.data import normalize as N

sys.path.insert(0, str(Path(__file__).parent))
from r19_artefacts import perturb  # noqa: E402


def acts(a: np.ndarray) -> dict | None:
    lo, hi, p1, mid = N.percentiles(a, [1.0, 99.8, 1.0, 50.0])
    new = N.artefact_high(a, 99.8, mid, hi)
    if new is None:
        return None
    noise = N._noise_sd(a, p1, mid, hi)  # the rule's own estimate
    return {"ratio": (hi - mid) / (new - mid), "snr": (new - mid) / noise}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    args = p.parse_args(argv)
    loaders = {"bbbc039": load_bbbc039, "dsb": load_dsb2018, "aitslab": load_aitslab}
    for name, load in loaders.items():
        for split in ("train", "val"):
            samples = load(args.data, split)
            for s in samples:
                r = acts(s.image if s.image.ndim == 2 else s.image[..., 0])
                if r:
                    print(
                        f"{name} {split} {s.name[:16]}: ratio {r['ratio']:.2f}, "
                        f"{r['snr']:.1f} noise sd",
                        flush=True,
                    )
        val = load(args.data, "val")
        hit = sum(
            acts(perturb(s.image if s.image.ndim == 2 else s.image[..., 0], "blobs", 1000 + i))
            is not None
            for i, s in enumerate(val)
        )
        print(f"{name}: acts on {hit} of {len(val)} val images with two bright blobs", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
