"""Training divergence is a package error: the loop, the CLI, fine_tune and the fine-tune dock.

A too-high learning rate must end in :class:`TrainingDiverged` (one line and exit 2 on the
command line) and never cost the user a model: the last good one is kept, nothing is left
half-written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import NaluCountError, TrainingDiverged
from napari_nalu_count.models import load_model, make_card, save_model, user_model_dir
from napari_nalu_count.nn.registry import build_model
from napari_nalu_count.train import TrainConfig, fine_tune, loop, train


def _start(tmp_path) -> str:
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    card = make_card("div-start", "count", net.config, diameter=9.0)
    return str(save_model(net, card, tmp_path / "start" / "div-start"))


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 3, "steps_per_epoch": 2, "batch_size": 1, "patch_size": 32, "lr": 1e-3}
    return TrainConfig(**{**base, **kw})


def _nan_after(monkeypatch, steps: int) -> None:
    """Make the training loss NaN from step ``steps + 1`` on (a stand-in for a blow-up)."""
    real = loop._loss
    seen = {"n": 0}

    def loss(*args, **kwargs):
        seen["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if seen["n"] > steps else value

    monkeypatch.setattr(loop, "_loss", loss)


def _samples():
    return [synthetic_cells((64, 64), n_cells=15, diameter=9.0, seed=s) for s in range(3)]


def test_train_raises_training_diverged_with_where_and_advice():
    config = {"architecture": "unet_count", "widths": [4, 8]}
    with pytest.raises(TrainingDiverged) as info:
        train(config, _samples()[:1], None, "count", _cfg(lr=1e12))
    exc = info.value
    assert isinstance(exc, NaluCountError) and isinstance(exc, FloatingPointError)
    assert exc.epoch == 1 and exc.step >= 1 and not np.isfinite(exc.loss)
    text = str(exc)
    assert f"epoch {exc.epoch}" in text and f"step {exc.step}" in text
    assert "loss" in text and "try a lower learning rate" in text
    assert exc.best_state is None  # no epoch was validated before it


def test_train_hands_over_the_best_weights_before_the_divergence(monkeypatch):
    _nan_after(monkeypatch, 2)  # epoch 1 (two steps) is fine, epoch 2 diverges
    config = {"architecture": "unet_count", "widths": [4, 8]}
    s = _samples()
    with pytest.raises(TrainingDiverged) as info:
        train(config, s[:2], s[2:], "count", _cfg())
    exc = info.value
    assert (exc.epoch, exc.step, exc.best_epoch) == (2, 3, 1)
    assert exc.best_state is not None and len(exc.history) == 1


def test_cli_train_diverging_exits_2_with_one_line(capsys):
    from napari_nalu_count.cli import main

    args = "--data synthetic:2 --lr 1e12 --epochs 2 --steps 3 --patch 32 --batch 1 --widths 4,8"
    rc = main(["train", *args.split(), "--name", "div-cli", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("nalu-count: error: training diverged at epoch 1, step ")
    assert lines[0].endswith("try a lower learning rate")
    assert not (user_model_dir() / "div-cli.json").exists()


def test_fine_tune_diverging_at_once_keeps_everything_as_it_was(tmp_path):
    start = _start(tmp_path)
    s = _samples()
    first = fine_tune(start, s, name="mine", cfg=_cfg(epochs=1))
    before = {p.name: p.read_bytes() for p in first.path.parent.iterdir()}
    with pytest.raises(TrainingDiverged) as info:
        fine_tune(start, s, name="mine", cfg=_cfg(lr=1e12), overwrite=True)
    assert info.value.saved is None
    assert "no model was saved" in str(info.value) and "'mine'" in str(info.value)
    after = {p.name: p.read_bytes() for p in first.path.parent.iterdir()}
    assert after == before  # the earlier 'mine' untouched, no temporary files left
    assert load_model("mine").card["training"]["epochs"] == 1


def test_fine_tune_diverging_later_saves_the_last_good_epoch(tmp_path, monkeypatch):
    start = _start(tmp_path)
    _nan_after(monkeypatch, 2)
    with pytest.raises(TrainingDiverged) as info:
        fine_tune(start, _samples(), name="kept", cfg=_cfg())
    exc = info.value
    assert exc.saved is not None and exc.saved.name == "kept.json"
    assert "kept the best epoch before it (epoch 1)" in str(exc)
    loaded = load_model("kept")  # a complete, checked model
    card = loaded.card
    assert card["training"]["diverged"] == {"epoch": 2, "step": 3, "loss": "nan"}
    assert card["training"]["best_epoch"] == 1
    assert {p.name for p in exc.saved.parent.iterdir()} == {"kept.json", "kept.safetensors"}
    x = torch.rand(1, 1, 32, 32)
    ref = build_model(card["config"])
    ref.load_state_dict(exc.best_state)
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), ref(x), atol=1e-6)


def test_fine_tune_refuses_bad_arguments(tmp_path):
    from napari_nalu_count.errors import InputError, ModelFileError

    start = _start(tmp_path)
    s = _samples()[:1]
    bad = [
        dict(samples=None),
        dict(samples="some/path.tif"),
        dict(samples=[np.zeros((8, 8))]),
        dict(task="classify"),
        dict(cfg={"epochs": 1}),
        dict(callback=5),
        dict(holdout="a quarter"),
        dict(holdout=1.5),
        dict(diameter="big"),
        dict(diameter=-3.0),
        dict(directory=3),
        dict(name="bad name!"),
    ]
    for kwargs in bad:
        args = {"samples": s, "name": "x", **kwargs}
        samples = args.pop("samples")
        with pytest.raises(InputError):
            fine_tune(start, samples, **args)
    with pytest.raises(ModelFileError):
        fine_tune("no-such-model", s, name="x")
    with pytest.raises(InputError):
        fine_tune(None, s, name="x")


# ------------------------------------------------------------------------------------------
# the dock


def _dock_run(make_napari_viewer, qtbot, monkeypatch, steps_before_nan: int):
    from napari_nalu_count._widgets import _viewer
    from napari_nalu_count._widgets import finetune_widget as fw
    from napari_nalu_count._widgets.count_widget import CountWidget

    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card("dock-start", "count", net.config, diameter=9.0), "dock-start")
    notes: list[str] = []
    monkeypatch.setattr(_viewer, "notify_error", notes.append)
    _nan_after(monkeypatch, steps_before_nan)
    viewer = make_napari_viewer()
    sample = _samples()[0]
    viewer.add_image(sample.image, name="img")
    points = viewer.add_points(sample.dots, name="dots")
    counter = CountWidget(viewer)
    widget = fw.FineTuneWidget(viewer)
    row = widget.pairs.rows[0]
    row.annotation_combo.value = points
    widget.model_combo.value = "dock-start"
    widget.name_edit.value = "dock-ft"
    widget.device_combo.value = "cpu"
    widget.epochs_spin.value = 3
    widget.steps_spin.value = 2
    widget.patch_spin.value = 32
    assert widget.run_button.isEnabled(), widget.hint_label.text()
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    return widget, counter, notes


@pytest.mark.gui
def test_dock_shows_divergence_and_keeps_the_last_good_model(
    make_napari_viewer, qtbot, monkeypatch
):
    widget, counter, notes = _dock_run(make_napari_viewer, qtbot, monkeypatch, 2)
    status = widget.status_label.text()
    assert "diverged at epoch 2" in status and "lower the learning rate" in status
    assert "kept 'dock-ft' from epoch 1" in status
    assert len(notes) == 1 and "training diverged" in notes[0]
    assert "dock-ft" in counter.model_combo.choices  # the kept model is offered
    assert load_model("dock-ft").card["training"]["diverged"]["epoch"] == 2
    # the kept model now has that name: a new run must not replace it unasked
    assert not widget.run_button.isEnabled() and "exists" in widget.hint_label.text()
    widget.replace_check.value = True
    assert widget.run_button.isEnabled()


@pytest.mark.gui
def test_dock_divergence_before_any_epoch_saves_nothing(make_napari_viewer, qtbot, monkeypatch):
    widget, counter, notes = _dock_run(make_napari_viewer, qtbot, monkeypatch, 0)
    status = widget.status_label.text()
    assert "diverged at epoch 1, step 1" in status
    assert "no model saved; 'dock-start' is unchanged" in status
    assert len(notes) == 1
    assert "dock-ft" not in counter.model_combo.choices
    assert not (user_model_dir() / "dock-ft.json").exists()
    assert sorted(p.name for p in user_model_dir().iterdir()) == [
        "dock-start.json",
        "dock-start.safetensors",
    ]
