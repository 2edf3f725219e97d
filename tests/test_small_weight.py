"""Segmentation patches can weigh small objects (micronuclei, fragments) and the ring around
them more in the loss (``PatchSampler(small_weight=, small_size=)``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.errors import InputError
from napari_nalu_count.train.dataset import PatchSampler, Prepared, small_object_weights


def _labels() -> np.ndarray:
    lab = np.zeros((40, 40), np.int32)
    lab[5:25, 5:25] = 1  # a nucleus, 20 px
    lab[26:29, 10:13] = 2  # a fragment beside it, 3 px
    lab[32:36, 30:34] = 3  # a lone fragment, 4 px
    lab[0:3, 36:39] = 4  # a small object cut by the patch's top side
    return lab


def test_small_objects_and_their_ring_are_weighted():
    lab = _labels()
    w = small_object_weights(lab, size=8.0, weight=4.0)
    assert w.dtype == np.float32 and w.shape == lab.shape
    assert (w[lab == 2] == 5.0).all() and (w[lab == 3] == 5.0).all()
    assert w[25, 11] == 5.0  # the nucleus's pixel that touches the fragment: the ring
    assert w[31, 31] == 5.0 and w[30, 31] == 1.0  # a 1 px ring, no wider
    assert (w[10:20, 10:20] == 1.0).all()  # the nucleus itself
    assert (w[lab == 4] == 1.0).all()  # cut by the side: its size says nothing
    assert w[lab == 0].min() == 1.0


def test_size_threshold_is_the_equivalent_diameter():
    lab = _labels()
    # the 4 px fragment (16 px area, equivalent diameter 4.5) is small under 5 px, not under 4
    assert small_object_weights(lab, size=5.0, weight=1.0)[33, 31] == 2.0
    assert small_object_weights(lab, size=4.0, weight=1.0)[33, 31] == 1.0
    assert (small_object_weights(np.zeros((8, 8), np.int32), 8.0, 3.0) == 1.0).all()


def test_sampler_puts_the_weights_into_valid():
    lab = _labels()
    img = (lab > 0).astype(np.float32)[None]
    item = Prepared(img, np.zeros((0, 2)), lab, 1.0, "x", {})

    def sample(**kw):
        s = PatchSampler([item], "segment", 40, 1, np.random.default_rng(0), augment=False, **kw)
        return s.sample()

    _, target, plain = sample()
    _, target_w, weighted = sample(small_weight=4.0, small_size=8.0)
    assert (target == target_w).all()  # the classes do not change
    assert plain.max() == 1.0
    assert weighted.max() == 5.0 and (weighted[lab == 3] == 5.0).all()
    assert (weighted[10:20, 10:20] == 1.0).all()


def test_bad_settings_are_refused():
    item = Prepared(np.zeros((1, 16, 16), np.float32), np.zeros((0, 2)), None, 1.0, "x", {})
    with pytest.raises(InputError, match="small_weight"):
        PatchSampler([item], "segment", 16, 1, np.random.default_rng(0), small_weight=-1)
    with pytest.raises(InputError, match="small_size"):
        PatchSampler([item], "segment", 16, 1, np.random.default_rng(0), small_size=0)
