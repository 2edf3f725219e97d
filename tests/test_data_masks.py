"""Instance masks -> dots, 3-class targets, relabelling, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data.masks import (
    BOUNDARY,
    INTERIOR,
    instance_sizes,
    instances_to_classes,
    instances_to_dots,
    painted_to_instances,
    relabel_sequential,
    remove_small_instances,
    typical_diameter,
)
from napari_nalu_count.errors import InputError


def _two_touching_squares() -> np.ndarray:
    lab = np.zeros((12, 16), dtype=np.int32)
    lab[2:8, 2:8] = 5
    lab[2:8, 8:14] = 9  # touches label 5 along a vertical edge
    return lab


def test_instances_to_dots_centroids_in_id_order():
    lab = _two_touching_squares()
    dots = instances_to_dots(lab)
    assert dots.shape == (2, 2) and dots.dtype == np.float64
    np.testing.assert_allclose(dots, [[4.5, 4.5], [4.5, 10.5]])


def test_instances_to_dots_empty_and_min_size():
    assert instances_to_dots(np.zeros((5, 5), int)).shape == (0, 2)
    lab = _two_touching_squares()
    lab[10, 0] = 3  # a 1-pixel object
    assert len(instances_to_dots(lab)) == 3
    assert len(instances_to_dots(lab, min_size=2)) == 2


def test_instances_to_classes_separates_touching_objects():
    lab = _two_touching_squares()
    cls = instances_to_classes(lab)
    assert cls.dtype == np.uint8
    assert set(np.unique(cls)) == {0, 1, 2}
    # the shared edge is boundary on both sides
    assert np.all(cls[2:8, 7] == BOUNDARY) and np.all(cls[2:8, 8] == BOUNDARY)
    # interior pixels exist in both objects and do not touch each other
    interior = cls == INTERIOR
    assert interior[:, :8].any() and interior[:, 8:].any()
    from scipy import ndimage as ndi

    _, n = ndi.label(interior)
    assert n == 2
    # background stays background
    assert np.all(cls[lab == 0] == 0)


def test_instances_to_classes_width_and_image_edge():
    lab = np.zeros((20, 20), dtype=np.int32)
    lab[:, :10] = 1  # touches the image edge on three sides
    lab[:, 10:] = 0
    w1 = instances_to_classes(lab, boundary_width=1)
    w3 = instances_to_classes(lab, boundary_width=3)
    assert np.all(w1[:, 9] == BOUNDARY) and np.all(w1[5, :9] == INTERIOR)
    assert np.all(w3[5, 7:10] == BOUNDARY) and np.all(w3[5, :7] == INTERIOR)
    # the image edge is not a boundary
    assert w1[0, 3] == INTERIOR and w1[5, 0] == INTERIOR
    with pytest.raises(InputError, match="boundary_width"):
        instances_to_classes(lab, boundary_width=0)


def test_relabel_sequential_keeps_order():
    lab = np.array([[0, 7, 7], [3, 0, 12]])
    out = relabel_sequential(lab)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 2, 2], [1, 0, 3]])
    assert relabel_sequential(np.zeros((2, 2), int)).max() == 0


def test_remove_small_instances():
    lab = np.zeros((10, 10), int)
    lab[0:3, 0:3] = 4  # 9 px
    lab[5, 5] = 2  # 1 px
    lab[7:9, 7:9] = 8  # 4 px
    out = remove_small_instances(lab, 4)
    assert out.max() == 2 and out[5, 5] == 0
    assert instance_sizes(out).tolist() == [100 - 13, 9, 4]


def test_painted_to_instances_splits_values_and_components():
    painted = np.zeros((10, 12), dtype=np.uint8)
    painted[1:4, 1:4] = 1
    painted[1:4, 4:7] = 2  # touches the value-1 object: different value -> different instance
    painted[6:8, 1:3] = 1  # a second, separate component of value 1
    painted[8, 3] = 1  # diagonal neighbour only: separate under 4-connectivity
    lab = painted_to_instances(painted)
    assert lab.max() == 4 and lab.dtype == np.int32
    assert lab[2, 2] != lab[2, 5]
    assert painted_to_instances(painted, connectivity=2).max() == 3
    assert painted_to_instances(painted, min_size=2).max() == 3


def test_typical_diameter_of_disks():
    yy, xx = np.indices((60, 60))
    lab = np.zeros((60, 60), int)
    for i, (cy, cx) in enumerate([(15, 15), (15, 45), (45, 30)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = i
    assert typical_diameter(lab) == pytest.approx(20.0, rel=0.03)
    with pytest.raises(InputError, match="no objects"):
        typical_diameter(np.zeros((4, 4), int))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 2, 2), int), "2-D"),
        (np.array([[0.5, 1.0]]), "whole-number"),
        (np.array([[-1, 0]]), "negative"),
        (np.array([["a"]]), "integer"),
    ],
)
def test_bad_label_images(bad, match):
    with pytest.raises(InputError, match=match):
        instances_to_dots(bad)


def test_float_and_bool_labels_accepted():
    assert len(instances_to_dots(np.array([[0.0, 2.0], [2.0, 0.0]]))) == 1
    assert len(instances_to_dots(np.array([[True, False]]))) == 1
