#!/usr/bin/env python
"""Weight interpolation between the start model and a fine-tuned one (WiSE-FT, Wortsman et
al. 2022): does a model between the two keep the fine-tuning's gain on the rest of the set and
lose less where the start model was already right?

For every fine-tuned model given (``finetune_generalist.py`` leaves them in its
``NALU_COUNT_MODEL_DIR``), the weights and BatchNorm statistics are mixed as
``(1 - a) * start + a * fine-tuned`` for each ``--alphas`` value, saved with the fine-tuned
model's card, and the set's val images are counted end to end (``count()`` defaults, size
estimated).

    python benchmarks/notes/r15_wise_ft.py --data ../shared/data --set aitslab \\
        --models /tmp/ft-bench-XXXX/ft-aitslab-{0,1,2}.safetensors --json OUT
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_generalist import LOADERS, evaluate  # noqa: E402

from napari_nalu_count.models import load_model, save_model  # noqa: E402


def mix(start, tuned, alpha: float):
    """The fine-tuned network with its float tensors replaced by the interpolation."""
    net = copy.deepcopy(tuned.net)
    s0, s1 = start.net.state_dict(), tuned.net.state_dict()
    if set(s0) != set(s1):
        raise SystemExit(f"state dicts differ: {sorted(set(s0) ^ set(s1))[:5]}")
    out = {}
    for k, v1 in s1.items():
        v0 = s0[k]
        out[k] = (1 - alpha) * v0 + alpha * v1 if v1.is_floating_point() else v1
    net.load_state_dict(out)
    return net


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--set", choices=sorted(LOADERS), default="aitslab")
    p.add_argument("--start", default="nuclei-count")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    val = LOADERS[args.set](args.data, "val")
    start = load_model(args.start)
    out_dir = Path(tempfile.mkdtemp(prefix="wise-ft-"))
    rows = []
    for path in args.models:
        tuned = load_model(path)
        for a in args.alphas:
            net = mix(start, tuned, a)
            card = copy.deepcopy(tuned.card)
            saved = save_model(net, card, f"mix{int(100 * a)}", directory=out_dir, overwrite=True)
            m = evaluate(load_model(saved), val)
            rows.append(
                {
                    "model": Path(path).name,
                    "alpha": a,
                    "mre": m["mre"],
                    "mae": m["mae"],
                    "bias": m["bias"],
                }
            )
            print(
                f"{Path(path).name} alpha {a:.2f}: {100 * m['mre']:.1f} % "
                f"(MAE {m['mae']:.2f}, bias {m['bias']:+.2f})",
                flush=True,
            )
    for a in args.alphas:
        v = [r["mre"] for r in rows if r["alpha"] == a]
        print(f"alpha {a:.2f}: mean {100 * np.mean(v):.1f} %")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"set": args.set, "models": args.models, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
