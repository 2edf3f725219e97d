"""Sparse fields: a few objects in a large, otherwise empty image.

Two things went wrong there (docs/models.md, "Sparse fields"): the high normalisation
percentile fell into the background noise when the objects covered less than 0.2 % of the
pixels, and the counter's small non-zero output on empty background added up to tens of cells
over a large field. ``normalization_range`` and ``engine.gate_background`` fix them; images
with a typical foreground keep their numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.normalize import normalization_range, percentiles
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count, engine, segment

pytestmark = pytest.mark.gate


def _spots(size: int, n: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, noise, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in rng.integers(20, size - 20, (n, 2)):
        img += 400.0 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 36)
    return np.clip(img, 0, 65535).astype(np.uint16)


def test_typical_images_keep_the_plain_percentiles():
    img = synthetic_cells((256, 256), 40, 20.0, seed=1).image
    assert normalization_range(img) == tuple(percentiles(img, [1.0, 99.8]))
    flat = np.full((64, 64), 7, np.uint16)
    assert normalization_range(flat) == (7.0, 7.0)


def test_sparse_foreground_raises_the_high_reference():
    img = _spots(512, 3, 5.0)  # 3 x 113 px of 262,144: 0.13 %
    lo, hi_plain = percentiles(img, [1.0, 99.8])
    lo2, hi = normalization_range(img)
    assert lo2 == lo and hi_plain < 130  # the plain 99.8th percentile is background noise
    assert 450 < hi <= 520  # the spots' own top (background 100 + 400)
    assert normalization_range(img, sparse=False) == (lo, hi_plain)
    # one spot on an exactly flat background: the plain range is empty
    dot = np.zeros((100, 100), np.float32)
    dot[50:53, 50:53] = 2.0
    assert normalization_range(dot, sparse=False) == (0.0, 0.0)
    assert normalization_range(dot) == (0.0, 2.0)


def test_gate_keeps_bumps_and_zeroes_the_far_floor():
    yy, xx = np.mgrid[:200, :200]
    bump = np.exp(-((yy - 50) ** 2 + (xx - 60) ** 2) / 8.0) / (8.0 * np.pi)
    floor = 1e-5
    dens = torch.from_numpy((bump + floor).astype(np.float32))[None, None]
    out = engine.gate_background(dens, 12.0)[0, 0].numpy()
    # the bump is above the level out to r < 4.9 px (exp(-r^2 / 8) > 0.05): kept at least
    # 12 px beyond, and on 4 px blocks at most a block more
    near = (np.abs(yy - 50) <= 16) & (np.abs(xx - 60) <= 16)
    np.testing.assert_array_equal(out[near], dens[0, 0].numpy()[near])
    far = (np.abs(yy - 50) > 22) | (np.abs(xx - 60) > 22)
    assert not out[far].any()
    # the cell's mass and the floor beside it stay; the rest of 200 x 200 x 1e-5 = 0.4 goes
    kept = np.count_nonzero(out)
    assert kept < 45 * 45
    assert abs(out.sum() - (1.0 + kept * floor)) < 1e-3
    # nothing above the bump level: everything goes
    empty = torch.full((1, 1, 50, 50), 1e-4)
    assert not engine.gate_background(empty, 12.0).any()


@pytest.mark.parametrize("gate", [True, False])
def test_sparse_field_is_counted_right(gate, monkeypatch):
    """3 nuclei in a 1024 px field: -0.9 without the gate, 3.4 with it (bundled counter)."""
    monkeypatch.setitem(engine.OPTIONS, "gate_background", gate)
    s = synthetic_cells((1024, 1024), 3, 28.0, seed=3)
    got = count(s.image, diameter=28.0).count
    if gate:
        assert abs(got - 3) < 1.0
    else:
        assert abs(got - 3) > 2.0  # the failure this fixes (keeps the test able to fail)


def test_gate_leaves_a_typical_image_alone_in_every_path():
    """A field full of nuclei: the gate changes the count by a small fraction of a cell, the
    same in whole planes, blocks and the uncertainty passes; the seeds (and so the labels) of
    segment() do not change at all."""
    s = synthetic_cells((384, 384), 60, 20.0, seed=4)
    out = {}
    for gate in (True, False):
        engine.OPTIONS["gate_background"] = gate
        try:
            out[gate] = (
                count(s.image, diameter=20.0),
                count(s.image, diameter=20.0, block_size=192),
                count(s.image, diameter=20.0, uncertainty=True),
                segment(s.image, diameter=20.0),
            )
        finally:
            engine.OPTIONS["gate_background"] = True
    for k in range(3):
        on, off = out[True][k], out[False][k]
        assert abs(on.count - off.count) < 0.5
        assert abs(on.count - 60) < 0.15 * 60  # the counter, not the gate, sets this
        assert not np.signbit(on.density[on.density == 0]).any()  # no -0.0
    assert out[True][2].count_sd > 0
    np.testing.assert_array_equal(out[True][3].labels, out[False][3].labels)
