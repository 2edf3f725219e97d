"""The "Count in regions" dock (Layers > Measure): cells inside the shapes of a Shapes layer,
from a density map the Count dock made, without running the network again. The counts follow
the shapes as they are drawn, moved or deleted.

:func:`region_summary` is the plain part (layers in, a :class:`Summary` out); the counting
itself is :func:`napari_nalu_count.infer.region_counts`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from napari_nalu_count import infer
from napari_nalu_count._widgets import _viewer
from napari_nalu_count._widgets._base import HINT_STYLE
from napari_nalu_count._widgets._results import ResultsPanel, Summary, format_total
from napari_nalu_count.errors import InputError


def is_density(layer: Any) -> bool:
    """A density map: made by the Count dock, or opened from the command line's output
    (``nalu-count count --density-dir`` writes ``<name>_density.tif``)."""
    meta = layer.metadata.get(_viewer.META_KEY) if isinstance(layer.metadata, dict) else None
    if meta:
        return meta.get("kind") == "density"
    return "density" in layer.name.lower()


def region_summary(density_layer: Any, shapes_layer: Any) -> Summary:
    """Counts per plane of ``density_layer`` (cells per pixel) inside each shape of
    ``shapes_layer``; InputError when either is missing or the shapes are empty."""
    if density_layer is None:
        raise InputError("count an image first (Count cells dock): its density map is counted")
    if shapes_layer is None:
        raise InputError("add a Shapes layer and draw the regions to count in")
    if len(shapes_layer.data) == 0:
        raise InputError(f"'{shapes_layer.name}' has no shapes; draw a region")
    density = np.asarray(density_layer.data, dtype=np.float32)
    masks = _viewer.shape_masks(shapes_layer, density_layer, tuple(density.shape[-2:]))
    regions = infer.region_counts(density, masks)
    totals = [f"{name}: {format_total(np.sum(v))} cells" for name, v in regions.items()]
    return Summary(
        name=density_layer.name,
        file=density_layer.name,
        counts=density.sum(axis=(-2, -1), dtype=np.float64),
        unit="cells in the image",
        extra=regions,
        details=totals,
        layers=(density_layer,),
        frame_layer=density_layer,
    )


class RegionsWidget(QWidget):
    """Dock widget: count cells inside regions from an existing density map."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.density_combo = ComboBox(
            label="density map",
            choices=self._density_choices,
            tooltip="a density map made by the Count cells dock, or a *_density.tif from the "
            "command line (its sum is the cell count)",
        )
        self.regions_combo = ComboBox(
            label="regions", choices=self._shape_choices, tooltip="the shapes to count in"
        )
        self.form = Container(widgets=[self.density_combo, self.regions_combo], labels=True)
        self.count_button = QPushButton("Count in regions")
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet(HINT_STYLE)
        self.results = ResultsPanel(napari_viewer)
        layout = QVBoxLayout(self)
        for widget in (self.form.native, self.count_button, self.hint_label, self.results):
            layout.addWidget(widget)
        layout.addStretch(1)
        self.watch = _viewer.LayerWatch(lambda *args: self._recount())
        self.count_button.clicked.connect(self.count)
        self.form.changed.connect(self._on_form_changed)
        disconnect = _viewer.connect_layer_events(napari_viewer, self._on_layers)
        cleanups = (disconnect, self.watch.close, self.results.disconnect_viewer)

        def teardown(*args: Any) -> None:
            for cleanup in cleanups:
                try:
                    cleanup()
                except Exception:  # noqa: BLE001 - already gone
                    pass

        self.destroyed.connect(teardown)
        self._on_form_changed()

    def _density_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [c for c in _viewer.layers_of(self.viewer, Image) if is_density(c[1])]

    def _shape_choices(self, widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        return _viewer.layers_of(self.viewer, Shapes)

    def _on_layers(self, event: Any = None) -> None:
        try:
            self.form.reset_choices()
            self._on_form_changed()
        except RuntimeError:  # the Qt side of this dock is gone
            pass

    def _on_form_changed(self, *args: Any) -> None:
        self.watch.watch([self.regions_combo.value])
        self.validate()

    def validate(self) -> str:
        try:
            region_summary(self.density_combo.value, self.regions_combo.value)
            hint = ""
        except InputError as exc:
            hint = str(exc)
        self.hint_label.setText(hint)
        self.hint_label.setVisible(bool(hint))
        self.count_button.setEnabled(not hint)
        return hint

    def count(self) -> Summary | None:
        """Count now and show the table (None, with the reason as a hint, when impossible)."""
        try:
            summary = region_summary(self.density_combo.value, self.regions_combo.value)
        except InputError as exc:
            self.validate()
            _viewer.notify_error(str(exc))
            return None
        self.results.show_summary(summary)
        return summary

    def _recount(self) -> None:
        """The shapes changed: update the table when one is shown."""
        try:
            if self.results.summary is not None and not self.validate():
                self.count()
        except RuntimeError:
            pass

    def export_csv(self, path: Any = None) -> Any:
        return self.results.export_csv(path)
