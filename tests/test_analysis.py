"""Physical units, regions (label masks and boolean masks) and per-object measurements."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nalu_count.analysis import (
    check_pixel_size,
    count_in_regions,
    measure,
    objects_in_regions,
    region_counts,
    units,
)
from napari_nalu_count.errors import InputError


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_pixel_size_forms_and_errors():
    assert check_pixel_size(None) is None
    assert check_pixel_size(0.5) == (0.5, 0.5)
    assert check_pixel_size((0.5, 0.25)) == (0.5, 0.25)
    assert check_pixel_size([2]) == (2.0, 2.0)
    for bad in (0, -1, float("nan"), (1, 2, 3), "0.5", True):
        with pytest.raises(InputError):
            check_pixel_size(bad)


def test_densities_per_mm2_and_per_mpx():
    # 100 cells in 1000 x 1000 px of 0.5 um: 0.25 mm^2 -> 400 / mm^2
    assert units.densities(100, 1e6, (0.5, 0.5)) == pytest.approx(400.0)
    assert units.densities(100, 1e6, None) == pytest.approx(100.0)  # per 10^6 px
    assert np.isnan(units.densities(3, 0, None))
    assert units.area_column(None) == "area_px" and units.area_column((1, 1)) == "area_um2"
    assert "pixels" in units.unit_note(None) and "um" in units.unit_note((0.5, 0.5))


def test_count_in_label_regions_integrates_the_density():
    rng = np.random.default_rng(0)
    dens = rng.random((2, 20, 30)) * 0.01  # (T, Y, X)
    atlas = np.zeros((20, 30), dtype=np.int32)
    atlas[:, :10] = 7
    atlas[:, 10:25] = 3  # ids need not be consecutive; 0 is outside
    table = count_in_regions(dens, atlas, pixel_size=0.5)
    assert list(table.ids) == [3, 7]
    np.testing.assert_allclose(table.counts[:, 0], dens[:, :, 10:25].sum(axis=(1, 2)))
    np.testing.assert_allclose(table.counts[:, 1], dens[:, :, :10].sum(axis=(1, 2)))
    np.testing.assert_allclose(table.areas_px, [[300, 200], [300, 200]])
    np.testing.assert_allclose(table.areas, [[75.0, 50.0]] * 2)  # um^2
    np.testing.assert_allclose(table.densities[0, 1], table.counts[0, 1] / (50.0 / 1e6))
    df = table.to_frame()
    assert list(df.columns) == ["frame", "region", "count", "area_um2", "density_per_mm2"]
    assert df.attrs["units"] == "um"


def test_per_plane_label_mask_and_boolean_masks_agree_with_the_dock():
    rng = np.random.default_rng(1)
    dens = rng.random((3, 16, 16))
    per_plane = np.zeros((3, 16, 16), dtype=np.int64)
    per_plane[0, :8] = 1
    per_plane[1, 8:] = 1
    per_plane[2] = 2
    t = count_in_regions(dens, per_plane)
    np.testing.assert_allclose(t.counts[:, 0], [dens[0, :8].sum(), dens[1, 8:].sum(), 0.0])
    np.testing.assert_allclose(t.counts[2, 1], dens[2].sum())
    np.testing.assert_allclose(t.areas_px[:, 0], [128, 128, 0])
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, :4] = True
    masks[1, :, :4] = True  # overlaps mask 0
    mine = region_counts(dens, masks)
    from napari_nalu_count import infer

    assert region_counts is infer.region_counts  # one implementation for docks, API and CLI
    table = count_in_regions(dens, masks)
    assert list(mine) == ["region 1", "region 2"]
    for k, name in enumerate(mine):
        np.testing.assert_allclose(mine[name], table.counts[:, k])
    two_d = region_counts(dens[0], masks)
    assert two_d["region 1"] == pytest.approx(dens[0, :4].sum())


def test_region_errors_say_what_fits():
    dens = np.zeros((10, 10))
    with pytest.raises(InputError, match="do not match"):
        count_in_regions(dens, np.zeros((5, 5), dtype=int))
    with pytest.raises(InputError, match="whole numbers"):
        count_in_regions(dens, np.full((10, 10), 0.5))
    with pytest.raises(InputError):
        count_in_regions(dens, -np.ones((10, 10), dtype=int))


def test_objects_in_regions_by_centroid():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[_disc((40, 40), 10, 10, 4)] = 1
    labels[_disc((40, 40), 10, 30, 4)] = 2
    labels[_disc((40, 40), 30, 30, 4)] = 3
    # object 2 straddles the border between the regions; its centroid is in region 2
    regions = np.ones((40, 40), dtype=np.int32)
    regions[:, 28:] = 2
    t = objects_in_regions(labels, regions, pixel_size=(1.0, 2.0))
    assert list(t.ids) == [1, 2]
    np.testing.assert_array_equal(t.counts[0], [1, 2])
    np.testing.assert_allclose(t.areas[0], [40 * 28 * 2.0, 40 * 12 * 2.0])
    assert t.integer


def test_measure_known_discs_in_pixels_and_micrometres():
    labels = np.zeros((2, 64, 64), dtype=np.int32)
    big = _disc((64, 64), 20, 20, 8)
    small = _disc((64, 64), 45, 40, 4)
    labels[0][big] = 1
    labels[0][small] = 2
    labels[1][small] = 1
    image = np.zeros((2, 64, 64), dtype=np.float32)
    image[0][big] = 10.0
    image[0, 20, 20] = 50.0
    image[0][small] = 3.0
    df = measure(labels, image)
    assert list(df.columns) == [
        "label", "frame", "centroid_y_px", "centroid_x_px", "area_px",
        "equivalent_diameter_px", "mean_intensity", "max_intensity", "eccentricity", "solidity",
    ]  # fmt: skip
    assert df.attrs["units"] == "px" and df.attrs["pixel_size"] is None
    assert list(df["frame"]) == [0, 0, 1] and list(df["label"]) == [1, 2, 1]
    row = df.iloc[0]
    assert row["area_px"] == big.sum()
    assert row["equivalent_diameter_px"] == pytest.approx(16.0, rel=0.03)
    assert (row["centroid_y_px"], row["centroid_x_px"]) == pytest.approx((20, 20))
    assert row["max_intensity"] == 50.0 and 10 < row["mean_intensity"] < 11
    assert row["eccentricity"] < 0.2 and row["solidity"] > 0.9
    um = measure(labels, image, pixel_size=0.5)
    assert "area_um2" in um and "area_px" not in um and um.attrs["units"] == "um"
    assert um["area_um2"].iloc[0] == pytest.approx(big.sum() * 0.25)
    assert um["equivalent_diameter_um"].iloc[0] == pytest.approx(8.0, rel=0.03)
    assert um["centroid_y_um"].iloc[0] == pytest.approx(10.0)
    assert "micrometres" in um.attrs["note"]


def test_measure_axes_empty_and_errors():
    labels = np.zeros((64, 64, 2), dtype=np.int32)  # Y X Z
    labels[..., 1][_disc((64, 64), 30, 30, 5)] = 4
    df = measure(labels, axes="YXZ")
    assert list(df["frame"]) == [1] and list(df["label"]) == [4]
    assert "mean_intensity" not in df
    empty = measure(np.zeros((8, 8), dtype=np.int32))
    assert len(empty) == 0 and "area_px" in empty
    empty = measure(np.zeros((8, 8), dtype=np.int32), np.ones((8, 8)), pixel_size=1.0)
    assert len(empty) == 0 and {"mean_intensity", "area_um2", "solidity"} <= set(empty)
    with pytest.raises(InputError):
        measure(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(InputError):
        measure(np.zeros((8, 8), dtype=np.int32), np.zeros((7, 8)))


def test_measure_is_the_public_api():
    import napari_nalu_count

    assert napari_nalu_count.measure is measure
    assert "measure" in napari_nalu_count.__all__
