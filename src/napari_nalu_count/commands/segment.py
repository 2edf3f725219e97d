"""Segment nuclei into instances: ``nalu-count segment INPUT... [--model ...] [--csv OUT]
[--labels-dir DIR]``.

Inputs, table (``file,frame,count``, the count being the number of instances per plane),
progress bar and error handling are those of ``nalu-count count``. ``--labels-dir`` writes each
image's instance labels as ``DIR/<name>_labels.tif`` (int32, 0 = background, same shape as the
image without its channel axis). ``--seeds count`` (the default) seeds the watershed with a
counting model's cell centres (``--count-model``); ``--seeds interior`` uses the predicted nucleus
interiors instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_nalu_count.commands.count import add_common_arguments, run_batch, unique_output


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
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    import tifffile

    from napari_nalu_count.infer import segment

    labels_dir = Path(args.labels_dir) if args.labels_dir else None
    used: set[Path] = set()
    if labels_dir is not None:
        labels_dir.mkdir(parents=True, exist_ok=True)
    counter: list[Any] = []

    def process(image: np.ndarray, axes: str | None, channel: Any, loaded: Any, progress: Callable):
        if args.seeds == "count" and not counter:
            from napari_nalu_count.models import load_model

            counter.append(load_model(args.count_model, device=str(loaded.device)))
        res = segment(
            image,
            loaded,
            axes=axes,
            diameter=args.diameter,
            device=args.device,
            progress=progress,
            tile_size=args.tile_size,
            channel=channel,
            seeds=args.seeds,
            count_model=counter[0] if counter else args.count_model,
        )
        return res.plane_counts, res

    def write_labels(path: Path, res: Any) -> None:
        if labels_dir is not None:
            out = unique_output(labels_dir, path.stem, "_labels.tif", used)
            labels = np.asarray(res.labels, dtype=np.int32)
            tifffile.imwrite(out, labels, compression="zlib", photometric="minisblack")

    return run_batch(args, "segment", process, True, write_labels)
