"""Segment dock: the plain functions, then the widget end to end in a napari viewer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_nalu_count._widgets._inference import RunParams
from napari_nalu_count._widgets.segment_widget import (
    SegmentOutput,
    apply_segment_results,
    run_segment,
)


def save_tiny_segment(name: str = "tiny-seg") -> str:
    import torch

    from napari_nalu_count import models
    from napari_nalu_count.nn.registry import build_model, default_config

    config = default_config("se_unet")
    config["widths"] = [4, 8]
    torch.manual_seed(0)
    net = build_model(config)
    models.save_model(net, models.make_card(name, "segment", config, diameter=12.0), name)
    return name


@pytest.fixture
def tiny_seg() -> str:
    return save_tiny_segment()


def _image(shape=(48, 48)) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, shape)
    image[..., 10:20, 10:20] += 400
    image[..., 30:40, 25:35] += 400
    return image.astype(np.float32)


def test_run_segment_2d_and_stack(tiny_seg):
    out = run_segment(_image(), RunParams(tiny_seg, axes="YX"))
    labels = out.result.labels
    assert labels.shape == (48, 48) and np.issubdtype(labels.dtype, np.integer)
    assert np.ndim(out.counts) == 0
    assert out.total == len(np.unique(labels[labels > 0]))
    assert out.diameter == 12.0 and out.diameter_source == "model"
    out = run_segment(_image((3, 48, 48)), RunParams(tiny_seg, axes="TYX"))
    assert out.result.labels.shape == (3, 48, 48) and out.counts.shape == (3,)


@pytest.mark.gui
def test_apply_segment_results(make_napari_viewer):
    viewer = make_napari_viewer()
    src = viewer.add_image(np.zeros((3, 16, 16)), name="movie", scale=(1, 2, 2))
    labels = np.zeros((3, 16, 16), np.int32)
    labels[1, 2:5, 2:5] = 1
    from napari_nalu_count.infer import SegmentResult

    out = SegmentOutput(SegmentResult(labels, np.array([0, 1, 0]), "TYX"), diameter=9.0)
    summary = apply_segment_results(viewer, src, out, RunParams("m", axes="TYX"))
    layer = viewer.layers["movie labels"]
    assert tuple(layer.scale) == (1, 2, 2) and tuple(layer.axis_labels) == ("T", "Y", "X")
    assert summary.unit == "objects" and summary.layers == (layer,) and summary.integer
    assert summary.details == ["nucleus diameter 9.0 px (the model's own)"]
    apply_segment_results(viewer, src, out, RunParams("m", axes="TYX"))
    assert len(viewer.layers) == 2


@pytest.mark.gui
def test_segment_widget_end_to_end(make_napari_viewer, qtbot, tiny_seg, tmp_path):
    from napari_nalu_count._widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((3, 48, 48)), name="movie", translate=(0, 10, 10))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert tiny_seg in widget.model_combo.choices
    assert all(c != "tiny-count" for c in widget.model_combo.choices)  # segmentation only
    assert widget.model_combo.value == "nuclei-seg"  # the default, preselected
    widget.model_combo.value = tiny_seg
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    layer = viewer.layers["movie labels"]
    assert layer.data.shape == (3, 48, 48) and tuple(layer.translate) == (0, 10, 10)
    assert widget.results.table.rowCount() == 3
    assert "objects" in widget.results.total_label.text()
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert len(viewer.layers) == 2

    rows = list(csv.DictReader(widget.export_csv(tmp_path / "s.csv").open()))
    assert [r["frame"] for r in rows] == ["0", "1", "2"]
    assert all(r["file"] == "movie" for r in rows)
    for t, row in enumerate(rows):
        plane = layer.data[t]
        assert int(row["count"]) == len(np.unique(plane[plane > 0]))
