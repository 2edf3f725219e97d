"""Build networks from plain JSON configs (the ``config`` entry of a model card).

A config is a dict with exactly these keys (see ``docs/internals.md``)::

    {"architecture": "fcrn_a" | "unet_count" | "se_unet",
     "in_channels": int >= 1,
     "out_channels": 1 (count) | n_classes >= 2 (segment),
     "activation": "relu" | "leaky_relu" | "linear",
     "unit": null | one of UNIT_KINDS,
     "widths": [int, ...]   # fcrn_a: 4 (3 scales + 1/8 bottleneck); U-Nets: >= 2, last = bottleneck
     "fre": null | {"B": int, "X": float, "seed": int},
     "deep_supervision": bool,   # U-Nets only
     "size_head": bool}          # unet_count only: a second output, log object size

Only ``architecture`` is required; missing keys take the architecture's defaults
(:func:`default_config`), unknown keys are rejected. The network's ``state_dict`` keys are a
deterministic function of the config.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn

from ..errors import ModelFileError
from .arithmetic import UNIT_KINDS
from .blocks import ACTIVATIONS
from .fcrn import FCRNA
from .unet import CountUNet, SEUNet

ARCHITECTURES: tuple[str, ...] = ("fcrn_a", "unet_count", "se_unet")
CONFIG_KEYS: tuple[str, ...] = (
    "architecture",
    "in_channels",
    "out_channels",
    "activation",
    "unit",
    "widths",
    "fre",
    "deep_supervision",
    "size_head",
)
FRE_KEYS: tuple[str, ...] = ("B", "X", "seed")
MAX_UNET_DEPTH = 6
#: largest channel count per level and input channels (a guard against tampered cards that
#: would build a network too large for memory)
MAX_WIDTH = 4096
MAX_IN_CHANNELS = 64

_DEFAULT_WIDTHS: dict[str, list[int]] = {
    "fcrn_a": [32, 64, 128, 512],
    "unet_count": [64, 128, 256],
    "se_unet": [64, 128, 256, 512],
}
_TASKS: dict[str, str] = {"fcrn_a": "count", "unet_count": "count", "se_unet": "segment"}


def _bad(key: str, value: Any, allowed: str) -> ModelFileError:
    return ModelFileError(f"model config: bad {key}={value!r}; allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def default_config(architecture: str) -> dict:
    """The default config of ``architecture`` (a fresh dict; widths as in the papers)."""
    if architecture not in ARCHITECTURES:
        raise _bad("architecture", architecture, ", ".join(ARCHITECTURES))
    return {
        "architecture": architecture,
        "in_channels": 1,
        "out_channels": 3 if architecture == "se_unet" else 1,
        "activation": "relu",
        "unit": None,
        "widths": list(_DEFAULT_WIDTHS[architecture]),
        "fre": None,
        "deep_supervision": False,
        "size_head": False,
    }


def validate_config(config: dict) -> dict:
    """Check ``config``; return the complete config (defaults filled in, a new dict).

    Raises :class:`~napari_nalu_count.errors.ModelFileError` naming the bad key, its value and
    what is allowed.
    """
    if not isinstance(config, dict):
        raise ModelFileError(f"model config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in CONFIG_KEYS)
    if unknown:
        raise ModelFileError(
            f"model config: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}"
        )
    if "architecture" not in config:
        raise ModelFileError(
            f"model config: missing key architecture; allowed: {', '.join(ARCHITECTURES)}"
        )
    arch = config["architecture"]
    if arch not in ARCHITECTURES:
        raise _bad("architecture", arch, ", ".join(ARCHITECTURES))
    cfg = default_config(arch)
    cfg.update(copy.deepcopy(config))
    task = _TASKS[arch]

    v = cfg["in_channels"]
    if not _is_int(v) or not 1 <= v <= MAX_IN_CHANNELS:
        raise _bad("in_channels", v, f"an integer from 1 to {MAX_IN_CHANNELS}")
    v = cfg["out_channels"]
    if task == "count" and v != 1:
        raise _bad("out_channels", v, f"1 (a density map) for {arch}")
    if task == "segment" and (not _is_int(v) or not 2 <= v <= MAX_IN_CHANNELS):
        raise _bad(
            "out_channels", v, f"the number of classes, an integer 2..{MAX_IN_CHANNELS}, for {arch}"
        )
    if cfg["activation"] not in ACTIVATIONS:
        raise _bad("activation", cfg["activation"], ", ".join(ACTIVATIONS))
    if cfg["unit"] is not None and cfg["unit"] not in UNIT_KINDS:
        raise _bad("unit", cfg["unit"], "null or one of " + ", ".join(UNIT_KINDS))

    widths = cfg["widths"]
    if not isinstance(widths, (list, tuple)) or not all(
        _is_int(w) and 1 <= w <= MAX_WIDTH for w in widths
    ):
        raise _bad("widths", widths, f"a list of integers from 1 to {MAX_WIDTH}")
    widths = list(widths)
    if arch == "fcrn_a" and len(widths) != 4:
        raise _bad("widths", widths, "4 integers for fcrn_a (3 scales and the 1/8 bottleneck)")
    if arch != "fcrn_a" and not 2 <= len(widths) <= MAX_UNET_DEPTH + 1:
        raise _bad(
            "widths",
            widths,
            f"2 to {MAX_UNET_DEPTH + 1} integers for {arch} (one per level, the last is "
            "the bottleneck)",
        )
    cfg["widths"] = widths

    fre = cfg["fre"]
    if fre is not None:
        if not isinstance(fre, dict):
            raise _bad("fre", fre, 'null or {"B": int, "X": float, "seed": int}')
        extra = sorted(str(k) for k in fre if k not in FRE_KEYS)
        if extra:
            raise _bad("fre", fre, f"keys {', '.join(FRE_KEYS)} only (unknown: {', '.join(extra)})")
        fre = {"seed": 0, **fre}
        if "B" not in fre or "X" not in fre:
            raise _bad("fre", fre, 'a dict with "B" and "X" (and optionally "seed")')
        if not _is_int(fre["B"]) or not 0 <= fre["B"] <= widths[-1]:
            raise _bad(
                "fre.B",
                fre["B"],
                f"an integer from 0 to the bottleneck width widths[-1]={widths[-1]}",
            )
        x = fre["X"]
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise _bad("fre.X", x, "a finite number")
        if not _is_int(fre["seed"]) or fre["seed"] < 0:
            raise _bad("fre.seed", fre["seed"], "an integer >= 0")
        cfg["fre"] = {"B": fre["B"], "X": float(x), "seed": fre["seed"]}

    ds = cfg["deep_supervision"]
    if not isinstance(ds, bool):
        raise _bad("deep_supervision", ds, "true or false")
    if ds and arch == "fcrn_a":
        raise _bad("deep_supervision", ds, "false for fcrn_a (only the U-Nets have an aux head)")
    sh = cfg["size_head"]
    if not isinstance(sh, bool):
        raise _bad("size_head", sh, "true or false")
    if sh and arch != "unet_count":
        raise _bad("size_head", sh, "false for " + arch + " (only unet_count has a size head)")
    return cfg


def task_of(config: dict) -> str:
    """``"count"`` or ``"segment"`` for a config (validated)."""
    return _TASKS[validate_config(config)["architecture"]]


def build_model(config: dict) -> nn.Module:
    """Build the network described by ``config`` (validated; missing keys take defaults).

    The returned module has ``.config`` (the complete config), ``.stride``,
    ``regularization()`` and ``reselect_fre(epoch)``.
    """
    cfg = validate_config(config)
    arch = cfg["architecture"]
    kwargs: dict[str, Any] = dict(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        widths=cfg["widths"],
        activation=cfg["activation"],
        unit=cfg["unit"],
        fre=copy.deepcopy(cfg["fre"]),
    )
    if arch == "fcrn_a":
        net: nn.Module = FCRNA(**kwargs)
    elif arch == "unet_count":
        net = CountUNet(
            **kwargs, deep_supervision=cfg["deep_supervision"], size_head=cfg["size_head"]
        )
    else:
        net = SEUNet(**kwargs, deep_supervision=cfg["deep_supervision"])
    net.config = cfg
    return net
