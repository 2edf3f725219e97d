"""How the ``background="auto"`` thresholds were chosen (round 20): ``assess_background``'s two
measures on every val image of BBBC039, DSB 2018 (its four 603 x 1272 tissue images apart) and
Aitslab, as stored and with the uneven background and the vignetting of
``benchmarks/appearance_robustness.py`` (its seeds for the three kinds clean, uneven_bg,
vignetting), normalised as the engine does and judged with the *true* nucleus diameter (the
engine uses its estimate: ``r20_background_rule.py``). Per group: the spread (amplitude) and
the residual from the cubic surface, min / median / max, and how many the shipped thresholds
flatten.

    python benchmarks/notes/r20_background_probe.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

from napari_nalu_count.bench.accuracy import load_set
from napari_nalu_count.data import typical_diameter
from napari_nalu_count.infer import background as bg
from napari_nalu_count.infer.engine import _normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appearance_robustness import TISSUE_SHAPE, perturb  # noqa: E402

CARD = {"normalization": {"method": "percentile", "low": 1.0, "high": 99.8}}
KINDS = ("clean", "uneven_bg", "vignetting")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    args = p.parse_args(argv)
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for name in ("bbbc039", "dsb", "aitslab"):
        for i, s in enumerate(load_set(args.data, name)):
            img = s.image if s.image.ndim == 2 else s.image[..., 0]
            d = s.meta.get("diameter") or typical_diameter(s.labels)
            tissue = "_tissue" if list(img.shape) == TISSUE_SHAPE else ""
            for k, kind in enumerate(KINDS):
                x = _normalize(perturb(kind, img, d, seed=1000 * k + i), CARD)
                groups[(name + tissue, kind)].append(bg.assess_background(x, float(d)))
    print("| set | kind | images | amplitude min / median / max | residual | flattened |")
    print("|---|---|---|---|---|---|")
    for (name, kind), rows in sorted(groups.items()):
        a = np.array([r["amplitude"] for r in rows])
        r_ = np.array([r["residual"] for r in rows])
        flat = sum(r["uneven"] for r in rows)
        print(
            f"| {name} | {kind} | {len(rows)} | {a.min():.3f} / {np.median(a):.3f} / "
            f"{a.max():.3f} | {r_.min():.3f} / {np.median(r_):.3f} / {r_.max():.3f} | {flat} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
