"""How far to leave a bright artefact out of the plane (round 20): the val images of BBBC039,
DSB 2018 and Aitslab with the two bright blobs of ``r19_artefacts.py``, counted with the
defaults (size estimated) with the artefacts' area not left out (``OPTIONS["mask_artefacts"]``
off) and left out widened by 0, 0.15 and 0.35 of each artefact's equivalent radius
(``data.normalize.ARTEFACT_MARGIN``). Mean relative error per image (``|count - true| /
max(true, 1)``).

    python benchmarks/notes/r20_artefact_margin.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from napari_nalu_count.data import load_aitslab, load_bbbc039, load_dsb2018
from napari_nalu_count.data import normalize as N
from napari_nalu_count.infer import count, engine

sys.path.insert(0, str(Path(__file__).parent))
from r19_artefacts import perturb  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {
        "bbbc039": load_bbbc039(args.data, "val", min_size=0),
        "dsb": load_dsb2018(args.data, "val"),
        "aitslab": load_aitslab(args.data, "val"),
    }

    def plane(s):
        return s.image if s.image.ndim == 2 else s.image[..., 0]

    images = {
        name: [(perturb(plane(s), "blobs", 1000 + i), len(s.dots)) for i, s in enumerate(samples)]
        for name, samples in sets.items()
    }
    saved = (engine.OPTIONS["mask_artefacts"], N.ARTEFACT_MARGIN)
    try:
        for label, mask, margin in (
            ("not left out", False, saved[1]),
            ("margin 0", True, 0.0),
            ("margin 0.15", True, 0.15),
            ("margin 0.35", True, 0.35),
        ):
            engine.OPTIONS["mask_artefacts"], N.ARTEFACT_MARGIN = mask, margin
            parts = []
            for name, pairs in images.items():
                err = [abs(count(a).count - t) / max(t, 1) for a, t in pairs]
                parts.append(f"{name} {100 * np.mean(err):.1f} %")
            print(f"{label}: " + ", ".join(parts), flush=True)
    finally:
        engine.OPTIONS["mask_artefacts"], N.ARTEFACT_MARGIN = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
