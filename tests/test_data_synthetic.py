"""Synthetic fluorescence cells: exact counts, labels, reproducibility, stacks, extrapolation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data.density import points_inside
from napari_nalu_count.data.masks import instances_to_dots, typical_diameter
from napari_nalu_count.data.synthetic import (
    extrapolation_split,
    synthetic_cells,
    synthetic_dataset,
    synthetic_timelapse,
)
from napari_nalu_count.errors import InputError


def test_defaults_exact_count_labels_and_dtype():
    s = synthetic_cells()
    assert s.image.shape == (256, 256) and s.image.dtype == np.uint16
    assert s.dots.shape == (40, 2) and s.dots.dtype == np.float64
    assert np.all(points_inside(s.dots, s.image.shape))
    assert np.all((s.dots >= 0) & (s.dots <= 255))
    assert s.labels.dtype == np.int32 and s.labels.shape == (256, 256)
    ids = np.unique(s.labels)
    assert ids.tolist() == list(range(41))  # background + exactly 40 instances
    # label i+1 sits under dot i
    iy, ix = np.rint(s.dots).astype(int).T
    np.testing.assert_array_equal(s.labels[iy, ix], np.arange(1, 41))


@pytest.mark.parametrize("n", [0, 1, 7, 150])
def test_count_is_exact(n):
    s = synthetic_cells((96, 128), n_cells=n, diameter=9.0, seed=n, clumping=0.4, overlap=0.4)
    assert len(s.dots) == n
    assert len(np.unique(s.labels[s.labels > 0])) == n
    assert np.all(points_inside(s.dots, (96, 128)))


def test_reproducible_from_seed_and_different_for_other_seeds():
    a = synthetic_cells((64, 64), 12, 10.0, seed=5)
    b = synthetic_cells((64, 64), 12, 10.0, seed=5)
    c = synthetic_cells((64, 64), 12, 10.0, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.dots, b.dots)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.dots, c.dots)


def test_cells_are_bright_and_sized_as_requested():
    s = synthetic_cells((128, 128), 20, diameter=16.0, seed=1, overlap=0.0)
    img = s.image.astype(float)
    assert img[s.labels > 0].mean() > img[s.labels == 0].mean() + 100
    assert typical_diameter(s.labels) == pytest.approx(16.0, rel=0.2)
    # centroids of the label instances are close to the true centres (cells cut by the border
    # excepted)
    cents = instances_to_dots(s.labels)
    inner = np.all((s.dots > 10) & (s.dots < 118), axis=1)
    assert np.median(np.abs(cents[inner] - s.dots[inner])) < 1.0


def test_float_output_and_noise_free_option():
    s = synthetic_cells((64, 64), 5, 10.0, seed=0, dtype="float32", photons=0, read_noise=0)
    assert s.image.dtype == np.float32
    assert s.image.min() >= 0
    with pytest.raises(InputError, match="dtype"):
        synthetic_cells(dtype="int8")


def test_overlap_and_clumping_make_closer_neighbours():
    def nn_dist(s):
        d = np.sqrt(((s.dots[:, None] - s.dots[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        return d.min(axis=1)

    spread = synthetic_cells((160, 160), 40, 12.0, seed=2, overlap=0.0, clumping=0.0)
    clumped = synthetic_cells((160, 160), 40, 12.0, seed=2, overlap=0.5, clumping=0.9)
    assert nn_dist(spread).min() >= 12.0 - 1e-9
    assert np.median(nn_dist(clumped)) < np.median(nn_dist(spread))
    assert nn_dist(clumped).min() >= 6.0 - 1e-9


def test_crowded_images_still_place_every_cell():
    s = synthetic_cells((64, 64), 120, diameter=10.0, seed=0)
    assert len(s.dots) == 120 and s.labels.max() == 120
    with pytest.raises(InputError, match="too many"):
        synthetic_cells((32, 32), 500, diameter=4.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (4, 4)}, "shape"),
        ({"n_cells": -1}, "n_cells"),
        ({"diameter": 0.5}, "diameter"),
        ({"overlap": 1.0}, "overlap"),
        ({"clumping": 2.0}, "clumping"),
        ({"elongation": (0.5, 1.0)}, "elongation"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        synthetic_cells(**kwargs)


def test_timelapse_counts_grow_and_cells_persist():
    s = synthetic_timelapse(n_frames=5, shape=(64, 64), start=6, growth=2.0, diameter=8.0)
    counts = s.meta["counts"]
    assert counts[0] == 6 and counts[-1] == 12 and counts == sorted(counts)
    assert s.image.shape == (5, 64, 64) and s.labels.shape == (5, 64, 64)
    assert s.dots.shape == (sum(counts), 3)
    for t in range(5):
        frame_dots = s.dots[s.dots[:, 0] == t, 1:]
        assert len(frame_dots) == counts[t]
        assert s.labels[t].max() == counts[t]
    first = s.dots[s.dots[:, 0] == 0, 1:]
    last = s.dots[s.dots[:, 0] == 4, 1:]
    np.testing.assert_array_equal(last[: len(first)], first)  # earlier cells stay put
    assert not np.array_equal(s.image[0], s.image[1])  # fresh noise per frame
    with pytest.raises(InputError, match="unknown"):
        synthetic_timelapse(2, (32, 32), bogus=1)


def test_dataset_and_extrapolation_split():
    ds = synthetic_dataset(4, (3, 6), shape=(48, 48), diameter=8.0, seed=3)
    assert all(3 <= s.count <= 6 for s in ds)
    again = synthetic_dataset(5, (3, 6), shape=(48, 48), diameter=8.0, seed=3)
    np.testing.assert_array_equal(ds[2].image, again[2].image)  # prefix-stable
    train, test = extrapolation_split(
        3, 2, low=(2, 4), factor=5.0, shape=(64, 64), diameter=6.0, seed=0
    )
    assert all(2 <= s.count <= 4 for s in train)
    assert all(10 <= s.count <= 20 for s in test)
