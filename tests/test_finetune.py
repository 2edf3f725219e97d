"""Fine-tuning on one small annotated image produces a loadable user model with a full card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.models import load_model, make_card, save_model, user_model_dir
from napari_nalu_count.nn.registry import build_model
from napari_nalu_count.train import TrainConfig, fine_tune
from napari_nalu_count.train.finetune import split_holdout


@pytest.fixture
def start_model(tmp_path):
    """A tiny counting model without FRE, saved as a file (stands in for a bundled one)."""
    torch.manual_seed(0)
    config = {"architecture": "unet_count", "widths": [4, 8], "unit": "nac"}
    net = build_model(config)
    card = make_card("tiny-start", "count", net.config, diameter=9.0, metrics={"split": "none"})
    return save_model(net, card, tmp_path / "start" / "tiny-start")


def _cfg(**kw):
    return TrainConfig(
        **{"epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "patch_size": 32, "lr": 3e-3, **kw}
    )


def test_fine_tune_one_image_with_dots(start_model):
    image = synthetic_cells((64, 96), n_cells=30, diameter=9.0, seed=5)
    dots_only = image.__class__(image=image.image, dots=image.dots, name="user")
    events = []
    res = fine_tune(start_model, dots_only, name="my-counter", cfg=_cfg(), callback=events.append)
    assert not res.cancelled and res.path is not None
    assert res.path.parent == user_model_dir()
    assert res.fre is not None and res.fre["B"] == 2  # FRE added: a quarter of 8 channels
    assert {"mae", "mre"} <= set(res.metrics_before) and {"mae"} <= set(res.metrics_after)
    loaded = load_model("my-counter")
    card = loaded.card
    assert card["metrics"]["before"]["mae"] == pytest.approx(res.metrics_before["mae"])
    assert card["metrics"]["after"]["mae"] == pytest.approx(res.metrics_after["mae"])
    assert "strip" in card["metrics"]["split"]
    data = card["training"]["data"]
    assert data["n_images"] == 1 and data["n_dots"] == 30 and data["shapes"] == [[64, 96]]
    assert card["training"]["start_model"] == "tiny-start"
    assert card["training"]["settings"]["epochs"] == 2
    # the start model measured on every annotated cell (held-out strip and training part)
    assert card["metrics"]["start_on_annotated"]["n_cells"] == 30
    # no labels, no diameter given: estimated from the image (cells of 9 px), on the model grid
    assert card["diameter"] == pytest.approx(9.0, rel=0.3)
    assert "input_scale" not in card and not card["training"]["cancelled"]
    kinds = [e.kind for e in events]
    # measure the start model, train (the loop's events end with "done"), measure the new one
    assert kinds[0] == "stage" and events[0].name == "measure"
    assert [k for k in kinds if k in ("step", "epoch", "done")][-1] == "done"
    assert [e.name for e in events if e.kind == "stage"] == ["measure", "train", "validate"]
    # the saved weights are the returned best weights
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), res.net(x), atol=1e-5)
    # worse than the start model on the held-out part: said by the result, its notes and card
    worse = res.metrics_after["mae"] > res.metrics_before["mae"]
    assert card["metrics"]["worse_than_start"] is worse
    assert (res.regression is not None) is worse
    if worse:
        assert res.notes[0] == res.regression and res.regression in card["training"]["notes"]


def test_held_out_regression_says_when_fine_tuning_made_it_worse():
    from napari_nalu_count.train.finetune import held_out_regression

    note = held_out_regression(
        "count", {"mae": 21.76}, {"mae": 140.72, "n_cells": 160}, "nuclei-count"
    )
    assert note is not None
    assert "worse than nuclei-count" in note and "160 cells" in note
    assert "mae 21.8 -> 141" in note and "Keep using nuclei-count" in note
    assert held_out_regression("count", {"mae": 5.0}, {"mae": 0.4}, "s") is None
    assert held_out_regression("count", {"mae": 5.0}, {"mae": 5.0}, "s") is None  # equal: not worse
    # segmentation: F1, higher is better
    seg = held_out_regression("segment", {"f1": 0.9}, {"f1": 0.8, "n_cells": 12}, "nuclei-seg")
    assert seg is not None and "12 objects" in seg and "f1 0.9 -> 0.8" in seg
    assert held_out_regression("segment", {"f1": 0.8}, {"f1": 0.9}, "s") is None
    # nothing to compare: no note
    assert held_out_regression("count", {}, {"mae": 1.0}, "s") is None
    assert held_out_regression("count", {"mae": float("nan")}, {"mae": 1.0}, "s") is None
    assert held_out_regression("count", {"mae": True}, {"mae": 2.0}, "s") is None


def test_fine_tune_cancelled_saves_nothing(start_model):
    token = CancelToken()
    token.cancel()
    s = synthetic_cells((64, 64), n_cells=20, diameter=9.0, seed=1)
    res = fine_tune(start_model, [s], name="never-saved", cfg=_cfg(), cancel=token)
    assert res.cancelled and res.path is None
    assert any("no model was saved" in n for n in res.notes)
    assert not user_model_dir().exists() or not any(user_model_dir().iterdir())


def test_fine_tune_cancelled_after_an_epoch_keeps_the_best(start_model):
    token = CancelToken()

    def stop_after_first_epoch(ev):
        if ev["kind"] == "epoch":
            token.cancel()

    s = synthetic_cells((64, 96), n_cells=30, diameter=9.0, seed=5)
    res = fine_tune(
        start_model,
        [s],
        name="stopped-early",
        cfg=_cfg(epochs=5),
        cancel=token,
        callback=stop_after_first_epoch,
    )
    assert res.cancelled and res.path is not None and res.path.exists()
    assert len(res.history) == 1
    card = load_model("stopped-early").card
    assert card["training"]["cancelled"] is True and card["training"]["epochs"] == 1
    assert card["training"]["best_epoch"] == 1
    assert any("saved the best so far" in n for n in card["training"]["notes"])


def test_fine_tune_resamples_by_start_input_scale_and_diameter(tmp_path):
    """A start model trained at half resolution (input_scale 0.5, diameter 9 on its grid):
    user images of 18-px cells are resampled by 0.5; a given diameter overrides that."""
    torch.manual_seed(0)
    config = {"architecture": "unet_count", "widths": [4, 8], "unit": "nac"}
    net = build_model(config)
    card = make_card(
        "half-start", "count", net.config, diameter=9.0, input_scale=0.5, metrics={"split": "-"}
    )
    start = save_model(net, card, tmp_path / "start" / "half-start")
    s = synthetic_cells((128, 160), n_cells=30, diameter=18.0, seed=5)
    s = s.__class__(image=s.image, dots=s.dots, name="user")
    res = fine_tune(start, [s], name="half-tuned", cfg=_cfg(epochs=1))
    card = load_model("half-tuned").card
    assert card["input_scale"] == 0.5
    assert card["diameter"] == pytest.approx(9.0, rel=0.3)  # estimated 18 px x 0.5
    assert card["training"]["data"]["shapes"] == [[64, 80]]
    assert any("resampled by 0.5" in n for n in res.notes)
    # a given diameter: factor = start diameter / d, recorded as input_scale
    fine_tune(start, [s], name="given-d", cfg=_cfg(epochs=1), diameter=27.0)
    card = load_model("given-d").card
    assert card["input_scale"] == pytest.approx(1 / 3, rel=1e-3)
    assert card["diameter"] == pytest.approx(9.0)


def test_fine_tune_rejects_wrong_task_and_split_of_several_images(start_model):
    s = synthetic_cells((48, 48), n_cells=10, diameter=8.0, seed=2)
    with pytest.raises(InputError):
        fine_tune(start_model, [s], name="x", task="segment")
    with pytest.raises(InputError):
        fine_tune(start_model, [s], name="bad name!")
    samples = [synthetic_cells((48, 48), n_cells=10, diameter=8.0, seed=i) for i in range(4)]
    tr, held, how = split_holdout(samples, 0.25, seed=0)
    assert len(tr) == 3 and len(held) == 1 and "held-out image" in how
    assert np.isfinite(float(np.asarray(held[0].image).mean()))


# ------------------------------------------------------------------------------------------
# tune then fine-tune; validation as the docks run; names are never silently replaced


def test_fine_tune_tunes_from_the_start_model_at_the_users_learning_rate(start_model, monkeypatch):
    """Each B/X trial starts from the start model's weights at the user's learning rate (not
    from random weights at a random rate), and the winner is what fine-tuning trains with."""
    import importlib

    from napari_nalu_count.events import Tuned
    from napari_nalu_count.train import TuneSettings

    tune_module = importlib.import_module("napari_nalu_count.train.tune")
    starts = []
    real = tune_module.train_events

    def spy(model_or_config, *args, **kwargs):
        cfg = args[3]
        starts.append((model_or_config, cfg.lr, dict(cfg.fre)))
        return real(model_or_config, *args, **kwargs)

    monkeypatch.setattr(tune_module, "train_events", spy)
    samples = [synthetic_cells((64, 64), n_cells=15, diameter=9.0, seed=s) for s in range(2)]
    events = []
    res = fine_tune(
        start_model,
        samples,
        name="tuned",
        cfg=_cfg(lr=2e-3),
        tune=TuneSettings(n_trials=2, epochs=1, steps_per_epoch=1),
        callback=events.append,
    )
    assert len(starts) == 2
    for model, lr, fre in starts:
        assert getattr(model, "name", None) == "tiny-start"  # the start model, its weights
        assert lr == 2e-3
        assert set(fre) == {"B", "X", "seed"}
    (tuned,) = [e for e in events if isinstance(e, Tuned)]
    assert res.fre["B"] == tuned.fre["B"] and res.fre["X"] == pytest.approx(tuned.fre["X"])
    tuning = load_model("tuned").card["training"]["tuning"]
    assert len(tuning["trials"]) == 2 and tuning["lr"] == 2e-3
    assert all(t["lr"] == 2e-3 for t in tuning["trials"])
    stages = [e.name for e in events if e.kind == "stage"]
    assert stages == ["measure", "tune", "train", "validate"]


def test_fine_tune_validates_segmentation_as_the_segment_dock_runs(tmp_path, monkeypatch):
    """Before/after of a segmentation fine-tune come from infer.segment (tiled, probabilities,
    count-guided seeds) on the held-out images, not from the loop's argmax pass."""
    from napari_nalu_count import infer

    torch.manual_seed(0)
    net = build_model({"architecture": "se_unet", "widths": [4, 8]})
    card = make_card("tiny-seg", "segment", net.config, diameter=9.0, metrics={"split": "-"})
    start = save_model(net, card, tmp_path / "start" / "tiny-seg")
    calls = []
    real = infer.segment_events

    def spy(image, model, **kwargs):
        calls.append((np.shape(image), getattr(model, "name", model), kwargs))
        return real(image, model, **kwargs)

    monkeypatch.setattr(infer, "segment_events", spy)
    samples = [synthetic_cells((64, 64), n_cells=8, diameter=9.0, seed=s) for s in range(2)]
    res = fine_tune(start, samples, name="seg-ft", cfg=_cfg(epochs=1))
    assert [c[1] for c in calls] == ["tiny-seg", "seg-ft"]  # before, after: same held-out image
    assert all(c[0] == (64, 64) for c in calls)
    for _, _, kwargs in calls:
        assert kwargs["seeds"] == "count"
        assert getattr(kwargs["count_model"], "name", None) == "nuclei-count"
    for metrics in (res.metrics_before, res.metrics_after):
        assert {"f1", "precision", "recall", "miou", "mae"} <= set(metrics)
        assert metrics["n_cells"] == 8 and metrics["n_images"] == 1
    assert "end to end" in res.card["metrics"]["split"]


def test_fine_tune_never_replaces_a_model_unasked(start_model):
    s = synthetic_cells((64, 64), n_cells=20, diameter=9.0, seed=1)
    first = fine_tune(start_model, [s], name="mine", cfg=_cfg(epochs=1))
    before = first.path.read_bytes()
    events = []
    with pytest.raises(InputError, match="exists"):
        fine_tune(start_model, [s], name="mine", cfg=_cfg(epochs=1), callback=events.append)
    assert events == []  # refused before any work
    assert first.path.read_bytes() == before
    with pytest.raises(InputError, match="bundled"):
        fine_tune(start_model, [s], name="nuclei-count", cfg=_cfg(epochs=1))
    again = fine_tune(start_model, [s], name="mine", cfg=_cfg(epochs=1), overwrite=True)
    assert again.path == first.path


def test_fine_tune_keeps_the_start_models_density_sigma_unless_cfg_sets_one(tmp_path):
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8], "unit": "nac"})
    card = make_card(
        "sig-start",
        "count",
        net.config,
        diameter=9.0,
        metrics={"split": "none"},
        training={"settings": {"sigma": 1.5}},
    )
    start = save_model(net, card, tmp_path / "start" / "sig-start")
    image = synthetic_cells((64, 96), n_cells=30, diameter=9.0, seed=5)
    sample = image.__class__(image=image.image, dots=image.dots, name="user")
    kw = dict(diameter=9.0, directory=tmp_path / "out", use_fre=False)
    res = fine_tune(start, sample, name="sig-a", cfg=_cfg(), **kw)
    assert res.card["training"]["settings"]["sigma"] == 1.5
    res = fine_tune(start, sample, name="sig-b", cfg=_cfg(sigma=4.0), **kw)
    assert res.card["training"]["settings"]["sigma"] == 4.0


def test_pooled_metrics_and_the_already_good_note():
    from napari_nalu_count.train.finetune import already_good_note, pooled_count_metrics

    held = {"mae": 2.0, "mean_true": 100.0, "n_images": 1, "n_cells": 100}
    train = {"mae": 6.0, "mean_true": 50.0, "n_images": 3, "n_cells": 150}
    pooled = pooled_count_metrics([held, train, None, {"n_images": 0}])
    assert pooled == {"mae": 5.0, "mre": 20.0 / 250.0, "n_images": 4, "n_cells": 250}
    assert pooled_count_metrics([None]) is None
    assert already_good_note(pooled, "start") is None  # 8 %: worth fine-tuning
    good = pooled_count_metrics([held, {**train, "mae": 1.0}])
    note = already_good_note(good, "nuclei-count")
    assert note is not None and "nuclei-count already counted" in note and "250 cells" in note
    assert "2.0 %" in note  # (2 + 3) / 250
    assert already_good_note({"mre": None}, "s") is None and already_good_note(None, "s") is None


def test_the_already_good_note_comes_next_to_the_before_after(start_model, monkeypatch):
    import importlib

    ft = importlib.import_module("napari_nalu_count.train.finetune")
    seen = []

    def note(on_annotated, name):
        seen.append(on_annotated)
        return "GOOD"

    monkeypatch.setattr(ft, "already_good_note", note)
    image = synthetic_cells((64, 96), n_cells=30, diameter=9.0, seed=5)
    sample = image.__class__(image=image.image, dots=image.dots, name="user")
    res = fine_tune(start_model, sample, name="good-note", cfg=_cfg())
    assert seen and seen[0]["n_cells"] == 30
    assert res.notes[1 if res.regression else 0] == "GOOD"
    assert "GOOD" in res.card["training"]["notes"]
