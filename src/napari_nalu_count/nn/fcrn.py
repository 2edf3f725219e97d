"""FCRN-A counting network (Xie, Noble & Zisserman 2016) with optional arithmetic residuals.

Layout for ``widths = (w1, w2, w3, wb)`` (default ``(32, 64, 128, 512)``)::

    x -> ConvBNAct(w1) = e1 -> pool -> ConvBNAct(w2) = e2 -> pool -> ConvBNAct(w3) = e3 -> pool
      -> ConvBNAct(wb) at 1/8 -> [FRE]
      -> up x2 -> ConvBNAct(w3) [+ residual(e3)] -> up x2 -> ConvBNAct(w2) [+ residual(e2)]
      -> up x2 -> ConvBNAct(w1) [+ residual(e1)] -> 1x1 conv -> density (linear output)

``[+ residual(e)]`` is an :class:`~.blocks.ArithmeticResidual`: the encoder feature map of the
same resolution (before its pooling) goes through the per-pixel unit and batch norm, is
concatenated with the decoder map and squeezed back to the decoder width by 1x1 conv + BN +
activation. Upsampling is bilinear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ArithmeticResidual, ConvBNAct, FeatureRandomEnhancement, PaddedNet


class FCRNA(PaddedNet):
    """FCRN-A density regressor: ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.

    ``stride`` is 8 (three 2x2 max-pools). ``unit`` is ``None`` or one of ``UNIT_KINDS``;
    ``fre`` is ``None`` or ``{"B": int, "X": float, "seed": int}`` (applied after the 1/8
    convolution).
    """

    stride = 8

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 512),
        activation: str = "relu",
        unit: str | None = None,
        fre: dict | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"FCRN-A needs 4 widths (3 scales + 1/8 bottleneck), got {widths}")
        w1, w2, w3, wb = (int(w) for w in widths)
        self.enc1 = ConvBNAct(in_channels, w1, activation=activation)
        self.enc2 = ConvBNAct(w1, w2, activation=activation)
        self.enc3 = ConvBNAct(w2, w3, activation=activation)
        self.bottleneck = ConvBNAct(w3, wb, activation=activation)
        self.fre = None if fre is None else FeatureRandomEnhancement(wb, **fre)
        self.dec3 = ConvBNAct(wb, w3, activation=activation)
        self.dec2 = ConvBNAct(w3, w2, activation=activation)
        self.dec1 = ConvBNAct(w2, w1, activation=activation)
        self.res3 = self.res2 = self.res1 = None
        if unit is not None:
            self.res3 = ArithmeticResidual(unit, w3, w3, w3, activation)
            self.res2 = ArithmeticResidual(unit, w2, w2, w2, activation)
            self.res1 = ArithmeticResidual(unit, w1, w1, w1, activation)
        self.head = nn.Conv2d(w1, out_channels, kernel_size=1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward on ``(N, C, H, W)`` with H, W multiples of 8."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        b = self.bottleneck(F.max_pool2d(e3, 2))
        if self.fre is not None:
            b = self.fre(b)
        d = self.dec3(self._up(b))
        if self.res3 is not None:
            d = self.res3(d, e3)
        d = self.dec2(self._up(d))
        if self.res2 is not None:
            d = self.res2(d, e2)
        d = self.dec1(self._up(d))
        if self.res1 is not None:
            d = self.res1(d, e1)
        return self.head(d)
