"""Count cells in images: ``nalu-count count INPUT... [--model NAME|PATH] [--csv OUT] ...``.

INPUT is any mix of image files, folders (their TIFF/PNG/JPEG/BMP files, not recursive; other
files such as README.md, .csv or .py are ignored) and glob patterns (quote them). The axes of
each file come from the file (ImageJ hyperstack and OME-TIFF metadata; plain multi-page TIFF
pages are frames, however many) unless --axes is given; only a file that says nothing is
guessed from its shape. Stacks give one row per plane. The table ``file,frame,count`` (frame:
the flat plane index over the stack axes in C order, 0 for a 2-D image; see
``napari_nalu_count.io_csv``) is written to ``--csv`` or printed to stdout, one row as soon as
each image is done. A progress bar runs on stderr. Files that cannot be read or processed are
reported on stderr (one line each) and skipped; the others are still processed and written,
and the exit status is then 2.

Options that add columns (see ``napari_nalu_count.io_csv``; without them the table is exactly
``file,frame,count``): ``--regions MASK.tif`` (a label mask, e.g. an atlas or tissue mask, or
a binary mask; 2-D for every plane or of the stack's shape; adds ``region``: ``all`` and one
row per region id), ``--pixel-size UM`` (µm per pixel, ``0.65`` or ``0.65,0.5`` for y,x; adds
``area_um2`` and ``density_per_mm2``), ``--areas`` (the area and density columns in pixels,
``area_px`` and ``density_per_mpx`` = cells per 10^6 px, when there is no pixel size),
``--diameter-column`` (a last column ``diameter_px``: the nucleus diameter in pixels each image
was processed at, the given one or the one found automatically) and, for
``count``, ``--volume`` (each Z-stack is also counted as a volume, cells detected in 3-D; adds
``kind``: ``plane`` or ``volume``, whose ``frame`` is the volume's index; needs axes with Z, e.g.
``--axes ZYX`` or an ImageJ file with ``slices=``). The engine is
``napari_nalu_count.infer.batch.run_batch``.

Many files: ``--scheduler local:N`` runs them on N worker processes of this machine (a
dask.distributed LocalCluster), ``--scheduler tcp://HOST:PORT`` on a running dask cluster
(whose workers see the same files); each worker loads the model once, and the table is the
same, written in input order as results arrive. ``--resume`` continues the ``--csv`` table:
files already in it are not run again (the last one is, in case it was cut short) and the
others are appended. Both need the same options as before; ``--scheduler`` needs the
``distributed`` extra (``pip install "napari-nalu-count[distributed]"``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, Any

from napari_nalu_count.errors import InputError

# ------------------------------------------------------------------------------------------
# argument helpers shared with ``segment``


def diameter_arg(text: str) -> float | str | None:
    """argparse type of ``--diameter``: the engine's rule (:func:`napari_nalu_count.infer.
    parse_diameter`): a positive number of pixels, ``auto``/``estimate``, or blank."""
    from napari_nalu_count.infer.inputs import parse_diameter

    try:
        return parse_diameter(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def scheduler_arg(text: str) -> str:
    """argparse type of ``--scheduler``: ``local:N`` or ``tcp://HOST:PORT`` (the form only;
    :func:`napari_nalu_count.infer.scaleout.parse_scheduler`)."""
    from napari_nalu_count.infer.scaleout import parse_scheduler

    try:
        return parse_scheduler(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def channel_arg(text: str) -> int | str:
    """argparse type of ``--channel``: an index or ``mean``/``max``/``luminance``."""
    t = text.strip().lower()
    if t in ("mean", "max", "luminance"):
        return t
    try:
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a channel index or mean/max/luminance, got {text!r}"
        ) from None


def _parsed_background(text: str) -> float | str | None:
    """:func:`~napari_nalu_count.infer.background.parse_background`, its InputError as
    argparse's."""
    from napari_nalu_count.infer.background import parse_background

    try:
        return parse_background(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def background_arg(text: str) -> float | str:
    """``--flatten-background [DIAMETERS]``: a width (not off)."""
    value = _parsed_background(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"--flatten-background {text!r}: give a width of at least 2 object diameters"
        )
    return value


def background_mode_arg(text: str) -> float | str | bool:
    """``--background``: ``auto``, ``on``, ``off`` or a width in object diameters."""
    value = _parsed_background(text)
    return False if value is None else value


def add_common_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    """Options shared by ``count`` and ``segment``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    parser.add_argument(
        "--model",
        default=default_model,
        metavar="NAME|PATH",
        help=f"bundled/user model name or model file path (default: {default_model})",
    )
    parser.add_argument("--csv", metavar="OUT", help="write the table here instead of stdout")
    parser.add_argument(
        "--axes", metavar="AXES", help="axes of every input, e.g. YX, TYX, ZYX, YXC, TZYX"
    )
    parser.add_argument(
        "--diameter",
        type=diameter_arg,
        metavar="PX|auto",
        help="typical cell diameter in pixels (images are rescaled to the model's), or auto",
    )
    parser.add_argument(
        "--device", default="auto", metavar="DEV", help="auto (default), cpu, cuda or mps"
    )
    parser.add_argument(
        "--channel",
        type=channel_arg,
        metavar="C",
        help="channel index, or mean/max/luminance, for multi-channel images",
    )
    parser.add_argument("--tile-size", type=int, metavar="PX", help="tile edge (default: auto)")
    parser.add_argument(
        "--background",
        type=background_mode_arg,
        default=None,
        metavar="auto|on|off|W",
        help="a smooth uneven background (haze, uneven illumination): auto (default) subtracts "
        "it where it is strong and smooth (a ramp, a bump, vignetting; not the out-of-focus "
        "nuclei of dense tissue, which would be counted too); on always (a grey opening 3 "
        "object diameters wide, or W diameters); off never",
    )
    parser.add_argument(
        "--flatten-background",
        nargs="?",
        const=True,
        default=None,
        type=background_arg,
        metavar="DIAMETERS",
        help="the same as --background on (or --background DIAMETERS): always subtract it",
    )
    parser.add_argument(
        "--scheduler",
        type=scheduler_arg,
        metavar="SPEC",
        help="run the files on a dask.distributed cluster: local:N (N worker processes on this "
        "machine) or tcp://HOST:PORT (a running scheduler); needs the [distributed] extra",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the --csv table: skip the files already in it and append the others",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "nuclei-count")
    parser.add_argument(
        "--density-dir",
        metavar="DIR",
        help="write each density map as DIR/<name>_density.tif (float32, cells per pixel)",
    )
    add_table_arguments(parser)
    parser.add_argument(
        "--volume",
        action="store_true",
        help="also count each Z-stack as a volume (cells detected in 3-D); rows with kind=volume",
    )
    parser.add_argument(
        "--z-diameter",
        type=float,
        metavar="PLANES",
        help="nucleus extent along Z in planes for --volume (default: estimated)",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


# ------------------------------------------------------------------------------------------
# inputs: the engine's (napari_nalu_count.infer.batch), re-exported lazily for older imports
# (importing the engine at module level would load torch for ``nalu-count --help``)

_ENGINE_NAMES = ("IMAGE_SUFFIXES", "expand_inputs", "read_input", "unique_output")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from napari_nalu_count.infer import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pixel_size_arg(text: str) -> tuple[float, float]:
    """argparse type of ``--pixel-size``: ``UM`` or ``UMY,UMX`` micrometres per pixel."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected micrometres per pixel (e.g. 0.65 or 0.65,0.5), got {text!r}"
        ) from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or not all(v > 0 and v != float("inf") for v in vals):
        raise argparse.ArgumentTypeError(
            f"pixel size must be one or two positive numbers (y,x), got {text!r}"
        )
    return vals[0], vals[1]


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that add columns to the table (shared by ``count`` and ``segment``)."""
    parser.add_argument(
        "--regions",
        metavar="MASK",
        help="label mask (atlas/tissue mask; 0 = outside) or binary mask image: one row per "
        "region id and plane (2-D mask: every plane; a mask of the stack's shape: per plane)",
    )
    parser.add_argument(
        "--pixel-size",
        type=pixel_size_arg,
        metavar="UM",
        help="micrometres per pixel (UM or UMY,UMX): areas in um^2, densities in cells/mm^2",
    )
    parser.add_argument(
        "--areas",
        action="store_true",
        help="add area and density columns (pixels and cells per 10^6 px without --pixel-size)",
    )
    parser.add_argument(
        "--diameter-column",
        action="store_true",
        help="add a last column diameter_px: the nucleus diameter each image was processed at "
        "(given, or found automatically)",
    )


# ------------------------------------------------------------------------------------------
# the batch loop shared with ``segment``


def run_batch(
    args: argparse.Namespace,
    task: str,
    engine_options: dict[str, Any] | None = None,
    *,
    density_dir: str | None = None,
    labels_dir: str | None = None,
    volume: bool = False,
    z_diameter: float | None = None,
    measure_csv: str | None = None,
) -> int:
    """Expand inputs, load the model once, run :func:`napari_nalu_count.infer.batch.run_batch`
    with a progress bar on stderr, stream the table to ``--csv`` or stdout; the exit status.
    """
    from tqdm import tqdm

    from napari_nalu_count.infer import batch
    from napari_nalu_count.infer.device import resolve_device
    from napari_nalu_count.models import load_model

    scheduler = getattr(args, "scheduler", None)
    resume = bool(getattr(args, "resume", False))
    if resume and not args.csv:
        raise InputError("--resume needs --csv: the table to continue")
    if scheduler is not None:
        from napari_nalu_count.infer.scaleout import check_client

        check_client(scheduler)  # the distributed extra is installed: exit 2 before any work
    files, problems = batch.expand_inputs(args.inputs)
    for msg in problems:
        print(f"nalu-count: skipped {msg}", file=sys.stderr)
    if not files:
        raise InputError("no images to process")
    if scheduler is None:
        device = str(resolve_device(args.device))
    else:  # the workers resolve the device; here the model is only checked
        device = "cpu"
    loaded = load_model(args.model, device=device)
    if loaded.task != task:
        raise InputError(
            f"model {loaded.name!r} is a {loaded.task!r} model; nalu-count {task} needs a "
            f"{task} model"
        )
    regions = getattr(args, "regions", None)
    if regions is not None:
        from napari_nalu_count.data.readers import read_image

        regions = read_image(regions)  # a bad mask is a bad argument: exit 2 before any work

    # the engine opens --csv itself (a resumed table is appended to); stdout is handed over
    out: str | IO[str] = args.csv if args.csv else sys.stdout
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, desc=task, dynamic_ncols=True)
    last = [0.0]

    def progress(event: batch.BatchEvent) -> None:
        if event.kind == "start":
            bar.set_description_str(f"{task} {Path(event.path).name}", refresh=False)
        elif event.kind == "tiles":
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0] = now
                bar.set_postfix_str(f"tiles {event.done}/{event.tiles}", refresh=False)
                bar.update(0)
        elif event.kind == "skipped":
            tqdm.write(f"nalu-count: {event.message}", file=sys.stderr)
            bar.update(1)
        elif event.kind == "output":
            tqdm.write(f"nalu-count: {event.message}", file=sys.stderr)
        elif event.kind in ("file", "resumed"):
            bar.update(1)

    with bar:
        result = batch.run_batch(
            files,
            task,
            loaded,
            diameter=args.diameter,
            axes=args.axes,
            channel=args.channel,
            device=args.device,
            tile_size=args.tile_size,
            regions=regions,
            pixel_size=getattr(args, "pixel_size", None),
            areas=True if getattr(args, "areas", False) else None,
            diameter_column=bool(getattr(args, "diameter_column", False)),
            volume=volume,
            z_diameter=z_diameter,
            density_dir=density_dir,
            labels_dir=labels_dir,
            measure_csv=measure_csv,
            csv=out,
            resume=resume,
            client=scheduler,
            engine_options=engine_options,
            progress=progress,
        )
    if result.resumed:
        print(
            f"nalu-count: {len(result.resumed)} file(s) already in {args.csv}, not run again "
            "(--resume)",
            file=sys.stderr,
        )
    failed = len(problems) + len(result.skipped)
    if result.cancelled:
        print(f"nalu-count: {result.message}", file=sys.stderr)
        return 1
    if failed:
        print(f"nalu-count: {failed} input(s) could not be processed (see above)", file=sys.stderr)
        return 2
    return 0


def engine_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """The ``count`` / ``segment`` keyword arguments the shared options give."""
    options: dict[str, Any] = {}
    flatten = getattr(args, "flatten_background", None)
    mode = getattr(args, "background", None)
    if flatten and mode is not None and mode != flatten:
        raise InputError(f"--flatten-background and --background {mode} disagree: give one of them")
    if flatten:
        options["background"] = flatten
    elif mode is not None:
        options["background"] = mode
    return options


def run(args: argparse.Namespace) -> int:
    return run_batch(
        args,
        "count",
        engine_options_from(args),
        density_dir=args.density_dir,
        volume=bool(args.volume),
        z_diameter=args.z_diameter,
    )
