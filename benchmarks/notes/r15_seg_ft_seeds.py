#!/usr/bin/env python
"""A fine-tuned segmenter with seeds from the bundled counter or from a counter fine-tuned on
the same 5 images (docs/models.md, round 15): segment() on every Aitslab val image, instance
F1 at IoU 0.5 / 0.75 and the objects' count error.

    python benchmarks/notes/r15_seg_ft_seeds.py --data ../shared/data \\
        --seg DIR/ftseg-aitslab-{0,1,2}.safetensors --count DIR/ft-aitslab-{0,1,2}.safetensors

(the models that ``benchmarks/finetune_segment.py`` and ``benchmarks/finetune_generalist.py
--config api`` leave in their ``NALU_COUNT_MODEL_DIR``, draws in the same order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_segment import LOADERS  # noqa: E402

from napari_nalu_count.infer import segment  # noqa: E402
from napari_nalu_count.models import load_model  # noqa: E402
from napari_nalu_count.train.metrics import instance_f1  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--set", choices=sorted(LOADERS), default="aitslab")
    p.add_argument("--seg", nargs="+", required=True)
    p.add_argument("--count", nargs="+", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if len(args.seg) != len(args.count):
        raise SystemExit("--seg and --count need one model per draw each")
    torch.set_num_threads(args.threads)
    val = LOADERS[args.set](args.data, "val")
    rows = []
    for k, (seg_path, count_path) in enumerate(zip(args.seg, args.count, strict=True)):
        seg = load_model(seg_path)
        for label, counter in (("bundled", "nuclei-count"), ("fine-tuned", load_model(count_path))):
            pairs, err, total = [], 0, 0
            for s in val:
                labels = np.asarray(segment(s.image, seg, device="cpu", count_model=counter).labels)
                pairs.append((np.asarray(s.labels), labels))
                n_true = len(np.unique(s.labels)) - 1
                err += abs(len(np.unique(labels)) - 1 - n_true)
                total += n_true
            m = instance_f1(pairs, (0.5, 0.75))
            row = {
                "draw": k,
                "seed_counter": label,
                "f1_50": m[0.5].f1,
                "f1_75": m[0.75].f1,
                "count_mre": err / total,
            }
            rows.append(row)
            print(
                f"draw {k}, seeds from the {label} counter: F1@0.5 {row['f1_50']:.3f}, "
                f"F1@0.75 {row['f1_75']:.3f}, objects {100 * row['count_mre']:.1f} %",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"set": args.set, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
