"""Uneven background flattening (``count(..., background=)``, ``infer.background``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.errors import InputError
from napari_nalu_count.infer import background as bg


def _discs_on_ramp(shape=(160, 200), d=12.0, ramp=0.8, seed=0):
    """Bright discs of contrast 1 on a background ramp 0 -> ``ramp`` (plus a little noise)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fg = np.zeros(shape, np.float32)
    centres = [(y, x) for y in range(14, h - 10, 30) for x in range(14, w - 10, 30)]
    for cy, cx in centres:
        fg[(yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2] = 1.0
    back = ramp * xx / (w - 1)
    return fg + back + rng.normal(0, 0.01, shape).astype(np.float32), fg, back, centres


def test_flatten_removes_a_ramp_and_keeps_the_discs():
    img, fg, _back, centres = _discs_on_ramp()
    flat = bg.flatten_background(img, 12.0)
    assert flat.dtype == np.float32 and flat.shape == img.shape
    # background pixels (away from the discs and the image edge) end near 0 everywhere,
    # though the input's background climbs from 0 to 0.8
    from scipy import ndimage as ndi

    far = ~ndi.binary_dilation(fg > 0, iterations=3)
    far[:10], far[-10:], far[:, :10], far[:, -10:] = False, False, False, False
    assert np.percentile(img[far], 95) - np.percentile(img[far], 5) > 0.6
    assert np.abs(flat[far]).mean() < 0.05
    # every disc keeps its contrast of ~1 wherever it sits on the ramp
    peaks = [flat[cy, cx] for cy, cx in centres]
    assert min(peaks) > 0.85 and max(peaks) < 1.1


def test_flat_background_is_left_as_it_was():
    img, _fg, _b, _c = _discs_on_ramp(ramp=0.0)
    flat = bg.flatten_background(img, 12.0)
    assert np.abs(flat - img).max() < 0.06  # only the noise floor moves


def test_filter_is_local_so_blocks_with_a_halo_match_the_whole_plane():
    img, *_ = _discs_on_ramp(shape=(200, 240), seed=3)
    whole = bg.flatten_background(img, 10.0, 3.0)
    halo = bg.background_support(10.0, 3.0)
    y0, y1, x0, x1 = 80, 120, 100, 140
    crop = img[y0 - halo : y1 + halo, x0 - halo : x1 + halo]
    part = bg.flatten_background(crop, 10.0, 3.0)
    np.testing.assert_allclose(part[halo:-halo, halo:-halo], whole[y0:y1, x0:x1], atol=1e-6)


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), (False, None), (0, None), (True, 3.0), (4, 4.0), ("on", 3.0), ("off", None)],
)
def test_parse_background(value, expected):
    assert bg.parse_background(value) == expected


@pytest.mark.parametrize("value", [1, 1.9, 51, float("nan"), "wide", [3]])
def test_parse_background_refuses_with_a_reason(value):
    with pytest.raises(InputError, match="background"):
        bg.parse_background(value)


def test_flatten_refuses_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        bg.flatten_background(np.zeros((8, 8)), 10.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        bg.flatten_background(np.zeros((8, 8)), 0.0)


def test_count_and_segment_record_it_and_even_backgrounds_barely_move():
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, segment

    img = synthetic_cells((192, 192), n_cells=30, diameter=14.0, seed=2).image
    plain = count(img, diameter=14.0)
    flat = count(img, diameter=14.0, background=True)
    assert plain.background is None and flat.background == 3.0
    assert flat.count == pytest.approx(plain.count, rel=0.05)
    assert flat.count != plain.count  # the network did see another input
    seg = segment(img, diameter=14.0, background=4)
    assert seg.background == 4.0 and seg.count > 0
    with pytest.raises(InputError, match="background"):
        count(img, background=1)


def test_blocked_count_applies_it_like_the_whole_plane():
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count

    img = synthetic_cells((256, 256), n_cells=50, diameter=14.0, seed=4, gradient=0.6).image
    whole = count(img, diameter=14.0, background=True)
    blocked = count(img, diameter=14.0, background=True, block_size=128)
    assert blocked.background == 3.0
    assert blocked.count == pytest.approx(whole.count, rel=0.03)


def test_cli_flag(tmp_path, capsys):
    import tifffile

    from napari_nalu_count.cli import main
    from napari_nalu_count.data.synthetic import synthetic_cells

    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, synthetic_cells((128, 128), n_cells=12, seed=1).image)
    assert main(["count", str(path), "--diameter", "14", "--flatten-background"]) == 0
    flat = float(capsys.readouterr().out.strip().splitlines()[-1].split(",")[-1])
    assert main(["count", str(path), "--diameter", "14"]) == 0
    plain = float(capsys.readouterr().out.strip().splitlines()[-1].split(",")[-1])
    assert flat != plain and flat == pytest.approx(plain, rel=0.1)
    with pytest.raises(SystemExit):
        main(["count", str(path), "--flatten-background", "1"])
    assert "2 to 50 object diameters" in capsys.readouterr().err


def test_run_params_pass_it_to_the_engine():
    from napari_nalu_count._widgets._inference import RunParams

    assert "background" not in RunParams("m").engine_kwargs()
    assert RunParams("m", background=True).engine_kwargs()["background"] is True
