"""A table of a pandas DataFrame in a dock (per-object measurements, counts per region, a batch's
rows): a title, a units note, the table (the first :data:`MAX_ROWS` rows; the CSV has all) and
"Export CSV"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
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

#: rows shown in the dock (the export writes every row)
MAX_ROWS = 500


def cell_text(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v != v:
            return ""
        if v.is_integer() and abs(v) < 1e12:
            return str(int(v))
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"
    return str(value)


class TablePanel(QWidget):
    """Shows a DataFrame; :meth:`export_csv` writes it (asks for a path when none is given)."""

    def __init__(self, title: str, export_text: str = "Export CSV") -> None:
        super().__init__()
        self.frame: Any = None
        self.default_name = "table.csv"
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        self.title_label = QLabel(f"<b>{title}</b>")
        self.note_label = QLabel()
        self.note_label.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(120)
        self.export_button = QPushButton(export_text)
        self.export_button.clicked.connect(lambda: self.export_csv())
        for widget in (self.title_label, self.note_label, self.table, self.export_button):
            layout.addWidget(widget)
        self.setVisible(False)

    def show_frame(
        self, frame: Any, note: str = "", default_name: str = "table.csv", display: Any = None
    ) -> None:
        """Show ``frame`` (None hides the panel); ``display``: what to show instead (same rows,
        e.g. shorter texts), the export still writes ``frame``."""
        self.frame, self.default_name = frame, default_name
        if frame is None:
            self.setVisible(False)
            return
        shown = (frame if display is None else display).head(MAX_ROWS)
        more = len(frame) - len(shown)
        if more > 0:
            note = f"{note}\n" if note else ""
            note += f"first {len(shown)} of {len(frame)} rows shown; the CSV has all"
        self.note_label.setText(note)
        self.note_label.setVisible(bool(note))
        self.table.clear()
        self.table.setColumnCount(len(shown.columns))
        self.table.setRowCount(len(shown))
        self.table.setHorizontalHeaderLabels([str(c) for c in shown.columns])
        for r, row in enumerate(shown.itertuples(index=False)):
            for c, value in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(cell_text(value)))
        self.table.resizeColumnsToContents()
        fit = self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
        fit += self.table.verticalHeader().defaultSectionSize() * min(len(shown), 8)
        fit += self.table.horizontalScrollBar().sizeHint().height()
        self.table.setMinimumHeight(min(fit, 120))
        self.table.setMaximumHeight(max(fit, 60))
        self.export_button.setEnabled(True)
        self.setVisible(True)

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the whole table (UTF-8, ``\\n`` line ends); return the path."""
        if self.frame is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export", self.default_name, "CSV (*.csv)")
            if not path:
                return None
        out = Path(path)
        self.frame.to_csv(out, index=False, lineterminator="\n")
        _viewer.notify_info(f"wrote {out}")
        return out
