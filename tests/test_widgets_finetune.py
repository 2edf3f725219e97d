"""Fine-tune dock: input guards, the plain functions, and runs in a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count._widgets import _models, _viewer
from napari_nalu_count._widgets.finetune_log import TrainingLog, metrics_summary, summary_html
from napari_nalu_count._widgets.finetune_samples import MIN_DOTS, collect_samples
from napari_nalu_count._widgets.finetune_widget import (
    FineTuneParams,
    fre_defaults,
    run_finetune,
)
from napari_nalu_count.errors import InputError
from napari_nalu_count.events import (
    EpochEnd,
    Progress,
    Stage,
    TrainDone,
    TrainStep,
    Tuned,
    TuneTrial,
)


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
        device="cpu",
    )
    base.update(kw)
    return FineTuneParams(**base)


# ----------------------------------------------------------------------------- plain functions
def test_training_log_and_summary():
    log = TrainingLog(task="count")
    log.add(Stage("train", "fine-tuning"))
    log.add(TrainStep(epoch=1, step=2, loss=0.5, lr=1e-3, total_steps=4))
    log.add(EpochEnd(epoch=1, step=2, loss=0.5, lr=1e-3, metrics={"mae": 3.0}))
    assert log.steps == [2] and log.losses == [0.5] and log.metric == [3.0]
    assert log.fraction == 0.5 and "mae" in log.status and log.stage == "train"
    log.add(TuneTrial(number=0, n_trials=4, params={"B": 1}, value=1.5))
    assert log.fraction == 0.25 and "1/4" in log.status
    log.add(Tuned({"B": 3, "X": 7.0, "seed": 0}))
    assert log.tuned == {"B": 3, "X": 7.0, "seed": 0}
    log.add(Progress(1, 2, "measuring: image 2/2"))
    assert log.fraction == 0.5 and log.status == "measuring: image 2/2"
    log.add(TrainDone(epoch=1, step=4, loss=0.4))
    assert log.fraction == 1.0
    rows = metrics_summary("count", {"mae": 4.0, "rmse": 5.0, "split": "x"}, {"mae": 1.0})
    assert rows == [("mae", 4.0, 1.0)]
    html = summary_html("count", {"mae": 4.0}, {"mae": 1.0, "n_cells": 12})
    assert "12 cells" in html and "before" in html


def test_fre_defaults_follow_the_model_card():
    assert fre_defaults({"config": {"widths": [4, 8], "fre": {"B": 3, "X": 9.0}}}) == (
        True,
        3,
        9.0,
    )
    enabled, b, x = fre_defaults({"config": {"widths": [16, 32]}})
    assert enabled and b == 8 and x == 2.0


def test_dock_schedule_is_fine_tunes_own_with_the_start_models_sigma():
    """The dock trains with ``fine_tune``'s default schedule (early stopping, no warm-up, the
    density sigma the start model was trained with) and only its own fields on top: on Aitslab
    that schedule beat the dock's former one in every paired draw (docs/models.md, round 14)."""
    from napari_nalu_count.train.finetune import default_config

    card = {"training": {"settings": {"sigma": 2.0}}}
    cfg = _fast_params(lr=1e-3).train_config(card)
    ref = default_config(card)
    assert cfg.sigma == 2.0 and ref.sigma == 2.0
    assert (cfg.patience, cfg.warmup_steps) == (ref.patience, ref.warmup_steps) == (8, 0)
    assert (cfg.epochs, cfg.steps_per_epoch, cfg.lr, cfg.patch_size) == (1, 2, 1e-3, 32)
    assert cfg.fre == {"B": 2, "X": 2.0, "seed": 0} and cfg.device == "cpu"
    # a card without training settings: TrainConfig's own sigma
    assert _fast_params().train_config(None).sigma == default_config({}).sigma
    # the dock's form starts at fine_tune's epochs and steps
    assert (FineTuneParams("m", "n", "count").epochs, ref.epochs) == (20, 20)
    assert FineTuneParams("m", "n", "count").steps_per_epoch == ref.steps_per_epoch


def test_run_finetune_saves_a_loadable_model():
    from napari_nalu_count import models

    save_tiny()
    samples = [_sample(seed=s) for s in range(2)]
    events = []
    result = run_finetune(samples, _fast_params(), progress=events.append)
    assert result.path is not None and not result.cancelled
    assert models.load_model("tiny-ft").task == "count"
    kinds = {e.kind for e in events}
    assert {"stage", "progress", "step", "epoch", "done"} <= kinds
    assert "mae" in result.metrics_after


def test_run_finetune_with_tuning_reports_trials():
    save_tiny()
    samples = [_sample(seed=s) for s in range(2)]
    events = []
    params = _fast_params(tune=True, tune_trials=2, tune_epochs=1, name="tiny-tuned")
    result = run_finetune(samples, params, progress=events.append)
    trials = [e for e in events if isinstance(e, TuneTrial)]
    assert [t.number for t in trials] == [0, 1]
    (tuned,) = [e for e in events if isinstance(e, Tuned)]
    assert result.fre["B"] == tuned.fre["B"]


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
def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


@pytest.mark.gui
def test_finetune_widget_end_to_end(make_napari_viewer, qtbot, no_bundled):
    """A run from the dock, then a second run: the auto-filled name moves on, so the first
    model is never replaced without the user saying so."""
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
    row = widget.pairs.rows[0]
    assert row.image_combo.value is image
    assert not widget.run_button.isEnabled() and "annotate" in widget.hint_label.text()

    points = viewer.add_points(sample.dots[:3], name="dots")
    row.annotation_combo.value = points
    assert "at least" in widget.hint_label.text()
    points.data = sample.dots  # the hint follows the annotation as it grows
    assert widget.hint_label.text() == "" and widget.run_button.isEnabled()

    assert widget.model_combo.value == "tiny-count"
    assert widget.name_edit.value == "tiny-count-finetuned"
    assert widget.fre_check.value and widget.fre_b_spin.value == 2
    widget.name_edit.value = "tiny-count"
    assert not widget.run_button.isEnabled()
    widget.name_edit.value = "bad name!"
    assert not widget.run_button.isEnabled()
    widget.name_edit.value = "tiny-count-finetuned"
    widget.device_combo.value = "cpu"
    widget.epochs_spin.value = 2
    widget.steps_spin.value = 2
    widget.patch_spin.value = 32
    widget.diameter_edit.value = "0"
    assert "diameter" in widget.hint_label.text()
    widget.diameter_edit.value = "9.5"
    assert widget.params().device == "cpu"
    assert widget.params().holdout == 0.25  # fine_tune's own default
    widget.holdout_spin.value = 0.4
    assert widget.params().holdout == pytest.approx(0.4)

    widget.run()
    assert widget.running and widget.cancel_button.isEnabled()
    _wait(qtbot, widget)
    assert widget.result is not None, widget.status_label.text()
    assert "saved 'tiny-count-finetuned'" in widget.status_label.text()
    assert "before" in widget.result_label.text()
    # a model worse than its start on the held-out part is saved, and the dock says so
    regression = widget.result.regression
    assert ("worse than 'tiny-count'" in widget.status_label.text()) is (regression is not None)
    if regression is not None:
        assert f"<b>{regression}</b>" in widget.result_label.text()
    assert widget.plot.loss_ax.lines  # loss curve drawn
    card = models.load_model("tiny-count-finetuned").card
    # the user's cells are 9.5 px: images are resampled onto the start model's grid (10 px), so
    # the card keeps the grid diameter and records the resampling factor as input_scale
    assert card["diameter"] == 10.0
    assert abs(card["input_scale"] - 10.0 / 9.5) < 1e-5  # stored to 6 decimals
    assert "tiny-count-finetuned" in count.model_combo.choices  # offered right away
    first = (models.user_model_dir() / "tiny-count-finetuned.json").read_bytes()

    # the auto-filled name moved on; typing the taken name asks before replacing
    assert widget.name_edit.value == "tiny-count-finetuned-2"
    widget.name_edit.value = "tiny-count-finetuned"
    assert not widget.run_button.isEnabled() and "exists" in widget.hint_label.text()
    widget.replace_check.value = True
    assert widget.run_button.isEnabled() and widget.params().overwrite

    # Stop right away: the run ends cleanly, the dock is usable again, nothing replaced
    widget.name_edit.value = "tiny-count-finetuned-2"
    widget.epochs_spin.value = 50
    widget.run()
    widget.stop()
    _wait(qtbot, widget)
    assert widget.run_button.isEnabled()
    assert "stop" in widget.status_label.text() or "saved" in widget.status_label.text()
    assert (models.user_model_dir() / "tiny-count-finetuned.json").read_bytes() == first


@pytest.mark.gui
def test_finetune_dock_warns_when_the_new_model_is_worse(
    make_napari_viewer, monkeypatch, no_bundled
):
    from napari_nalu_count._widgets._jobs import Outcome
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget
    from napari_nalu_count.train.finetune import FineTuneResult, held_out_regression

    save_tiny()
    widget = FineTuneWidget(make_napari_viewer())
    told = []
    monkeypatch.setattr(_viewer, "notify_warning", lambda m: told.append(("warning", m)))
    monkeypatch.setattr(_viewer, "notify_info", lambda m: told.append(("info", m)))
    before, after = {"mae": 21.76, "n_cells": 160}, {"mae": 140.72, "n_cells": 160}
    note = held_out_regression("count", before, after, "tiny-count")
    result = FineTuneResult(
        None, "tiny-ft", before, after, [], False, notes=[note, "other"], regression=note
    )
    result.path = "unused"  # a saved model: the dock shows its before/after
    widget._finished(_fast_params(), Outcome(value=result))
    assert (
        widget.status_label.text()
        == "saved 'tiny-ft': worse than 'tiny-count' on the held-out part"
    )
    assert (
        f"<b>{note}</b>" in widget.result_label.text()
        and "<i>other</i>" in widget.result_label.text()
    )
    assert told == [("warning", f"new model 'tiny-ft' is {note}")]

    told.clear()
    better = {"mae": 3.0, "n_cells": 160}
    ok = FineTuneResult(None, "tiny-ft-2", before, better, [], False, notes=[], regression=None)
    ok.path = "unused"
    widget._finished(_fast_params(name="tiny-ft-2"), Outcome(value=ok))
    assert widget.status_label.text() == "saved 'tiny-ft-2'"
    assert [kind for kind, _ in told] == ["info"]


@pytest.mark.gui
def test_finetune_settings_survive_refreshes_and_watchers_are_let_go(
    make_napari_viewer, qtbot, monkeypatch, no_bundled
):
    """A model refresh (a new model saved elsewhere) keeps the FRE box, B, X and the name;
    annotation watchers follow the picks and are disconnected when the dock closes; the
    segmentation models come with Labels; the device picker reaches the training config."""
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget

    save_tiny("tiny-count")
    save_tiny("tiny-seg", task="segment")
    viewer = make_napari_viewer()
    sample = _sample()
    viewer.add_image(sample.image, name="img")
    # a machine with a GPU, as far as the dock can tell
    monkeypatch.setattr(_models, "device_names", lambda: ["auto", "cpu", "cuda"])
    widget = FineTuneWidget(viewer)
    assert "tiny-seg" not in widget.model_combo.choices
    assert widget.device_combo.choices == ("auto", "cpu", "cuda")

    widget.fre_b_spin.value = 3
    widget.fre_x_spin.value = 7.5
    widget.name_edit.value = "mine"
    widget.fre_check.value = False
    save_tiny("another")
    _models.notify_model_added("another")
    assert widget.model_combo.value == "tiny-count"
    assert (widget.fre_b_spin.value, widget.fre_x_spin.value) == (3, 7.5)
    assert widget.fre_check.value is False and widget.name_edit.value == "mine"
    widget.model_combo.changed.emit("tiny-count")  # a picker re-emitting its unchanged value
    assert (widget.fre_b_spin.value, widget.fre_x_spin.value) == (3, 7.5)
    assert widget.fre_check.value is False and widget.name_edit.value == "mine"
    widget.fre_check.value = True

    masks = viewer.add_labels(sample.labels, name="masks")  # preselected: same shape
    row = widget.pairs.rows[0]
    assert row.annotation_combo.value is masks
    assert widget.model_combo.value == "tiny-seg"
    assert widget.run_button.isEnabled(), widget.hint_label.text()
    assert widget.pairs.watch.layers == [masks]
    n_paint = len(masks.events.paint.callbacks)

    dots = viewer.add_points(sample.dots, name="dots")
    row.annotation_combo.value = dots
    assert widget.pairs.watch.layers == [dots]  # the labels layer is let go
    assert len(masks.events.paint.callbacks) == n_paint - 1
    assert widget.model_combo.value == "tiny-count"

    # the device picked is the device trained on (it used to be the CPU whatever the choice)
    from napari_nalu_count.infer import device as device_module

    asked = []
    monkeypatch.setattr(device_module, "resolve_device", lambda d: asked.append(d) or f"dev-{d}")
    for choice in ("cuda", "cpu", "auto"):
        widget.device_combo.value = choice
        params = widget.params()
        assert params.device == choice
        assert params.train_config().device == f"dev-{choice}"
    assert asked == ["cuda", "cpu", "auto"]

    errors = []
    monkeypatch.setattr(_viewer, "notify_error", errors.append)
    widget.pairs.add_row()
    assert len(widget.pairs.rows) == 2
    widget.pairs.remove_row(widget.pairs.rows[1])
    assert len(widget.pairs.rows) == 1
    n_data = len(dots.events.data.callbacks)
    widget.deleteLater()
    qtbot.wait(50)
    assert len(dots.events.data.callbacks) == n_data - 1


@pytest.mark.gui
def test_loss_plot_follows_the_theme(make_napari_viewer):
    from napari_nalu_count._widgets.finetune_widget import FineTuneWidget
    from napari_nalu_count._widgets.loss_plot import _luminance

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    widget = FineTuneWidget(viewer)
    plot = widget.plot

    def colors():
        face = plot.figure.get_facecolor()
        text = plot.loss_ax.xaxis.label.get_color()
        from matplotlib.colors import to_hex

        return _luminance(to_hex(face)), _luminance(to_hex(text))

    face, text = colors()
    assert face < 0.3 < 0.7 < text  # dark background, light text
    viewer.theme = "light"
    face, text = colors()
    assert face > 0.7 > 0.3 > text  # light background, dark text
    assert _luminance(plot.colors["metric"]) < 0.5 and _luminance(plot.colors["loss"]) < 0.5
