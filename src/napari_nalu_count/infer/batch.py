"""Many files, one table: the batch engine behind ``nalu-count count|segment`` (and a GUI
"Run on folder...").

:func:`run_batch` expands folders and globs (:func:`expand_inputs`), loads the model once, reads
every file with the axes it records (:func:`~napari_nalu_count.data.readers.read_image_axes`,
or as stored with ``axes=``), runs :func:`~napari_nalu_count.infer.count` or
:func:`~napari_nalu_count.infer.segment` on it and appends its rows to one table (the shared
writer :mod:`napari_nalu_count.io_csv`: ``file,frame,count``, plus ``kind``, ``region`` and the
area / density columns when asked), streamed to ``csv`` as each file is done. Optional
per-file outputs: density maps (``density_dir``), instance labels (``labels_dir``), per-object
measurements (``measure=True``, see :func:`napari_nalu_count.measure`).

A file that cannot be read or processed is listed in :attr:`BatchResult.skipped` with the
reason and the others go on. A cancel (``cancel`` token) stops between tiles: the rows of the
files finished so far are kept (and written), :attr:`BatchResult.cancelled` is True and
:attr:`BatchResult.message` says how far it got.

Progress: ``progress(event)`` receives :class:`BatchEvent` objects (frozen dataclasses):
``start`` (a file begins; on a cluster: it is sent to the workers), ``tiles`` (tile progress
inside it; not sent from a cluster), ``file`` (its rows are in the table), ``skipped`` (it
failed; ``message`` says why), ``output`` (an optional output could not be written),
``resumed`` (a resumed table already has it; not processed again), ``done``.

Many files on many machines: ``client=`` runs the same per-file work (:func:`process_file`)
on ``dask.distributed`` workers (:mod:`napari_nalu_count.infer.scaleout`), one model load per
worker, the rows still written in input order; ``resume=True`` continues a table.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from napari_nalu_count.errors import Cancelled, CancelToken, InputError

#: suffixes picked up from folders and globs (an explicit file is always tried)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

TASKS = ("count", "segment")


@dataclass(frozen=True)
class BatchEvent:
    """One progress message of :func:`run_batch` (see the module docstring for ``kind``).

    ``index`` is the 0-based file number, ``total`` the number of files, ``done`` / ``tiles``
    the tiles finished / planned in the current file, ``message`` a human-readable line.
    """

    kind: str
    index: int
    total: int
    path: str = ""
    done: int = 0
    tiles: int = 0
    message: str = ""


@dataclass
class BatchResult:
    """What :func:`run_batch` produced.

    ``header`` and ``rows``: the table as written (strings); ``files``: the files processed,
    in order; ``skipped``: ``(path or pattern, reason)`` per input that failed; ``outputs``:
    density / labels / measurement files written; ``measurements``: the per-object table of
    every file (a pandas DataFrame with a leading ``file`` column) when ``measure=True``;
    ``cancelled``: True when a cancel stopped the run (the rows so far are kept);
    ``resumed``: files not processed again because a resumed table already had them.
    """

    header: tuple[str, ...]
    rows: list[list[str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    measurements: Any = None
    cancelled: bool = False
    n_inputs: int = 0
    resumed: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every input processed and written, nothing cancelled."""
        return not self.skipped and not self.cancelled

    @property
    def message(self) -> str:
        """One line: how many files were done, skipped, and whether it was cancelled."""
        done = f"{len(self.files)} of {self.n_inputs} file(s) done"
        if self.resumed:
            done += f" ({len(self.resumed)} more already in the table)"
        if self.cancelled:
            return f"cancelled: {done}; the table holds the rows of the finished files only"
        if self.skipped:
            return f"{done}, {len(self.skipped)} input(s) could not be processed"
        return done

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame (numbers parsed)."""
        import io

        import pandas as pd

        buf = io.StringIO()
        import csv

        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header)
        w.writerows(self.rows)
        buf.seek(0)
        return pd.read_csv(buf, keep_default_na=False, na_values=[""])


# ------------------------------------------------------------------------------------------
# inputs


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_inputs(specs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files to process (in order, without duplicates) and problems (one message each).

    A spec is a file (always tried), a folder (its image files, sorted, not recursive) or a
    glob pattern (``**`` recursive); see :data:`IMAGE_SUFFIXES`.
    """
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
        spec = os.fspath(spec)
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

    With ``axes`` the array is taken as stored and the axes are the caller's; otherwise they
    are the file's own (:func:`~napari_nalu_count.data.readers.read_image_axes`), else None
    (inferred from the shape).
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


def read_regions(regions: Any) -> Any:
    """A region mask as given (array) or read from a file path (label image or mask)."""
    if isinstance(regions, (str, os.PathLike)):
        from napari_nalu_count.data.readers import read_image

        return read_image(regions)
    return regions


# ------------------------------------------------------------------------------------------
# the loop


def _stack_axes(axes: str) -> str:
    return "".join(a for a in axes if a in "TZ")


def _volume_regions(
    points: np.ndarray,
    axes: str,
    stack_shape: tuple[int, ...],
    regions: Any,
    n_vol: int,
    pixel_size: Any,
) -> Any:
    """Volume points per region: a RegionTable with one row per volume (2-D areas)."""
    from napari_nalu_count.analysis.regions import RegionTable, as_regions

    plane_shape = regions.plane_shape
    regs = as_regions(regions.raw, plane_shape, stack_shape)
    k = len(regs.ids)
    counts = np.zeros((n_vol, k))
    sizes = np.zeros((n_vol, k))
    stack = _stack_axes(axes)
    zi = stack.index("Z")
    others = [i for i in range(len(stack)) if i != zi]
    other_shape = tuple(stack_shape[i] for i in others)
    flat_planes = list(np.ndindex(*stack_shape))
    for v, oidx in enumerate(np.ndindex(*other_shape) if other_shape else [()]):
        # region areas: the mean over the volume's planes (the same for a 2-D mask)
        plane_ids = [
            i
            for i, p in enumerate(flat_planes)
            if all(p[o] == oidx[j] for j, o in enumerate(others))
        ]
        from napari_nalu_count.analysis.regions import _region_sizes

        sizes[v] = np.mean([_region_sizes(regs, f, stack_shape) for f in plane_ids], axis=0)
        if not len(points):
            continue
        # points are in `axes` order without C: stack columns then Y, X in axes order
        out_axes = axes.replace("C", "")
        cols = {a: out_axes.index(a) for a in out_axes}
        mine = np.ones(len(points), dtype=bool)
        for j, o in enumerate(others):
            mine &= np.rint(points[:, cols[stack[o]]]) == oidx[j]
        pts = points[mine]
        for p in pts:
            plane_idx = [0] * len(stack)
            for j, o in enumerate(others):
                plane_idx[o] = oidx[j]
            plane_idx[zi] = int(np.clip(np.rint(p[cols["Z"]]), 0, stack_shape[zi] - 1))
            f = flat_planes.index(tuple(plane_idx)) if stack_shape else 0
            reg = regs.plane(f, stack_shape)
            iy = int(np.clip(np.rint(p[cols["Y"]]), 0, plane_shape[0] - 1))
            ix = int(np.clip(np.rint(p[cols["X"]]), 0, plane_shape[1] - 1))
            if regs.labels is not None:
                hit = np.flatnonzero(regs.ids == reg[iy, ix])
                counts[v, hit] += 1
            else:
                counts[v] += reg[:, iy, ix]
    return RegionTable(
        ids=regs.ids, counts=counts, areas_px=sizes, pixel_size=pixel_size, integer=True
    )


@dataclass
class _RegionSource:
    raw: Any
    plane_shape: tuple[int, int]


def _canonical_stack(arr: np.ndarray, axes: str) -> np.ndarray:
    """A result array (``axes`` without C) with its stack axes first, in their order."""
    out_axes = axes.replace("C", "")
    canon = _stack_axes(out_axes) + "YX"
    if canon == out_axes:
        return arr
    return np.transpose(arr, [out_axes.index(a) for a in canon])


@dataclass(frozen=True)
class FileSettings:
    """Everything processing one file needs besides the model: the options of
    :func:`run_batch`, checked. Plain data (a dask worker receives it once per batch).

    ``device`` is resolved for a local run and the name as given for workers (each resolves
    it); ``regions`` is a mask array, a function ``regions(path) -> mask``, or None.
    """

    task: str
    diameter: Any = None
    axes: str | None = None
    channel: Any = None
    device: str = "cpu"
    tile_size: int | None = None
    volume: bool = False
    z_diameter: float | None = None
    regions: Any = None
    pixel_size: Any = None
    areas: bool = False
    diameter_column: bool = False
    measure: bool = False

    def region_fn(self) -> Callable[[Path], Any] | None:
        if self.regions is None:
            return None
        if callable(self.regions):
            return self.regions
        fixed = self.regions
        return lambda _p: fixed


@dataclass
class FileOutcome:
    """What processing one file gave: its table ``rows`` (None when it failed, ``error`` then
    says why), the output files written, ``problems`` with them as ``(reason, message)``
    pairs (the rows still count), its per-object ``measurements`` (a DataFrame or None), and
    ``notes``: what the engine corrected in the image (hot pixels, bright artefacts), one line
    each, reported but not a problem.
    """

    path: str
    rows: list[list[str]] | None
    error: str = ""
    outputs: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    measurements: Any = None
    notes: list[str] = field(default_factory=list)


#: per file: where its density map, labels and 3-D labels go (None: not written)
OutputNames = tuple["Path | None", "Path | None", "Path | None"]


def output_names(
    files: list[Path],
    density_dir: Path | None,
    labels_dir: Path | None,
    volume: bool,
) -> list[OutputNames]:
    """The per-file output paths, decided up front in input order (``DIR/<name>_density.tif``,
    ``_labels.tif``, ``_labels3d.tif``; ``-2``, ``-3`` ... when a name repeats), so that they
    do not depend on which files fail or finish first, nor on a resumed run."""
    used: set[Path] = set()
    names: list[OutputNames] = []
    for path in files:
        dens = unique_output(density_dir, path.stem, "_density.tif", used) if density_dir else None
        lab = unique_output(labels_dir, path.stem, "_labels.tif", used) if labels_dir else None
        lab3 = (
            unique_output(labels_dir, path.stem, "_labels3d.tif", used)
            if labels_dir and volume
            else None
        )
        names.append((dens, lab, lab3))
    return names


def process_file(
    path: Path,
    settings: FileSettings,
    loaded: Any,
    options: dict[str, Any],
    names: OutputNames = (None, None, None),
    progress: Callable[[int, int, str], Any] | None = None,
    cancel: CancelToken | None = None,
) -> FileOutcome:
    """Read one file, count or segment it with ``loaded`` (and the engine ``options``), make
    its rows, write its outputs and measure its objects: the work :func:`run_batch` does per
    file, in this process or on a dask worker. Never raises for a problem of the file (it is
    in the outcome); :class:`Cancelled` and ``KeyboardInterrupt`` pass through."""
    s = settings
    region_fn = s.region_fn()
    try:
        image, file_axes, ch = read_input(path, s.axes, s.channel)
        res = _run_one(
            s.task,
            image,
            loaded,
            file_axes,
            ch,
            s.diameter,
            s.device,
            s.tile_size,
            s.volume,
            s.z_diameter,
            options,
            progress,
            cancel,
        )
        rows, _ = _rows_for(
            path, res, s.task, s.task == "segment", region_fn, s.pixel_size, s.areas, s.volume
        )
        if s.diameter_column:
            rows = with_diameter(rows, res)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # never lose the batch for one bad file
        return FileOutcome(str(path), None, error=str(exc) or type(exc).__name__)
    from napari_nalu_count.infer.engine import describe_corrections, result_pixels

    out = FileOutcome(str(path), rows)
    note = describe_corrections(getattr(res, "corrections", None), result_pixels(res))
    if note:
        out.notes.append(note)
    density_path, labels_path, labels3d_path = names
    try:
        if density_path is not None and s.task == "count":
            _write_tiff(density_path, np.asarray(res.density, dtype=np.float32), False)
            out.outputs.append(density_path)
        if labels_path is not None and s.task == "segment":
            _write_tiff(labels_path, np.asarray(res.labels, dtype=np.int32), True)
            out.outputs.append(labels_path)
            if labels3d_path is not None and getattr(res, "volume_labels", None) is not None:
                _write_tiff(labels3d_path, np.asarray(res.volume_labels, dtype=np.int32), True)
                out.outputs.append(labels3d_path)
    except OSError as exc:
        out.problems.append(
            (f"cannot write output: {exc}", f"cannot write output for {path}: {exc}")
        )
    if s.measure:
        from napari_nalu_count.analysis.measurements import measure as _measure

        try:
            plane_image = _intensity_for(image, file_axes, res, ch, loaded)
            df = _measure(res.labels, plane_image, pixel_size=s.pixel_size, axes=res.axes)
            df.insert(0, "file", str(path))
            out.measurements = df
        except Exception as exc:  # noqa: BLE001 - reported like any per-file problem
            out.problems.append((f"cannot measure: {exc}", f"cannot measure {path}: {exc}"))
    return out


def _first_field(line: bytes) -> str:
    import csv as _csv

    row = next(_csv.reader([line.decode("utf-8").rstrip("\r\n")]), [])
    return row[0] if row else ""


def _table_so_far(path: Path, header: tuple[str, ...] | list[str]) -> set[str] | None:
    """Prepare the table at ``path`` to be continued; return the ``file`` values it keeps (a
    resumed run skips them), or None when there is no table to continue (no file, or an
    empty one).

    Rows are written file by file in input order, so only the last file of the table can be
    incomplete (a run killed while writing it): its rows and a cut-off last line are removed
    and that file is run again. Raises InputError when the header differs from ``header``
    (other options than the first run) or the file is not a UTF-8 table."""
    import csv as _csv

    if not path.is_file() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # cut off in the middle
    if not lines:
        path.write_bytes(b"")
        return None
    try:
        found = next(_csv.reader([lines[0].decode("utf-8").rstrip("\r\n")]))
        files = [_first_field(line) for line in lines[1:]]
    except UnicodeDecodeError:
        raise InputError(f"cannot resume {path}: it is not a UTF-8 CSV table") from None
    if tuple(found) != tuple(header):
        raise InputError(
            f"cannot resume {path}: its columns are {','.join(found)!r} but this run writes "
            f"{','.join(header)!r} (use the options of the first run)"
        )
    keep = len(lines)
    if files:  # drop the last file's rows: it may have been cut short
        last = files[-1]
        while keep > 1 and files[keep - 2] == last:
            keep -= 1
    size = sum(len(line) for line in lines[:keep])
    if size != len(data):
        with open(path, "rb+") as fh:
            fh.truncate(size)
    return set(files[: keep - 1])


def _measure_header(ps: Any) -> list[str]:
    return list(_concat_measurements([], ps).columns)


def _check_measure_columns(path: Path, ps: Any) -> None:
    """InputError unless the measurement table at ``path`` (if any) has this run's columns."""
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first.endswith(b"\n"):
        return  # empty, or cut off before its header ended: written anew
    try:
        found = first.decode("utf-8").rstrip("\r\n").split(",")
    except UnicodeDecodeError:
        raise InputError(f"cannot resume {path}: it is not a UTF-8 CSV table") from None
    if found != _measure_header(ps):
        raise InputError(
            f"cannot resume {path}: its columns differ from this run's (use the options of "
            "the first run)"
        )


def _measurements_so_far(path: Path, done: set[str], ps: Any) -> bool:
    """Keep only the rows of ``done`` files in the measurement table at ``path`` (a resumed
    run measures the others again); True when a header is left to append to."""
    _check_measure_columns(path, ps)
    if not path.is_file():
        return False
    lines = path.read_bytes().splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # cut off in the middle
    kept = lines[:1] + [line for line in lines[1:] if _first_field(line) in done]
    path.write_bytes(b"".join(kept))
    return bool(kept)


def run_batch(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    task: str,
    model: Any,
    *,
    diameter: float | str | None = None,
    axes: str | None = None,
    channel: int | str | None = None,
    device: str = "auto",
    tile_size: int | None = None,
    regions: Any = None,
    pixel_size: Any = None,
    areas: bool | None = None,
    diameter_column: bool = False,
    volume: bool = False,
    z_diameter: float | None = None,
    density_dir: str | os.PathLike | None = None,
    labels_dir: str | os.PathLike | None = None,
    measure: bool = False,
    measure_csv: str | os.PathLike | None = None,
    csv: str | os.PathLike | IO[str] | None = None,
    resume: bool = False,
    client: Any = None,
    engine_options: dict[str, Any] | None = None,
    progress: Callable[[BatchEvent], Any] | None = None,
    cancel: CancelToken | None = None,
) -> BatchResult:
    """Run ``task`` (``"count"`` or ``"segment"``) with ``model`` on every file of ``paths``.

    Parameters
    ----------
    paths
        Files, folders and glob patterns (one, or an iterable of them); see
        :func:`expand_inputs`.
    model
        Model name, path or ``LoadedModel`` of the task; loaded once (once per worker with
        ``client``).
    diameter, axes, channel, device, tile_size
        As for :func:`~napari_nalu_count.infer.count` (``axes`` then describes every file as
        stored; None: each file's own axes).
    regions
        A region mask for every file: a label mask (atlas / tissue mask, integer ids, 0 =
        outside) or boolean masks, an array or a path to an image file; ``(Y, X)`` applies to
        every plane, one of the stack's shape per plane (see
        :mod:`napari_nalu_count.analysis.regions`). Or a function ``regions(path) -> mask or
        None`` for a mask per file. Adds the ``region`` column: per plane the whole-plane row
        (``all``) and one row per region id (the density integral in it when counting, the
        objects whose centroid is in it when segmenting).
    pixel_size
        µm per pixel (scalar or ``(y, x)``): areas in µm² and densities in cells per mm²;
        without it pixels and cells per 10⁶ px.
    areas
        Add the area and density columns; None (default): when ``pixel_size`` or ``regions``
        is given.
    diameter_column
        Add a last column ``diameter_px``: the nucleus diameter (pixels of the file) the image
        was counted or segmented at: the given one, or the one found automatically (see
        ``CountResult.diameter_source``); empty when the model used its own grid unchanged.
    volume, z_diameter
        Also count each Z-stack as volumes (``count(..., volume=True)``: 3-D peaks;
        ``segment(..., volume=True)``: objects linked across Z; ``z_diameter`` is for counting
        only); the table gets a ``kind`` column (``plane`` / ``volume``), see
        :mod:`napari_nalu_count.io_csv`. With ``labels_dir`` a segmentation then writes the
        linked 3-D labels (``<name>_labels3d.tif``) beside the per-plane ones.
    density_dir, labels_dir
        Write each density map (counting; float32 cells per pixel) as
        ``DIR/<name>_density.tif`` / instance labels (segmentation; int32) as
        ``DIR/<name>_labels.tif``; names made unique with ``-2``, ``-3`` ... in input order.
    measure, measure_csv
        Segmentation only: measure every object (:func:`napari_nalu_count.measure`, with the
        image's intensities and ``pixel_size``) into :attr:`BatchResult.measurements`; with
        ``measure_csv`` also written there (implies ``measure``).
    csv
        A path or an open text stream to stream the table to (header first, then each file's
        rows as soon as it is done, in input order); None: the table is only returned.
    resume
        Continue the table at ``csv`` (a path): files already in it are not processed again
        (:attr:`BatchResult.resumed`) and the new rows are appended; its header must be the
        one this run writes. The table's last file is run again (an interrupted run may have
        cut its rows short; its rows are replaced), and a cut-off last line is dropped.
        ``measure_csv`` is continued the same way. Without a table there yet this is a plain
        run.
    client
        Run the files on a ``dask.distributed`` cluster: a ``distributed.Client``, or a
        scheduler: ``"local:N"`` (a LocalCluster of N worker processes for this run, closed
        at the end) or ``"tcp://HOST:PORT"`` (a running scheduler). Each worker loads the
        model once; the rows are still written in input order as results arrive. The workers
        read the input files and write the output files by the same paths, so a remote
        cluster needs them on a shared file system. None (default): this process. See
        :mod:`napari_nalu_count.infer.scaleout` (needs the ``distributed`` extra).
    engine_options
        Further keyword arguments of ``count`` / ``segment`` (``seeds``, ``count_model``,
        ``min_mass``, ``level`` ...).
    progress, cancel
        ``progress(BatchEvent)``; a :class:`~napari_nalu_count.errors.CancelToken` (with
        ``client``: checked between files).

    Raises :class:`InputError` for bad arguments, no images at all, a model of the other
    task, or a scheduler that cannot be used; every per-file problem is reported in the
    result instead.
    """
    from napari_nalu_count import io_csv
    from napari_nalu_count.analysis import units as _units
    from napari_nalu_count.infer.device import check_device_name, resolve_device
    from napari_nalu_count.models import load_model

    if task not in TASKS:
        raise InputError(f"task must be 'count' or 'segment', got {task!r}")
    ps = _units.check_pixel_size(pixel_size)
    if not isinstance(volume, (bool, np.bool_)):
        raise InputError(f"volume must be True or False, got {volume!r}")
    if measure_csv is not None:
        measure = True
    if measure and task != "segment":
        raise InputError("measurements need instance labels: use task 'segment'")
    if resume and (csv is None or hasattr(csv, "write")):
        raise InputError("resume needs csv= the path of the table to continue")
    scheduler = None
    if client is not None:
        from napari_nalu_count.infer import scaleout

        scheduler = scaleout.check_client(client)
    regions_value: Any = None
    if callable(regions):
        regions_value = regions
    elif regions is not None:
        regions_value = read_regions(regions)
    if areas is None:
        areas = ps is not None or regions_value is not None
    header = io_csv.table_header(
        kind=bool(volume),
        region=regions_value is not None,
        areas=None if not areas else ("um" if ps is not None else "px"),
        extra=("diameter_px",) if diameter_column else (),
    )

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, problems = expand_inputs(paths)
    result = BatchResult(header=header, n_inputs=len(files))
    for msg in problems:
        spec, _, reason = msg.partition(": ")
        result.skipped.append((spec, reason))
    if not files:
        raise InputError("no images to process" + (f" ({problems[0]})" if problems else ""))

    done_before: set[str] = set()
    continuing = measures_continue = False
    if resume:
        if measure_csv is not None:  # checked before either table is changed
            _check_measure_columns(Path(measure_csv), ps)
        found = _table_so_far(Path(csv), header)  # type: ignore[arg-type]
        continuing = found is not None
        done_before = found or set()
        if measure_csv is not None:
            measures_continue = _measurements_so_far(Path(measure_csv), done_before, ps)

    if scheduler is None:
        device = str(resolve_device(device))
        load_device = device
    else:
        device = check_device_name(device)  # each worker resolves it
        load_device = "cpu"
    loaded = (
        model
        if hasattr(model, "net") and hasattr(model, "card")
        else load_model(model, device=load_device)
    )
    if loaded.task != task:
        raise InputError(
            f"model {loaded.name!r} is a {loaded.task!r} model; {task} needs a {task} model"
        )
    options = dict(engine_options or {})
    if task == "segment" and options.get("seeds", "count") == "count":
        cm = options.get("count_model", "nuclei-count")
        if not hasattr(cm, "net"):
            options["count_model"] = load_model(cm, device=str(loaded.device))

    density_out = Path(density_dir) if density_dir is not None and task == "count" else None
    labels_out = Path(labels_dir) if labels_dir is not None and task == "segment" else None
    for d in (density_out, labels_out):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    names = output_names(files, density_out, labels_out, bool(volume))
    settings = FileSettings(
        task=task,
        diameter=diameter,
        axes=axes,
        channel=channel,
        device=device,
        tile_size=tile_size,
        volume=bool(volume),
        z_diameter=z_diameter,
        regions=regions_value,
        pixel_size=ps,
        areas=bool(areas),
        diameter_column=bool(diameter_column),
        measure=bool(measure),
    )

    def emit(
        kind: str, index: int, path: Any = "", done: int = 0, tiles: int = 0, message: str = ""
    ) -> None:
        if progress is not None:
            progress(BatchEvent(kind, index, len(files), str(path), done, tiles, message))

    todo: list[int] = []
    for i, path in enumerate(files):
        if str(path) in done_before:
            result.resumed.append(path)
            emit("resumed", i, path, message=f"{path.name}: already in {csv}")
        else:
            todo.append(i)

    fh: IO[str] | None = None
    measure_fh: IO[str] | None = None
    stack = contextlib.ExitStack()  # the cluster of this run, closed at the end
    try:
        if scheduler is not None and todo:  # connect (or start) before writing anything
            dask_client, worker_threads = stack.enter_context(scaleout.open_client(scheduler))
        if csv is None:
            fh = None
        elif hasattr(csv, "write"):
            fh = csv  # type: ignore[assignment]
        else:
            csv_path = Path(csv)  # type: ignore[arg-type]
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            mode = "a" if continuing else "w"
            fh = stack.enter_context(open(csv_path, mode, newline="", encoding="utf-8"))
        if measure_csv is not None:
            measure_path = Path(measure_csv)
            measure_path.parent.mkdir(parents=True, exist_ok=True)
            mode = "a" if measures_continue else "w"
            measure_fh = stack.enter_context(open(measure_path, mode, newline="", encoding="utf-8"))
    except BaseException:
        stack.close()
        raise
    measured: list[Any] = []
    measure_header = [measures_continue]  # a header is in the measurement table
    measure_columns = _measure_header(ps) if measure else []

    def accept(i: int, outcome: FileOutcome) -> None:
        path = files[i]
        if outcome.rows is None:
            result.skipped.append((str(path), outcome.error))
            emit("skipped", i, path, message=f"skipped {path}: {outcome.error}")
            return
        result.rows.extend(outcome.rows)
        result.files.append(path)
        if writer is not None:
            writer.write_rows(outcome.rows)
        result.outputs.extend(outcome.outputs)
        for reason, message in outcome.problems:
            result.skipped.append((str(path), reason))
            emit("output", i, path, message=message)
        for note in outcome.notes:
            emit("output", i, path, message=f"{path.name}: {note}")
        if outcome.measurements is not None:
            measured.append(outcome.measurements)
            if measure_fh is not None:  # streamed like the table, so a resume can continue
                df = outcome.measurements
                if list(df.columns) != measure_columns:  # no intensities for this file
                    df = df.reindex(columns=measure_columns)
                df.to_csv(
                    measure_fh, index=False, lineterminator="\n", header=not measure_header[0]
                )
                measure_fh.flush()
                measure_header[0] = True
        emit("file", i, path, message=f"{path.name}: done")

    def local_outcomes() -> Iterator[tuple[int, FileOutcome]]:
        for i in todo:
            path = files[i]
            emit("start", i, path, message=f"{task} {path.name} ({i + 1}/{len(files)})")

            def tile_progress(
                done: int, total: int, message: str, i: int = i, path: Path = path
            ) -> None:
                emit("tiles", i, path, done, total, message)

            yield i, process_file(path, settings, loaded, options, names[i], tile_progress, cancel)

    outcomes: Iterator[tuple[int, FileOutcome]] | None = None
    try:
        writer = (
            io_csv.CountsWriter(fh, header=header, write_header=not continuing)
            if fh is not None
            else None
        )
        if scheduler is None or not todo:
            outcomes = local_outcomes()
        else:
            outcomes = scaleout.run_files(
                dask_client,
                worker_threads,
                settings,
                loaded,
                options,
                [(i, files[i], names[i]) for i in todo],
                submitted=lambda i: emit(
                    "start", i, files[i], message=f"{task} {files[i].name}: sent to the cluster"
                ),
                cancel=cancel,
            )
        for i, outcome in outcomes:
            accept(i, outcome)
    except Cancelled:
        result.cancelled = True
    finally:
        if outcomes is not None:
            outcomes.close()  # cancels the files still on the cluster
        if measure:
            result.measurements = _concat_measurements(measured, ps)
            if measure_fh is not None:
                if not measure_header[0]:  # no objects anywhere: the header alone
                    result.measurements.to_csv(measure_fh, index=False, lineterminator="\n")
                result.outputs.append(Path(measure_csv))  # type: ignore[arg-type]
        stack.close()  # the files; a cluster started for this run is shut down
    emit("done", len(files), message=result.message)
    return result


def count_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    model: Any = "nuclei-count",
    *,
    csv: str | os.PathLike | IO[str] | None = None,
    client: Any = None,
    resume: bool = False,
    **options: Any,
) -> BatchResult:
    """Count cells in many files into one table: :func:`run_batch` with ``task="count"``
    (``client=`` a ``distributed.Client``, ``"local:N"`` or ``"tcp://HOST:PORT"`` to run on a
    dask cluster; ``resume=True`` to continue ``csv``; ``options``: any other keyword of
    :func:`run_batch`)."""
    return run_batch(paths, "count", model, csv=csv, client=client, resume=resume, **options)


def segment_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    model: Any = "nuclei-seg",
    *,
    csv: str | os.PathLike | IO[str] | None = None,
    client: Any = None,
    resume: bool = False,
    **options: Any,
) -> BatchResult:
    """Segment nuclei in many files into one table: :func:`run_batch` with
    ``task="segment"`` (arguments as for :func:`count_files`)."""
    return run_batch(paths, "segment", model, csv=csv, client=client, resume=resume, **options)


def _write_tiff(path: Path, arr: np.ndarray, compress: bool) -> None:
    import tifffile

    if compress:
        tifffile.imwrite(path, arr, compression="zlib", photometric="minisblack")
    else:
        tifffile.imwrite(path, arr, photometric="minisblack")


def _run_one(
    task,
    image,
    loaded,
    axes,
    channel,
    diameter,
    device,
    tile_size,
    volume,
    z_diameter,
    options,
    progress,
    cancel,
):
    from napari_nalu_count.infer import count, segment

    kwargs = dict(
        axes=axes,
        diameter=diameter,
        device=device,
        progress=progress,
        cancel=cancel,
        tile_size=tile_size,
        channel=channel,
        **options,
    )
    if task == "count":
        if volume:
            kwargs.update(volume=True, z_diameter=z_diameter)
        return count(image, loaded, **kwargs)
    if volume:
        kwargs.update(volume=True)
    return segment(image, loaded, **kwargs)


def _rows_for(
    path: Path,
    res: Any,
    task: str,
    integer: bool,
    region_fn: Any,
    ps: Any,
    areas: bool,
    volume: bool,
) -> tuple[list[list[str]], Any]:
    """The table rows of one file (plane rows, then volume rows)."""
    from napari_nalu_count import io_csv
    from napari_nalu_count.analysis.regions import count_in_regions, objects_in_regions

    arr = res.density if task == "count" else res.labels
    canon = _canonical_stack(np.asarray(arr), res.axes)
    stack_shape = canon.shape[:-2]
    plane_area = float(canon.shape[-1] * canon.shape[-2])
    table = None
    mask = region_fn(path) if region_fn is not None else None
    if region_fn is not None:
        if mask is None:
            raise InputError(f"no region mask for {path}")
        fn = count_in_regions if task == "count" else objects_in_regions
        table = fn(canon, mask, pixel_size=ps)
    kind = "plane" if volume else None
    rows = io_csv.result_rows(
        str(path),
        res.count,
        integer=integer,
        kind=kind,
        regions=table,
        plane_area_px=plane_area,
        pixel_size=ps,
        areas=areas,
    )
    if volume:
        vcounts = np.atleast_1d(np.asarray(res.volume_count, dtype=np.float64)).ravel()
        vtable = None
        if table is not None:
            vtable = _volume_regions(
                np.asarray(res.volume_points),
                res.axes,
                stack_shape,
                _RegionSource(mask, canon.shape[-2:]),
                len(vcounts),
                ps,
            )
        rows += io_csv.result_rows(
            str(path),
            vcounts,
            integer=True,
            kind="volume",
            regions=vtable,
            plane_area_px=plane_area,
            pixel_size=ps,
            areas=areas,
        )
    return rows, table


def _intensity_for(image: Any, axes: str | None, res: Any, channel: Any, loaded: Any) -> Any:
    """The image as planes of the labels' shape (channels reduced by the model's rule), for
    intensity measurements; None when it cannot be matched."""
    from napari_nalu_count.infer import axes as _axes

    plan = _axes.make_plan(image, axes, channel, _axes.input_rule(loaded.card))
    planes = _axes.to_planes(image, axes, channel, _axes.input_rule(loaded.card))
    planes = _axes.to_output_order(np.asarray(planes), plan)
    if planes.shape != np.asarray(res.labels).shape:
        return None
    return planes


def _concat_measurements(parts: list[Any], ps: Any) -> Any:
    import pandas as pd

    from napari_nalu_count.analysis import units as _units
    from napari_nalu_count.analysis.measurements import measure as _measure

    if parts:
        df = pd.concat(parts, ignore_index=True)
    else:  # no objects: the columns of a measurement with intensities, no rows
        df = _measure(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32), pixel_size=ps)
        df.insert(0, "file", pd.Series(dtype=str))
    df.attrs["units"] = "um" if ps is not None else "px"
    df.attrs["pixel_size"] = ps
    df.attrs["note"] = _units.unit_note(ps)
    return df


def print_table(result: BatchResult, fh: IO[str] = sys.stdout) -> None:
    """Write ``result``'s table to an open text stream (header first)."""
    from napari_nalu_count.io_csv import CountsWriter

    CountsWriter(fh, header=result.header).write_rows(result.rows)


def batch_events(*args: Any, **kwargs: Any) -> Generator[BatchEvent, None, BatchResult]:
    """:func:`run_batch` as an event generator (for a napari ``thread_worker``): yields its
    :class:`BatchEvent` objects as they happen and returns the :class:`BatchResult`.

    ``run_batch`` runs in a helper thread and hands each event over a queue; the generator
    blocks on the queue (no polling), and the helper waits until the consumer has taken the
    event and asked for the next one, so a cancel issued on an event (e.g. after a finished
    file) takes effect before any further work. Errors of ``run_batch`` (bad arguments) are
    re-raised here. Cancel with the ``cancel`` token as for :func:`run_batch`; closing the
    generator early also cancels the run.
    """
    import queue
    import threading

    if "progress" in kwargs:
        raise InputError("batch_events yields the progress events itself; drop progress=")
    cancel = kwargs.get("cancel")
    if cancel is None:
        cancel = kwargs["cancel"] = CancelToken()
    events: queue.Queue[Any] = queue.Queue()
    end = object()
    outcome: dict[str, Any] = {}

    taken = threading.Semaphore(0)
    closing = threading.Event()

    def hand_over(event: BatchEvent) -> None:
        events.put(event)
        if not closing.is_set():
            taken.acquire()  # released when the consumer asks for the next event

    def work() -> None:
        try:
            outcome["value"] = run_batch(*args, progress=hand_over, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator's caller
            outcome["error"] = exc
        finally:
            events.put(end)

    thread = threading.Thread(target=work, name="nalu-count-batch", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not end:
            yield event
            taken.release()
    finally:
        closing.set()
        taken.release()  # a helper waiting on an event the consumer will not take
        if thread.is_alive():
            cancel.cancel()
            thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def with_diameter(rows: list[list[str]], res: Any) -> list[list[str]]:
    """``rows`` with the ``diameter_px`` column appended: the result's ``diameter`` with two
    decimals, or empty when there is none."""
    d = getattr(res, "diameter", None)
    value = "" if d is None else f"{float(d):.2f}"
    return [[*row, value] for row in rows]


def result_table(
    file: str,
    res: Any,
    task: str,
    *,
    regions: Any = None,
    pixel_size: Any = None,
    areas: bool | None = None,
    diameter_column: bool = False,
) -> tuple[tuple[str, ...], list[list[str]], Any]:
    """The batch table of one engine result (a dock's "Export CSV" writes the same table as
    ``run_batch``): ``(header, rows, RegionTable or None)``. ``regions`` is a label mask or
    boolean masks (see :func:`run_batch`); volume rows are added when ``res`` has a
    ``volume_count``; ``areas`` None: when a pixel size or regions are given;
    ``diameter_column``: the last column ``diameter_px`` (see :func:`run_batch`)."""
    from napari_nalu_count import io_csv
    from napari_nalu_count.analysis import units as _units

    if task not in TASKS:
        raise InputError(f"task must be 'count' or 'segment', got {task!r}")
    ps = _units.check_pixel_size(pixel_size)
    volume = getattr(res, "volume_count", None) is not None
    if areas is None:
        areas = ps is not None or regions is not None
    header = io_csv.table_header(
        kind=volume,
        region=regions is not None,
        areas=None if not areas else ("um" if ps is not None else "px"),
        extra=("diameter_px",) if diameter_column else (),
    )
    region_fn = None if regions is None else (lambda _p: regions)
    integer = task == "segment"
    rows, table = _rows_for(file, res, task, integer, region_fn, ps, bool(areas), volume)  # type: ignore[arg-type]
    if diameter_column:
        rows = with_diameter(rows, res)
    return header, rows, table
