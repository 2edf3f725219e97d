"""Counting and segmentation networks: shapes, gradients, arithmetic branches, registry."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from napari_nalu_count.errors import ModelFileError
from napari_nalu_count.nn import (
    ARCHITECTURES,
    UNIT_KINDS,
    ArithmeticResidual,
    build_model,
    default_config,
    task_of,
    validate_config,
)
from napari_nalu_count.nn.blocks import crop_padding, make_activation, pad_to_multiple

TINY_WIDTHS = {"fcrn_a": [4, 6, 8, 12], "unet_count": [4, 8, 12], "se_unet": [4, 8, 8, 12]}


def tiny(arch: str, **overrides) -> dict:
    cfg = default_config(arch)
    cfg["widths"] = list(TINY_WIDTHS[arch])
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- shapes and padding


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("unit", [None, "nalu"])
def test_odd_input_sizes_keep_their_shape(arch: str, unit: str | None) -> None:
    net = build_model(tiny(arch, unit=unit, in_channels=2)).eval()
    x = torch.randn(1, 2, 97, 131)
    with torch.no_grad():
        y = net(x)
    n_out = 3 if arch == "se_unet" else 1
    assert y.shape == (1, n_out, 97, 131)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("hw", [(1, 1), (2, 7), (5, 3), (8, 8), (17, 9)])
def test_tiny_inputs_fall_back_from_reflect_padding(arch: str, hw: tuple[int, int]) -> None:
    net = build_model(tiny(arch)).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, *hw))
    assert y.shape[-2:] == hw
    assert torch.isfinite(y).all()


def test_stride_per_architecture() -> None:
    assert build_model(tiny("fcrn_a")).stride == 8
    assert build_model(tiny("unet_count")).stride == 4  # 3 widths = 2 pools
    assert build_model(tiny("se_unet")).stride == 8
    assert build_model(tiny("unet_count", widths=[2, 3, 4, 5, 6])).stride == 16


@pytest.mark.parametrize("hw", [(16, 16), (13, 21), (3, 30)])
def test_pad_then_crop_is_identity(hw: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *hw)
    padded, pads = pad_to_multiple(x, 8)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert torch.equal(crop_padding(padded, pads), x)
    if hw == (16, 16):
        assert padded is x


def test_reflect_padding_is_used_when_possible() -> None:
    x = torch.arange(10.0).reshape(1, 1, 1, 10).expand(1, 1, 10, 10).contiguous()
    padded, (top, bottom, left, right) = pad_to_multiple(x, 8)
    assert (top, bottom, left, right) == (3, 3, 3, 3)
    # reflect (not replicate): the column left of the image mirrors column 1
    assert torch.equal(padded[0, 0, top, left - 1], x[0, 0, 0, 1])


def test_empty_input_is_rejected() -> None:
    net = build_model(tiny("fcrn_a")).eval()
    with pytest.raises(ValueError, match="non-empty"):
        net(torch.zeros(1, 1, 0, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        net(torch.zeros(1, 8, 8))


@pytest.mark.parametrize("name,cls", [("relu", "ReLU"), ("leaky_relu", "LeakyReLU")])
def test_activation_is_selectable(name: str, cls: str) -> None:
    net = build_model(tiny("fcrn_a", activation=name))
    kinds = {type(m).__name__ for m in net.modules()}
    assert cls in kinds
    other = {"ReLU", "LeakyReLU"} - {cls}
    assert not (kinds & other)


def test_linear_activation_has_no_nonlinearity() -> None:
    assert isinstance(make_activation("linear"), torch.nn.Identity)
    net = build_model(tiny("unet_count", activation="linear"))
    kinds = {type(m).__name__ for m in net.modules()}
    assert not kinds & {"ReLU", "LeakyReLU"}


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "arch,unit,extra",
    [
        ("fcrn_a", "nalu", {"fre": {"B": 3, "X": 2.5, "seed": 1}}),
        ("fcrn_a", "nmu", {}),
        ("unet_count", "nalu_tanh", {"fre": {"B": 2, "X": 4.0, "seed": 0}}),
        ("unet_count", "nau", {"deep_supervision": True}),
        ("se_unet", "nac", {"fre": {"B": 4, "X": 3.0, "seed": 2}, "deep_supervision": True}),
        ("se_unet", "nalu_hard_sigmoid", {}),
        ("se_unet", None, {"deep_supervision": True, "activation": "leaky_relu"}),
    ],
)
def test_gradients_reach_every_parameter(arch: str, unit: str | None, extra: dict) -> None:
    net = build_model(tiny(arch, unit=unit, **extra)).train()
    x = torch.randn(2, 1, 20, 28)
    y = net(x)
    assert y.shape[-2:] == x.shape[-2:]
    loss = (y - torch.randn_like(y)).pow(2).mean() + 0.01 * net.regularization()
    if extra.get("deep_supervision"):
        assert net.aux_logits is not None and net.aux_logits.shape == y.shape
        loss = loss + net.aux_logits.pow(2).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
    # the encoder's first conv and the head both learn (not all-zero gradients)
    first = next(iter(net.parameters()))
    assert first.grad.abs().sum() > 0


def test_aux_logits_only_in_training_and_deepcopy_safe() -> None:
    net = build_model(tiny("se_unet", deep_supervision=True)).train()
    y = net(torch.randn(2, 1, 19, 23))
    assert net.aux_logits.shape == y.shape
    clone = copy.deepcopy(net)  # must not choke on the stored autograd graph
    assert clone.aux_logits is None
    net.eval()
    with torch.no_grad():
        net(torch.randn(1, 1, 19, 23))
    assert net.aux_logits is None
    plain = build_model(tiny("se_unet")).train()
    plain(torch.randn(2, 1, 16, 16))
    assert plain.aux_logits is None


def test_regularization_sums_the_units() -> None:
    net = build_model(tiny("fcrn_a", unit="nau"))
    units = [m for m in net.modules() if isinstance(m, ArithmeticResidual)]
    assert len(units) == 3
    expected = sum(m.regularization() for m in units)
    assert net.regularization().ndim == 0
    assert torch.allclose(net.regularization(), expected)
    assert net.regularization() > 0
    plain = build_model(tiny("unet_count"))
    assert plain.regularization().ndim == 0 and float(plain.regularization()) == 0.0
    plain.reselect_fre(3)  # no FRE: a no-op


# --------------------------------------------------------------------------- arithmetic branches


@pytest.mark.parametrize("arch", ["fcrn_a", "unet_count", "se_unet"])
@pytest.mark.parametrize("unit", UNIT_KINDS)
def test_arithmetic_branches_are_used(arch: str, unit: str) -> None:
    """Changing only the units' parameters changes the output and the loss gradient.

    (The counting paper's public code computed these branches and then overwrote them.)
    """
    torch.manual_seed(1)
    net = build_model(tiny(arch, unit=unit)).train()
    residuals = [m for m in net.modules() if isinstance(m, ArithmeticResidual)]
    assert len(residuals) == (3 if arch == "fcrn_a" else len(TINY_WIDTHS[arch]) - 1)
    unit_params = {id(p) for r in residuals for p in r.unit.parameters()}
    assert unit_params
    x = torch.randn(2, 1, 16, 16)
    target = torch.randn(2, net.config["out_channels"], 16, 16)

    def run() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        y = net(x)
        loss = (y - target).pow(2).mean()
        loss.backward()
        head_grad = net.head.weight.grad.clone()
        u_grads = [p.grad for r in residuals for p in r.unit.parameters()]
        return y.detach().clone(), head_grad, u_grads

    y0, g0, unit_grads = run()
    # every unit parameter is on the path to the loss
    assert all(g is not None and g.abs().sum() > 0 for g in unit_grads)
    others = {n: p.detach().clone() for n, p in net.named_parameters() if id(p) not in unit_params}
    with torch.no_grad():
        for r in residuals:
            for p in r.unit.parameters():
                p.add_(0.2 * torch.randn_like(p))
    y1, g1, _ = run()
    for n, p in net.named_parameters():  # only the units changed
        if id(p) not in unit_params:
            assert torch.equal(p, others[n]), n
    assert not torch.allclose(y0, y1), "output ignores the arithmetic branches"
    assert not torch.allclose(g0, g1), "loss gradient ignores the arithmetic branches"


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_registry_round_trip(arch: str) -> None:
    cfg = default_config(arch)
    net = build_model(cfg)
    assert net.config == cfg
    assert task_of(cfg) == ("segment" if arch == "se_unet" else "count")
    again = build_model(json.loads(json.dumps(net.config)))
    assert list(again.state_dict()) == list(net.state_dict())
    again.load_state_dict(net.state_dict(), strict=True)
    # keys depend only on the config, also with units, FRE and deep supervision
    full = tiny(arch, unit="nalu", fre={"B": 2, "X": 3.0, "seed": 5})
    if arch != "fcrn_a":
        full["deep_supervision"] = True
    a, b = build_model(full), build_model(copy.deepcopy(full))
    assert list(a.state_dict()) == list(b.state_dict())
    assert not any("fre" in k for k in a.state_dict())


def test_default_widths_follow_the_papers() -> None:
    assert default_config("fcrn_a")["widths"] == [32, 64, 128, 512]
    assert default_config("unet_count")["widths"] == [64, 128, 256]
    assert default_config("se_unet")["widths"] == [64, 128, 256, 512]
    assert default_config("se_unet")["out_channels"] == 3


def test_missing_keys_take_defaults() -> None:
    cfg = validate_config({"architecture": "se_unet", "widths": [4, 8]})
    assert cfg["out_channels"] == 3 and cfg["unit"] is None and cfg["fre"] is None
    cfg = validate_config({"architecture": "fcrn_a", "fre": {"B": 1, "X": 2}})
    assert cfg["fre"] == {"B": 1, "X": 2.0, "seed": 0}


@pytest.mark.parametrize(
    "change,key",
    [
        ({"architecture": "resnet"}, "architecture"),
        ({"color": "red"}, "color"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": True}, "in_channels"),
        ({"out_channels": 2}, "out_channels"),
        ({"activation": "gelu"}, "activation"),
        ({"unit": "nalu2"}, "unit"),
        ({"widths": [8, 16, 32]}, "widths"),
        ({"widths": [8, 16, 0, 32]}, "widths"),
        ({"widths": "32,64"}, "widths"),
        ({"fre": {"B": 13, "X": 2.0, "seed": 0}}, "fre.B"),
        ({"fre": {"B": 1, "X": float("nan"), "seed": 0}}, "fre.X"),
        ({"fre": {"B": 1, "X": 2.0, "seed": -1}}, "fre.seed"),
        ({"fre": {"B": 1, "X": 2.0, "extra": 1}}, "fre"),
        ({"fre": {"X": 2.0}}, "fre"),
        ({"fre": 3}, "fre"),
        ({"deep_supervision": "yes"}, "deep_supervision"),
        ({"deep_supervision": True}, "deep_supervision"),
    ],
)
def test_bad_configs_name_the_key(change: dict, key: str) -> None:
    cfg = tiny("fcrn_a")
    cfg.update(change)
    with pytest.raises(ModelFileError, match=key.replace(".", r"\.")) as err:
        build_model(cfg)
    assert "allowed" in str(err.value)


def test_bad_segment_configs() -> None:
    with pytest.raises(ModelFileError, match="out_channels"):
        validate_config(tiny("se_unet", out_channels=1))
    with pytest.raises(ModelFileError, match="widths"):
        validate_config(tiny("unet_count", widths=[8]))
    with pytest.raises(ModelFileError, match="architecture"):
        validate_config({"widths": [8, 16]})
    with pytest.raises(ModelFileError, match="JSON object"):
        validate_config(["fcrn_a"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- flops benchmark


def test_flops_match_a_hand_count_for_fcrn_a() -> None:
    from napari_nalu_count.bench.flops import measure

    s = 32
    w1, w2, w3, wb = (max(1, round(w / 16)) for w in (32, 64, 128, 512))
    row = measure("fcrn_a", None, size=s, width_factor=1 / 16)
    assert row["widths"] == [w1, w2, w3, wb]
    macs = 9 * (1 * w1 * s * s + w1 * w2 * (s // 2) ** 2 + w2 * w3 * (s // 4) ** 2)
    macs += 9 * (w3 * wb * (s // 8) ** 2 + wb * w3 * (s // 4) ** 2 + w3 * w2 * (s // 2) ** 2)
    macs += 9 * w2 * w1 * s * s + w1 * s * s  # last decoder conv + 1x1 head
    assert row["flops_per_pixel"] == pytest.approx(2 * macs / s**2)
    nmu = measure("fcrn_a", "nmu", size=s, width_factor=1 / 16)
    assert nmu["flops_per_pixel"] > row["flops_per_pixel"]
    assert nmu["params"] > row["params"]


def test_flops_command_writes_json(tmp_path) -> None:
    import argparse

    from napari_nalu_count.bench import flops

    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    flops.configure(parser)
    out = tmp_path / "flops.json"
    args = parser.parse_args(
        ["--json", str(out), "--size", "32", "--width-factor", "0.0625", "--arch", "se_unet"]
    )
    assert flops.run(args) == 0
    report = json.loads(out.read_text())
    assert [r["unit"] for r in report["rows"]] == ["none", *UNIT_KINDS]
    assert all(r["architecture"] == "se_unet" and r["gflops"] > 0 for r in report["rows"])
