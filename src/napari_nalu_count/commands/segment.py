"""Segment nuclei into instances: ``nalu-count segment INPUT... [--model ...] [--csv OUT]
[--labels-dir DIR] [--measure-csv OUT]``.

Inputs, table (``file,frame,count``, the count being the number of instances per plane),
progress bar and error handling are those of ``nalu-count count``, and so are ``--regions``
(objects whose centroid falls in each region), ``--pixel-size`` and ``--areas``.
``--labels-dir`` writes each image's instance labels as ``DIR/<name>_labels.tif`` (int32, 0 =
background, same shape as the image without its channel axis). ``--measure-csv`` writes one row
per object (``file,label,frame,centroid_y_px,centroid_x_px,...,area_px|area_um2,
equivalent_diameter_px|_um,mean_intensity,max_intensity,eccentricity,solidity``; see
``napari_nalu_count.measure``). ``--seeds count`` (the default) seeds the watershed with a
counting model's cell centres (``--count-model``); ``--seeds interior`` uses the predicted
nucleus interiors instead.
"""

from __future__ import annotations

import argparse

from napari_nalu_count.commands.count import (
    add_common_arguments,
    add_table_arguments,
    engine_options_from,
    run_batch,
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "nuclei-seg")
    parser.add_argument(
        "--labels-dir",
        metavar="DIR",
        help="write instance labels as DIR/<name>_labels.tif (int32)",
    )
    parser.add_argument(
        "--seeds",
        choices=("interior", "count"),
        default="count",
        help="watershed seeds: a counting model's peaks (default; better on BBBC039 val, see "
        "docs/benchmarks/segmentation_seeds.md) or the predicted interiors",
    )
    parser.add_argument(
        "--count-model",
        default="nuclei-count",
        metavar="NAME|PATH",
        help="counting model for --seeds count (default: nuclei-count)",
    )
    add_table_arguments(parser)
    parser.add_argument(
        "--measure-csv",
        metavar="OUT",
        help="write per-object measurements (area, diameter, intensity, eccentricity, "
        "solidity; um with --pixel-size) to this CSV",
    )
    parser.add_argument(
        "--volume",
        action="store_true",
        help="also count each Z-stack as a volume (objects linked across planes by overlap); "
        "rows with kind=volume, and DIR/<name>_labels3d.tif with --labels-dir",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    options = {"seeds": args.seeds, **engine_options_from(args)}
    if args.seeds == "count":
        options["count_model"] = args.count_model
    return run_batch(
        args,
        "segment",
        options,
        labels_dir=args.labels_dir,
        measure_csv=args.measure_csv,
        volume=bool(args.volume),
    )
