"""Tiling: coverage, exact blending, tiled == untiled counts, bounded memory on large images."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_nalu_count.infer import count
from napari_nalu_count.infer.tiling import (
    balanced_tile,
    n_tiles,
    plan_tiles,
    predict_tiled,
    ramp_window,
    tile_starts,
)


@pytest.mark.parametrize(
    "length,tile,overlap", [(100, 32, 8), (97, 32, 16), (32, 32, 8), (20, 32, 8), (1000, 256, 64)]
)
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    covered = np.zeros(length, dtype=int)
    for s in starts:
        assert 0 <= s and s + t <= length
        covered[s : s + t] += 1
    assert covered.min() >= 1
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        assert a + t - b >= overlap  # neighbours share at least the overlap


@pytest.mark.parametrize("length", [100, 872, 1025, 1430, 1715, 2048, 3490, 6880])
def test_balanced_tile_covers_with_as_many_tiles_and_fewer_pixels(length):
    t = balanced_tile(length, 1024, 64, 8)
    assert t <= min(length, 1024)
    assert t == length or t % 8 == 0
    assert len(tile_starts(length, t, 64)) == len(tile_starts(length, min(length, 1024), 64))
    starts = tile_starts(length, t, 64)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        assert a + t - b >= 64
    assert starts[-1] + t == length
    if length == 1430:  # 2 tiles of 752 px instead of 2 of 1024 px
        assert t == 752


def test_rectangular_tiles_blend_exactly():
    plane = np.random.default_rng(3).random((150, 90), dtype=np.float32)
    seen = set()

    def identity(x):
        seen.add(tuple(x.shape[-2:]))
        return x

    out = predict_tiled(identity, plane, 1, tile=(56, 48), overlap=8)
    assert seen == {(56, 48)}
    np.testing.assert_allclose(out[0], plane, rtol=1e-5, atol=1e-6)
    assert n_tiles((150, 90), (56, 48), 8) == len(tile_starts(150, 56, 8)) * len(
        tile_starts(90, 48, 8)
    )


def test_ramp_window_is_positive_and_symmetric():
    w = ramp_window(64, 16, True, True)
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_allclose(w, w[::-1])
    assert np.all(ramp_window(64, 16, False, False) == 1.0)
    # sin^2 ramps of two neighbours sharing exactly the overlap sum to one
    left, right = ramp_window(64, 16, False, True), ramp_window(64, 16, True, False)
    np.testing.assert_allclose(left[-16:] + right[:16], 1.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(97, 131), (64, 64), (40, 300), (17, 19)])
def test_blending_reproduces_identity_and_constants(shape):
    plane = np.random.default_rng(0).random(shape, dtype=np.float32)
    calls = []

    def identity(x):
        calls.append(tuple(x.shape))
        return torch.cat([x, torch.ones_like(x)], dim=1)

    out = predict_tiled(identity, plane, 2, tile=32, overlap=8, batch_size=3)
    assert out.shape == (2,) + shape and out.dtype == np.float32
    np.testing.assert_allclose(out[0], plane, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, rtol=1e-5)
    assert len(calls) == -(-n_tiles(shape, 32, 8) // 3)  # batches of 3 tiles
    assert all(c[0] <= 3 for c in calls)


def test_plan_tiles_equal_shapes():
    positions, (th, tw), wy, wx = plan_tiles((300, 200), 128, 32)
    assert (th, tw) == (128, 128)
    assert len(positions) == len(wy) * len(wx)
    assert all(len(w) == 128 for w in wy + wx)


def test_bad_network_output_shape_is_reported():
    with pytest.raises(RuntimeError, match="expected"):
        predict_tiled(lambda x: x[:, :, :-1], np.zeros((40, 40), np.float32), 1, tile=32, overlap=8)


def _trained_counter() -> str:
    from test_infer_engine import save_trained_counter

    return save_trained_counter()


def _many_cells(shape, n, seed):
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape, n_cells=n, diameter=14.0, seed=seed)


def test_tiled_count_equals_untiled():
    name = _trained_counter()
    s = _many_cells((384, 448), 220, seed=4)
    whole = count(s.image, name, device="cpu", tile_size=512)
    tiled = count(s.image, name, device="cpu", tile_size=96)  # 6 x 7 tiles of 96 px
    assert tiled.count == pytest.approx(whole.count, rel=0.005)
    assert float(np.abs(tiled.density - whole.density).max()) < 0.15 * float(whole.density.max())
    assert abs(len(tiled.points) - len(whole.points)) <= 0.02 * len(whole.points) + 1


def test_balanced_tiles_count_like_full_tiles(options, monkeypatch):
    from napari_nalu_count.infer import engine

    name = _trained_counter()
    s = _many_cells((300, 330), 160, seed=5)
    options["balanced_tiles"] = False
    full = count(s.image, name, device="cpu", tile_size=192)
    options["balanced_tiles"] = True
    shapes = []
    real = engine.predict_tiled_steps

    def spy(forward, plane, *a, tile, **k):
        shapes.append(tile)
        return real(forward, plane, *a, tile=tile, **k)

    monkeypatch.setattr(engine, "predict_tiled_steps", spy)
    bal = count(s.image, name, device="cpu", tile_size=192)
    assert shapes == [(176, 192)]  # 300 px -> 2 x 176; 330 px -> 2 x 192 (multiples of 8)
    assert bal.count == pytest.approx(full.count, rel=0.005)
    assert abs(len(bal.points) - len(full.points)) <= 2


@pytest.mark.slow
def test_tiled_count_2048_equals_untiled():
    name = _trained_counter()
    s = _many_cells((2048, 2048), 3500, seed=8)
    whole = count(s.image, name, device="cpu", tile_size=2048)
    tiled = count(s.image, name, device="cpu", tile_size=384)
    assert tiled.count == pytest.approx(whole.count, rel=0.005)
    assert whole.count == pytest.approx(3500, rel=0.15)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from napari_nalu_count.nn.registry import build_model
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.infer import count

    def status(key):  # kB values of /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    n = int(sys.argv[1])
    torch.manual_seed(0)
    net = build_model({"architecture": "fcrn_a", "widths": [4, 4, 8, 8]})
    save_model(net, make_card("mem-count", "count", net.config, diameter=14.0), "mem-count")
    img = np.random.default_rng(0).integers(100, 4000, (n, n), dtype=np.uint16)
    count(img[:64, :64], "mem-count", device="cpu")  # warm up: imports, allocator
    # reset the peak-RSS mark (ru_maxrss would include the forking parent's memory)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = status("VmRSS")
    res = count(img, "mem-count", device="cpu", tile_size=512)
    peak = status("VmHWM")
    assert res.density.shape == (n, n)
    print(base, peak)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")
def test_memory_stays_bounded_on_large_image(tmp_path):
    n = 4096
    env = {"NALU_COUNT_MODEL_DIR": str(tmp_path / "models"), "OMP_NUM_THREADS": "1"}
    import os

    env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    base, peak = (int(v) for v in out.stdout.split()[-2:])
    per_pixel = (peak - base) / (n * n)
    # input uint16 (2 B) + density out (4 B) + normalised plane and peak-finding temporaries;
    # no float64 copies. 24 B/px keeps an 8192^2 image (67 Mpx) under ~1.6 GB + imports.
    assert per_pixel < 24, f"{per_pixel:.1f} bytes per pixel (base {base / 2**20:.0f} MiB)"
    assert peak < 1.0 * 2**30, f"peak {peak / 2**20:.0f} MiB"
