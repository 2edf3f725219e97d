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


class CountsWriter:
    """Streams the table to an open text file: the header first, then rows per image.

    ``extra_columns`` names columns after ``count`` (their values are given to :meth:`write`).
    """

    def __init__(self, fh: IO[str], extra_columns: tuple[str, ...] = ()) -> None:
        self.fh = fh
        self.extra_columns = tuple(extra_columns)
        self._writer = csv.writer(fh, lineterminator="\n")
        self._writer.writerow([*HEADER, *self.extra_columns])
        fh.flush()

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
