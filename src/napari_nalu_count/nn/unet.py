"""U-Nets: the counting U-Net (counting paper, Fig. 9) and the SE U-Net for segmentation.

For ``widths = (w_0, ..., w_D)`` the network has ``D`` pooling steps (``stride = 2**D``)::

    level i < D:  e_i = DoubleConv(w_i) [+ SE]            at 1 / 2**i, then 2x2 max-pool
    bottleneck:   b   = DoubleConv(w_D) [+ SE] -> [FRE]   at 1 / 2**D   (-> [aux 1x1 head])
    level i < D:  d_i = DoubleConv(w_i)(cat(up(d_{i+1}), e_i)) [+ SE] [+ residual(e_i)]
    output:       1x1 conv(w_0 -> out_channels)  [+ 1x1 conv(w_0 -> 1): the size head]

``DoubleConv`` is two 3x3 ConvBNAct, ``up`` a 2x2 transposed convolution (stride 2) to ``w_i``
channels. ``[+ residual(e_i)]`` is an :class:`~.blocks.ArithmeticResidual` (the encoder map
``e_i`` through a per-pixel arithmetic unit and BN, concatenated with ``d_i``, squeezed back to
``w_i`` by 1x1 conv + BN + activation). The FRE module acts on the bottleneck output.

Size head (counting U-Net, ``size_head=True``): a second 1x1 convolution on the last decoder
features predicts, at every pixel of an object, ``log(object diameter / model diameter)``: how
much larger or smaller than the training grid's nuclei the objects in view are. The output then
has one extra channel (``[density, log size]``); the engine uses it to check and correct its
object-size estimate.

Deep supervision (the FRE paper's "SuperVision" baseline): a 1x1 convolution maps the bottleneck
(before FRE) to ``out_channels``; in training mode ``forward`` stores it, bilinearly upsampled and
cropped to the input's ``H x W``, in ``net.aux_logits`` (``(N, out_channels, H, W)``) for the
trainer to add its loss; in eval mode ``net.aux_logits`` is ``None``. ``forward`` itself always
returns just the main output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    ArithmeticResidual,
    ConvBNAct,
    FeatureRandomEnhancement,
    PaddedNet,
    SEBlock,
    crop_padding,
    pad_to_multiple,
)


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvBNAct, then optionally an SE block: ``(N, in, H, W) -> (N, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, activation: str, se: bool) -> None:
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, out_channels, activation=activation),
            ConvBNAct(out_channels, out_channels, activation=activation),
        ]
        if se:
            layers.append(SEBlock(out_channels))
        super().__init__(*layers)


class SplitInputDoubleConv(nn.Module):
    """Inference form of a decoder's :class:`DoubleConv` that reads ``cat([up, skip])``.

    A convolution of a channel concatenation is the sum of the convolutions of its parts, so
    the first 3x3 convolution is split by input channels into one for ``up`` and one for
    ``skip`` and ``forward_pair(up, skip)`` adds them: no concatenated tensor is written and
    read again. The rest of the block (BN, activation, second convolution, SE) is the original
    modules. Built from an eval-mode block; not trainable.
    """

    def __init__(self, block: DoubleConv, up_channels: int) -> None:
        super().__init__()
        first = block[0]
        conv = first[0]
        if not (isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.dilation == (1, 1)):
            raise ValueError("only a plain first convolution can be split")
        if not 0 < up_channels < conv.in_channels:
            raise ValueError(f"up_channels {up_channels} outside 1..{conv.in_channels - 1}")
        w = conv.weight.detach()
        self.w_up = nn.Parameter(w[:, :up_channels].clone(), requires_grad=False)
        self.w_skip = nn.Parameter(w[:, up_channels:].clone(), requires_grad=False)
        b = conv.bias
        self.bias = None if b is None else nn.Parameter(b.detach().clone(), requires_grad=False)
        self.stride, self.padding = conv.stride, conv.padding
        self.first_rest = nn.Sequential(*list(first)[1:])  # BN (or Identity once folded), act
        self.rest = nn.Sequential(*list(block)[1:])  # second ConvBNAct [+ SE]

    def forward_pair(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(up, self.w_up, self.bias, self.stride, self.padding)
        y += F.conv2d(skip, self.w_skip, None, self.stride, self.padding)
        return self.rest(self.first_rest(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block on an already concatenated ``cat([up, skip])`` input."""
        c = self.w_up.shape[1]
        return self.forward_pair(x[:, :c], x[:, c:])


def split_decoder_inputs(net: nn.Module) -> int:
    """Replace the decoders of every U-Net in ``net`` (eval mode, in place) by
    :class:`SplitInputDoubleConv`; returns how many were replaced."""
    n = 0
    for module in list(net.modules()):
        if not isinstance(module, _UNet):
            continue
        for i, dec in enumerate(module.decoders):
            if isinstance(dec, DoubleConv):
                up = module.ups[i].out_channels
                module.decoders[i] = SplitInputDoubleConv(dec, up)
                n += 1
    return n


def fuse_heads(net: nn.Module) -> int:
    """Give every counting U-Net in ``net`` with a size head (eval mode, in place) one 1x1
    convolution computing ``[head, size_head]`` together (``fused_heads``, used by
    ``forward_padded``): PyTorch runs a 1x1 convolution with one output channel outside
    oneDNN on channels_last input, and the two heads plus their concatenation took 6.1 ms on
    a 608 px tile against 3.1 ms for the single two-output convolution (same numbers; about
    1.5 % of the tile's forward). Returns how many."""
    n = 0
    for module in list(net.modules()):
        if not isinstance(module, _UNet) or module.size_head is None:
            continue
        head, size = module.head, module.size_head
        if head.bias is None or size.bias is None:  # pragma: no cover - built with bias
            continue
        fused = nn.Conv2d(head.in_channels, head.out_channels + size.out_channels, 1)
        fused = fused.to(device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([head.weight, size.weight], dim=0))
            fused.bias.copy_(torch.cat([head.bias, size.bias], dim=0))
        fused.requires_grad_(False)
        module.fused_heads = fused
        n += 1
    return n


class _UNet(PaddedNet):
    """Shared U-Net body: ``(N, in_channels, H, W) -> (N, out_channels, H, W)``."""

    aux_logits: torch.Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int],
        activation: str,
        unit: str | None,
        fre: dict | None,
        deep_supervision: bool,
        se: bool,
        size_head: bool = False,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"a U-Net needs at least 2 widths (1 level + bottleneck): {widths}")
        depth = len(widths) - 1
        self.depth = depth
        self.stride = 2**depth
        self.encoders = nn.ModuleList()
        prev = in_channels
        for w in widths[:-1]:
            self.encoders.append(DoubleConv(prev, w, activation, se))
            prev = w
        self.bottleneck = DoubleConv(prev, widths[-1], activation, se)
        self.fre = None if fre is None else FeatureRandomEnhancement(widths[-1], **fre)
        self.aux_head = nn.Conv2d(widths[-1], out_channels, 1) if deep_supervision else None
        # decoder levels are stored from the finest (index 0) to the coarsest (index depth - 1)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2)
            for i in range(depth)
        )
        self.decoders = nn.ModuleList(
            DoubleConv(2 * widths[i], widths[i], activation, se) for i in range(depth)
        )
        self.residuals = None
        if unit is not None:
            self.residuals = nn.ModuleList(
                ArithmeticResidual(unit, widths[i], widths[i], widths[i], activation)
                for i in range(depth)
            )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        self.size_head = nn.Conv2d(widths[0], 1, kernel_size=1) if size_head else None
        self.aux_logits = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H, W)``; sets ``aux_logits`` (see module docstring)."""
        self.aux_logits = None
        if x.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        padded, pads = pad_to_multiple(x, self.stride)
        out = crop_padding(self.forward_padded(padded), pads)
        if self.aux_logits is not None:
            self.aux_logits = crop_padding(self.aux_logits, pads)
        return out

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward on ``(N, C, H, W)`` with H, W multiples of ``stride``."""
        skips = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)
        if self.aux_head is not None and self.training:
            aux = self.aux_head(h)
            self.aux_logits = F.interpolate(
                aux, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        if self.fre is not None:
            h = self.fre(h)
        for i in reversed(range(self.depth)):
            dec = self.decoders[i]
            if isinstance(dec, SplitInputDoubleConv):  # inference copies (engine)
                h = dec.forward_pair(self.ups[i](h), skips[i])
            else:
                h = dec(torch.cat([self.ups[i](h), skips[i]], dim=1))
            if self.residuals is not None:
                h = self.residuals[i](h, skips[i])
        fused = getattr(self, "fused_heads", None)  # inference copies, see fuse_heads
        if fused is not None:
            return fused(h)
        if self.size_head is not None:
            return torch.cat([self.head(h), self.size_head(h)], dim=1)
        return self.head(h)

    def __getstate__(self) -> dict:
        # aux_logits holds an autograd graph, which copy.deepcopy and pickle cannot handle
        state = self.__dict__.copy()
        state["aux_logits"] = None
        return state


class CountUNet(_UNet):
    """Counting U-Net (no SE blocks), density output (plus the log-size channel with
    ``size_head``); default widths ``(64, 128, 256)``."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (64, 128, 256),
        activation: str = "relu",
        unit: str | None = None,
        fre: dict | None = None,
        deep_supervision: bool = False,
        size_head: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            widths,
            activation,
            unit,
            fre,
            deep_supervision,
            se=False,
            size_head=size_head,
        )


class SEUNet(_UNet):
    """U-Net with SE blocks after every conv block; class logits (default 3 classes:
    background, interior, boundary); default widths ``(64, 128, 256, 512)``."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        activation: str = "relu",
        unit: str | None = None,
        fre: dict | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, widths, activation, unit, fre, deep_supervision, se=True
        )
