"""Count dock: the plain functions, then the widget end to end in a napari viewer."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from napari_nalu_count._widgets import _models, _viewer
from napari_nalu_count._widgets._inference import RunParams, check_run
from napari_nalu_count._widgets.count_widget import (
    CountOutput,
    apply_count_results,
    run_count,
)
from napari_nalu_count.errors import Cancelled, CancelToken, InputError
from napari_nalu_count.events import Progress


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
def test_run_count_2d_and_stack(tiny_count):
    events = []
    out = run_count(_image(), RunParams(tiny_count, axes="YX"), progress=events.append)
    assert out.result.density.shape == (64, 64) and out.result.density.dtype == np.float32
    assert np.ndim(out.counts) == 0
    assert out.total == pytest.approx(float(out.result.density.sum()), 1e-3)
    assert out.result.points.shape[1] == 2
    assert events and all(isinstance(e, Progress) for e in events)
    assert events[-1].done == events[-1].total
    assert out.diameter == 12.0 and out.diameter_source == "model"  # the card's, not rescaled

    masks = np.zeros((1, 64, 64), bool)
    masks[0, :32] = True
    out = run_count(_image((3, 64, 64)), RunParams(tiny_count, axes="TYX"), region_masks=masks)
    assert out.result.density.shape == (3, 64, 64) and out.counts.shape == (3,)
    assert out.regions["region 1"].shape == (3,)


def test_run_count_cancel(tiny_count):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_count(_image(), RunParams(tiny_count, axes="YX"), cancel=token)


def test_island_detail_says_when_the_size_came_from_round_outlines():
    from types import SimpleNamespace

    from napari_nalu_count._widgets._inference import island_detail

    used = {"used": True, "islands": 23.0, "coarsen": 1.25, "diameter": 88.0}
    line = island_detail(SimpleNamespace(size_estimate={"islands": used}))
    assert line == ["size from 23 round nucleus outlines (textured nuclei: counted 1.25x coarser)"]
    for estimate in (None, {}, {"islands": dict(used, used=False)}, {"islands": None}):
        assert island_detail(SimpleNamespace(size_estimate=estimate)) == []
    assert island_detail(SimpleNamespace()) == []  # results without a size estimate


def test_check_run_uses_the_engine_rules(tiny_count):
    """The dock's checks are the engine's: the diameter rule, axes, and channels."""
    from napari.layers import Image

    layer = Image(_image())
    params = check_run(layer, tiny_count, task="count", diameter=" estimate ", axes="yx")
    assert params == RunParams(tiny_count, "auto", "auto", "YX", None)
    assert check_run(layer, tiny_count, task="count").diameter is None  # blank: automatic
    for kwargs, match in (
        ({"diameter": "-4"}, "diameter"),
        ({"axes": "TYX"}, "letters"),
        ({"axes": "YQ"}, "unknown letter"),
    ):
        with pytest.raises(InputError, match=match):
            check_run(layer, tiny_count, task="count", **kwargs)
    with pytest.raises(InputError, match="no count model"):
        check_run(layer, None, task="count")
    two = Image(np.stack([_image(), _image(seed=1)]))
    with pytest.raises(InputError, match="channel picker"):
        check_run(two, tiny_count, task="count", axes="CYX")
    assert check_run(two, tiny_count, task="count", axes="CYX", channel=1).channel == 1


# ----------------------------------------------------------------------------- viewer
def _fake_output(shape=(32, 32), n=3, axes="YX") -> CountOutput:
    from napari_nalu_count.infer import CountResult

    density = np.full(shape, 0.01, np.float32)
    points = np.array([[5.0] * len(shape)] * n)
    counts = density.sum(axis=(-2, -1)).ravel() if len(shape) > 2 else float(density.sum())
    return CountOutput(CountResult(counts, density, points, axes), diameter=10.0)


@pytest.mark.gui
def test_apply_results_bound_to_source_and_replaced(make_napari_viewer):
    viewer = make_napari_viewer()
    src = viewer.add_image(np.zeros((32, 32)), name="cells", scale=(2, 3), translate=(5, 7))
    other = viewer.add_image(np.zeros((32, 32)), name="other")
    apply_count_results(viewer, src, _fake_output(), RunParams("m", axes="YX"))
    apply_count_results(viewer, other, _fake_output(), RunParams("m", axes="YX"))
    assert len(viewer.layers) == 6
    density = viewer.layers["cells density"]
    assert tuple(density.scale) == (2, 3) and tuple(density.translate) == (5, 7)
    assert density.blending == "additive" and density.colormap.name == "inferno"
    assert tuple(density.axis_labels) == ("Y", "X")
    assert tuple(viewer.layers["cells cells"].scale) == (2, 3)
    meta = density.metadata[_viewer.META_KEY]
    assert meta["diameter"] == 10.0 and meta["diameter_source"] == "model"
    # the user renames the result: a re-run still replaces it (tracked by metadata)
    density.name = "my density"
    apply_count_results(viewer, src, _fake_output(n=5), RunParams("m", axes="YX"))
    assert len(viewer.layers) == 6
    assert "my density" not in viewer.layers
    assert len(viewer.layers["cells cells"].data) == 5
    # a stack of RGB frames: the result drops the colour axis and is labelled T, Y, X
    rgb = viewer.add_image(np.zeros((2, 32, 32, 3), np.uint8), name="rgb", rgb=True)
    apply_count_results(
        viewer, rgb, _fake_output((2, 32, 32), axes="TYX"), RunParams("m", axes="TYXC")
    )
    assert tuple(viewer.layers["rgb density"].axis_labels) == ("T", "Y", "X")


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def _pick(combo, value) -> None:
    assert value in combo.choices, (value, combo.choices)
    combo.value = value


@pytest.mark.gui
def test_count_widget_end_to_end(make_napari_viewer, qtbot, tiny_count, tmp_path):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(), name="nuclei", scale=(0.5, 0.5))
    widget = CountWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image_combo.value is layer
    assert widget.diameter_edit.native.placeholderText() == "automatic; or pixels"
    _pick(widget.model_combo, tiny_count)
    assert not widget.axes_edit.native.isVisibleTo(widget)  # 2-D: no axes field
    assert not widget.channel_combo.native.isVisibleTo(widget)
    assert widget.run_button.isEnabled()

    # a rectangle region
    viewer.add_shapes([[[0, 0], [16, 16]]], shape_type="rectangle", name="roi", scale=(0.5, 0.5))
    _pick(widget.regions_combo, viewer.layers["roi"])

    job = widget.run()
    _wait(qtbot, widget)
    assert job.activity is not None and job.activity.n == job.activity.total > 0  # activity dock
    density = viewer.layers["nuclei density"]
    assert tuple(density.scale) == (0.5, 0.5)
    assert "nuclei cells" in viewer.layers
    results = widget.results
    assert "cells" in results.total_label.text()
    assert "nucleus diameter 12.0 px (the model's own)" in results.detail_label.text()
    # frame, count, the shape's count, the plane's area and density (pixel size from the scale)
    assert results.table.isVisibleTo(widget) and results.table.columnCount() == 5
    assert "pixel size 0.5 µm (from the layer's scale)" in results.detail_label.text()
    regions = widget.region_table.frame  # counts per region: the shape, with area and density
    assert list(regions["region"]) == [1] and regions["area_um2"][0] == pytest.approx(64, rel=0.15)
    n_layers = len(viewer.layers)

    widget.run()  # re-run replaces
    _wait(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert "background flattened" not in results.detail_label.text()

    assert widget.background_combo.value == "auto"  # the engine's default
    widget.background_combo.value = "on"  # always flatten an uneven background first
    assert widget.params().background == "on"
    widget.run()
    _wait(qtbot, widget)
    assert "background flattened (3 diameters)" in results.detail_label.text()
    widget.background_combo.value = "off"
    widget.run()
    _wait(qtbot, widget)

    out = widget.export_csv(tmp_path / "counts.csv")
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["file"] == "nuclei" and rows[0]["frame"] == "0"
    assert float(rows[0]["count"]) == pytest.approx(float(density.data.sum()), abs=0.01)
    # the batch table: the whole plane (region all), then the shape (region 1), in µm
    assert [r["region"] for r in rows] == ["all", "1"]
    assert float(rows[0]["area_um2"]) == pytest.approx(64 * 64 * 0.25)
    inside, area = float(rows[1]["count"]), float(rows[1]["area_um2"])
    assert inside == pytest.approx(regions["count"][0], abs=0.01)
    assert float(rows[1]["density_per_mm2"]) == pytest.approx(inside / (area / 1e6), rel=1e-2)


@pytest.mark.gui
def test_count_widget_stack_table_follows_frame(make_napari_viewer, qtbot, tiny_count):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((4, 48, 48)), name="movie")
    widget = CountWidget(viewer)
    _pick(widget.model_combo, tiny_count)
    assert widget.axes_edit.value == "TYX" and widget.axes_edit.native.isVisibleTo(widget)
    widget.axes_edit.value = "TQX"
    assert not widget.run_button.isEnabled() and "letter" in widget.hint_label.text()
    widget.axes_edit.value = "TYX"
    assert widget.run_button.isEnabled()

    widget.run()
    _wait(qtbot, widget)
    results = widget.results
    assert results.table.rowCount() == 4
    assert viewer.layers["movie density"].data.shape == (4, 48, 48)
    viewer.dims.set_current_step(0, 2)
    assert results.current_row() == 2
    assert results.table.selectionModel().selectedRows()[0].row() == 2
    assert results.total_label.text().endswith("cells in frame 2")
    assert results.detail_label.text().startswith("sum over 4 planes")
    results.table.selectRow(3)  # clicking a row moves the viewer
    assert viewer.dims.current_step[0] == 3


@pytest.mark.gui
def test_axes_edit_survives_layer_events(make_napari_viewer, qtbot, tiny_count):
    """A typed ZTYX stays ZTYX when layers come and go (the dock's own result layers too), so
    the per-frame table follows Z-major planes; each layer remembers its own axes."""
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    volume = _image((6, 32, 32)).reshape(3, 2, 32, 32)  # Z=3, T=2
    layer = viewer.add_image(volume, name="zt")
    widget = CountWidget(viewer)
    _pick(widget.model_combo, tiny_count)
    assert widget.axes_edit.value == "TZYX"  # the guess
    widget.axes_edit.value = "ZTYX"
    other = viewer.add_image(np.zeros((5, 16, 16)), name="other")  # a layer event
    viewer.layers.move(viewer.layers.index(other), 0)
    assert widget.axes_edit.value == "ZTYX"
    widget.run()  # adds the density and cells layers
    _wait(qtbot, widget)
    assert widget.axes_edit.value == "ZTYX"
    assert widget.results.summary.counts.shape == (3, 2)  # (Z, T): frame = z * 2 + t
    np.testing.assert_allclose(
        widget.results.summary.counts,
        viewer.layers["zt density"].data.sum(axis=(-2, -1)),
        rtol=1e-5,
    )
    assert tuple(viewer.layers["zt density"].axis_labels) == ("Z", "T", "Y", "X")
    # another layer has its own axes; coming back restores the typed ones
    _pick(widget.image_combo, other)
    assert widget.axes_edit.value == "TYX"
    _pick(widget.image_combo, layer)
    assert widget.axes_edit.value == "ZTYX"


@pytest.mark.gui
def test_channel_picker_counts_the_chosen_channel(make_napari_viewer, qtbot, tiny_count):
    """A 2-channel image that is not RGB: the dock offers the channels and counts the one
    picked, as infer.count(channel=...) does."""
    from napari_nalu_count import infer
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    image = np.stack([np.zeros((48, 48), np.float32), _image((48, 48), seed=3)])
    viewer.add_image(image, name="two")
    widget = CountWidget(viewer)
    _pick(widget.model_combo, tiny_count)
    widget.axes_edit.value = "CYX"
    assert widget.channel_combo.native.isVisibleTo(widget)
    assert list(widget.channel_combo.choices) == [None, 0, 1, "mean", "max"]
    assert not widget.run_button.isEnabled() and "channel" in widget.hint_label.text()
    widget.channel_combo.value = 1
    assert widget.run_button.isEnabled(), widget.hint_label.text()
    widget.run()
    _wait(qtbot, widget)
    expected = infer.count(image, tiny_count, axes="CYX", channel=1, device="cpu")
    density = viewer.layers["two density"]
    np.testing.assert_allclose(density.data, expected.density, rtol=1e-5)
    assert density.data.shape == (48, 48)
    widget.axes_edit.value = "cyx"  # the same axes: the choice stays
    assert widget.channel_combo.value == 1


@pytest.mark.gui
def test_count_widget_cancel_and_layer_switch(make_napari_viewer, qtbot, monkeypatch):
    from napari_nalu_count._widgets import count_widget
    from napari_nalu_count._widgets.count_widget import CountWidget

    monkeypatch.setattr(_models, "model_names", lambda task=None: ["fake"])
    monkeypatch.setattr(_models, "model_card", lambda name: {"diameter": 10.0})
    gate = {"go": False}

    def slow_count(image, params, *, region_masks=None, cancel=None, **quantities):
        for i in range(2000):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if gate["go"]:
                break
            yield Progress(i, 2000, "working")
            time.sleep(0.005)
        return _fake_output(image.shape)

    monkeypatch.setattr(count_widget, "count_job", slow_count)
    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((32, 32)), name="a")
    b = viewer.add_image(np.zeros((32, 32)), name="b")
    widget = CountWidget(viewer)
    assert widget.model_combo.value == "fake"

    _pick(widget.image_combo, a)
    widget.run()
    assert widget.running and widget.cancel_button.isEnabled()
    assert not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: widget.progress_bar.maximum() == 2000, timeout=10_000)
    widget.cancel()
    _wait(qtbot, widget, 10_000)
    assert widget.status_label.text() == "cancelled"
    assert len(viewer.layers) == 2 and widget.run_button.isEnabled()

    # switching the picked layer mid-run must not move the result to it
    widget.run()
    _pick(widget.image_combo, b)
    gate["go"] = True
    _wait(qtbot, widget, 10_000)
    assert "a density" in viewer.layers and "b density" not in viewer.layers


@pytest.mark.gui
def test_count_widget_errors_and_model_refresh(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    from napari_nalu_count._widgets import count_widget
    from napari_nalu_count._widgets.count_widget import CountWidget
    from napari_nalu_count.models import store

    monkeypatch.setattr(store, "bundled_model_dir", lambda: tmp_path / "no_bundled")
    errors = []
    monkeypatch.setattr(_viewer, "notify_error", errors.append)
    viewer = make_napari_viewer()
    widget = CountWidget(viewer)
    assert not widget.run_button.isEnabled()
    assert "image layer" in widget.hint_label.text()
    viewer.add_image(np.zeros((32, 32)), name="img")
    assert "model" in widget.hint_label.text()  # no count model yet

    save_tiny("fresh-count")
    _models.notify_model_added("fresh-count")
    assert "fresh-count" in widget.model_combo.choices
    assert widget.run_button.isEnabled()
    widget.diameter_edit.value = "-4"
    assert not widget.run_button.isEnabled()
    assert "diameter" in widget.hint_label.text()
    widget.diameter_edit.value = ""

    # an engine error becomes a notification with its message, no layers
    def failing(*args, **kwargs):
        raise InputError("image is all NaN")
        yield  # a generator, like the real job

    monkeypatch.setattr(count_widget, "count_job", failing)
    widget.run()
    _wait(qtbot, widget, 10_000)
    assert errors == ["image is all NaN"]
    assert len(viewer.layers) == 1


@pytest.mark.gui
def test_closed_dock_lets_go_of_the_viewer(make_napari_viewer, qtbot):
    from napari_nalu_count._widgets.count_widget import CountWidget
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget
    from napari_nalu_count._widgets.regions_widget import RegionsWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)), name="img")
    points = viewer.add_points(np.zeros((6, 2)), name="dots")
    n_inserted = len(viewer.layers.events.inserted.callbacks)
    n_steps = len(viewer.dims.events.current_step.callbacks)
    n_theme = len(viewer.events.theme.callbacks)
    n_data = len(points.events.data.callbacks)
    widgets = [CountWidget(viewer), FineTuneWidget(viewer), RegionsWidget(viewer)]
    assert len(points.events.data.callbacks) == n_data + 1  # the fine-tune dock watches it
    for widget in widgets:
        widget.deleteLater()
    qtbot.wait(50)
    assert len(viewer.layers.events.inserted.callbacks) == n_inserted
    assert len(viewer.dims.events.current_step.callbacks) == n_steps
    assert len(viewer.events.theme.callbacks) == n_theme
    assert len(points.events.data.callbacks) == n_data
    viewer.add_image(np.zeros((8, 8)))  # no callbacks into deleted widgets
    _models.notify_model_added("anything")
