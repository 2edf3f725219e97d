"""The results part of the Count, Segment and Region-count docks: the total, details, one table
row per plane that follows the viewer's frame (and moves it when clicked), and CSV export with
the shared writer (:mod:`napari_nalu_count.io_csv`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QFileDialog,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_nalu_count._widgets import _viewer


@dataclass
class Summary:
    """What a run shows and exports: counts shaped like the stack (0-d for a 2-D image), extra
    columns of the same shape, the unit, and the layer whose frames the table follows."""

    name: str
    file: str
    counts: np.ndarray
    unit: str
    integer: bool = False
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    layers: tuple[Any, ...] = ()
    frame_layer: Any = None
    #: the exported table when it is more than ``file,frame,count,extra`` (units, regions,
    #: volume rows: the batch table of :func:`napari_nalu_count.infer.batch.result_table`)
    table: tuple[tuple[str, ...], list[list[str]]] | None = None
    #: the count's standard deviation per plane (``count(..., uncertainty=True)``), shaped
    #: like ``counts``; the total line then reads ``N ± sd``
    sd: np.ndarray | None = None
    #: the user's corrected counts per plane (points edited in the cells layer), shaped like
    #: ``counts``; the total line then reads ``model N / corrected M``
    corrected: np.ndarray | None = None

    def total_text(self, row: int | None = None) -> str:
        """The total line: of plane ``row`` (flat index), or of every plane."""
        counts = np.ravel(np.asarray(self.counts, dtype=float))
        pick = slice(None) if row is None else slice(row, row + 1)
        total = float(counts[pick].sum())
        where = "" if row is None else f" in frame {row}"
        text = format_total(total)
        if self.sd is not None:
            text += f" ± {float(np.sqrt(np.sum(np.ravel(self.sd)[pick] ** 2))):.1f}"
        if self.corrected is not None:
            corr = float(np.ravel(self.corrected)[pick].sum())
            text = f"model {text} / corrected {format_total(corr)}"
        return f"{text} {self.unit}{where}"


def format_total(value: float) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() else f"{v:.1f}"


class ResultsPanel(QWidget):
    """Shows a :class:`Summary`; keeps the table row of the viewer's current plane selected."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.summary: Summary | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.total_label = QLabel()
        font = QFont()
        font.setPointSize(font.pointSize() + 4)
        font.setBold(True)
        self.total_label.setFont(font)
        self.detail_label = QLabel()
        self.detail_label.setWordWrap(True)
        self.table = QTableWidget(0, 1)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setVisible(False)
        self.table.setMinimumHeight(140)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.export_button = QPushButton("Export CSV")
        self.export_button.setEnabled(False)
        for widget in (self.total_label, self.detail_label, self.table, self.export_button):
            layout.addWidget(widget)
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        viewer.dims.events.current_step.connect(self._follow_frame)

    def disconnect_viewer(self) -> None:
        self.viewer.dims.events.current_step.disconnect(self._follow_frame)

    def show_summary(self, summary: Summary) -> None:
        self.summary = summary
        counts = np.atleast_1d(np.asarray(summary.counts, dtype=float))
        self.total_label.setText(summary.total_text())
        details = list(summary.details)
        if counts.size > 1:
            details.insert(0, f"sum over {counts.size} planes: {format_total(counts.sum())}")
        self.detail_label.setText("\n".join(details))
        self.detail_label.setVisible(bool(details))
        headers = ["frame", "count", *summary.extra]
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(counts.size)
        columns = [counts.ravel()] + [np.ravel(v) for v in summary.extra.values()]
        for row in range(counts.size):
            # the frame is the flat plane index in C order, the CSV's ``frame`` column
            texts = [str(row)] + [format_total(col[row]) for col in columns]
            for col, text in enumerate(texts):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(row, col, item)
        self.table.setVisible(counts.size > 1 or bool(summary.extra))
        self.table.resizeColumnsToContents()
        # as tall as its rows (up to 12; it scrolls beyond), no empty space under a short table
        fit = self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
        fit += self.table.verticalHeader().defaultSectionSize() * min(counts.size, 12)
        if self.table.horizontalHeader().length() > self.table.viewport().width():
            fit += self.table.horizontalScrollBar().sizeHint().height()  # it shows: leave room
        self.table.setMinimumHeight(min(fit, 140))
        self.table.setMaximumHeight(fit)
        self.export_button.setEnabled(True)
        self._follow_frame()

    def current_row(self) -> int | None:
        """Table row of the plane the viewer shows now (None for 2-D results)."""
        summary = self.summary
        if summary is None or summary.frame_layer not in self.viewer.layers:
            return None
        counts = np.asarray(summary.counts)
        if counts.ndim == 0 or counts.size <= 1:
            return None
        layer = summary.frame_layer
        position = layer.world_to_data(self.viewer.dims.point)[: counts.ndim]
        index = np.clip(np.round(position).astype(int), 0, np.array(counts.shape) - 1)
        return int(np.ravel_multi_index(tuple(index), counts.shape))

    def _follow_frame(self, event: Any = None) -> None:
        try:
            row = self.current_row()
            if row is None or row >= self.table.rowCount() or self.summary is None:
                return
            self.total_label.setText(self.summary.total_text(row))
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)
            self.table.scrollToItem(self.table.item(row, 0))
        except RuntimeError:  # the dock was deleted while the viewer lives on
            pass

    def _on_row_selected(self) -> None:
        """Clicking a row moves the viewer to that plane."""
        summary = self.summary
        rows = self.table.selectionModel().selectedRows()
        if not rows or summary is None or summary.frame_layer not in self.viewer.layers:
            return
        counts = np.asarray(summary.counts)
        if counts.ndim == 0:
            return
        layer = summary.frame_layer
        index = np.unravel_index(rows[0].row(), counts.shape)
        data_pos = np.zeros(layer.ndim)
        data_pos[: len(index)] = index
        world = layer.data_to_world(data_pos)
        step = list(self.viewer.dims.point)
        offset = len(step) - layer.ndim
        for axis in range(len(index)):
            step[offset + axis] = world[axis]
        self.viewer.dims.point = step

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the last result as ``file,frame,count,...`` (asks for a path if none)."""
        from napari_nalu_count.io_csv import write_counts_csv, write_table_csv

        summary = self.summary
        if summary is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export counts", f"{summary.name}_counts.csv", "CSV (*.csv)"
            )
            if not path:
                return None
        if summary.table is not None:
            out = write_table_csv(path, *summary.table)
        else:
            out = write_counts_csv(
                path, summary.file, summary.counts, integer=summary.integer, extra=summary.extra
            )
        _viewer.notify_info(f"wrote {out}")
        return out
