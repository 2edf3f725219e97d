"""One image -> planes rule for inference, training, fine-tuning and the fine-tune dock.

An RGB image must reach the network as the same plane whether it is counted or trained on, and
a model's card records the rule it was trained with, which inference then applies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nalu_count.data.normalize import percentile_normalize
from napari_nalu_count.data.readers import Sample
from napari_nalu_count.data.synthetic import synthetic_cells
from napari_nalu_count.errors import InputError, ModelFileError
from napari_nalu_count.infer.axes import (
    DEFAULT_INPUT_RULE,
    input_rule,
    iter_planes,
    make_plan,
    to_planes,
)
from napari_nalu_count.models import load_model, make_card, save_model
from napari_nalu_count.nn.registry import build_model
from napari_nalu_count.train import TrainConfig, fine_tune
from napari_nalu_count.train.dataset import prepare, reduce_samples


def _rgb(seed: int = 0, shape=(64, 72)) -> tuple[np.ndarray, Sample]:
    """Nuclei in the blue channel, a dimmer different pattern in red, noise in green."""
    blue = synthetic_cells(shape, n_cells=20, diameter=9.0, seed=seed)
    red = synthetic_cells(shape, n_cells=6, diameter=14.0, seed=seed + 100).image
    rng = np.random.default_rng(seed)
    green = rng.integers(0, 300, shape)
    rgb = np.stack([red // 2, green, blue.image], axis=-1).astype(np.uint16)
    return rgb, blue


def _inference_plane(image: np.ndarray, card: dict | None = None, axes=None) -> np.ndarray:
    """The plane the engine feeds the network (before normalisation)."""
    plan = make_plan(image, axes, None, input_rule(card))
    (_, plane), = list(iter_planes(image, plan))  # fmt: skip
    return plane


def _save(name: str, directory, **card_fields) -> object:
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    card = make_card(name, "count", net.config, diameter=9.0, **card_fields)
    return save_model(net, card, directory / name)


def test_training_and_inference_see_the_same_plane_for_rgb():
    rgb, blue = _rgb()
    plane = _inference_plane(rgb)
    np.testing.assert_array_equal(plane, rgb.max(axis=-1).astype(np.float32))  # old cards: max
    (item,) = prepare([Sample(image=rgb, dots=blue.dots, name="rgb")], "count")
    np.testing.assert_allclose(item.image[0], percentile_normalize(plane), rtol=0, atol=1e-6)
    # channel-first colour planes with axes recorded by a reader take the same path
    chw = Sample(image=np.moveaxis(rgb, -1, 0), dots=blue.dots, meta={"axes": "CYX"})
    with pytest.raises(InputError, match="3 channels"):  # CYX is not RGB: inference asks too
        prepare([chw], "count")
    with pytest.raises(InputError, match="3 channels"):
        make_plan(chw.image, "CYX")
    (item,) = prepare([chw], "count", input_rule={"rgb": "max", "channel": "max"})
    np.testing.assert_allclose(item.image[0], percentile_normalize(plane), atol=1e-6)


def test_to_planes_is_the_inference_reduction():
    rgb, _ = _rgb()
    stack = np.stack([rgb, rgb[::-1]])
    planes = to_planes(stack, "TYXC")
    assert planes.shape == (2, 64, 72)
    np.testing.assert_array_equal(planes[1], _inference_plane(rgb[::-1]))
    rule = {"rgb": 2, "channel": None}
    np.testing.assert_array_equal(to_planes(rgb, "YXC", rule=rule), rgb[..., 2])
    np.testing.assert_array_equal(to_planes(rgb, "YXC", channel="mean", rule=rule),
                                  rgb.astype(np.float32).mean(-1))  # fmt: skip
    assert to_planes(rgb[..., 0], "YX").dtype == np.uint16  # no reduction: dtype kept


def test_fine_tune_records_the_start_rule_and_inference_applies_it(tmp_path):
    rgb, blue = _rgb(seed=3)
    # a start model whose card says: RGB images -> the blue channel
    start = _save("blue-start", tmp_path, input={"rgb": 2, "channel": None})
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=1, patch_size=32, lr=1e-3)
    res = fine_tune(start, Sample(image=rgb, dots=blue.dots, name="u"), name="blue-ft", cfg=cfg)
    card = load_model("blue-ft").card
    assert card["input"] == {"rgb": 2, "channel": None}
    assert res.card["input"] == card["input"]
    np.testing.assert_array_equal(_inference_plane(rgb, card), rgb[..., 2])

    from napari_nalu_count import count

    on_rgb = count(rgb, "blue-ft", device="cpu")
    on_blue = count(rgb[..., 2], "blue-ft", device="cpu")
    np.testing.assert_allclose(on_rgb.density, on_blue.density, rtol=1e-5, atol=1e-7)
    explicit = count(rgb, "blue-ft", channel="max", device="cpu")  # channel= wins
    assert np.abs(explicit.density - on_blue.density).max() > 1e-6  # well above the tolerance above


def test_fine_tune_from_an_old_card_records_the_default(tmp_path):
    rgb, blue = _rgb(seed=4)
    start = _save("old-start", tmp_path)  # no "input": today's inference rule
    assert "input" not in load_model(start).card
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, patch_size=32)
    fine_tune(start, Sample(image=rgb, dots=blue.dots), name="old-ft", cfg=cfg)
    assert load_model("old-ft").card["input"] == DEFAULT_INPUT_RULE
    # the sample the network trained on is the max plane, as inference gives it
    (reduced,) = reduce_samples([Sample(image=rgb, dots=blue.dots)], DEFAULT_INPUT_RULE)
    np.testing.assert_array_equal(reduced.image, _inference_plane(rgb))


def test_cli_train_records_the_rule(tmp_path, capsys):
    from napari_nalu_count.cli import main

    args = "--data synthetic:2 --epochs 1 --steps 1 --patch 32 --batch 1 --widths 4,8"
    rc = main(["train", *args.split(), "--name", "cli-rule", "--device", "cpu"])
    assert rc == 0
    assert load_model("cli-rule").card["input"] == DEFAULT_INPUT_RULE


def test_bad_input_rules_are_refused(tmp_path):
    with pytest.raises(InputError, match="cannot save"):
        _save("bad-rule", tmp_path, input={"rgb": "median"})
    path = _save("ok-rule", tmp_path, input={"rgb": "mean", "channel": 1})
    import json

    card_path = tmp_path / "ok-rule.json"
    card = json.loads(card_path.read_text())
    card["input"] = {"rgb": -1}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="input rule"):
        load_model(path)
    rule = input_rule({"input": {"channel": 1}})
    assert rule == {"rgb": "max", "channel": 1}
    # a card's channel rule applies to non-RGB channels when the caller gives none
    planes = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    plan = make_plan(planes, "CYX", None, rule)
    assert plan.channel == 1
    with pytest.raises(InputError, match="out of range"):
        make_plan(planes, "CYX", None, {"rgb": "max", "channel": 5})


@pytest.mark.gui
def test_finetune_dock_reduces_rgb_with_the_inference_rule(make_napari_viewer):
    from napari_nalu_count._widgets.finetune_widget import collect_samples

    rgb, blue = _rgb(seed=5)
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, rgb=True, name="rgb")
    points = viewer.add_points(blue.dots, name="dots")
    _, (sample,) = collect_samples([(layer, points)])
    np.testing.assert_array_equal(sample.image, _inference_plane(rgb))  # max, not mean
    _, (sample,) = collect_samples([(layer, points)], rule={"rgb": "luminance", "channel": None})
    np.testing.assert_array_equal(
        sample.image, _inference_plane(rgb, {"input": {"rgb": "luminance"}})
    )
