"""Count dock: the plain functions, then the widget end to end in a napari viewer."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from napari_nalu_count._widgets import _common
from napari_nalu_count._widgets._common import (
    InputError,
    Outcome,
    check_axes,
    default_axes,
    parse_diameter,
    pump,
    write_counts_csv,
)
from napari_nalu_count._widgets.count_widget import (
    CountOutput,
    apply_count_results,
    region_counts,
    run_count,
)
from napari_nalu_count.errors import Cancelled, CancelToken


def save_tiny(name: str, task: str = "count", diameter: float = 12.0) -> str:
    """A 2-scale, 4-channel network saved into this test's user model directory."""
    import torch

    from napari_nalu_count import models
    from napari_nalu_count.nn.registry import build_model, default_config

    config = default_config("unet_count" if task == "count" else "se_unet")
    config["widths"] = [4, 8]
    torch.manual_seed(0)
    net = build_model(config)
    models.save_model(net, models.make_card(name, task, config, diameter=diameter), name)
    return name


@pytest.fixture
def tiny_count() -> str:
    return save_tiny("tiny-count")


def _image(shape=(64, 64), seed=0) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    if len(shape) == 2:
        return synthetic_cells(shape=shape, n_cells=6, diameter=10.0, seed=seed).image
    return np.stack([_image(shape[1:], seed + t) for t in range(shape[0])])


# ----------------------------------------------------------------------------- plain functions
def test_parse_diameter():
    assert parse_diameter("") is None
    assert parse_diameter(" Estimate ") == "auto"
    assert parse_diameter("12.5") == 12.5
    for bad in ("abc", "-3", "0", "nan"):
        with pytest.raises(InputError):
            parse_diameter(bad)


def test_axes_helpers():
    assert default_axes(2) == "YX"
    assert default_axes(3) == "TYX"
    assert default_axes(3, rgb=True) == "YXC"
    assert check_axes("tyx", 3) == "TYX"
    for bad, ndim in (("YX", 3), ("TYQ", 3), ("YYX", 3), ("TZX", 3)):
        with pytest.raises(InputError):
            check_axes(bad, ndim)


def test_region_counts_2d_and_stack():
    density = np.zeros((2, 10, 10), np.float32)
    density[0, 2, 2] = 1.0
    density[1, 2, 2] = 2.0
    density[1, 8, 8] = 0.5
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :5, :5] = True
    masks[1, 5:, 5:] = True
    out = region_counts(density, masks)
    np.testing.assert_allclose(out["region 1"], [1.0, 2.0])
    np.testing.assert_allclose(out["region 2"], [0.0, 0.5])
    assert region_counts(density[1], masks)["region 2"] == pytest.approx(0.5)
    with pytest.raises(InputError):
        region_counts(density, masks[:, :5])


def test_write_counts_csv(tmp_path):
    path = write_counts_csv(
        tmp_path / "c.csv", "img.tif", np.array([1.0, 2.5]), {"region 1": np.array([0, 1])}
    )
    rows = list(csv.reader(path.open()))
    assert rows == [  # the shared table format (io_csv): cells with two decimals
        ["file", "frame", "count", "region 1"],
        ["img.tif", "0", "1.00", "0.00"],
        ["img.tif", "1", "2.50", "1.00"],
    ]
    rows = list(csv.reader(write_counts_csv(tmp_path / "d.csv", "x", 3.0).open()))
    assert rows[1] == ["x", "0", "3.00"]
    rows = list(csv.reader(write_counts_csv(tmp_path / "e.csv", "x", 3.0, integer=True).open()))
    assert rows[1] == ["x", "0", "3"]


def test_pump_yields_progress_and_catches_errors():
    def work(n, *, progress, cancel):
        for i in range(n):
            progress(i + 1, n, "step")
        return "ok"

    gen = pump(work, 3)
    events = []
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            outcome = stop.value
            break
        if event is not None:
            events.append(event)
    assert events == [(1, 3, "step"), (2, 3, "step"), (3, 3, "step")]
    assert outcome.value == "ok" and outcome.error is None

    def broken(*, progress, cancel):
        raise InputError("bad image")

    outcome = _drain(pump(broken))
    assert isinstance(outcome.error, InputError)

    def cancelled(*, progress, cancel):
        raise Cancelled("stop")

    assert _drain(pump(cancelled)).cancelled


def _drain(gen) -> Outcome:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_run_count_2d_and_stack(tiny_count):
    calls = []
    out = run_count(
        _image(), {"model": tiny_count, "axes": "YX"}, progress=lambda *a: calls.append(a)
    )
    assert out.density.shape == (64, 64) and out.density.dtype == np.float32
    assert np.ndim(out.counts) == 0 and out.total == pytest.approx(float(out.density.sum()), 1e-3)
    assert out.points.shape[1] == 2
    assert calls and calls[-1][0] == calls[-1][1]

    masks = np.zeros((1, 64, 64), bool)
    masks[0, :32] = True
    out = run_count(_image((3, 64, 64)), {"model": tiny_count, "axes": "TYX"}, region_masks=masks)
    assert out.density.shape == (3, 64, 64) and out.counts.shape == (3,)
    assert out.regions["region 1"].shape == (3,)


def test_run_count_cancel(tiny_count):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_count(_image(), {"model": tiny_count, "axes": "YX"}, cancel=token)


# ----------------------------------------------------------------------------- viewer
def _fake_output(shape=(32, 32), n=3) -> CountOutput:
    density = np.full(shape, 0.01, np.float32)
    points = np.array([[5.0] * len(shape)] * n)
    counts = density.sum(axis=(-2, -1)) if len(shape) > 2 else np.array(density.sum())
    return CountOutput(density=density, points=points, counts=counts, out_axes="YX")


@pytest.mark.gui
def test_apply_results_bound_to_source_and_replaced(make_napari_viewer):
    viewer = make_napari_viewer()
    src = viewer.add_image(np.zeros((32, 32)), name="cells", scale=(2, 3), translate=(5, 7))
    other = viewer.add_image(np.zeros((32, 32)), name="other")
    apply_count_results(viewer, src, _fake_output(), {"axes": "YX"})
    apply_count_results(viewer, other, _fake_output(), {"axes": "YX"})
    assert len(viewer.layers) == 6
    density = viewer.layers["cells density"]
    assert tuple(density.scale) == (2, 3) and tuple(density.translate) == (5, 7)
    assert density.blending == "additive" and density.colormap.name == "inferno"
    assert tuple(viewer.layers["cells cells"].scale) == (2, 3)
    # the user renames the result: a re-run still replaces it (tracked by metadata)
    density.name = "my density"
    apply_count_results(viewer, src, _fake_output(n=5), {"axes": "YX"})
    assert len(viewer.layers) == 6
    assert "my density" not in viewer.layers
    assert len(viewer.layers["cells cells"].data) == 5


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


@pytest.mark.gui
def test_count_widget_end_to_end(make_napari_viewer, qtbot, tiny_count, tmp_path):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(), name="nuclei", scale=(0.5, 0.5))
    widget = CountWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image_combo.currentData() is layer
    assert widget.model_combo.findData(tiny_count) >= 0
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(tiny_count))
    assert not widget.axes_edit.isVisibleTo(widget)  # 2-D: no axes field
    assert widget.run_button.isEnabled()

    # a rectangle region
    viewer.add_shapes([[[0, 0], [16, 16]]], shape_type="rectangle", name="roi", scale=(0.5, 0.5))
    widget.regions_combo.setCurrentIndex(widget.regions_combo.findText("roi"))

    widget.run()
    _wait(qtbot, widget)
    density = viewer.layers["nuclei density"]
    assert tuple(density.scale) == (0.5, 0.5)
    assert "nuclei cells" in viewer.layers
    assert "cells" in widget.total_label.text()
    assert widget.table.isVisibleTo(widget) and widget.table.columnCount() == 3  # region column
    n_layers = len(viewer.layers)

    widget.run()  # re-run replaces
    _wait(qtbot, widget)
    assert len(viewer.layers) == n_layers

    out = widget.export_csv(tmp_path / "counts.csv")
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["file"] == "nuclei" and rows[0]["frame"] == "0"
    assert float(rows[0]["count"]) == pytest.approx(float(density.data.sum()), abs=0.01)
    assert "region 1" in rows[0]


@pytest.mark.gui
def test_count_widget_stack_table_follows_frame(make_napari_viewer, qtbot, tiny_count):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((4, 48, 48)), name="movie")
    widget = CountWidget(viewer)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(tiny_count))
    assert widget.axes_edit.text() == "TYX" and widget.axes_edit.isVisibleTo(widget)
    widget.axes_edit.setText("TQX")
    assert not widget.run_button.isEnabled() and "letters" in widget.hint_label.text()
    widget.axes_edit.setText("TYX")
    assert widget.run_button.isEnabled()

    widget.run()
    _wait(qtbot, widget)
    assert widget.table.rowCount() == 4
    assert viewer.layers["movie density"].data.shape == (4, 48, 48)
    viewer.dims.set_current_step(0, 2)
    assert widget.current_row() == 2
    assert widget.table.selectionModel().selectedRows()[0].row() == 2
    assert widget.total_label.text().endswith("cells in frame 2")
    assert widget.detail_label.text().startswith("sum over 4 planes")
    widget.table.selectRow(3)  # clicking a row moves the viewer
    assert viewer.dims.current_step[0] == 3


@pytest.mark.gui
def test_count_widget_cancel_and_layer_switch(make_napari_viewer, qtbot, monkeypatch):
    from napari_nalu_count._widgets import count_widget
    from napari_nalu_count._widgets.count_widget import CountWidget

    monkeypatch.setattr(_common, "model_names", lambda task=None: ["fake"])
    gate = {"go": False}

    def slow_count(image, params, *, region_masks=None, progress=None, cancel=None):
        for i in range(2000):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if gate["go"]:
                break
            progress(i, 2000, "working")
            time.sleep(0.005)
        return _fake_output(image.shape)

    monkeypatch.setattr(count_widget, "run_count", slow_count)
    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((32, 32)), name="a")
    b = viewer.add_image(np.zeros((32, 32)), name="b")
    widget = CountWidget(viewer)
    assert widget.model_combo.currentData() == "fake"

    widget.image_combo.setCurrentIndex(widget.image_combo.findData(a))
    widget.run()
    assert widget.running and widget.cancel_button.isEnabled()
    assert not widget.run_button.isEnabled()
    qtbot.wait(50)
    widget.cancel()
    _wait(qtbot, widget, 10_000)
    assert widget.status_label.text() == "cancelled"
    assert len(viewer.layers) == 2 and widget.run_button.isEnabled()

    # switching the picked layer mid-run must not move the result to it
    widget.run()
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(b))
    gate["go"] = True
    _wait(qtbot, widget, 10_000)
    assert "a density" in viewer.layers and "b density" not in viewer.layers


@pytest.mark.gui
def test_count_widget_errors_and_model_refresh(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    from napari_nalu_count._widgets.count_widget import CountWidget
    from napari_nalu_count.models import store

    monkeypatch.setattr(store, "bundled_model_dir", lambda: tmp_path / "no_bundled")
    errors = []
    monkeypatch.setattr(_common, "notify_error", errors.append)
    viewer = make_napari_viewer()
    widget = CountWidget(viewer)
    assert not widget.run_button.isEnabled()
    assert "image layer" in widget.hint_label.text()
    viewer.add_image(np.zeros((32, 32)), name="img")
    assert "model" in widget.hint_label.text()  # no count model yet

    save_tiny("fresh-count")
    _common.notify_model_added("fresh-count")
    assert widget.model_combo.findData("fresh-count") >= 0
    assert widget.run_button.isEnabled()
    widget.diameter_edit.setText("-4")
    assert not widget.run_button.isEnabled()
    assert "diameter" in widget.hint_label.text()
    widget.diameter_edit.setText("")

    # an engine error becomes a notification with its message, no layers
    from napari_nalu_count._widgets import count_widget

    def failing(*args, **kwargs):
        raise InputError("image is all NaN")

    monkeypatch.setattr(count_widget, "run_count", failing)
    widget.run()
    _wait(qtbot, widget, 10_000)
    assert errors == ["image is all NaN"]
    assert len(viewer.layers) == 1


@pytest.mark.gui
def test_closed_dock_lets_go_of_the_viewer(make_napari_viewer, qtbot):
    from napari_nalu_count._widgets.count_widget import CountWidget
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget

    viewer = make_napari_viewer()
    widgets = [CountWidget(viewer), FineTuneWidget(viewer)]
    n_inserted = len(viewer.layers.events.inserted.callbacks)
    for widget in widgets:
        widget.deleteLater()
    qtbot.wait(50)
    assert len(viewer.layers.events.inserted.callbacks) == n_inserted - 2
    viewer.add_image(np.zeros((8, 8)))  # no callbacks into deleted widgets
    _common.notify_model_added("anything")
