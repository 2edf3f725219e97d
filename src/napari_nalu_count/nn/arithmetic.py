"""Neural arithmetic units: NAC, NALU (three gates), NAU and NMU, dense and per-pixel.

Dense units map ``(..., in_features) -> (..., out_features)``. ``PerPixel(unit)`` applies a dense
unit to every pixel of an ``(N, C, H, W)`` tensor (a 1x1 "convolution"), giving ``(N, C', H, W)``.

Units
-----
- ``NAC`` (Trask et al. 2018): ``y = W x`` with ``W = tanh(W_hat) * sigmoid(M_hat)``, recomputed
  on every forward pass, no bias. ``W`` is biased towards -1, 0 and 1.
- ``NALU`` (Trask et al. 2018): ``a = W_a x``, ``m = exp(W_m log(|x| + eps))``,
  ``y = g * a + (1 - g) * m`` with a learned gate ``g = gate(G x)``. ``gate`` is ``"sigmoid"``
  (the paper), ``"tanh"`` or ``"hard_sigmoid"`` (``clamp(x / 6 + 1/2, 0, 1)``), the variants of
  the counting paper's Table I. ``shared_weights=True`` uses one NAC matrix for both paths (as in
  the paper), ``False`` gives the multiplicative path its own NAC matrix.
- ``NAU`` (Madsen & Johansen, ICLR 2020): ``z = W x`` with ``W`` clamped to ``[-1, 1]`` in the
  forward pass. Regulariser ``mean(min(|W|, 1 - |W|))``.
- ``NMU`` (Madsen & Johansen, ICLR 2020): ``z_j = prod_i (W_ij x_i + 1 - W_ij)`` with ``W``
  clamped to ``[0, 1]``. Regulariser ``mean(min(W, 1 - W))``.
- The NAU/NMU clamp is exact in the forward pass; in the backward pass the gradient of a weight
  outside the range is kept when a descent step moves it back inside (zero otherwise), so a weight
  overshooting its bound never gets stuck (Madsen & Johansen instead clip the parameters after
  each optimiser step; ``clip_weights_()`` does that too and may still be called).

Every unit has ``regularization()``, a scalar tensor (zero for NAC and NALU). It is *not* scaled:
a training loop adds ``lam * unit.regularization()`` to its loss, where ``lam`` is a small
weight (Madsen & Johansen ramp it from 0 up to about 0.01-0.1 once the task loss is small; a
constant ``lam`` from the start can freeze the weights at their initial values).

Numerical bounds (float32 and float64)
--------------------------------------
- ``EPS = 1e-7``: the NALU log path uses ``log(|x| + EPS)``, so ``x = 0`` gives ``log(EPS)``
  (about -16.1) instead of ``-inf``, and the derivative ``1 / (|x| + EPS)`` is at most ``1e7``.
- ``LOG_MAX = 30``: the NALU log-space sum ``W_m log(|x| + EPS)`` is clamped to at most
  ``LOG_MAX`` before ``exp``, so the multiplicative path lies in ``[0, exp(30)]``, i.e. below
  about ``1.07e13``. (Beyond the clamp its gradient is zero.)
- NMU: the product is computed as ``sign * exp(sum_i log|f_i|)`` with the exact sign and with the
  log-magnitude clamped to at most ``LOG_MAX``, so ``|z| <= exp(30)`` whatever the number of
  inputs. A custom backward computes the exact "product of the other factors" (also in log
  space, with the same clamp, and with exact handling of zero factors), so gradients stay finite
  and are correct at zero factors (which a plain ``log`` would lose).
- With finite inputs up to ``|x| = 1e6`` and any weights, all outputs are therefore bounded by
  ``max(in_features * 1e6, 1.07e13)`` and all gradients are finite in float32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EPS",
    "LOG_MAX",
    "NAC",
    "NALU",
    "NAU",
    "NMU",
    "UNIT_KINDS",
    "PerPixel",
    "build_unit",
]

EPS = 1e-7
LOG_MAX = 30.0

UNIT_KINDS: tuple[str, ...] = ("nac", "nalu", "nalu_tanh", "nalu_hard_sigmoid", "nau", "nmu")

GateKind = Literal["sigmoid", "tanh", "hard_sigmoid"]


def _xavier_bound(in_features: int, out_features: int) -> float:
    return math.sqrt(6.0 / (in_features + out_features))


def _check_sizes(in_features: int, out_features: int) -> None:
    if int(in_features) < 1 or int(out_features) < 1:
        raise ValueError(
            f"in_features and out_features must be >= 1, got {in_features}, {out_features}"
        )


class _Unit(nn.Module):
    """Common base: sizes, ``regularization()`` default (zero) and ``extra_repr``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        _check_sizes(in_features, out_features)
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    def regularization(self) -> torch.Tensor:
        """Scalar sparsity regulariser (unscaled); zero for units without one."""
        p = next(self.parameters())
        return p.new_zeros(())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class NAC(_Unit):
    """Neural accumulator: ``y = (tanh(W_hat) * sigmoid(M_hat)) x``; ``(..., in) -> (..., out)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.W_hat = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.M_hat = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = _xavier_bound(self.in_features, self.out_features)
        nn.init.uniform_(self.W_hat, -r, r)
        nn.init.uniform_(self.M_hat, -r, r)

    @property
    def weight(self) -> torch.Tensor:
        """Effective weight ``tanh(W_hat) * sigmoid(M_hat)``, shape ``(out, in)``, in (-1, 1)."""
        return torch.tanh(self.W_hat) * torch.sigmoid(self.M_hat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def _gate(kind: str, z: torch.Tensor) -> torch.Tensor:
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "tanh":
        return torch.tanh(z)
    return F.hardsigmoid(z)


class NALU(_Unit):
    """Neural arithmetic logic unit; ``(..., in) -> (..., out)``.

    ``y = g * (W_a x) + (1 - g) * exp(clamp(W_m log(|x| + EPS), max=LOG_MAX))``, ``g = gate(G x)``.
    With ``shared_weights`` the NAC matrix ``W_a = W_m`` is shared (the paper's form).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        gate: GateKind = "sigmoid",
        shared_weights: bool = True,
    ) -> None:
        super().__init__(in_features, out_features)
        if gate not in ("sigmoid", "tanh", "hard_sigmoid"):
            raise ValueError(f"gate must be 'sigmoid', 'tanh' or 'hard_sigmoid', got {gate!r}")
        self.gate = gate
        self.shared_weights = bool(shared_weights)
        self.nac = NAC(in_features, out_features)
        self.mul_nac = None if self.shared_weights else NAC(in_features, out_features)
        self.G = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.nac.reset_parameters()
        if self.mul_nac is not None:
            self.mul_nac.reset_parameters()
        r = _xavier_bound(self.in_features, self.out_features)
        nn.init.uniform_(self.G, -r, r)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gate={self.gate!r}, shared_weights={self.shared_weights}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_add = self.nac.weight
        w_mul = w_add if self.mul_nac is None else self.mul_nac.weight
        add = F.linear(x, w_add)
        log_sum = F.linear(torch.log(x.abs() + EPS), w_mul)
        mul = torch.exp(torch.clamp(log_sum, max=LOG_MAX))
        g = _gate(self.gate, F.linear(x, self.G))
        return g * add + (1.0 - g) * mul


class _InwardClamp(torch.autograd.Function):
    """``clamp(w, lo, hi)`` whose gradient also passes outside the range when a descent step
    would move ``w`` back towards it, so a weight pushed past the bound is never stuck there."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, lo: float, hi: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        ctx.bounds = (lo, hi)
        return w.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        keep = ((w >= lo) & (w <= hi)) | ((w > hi) & (grad > 0)) | ((w < lo) & (grad < 0))
        return torch.where(keep, grad, torch.zeros_like(grad)), None, None


class NAU(_Unit):
    """Neural addition unit: ``z = clamp(W, -1, 1) x``; ``(..., in) -> (..., out)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.W = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Madsen & Johansen: E[W] = 0, Var[W] = 2 / (in + out) (Xavier-uniform), kept in [-0.5, 0.5]
        r = min(0.5, _xavier_bound(self.in_features, self.out_features))
        nn.init.uniform_(self.W, -r, r)

    @property
    def weight(self) -> torch.Tensor:
        """Clamped weight, shape ``(out, in)``, in [-1, 1]."""
        return _InwardClamp.apply(self.W, -1.0, 1.0)

    def clip_weights_(self) -> None:
        """Clip the raw parameter into [-1, 1] in place (optional, after an optimiser step)."""
        with torch.no_grad():
            self.W.clamp_(-1.0, 1.0)

    def regularization(self) -> torch.Tensor:
        """``mean(min(|W|, 1 - |W|))`` of the clamped weight; 0 when all weights are -1, 0 or 1."""
        w = self.weight.abs()
        return torch.minimum(w, 1.0 - w).mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class _SafeProd(torch.autograd.Function):
    """Product over dim -2, ``(..., in, out) -> (..., out)``, magnitude clamped in log space.

    Forward: ``sign(prod f) * exp(min(sum log|f|, LOG_MAX))`` (exactly 0 with any zero factor).
    Backward: ``d z / d f_i = prod_{k != i} f_k``, computed the same way (and clamped the same way),
    with exact zero handling: with one zero factor only that factor gets a non-zero gradient,
    with two or more zero factors every gradient is 0.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        nz = f != 0
        log_abs = torch.where(nz, f.abs(), torch.ones_like(f)).log()
        sgn = torch.where(f < 0, -torch.ones_like(f), torch.ones_like(f))
        s = log_abs.sum(-2)
        n_zero = (~nz).sum(-2)
        sign_nz = sgn.prod(-2)
        z = torch.where(n_zero > 0, torch.zeros_like(s), sign_nz * torch.exp(s.clamp(max=LOG_MAX)))
        ctx.save_for_backward(log_abs, sgn, nz, s, n_zero, sign_nz)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        log_abs, sgn, nz, s, n_zero, sign_nz = ctx.saved_tensors
        s_ = s.unsqueeze(-2)
        nzc = n_zero.unsqueeze(-2)
        sn = sign_nz.unsqueeze(-2)
        # product of the other factors when this factor is non-zero (and no zero factor exists)
        others = sn * sgn * torch.exp((s_ - log_abs).clamp(max=LOG_MAX))
        # product of the (non-zero) others when this is the only zero factor
        only_zero = sn * torch.exp(s_.clamp(max=LOG_MAX))
        zero = torch.zeros_like(others)
        d = torch.where(
            nz, torch.where(nzc == 0, others, zero), torch.where(nzc == 1, only_zero, zero)
        )
        return grad.unsqueeze(-2) * d


class NMU(_Unit):
    """Neural multiplication unit: ``z_j = prod_i (W_ij x_i + 1 - W_ij)``, ``W`` clamped to [0, 1].

    ``(..., in) -> (..., out)``; memory ``O(... * in * out)`` for the factors.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.W = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Madsen & Johansen: E[W] = 1/2 with a small spread
        nn.init.uniform_(self.W, 0.25, 0.75)

    @property
    def weight(self) -> torch.Tensor:
        """Clamped weight, shape ``(out, in)``, in [0, 1]."""
        return _InwardClamp.apply(self.W, 0.0, 1.0)

    def clip_weights_(self) -> None:
        """Clip the raw parameter into [0, 1] in place (optional, after an optimiser step)."""
        with torch.no_grad():
            self.W.clamp_(0.0, 1.0)

    def regularization(self) -> torch.Tensor:
        """``mean(min(W, 1 - W))`` over the clamped weight; 0 when every weight is 0 or 1."""
        w = self.weight
        return torch.minimum(w, 1.0 - w).mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.t()  # (in, out)
        f = x.unsqueeze(-1) * w + (1.0 - w)  # (..., in, out)
        return _SafeProd.apply(f)


class PerPixel(nn.Module):
    """Apply a dense unit at every pixel: ``(N, C, H, W) -> (N, C', H, W)``.

    NAC and NAU run as a 1x1 convolution; other units move channels last, run the dense unit on a
    contiguous ``(N, H, W, C)`` view and move channels back (contiguous output).
    """

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit
        self.in_features = getattr(unit, "in_features", None)
        self.out_features = getattr(unit, "out_features", None)

    def regularization(self) -> torch.Tensor:
        """The wrapped unit's regulariser."""
        return self.unit.regularization()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"PerPixel expects (N, C, H, W), got shape {tuple(x.shape)}")
        if isinstance(self.unit, (NAC, NAU)):
            w = self.unit.weight
            return F.conv2d(x, w[:, :, None, None])
        y = self.unit(x.permute(0, 2, 3, 1).contiguous())
        return y.permute(0, 3, 1, 2).contiguous()


def build_unit(
    kind: str, in_features: int, out_features: int, *, per_pixel: bool = False
) -> nn.Module:
    """Build a unit by name (one of ``UNIT_KINDS``); ``per_pixel`` wraps it in ``PerPixel``."""
    if kind == "nac":
        unit: nn.Module = NAC(in_features, out_features)
    elif kind == "nalu":
        unit = NALU(in_features, out_features, gate="sigmoid")
    elif kind == "nalu_tanh":
        unit = NALU(in_features, out_features, gate="tanh")
    elif kind == "nalu_hard_sigmoid":
        unit = NALU(in_features, out_features, gate="hard_sigmoid")
    elif kind == "nau":
        unit = NAU(in_features, out_features)
    elif kind == "nmu":
        unit = NMU(in_features, out_features)
    else:
        raise ValueError(f"unknown unit kind {kind!r}; valid kinds: {', '.join(UNIT_KINDS)}")
    return PerPixel(unit) if per_pixel else unit
