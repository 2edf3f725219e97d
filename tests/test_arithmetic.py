"""Tests for napari_nalu_count.nn.arithmetic: formulas, shapes and numerical safety."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_nalu_count.nn.arithmetic import (
    LOG_MAX,
    NAC,
    NALU,
    NAU,
    NMU,
    UNIT_KINDS,
    PerPixel,
    build_unit,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_shapes_dense_and_per_pixel(kind: str) -> None:
    torch.manual_seed(0)
    unit = build_unit(kind, 4, 3)
    assert unit(torch.rand(5, 4)).shape == (5, 3)
    assert unit(torch.rand(2, 6, 4)).shape == (2, 6, 3)
    pp = build_unit(kind, 4, 3, per_pixel=True)
    assert isinstance(pp, PerPixel)
    y = pp(torch.rand(2, 4, 5, 7))
    assert y.shape == (2, 3, 5, 7) and y.is_contiguous()
    assert pp.regularization().shape == ()


def test_build_unit_unknown_kind_lists_valid() -> None:
    with pytest.raises(ValueError) as info:
        build_unit("relu", 2, 2)
    for kind in UNIT_KINDS:
        assert kind in str(info.value)


def test_nac_weight_formula() -> None:
    torch.manual_seed(0)
    nac = NAC(3, 2)
    expected = torch.tanh(nac.W_hat) * torch.sigmoid(nac.M_hat)
    assert torch.equal(nac.weight, expected)
    x = torch.randn(4, 3)
    torch.testing.assert_close(nac(x), x @ expected.t())
    with torch.no_grad():  # recomputed every forward
        nac.W_hat.add_(1.0)
    torch.testing.assert_close(nac(x), x @ (torch.tanh(nac.W_hat) * torch.sigmoid(nac.M_hat)).t())


def test_nac_ideal_params_compute_exact_sums() -> None:
    nac = NAC(3, 2).double()
    with torch.no_grad():
        nac.W_hat.copy_(torch.tensor([[40.0, 40.0, 0.0], [40.0, -40.0, 0.0]]))
        nac.M_hat.copy_(torch.tensor([[40.0, 40.0, -40.0], [40.0, 40.0, -40.0]]))
    x = torch.tensor([[3.0, 5.0, 100.0], [-2.0, 1e5, 7.0]], dtype=torch.float64)
    y = nac(x)
    torch.testing.assert_close(y, torch.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]], 1))


@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "hard_sigmoid"])
def test_nalu_saturated_gate_multiplies(gate: str) -> None:
    nalu = NALU(2, 1, gate=gate).double()
    with torch.no_grad():
        nalu.nac.W_hat.fill_(40.0)
        nalu.nac.M_hat.fill_(40.0)
        nalu.G.fill_(-1e3 if gate != "tanh" else 0.0)  # g = 0 -> pure multiplication path
    x = torch.tensor([[3.0, 5.0], [0.5, 8.0], [1e3, 2e3]], dtype=torch.float64)
    y = nalu(x)[:, 0]
    torch.testing.assert_close(y, x[:, 0] * x[:, 1], rtol=1e-5, atol=1e-6)


def test_nalu_separate_weights_and_gate_validation() -> None:
    nalu = NALU(3, 2, shared_weights=False)
    assert nalu.mul_nac is not None
    assert nalu(torch.rand(4, 3)).shape == (4, 2)
    with pytest.raises(ValueError):
        NALU(2, 2, gate="relu")  # type: ignore[arg-type]


def test_nau_clamp_and_regularization() -> None:
    nau = NAU(3, 1)
    with torch.no_grad():
        nau.W.copy_(torch.tensor([[3.0, -2.0, 0.25]]))
    assert torch.equal(nau.weight, torch.tensor([[1.0, -1.0, 0.25]]))
    x = torch.tensor([[1.0, 2.0, 4.0]])
    torch.testing.assert_close(nau(x), torch.tensor([[1.0 - 2.0 + 1.0]]))
    # mean(min(|W|, 1 - |W|)) = (0 + 0 + 0.25) / 3
    torch.testing.assert_close(nau.regularization(), torch.tensor(0.25 / 3))
    # a weight beyond the bound gets a gradient only when descent moves it back inside
    nau(x).sum().backward()
    assert nau.W.grad[0, 0] > 0 and nau.W.grad[0, 1] == 0


def test_nmu_products_and_regularization() -> None:
    nmu = NMU(3, 2).double()
    with torch.no_grad():
        nmu.W.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.5]]))
    x = torch.tensor([[2.0, -3.0, 4.0], [0.0, 5.0, 7.0]], dtype=torch.float64)
    y = nmu(x)
    torch.testing.assert_close(y[:, 0], x.prod(1))
    torch.testing.assert_close(y[:, 1], x[:, 0] * x[:, 2])
    with torch.no_grad():
        nmu.W.copy_(torch.tensor([[0.5, 0.25, 1.0], [0.0, 0.1, 0.9]]))
    expected = torch.tensor([0.5, 0.25, 0.0, 0.0, 0.1, 0.1]).mean()
    torch.testing.assert_close(nmu.regularization(), expected.double())


def test_nmu_gradient_matches_autograd_and_zero_factors() -> None:
    torch.manual_seed(0)
    nmu = NMU(4, 3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    x[0, 1] = 0.0
    x[1, :2] = 0.0
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: nmu(inp), (x,))
    # with W = 1 the gradient at a zero input is the product of the others (not lost in log space)
    with torch.no_grad():
        nmu.W.fill_(1.0)
    xz = torch.tensor([[0.0, 2.0, 3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    nmu(xz)[0, 0].backward()
    assert xz.grad[0, 0] == pytest.approx(24.0)


def test_nmu_product_magnitude_bounded() -> None:
    nmu = NMU(200, 1)
    with torch.no_grad():
        nmu.W.fill_(1.0)
    y = nmu(torch.full((1, 200), -1e6))
    assert torch.isfinite(y).all()
    assert y.abs().item() == pytest.approx(math.exp(LOG_MAX), rel=1e-4)


def test_regularization_zero_for_nac_nalu() -> None:
    assert NAC(3, 2).regularization().item() == 0.0
    assert NALU(3, 2).regularization().item() == 0.0


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_per_pixel_equals_dense(kind: str) -> None:
    torch.manual_seed(1)
    pp = build_unit(kind, 3, 2, per_pixel=True).double()
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 4 - 2
    y = pp(x)
    dense = pp.unit(x.permute(0, 2, 3, 1).reshape(-1, 3)).reshape(2, 4, 5, 2).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, dense)


def test_per_pixel_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError):
        PerPixel(NAC(3, 2))(torch.rand(3, 4))


_values = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 1e-7, 1e6, -1e6, 1.0, -1.0]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32),
)


def _check_finite(unit: torch.nn.Module, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    y = unit(x)
    assert torch.isfinite(y).all(), "non-finite output"
    (y.sum() + 1e-3 * unit.regularization()).backward()
    assert torch.isfinite(x.grad).all(), "non-finite input gradient"
    for name, p in unit.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient of {name}"


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(UNIT_KINDS),
    values=st.lists(_values, min_size=12, max_size=12),
    weight_scale=st.sampled_from([0.1, 1.0, 10.0]),
    seed=st.integers(0, 1000),
)
def test_finite_dense(kind: str, values: list[float], weight_scale: float, seed: int) -> None:
    torch.manual_seed(seed)
    unit = build_unit(kind, 4, 3)
    with torch.no_grad():
        for p in unit.parameters():
            p.mul_(weight_scale)
    _check_finite(unit, torch.tensor(values, dtype=torch.float32).reshape(3, 4))


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(UNIT_KINDS),
    values=st.lists(_values, min_size=16, max_size=16),
    seed=st.integers(0, 1000),
)
def test_finite_per_pixel(kind: str, values: list[float], seed: int) -> None:
    torch.manual_seed(seed)
    unit = build_unit(kind, 2, 3, per_pixel=True)
    _check_finite(unit, torch.tensor(values, dtype=torch.float32).reshape(2, 2, 2, 2))


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_finite_many_inputs_extremes(kind: str) -> None:
    torch.manual_seed(0)
    unit = build_unit(kind, 64, 4)
    x = torch.tensor([1e6, -1e6, 0.0, 1e-30] * 16, dtype=torch.float32).repeat(3, 1)
    _check_finite(unit, x)
    with torch.no_grad():  # saturated weights: all NAC weights +-1, NMU/NAU at the bounds
        for p in unit.parameters():
            p.copy_(torch.where(p >= 0, 50.0, -50.0))
    _check_finite(unit, x)
