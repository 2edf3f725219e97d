"""Rules every front end shares, now in the engine: diameter parsing, axes guesses, channel
choices, the model-resolution diameter, per-plane counts and counts inside regions."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from napari_nalu_count import infer
from napari_nalu_count.commands.count import diameter_arg
from napari_nalu_count.errors import InputError
from napari_nalu_count.models import free_name, make_card, name_taken, save_model
from napari_nalu_count.nn.registry import build_model


def test_one_diameter_rule_for_api_cli_and_docks():
    assert infer.parse_diameter(None) is None
    assert infer.parse_diameter("  ") is None  # a blank field: found automatically
    assert infer.parse_diameter(" Estimate ") == "auto" == infer.parse_diameter("AUTO")
    assert infer.parse_diameter("12.5") == 12.5 == infer.parse_diameter(12.5)
    for bad in ("abc", "-3", "0", "nan", "inf", True, [3], 1e9):
        with pytest.raises(InputError, match="diameter"):
            infer.parse_diameter(bad)
    assert diameter_arg("estimate") == "auto" and diameter_arg("7") == 7.0
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        diameter_arg("-1")


def test_guess_axes_never_fails_and_prefers_the_layer_labels():
    assert infer.guess_axes((64, 64)) == "YX"
    assert infer.guess_axes((8, 64, 64)) == "TYX"
    assert infer.guess_axes((3, 64, 64)) == "TYX"  # ambiguous for infer_axes: a guess
    assert infer.guess_axes((64, 64, 3), rgb=True) == "YXC"
    assert infer.guess_axes((5, 64, 64, 3), rgb=True) == "TYXC"
    assert infer.guess_axes((3, 2, 32, 32)) == "TZYX"
    assert infer.guess_axes((3, 2, 32, 32), labels=("z", "t", "y", "x")) == "ZTYX"
    # napari's default labels are not axis letters: ignored
    assert infer.guess_axes((3, 2, 32, 32), labels=("0", "1", "2", "3")) == "TZYX"
    assert infer.guess_axes((64, 64, 3), rgb=True, labels=("Y", "X")) == "YXC"
    assert infer.validate_axes("tyx", (3, 8, 8)) == "TYX"
    with pytest.raises(InputError, match="letters"):
        infer.validate_axes("YX", (3, 8, 8))


def test_channel_choices():
    assert infer.channel_choices(2) == [0, 1, "mean", "max"]
    assert infer.channel_choices(3) == [0, 1, 2, "mean", "max", "luminance"]


def test_native_diameter_divides_by_the_input_scale():
    assert infer.native_diameter({"diameter": 10.0, "input_scale": 0.5}) == 20.0
    assert infer.native_diameter({"diameter": 12}) == 12.0
    assert infer.native_diameter({"diameter": None}) is None
    assert infer.native_diameter(None) is None


def test_region_counts_2d_and_stack():
    density = np.zeros((2, 10, 10), np.float32)
    density[0, 2, 2] = 1.0
    density[1, 2, 2] = 2.0
    density[1, 8, 8] = 0.5
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :5, :5] = True
    masks[1, 5:, 5:] = True
    out = infer.region_counts(density, masks)
    np.testing.assert_allclose(out["region 1"], [1.0, 2.0])
    np.testing.assert_allclose(out["region 2"], [0.0, 0.5])
    assert infer.region_counts(density[1], masks)["region 2"] == pytest.approx(0.5)
    # per-plane masks count each plane only where its own mask is set
    per_plane = np.zeros((1, 2, 10, 10), bool)
    per_plane[0, 1] = True
    assert infer.region_counts(density, per_plane, names=["b"])["b"].tolist() == [0.0, 2.5]
    with pytest.raises(InputError):
        infer.region_counts(density, masks[:, :5])
    with pytest.raises(InputError):
        infer.region_counts(density, masks, names=["only one"])


def test_plane_counts_follow_the_stack_axes():
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card("rule-count", "count", net.config, diameter=10.0), "rule-count")
    image = np.random.default_rng(0).random((3, 2, 24, 24)).astype(np.float32)
    res = infer.count(image, "rule-count", axes="ZTYX", device="cpu")
    assert res.plane_counts.shape == (3, 2)
    np.testing.assert_allclose(res.plane_counts.ravel(), res.count)
    np.testing.assert_allclose(res.plane_counts, res.density.sum(axis=(-2, -1)), rtol=1e-4)
    flat = infer.count(image[0, 0], "rule-count", device="cpu")
    assert flat.plane_counts.shape == ()


def test_model_names_taken_and_free():
    assert name_taken("nuclei-count") == "bundled"
    assert name_taken("mine") is None and free_name("mine") == "mine"
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8]})
    save_model(net, make_card("mine", "count", net.config), "mine")
    assert name_taken("mine") == "exists" and free_name("mine") == "mine-2"
