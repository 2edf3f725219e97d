"""The Fine-tune dock's list of (image, annotation) pairs: one magicgui row per image, the
annotation preselected when one fits, and the annotation layers watched so the dock re-checks
its inputs as dots are added or nuclei painted (and let go of when no longer picked)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox, Container, PushButton
from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

from napari_nalu_count._widgets import _viewer
from napari_nalu_count._widgets.finetune_samples import fits


class PairRow(Container):
    """One image and its annotation (Points: dots for counting; Labels: masks), with a button
    that removes the row."""

    def __init__(self, viewer: Any, on_remove: Callable[[PairRow], None]) -> None:
        self.viewer = viewer
        self.image_combo = ComboBox(choices=self._images, tooltip="image to learn from")
        self.annotation_combo = ComboBox(
            choices=self._annotations,
            tooltip="Points (dots, counting) or Labels (masks, segmentation)",
        )
        self.remove_button = PushButton(text="-", tooltip="remove this pair")
        self.remove_button.max_width = 28
        super().__init__(
            layout="horizontal",
            labels=False,
            widgets=[self.image_combo, self.annotation_combo, self.remove_button],
        )
        self.margins = (0, 0, 0, 0)
        self.remove_button.changed.connect(lambda *args: on_remove(self))
        self.pick_annotation()

    def _images(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return _viewer.layers_of(self.viewer, Image)

    def _annotations(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Labels, Points

        dots = [(f"{n} (dots)", layer) for n, layer in _viewer.layers_of(self.viewer, Points)]
        masks = [(f"{n} (masks)", layer) for n, layer in _viewer.layers_of(self.viewer, Labels)]
        return [("(none)", None), *dots, *masks]

    def pick_annotation(self) -> None:
        """Preselect an annotation layer that fits the image (same shape / number of dims)."""
        image = self.image_combo.value
        if image is None or self.annotation_combo.value is not None:
            return
        for layer in self.annotation_combo.choices:
            if layer is not None and fits(layer, image):
                self.annotation_combo.value = layer
                return

    def pair(self) -> tuple[Any, Any]:
        return self.image_combo.value, self.annotation_combo.value


class PairList(QWidget):
    """The rows, a "+ add image" button, and the watch on the picked annotation layers.
    ``on_change`` runs when a pick changes or a picked annotation's data does."""

    def __init__(self, viewer: Any, on_change: Callable[..., Any]) -> None:
        super().__init__()
        self.viewer = viewer
        self.on_change = on_change
        self.rows: list[PairRow] = []
        self.watch = _viewer.LayerWatch(on_change)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.rows_layout = QVBoxLayout()
        layout.addLayout(self.rows_layout)
        self.add_button = QPushButton("+ add image")
        layout.addWidget(self.add_button)
        self.add_button.clicked.connect(lambda: self.add_row())

    def add_row(self) -> PairRow:
        row = PairRow(self.viewer, self.remove_row)
        row.changed.connect(self._changed)
        self.rows.append(row)
        self.rows_layout.addWidget(row.native)
        self._changed()
        return row

    def remove_row(self, row: PairRow) -> None:
        if len(self.rows) <= 1:
            return
        self.rows.remove(row)
        row.native.setParent(None)
        row.native.deleteLater()
        self._changed()

    def pairs(self) -> list[tuple[Any, Any]]:
        return [row.pair() for row in self.rows]

    def refresh(self) -> None:
        """Layers came or went: refresh every row's pickers."""
        for row in self.rows:
            row.reset_choices()
            row.pick_annotation()
        self._changed()

    def _changed(self, *args: Any) -> None:
        self.watch.watch(annotation for _, annotation in self.pairs())
        self.on_change()
