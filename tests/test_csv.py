"""One counts-table writer (``io_csv``) for the CLI and the docks, one ``frame`` convention.

``frame`` is the flat plane index over the stack axes in C order; for a TZYX stack the CLI
and the Count/Segment docks must write byte-identical files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_nalu_count.cli import main
from napari_nalu_count.io_csv import HEADER, CountsWriter, count_rows, write_counts_csv


def _save_tiny(name: str, task: str) -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    arch = "unet_count" if task == "count" else "se_unet"
    net = build_model({"architecture": arch, "widths": [4, 8]})
    save_model(net, make_card(name, task, net.config, diameter=10.0), name)
    return name


def _tzyx(tmp_path: Path) -> tuple[Path, np.ndarray]:
    from napari_nalu_count.data.synthetic import synthetic_cells

    planes = [
        synthetic_cells((40, 48), n_cells=3 + 4 * k, diameter=10.0, seed=k).image for k in range(6)
    ]
    stack = np.stack(planes).reshape(2, 3, 40, 48)  # T=2, Z=3
    path = tmp_path / "tz.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TZYX"})
    return path, stack


def test_rows_follow_the_frame_convention():
    counts = np.arange(6, dtype=float).reshape(2, 3) + 0.125  # (T, Z)
    rows = count_rows("f.tif", counts)
    assert [r[1] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    # frame t * nz + z holds plane (t, z)
    assert rows[1 * 3 + 2][2] == f"{counts[1, 2]:.2f}"
    assert count_rows("f.tif", 7.0) == [["f.tif", "0", "7.00"]]
    assert count_rows("f.tif", np.array([3, 4]), integer=True)[1] == ["f.tif", "1", "4"]
    with pytest.raises(ValueError):
        count_rows("f.tif", [1.0, 2.0], extra={"region 1": [1.0]})


def test_streaming_writer_and_file_writer_agree(tmp_path):
    buf = io.StringIO()
    writer = CountsWriter(buf)
    writer.write("a.tif", 1.5)
    writer.write("b.tif", np.array([2.0, 3.25]))
    path = tmp_path / "x.csv"
    write_counts_csv(path, "a.tif", 1.5)
    lines = buf.getvalue().splitlines()
    assert lines[0] == ",".join(HEADER)
    assert lines[:2] == path.read_text(encoding="utf-8").splitlines()
    assert lines[2:] == ["b.tif,0,2.00", "b.tif,1,3.25"]
    assert "\r" not in path.read_bytes().decode()


def _dock_files(tmp_path: Path, path: Path, stack: np.ndarray) -> tuple[Path, Path]:
    """What the docks' plain functions export for the stack (no GUI)."""
    from napari_nalu_count._widgets._inference import RunParams
    from napari_nalu_count._widgets.count_widget import run_count
    from napari_nalu_count._widgets.segment_widget import run_segment
    from napari_nalu_count.io_csv import write_counts_csv as dock_write

    counted = run_count(stack, RunParams("csv-count", "cpu", None, "TZYX"))
    segmented = run_segment(stack, RunParams("csv-seg", "cpu", None, "TZYX"))
    assert counted.counts.shape == (2, 3)
    a = dock_write(tmp_path / "dock_count.csv", str(path), counted.counts)
    b = dock_write(tmp_path / "dock_seg.csv", str(path), segmented.counts, integer=True)
    return a, b


def _cli_files(tmp_path: Path, path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "cli_count.csv", tmp_path / "cli_seg.csv"
    args = [str(path), "--device", "cpu", "--csv"]
    assert main(["count", *args, str(a), "--model", "csv-count"]) == 0
    assert main(["segment", *args, str(b), "--model", "csv-seg", "--seeds", "interior"]) == 0
    return a, b


def test_cli_and_dock_functions_write_identical_files_for_tzyx(tmp_path, monkeypatch):
    _save_tiny("csv-count", "count")
    _save_tiny("csv-seg", "segment")
    path, stack = _tzyx(tmp_path)
    cli_count, cli_seg = _cli_files(tmp_path, path)
    # the dock segments with count seeds by default; use interior seeds like the CLI call
    from napari_nalu_count import infer

    real = infer.segment_events
    monkeypatch.setattr(
        infer, "segment_events", lambda *a, **k: real(*a, **{**k, "seeds": "interior"})
    )
    dock_count, dock_seg = _dock_files(tmp_path, path, stack)
    assert cli_count.read_bytes() == dock_count.read_bytes()
    assert cli_seg.read_bytes() == dock_seg.read_bytes()
    rows = list(csv.DictReader(cli_count.open()))
    assert [r["frame"] for r in rows] == [str(k) for k in range(6)]
    # frame 4 = (t=1, z=1): the same count as that plane on its own
    alone = tmp_path / "plane.tif"
    tifffile.imwrite(alone, stack[1, 1])
    out = tmp_path / "plane.csv"
    rc = main(["count", str(alone), "--model", "csv-count", "--device", "cpu", "--csv", str(out)])
    assert rc == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["count"] == rows[4]["count"]


@pytest.mark.gui
def test_cli_and_count_dock_export_identical_files(make_napari_viewer, qtbot, tmp_path):
    from napari_nalu_count._widgets.count_widget import CountWidget

    _save_tiny("csv-count", "count")
    path, stack = _tzyx(tmp_path)
    cli_file = tmp_path / "cli.csv"
    rc = main(["count", str(path), "--model", "csv-count", "--device", "cpu", "--csv",
               str(cli_file)])  # fmt: skip
    assert rc == 0
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari")
    assert layer.data.shape == (2, 3, 40, 48)
    widget = CountWidget(viewer)
    widget.image_combo.value = layer
    widget.model_combo.value = "csv-count"
    widget.device_combo.value = "cpu"
    widget.axes_edit.value = "TZYX"
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    table = widget.results.table
    assert table.rowCount() == 6
    assert [table.item(r, 0).text() for r in range(6)] == [str(k) for k in range(6)]
    dock_file = widget.export_csv(tmp_path / "dock.csv")
    assert dock_file.read_bytes() == cli_file.read_bytes()
