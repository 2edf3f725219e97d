"""Run a benchmark: ``nalu-count bench NAME [--json OUT] ...``.

Every benchmark prints a table and, with ``--json``, writes its figures as JSON. Benchmarks are
modules ``napari_nalu_count.bench.<name>`` with ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

BENCHMARKS: dict[str, str] = {
    "accuracy": "count/point/segmentation accuracy per data set and scale, beside LoG and Otsu+WS",
    "arithmetic": "static arithmetic task of the NALU paper and Table I of the counting paper",
    "flops": "parameters and FLOPs per pixel of every architecture and unit type",
    "speed": "megapixels per second of count/segment vs roofline and a blob_log baseline",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, help_ in BENCHMARKS.items():
        module = f"napari_nalu_count.bench.{name}"
        if importlib.util.find_spec(module) is None:
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip())
        p.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")
        mod.configure(p)
        p.set_defaults(_bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
