"""The human-in-the-loop parts of the docks: proofreading counts, uncertainty, suggested
regions, and handing corrected cells to the Fine-tune dock."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_nalu_count._widgets import proofread


def test_points_per_plane_and_region():
    pts = np.array([[0, 1.2, 1.0], [0, 5.0, 5.0], [1, 6.4, 6.0], [2, 9.0, 9.0], [1, 99, 0]])
    per = proofread.points_per_plane(pts, (3,), (10, 10))
    assert per.tolist() == [2, 1, 1]  # the point outside the image is not counted
    assert proofread.points_per_plane(pts[:2, 1:], (), (10, 10)).shape == ()
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :5] = True
    masks[1, 5:] = True
    reg = proofread.points_per_region(pts, masks, (3,), (10, 10))
    assert reg[1].tolist() == [1, 0, 0] and reg[2].tolist() == [1, 1, 1]
    labels = np.zeros((10, 10), int)
    labels[:, :3] = 7
    assert proofread.points_per_region(pts, labels, (3,), (10, 10)) == {7: pytest.approx([1, 0, 0])}


def test_corrected_table_adds_columns():
    header = ("file", "frame", "region", "count", "area_px")
    rows = [["a", "0", "all", "10.2", "100"], ["a", "0", "1", "4.1", "50"]]
    h, r = proofread.corrected_table(header, rows, np.array(11.0), {1: np.array([5.0])})
    assert h == ("file", "frame", "region", "count", "corrected", "area_px")
    assert r == [["a", "0", "all", "10.2", "11", "100"], ["a", "0", "1", "4.1", "5", "50"]]
    h, r = proofread.corrected_table(header, rows, np.array(11.0), {}, sd=np.array(2.5))
    assert h[4:6] == ("corrected", "count_sd") and r[0][5] == "2.50" and r[1][4] == ""


@pytest.fixture
def tiny_count() -> str:
    """A 2-scale, 4-channel counting network saved into this test's user model directory."""
    import torch

    from napari_nalu_count import models
    from napari_nalu_count.nn.registry import build_model, default_config

    config = default_config("unet_count")
    config["widths"] = [4, 8]
    torch.manual_seed(0)
    net = build_model(config)
    models.save_model(
        net, models.make_card("tiny-count", "count", config, diameter=12.0), "tiny-count"
    )
    return "tiny-count"


def _image(shape=(64, 64), seed=0) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape=shape, n_cells=8, diameter=10.0, seed=seed).image


def _pick(combo, value) -> None:
    assert value in combo.choices, (value, combo.choices)
    combo.value = value


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


@pytest.mark.gui
def test_count_dock_loop(make_napari_viewer, qtbot, tiny_count, tmp_path):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(_image((96, 96)), name="nuclei")
    widget = CountWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _pick(widget.model_combo, tiny_count)
    assert not widget.suggest_button.isEnabled() and not widget.send_button.isEnabled()
    widget.uncertainty_check.value = True
    widget.run()
    _wait(qtbot, widget)
    unc = viewer.layers["nuclei uncertainty"]
    assert unc.data.shape == (96, 96) and unc.data.dtype == np.float32
    summary = widget.results.summary
    assert "±" in widget.results.total_label.text() and summary.sd is not None
    assert widget.suggest_button.isEnabled() and widget.send_button.isEnabled()

    widget.n_boxes_spin.setValue(2)
    widget.box_size_spin.setValue(32)
    shapes = widget.suggest_regions()
    assert shapes is viewer.layers["nuclei regions to annotate"] and len(shapes.data) == 2
    widget.suggest_regions()  # again: replaced, not piled up
    assert sum(1 for ly in viewer.layers if ly.name.startswith("nuclei regions")) == 1

    cells = viewer.layers["nuclei cells"]
    model_total = float(np.sum(summary.counts))
    n = len(cells.data)
    cells.add([[50.0, 50.0], [10.0, 80.0]])  # the user adds two missed cells
    text = widget.results.total_label.text()
    assert text.startswith("model ") and f"corrected {n + 2}" in text
    out = widget.export_csv(tmp_path / "counts.csv")
    rows = list(csv.DictReader(out.open()))
    assert float(rows[0]["count"]) == pytest.approx(model_total, abs=0.01)
    assert rows[0]["corrected"] == str(n + 2) and float(rows[0]["count_sd"]) > 0
    cells.selected_data = {0}
    cells.remove_selected()
    assert f"corrected {n + 1}" in widget.results.total_label.text()

    cells.add([[20.0 + 8 * i, 20.0 + 6 * i] for i in range(6)])  # enough dots to train on
    dock = widget.send_to_finetune()
    assert dock is not None
    image, annotation = dock.pairs.pairs()[0]
    assert image is layer and annotation is cells
    assert dock.boxes_combo.value is viewer.layers["nuclei regions to annotate"]
    from napari_nalu_count._widgets.finetune_samples import collect_samples

    task, samples = collect_samples(dock.pairs.pairs(), boxes=dock.boxes_combo.value)
    assert task == "count" and samples[0].boxes.shape == (2, 4)
    assert np.all(samples[0].boxes[:, 2] - samples[0].boxes[:, 0] == 32)


@pytest.mark.gui
def test_region_counts_corrected(make_napari_viewer, qtbot, tiny_count):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((64, 64)), name="nuclei")
    viewer.add_shapes([[[0, 0], [31, 63]]], shape_type="rectangle", name="top")
    widget = CountWidget(viewer)
    _pick(widget.model_combo, tiny_count)
    _pick(widget.regions_combo, viewer.layers["top"])
    widget.run()
    _wait(qtbot, widget)
    cells = viewer.layers["nuclei cells"]
    cells.data = np.array([[5.0, 5.0], [10.0, 40.0], [50.0, 50.0]])
    frame = widget.region_table.frame
    assert list(frame["corrected"]) == [2]
    assert widget.results.summary.extra["corrected 1"].tolist() == 2.0
