"""List bundled and user models: ``nalu-count models [--json] [--show NAME]``.

Each model gets one line: name, task, architecture (+ arithmetic unit), parameters, its key
metric with the data split it was measured on, and where it comes from (bundled or user).
Broken model files are listed with the reason. ``--show NAME`` prints one model's full card;
``--json`` prints cards as JSON. User models live in ``$NALU_COUNT_MODEL_DIR`` or the per-user
data directory.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--show", metavar="NAME", help="print the full card of model NAME (a name or a path)"
    )
    parser.add_argument("--json", action="store_true", help="print the cards as JSON")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check each weights file against its card's sha256",
    )


def _params(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _arch(card: dict[str, Any]) -> str:
    config = card.get("config") or {}
    arch = str(config.get("architecture", "?"))
    unit = config.get("unit")
    if unit:
        arch += f"+{unit}"
    if config.get("fre"):
        arch += "+fre"
    return arch


def summary_line(info) -> tuple[str, ...]:
    """Columns of one model's summary line (name, task, arch, params, metric, source)."""
    if not info.ok:
        return (info.name, "-", "-", "-", "BROKEN (see below)", info.source)
    from napari_nalu_count.models import key_metric

    card = info.card
    metric = key_metric(card)
    if metric is None:
        metric_text = "no metrics"
    else:
        name, value, split = metric
        metric_text = f"{name}={value:.4g}" + (f" ({split})" if split else " (split unknown)")
    return (
        info.name,
        str(card.get("task", "?")),
        _arch(card),
        f"{_params(card.get('n_parameters'))} params",
        metric_text,
        info.source,
    )


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        print("  ".join(cells + [row[-1]]).rstrip())


def run(args: argparse.Namespace) -> int:
    from napari_nalu_count.models import (
        bundled_model_dir,
        describe_models,
        load_model,
        resolve_model,
        user_model_dir,
    )
    from napari_nalu_count.models.store import read_card

    if args.show:
        path = resolve_model(args.show)
        card = read_card(path)
        if not args.json:
            print(f"# {path}")
        print(json.dumps(card, indent=2))
        if not args.no_verify:
            load_model(path)  # checks the weights too: a corrupt file exits 2 with the reason
        return 0

    infos = describe_models(verify=not args.no_verify)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print(
            "no models found: none are bundled with this installation and there are no user "
            f"models in {user_model_dir()}.\nTrain one with `nalu-count train`, or set "
            "NALU_COUNT_MODEL_DIR to a folder of NAME.safetensors + NAME.json files."
        )
        return 0
    header = ("NAME", "TASK", "ARCHITECTURE", "PARAMS", "KEY METRIC (SPLIT)", "SOURCE")
    _print_table([header] + [summary_line(i) for i in infos])
    print(f"\nbundled models: {bundled_model_dir()}\nuser models:    {user_model_dir()}")
    broken = [i for i in infos if not i.ok]
    if broken:
        print(f"\n{len(broken)} broken model file(s), skipped by count/segment:")
        for info in broken:
            print(f"  {info.name} ({info.source}): {info.error}")
    return 0
