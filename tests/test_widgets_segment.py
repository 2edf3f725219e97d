"""Segment dock: the plain functions, then the widget end to end in a napari viewer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

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
    out = run_segment(_image(), {"model": tiny_seg, "axes": "YX"})
    assert out.labels.shape == (48, 48) and np.issubdtype(out.labels.dtype, np.integer)
    assert np.ndim(out.counts) == 0
    assert out.total == len(np.unique(out.labels[out.labels > 0]))
    out = run_segment(_image((3, 48, 48)), {"model": tiny_seg, "axes": "TYX"})
    assert out.labels.shape == (3, 48, 48) and out.counts.shape == (3,)


@pytest.mark.gui
def test_apply_segment_results(make_napari_viewer):
    viewer = make_napari_viewer()
    src = viewer.add_image(np.zeros((3, 16, 16)), name="movie", scale=(1, 2, 2))
    labels = np.zeros((3, 16, 16), np.int32)
    labels[1, 2:5, 2:5] = 1
    out = SegmentOutput(labels=labels, counts=np.array([0.0, 1.0, 0.0]), out_axes="TYX")
    summary = apply_segment_results(viewer, src, out, {"axes": "TYX"})
    layer = viewer.layers["movie labels"]
    assert tuple(layer.scale) == (1, 2, 2)
    assert summary["unit"] == "objects" and summary["layers"] == (layer,)
    apply_segment_results(viewer, src, out, {"axes": "TYX"})
    assert len(viewer.layers) == 2


@pytest.mark.gui
def test_segment_widget_end_to_end(make_napari_viewer, qtbot, tiny_seg, tmp_path):
    from napari_nalu_count._widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((3, 48, 48)), name="movie", translate=(0, 10, 10))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.model_combo.findData(tiny_seg) >= 0
    assert widget.model_combo.findData("tiny-count") < 0  # only segmentation models
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(tiny_seg))
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    layer = viewer.layers["movie labels"]
    assert layer.data.shape == (3, 48, 48) and tuple(layer.translate) == (0, 10, 10)
    assert widget.table.rowCount() == 3 and "objects" in widget.total_label.text()
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert len(viewer.layers) == 2

    rows = list(csv.DictReader(widget.export_csv(tmp_path / "s.csv").open()))
    assert [r["frame"] for r in rows] == ["0", "1", "2"]
    assert all(r["file"] == "movie" for r in rows)
    for t, row in enumerate(rows):
        plane = layer.data[t]
        assert int(row["count"]) == len(np.unique(plane[plane > 0]))
