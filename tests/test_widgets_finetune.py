"""Fine-tune dock: input guards, the plain functions, and a two-step run in a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count._widgets import _common
from napari_nalu_count._widgets.finetune_widget import (
    MIN_DOTS,
    FineTuneParams,
    TrainingLog,
    collect_samples,
    fre_defaults,
    metrics_summary,
    run_finetune,
)
from napari_nalu_count.errors import InputError


def save_tiny(name: str = "tiny-count", task: str = "count") -> str:
    import torch

    from napari_nalu_count import models
    from napari_nalu_count.nn.registry import build_model, default_config

    config = default_config("unet_count" if task == "count" else "se_unet")
    config["widths"] = [4, 8]
    torch.manual_seed(0)
    net = build_model(config)
    models.save_model(net, models.make_card(name, task, config, diameter=10.0), name)
    return name


@pytest.fixture
def no_bundled(monkeypatch, tmp_path):
    """Hide the bundled models so the pickers hold only this test's tiny ones."""
    from napari_nalu_count.models import store

    monkeypatch.setattr(store, "bundled_model_dir", lambda: tmp_path / "no_bundled")


def _sample(shape=(64, 64), n=8, seed=0):
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape=shape, n_cells=n, diameter=10.0, seed=seed)


def _fast_params(**kw) -> FineTuneParams:
    base = dict(
        start_model="tiny-count",
        name="tiny-ft",
        task="count",
        epochs=1,
        steps_per_epoch=2,
        patch_size=32,
        fre={"B": 2, "X": 2.0, "seed": 0},
    )
    base.update(kw)
    return FineTuneParams(**base)


# ----------------------------------------------------------------------------- plain functions
def test_training_log_and_summary():
    log = TrainingLog(task="count", total_steps=4)
    log.add({"kind": "step", "epoch": 1, "step": 2, "loss": 0.5})
    log.add({"kind": "epoch", "epoch": 1, "step": 2, "loss": 0.5, "metrics": {"mae": 3.0}})
    assert log.steps == [2] and log.losses == [0.5] and log.metric == [3.0]
    assert log.fraction == 0.5 and "mae" in log.status
    log.add({"kind": "tune", "number": 0, "n_trials": 4, "value": 1.5})
    assert log.fraction == 0.25 and "1/4" in log.status
    log.add({"kind": "tuned", "fre": {"B": 3, "X": 7.0}})
    assert log.fraction == 0.5 and log.tuned == {"B": 3, "X": 7.0}
    rows = metrics_summary("count", {"mae": 4.0, "rmse": 5.0, "split": "x"}, {"mae": 1.0})
    assert rows == [("mae", 4.0, 1.0)]


def test_fre_defaults_follow_the_model_card():
    assert fre_defaults({"config": {"widths": [4, 8], "fre": {"B": 3, "X": 9.0}}}) == (
        True,
        3,
        9.0,
    )
    enabled, b, x = fre_defaults({"config": {"widths": [16, 32]}})
    assert enabled and b == 8 and x == 2.0


def test_run_finetune_saves_a_loadable_model():
    from napari_nalu_count import models

    save_tiny()
    samples = [_sample(seed=s) for s in range(2)]
    events = []
    result = run_finetune(samples, _fast_params(), progress=events.append)
    assert result.path is not None and not result.cancelled
    assert models.load_model("tiny-ft").task == "count"
    kinds = {e["kind"] for e in events}
    assert {"step", "epoch", "done"} <= kinds
    assert "mae" in result.metrics_after


# ----------------------------------------------------------------------------- guards
@pytest.mark.gui
def test_collect_samples_guards(make_napari_viewer):
    viewer = make_napari_viewer()
    sample = _sample()
    image = viewer.add_image(sample.image, name="img", scale=(2, 2))
    with pytest.raises(InputError, match="annotate"):
        collect_samples([(image, None)])
    empty = viewer.add_points(ndim=2, name="empty")
    with pytest.raises(InputError, match="no dots"):
        collect_samples([(image, empty)])
    few = viewer.add_points(sample.dots[: MIN_DOTS - 1], name="few", scale=(2, 2))
    with pytest.raises(InputError, match=f"at least {MIN_DOTS}"):
        collect_samples([(image, few)])
    outside = viewer.add_points(np.vstack([sample.dots, [[500, 500]]]), scale=(2, 2))
    with pytest.raises(InputError, match="outside"):
        collect_samples([(image, outside)])
    three_d = viewer.add_points(np.c_[np.zeros(8), sample.dots], name="3d")
    with pytest.raises(InputError, match="3-D"):
        collect_samples([(image, three_d)])
    wrong_labels = viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    with pytest.raises(InputError, match="shape"):
        collect_samples([(image, wrong_labels)])
    good = viewer.add_points(sample.dots, name="dots", scale=(2, 2))
    labels = viewer.add_labels(sample.labels, name="masks")
    with pytest.raises(InputError, match="mixes"):
        collect_samples([(image, good), (image, labels)])

    task, samples = collect_samples([(image, good)])
    assert task == "count" and len(samples) == 1
    np.testing.assert_allclose(samples[0].dots, sample.dots)  # same scale: same pixels
    task, samples = collect_samples([(image, labels)])
    assert task == "segment" and samples[0].labels.max() == len(sample.dots)

    # a stack with 3-D dots: one sample per annotated frame
    stack = viewer.add_image(np.stack([sample.image] * 3), name="stack")
    dots3 = viewer.add_points(np.c_[np.repeat([0, 2], 4), sample.dots], name="dots3")
    task, samples = collect_samples([(stack, dots3)])
    assert [len(s.dots) for s in samples] == [4, 4]


# ----------------------------------------------------------------------------- widget
@pytest.mark.gui
def test_finetune_widget_end_to_end(make_napari_viewer, qtbot, no_bundled):
    from napari_nalu_count import models
    from napari_nalu_count._widgets.count_widget import CountWidget
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget

    save_tiny()
    viewer = make_napari_viewer()
    sample = _sample(n=10)
    image = viewer.add_image(sample.image, name="img")
    count = CountWidget(viewer)
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    row = widget.rows[0]
    assert row.image_combo.currentData() is image
    assert not widget.run_button.isEnabled() and "annotate" in widget.hint_label.text()

    points = viewer.add_points(sample.dots[:3], name="dots")
    row.annotation_combo.setCurrentIndex(row.annotation_combo.findData(points))
    assert "at least" in widget.hint_label.text()
    points.data = sample.dots  # the hint follows the annotation as it grows
    assert widget.hint_label.text() == "" and widget.run_button.isEnabled()

    assert widget.model_combo.currentData() == "tiny-count"
    assert widget.name_edit.text() == "tiny-count-finetuned"
    assert widget.fre_check.isChecked() and widget.fre_b_spin.value() == 2
    widget.name_edit.setText("tiny-count")
    assert not widget.run_button.isEnabled()
    widget.name_edit.setText("bad name!")
    assert not widget.run_button.isEnabled()
    widget.name_edit.setText("mine")
    widget.epochs_spin.setValue(2)
    widget.steps_spin.setValue(2)
    widget.patch_spin.setValue(32)
    widget.diameter_edit.setText("0")
    assert "diameter" in widget.hint_label.text()
    widget.diameter_edit.setText("9.5")

    widget.run()
    assert widget.running and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.result is not None, widget.status_label.text()
    assert "saved 'mine'" in widget.status_label.text()
    assert "before" in widget.result_label.text()
    assert widget.plot.loss_ax.lines  # loss curve drawn
    assert models.load_model("mine").task == "count"
    card = models.load_model("mine").card
    # the user's cells are 9.5 px: images are resampled onto the start model's grid (10 px), so
    # the card keeps the grid diameter and records the resampling factor as input_scale
    assert card["diameter"] == 10.0
    assert abs(card["input_scale"] - 10.0 / 9.5) < 1e-5  # stored to 6 decimals
    assert count.model_combo.findData("mine") >= 0  # offered right away

    # Stop right away: the run ends cleanly and the dock is usable again
    widget.name_edit.setText("mine2")
    widget.epochs_spin.setValue(50)
    widget.run()
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.run_button.isEnabled()
    assert "stop" in widget.status_label.text() or "saved" in widget.status_label.text()


@pytest.mark.gui
def test_finetune_widget_segmentation_switches_models(make_napari_viewer, monkeypatch, no_bundled):
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget

    save_tiny("tiny-count")
    save_tiny("tiny-seg", task="segment")
    viewer = make_napari_viewer()
    sample = _sample()
    viewer.add_image(sample.image, name="img")
    widget = FineTuneWidget(viewer)
    assert widget.model_combo.findData("tiny-seg") < 0
    viewer.add_labels(sample.labels, name="masks")  # preselected: same shape as the image
    assert widget.rows[0].annotation_combo.currentText() == "masks (masks)"
    assert widget.model_combo.currentData() == "tiny-seg"
    assert widget.run_button.isEnabled()

    errors = []
    monkeypatch.setattr("napari_nalu_count._widgets.finetune_widget.notify_error", errors.append)
    widget.add_row()
    assert len(widget.rows) == 2
    widget.remove_row(widget.rows[1])
    assert len(widget.rows) == 1
    _common.notify_model_added("x")  # refresh keeps the choice
    assert widget.model_combo.currentData() == "tiny-seg"


def test_run_finetune_with_tuning_reports_trials():
    save_tiny()
    samples = [_sample(seed=s) for s in range(2)]
    events = []
    params = _fast_params(tune=True, tune_trials=2, tune_epochs=1, name="tiny-tuned")
    result = run_finetune(samples, params, progress=events.append)
    trials = [e for e in events if e["kind"] == "tune" and e.get("number") is not None]
    assert len(trials) == 2
    tuned = [e for e in events if e["kind"] == "tuned"]
    assert len(tuned) == 1 and result.fre["B"] == tuned[0]["fre"]["B"]
