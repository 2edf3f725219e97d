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
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from napari_nalu_count.errors import Cancelled, InputError

#: suffixes picked up from folders and globs (an explicit file is always tried)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


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


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "nuclei-count")
    parser.add_argument(
        "--density-dir",
        metavar="DIR",
        help="write each density map as DIR/<name>_density.tif (float32, cells per pixel)",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


# ------------------------------------------------------------------------------------------
# inputs


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_inputs(specs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files to process (in order, without duplicates) and problems (one message each)."""
    files: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    def add_dir(d: Path) -> int:
        found = [f for f in sorted(d.iterdir()) if f.is_file() and _is_image(f)]
        for f in found:
            add(f)
        return len(found)

    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            if add_dir(p) == 0:
                problems.append(f"{spec}: no TIFF/PNG images in this folder")
        elif p.is_file():
            add(p)
        elif glob.has_magic(spec):
            matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            n = 0
            for m in matches:
                if m.is_dir():
                    n += add_dir(m)
                elif m.is_file() and _is_image(m):
                    add(m)
                    n += 1
            if n == 0:
                problems.append(f"{spec}: no images match this pattern")
        else:
            problems.append(f"{spec}: no such file or folder")
    return files, problems


def read_input(
    path: Path, axes: str | None, channel: int | str | None
) -> tuple[np.ndarray, str | None, int | str | None]:
    """Read an image; return it with its axes and the channel choice.

    With ``--axes`` the array is taken as stored and the axes are the user's; otherwise they are
    the file's own (:func:`~napari_nalu_count.data.readers.read_image_axes`, which may merge
    several frame axes into one), else None (inferred from the shape). ``channel`` is
    ``--channel``, else None: the model card's rule, max over RGB(A) colours by default.
    """
    from napari_nalu_count.data.readers import read_image, read_image_axes

    if axes:
        return read_image(path), axes, channel
    image, found = read_image_axes(path)
    return image, found, channel


def unique_output(directory: Path, stem: str, suffix: str, used: set[Path]) -> Path:
    """``directory/stem+suffix``, with ``-2``, ``-3`` ... appended when already used."""
    out = directory / f"{stem}{suffix}"
    k = 2
    while out in used:
        out = directory / f"{stem}-{k}{suffix}"
        k += 1
    used.add(out)
    return out


# ------------------------------------------------------------------------------------------
# the batch loop shared with ``segment``


def run_batch(
    args: argparse.Namespace,
    task: str,
    process: Callable[..., tuple[np.ndarray, Any]],
    integer: bool,
    write_extra: Callable[[Path, Any], None] | None,
) -> int:
    """Expand inputs, load the model once, process every file, stream the CSV rows.

    ``process(image, axes, channel, loaded_model, progress)`` returns
    ``(per-plane counts, result)``; ``integer`` says whether counts are whole objects (the
    shared table writer :class:`napari_nalu_count.io_csv.CountsWriter` formats them);
    ``write_extra(path, result)`` writes optional per-file outputs.
    """
    from tqdm import tqdm

    from napari_nalu_count.infer.device import resolve_device
    from napari_nalu_count.models import load_model

    files, problems = expand_inputs(args.inputs)
    for msg in problems:
        print(f"nalu-count: skipped {msg}", file=sys.stderr)
    if not files:
        raise InputError("no images to process")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device=str(device))
    if loaded.task != task:
        raise InputError(
            f"model {loaded.name!r} is a {loaded.task!r} model; nalu-count {task} needs a "
            f"{task} model"
        )

    from napari_nalu_count.io_csv import CountsWriter

    out_fh: IO[str]
    if args.csv:
        csv_path = Path(args.csv)
        if csv_path.parent and not csv_path.parent.exists():
            csv_path.parent.mkdir(parents=True, exist_ok=True)
        out_fh = open(csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
    else:
        out_fh = sys.stdout
    failed = len(problems)
    try:
        writer = CountsWriter(out_fh)
        bar = tqdm(total=len(files), unit="img", file=sys.stderr, desc=task, dynamic_ncols=True)
        last = [0.0]

        def progress(done: int, total: int, message: str) -> None:
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0] = now
                bar.set_postfix_str(f"tiles {done}/{total}", refresh=False)
                bar.update(0)

        with bar:
            for path in files:
                bar.set_description_str(f"{task} {path.name}", refresh=False)
                try:
                    image, axes, channel = read_input(path, args.axes, args.channel)
                    counts, result = process(image, axes, channel, loaded, progress)
                except (Cancelled, KeyboardInterrupt):
                    raise
                except Exception as exc:  # never lose the batch for one bad file
                    failed += 1
                    reason = str(exc) or type(exc).__name__
                    tqdm.write(f"nalu-count: skipped {path}: {reason}", file=sys.stderr)
                    bar.update(1)
                    continue
                writer.write(str(path), counts, integer=integer)
                if write_extra is not None:
                    try:
                        write_extra(path, result)
                    except OSError as exc:
                        failed += 1
                        tqdm.write(f"nalu-count: cannot write output for {path}: {exc}")
                bar.update(1)
    finally:
        if out_fh is not sys.stdout:
            out_fh.close()
    if failed:
        print(f"nalu-count: {failed} input(s) could not be processed (see above)", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    import tifffile

    from napari_nalu_count.infer import count

    density_dir = Path(args.density_dir) if args.density_dir else None
    used: set[Path] = set()
    if density_dir is not None:
        density_dir.mkdir(parents=True, exist_ok=True)

    def process(image: np.ndarray, axes: str | None, channel: Any, loaded: Any, progress: Callable):
        res = count(
            image,
            loaded,
            axes=axes,
            diameter=args.diameter,
            device=args.device,
            progress=progress,
            tile_size=args.tile_size,
            channel=channel,
        )
        return res.plane_counts, res

    def write_density(path: Path, res: Any) -> None:
        if density_dir is not None:
            out = unique_output(density_dir, path.stem, "_density.tif", used)
            tifffile.imwrite(
                out, np.asarray(res.density, dtype=np.float32), photometric="minisblack"
            )

    return run_batch(args, "count", process, False, write_density)
