"""Counting patches leave the band along sides that cut through the image out of the loss, and
the Appearance gain effect dims or brightens the nuclei after renormalisation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data.augment import Appearance
from napari_nalu_count.errors import InputError
from napari_nalu_count.train.dataset import PatchSampler, Prepared


def _item(h: int, w: int) -> Prepared:
    img = np.zeros((1, h, w), np.float32)
    dots = np.array([[h / 2, w / 2]], dtype=np.float64)
    return Prepared(img, dots, None, 1.0, "x", {})


def _sampler(item: Prepared, margin: float, patch: int = 32, **kw) -> PatchSampler:
    return PatchSampler(
        [item],
        "count",
        patch,
        1,
        np.random.default_rng(0),
        sigma=1.0,
        augment=False,
        edge_margin=margin,
        **kw,
    )


def test_band_only_along_sides_that_cut_the_image():
    s = _sampler(_item(200, 200), 5)
    for _ in range(20):
        s.rng = np.random.default_rng(int(s.rng.integers(1 << 30)))
        img, dens, valid = s.sample()
        # a 32 px crop of a 200 px image: at least one side cuts through the image
        assert valid.min() == 0.0 and valid.max() == 1.0
        assert valid[5:-5, 5:-5].min() == 1.0  # the centre is always in the loss


def test_image_borders_stay_in_the_loss():
    # the whole image fits in the patch: no side cuts through it, nothing is masked
    s = _sampler(_item(32, 32), 6)
    _, _, valid = s.sample()
    assert valid.min() == 1.0
    # image wider than the patch only in x: the top and bottom rows (image border) stay
    s = _sampler(_item(32, 100), 6)
    for seed in range(10):
        s.rng = np.random.default_rng(seed)
        _, _, valid = s.sample()
        assert valid[0, 8:24].min() == 1.0 and valid[-1, 8:24].min() == 1.0
        assert valid[16].min() == 0.0  # a 32 px crop of 100 px cuts the image in x


def test_no_margin_keeps_every_pixel_and_rejects_negative():
    s = _sampler(_item(200, 200), 0)
    _, _, valid = s.sample()
    assert valid.min() == 1.0
    with pytest.raises(InputError):
        _sampler(_item(200, 200), -1)


def test_band_follows_scale_jitter_and_flips():
    item = _item(300, 300)
    s = PatchSampler(
        [item],
        "count",
        64,
        1,
        np.random.default_rng(1),
        sigma=1.0,
        augment=True,
        scale_jitter=(0.5, 2.0),
        edge_margin=8,
    )
    for _ in range(10):
        _, _, valid = s.sample()
        assert valid.shape == (64, 64)
        # a crop inside a 300 px image cuts it on at least two sides; the band is ~8 px wide
        masked = 1.0 - valid
        assert 0 < masked.mean() < 0.6
        assert valid[10:-10, 10:-10].min() == 1.0


def test_appearance_gain_dims_and_brightens():
    img = np.zeros((64, 64), np.float32)
    img[20:40, 20:40] = 1.0
    seen = []
    for seed in range(60):
        a = Appearance(
            p=1.0,
            dim=0.2,
            background=0,
            illumination=0,
            blur=0,
            noise=0,
            gamma=(1.0, 1.0),
            levels=(4096, 4096),
        )
        out = a(img, np.random.default_rng(seed))
        g = a.last_ops["gain"]
        assert 0.2 <= g <= 1.5
        seen.append(g)
        assert out[30, 30] == pytest.approx(g, rel=0.02, abs=0.02)
    assert min(seen) < 0.5 and max(seen) > 1.0
    # off by default: no gain drawn, so earlier seeds give the same images as before
    a = Appearance(p=1.0)
    a(img, np.random.default_rng(0))
    assert "gain" not in a.last_ops
    with pytest.raises(InputError):
        Appearance(dim=1.5)
