"""The typed progress protocol: frozen events, engine generators and the functions that drive
them (one thread, no polling: what the docks' thread workers run)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_nalu_count import infer, train
from napari_nalu_count.data.synthetic import synthetic_cells, synthetic_dataset
from napari_nalu_count.events import (
    EpochEnd,
    Progress,
    TrainDone,
    TrainStep,
    TuneTrial,
    drive,
)
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.nn.registry import build_model


@pytest.fixture
def counter() -> str:
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card("ev-count", "count", net.config, diameter=10.0), "ev-count")
    return "ev-count"


def test_events_are_frozen_and_read_like_the_old_dicts():
    step = TrainStep(epoch=1, step=3, loss=0.5, lr=1e-3, total_steps=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.loss = 1.0  # type: ignore[misc]
    assert step["kind"] == "step" and step["loss"] == 0.5 and step.get("nope", 7) == 7
    assert "epoch" in step and "nope" not in step
    assert step.to_dict() == {
        "kind": "step",
        "epoch": 1,
        "step": 3,
        "loss": 0.5,
        "lr": 1e-3,
        "total_steps": 10,
        "metrics": None,
    }
    with pytest.raises(KeyError):
        step["nope"]
    assert Progress(3, 4).fraction == 0.75 and Progress(3, 0).fraction == 0.0
    assert TuneTrial(0, 2, {"B": 1}, 0.5).kind == "trial"


def test_count_events_yield_progress_and_return_the_result(counter):
    image = synthetic_cells((64, 64), n_cells=8, diameter=10.0, seed=1).image
    steps = infer.count_events(image, counter, device="cpu", tile_size=32)
    events = []
    while True:
        try:
            events.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert events and all(isinstance(e, Progress) for e in events)
    done = [e.done for e in events]
    assert done == sorted(done) and events[-1].done == events[-1].total > 1
    assert isinstance(result, infer.CountResult)
    # the plain function drives the same generator: same result, the old callback signature
    calls = []
    same = infer.count(
        image, counter, device="cpu", tile_size=32, progress=lambda *a: calls.append(a)
    )
    np.testing.assert_allclose(same.density, result.density)
    assert [c[:2] for c in calls] == [(e.done, e.total) for e in events]


def test_segment_events_report_the_seed_counter_too(counter):
    torch.manual_seed(0)
    net = build_model({"architecture": "se_unet", "widths": [4, 8]})
    save_model(net, make_card("ev-seg", "segment", net.config, diameter=10.0), "ev-seg")
    image = synthetic_cells((48, 48), n_cells=5, diameter=10.0, seed=2).image
    events = []
    result = drive(
        infer.segment_events(image, "ev-seg", device="cpu", count_model=counter), events.append
    )
    assert isinstance(result, infer.SegmentResult)
    assert any("finding the cells" in e.message for e in events)


def test_train_events_are_typed():
    tr = synthetic_dataset(2, (5, 10), shape=(48, 48), diameter=8.0, seed=0)
    cfg = train.TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, patch_size=32)
    events = []
    result = drive(
        train.train_events({"architecture": "unet_count", "widths": [4, 8]}, tr, tr, cfg=cfg),
        events.append,
    )
    assert isinstance(result, train.TrainResult)
    assert [type(e) for e in events] == [TrainStep, TrainStep, EpochEnd] * 2 + [TrainDone]
    assert [e.step for e in events if isinstance(e, TrainStep)] == [1, 2, 3, 4]
    assert all(e.total_steps == 4 for e in events if isinstance(e, TrainStep))
    assert "mae" in events[2].metrics and events[-1].best_epoch in (1, 2)
