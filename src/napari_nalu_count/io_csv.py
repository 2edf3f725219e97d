"""The counts table ``file,frame,count``: one writer for the command line and the docks.

Rows: one per plane of an image, in the order the engine returns its counts.

- ``file``: the image's path as given (the dock: the path the layer was opened from, else the
  layer's name).
- ``frame``: the flat plane index over the image's stack axes (``T``, ``Z``) in C order, i.e. in
  the order the axes appear in the image's ``axes``; ``0`` for a 2-D image. For a ``TZYX`` stack
  with ``nz`` slices, plane ``(t, z)`` is frame ``t * nz + z``; for ``ZTYX`` it is
  ``z * nt + t``. This is also the index into ``CountResult.count``.
- ``count``: cells (density integral) with two decimals for counting, whole objects for
  segmentation.

Extra columns (the count dock's per-region counts) follow ``count`` with the same number
format as the count, one value per plane.

Optional columns of the batch table (:func:`table_header`, :func:`result_rows`; written only
when asked, so the table above stays byte for byte what it was), after ``count`` and before the
extra columns, in this order:

- ``kind``: ``plane`` (a row of one plane) or ``volume`` (a count of 3-D objects in a Z-stack,
  ``count(..., volume=True)``). For volume rows ``frame`` is the index of the volume: the flat
  C-order index over the stack axes other than ``Z`` (0 for a ``ZYX`` stack, ``t`` for
  ``TZYX``).
- ``region``: ``all`` (the whole plane) or a region id; per plane the ``all`` row comes first,
  then one row per region in increasing id.
- an area column and a density column: ``area_um2`` and ``density_per_mm2`` (cells per mm²)
  with a pixel size, else ``area_px`` and ``density_per_mpx`` (cells per 10^6 pixels); the
  area of the whole plane or of the region in that plane (for volume rows the region's area in
  a plane, so the density is cells per mm² of section). Areas have 3 decimals in µm², none in
  pixels; densities 2 decimals; an empty region's density is empty.
- ``diameter_px`` (last, only when asked: ``run_batch(..., diameter_column=True)``, CLI
  ``--diameter-column``): the nucleus diameter in pixels of the file that the image was
  processed at (given, or found automatically), two decimals; empty when the model's own grid
  was used unchanged.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

#: the header every counts table starts with
HEADER: tuple[str, str, str] = ("file", "frame", "count")


def format_count(value: Any, integer: bool = False) -> str:
    """A count as written in the table: ``"12"`` for objects, ``"12.35"`` for cells."""
    v = float(value)
    if integer:
        return str(int(round(v)))
    return f"{v:.2f}"


def count_rows(
    file: str,
    counts: Any,
    *,
    integer: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> list[list[str]]:
    """The table rows of one image: ``[file, frame, count, *extra]`` per plane.

    ``counts`` is a number (a 2-D image) or an array of per-plane counts of any shape (flattened
    in C order, which is the ``frame`` convention). ``extra`` maps column names to values of the
    same size.
    """
    flat = np.atleast_1d(np.asarray(counts, dtype=np.float64)).ravel()
    columns = []
    for name, values in (extra or {}).items():
        col = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
        if col.size != flat.size:
            raise ValueError(
                f"column {name!r} has {col.size} values for {flat.size} planes"
            )  # a programming error, never user input
        columns.append(col)
    return [
        [str(file), str(frame), format_count(value, integer)]
        + [format_count(col[frame], integer) for col in columns]
        for frame, value in enumerate(flat)
    ]


def format_area(value: Any, pixels: bool) -> str:
    """An area: whole pixels, or µm² with 3 decimals."""
    v = float(value)
    return str(int(round(v))) if pixels else f"{v:.3f}"


def format_density(value: Any) -> str:
    """A density with 2 decimals; empty for NaN (a region of zero area)."""
    v = float(value)
    return "" if v != v else f"{v:.2f}"


def table_header(
    *,
    kind: bool = False,
    region: bool = False,
    areas: str | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """The batch table's header: ``file,frame,count`` then ``kind``, ``region``, the area and
    density columns (``areas`` is ``"um"`` or ``"px"``, None for none) and ``extra``."""
    cols: list[str] = list(HEADER)
    if kind:
        cols.append("kind")
    if region:
        cols.append("region")
    if areas is not None:
        if areas not in ("um", "px"):
            raise ValueError(f"areas must be 'um', 'px' or None, got {areas!r}")
        cols += ["area_um2", "density_per_mm2"] if areas == "um" else ["area_px", "density_per_mpx"]
    return (*cols, *extra)


def result_rows(
    file: str,
    counts: Any,
    *,
    integer: bool = False,
    kind: str | None = None,
    regions: Any = None,
    plane_area_px: float | None = None,
    pixel_size: tuple[float, float] | None = None,
    areas: bool = False,
    extra: Mapping[str, Any] | None = None,
    frames: Any = None,
) -> list[list[str]]:
    """Rows of one image (or its volumes) for the batch table (see the module docstring).

    ``counts``: per-plane counts (flattened in C order) or per-volume counts; ``kind``: None (no
    ``kind`` column), ``"plane"`` or ``"volume"``; ``regions``: a
    :class:`~napari_nalu_count.analysis.regions.RegionTable` with one row per entry of
    ``counts`` (adds the ``region`` column); ``areas``: add the area and density columns, the
    whole plane being ``plane_area_px`` pixels; ``frames``: the ``frame`` values (default
    0, 1, ...). Without ``kind``, ``regions`` and ``areas`` this is :func:`count_rows`.
    """
    from napari_nalu_count.analysis import units as _units

    if kind is None and regions is None and not areas:
        return count_rows(file, counts, integer=integer, extra=extra)
    flat = np.atleast_1d(np.asarray(counts, dtype=np.float64)).ravel()
    frame_ids = list(range(flat.size)) if frames is None else [int(f) for f in frames]
    base = count_rows(file, flat, integer=integer, extra=extra)
    px = pixel_size is None
    out: list[list[str]] = []
    for i, row in enumerate(base):
        head = [row[0], str(frame_ids[i]), row[2]]
        tail = row[3:]
        mid: list[str] = []
        if kind is not None:
            mid.append(kind)
        if regions is not None:
            mid.append("all")
        if areas:
            a = float(plane_area_px if plane_area_px is not None else np.nan)
            mid.append(format_area(_units.areas(a, pixel_size), px))
            mid.append(format_density(_units.densities(flat[i], a, pixel_size)))
        out.append(head + mid + tail)
        if regions is None:
            continue
        dens = regions.densities
        area = regions.areas
        for j, rid in enumerate(regions.ids):
            mid = [] if kind is None else [kind]
            mid.append(str(int(rid)))
            if areas:
                mid.append(format_area(area[i, j], px))
                mid.append(format_density(dens[i, j]))
            out.append(
                head[:2] + [format_count(regions.counts[i, j], integer)] + mid + [""] * len(tail)
            )
    return out


class CountsWriter:
    """Streams the table to an open text file: the header first, then rows per image.

    ``extra_columns`` names columns after ``count`` (their values are given to :meth:`write`).
    """

    def __init__(
        self,
        fh: IO[str],
        extra_columns: tuple[str, ...] = (),
        *,
        header: tuple[str, ...] | None = None,
        write_header: bool = True,
    ) -> None:
        self.fh = fh
        self.extra_columns = tuple(extra_columns)
        self.header = tuple(header) if header is not None else (*HEADER, *self.extra_columns)
        self._writer = csv.writer(fh, lineterminator="\n")
        if write_header:  # False: appending to a table that has it (a resumed batch)
            self._writer.writerow(list(self.header))
        fh.flush()

    def write_rows(self, rows: Any) -> None:
        """Write rows made by :func:`result_rows` (or :func:`count_rows`) and flush."""
        self._writer.writerows(rows)
        self.fh.flush()

    def write(
        self,
        file: str,
        counts: Any,
        *,
        integer: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        extra = dict(extra or {})
        if list(extra) != list(self.extra_columns):
            raise ValueError(f"expected the columns {self.extra_columns}, got {tuple(extra)}")
        self._writer.writerows(count_rows(file, counts, integer=integer, extra=extra))
        self.fh.flush()


def write_counts_csv(
    path: str | Path,
    file: str,
    counts: Any,
    *,
    integer: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one image's table to ``path`` (UTF-8, ``\\n`` line ends); return the path."""
    path = Path(path)
    extra = dict(extra or {})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        CountsWriter(fh, tuple(extra)).write(file, counts, integer=integer, extra=extra)
    return path


def write_table_csv(path: str | Path, header: tuple[str, ...], rows: Any) -> Path:
    """Write a table made by :func:`table_header` / :func:`result_rows` to ``path``."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        CountsWriter(fh, header=tuple(header)).write_rows(rows)
    return path
