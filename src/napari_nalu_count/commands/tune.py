"""Search FRE's B and X and the learning rate with Optuna's TPE sampler (as the FRE paper does).

``nalu-count tune --data DATA [--task ...] [--arch/--unit/--widths | --from MODEL]
--trials N --epochs E [--b-min/--b-max --x-min/--x-max --lr-min/--lr-max] [--json OUT]``

Each trial trains a fresh network for ``--epochs`` epochs of ``--steps`` steps and is scored on
the validation data (count MAE, or instance F1 at IoU 0.5 for segmentation). Prints one row per
trial and the best parameters; ``--json OUT`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_nalu_count.commands.train import (
    _fmt,
    add_common_arguments,
    build_start,
    load_data,
    train_config,
)
from napari_nalu_count.errors import InputError
from napari_nalu_count.events import Event, TuneTrial


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--trials", type=int, default=20, help="number of TPE trials")
    parser.add_argument("--b-min", type=int, default=0)
    parser.add_argument("--b-max", type=int, default=None, help="default: the bottleneck width")
    parser.add_argument("--x-min", type=float, default=1.0)
    parser.add_argument("--x-max", type=float, default=1000.0)
    parser.add_argument("--lr-min", type=float, default=1e-4)
    parser.add_argument("--lr-max", type=float, default=1e-2)
    parser.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from napari_nalu_count.train.tune import tune

    if args.trials < 1:
        raise InputError("--trials must be at least 1")
    start, task, start_card = build_start(args)
    config = dict(start.config) if start_card is not None else dict(start)
    if args.epochs is None:
        args.epochs = 5
    cfg = train_config(args, task, start_card)
    tr, va, tr_desc, va_desc = load_data(args.data, task, args.seed)
    b_max = args.b_max if args.b_max is not None else int(config["widths"][-1])

    def progress(ev: Event) -> None:
        if isinstance(ev, TuneTrial):
            print(
                f"trial {ev.number}: {dict(ev.params)} -> {ev.value}", file=sys.stderr, flush=True
            )

    result = tune(
        config,
        tr,
        va,
        task,
        n_trials=args.trials,
        cfg=cfg,
        b_range=(args.b_min, b_max),
        x_range=(args.x_min, args.x_max),
        lr_range=(args.lr_min, args.lr_max),
        seed=args.seed,
        callback=progress,
    )
    print(f"{'trial':>5}  {'B':>5}  {'X':>10}  {'lr':>10}  {result.monitor:>10}  state")
    for t in result.trials:
        value = "-" if t.get("value") is None else _fmt(t["value"])
        print(
            f"{t['number']:>5}  {t['B']:>5}  {t['X']:>10.4g}  {t['lr']:>10.3g}  {value:>10}  "
            f"{t.get('state', '')}"
        )
    best = ", ".join(f"{k}={_fmt(v)}" for k, v in result.best_params.items())
    print(
        f"best ({result.direction} {result.monitor} on {va_desc}): {best} -> "
        f"{_fmt(result.best_value)}"
    )
    if args.json:
        payload = {
            "data": tr_desc,
            "validation": va_desc,
            "config": config,
            "epochs_per_trial": cfg.epochs,
            "steps_per_epoch": cfg.steps_per_epoch,
            **result.to_dict(),
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return 0
