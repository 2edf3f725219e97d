"""Building blocks shared by the counting and segmentation networks.

- :class:`ConvBNAct`: 3x3 (or kxk) convolution + batch norm + activation.
- :class:`SEBlock`: squeeze-and-excitation channel gating (Hu et al.).
- :class:`FeatureRandomEnhancement`: the FRE module of the segmentation paper; multiplies B
  randomly chosen channels by X in training mode, identity in eval mode.
- :class:`ArithmeticResidual`: residual concatenation of a per-pixel arithmetic unit (NAC, NALU,
  NAU, NMU ...) with the decoder path, squeezed back to the decoder width (counting paper).
- :class:`PaddedNet`: base class that reflect-pads any ``H x W`` input to a multiple of
  ``stride`` and crops the output back.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "linear")


def make_activation(name: str) -> nn.Module:
    """Activation module by name: ``relu``, ``leaky_relu`` (slope 0.01) or ``linear`` (identity)."""
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=False)
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")


class ConvBNAct(nn.Sequential):
    """``Conv2d(k x k, same padding, no bias) -> BatchNorm2d -> activation``.

    ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: str = "relu"
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            make_activation(activation),
        )


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid channel gates.

    ``(N, C, H, W) -> (N, C, H, W)``; the hidden width is ``max(1, C // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))  # (N, C)
        gates = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))
        return x * gates[:, :, None, None]


class FeatureRandomEnhancement(nn.Module):
    """Feature Random Enhancement (FRE): scale ``B`` random channels by ``X`` while training.

    ``(N, channels, H, W) -> (N, channels, H, W)``. In training mode the selected channels are
    multiplied by ``X`` and the others are left untouched (multiplied by exactly 1); in eval
    mode the module returns its input unchanged. The selection is a pure function of
    ``(seed, epoch)`` (NumPy ``default_rng([seed, epoch])``), independent of torch's global RNG;
    :meth:`reselect` draws it for a new epoch (the trainer calls it once per epoch). The
    selection is a non-persistent buffer, so it never appears in a ``state_dict``.
    """

    selected: torch.Tensor

    def __init__(self, channels: int, B: int, X: float, seed: int = 0) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"FRE channels must be a positive integer, got {channels!r}")
        if isinstance(B, bool) or not isinstance(B, int) or not 0 <= B <= channels:
            raise ValueError(
                f"FRE B must be an integer between 0 and the number of channels ({channels}) "
                f"at the bottleneck, got B={B!r}"
            )
        if isinstance(X, bool) or not isinstance(X, (int, float)) or not math.isfinite(X):
            raise ValueError(f"FRE X must be a finite number, got X={X!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"FRE seed must be a non-negative integer, got seed={seed!r}")
        self.channels = channels
        self.B = B
        self.X = float(X)
        self.seed = seed
        self.epoch = 0
        self.register_buffer("scale", torch.ones(channels), persistent=False)
        self.register_buffer("selected", torch.zeros(0, dtype=torch.long), persistent=False)
        self.reselect(0)

    @staticmethod
    def selection(channels: int, B: int, seed: int, epoch: int) -> np.ndarray:
        """Sorted channel indices selected for ``(seed, epoch)``: ``(B,)`` int64."""
        rng = np.random.default_rng([int(seed), int(epoch)])
        return np.sort(rng.choice(channels, size=B, replace=False)).astype(np.int64)

    def reselect(self, epoch: int) -> None:
        """Draw the channels enhanced during ``epoch`` (reproducible from seed and epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)
        idx = torch.from_numpy(self.selection(self.channels, self.B, self.seed, self.epoch))
        scale = torch.ones(self.channels, dtype=self.scale.dtype)
        scale[idx] = self.X
        self.selected = idx.to(self.selected.device)
        self.scale = scale.to(self.scale.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.B == 0:
            return x
        return x * self.scale.to(x.dtype)[None, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, B={self.B}, X={self.X}, seed={self.seed}"


class ArithmeticResidual(nn.Module):
    """Residual concatenation of a numerically biased unit (counting paper, Figs 1, 8, 9).

    ``forward(main, skip)``: ``skip`` ``(N, skip_channels, H, W)`` goes through a per-pixel
    arithmetic unit (output width = ``skip_channels``) and batch norm, is concatenated with
    ``main`` ``(N, main_channels, H, W)`` along channels, and a 1x1 conv + BN + activation
    squeezes the result to ``(N, out_channels, H, W)``. The branch's output is what the
    network uses (unlike the paper's public code, which computed and then discarded it).
    """

    def __init__(
        self,
        kind: str,
        skip_channels: int,
        main_channels: int,
        out_channels: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        from .arithmetic import build_unit

        self.kind = kind
        self.unit = build_unit(kind, skip_channels, skip_channels, per_pixel=True)
        self.norm = nn.BatchNorm2d(skip_channels)
        self.squeeze = ConvBNAct(
            main_channels + skip_channels, out_channels, kernel_size=1, activation=activation
        )

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        branch = self.norm(self.unit(skip))
        return self.squeeze(torch.cat([main, branch], dim=1))

    def regularization(self) -> torch.Tensor:
        """The unit's regularizer (0-dim tensor)."""
        return self.unit.regularization()


class FoldedArithmeticResidual(nn.Module):
    """Inference form of an :class:`ArithmeticResidual` whose unit is linear (NAC or NAU).

    In eval mode the branch ``BN(U skip)`` is affine in ``skip`` and the squeeze's 1x1
    convolution is linear in its input, so ``squeeze(cat[main, BN(U skip)])`` equals
    ``act(W_main main + (W_branch diag(g) U) skip + b')``: two 1x1 convolutions added, with no
    unit pass, no batch norm and no concatenated tensor. Same ``forward(main, skip)``; built by
    :meth:`from_residual` from an eval-mode residual (the squeeze's BN folded or not). Weights
    are frozen copies: it is not trainable.
    """

    def __init__(
        self, w_main: torch.Tensor, w_skip: torch.Tensor, bias: torch.Tensor, act: nn.Module
    ) -> None:
        super().__init__()
        self.w_main = nn.Parameter(w_main[:, :, None, None].contiguous(), requires_grad=False)
        self.w_skip = nn.Parameter(w_skip[:, :, None, None].contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        self.act = act

    @staticmethod
    def foldable(res: nn.Module) -> bool:
        """Whether ``res`` is an :class:`ArithmeticResidual` with a linear unit (NAC, NAU)
        and the layout this class folds."""
        from .arithmetic import NAC, NAU, PerPixel

        if not isinstance(res, ArithmeticResidual):
            return False
        unit = getattr(res.unit, "unit", None)
        sq = res.squeeze
        return (
            isinstance(res.unit, PerPixel)
            and isinstance(unit, NAC | NAU)
            and len(sq) == 3
            and isinstance(sq[0], nn.Conv2d)
            and sq[0].kernel_size == (1, 1)
            and sq[0].groups == 1
            and isinstance(sq[1], nn.BatchNorm2d | nn.Identity)
            and res.norm.running_mean is not None
        )

    @classmethod
    def from_residual(cls, res: ArithmeticResidual) -> FoldedArithmeticResidual:
        """The folded equivalent of an eval-mode ``res`` (``foldable(res)`` must hold)."""
        if not cls.foldable(res):
            raise ValueError("only a residual with a NAC or NAU unit and a 1x1 squeeze folds")

        def affine(bn: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            if isinstance(bn, nn.Identity):
                return torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
            std = torch.sqrt(bn.running_var.double() + bn.eps)
            gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
            beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
            g = gamma / std
            return g, beta - bn.running_mean.double() * g

        with torch.no_grad():
            conv, bn_sq, act = res.squeeze[0], res.squeeze[1], res.squeeze[2]
            w = conv.weight.double()[:, :, 0, 0]  # (out, main + skip): cat order [main, branch]
            b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0]).double()
            g_sq, c_sq = affine(bn_sq, w.shape[0])
            u = res.unit.unit.weight.double()  # (skip, skip)
            g, c = affine(res.norm, u.shape[0])
            m = w.shape[1] - u.shape[0]
            w_branch = w[:, m:]
            w_main = g_sq[:, None] * w[:, :m]
            w_skip = g_sq[:, None] * (w_branch @ (g[:, None] * u))
            bias = g_sq * (b + w_branch @ c) + c_sq
            dtype = conv.weight.dtype
            return cls(w_main.to(dtype), w_skip.to(dtype), bias.to(dtype), act)

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(main, self.w_main, self.bias)
        y += F.conv2d(skip, self.w_skip)
        return self.act(y)


def pad_to_multiple(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad ``(N, C, H, W)`` so that H and W are multiples of ``stride``.

    The padding is split evenly between the two sides. Reflect padding is used where possible;
    inputs too small to reflect (padding >= size) fall back to replicate padding.
    Returns the padded tensor and ``(top, bottom, left, right)``.
    """
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"input must have a non-empty spatial shape, got {h} x {w}")
    pads, reflect = padding_plan(h, w, stride)
    if pads == (0, 0, 0, 0):
        return x, pads
    mode = "reflect" if reflect else "replicate"
    return F.pad(x, (pads[2], pads[3], pads[0], pads[1]), mode=mode), pads


def padding_plan(h: int, w: int, stride: int) -> tuple[tuple[int, int, int, int], bool]:
    """``(top, bottom, left, right)`` padding that makes ``h`` x ``w`` multiples of ``stride``
    (split evenly, the odd pixel at the end), and whether reflect padding can do it (every pad
    smaller than the side it mirrors); shared by :func:`pad_to_multiple` and the NumPy twin in
    ``infer.backend``."""
    ph, pw = (-h) % stride, (-w) % stride
    top, left = ph // 2, pw // 2
    pads = (top, ph - top, left, pw - left)
    return pads, max(pads[:2]) < h and max(pads[2:]) < w


def crop_padding(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on ``(N, C, H', W')``."""
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


class PaddedNet(nn.Module):
    """Base class of the networks: pads to a multiple of :attr:`stride`, crops back.

    Subclasses implement ``forward_padded`` on inputs whose H and W are multiples of
    ``stride``, and register their arithmetic units and FRE module as usual; ``regularization``
    and ``reselect_fre`` find them by walking the module tree.
    """

    stride: int = 1
    config: dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W)`` float -> ``(N, C_out, H, W)`` for any H, W >= 1."""
        if x.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        padded, pads = pad_to_multiple(x, self.stride)
        return crop_padding(self.forward_padded(padded), pads)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def regularization(self) -> torch.Tensor:
        """Sum of the regularizers of every arithmetic unit (0-dim tensor; 0 without units)."""
        ref = next(self.parameters())
        total = torch.zeros((), dtype=ref.dtype, device=ref.device)
        for module in self.modules():
            if isinstance(module, ArithmeticResidual):
                total = total + module.regularization().to(total.dtype)
        return total

    def reselect_fre(self, epoch: int) -> None:
        """Re-draw the FRE selection for ``epoch``; a no-op for networks without FRE."""
        for module in self.modules():
            if isinstance(module, FeatureRandomEnhancement):
                module.reselect(epoch)
