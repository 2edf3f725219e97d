"""Feature Random Enhancement: identity in eval, exact channel scaling in training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_nalu_count.errors import ModelFileError
from napari_nalu_count.nn import FeatureRandomEnhancement, build_model, default_config


def selected(fre: FeatureRandomEnhancement) -> list[int]:
    return fre.selected.tolist()


def test_eval_mode_is_exactly_the_identity() -> None:
    fre = FeatureRandomEnhancement(16, B=5, X=632.0, seed=3).eval()
    x = torch.randn(2, 16, 7, 9)
    y = fre(x)
    assert torch.equal(y, x)
    fre.reselect(4)
    assert torch.equal(fre(x), x)


def test_training_mode_scales_exactly_the_selected_channels() -> None:
    fre = FeatureRandomEnhancement(16, B=5, X=632.0, seed=3).train()
    x = torch.randn(2, 16, 7, 9)
    y = fre(x)
    sel = selected(fre)
    assert len(sel) == 5 and len(set(sel)) == 5 and all(0 <= c < 16 for c in sel)
    rest = [c for c in range(16) if c not in sel]
    assert torch.equal(y[:, sel], x[:, sel] * 632.0)
    assert torch.equal(y[:, rest], x[:, rest])


def test_gradient_is_scaled_like_the_features() -> None:
    fre = FeatureRandomEnhancement(8, B=3, X=4.0, seed=0).train()
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    fre(x).sum().backward()
    expected = torch.ones(8)
    expected[fre.selected] = 4.0
    assert torch.equal(x.grad[0, :, 0, 0], expected)


def test_reselect_is_reproducible_from_seed_and_epoch() -> None:
    a = FeatureRandomEnhancement(64, B=8, X=2.0, seed=7)
    b = FeatureRandomEnhancement(64, B=8, X=2.0, seed=7)
    first = selected(a)
    assert first == selected(b)
    torch.manual_seed(123)  # torch's global RNG plays no part
    a.reselect(1)
    torch.manual_seed(999)
    b.reselect(1)
    assert selected(a) == selected(b)
    assert selected(a) != first  # a new epoch gives a new selection
    picks = set()
    for epoch in range(10):
        a.reselect(epoch)
        picks.add(tuple(selected(a)))
    assert len(picks) > 5
    a.reselect(0)
    assert selected(a) == first  # back to epoch 0: the same channels again
    other_seed = FeatureRandomEnhancement(64, B=8, X=2.0, seed=8)
    assert selected(other_seed) != first


def test_b_zero_and_b_all() -> None:
    x = torch.randn(1, 6, 3, 3)
    none = FeatureRandomEnhancement(6, B=0, X=10.0).train()
    assert torch.equal(none(x), x)
    every = FeatureRandomEnhancement(6, B=6, X=10.0).train()
    assert torch.equal(every(x), x * 10.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"channels": 8, "B": 9, "X": 2.0}, "B=9"),
        ({"channels": 8, "B": -1, "X": 2.0}, "B=-1"),
        ({"channels": 8, "B": 2.5, "X": 2.0}, "B=2.5"),
        ({"channels": 8, "B": 2, "X": float("inf")}, "X=inf"),
        ({"channels": 8, "B": 2, "X": 2.0, "seed": -3}, "seed=-3"),
        ({"channels": 0, "B": 0, "X": 2.0}, "channels"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureRandomEnhancement(**kwargs)
    with pytest.raises(ValueError, match="epoch"):
        FeatureRandomEnhancement(4, 1, 2.0).reselect(-1)


def test_b_larger_than_the_bottleneck_is_a_config_error() -> None:
    cfg = default_config("se_unet")
    cfg["widths"] = [4, 8, 16]
    cfg["fre"] = {"B": 17, "X": 5.0, "seed": 0}
    with pytest.raises(ModelFileError, match=r"fre\.B.*widths\[-1\]=16"):
        build_model(cfg)


def test_fre_is_not_in_the_state_dict_and_moves_with_the_module() -> None:
    fre = FeatureRandomEnhancement(8, B=2, X=3.0)
    assert fre.state_dict() == {}
    fre = fre.to(torch.float64).train()
    x = torch.randn(1, 8, 2, 2, dtype=torch.float64)
    assert fre(x).dtype == torch.float64


@pytest.mark.parametrize("arch", ["se_unet", "unet_count", "fcrn_a"])
def test_network_with_fre_equals_network_without_in_eval(arch: str) -> None:
    cfg = default_config(arch)
    cfg["widths"] = [4, 6, 8, 8] if arch != "unet_count" else [4, 6, 8]
    with_fre = build_model({**cfg, "fre": {"B": 3, "X": 50.0, "seed": 1}})
    without = build_model(cfg)
    without.load_state_dict(with_fre.state_dict(), strict=True)
    x = torch.randn(2, 1, 24, 24)
    with_fre.eval()
    without.eval()
    with torch.no_grad():
        assert torch.equal(with_fre(x), without(x))
    # in training the bottleneck is enhanced, so outputs differ
    with_fre.train()
    without.train()
    with torch.no_grad():
        assert not torch.allclose(with_fre(x), without(x))


def test_network_reselect_fre_reaches_the_module() -> None:
    cfg = default_config("se_unet")
    cfg["widths"] = [4, 8, 32]
    cfg["fre"] = {"B": 4, "X": 2.0, "seed": 11}
    net = build_model(cfg)
    ref = FeatureRandomEnhancement(32, B=4, X=2.0, seed=11)
    assert selected(net.fre) == selected(ref)
    net.reselect_fre(5)
    ref.reselect(5)
    assert net.fre.epoch == 5 and selected(net.fre) == selected(ref)


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 600),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 10_000),
)
def test_selection_is_a_valid_subset(channels: int, frac: float, seed: int, epoch: int) -> None:
    B = int(round(frac * channels))
    sel = FeatureRandomEnhancement.selection(channels, B, seed, epoch)
    assert len(sel) == B == len(set(sel.tolist()))
    assert ((sel >= 0) & (sel < channels)).all()
    assert (sel[1:] > sel[:-1]).all()
    again = FeatureRandomEnhancement.selection(channels, B, seed, epoch)
    assert (sel == again).all()
