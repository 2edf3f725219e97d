"""TPE search over FRE's B, X and the learning rate, and the train / tune commands."""

from __future__ import annotations

import json

import pytest

from napari_nalu_count.cli import main
from napari_nalu_count.data.synthetic import synthetic_dataset
from napari_nalu_count.models import load_model
from napari_nalu_count.train import TrainConfig
from napari_nalu_count.train.tune import tune


def test_tune_two_trials_of_one_tiny_epoch():
    tr = synthetic_dataset(2, (10, 20), shape=(48, 48), diameter=8.0, seed=0)
    va = synthetic_dataset(1, (10, 20), shape=(48, 48), diameter=8.0, seed=1)
    events = []
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32)
    res = tune(
        {"architecture": "unet_count", "widths": [4, 8]},
        tr,
        va,
        n_trials=2,
        cfg=cfg,
        x_range=(1.0, 10.0),
        callback=events.append,
    )
    assert len(res.trials) == 2 and res.monitor == "mae" and res.direction == "minimize"
    assert set(res.best_params) == {"B", "X", "lr"}
    assert 0 <= res.best_params["B"] <= 8 and 1.0 <= res.best_params["X"] <= 10.0
    assert res.best_value == min(t["value"] for t in res.trials)
    assert [e.number for e in events if e.kind == "trial"] == [0, 1]
    steps = [e for e in events if e.kind == "progress"]  # every trial's steps, over all trials
    assert [(e.done, e.total) for e in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cli_train_on_synthetic(capsys):
    rc = main(
        [
            "train",
            "--task",
            "count",
            "--data",
            "synthetic:2",
            "--widths",
            "4,8",
            "--unit",
            "nac",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--patch",
            "32",
            "--batch",
            "2",
            "--fre-b",
            "2",
            "--fre-x",
            "3",
            "--name",
            "cli-count",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "mae" in out and "saved cli-count" in out
    card = load_model("cli-count").card
    assert card["config"]["fre"]["B"] == 2 and card["metrics"]["split"].startswith("synthetic")
    assert card["training"]["settings"]["steps_per_epoch"] == 2


def test_cli_tune_json(tmp_path, capsys):
    out = tmp_path / "tune.json"
    rc = main(
        [
            "tune",
            "--data",
            "synthetic:1",
            "--widths",
            "4,8",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--steps",
            "1",
            "--patch",
            "32",
            "--batch",
            "2",
            "--x-max",
            "10",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "best" in text and "trial" in text
    payload = json.loads(out.read_text())
    assert len(payload["trials"]) == 2 and set(payload["best_params"]) == {"B", "X", "lr"}


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "nowhere/at/all"],
        ["train", "--data", "synthetic", "--widths", "a,b"],
        ["train", "--data", "synthetic", "--task", "segment", "--arch", "unet_count"],
        ["train", "--data", "synthetic", "--fre-b", "999", "--widths", "4,8"],
        ["tune", "--data", "synthetic", "--trials", "0"],
    ],
)
def test_cli_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_tune_from_a_model_trains_at_its_density_sigma(tmp_path, monkeypatch):
    import importlib

    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    card = make_card(
        "sig-tune", "count", net.config, metrics={"split": "none"},
        training={"settings": {"sigma": 1.5}},
    )  # fmt: skip
    start = load_model(save_model(net, card, tmp_path / "sig-tune"))
    tune_mod = importlib.import_module("napari_nalu_count.train.tune")
    seen = []
    real = tune_mod.train_events

    def spy(*args, **kw):  # the sigma each trial really trained at
        result = yield from real(*args, **kw)
        seen.append(result.train_config.sigma)
        return result

    monkeypatch.setattr(tune_mod, "train_events", spy)
    tr = synthetic_dataset(2, (10, 20), shape=(48, 48), diameter=8.0, seed=0)
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=32)
    tune(start, tr, tr, n_trials=1, cfg=cfg, x_range=(1.0, 10.0))
    assert seen == [1.5] and cfg.sigma is None  # the caller's config is left alone
    seen.clear()
    tune(start, tr, tr, n_trials=1, cfg=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2,
                                                     patch_size=32, sigma=4.0))  # fmt: skip
    assert seen == [4.0]
