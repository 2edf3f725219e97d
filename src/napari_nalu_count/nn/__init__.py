"""Neural-network layer: arithmetic units, building blocks, networks and the config registry.

Never imports napari or Qt.
"""

from .arithmetic import NAC, NALU, NAU, NMU, UNIT_KINDS, PerPixel, build_unit
from .blocks import (
    ACTIVATIONS,
    ArithmeticResidual,
    ConvBNAct,
    FeatureRandomEnhancement,
    SEBlock,
)
from .fcrn import FCRNA
from .registry import ARCHITECTURES, build_model, default_config, task_of, validate_config
from .unet import CountUNet, SEUNet

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "NAC",
    "NALU",
    "NAU",
    "NMU",
    "UNIT_KINDS",
    "ArithmeticResidual",
    "ConvBNAct",
    "CountUNet",
    "FCRNA",
    "FeatureRandomEnhancement",
    "PerPixel",
    "SEBlock",
    "SEUNet",
    "build_model",
    "build_unit",
    "default_config",
    "task_of",
    "validate_config",
]
