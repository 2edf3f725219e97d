"""Work shared inside one call (issue 17): each plane is normalised once, the size estimate
and segment's seed counter reuse it, and the seed counter's density is not resampled to the
image grid; results are identical with and without the sharing."""

from __future__ import annotations

import numpy as np
import torch

from napari_nalu_count.data import normalize
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.infer import engine, scale, segment
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.nn.registry import build_model


def _models() -> tuple[str, str]:
    torch.manual_seed(0)
    c = build_model({"architecture": "unet_count", "widths": [4, 8], "size_head": True})
    save_model(
        c,
        make_card("sw-count", "count", c.config, diameter=10.0, diameter_mode="estimate"),
        "sw-count",
    )
    s = build_model({"architecture": "se_unet", "widths": [4, 8]})
    save_model(
        s,
        make_card("sw-seg", "segment", s.config, diameter=12.0, diameter_mode="estimate"),
        "sw-seg",
    )
    return "sw-count", "sw-seg"


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*a, **k):
        calls.append(a[0].shape if a and hasattr(a[0], "shape") else None)
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_segment_normalises_once_and_skips_the_seed_density(options, monkeypatch):
    counter, seg = _models()
    img = synthetic_cells((160, 200), n_cells=40, diameter=14.0, seed=1).image
    options["share_work"] = False
    ref = segment(img, seg, count_model=counter, device="cpu")
    options["share_work"] = True
    norms = _spy(monkeypatch, normalize, "percentile_normalize")
    ups = _spy(monkeypatch, scale, "density_to_original")
    got = segment(img, seg, count_model=counter, device="cpu")
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert got.diameter == ref.diameter and got.diameter_source == "estimated"
    assert norms == [(160, 200)]  # once: segmenter, counter and size estimate share it
    assert ups == []  # the seed counter's density stays on its grid


def test_shared_work_off_normalises_three_times(options, monkeypatch):
    counter, seg = _models()
    img = synthetic_cells((160, 200), n_cells=40, diameter=14.0, seed=1).image
    options["share_work"] = False
    norms = _spy(monkeypatch, normalize, "percentile_normalize")
    segment(img, seg, count_model=counter, device="cpu")
    assert len(norms) == 3  # the baseline the benchmark compares against


def _match(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Objects of ``a`` matched in ``b`` at IoU > 0.5, and their mean IoU."""
    sa, sb = np.bincount(a.ravel()), np.bincount(b.ravel())
    both = (a > 0) & (b > 0)
    pair = a[both].astype(np.int64) * (int(b.max()) + 1) + b[both]
    u, inter = np.unique(pair, return_counts=True)
    ia, ib = u // (int(b.max()) + 1), u % (int(b.max()) + 1)
    iou = inter / (sa[ia] + sb[ib] - inter)
    good = iou > 0.5
    return int(good.sum()), float(iou[good].mean())


def test_large_planes_are_segmented_in_blocks_like_whole(options, monkeypatch):
    img = synthetic_cells((480, 420), n_cells=110, diameter=22.0, seed=4).image
    whole = segment(img, device="cpu")
    monkeypatch.setattr(engine, "SEGMENT_BLOCK_PIXELS", 100 * 100)
    monkeypatch.setattr(engine, "SEGMENT_BLOCK", 160)  # 3 x 3 blocks
    blocks = []
    real = engine._segment_blocked

    def spy(*a, **k):
        blocks.append(a[1].shape)
        return real(*a, **k)

    monkeypatch.setattr(engine, "_segment_blocked", spy)
    got = segment(img, device="cpu")
    assert len(blocks) == 1
    assert got.labels.max() == got.count and len(np.unique(got.labels)) == got.count + 1
    assert abs(got.count - whole.count) <= 2
    matched, iou = _match(whole.labels, got.labels)
    assert matched >= whole.count - 2 and iou > 0.97
    options["segment_blocks"] = False
    again = segment(img, device="cpu")
    np.testing.assert_array_equal(again.labels, whole.labels)


class _TwoViewRunner:
    """A stand-in for the engine's runner whose class probabilities depend on the block, as a
    network's do near a block's edge: ``scenes[k]`` (interior = 1) for the k-th block asked."""

    def __init__(self, scenes: list[np.ndarray]) -> None:
        self.scenes = scenes
        self.calls = 0

    def check_cancel(self) -> None:
        pass

    def run(self, plane, plane_no):
        # the block's window, found from the plane's values (each pixel holds its flat index)
        r0, c0 = divmod(int(plane[0, 0]), self.scenes[0].shape[1])
        h, w = plane.shape
        inside = self.scenes[self.calls][r0 : r0 + h, c0 : c0 + w]
        self.calls += 1
        probs = np.zeros((3, h, w), np.float32)
        probs[1] = inside
        probs[0] = 1.0 - inside
        return probs
        yield  # a generator, like the runner's


def test_blocked_segmentation_owns_an_object_by_its_seed():
    # one nucleus (a bar, columns 52-75) across the border of two 64 px blocks (halo 24),
    # seeded at column 60 (left block's core); the left block sees it with a spur to the right
    # and the right block with a spur to the left, so each block's centroid of it lies in the
    # *other* block's core: owning by centroid lost it
    h, w = 16, 128
    left, right = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    left[6:10, 52:87] = 1.0
    right[6:10, 42:76] = 1.0
    index = np.arange(h * w, dtype=np.float64).reshape(h, w)
    points = np.array([[7.6, 60.2]])
    gen = engine._segment_blocked(
        _TwoViewRunner([left, right]), index, points, "count", 1, 0, 24, 64, False
    )
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        labels = stop.value
    assert labels.max() == 1
    assert (labels[6:10, 52:87] == 1).all() and (labels[:, :52] == 0).all()  # the owner's view


def test_labels_to_image_in_rows_equals_labels_to_original():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 30, (37, 41)).astype(np.int32)
    for shape in [(80, 90), (20, 25), (37, 41)]:
        want = scale.labels_to_original(lab, shape)
        got = np.zeros(shape, dtype=np.int32)
        n = engine._labels_to_image(lab, got)
        np.testing.assert_array_equal(got, want)
        assert n == int(want.max())
