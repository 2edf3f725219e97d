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
    [
        (None, None),
        (False, None),
        (0, None),
        (True, 3.0),
        (4, 4.0),
        ("on", 3.0),
        ("off", None),
        ("auto", "auto"),
        (" AUTO ", "auto"),
    ],
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
    from napari_nalu_count._widgets._inference import RunParams, check_background_mode

    assert RunParams("m").background == "auto"
    assert "background" not in RunParams("m").engine_kwargs()  # the engine's own default
    assert RunParams("m", background="on").engine_kwargs()["background"] is True
    assert RunParams("m", background="off").engine_kwargs()["background"] is False
    assert check_background_mode(True) == "on" and check_background_mode(False) == "off"
    with pytest.raises(InputError, match="auto, on, off"):
        check_background_mode("sometimes")


def _out_of_focus_nuclei(shape=(320, 320), d=12.0, seed=0):
    """Sharp discs over a background of blurred clusters of dimmer nuclei, a few diameters
    across (dense tissue's out-of-focus layers): uneven, but not smooth."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    back = np.zeros(shape, np.float32)
    ys, xs = rng.integers(0, h, 60), rng.integers(0, w, 60)
    back[ys, xs] = 1.0
    back = ndi.gaussian_filter(back, 2.0 * d)
    back *= 0.5 / back.max()
    img, fg, _b, _c = _discs_on_ramp(shape, d, ramp=0.0, seed=seed)
    return img + back


def test_assess_background_tells_a_smooth_background_from_out_of_focus_nuclei():
    ramp, *_ = _discs_on_ramp(shape=(320, 320), ramp=0.6)
    flat, *_ = _discs_on_ramp(shape=(320, 320), ramp=0.0)
    tissue = _out_of_focus_nuclei()
    a = bg.assess_background(ramp, 12.0)
    assert a["uneven"] and a["amplitude"] > 0.4 and a["residual"] < 0.02
    b = bg.assess_background(flat, 12.0)
    assert not b["uneven"] and b["amplitude"] < bg.AUTO_MIN_AMPLITUDE
    c = bg.assess_background(tissue, 12.0)
    assert not c["uneven"]
    assert c["amplitude"] > bg.AUTO_MIN_AMPLITUDE and c["residual"] > bg.AUTO_MAX_RESIDUAL
    # judged on a grid where objects are AUTO_GRID px: the same verdict at another scale
    from napari_nalu_count.infer.scale import rescale_plane

    assert bg.assess_background(rescale_plane(ramp, 2.0), 24.0)["uneven"]
    # too small to judge (under three openings a side): not uneven, whatever its ramp
    small = bg.assess_background(ramp[:40, :40], 12.0)
    assert not small["uneven"] and small["amplitude"] == 0.0
    with pytest.raises(ValueError, match="positive"):
        bg.assess_background(ramp, 0.0)


def test_auto_is_the_default_flattens_only_an_uneven_plane_and_says_so():
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, segment
    from napari_nalu_count.infer.engine import describe_corrections

    uneven = synthetic_cells((256, 256), n_cells=50, diameter=14.0, seed=4, gradient=0.6).image
    even = synthetic_cells((256, 256), n_cells=50, diameter=14.0, seed=4).image
    auto = count(uneven, diameter=14.0)
    on = count(uneven, diameter=14.0, background=True)
    off = count(uneven, diameter=14.0, background=False)
    assert auto.background == 3.0 and auto.corrections == {"uneven_background": 1}
    assert auto.count == on.count and auto.count != off.count
    (check,) = auto.background_checks
    assert check["uneven"] and check["amplitude"] >= bg.AUTO_MIN_AMPLITUDE
    assert describe_corrections(auto.corrections) == "uneven background found and flattened"
    assert on.corrections == {} and on.background_checks == [] and off.background is None
    plain = count(even, diameter=14.0)
    assert plain.background is None and plain.corrections == {}
    assert not plain.background_checks[0]["uneven"]
    assert plain.count == count(even, diameter=14.0, background=False).count
    # a stack: judged plane by plane
    both = count(np.stack([uneven, even]), axes="TYX", diameter=14.0)
    assert [c["uneven"] for c in both.background_checks] == [True, False]
    assert both.corrections == {"uneven_background": 1}
    np.testing.assert_allclose(both.count, [auto.count, plain.count], rtol=1e-6)
    # blocks judge the plane's subsample, as the whole plane is judged
    blocked = count(uneven, diameter=14.0, block_size=128)
    assert blocked.corrections == {"uneven_background": 1}
    assert blocked.count == pytest.approx(auto.count, rel=0.03)
    # segment follows its seed counter's verdict, or judges the plane itself
    seg = segment(uneven, diameter=14.0)
    assert seg.background == 3.0 and seg.corrections == {"uneven_background": 1}
    assert seg.background_checks[0]["uneven"]
    own = segment(uneven, diameter=14.0, seeds="interior")
    assert own.background == 3.0 and own.corrections == {"uneven_background": 1}
    assert segment(even, diameter=14.0).background is None


def test_detail_lines_name_it_once():
    from types import SimpleNamespace

    from napari_nalu_count._widgets._inference import background_detail

    asked = SimpleNamespace(background=3.0, corrections={})
    found = SimpleNamespace(background=3.0, corrections={"uneven_background": 1})
    assert background_detail(asked) == ["background flattened (3 diameters)"]
    assert background_detail(found) == []  # the corrections line says it
    assert background_detail(SimpleNamespace(background=None, corrections={})) == []


def test_cli_background_modes(tmp_path, capsys):
    import tifffile

    from napari_nalu_count.cli import main
    from napari_nalu_count.data.synthetic import synthetic_cells

    path = tmp_path / "ramp.tif"
    img = synthetic_cells((256, 256), n_cells=50, diameter=14.0, seed=4, gradient=0.6).image
    tifffile.imwrite(path, img)

    def run(*extra):
        assert main(["count", str(path), "--diameter", "14", *extra]) == 0
        cap = capsys.readouterr()
        return float(cap.out.strip().splitlines()[-1].split(",")[-1]), cap.err

    auto, err = run()
    assert "uneven background found and flattened" in err
    off, err = run("--background", "off")
    assert "uneven background" not in err and off != auto
    on, _ = run("--background", "on")
    assert on == auto == run("--flatten-background")[0]
    assert run("--background", "auto")[0] == auto
    with pytest.raises(SystemExit):
        main(["count", str(path), "--background", "sometimes"])
    assert "background='sometimes' is not understood" in capsys.readouterr().err
    assert main(["count", str(path), "--flatten-background", "--background", "off"]) != 0
    assert "disagree" in capsys.readouterr().err
