"""What a user's camera and sample add to an image: hot pixels and large bright artefacts.

Both broke the count before (docs/models.md, "Round 19"): 40 saturated pixels on a 16-bit
image were counted as cells, and two bright blobs (dust, a clump of dead cells) took the
normalisation's high percentile, so the nuclei were normalised to a tenth of the range and
almost none were counted. ``suppress_hot_pixels`` and ``artefact_high`` fix them in the
engine (``OPTIONS["hot_pixels"]``, ``OPTIONS["bright_artefacts"]``); clean images keep their
numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.data.normalize import (
    artefact_high,
    normalization_range,
    percentiles,
    suppress_hot_pixels,
)
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import count, engine


def _plane(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((40, 40)).astype(np.float32) * 0.3


def test_hot_pixels_isolated_pairs_and_corners_are_clamped():
    a = _plane()
    a[10, 10], a[20, 20], a[20, 21], a[0, 0], a[35, 5:8] = 40.0, 30.0, 25.0, 50.0, 9.0
    before = a.copy()
    assert suppress_hot_pixels(a) == 7
    for y, x in [(10, 10), (20, 20), (20, 21), (0, 0), (35, 5), (35, 6), (35, 7)]:
        assert a[y, x] <= 0.3  # down to the brightest clear neighbour
    changed = np.argwhere(a != before)
    assert len(changed) == 7


def test_bright_objects_that_are_not_single_pixels_stay():
    a = _plane(1)
    a[5:11, 5:11] = 5.0  # a flat, sharp-edged bright square: its corners have 5 clear neighbours
    yy, xx = np.mgrid[:40, :40]
    a += 6.0 * np.exp(-((yy - 28) ** 2 + (xx - 28) ** 2) / (2 * 1.2**2))  # a tiny smooth spot
    before = a.copy()
    assert suppress_hot_pixels(a) == 0
    np.testing.assert_array_equal(a, before)
    with pytest.raises(ValueError, match="2-D"):
        suppress_hot_pixels(np.zeros((2, 3, 3), np.float32))


def _nuclei(seed: int = 3) -> np.ndarray:
    return synthetic_cells((320, 320), 90, 16.0, seed=seed).image


def _with_blobs(img: np.ndarray, gain: float = 8.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(img, [1, 99.8])
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    out = img.astype(np.float64)
    for cy, cx in rng.uniform(60, 260, (2, 2)):
        out += gain * (hi - lo) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 15.0**2))
    return np.clip(out, 0, 65535).astype(np.uint16)


def test_artefact_high_finds_the_nuclei_under_bright_blobs():
    img = _nuclei()
    lo, hi = percentiles(img, [1.0, 99.8])
    mid = percentiles(img, [50.0])[0]
    assert artefact_high(img, 99.8, mid, hi) is None  # a clean field: nothing to leave out
    dirty = _with_blobs(img)
    dlo, dhi = normalization_range(dirty)
    assert dhi > 4 * hi  # the plain high percentile lies on the blobs
    alo, ahi = normalization_range(dirty, artefacts=True)
    assert alo == dlo and ahi == pytest.approx(hi, rel=0.25)
    # a sparse field (few objects) is left alone even with one bright object among them
    sparse = synthetic_cells((320, 320), 6, 16.0, seed=1).image
    assert normalization_range(sparse, artefacts=True) == normalization_range(sparse)


def _discs(shape, centres, d, value, base=100.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = base + rng.normal(0, 2.0, shape)
    for (cy, cx), v in zip(centres, value, strict=True):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2] += v
    return img


def test_a_small_field_under_a_blob_is_found_and_a_cluster_of_nuclei_is_not():
    # ten nuclei (fewer than ARTEFACT_MANY objects) and one blob 8x as bright, 6 nuclei wide
    centres = [(40 + 45 * (i // 4), 30 + 55 * (i % 4)) for i in range(10)]
    clean = _discs((256, 256), centres, 14.0, [400.0] * 10)
    lo, hi = percentiles(clean, [1.0, 99.8])
    yy, xx = np.mgrid[:256, :256]
    dirty = clean + 8 * (hi - lo) * np.exp(-((yy - 200) ** 2 + (xx - 200) ** 2) / (2 * 25.0**2))
    dirty = np.clip(dirty, 0, 65535).astype(np.uint16)
    _dlo, dhi = normalization_range(dirty)
    _alo, ahi = normalization_range(dirty, artefacts=True)
    assert dhi > 4 * hi and ahi == pytest.approx(hi, rel=0.25)
    # a tight cluster of six bright nuclei among a few dim ones and specks (fewer than
    # ARTEFACT_MANY objects in all): the cluster is not a blob (under ARTEFACT_SIZE times the
    # dim nuclei's area), nor are the specks nuclei
    cluster = [(60 + 12 * (i // 3), 60 + 12 * (i % 3)) for i in range(6)]
    dim = [(200, 60), (60, 200), (200, 200)]
    field = _discs((256, 256), cluster + dim, 12.0, [2000.0] * 6 + [300.0] * 3)
    rng = np.random.default_rng(1)
    for y, x in rng.integers(0, 256, (10, 2)):
        field[y, x] += 400.0  # single-pixel specks
    field = field.astype(np.uint16)
    assert normalization_range(field, artefacts=True) == normalization_range(field)
    # two nuclei beside a much brighter one: too few to judge by
    pair = _discs((256, 256), [(60, 60), (60, 190), (190, 120)], 14.0, [4000.0, 300, 300])
    pair = pair.astype(np.uint16)
    assert normalization_range(pair, artefacts=True) == normalization_range(pair)


@pytest.mark.parametrize("block_size", [None, 160])
def test_count_ignores_hot_pixels_and_bright_blobs(block_size):
    img = _nuclei()
    res_clean = count(img, diameter=16.0, block_size=block_size)
    clean = res_clean.count
    assert res_clean.corrections == {}
    hot = img.copy()
    rng = np.random.default_rng(5)
    hot.flat[rng.integers(0, hot.size, 40)] = 65535
    dirty = _with_blobs(img)
    res_hot = count(hot, diameter=16.0, block_size=block_size)
    res_dirty = count(dirty, diameter=16.0, block_size=block_size)
    got_hot, got_dirty = res_hot.count, res_dirty.count
    assert got_hot == pytest.approx(clean, rel=0.03)
    assert abs(got_dirty - clean) < 0.25 * clean
    # the result says what was corrected
    assert 35 <= res_hot.corrections["hot_pixels"] <= 40
    assert "bright_artefacts" not in res_hot.corrections
    assert res_dirty.corrections.get("bright_artefacts") == 1
    # the artefacts' own area is left out too (not counted as cells): the count is the clean
    # image's outside it, and the dock line says how much was left out
    share = res_dirty.corrections["artefact_pixels"] / img.size
    if block_size is not None:
        # blocks read the area found on the plane's subsample: about the whole plane's
        whole = count(dirty, diameter=16.0).corrections["artefact_pixels"] / img.size
        assert share == pytest.approx(whole, rel=0.1)
    if block_size is None:
        assert 0.05 < share < 0.3
        assert got_dirty == pytest.approx(clean * (1 - share), rel=0.1)
        line = engine.describe_corrections(res_dirty.corrections, engine.result_pixels(res_dirty))
        assert f"and the count ({100 * share:.0f} % of the image)" in line
        old = dict(engine.OPTIONS)
        try:
            engine.OPTIONS["mask_artefacts"] = False  # the blobs are then counted as cells
            kept = count(dirty, diameter=16.0)
            assert kept.count > got_dirty + 10 and "artefact_pixels" not in kept.corrections
        finally:
            engine.OPTIONS.clear()
            engine.OPTIONS.update(old)
    else:
        assert got_dirty == pytest.approx(clean * (1 - share), rel=0.1)
    old = dict(engine.OPTIONS)
    try:
        engine.OPTIONS.update(hot_pixels=False, bright_artefacts=False)
        # without the two guards both go wrong (so the test above can fail)
        assert count(hot, diameter=16.0, block_size=block_size).count > clean + 15
        assert count(dirty, diameter=16.0, block_size=block_size).count < 0.6 * clean
    finally:
        engine.OPTIONS.clear()
        engine.OPTIONS.update(old)


def test_segment_reports_corrections_and_the_dock_line():
    from napari_nalu_count._widgets._inference import corrections_detail
    from napari_nalu_count.infer import segment

    img = _nuclei()
    hot = img.copy()
    hot.flat[np.random.default_rng(5).integers(0, hot.size, 40)] = 65535
    res = segment(hot, diameter=16.0)
    assert 35 <= res.corrections["hot_pixels"] <= 40
    assert abs(res.count - segment(img, diameter=16.0).count) <= 3
    assert corrections_detail(res) == [f"{res.corrections['hot_pixels']} hot pixels ignored"]

    class R:
        corrections = {"hot_pixels": 1, "bright_artefacts": 2}

    assert corrections_detail(R()) == [
        "1 hot pixel ignored; bright artefacts left out of the brightness range (2 planes)"
    ]
    R.corrections = {}
    assert corrections_detail(R()) == []


def test_cli_reports_what_it_corrected(tmp_path, capsys):
    import tifffile

    from napari_nalu_count.cli import main

    img = _nuclei()
    hot = img.copy()
    hot.flat[np.random.default_rng(5).integers(0, hot.size, 40)] = 65535
    tifffile.imwrite(tmp_path / "hot.tif", hot)
    tifffile.imwrite(tmp_path / "clean.tif", img)
    out = tmp_path / "c.csv"
    assert main(["count", str(tmp_path), "--diameter", "16", "--csv", str(out)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "hot pixels ignored" in line]
    assert len(notes) == 1 and "hot.tif:" in notes[0]
    assert not [line for line in err.splitlines() if "clean.tif" in line and "ignored" in line]
