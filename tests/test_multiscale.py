"""Multiscale inputs (pyramids) and counting in blocks read lazily, at bounded memory."""

from __future__ import annotations

import tracemalloc

import dask.array as da
import numpy as np
import pytest
import torch

from napari_nalu_count.errors import InputError
from napari_nalu_count.infer import count, segment
from napari_nalu_count.infer.multiscale import is_multiscale, resolve


def _tiny(task: str = "count") -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    arch = "unet_count" if task == "count" else "se_unet"
    net = build_model({"architecture": arch, "widths": [4, 8]})
    name = f"ms-{task}"
    save_model(net, make_card(name, task, net.config, diameter=10.0), name)
    return name


def _image(shape=(256, 288), n=40, seed=0) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape, n_cells=n, diameter=10.0, seed=seed).image


def test_what_counts_as_multiscale():
    a = np.zeros((64, 64))
    assert is_multiscale([a, a[::2, ::2]]) and is_multiscale((a, a[::2], a[::4, ::4]))
    assert is_multiscale([da.zeros((64, 64)), da.zeros((32, 32))])
    assert not is_multiscale([a, a])  # equal shapes: a stack, as before
    assert not is_multiscale([a[::2, ::2], a])  # growing: not a pyramid
    assert not is_multiscale([[1, 2], [3, 4]]) and not is_multiscale(a)
    lvl = resolve([a, a[::2, ::4]], 1)
    assert lvl.index == 1 and lvl.factors == (2.0, 4.0) and lvl.n_levels == 2
    assert resolve([a, a[::2, ::2]], -1).index == 1
    assert resolve(a) is None
    with pytest.raises(InputError, match="levels 0..1"):
        resolve([a, a[::2, ::2]], 2)
    with pytest.raises(InputError, match="not multiscale"):
        resolve(a, 1)
    with pytest.raises(InputError):
        resolve([a, a[::2, ::2]], 1.5)

    class MultiScaleData(list):  # napari's class, recognised by name
        pass

    assert is_multiscale(MultiScaleData([a, a]))


def test_plain_inputs_are_unchanged_and_take_no_blocks():
    model = _tiny()
    img = _image()
    ref = count(img, model, device="cpu")
    lazy = count(da.from_array(img, chunks=64), model, device="cpu")
    assert ref.level is None and ref.level_scale is None
    np.testing.assert_array_equal(ref.density, lazy.density)
    np.testing.assert_array_equal(ref.points, lazy.points)
    stacked = count([img, img], model, axes="TYX", device="cpu")  # a list of equal planes
    assert stacked.density.shape == (2, *img.shape) and stacked.level is None


def test_pyramid_levels_geometry_and_scale():
    model = _tiny()
    img = _image()
    pyr = [da.from_array(img, chunks=96), da.from_array(img[::2, ::2], chunks=96)]
    res0 = count(pyr, model, device="cpu")
    assert res0.level == 0 and res0.level_scale == (1.0, 1.0)
    assert res0.density.shape == img.shape
    res1 = count(pyr, model, device="cpu", level=1)
    assert res1.level == 1 and res1.level_scale == (2.0, 2.0)
    assert res1.density.shape == (128, 144)
    assert res1.points.shape[1] == 2
    seg = segment(pyr, _tiny("segment"), device="cpu", level=1, seeds="interior")
    assert seg.labels.shape == (128, 144) and seg.level_scale == (2.0, 2.0)
    stack = [np.stack([img, img]), np.stack([img, img])[:, ::2, ::2]]
    res = count(stack, model, axes="TYX", device="cpu", level=1)
    assert res.level_scale == (1.0, 2.0, 2.0) and res.density.shape == (2, 128, 144)
    with pytest.raises(InputError):
        count(img, model, device="cpu", level=1)


def test_blocks_agree_with_whole_planes_for_a_trained_counter():
    """The bundled counter on a 3 x 3 grid of blocks vs the whole plane: the same cells."""
    from napari_nalu_count.infer.postprocess import match_points

    img = _image((384, 384), n=120, seed=4)
    whole = count(img, "nuclei-count", device="cpu", diameter=10.0)
    blocks = count(img, "nuclei-count", device="cpu", diameter=10.0, block_size=128)
    assert blocks.count == pytest.approx(whole.count, rel=0.02)
    _, _, f1 = match_points(blocks.points, whole.points, radius=3.0)
    assert f1 > 0.97
    np.testing.assert_allclose(blocks.density.sum(), blocks.count, rtol=1e-6)


def test_blocked_memory_is_bounded_by_the_output():
    """Counting a 1536 x 1536 dask image in 256 px blocks allocates (numpy, traced) its float32
    density plus a constant (one block with its margin, the percentile sample of at most
    SAMPLE_PIXELS); the whole-plane path holds several plane-sized arrays."""
    model = _tiny()
    tile = _image((256, 256), n=30, seed=1)
    big = da.tile(da.from_array(tile, chunks=256), (6, 6))  # never a numpy array of its own
    out_bytes = big.shape[0] * big.shape[1] * 4

    def peak(**kw) -> int:
        tracemalloc.start()
        count(big, model, device="cpu", tile_size=256, **kw)
        _, p = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return p

    blocked = peak(block_size=256)
    whole = peak()
    # measured: blocked 18.0 MB, whole 36.8 MB, density 9.4 MB
    assert blocked - out_bytes < 12e6, (blocked, out_bytes)
    assert blocked < 0.6 * whole, (blocked, whole)


def test_block_size_is_checked():
    with pytest.raises(InputError):
        count(np.zeros((64, 64)), "nuclei-count", block_size=8)
    with pytest.raises(InputError):
        count(np.zeros((64, 64)), "nuclei-count", block_size=1.5)
