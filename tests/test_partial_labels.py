"""Training on annotations inside boxes only, and on count-level labels (density integrals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.boxes import as_boxes, box_counts, box_mask, dots_in_boxes
from napari_nalu_count.data.readers import Sample
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import InputError
from napari_nalu_count.models import load_model, make_card, save_model
from napari_nalu_count.nn.registry import build_model
from napari_nalu_count.train import TrainConfig, fine_tune, train
from napari_nalu_count.train.dataset import (
    CountLabelSampler,
    PatchSampler,
    prepare,
    rescale_samples,
)
from napari_nalu_count.train.finetune import attach_annotations, split_holdout
from napari_nalu_count.train.loop import evaluate
from napari_nalu_count.train.validate import end_to_end_metrics


@pytest.fixture
def start_model(tmp_path):
    torch.manual_seed(0)
    config = {"architecture": "unet_count", "widths": [4, 8], "unit": "nac"}
    net = build_model(config)
    card = make_card("tiny-start", "count", net.config, diameter=9.0, metrics={"split": "none"})
    return save_model(net, card, tmp_path / "start" / "tiny-start")


def test_box_helpers():
    boxes = as_boxes([[0, 0, 10, 10], [20, 20, 30, 40]], (25, 100))
    assert boxes[1].tolist() == [20, 20, 25, 40]  # clipped to the image
    dots = np.array([[5.0, 5.0], [9.4, 9.4], [9.6, 5.0], [22.0, 39.0], [22.0, 40.0]])
    assert dots_in_boxes(dots, boxes).tolist() == [True, True, False, True, False]
    assert box_counts(dots, boxes).tolist() == [2, 1]
    mask = box_mask((25, 100), boxes)
    assert mask.sum() == 100 + 5 * 20
    with pytest.raises(InputError):
        as_boxes([[5, 5, 5, 9]])
    with pytest.raises(InputError):
        as_boxes("not boxes")


def test_sample_count_inside_boxes_and_from_counts():
    s = synthetic_cells((64, 64), n_cells=12, diameter=8.0, seed=1)
    boxed = Sample(image=s.image, dots=s.dots, boxes=np.array([[0, 0, 32, 64]]))
    assert boxed.count == int((s.dots[:, 0] < 31.5).sum())
    assert Sample(image=s.image, counts=np.array([3.0, 4.0])).count == 7.0


def test_region_follows_every_geometric_transform():
    """The valid mask of a boxed item is exactly the box, moved with the patch: an image that
    is 1 inside the box and 0 outside keeps matching it after flips, rotations and zooms."""
    img = np.zeros((80, 80), np.float32)
    img[10:50, 30:70] = 1.0
    s = Sample(image=img, dots=np.array([[20.0, 40.0]]), boxes=np.array([[10, 30, 50, 70]]))
    items = prepare([s], "count", normalization={"method": "percentile", "low": 0, "high": 100})
    assert items[0].region.sum() == 40 * 40
    from napari_nalu_count.data.augment import Augmenter

    sampler = PatchSampler(
        items,
        "count",
        32,
        8,
        np.random.default_rng(0),
        augment=Augmenter(intensity=None, gamma=None),
        scale_jitter=(0.8, 1.25),
    )
    x, y, valid = sampler.batch()
    assert valid.sum() > 0
    for i in range(8):
        inside = valid[i, 0] > 0
        # crops are drawn over the box; the mask covers the bright (box) pixels and no others
        assert torch.all(x[i, 0][inside] > 0.4)
        assert torch.all(x[i, 0][~inside] < 0.6)


def test_segment_boxes_keep_labels_inside():
    s = synthetic_cells((64, 64), n_cells=10, diameter=10.0, seed=2)
    boxed = Sample(image=s.image, labels=s.labels, boxes=np.array([[0, 0, 64, 32]]))
    items = prepare([boxed], "segment")
    sampler = PatchSampler(items, "segment", 32, 4, np.random.default_rng(1), augment=False)
    x, y, valid = sampler.batch()
    for i in range(4):
        # classes inside the region come from the true labels: some cell pixels are there
        assert valid[i].sum() > 0
    assert y.dtype == torch.int64


def test_prepare_count_labels_and_errors():
    s = synthetic_cells((64, 64), n_cells=12, diameter=8.0, seed=1)
    whole = prepare([Sample(image=s.image, counts=12)], "count")[0]
    assert whole.count_only and whole.count == 12 and whole.boxes.tolist() == [[0, 0, 64, 64]]
    two = prepare(
        [Sample(image=s.image, counts=[2, 3], boxes=[[0, 0, 10, 10], [20, 20, 40, 40]])], "count"
    )[0]
    assert two.count == 5 and two.region.sum() == 100 + 400
    with pytest.raises(InputError, match="one per box"):
        prepare([Sample(image=s.image, counts=[1, 2])], "count")
    with pytest.raises(InputError, match=">= 0"):
        prepare([Sample(image=s.image, counts=-1)], "count")
    with pytest.raises(InputError, match="segmentation needs"):
        prepare([Sample(image=s.image, counts=3)], "segment")


def test_count_label_sampler_region_and_count():
    s = synthetic_cells((64, 80), n_cells=12, diameter=8.0, seed=1)
    items = prepare(
        [Sample(image=s.image, counts=[4, 7], boxes=[[0, 0, 20, 20], [30, 30, 60, 70]])], "count"
    )
    sampler = CountLabelSampler(items, 6, np.random.default_rng(0), scale_jitter=(0.8, 1.25))
    seen = set()
    for x, region, n in sampler.batch():
        assert x.shape[-2:] == region.shape[-2:] and region.sum() > 0
        seen.add(n)
    assert seen <= {4.0, 7.0}


def test_rescale_keeps_boxes_and_counts():
    s = Sample(image=np.zeros((100, 60), np.float32), counts=[5], boxes=[[10, 20, 50, 40]])
    (r,) = rescale_samples([s], 0.5)
    assert r.boxes.tolist() == [[5, 10, 25, 20]] and list(r.counts) == [5]


def test_count_labels_teach_the_integral():
    """A network trained on image-level counts only moves its density integrals to them."""
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8], "unit": "nac"})
    imgs = [synthetic_cells((48, 48), n_cells=n, diameter=8.0, seed=n) for n in (4, 8, 12, 16)]
    # labels far from what the untrained network integrates to: 30-45 per image
    samples = [Sample(image=s.image, counts=30.0 + len(s.dots)) for s in imgs]
    items = prepare(samples, "count")
    before = evaluate(net, items, "count")["mae"]
    cfg = TrainConfig(epochs=6, steps_per_epoch=10, batch_size=2, lr=1e-2, patience=10)
    res = train(net, samples, samples, "count", cfg)
    after = evaluate(res.net, items, "count")["mae"]
    assert before > 20 and after < 0.6 * before


def test_attach_annotations_and_holdout_of_a_box():
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="counts="):
        attach_annotations([img], None, [[[0, 0, 10, 10]]])
    (s,) = attach_annotations([img], [3], None)
    assert isinstance(s, Sample) and s.counts.tolist() == 3.0
    with pytest.raises(InputError, match="one entry per image"):
        attach_annotations([img, img], [3], None)
    boxed = Sample(
        image=img, dots=np.zeros((0, 2)), boxes=np.array([[0, 0, 8, 8], [20, 20, 30, 30]])
    )
    train_s, held, how = split_holdout([boxed], seed=0)
    assert len(train_s[0].boxes) == 1 and len(held[0].boxes) == 1 and "box" in how
    with pytest.raises(InputError, match="second box"):
        split_holdout([Sample(image=img, dots=np.zeros((0, 2)), boxes=np.array([[0, 0, 8, 8]]))])
    with pytest.raises(InputError, match="single image"):
        split_holdout([Sample(image=img, counts=3)])


def test_fine_tune_with_boxes_and_counts(start_model):
    s = synthetic_cells((96, 96), n_cells=30, diameter=9.0, seed=5)
    boxes = np.array([[0, 0, 48, 48], [48, 48, 96, 96]])
    cfg = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=2, patch_size=32, lr=3e-3)
    inside = dots_in_boxes(s.dots, boxes)
    # dots only inside the boxes; what lies outside is unknown to training
    user = Sample(image=s.image, dots=s.dots[inside], name="user")
    res = fine_tune(start_model, [user], name="boxed", cfg=cfg, boxes=[boxes])
    card = load_model("boxed").card
    assert card["training"]["data"]["n_boxes"] == 2
    assert "held-out box" in card["metrics"]["split"]
    assert res.metrics_before["n_cells"] == int(
        box_counts(s.dots, boxes[:1]).sum()
    ) or res.metrics_before["n_cells"] == int(box_counts(s.dots, boxes[1:]).sum())
    # count-level labels only, plain images
    imgs = [synthetic_cells((64, 64), n_cells=n, diameter=9.0, seed=n) for n in (10, 20, 30)]
    res2 = fine_tune(
        start_model,
        [x.image for x in imgs],
        name="from-counts",
        cfg=cfg,
        counts=[len(x.dots) for x in imgs],
    )
    assert res2.path is not None
    data = load_model("from-counts").card["training"]["data"]
    assert data["count_labels"]["n_images"] == 3


def test_end_to_end_metrics_inside_boxes(start_model):
    s = synthetic_cells((64, 64), n_cells=20, diameter=9.0, seed=8)
    boxes = np.array([[0, 0, 32, 64]])
    model = load_model(start_model)
    whole = end_to_end_metrics(model, [Sample(image=s.image, dots=s.dots)], [9.0])
    part = end_to_end_metrics(model, [Sample(image=s.image, dots=s.dots, boxes=boxes)], [9.0])
    assert part["n_cells"] == int(dots_in_boxes(s.dots, boxes).sum()) < whole["n_cells"]
    from napari_nalu_count.infer import count

    res = count(s.image, model, diameter=9.0, device="cpu")
    pred = float(res.density[:32].sum())
    assert part["mae"] == pytest.approx(abs(pred - part["n_cells"]), rel=1e-4)
