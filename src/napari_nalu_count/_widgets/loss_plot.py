"""The Fine-tune dock's live plot: training loss per step and the validation metric per epoch,
drawn in the colours of napari's current theme (dark or light) and redrawn when it changes."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_nalu_count._widgets.finetune_log import TrainingLog

#: curve colours that read well on a dark and on a light background
CURVES = {"dark": ("#f0a030", "#50c8ff"), "light": ("#b35900", "#1060b0")}


def theme_colors(theme: str) -> dict[str, Any]:
    """Background, text and curve colours for a napari theme name (dark when unknown)."""
    from napari.utils.theme import get_theme

    try:
        t = get_theme(theme)
        background, text = t.background.as_hex(), t.text.as_hex()
    except Exception:  # noqa: BLE001 - an unknown or broken theme: napari's dark colours
        background, text = "#262930", "#f0f1f2"
    kind = "light" if _luminance(background) > 0.5 else "dark"
    loss, metric = CURVES[kind]
    return {"background": background, "text": text, "loss": loss, "metric": metric}


def _luminance(color: str) -> float:
    r, g, b = (int(color.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


class LossPlot(QWidget):
    """Loss (left axis, log scale when it spans decades) and validation metric (right axis)."""

    def __init__(self, viewer: Any = None) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = viewer
        self.figure = Figure(figsize=(3.6, 2.2), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.loss_ax = self.figure.add_subplot(111)
        self.metric_ax = self.loss_ax.twinx()
        self.metric_name = "metric"
        self.log: TrainingLog | None = None
        self.colors = theme_colors(getattr(viewer, "theme", "dark"))
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)
        self.reset("metric")

    def disconnect_viewer(self) -> None:
        if self.viewer is not None:
            self.viewer.events.theme.disconnect(self._on_theme)

    def _on_theme(self, event: Any = None) -> None:
        try:
            self.colors = theme_colors(self.viewer.theme)
            if self.log is not None:
                self.draw_log(self.log)
            else:
                self.reset(self.metric_name)
        except RuntimeError:  # the dock is gone
            pass

    def reset(self, metric_name: str) -> None:
        c = self.colors
        self.metric_name = metric_name
        self.figure.set_facecolor(c["background"])
        for ax in (self.loss_ax, self.metric_ax):
            ax.clear()
            ax.set_facecolor(c["background"])
            ax.tick_params(colors=c["text"], labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(c["text"])
        self.metric_ax.yaxis.tick_right()
        self.metric_ax.yaxis.set_label_position("right")
        self.loss_ax.set_xlabel("step", color=c["text"], fontsize=8)
        self.loss_ax.set_ylabel("loss", color=c["loss"], fontsize=8)
        self.metric_ax.set_ylabel(f"validation {metric_name}", color=c["metric"], fontsize=8)
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def draw_log(self, log: TrainingLog) -> None:
        self.log = log
        self.reset(self.metric_name)
        if log.losses:
            self.loss_ax.plot(log.steps, log.losses, color=self.colors["loss"], lw=0.8)
            if min(log.losses) > 0 and max(log.losses) / min(log.losses) > 30:
                self.loss_ax.set_yscale("log")
        if log.metric:
            self.metric_ax.plot(log.epochs, log.metric, "o-", color=self.colors["metric"], ms=3)
        self.figure.tight_layout()
        self.canvas.draw_idle()
