"""Issue 15 in the docks: batch from the GUI, measurements, physical units, regions from Labels,
export through the npe2 writers, multiscale layers, Z-stacks as volumes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from napari_nalu_count._widgets import _quantify
from napari_nalu_count._widgets._inference import RunParams
from napari_nalu_count.errors import CancelToken, InputError
from test_widgets_count import save_tiny


@pytest.fixture
def tiny_count() -> str:
    return save_tiny("tiny-count")


@pytest.fixture
def tiny_seg() -> str:
    return save_tiny("tiny-seg", task="segment")


def _image(shape=(48, 48), seed=0) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape=shape, n_cells=5, diameter=10.0, seed=seed).image


def _wait(qtbot, widget, timeout=90_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def _folder(tmp_path, n=2):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(n):
        tifffile.imwrite(folder / f"img{k}.tif", _image(seed=k))
    (folder / "broken.tif").write_bytes(b"not a tiff")
    return folder


# ----------------------------------------------------------------------------- units (plain)
def test_pixel_size_from_field_and_layer_scale():
    from napari.layers import Image

    plain = Image(np.zeros((8, 8)))
    assert _quantify.pixel_size_for("", plain) == (None, "none")
    assert _quantify.pixel_size_for("0.65", plain) == ((0.65, 0.65), "given")
    assert _quantify.pixel_size_for("0.5, 0.25", plain) == ((0.5, 0.25), "given")
    scaled = Image(np.zeros((3, 8, 8)), scale=(2.0, 0.4, 0.4))
    assert _quantify.pixel_size_for("", scaled, "ZYX") == ((0.4, 0.4), "layer")
    nm = Image(np.zeros((8, 8)), scale=(200, 200), units=("nm", "nm"))
    assert _quantify.pixel_size_for("", nm)[0] == pytest.approx((0.2, 0.2))
    for bad in ("abc", "0", "-1", "1 2 3"):
        with pytest.raises(InputError):
            _quantify.pixel_size_for(bad, plain)
    assert "pixels" in _quantify.pixel_size_detail(None, "none")


# ----------------------------------------------------------------------------- batch
def test_batch_job_skips_unreadable_and_cancel_keeps_rows(tiny_count, tmp_path):
    from napari_nalu_count._widgets.batch_widget import batch_job, batch_report, check_batch

    folder = _folder(tmp_path, n=3)
    with pytest.raises(InputError, match="folder"):
        check_batch("", "count", tiny_count, str(tmp_path / "t.csv"))
    with pytest.raises(InputError, match="no such"):
        check_batch(str(tmp_path / "nowhere"), "count", tiny_count, str(tmp_path / "t.csv"))
    with pytest.raises(InputError, match="save"):
        check_batch(str(folder), "count", tiny_count, "")
    params = check_batch(
        str(folder), "count", tiny_count, str(tmp_path / "t.csv"), pixel_size="0.5",
        maps_dir=str(tmp_path / "maps"),
    )  # fmt: skip
    events = []
    gen = batch_job(params, CancelToken())
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert [e.kind for e in events][-1] == "done"
    assert len(result.files) == 3 and [p for p, _ in result.skipped] == [str(folder / "broken.tif")]
    report = batch_report(result)
    assert "1 input(s) could not be processed" in report[0] and "broken.tif" in report[1]
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 3 and "density_per_mm2" in rows[0]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir())[0] == "img0_density.tif"

    # cancel after the first file: its rows are kept, and the result says so
    token = CancelToken()
    gen = batch_job(params, token)
    try:
        while True:
            if next(gen).kind == "file":
                token.cancel()
    except StopIteration as stop:
        result = stop.value
    assert result.cancelled and len(result.files) == 1 and len(result.rows) == 1
    assert "cancelled" in batch_report(result)[0] and "finished files only" in result.message


@pytest.mark.gui
def test_batch_dock_runs_a_folder(make_napari_viewer, qtbot, tiny_seg, tmp_path):
    from napari_nalu_count._widgets.batch_widget import BatchWidget

    folder = _folder(tmp_path)
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert not widget.run_button.isEnabled() and "folder" in widget.hint_label.text()
    assert not widget.measure_check.native.isVisibleTo(widget)  # counting: no measurements
    widget.task_combo.value = "segment"
    assert widget.measure_check.native.isVisibleTo(widget)
    assert tiny_seg in widget.model_combo.choices
    widget.model_combo.value = tiny_seg
    widget.inputs_edit.value = str(folder)
    widget.csv_edit.value = str(tmp_path / "out" / "table.csv")
    widget.pixel_edit.value = "0.5"
    assert widget.run_button.isEnabled(), widget.hint_label.text()
    widget.run()
    _wait(qtbot, widget)
    status = widget.status_label.text()
    assert "2 of 3 file(s) done" in status and "skipped broken.tif" in status
    assert widget.table.isVisibleTo(widget) and widget.table.table.rowCount() == 2
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [r["file"].endswith(f"img{k}.tif") for k, r in enumerate(rows)] == [True, True]
    objects = tmp_path / "out" / "table_objects.csv"
    assert objects.is_file() and "area_um2" in objects.read_text().splitlines()[0]


# ----------------------------------------------------------------------------- measurements
@pytest.mark.gui
def test_segment_dock_measurements_units_and_label_regions(
    make_napari_viewer, qtbot, tiny_seg, tmp_path
):
    from napari_nalu_count._widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((64, 64)), name="nuclei")
    atlas = np.zeros((64, 64), np.int32)
    atlas[:, :32], atlas[:, 32:] = 3, 7
    viewer.add_labels(atlas, name="atlas")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_combo.value = tiny_seg
    assert widget.results.detail_label.text() == ""
    widget.regions_combo.value = viewer.layers["atlas"]
    widget.pixel_edit.value = "0.5"
    widget.run()
    _wait(qtbot, widget)
    labels = viewer.layers["nuclei labels"]
    n = len(np.unique(labels.data[labels.data > 0]))
    features = labels.features
    assert len(features) == n and {"area_um2", "equivalent_diameter_um"} <= set(features)
    assert list(features["index"]) == list(features["label"])
    areas = np.bincount(labels.data.ravel())[features["label"].to_numpy()] * 0.25
    assert np.allclose(features["area_um2"], areas)
    assert widget.measure_table.isVisibleTo(widget) and widget.measure_table.table.rowCount() == n
    out = widget.export_measurements(tmp_path / "objects.csv")
    assert len(list(csv.DictReader(out.open()))) == n
    regions = widget.region_table.frame  # objects whose centroid is in each atlas id
    assert list(regions["region"]) == [3, 7] and regions["count"].sum() == n
    assert list(regions["area_um2"]) == [32 * 64 * 0.25] * 2
    assert "µm²" in widget.results.detail_label.text()
    rows = list(csv.DictReader(widget.export_csv(tmp_path / "c.csv").open()))
    assert [r["region"] for r in rows] == ["all", "3", "7"]


@pytest.mark.gui
def test_count_dock_label_regions_without_pixel_size(make_napari_viewer, qtbot, tiny_count):
    from napari_nalu_count._widgets.count_widget import CountWidget

    viewer = make_napari_viewer()
    viewer.add_image(_image((64, 64)), name="nuclei")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 2
    viewer.add_labels(mask, name="tissue")
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="wrong size")
    widget = CountWidget(viewer)
    widget.model_combo.value = tiny_count
    widget.regions_combo.value = viewer.layers["wrong size"]
    widget.run()
    assert widget.job is None  # refused with a notification: the mask does not fit
    widget.regions_combo.value = viewer.layers["tissue"]
    widget.run()
    _wait(qtbot, widget)
    density = viewer.layers["nuclei density"].data
    regions = widget.region_table.frame
    assert list(regions["region"]) == [2] and regions["area_px"][0] == 32 * 32
    assert regions["count"][0] == pytest.approx(float(density[8:40, 8:40].sum()), abs=1e-3)
    assert "density_per_mpx" in regions and "pixels" in widget.results.detail_label.text()


# ----------------------------------------------------------------------------- export
@pytest.mark.gui
def test_writers_from_the_viewer(make_napari_viewer, tmp_path):
    import napari
    import roifile

    viewer = make_napari_viewer()
    pts = viewer.add_points(np.array([[1.0, 2.0], [3.0, 4.0]]), name="cells")
    lab = np.zeros((16, 16), np.int32)
    lab[2:6, 2:6], lab[8:12, 9:14] = 1, 2
    labels = viewer.add_labels(lab, name="labels")
    (out,) = napari.save_layers(str(tmp_path / "cells.csv"), [pts], plugin="napari-nalu-count")
    assert open(out).read().splitlines()[0] == "frame,y,x"
    labels.save(str(tmp_path / "labels.tif"), plugin="napari-nalu-count")
    assert np.array_equal(tifffile.imread(tmp_path / "labels.tif"), lab)
    (out,) = napari.save_layers(str(tmp_path / "rois.zip"), [labels], plugin="napari-nalu-count")
    assert len(roifile.roiread(out)) == 2


# ----------------------------------------------------------------------------- multiscale
@pytest.mark.gui
def test_count_dock_multiscale_layer(make_napari_viewer, qtbot, tiny_count):
    from napari_nalu_count._widgets.count_widget import CountWidget

    image = _image((96, 96))
    viewer = make_napari_viewer()
    layer = viewer.add_image([image, image[::2, ::2]], name="pyramid", multiscale=True,
                             scale=(0.5, 0.5), translate=(5, 7))  # fmt: skip
    widget = CountWidget(viewer)
    widget.model_combo.value = tiny_count
    assert widget.level_combo.native.isVisibleTo(widget)
    assert len(widget.level_combo.choices) == 2 and widget.run_button.isEnabled()
    widget.run()
    _wait(qtbot, widget)
    density = viewer.layers["pyramid density"]
    assert density.data.shape == (96, 96) and tuple(density.scale) == tuple(layer.scale)
    assert tuple(density.translate) == (5, 7)
    widget.level_combo.value = 1
    widget.run()
    _wait(qtbot, widget)
    density = viewer.layers["pyramid density"]
    assert density.data.shape == (48, 48) and tuple(density.scale) == (1.0, 1.0)
    assert "level 1" in widget.results.detail_label.text()


# ----------------------------------------------------------------------------- volumes
def _stack() -> np.ndarray:
    """A ZYX stack: bright balls spanning several planes."""
    z, y, x = np.mgrid[:9, :48, :48]
    image = np.full((9, 48, 48), 100.0, np.float32)
    for cz, cy, cx in ((4, 12, 12), (4, 32, 30), (3, 14, 36)):
        image += 400 * (((z - cz) / 3) ** 2 + ((y - cy) / 5) ** 2 + ((x - cx) / 5) ** 2 < 1)
    return image


@pytest.mark.gui
def test_docks_count_a_z_stack_as_volume(make_napari_viewer, qtbot, tiny_count, tiny_seg, tmp_path):
    from napari_nalu_count._widgets.count_widget import CountWidget
    from napari_nalu_count._widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(_stack(), name="stack")
    widget = CountWidget(viewer)
    widget.model_combo.value = tiny_count
    widget.axes_edit.value = "YXC"
    assert not widget.volume_check.native.isVisibleTo(widget) and not widget.volume_allowed
    widget.axes_edit.value = "ZYX"
    assert widget.volume_check.native.isVisibleTo(widget) and widget.volume_allowed
    widget.volume_check.value = True
    widget.run()
    _wait(qtbot, widget)
    cells3d = viewer.layers["stack cells (3-D)"]
    assert cells3d.ndim == 3
    assert widget.results.table.rowCount() == 9  # the per-plane table stays
    assert "in the volume (3-D" in widget.results.detail_label.text()
    rows = list(csv.DictReader(widget.export_csv(tmp_path / "v.csv").open()))
    assert [r["kind"] for r in rows] == ["plane"] * 9 + ["volume"]
    assert int(rows[-1]["count"]) == len(cells3d.data)

    seg = SegmentWidget(viewer)
    seg.model_combo.value = tiny_seg
    seg.axes_edit.value = "ZYX"
    seg.volume_check.value = True
    seg.run()
    _wait(qtbot, seg)
    labels3d = viewer.layers["stack labels (3-D)"]
    assert labels3d.data.shape == (9, 48, 48)
    rows = list(csv.DictReader(seg.export_csv(tmp_path / "s.csv").open()))
    n = len(np.unique(labels3d.data[labels3d.data > 0]))
    assert rows[-1]["kind"] == "volume" and int(rows[-1]["count"]) == n


def test_run_params_pass_level_and_volume():
    kwargs = RunParams("m", axes="ZYX", level=1, volume=True).engine_kwargs()
    assert kwargs["level"] == 1 and kwargs["volume"] is True
    assert "level" not in RunParams("m").engine_kwargs()


def test_batch_flatten_background_reaches_the_engine(tiny_count, tmp_path, monkeypatch):
    import tifffile

    from napari_nalu_count._widgets.batch_widget import batch_job, check_batch
    from napari_nalu_count.infer import background, count

    calls = []
    real = background.flatten_background

    def spy(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(background, "flatten_background", spy)

    folder = _folder(tmp_path, n=1)
    (folder / "broken.tif").unlink()
    out = {}
    default = check_batch(str(folder), "count", tiny_count, str(tmp_path / "d.csv"))
    assert default.background == "auto" and "engine_options" not in default.batch_kwargs()
    for flag in (False, True):
        mode = "on" if flag else "off"
        params = check_batch(
            str(folder), "count", tiny_count, str(tmp_path / f"t{flag}.csv"), background=mode
        )
        assert params.background == mode
        assert params.batch_kwargs()["engine_options"] == {"background": flag}
        gen = batch_job(params, CancelToken())
        try:
            while True:
                next(gen)
        except StopIteration:
            pass
        out[flag] = float(next(csv.DictReader((tmp_path / f"t{flag}.csv").open()))["count"])
        assert bool(calls) is flag  # the engine flattened the input only when asked
        calls.clear()
    image = tifffile.imread(folder / "img0.tif")
    assert out[True] == pytest.approx(count(image, tiny_count, background=True).count, abs=0.01)
    assert out[False] == pytest.approx(count(image, tiny_count, background=False).count, abs=0.01)
