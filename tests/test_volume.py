"""Z-stacks counted as volumes: 3-D peaks of the stacked per-plane densities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.density import dots_to_density
from napari_nalu_count.data.synthetic import synthetic_volume
from napari_nalu_count.errors import InputError
from napari_nalu_count.infer import count
from napari_nalu_count.infer.postprocess import match_points
from napari_nalu_count.infer.volume import estimate_z_extent, link_chains, volume_peaks


def _oracle(sample, shape) -> np.ndarray:
    """What a perfect 2-D counter returns: one cell (a Gaussian of mass 1) per cross-section."""
    return np.stack([dots_to_density(p, shape, sigma=2.5) for p in sample.meta["plane_dots"]])


def test_synthetic_volume_has_known_nuclei_spanning_3_to_9_planes():
    s = synthetic_volume((16, 96, 96), n_cells=12, diameter=12.0, seed=3)
    assert s.image.shape == (16, 96, 96) and s.labels.shape == (16, 96, 96)
    planes = np.array(s.meta["z_planes"])
    assert len(planes) == 12 and planes.min() >= 3 and planes.max() <= 9
    for i, n in enumerate(planes):  # each nucleus's label is in exactly its planes
        present = [(s.labels[z] == i + 1).any() for z in range(16)]
        assert sum(present) == n
    assert sum(len(p) for p in s.meta["plane_dots"]) == planes.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_volume_count_of_an_oracle_density_is_within_5_percent(seed):
    s = synthetic_volume((20, 160, 160), n_cells=40, diameter=14.0, seed=seed)
    dens = _oracle(s, (160, 160))
    assert dens.sum() == pytest.approx(sum(s.meta["z_planes"]), rel=1e-3)  # the plane sum
    zd = estimate_z_extent(s.meta["plane_dots"], 14.0)
    assert 3 <= zd <= 9
    found = volume_peaks(dens, 14.0, zd)
    assert abs(len(found) - 40) <= 0.05 * 40
    _, recall, f1 = match_points(found, s.dots, radius=7.0)
    assert f1 >= 0.95


def test_link_chains_follow_a_cell_through_planes():
    planes = [np.array([[10.0, 10.0]]), np.array([[11.0, 10.0], [40.0, 40.0]]),
              np.array([[11.5, 10.5]]), np.zeros((0, 2))]  # fmt: skip
    chains = link_chains(planes, radius=5.0)
    assert sorted(len(c) for c in chains) == [1, 3]
    assert estimate_z_extent(planes, 10.0) == 3.0
    assert estimate_z_extent([np.zeros((0, 2))] * 3, 10.0) is None


def test_volume_peaks_keeps_nuclei_stacked_apart_in_z():
    dens = np.zeros((14, 40, 40), dtype=np.float32)
    one = dots_to_density(np.array([[20.0, 20.0]]), (40, 40), sigma=2.0)
    dens[1:5] = one  # nucleus 1: planes 1-4
    dens[9:13] = one  # nucleus 2 at the same (y, x): planes 9-12
    found = volume_peaks(dens, 10.0, 4.0)
    assert len(found) == 2
    assert found[0, 0] == pytest.approx(2.5, abs=0.6) and found[1, 0] == pytest.approx(
        10.5, abs=0.6
    )
    assert len(volume_peaks(np.zeros((3, 8, 8)), 4.0, 2.0)) == 0
    with pytest.raises(InputError):
        volume_peaks(np.zeros((8, 8)), 4.0, 2.0)


def _tiny_counter() -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card("vol-tiny", "count", net.config, diameter=10.0), "vol-tiny")
    return "vol-tiny"


def test_count_volume_api_shapes_and_errors(monkeypatch):
    """The API plumbing (the network is not the point here: its density is replaced by the
    oracle so the count can be checked)."""
    from napari_nalu_count.infer import engine

    s = synthetic_volume((12, 64, 64), n_cells=6, diameter=10.0, seed=5)
    oracle = _oracle(s, (64, 64))
    model = _tiny_counter()
    planes = iter(range(10**6))
    real_run = engine._Runner.run

    def fake_run(self, plane, plane_no):  # _Runner.run is an event generator
        out = yield from real_run(self, plane, plane_no)
        out[0] = oracle[plane_no % 12]
        next(planes)
        return out

    monkeypatch.setattr(engine._Runner, "run", fake_run)
    res = count(s.image, model, axes="ZYX", device="cpu", volume=True)
    assert res.volume_count == 6.0 and res.volume_points.shape == (6, 3)
    assert res.count.shape == (12,) and res.count.sum() == pytest.approx(oracle.sum(), rel=1e-3)
    assert 3 <= res.z_diameter <= 9
    _, _, f1 = match_points(res.volume_points, s.dots, radius=5.0)
    assert f1 == 1.0
    res2 = count(s.image, model, axes="ZYX", device="cpu", volume=True, z_diameter=5)
    assert res2.z_diameter == 5.0
    # TZYX: one volume per frame; ZTYX order kept in the points' columns
    tz = np.stack([s.image, s.image])
    res3 = count(tz, model, axes="TZYX", device="cpu", volume=True)
    np.testing.assert_array_equal(res3.volume_count, [6.0, 6.0])
    assert res3.volume_points.shape == (12, 4) and set(res3.volume_points[:, 0]) == {0.0, 1.0}
    plain = count(s.image, model, axes="ZYX", device="cpu")
    assert plain.volume_count is None and plain.volume_points is None
    with pytest.raises(InputError, match="Z axis"):
        count(s.image, model, axes="TYX", device="cpu", volume=True)
    with pytest.raises(InputError):
        count(s.image, model, axes="ZYX", device="cpu", volume="yes")
    with pytest.raises(InputError):
        count(s.image, model, axes="ZYX", device="cpu", volume=True, z_diameter=-1)


def _per_plane_ids(labels_3d: np.ndarray) -> np.ndarray:
    """Global ids -> ids 1..n in each plane (what segment() returns)."""
    from skimage.segmentation import relabel_sequential

    return np.stack([relabel_sequential(p)[0] for p in labels_3d]).astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1])
def test_link_labels_recovers_every_nucleus_of_true_plane_labels(seed):
    from napari_nalu_count.infer.volume import link_labels

    s = synthetic_volume((20, 160, 160), n_cells=40, diameter=14.0, seed=seed)
    linked, n = link_labels(_per_plane_ids(s.labels))
    assert n == 40
    # the same partition as the truth: every true nucleus is exactly one linked object
    pairs = {(int(a), int(b)) for a, b in zip(s.labels.ravel(), linked.ravel(), strict=True)
             if a > 0}  # fmt: skip
    assert len(pairs) == 40 and len({b for _, b in pairs}) == 40


def test_segment_volume_api(monkeypatch):
    from napari_nalu_count.infer import engine, segment
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    s = synthetic_volume((10, 64, 64), n_cells=6, diameter=10.0, seed=2)
    truth = iter(list(_per_plane_ids(s.labels)) * 4)
    monkeypatch.setattr(engine._post, "classes_to_instances", lambda *a, **k: next(truth))
    torch.manual_seed(0)
    net = build_model({"architecture": "se_unet", "widths": [4, 8]})
    save_model(net, make_card("vol-seg", "segment", net.config, diameter=10.0), "vol-seg")
    res = segment(s.image, "vol-seg", axes="ZYX", device="cpu", seeds="interior", volume=True)
    assert res.volume_count == 6 and res.volume_labels.shape == s.labels.shape
    assert res.volume_points.shape == (6, 3)
    _, _, f1 = match_points(res.volume_points, s.dots, radius=3.0)
    assert f1 == 1.0
    res = segment(np.stack([s.image, s.image]), "vol-seg", axes="TZYX", device="cpu",
                  seeds="interior", volume=True)  # fmt: skip
    np.testing.assert_array_equal(res.volume_count, [6, 6])
    with pytest.raises(InputError, match="Z axis"):
        segment(s.image, "vol-seg", axes="TYX", device="cpu", seeds="interior", volume=True)
