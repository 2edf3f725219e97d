#!/usr/bin/env python
"""What ``fine_tune`` now records and says about its start model (docs/models.md, round 15):
the first draw of 5 train images of each set (the draw of ``finetune_generalist.py --seeds 0``),
their centroids as dots, ``fine_tune`` from ``nuclei-count`` with its default schedule; prints
the card's ``metrics.start_on_annotated`` and the notes.

    python benchmarks/notes/r15_already_good.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NALU_COUNT_MODEL_DIR", tempfile.mkdtemp(prefix="already-good-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from finetune_generalist import LOADERS, draw, preset_config  # noqa: E402

from napari_nalu_count.data.readers import Sample  # noqa: E402
from napari_nalu_count.models import load_model  # noqa: E402
from napari_nalu_count.train import fine_tune  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--sets", nargs="+", default=["bbbc039", "aitslab"], choices=sorted(LOADERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = load_model("nuclei-count")
    for name in args.sets:
        pool = LOADERS[name](args.data, "train")
        samples = [
            Sample(image=pool[i].image, dots=pool[i].dots, name=pool[i].name)
            for i in draw(len(pool), 5, args.seed)
        ]
        cfg = preset_config("api", "nuclei-count", "count", start.card)
        cfg.seed = args.seed
        t0 = time.perf_counter()
        res = fine_tune(start, samples, name=f"already-good-{name}", cfg=cfg, overwrite=True)
        print(
            f"{name}: {time.perf_counter() - t0:.0f} s, start_on_annotated "
            f"{res.card['metrics']['start_on_annotated']}",
            flush=True,
        )
        for note in res.notes:
            print("  note:", note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
