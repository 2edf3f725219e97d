"""count_events(grid_scale=k) runs the counter k times finer once the size is known; segment's
count-guided seeds use it (engine.OPTIONS["seed_grid"])."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data.readers import read_image
from napari_nalu_count.errors import InputError
from napari_nalu_count.events import drive
from napari_nalu_count.infer import count, segment
from napari_nalu_count.infer import engine as eng

SAMPLE = "sample_data/bbbc039_crop256.tif"


@pytest.fixture(scope="module")
def image():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return read_image(root / SAMPLE)


def test_finer_grid_keeps_the_size_and_the_count(image):
    plain = count(image, axes="YX", diameter=28.0, device="cpu")
    fine = drive(eng.count_events(image, axes="YX", diameter=28.0, device="cpu", grid_scale=1.33))
    assert fine.diameter == pytest.approx(plain.diameter)
    assert fine.density.shape == plain.density.shape
    # the same network on a finer resampling: the same cells, within a few percent
    assert abs(fine.count - plain.count) <= 0.1 * plain.count
    assert abs(len(fine.points) - len(plain.points)) <= 0.15 * len(plain.points) + 2


def test_grid_scale_is_checked(image):
    with pytest.raises(InputError, match="grid_scale"):
        drive(eng.count_events(image, axes="YX", diameter=28.0, grid_scale=0))
    with pytest.raises(InputError, match="grid_scale"):
        drive(eng.count_events(image, axes="YX", diameter=28.0, grid_scale=1.5, block_size=128))


def test_segment_seeds_use_the_seed_grid(image, monkeypatch):
    seen = []
    real = eng.count_events

    def spy(*args, **kwargs):
        seen.append(kwargs.get("grid_scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(eng, "count_events", spy)
    monkeypatch.setitem(eng.OPTIONS, "seed_grid", 1.25)
    r = segment(image, axes="YX", diameter=28.0, device="cpu")
    assert seen == [1.25]
    assert r.count > 0 and r.labels.max() == r.count
    assert np.unique(r.labels).size == r.count + 1
