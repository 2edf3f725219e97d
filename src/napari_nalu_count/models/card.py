"""Model cards: the JSON file that describes a model's weights.

A card is a plain dict (stored as ``NAME.json`` beside ``NAME.safetensors``) with the keys in
:data:`CARD_KEYS`. :func:`make_card` builds one with sensible defaults; :func:`validate_card`
checks a card read from disk and raises :class:`~napari_nalu_count.errors.ModelFileError` naming
the file and the problem. The architecture config is checked by ``nn.registry``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_nalu_count.errors import InputError, ModelFileError

#: the card format this version writes and reads
FORMAT_VERSION = 1

#: keys every card must have
CARD_KEYS: tuple[str, ...] = (
    "format_version",
    "name",
    "task",
    "config",
    "normalization",
    "density_scale",
    "diameter",
    "training",
    "metrics",
    "created",
    "package_version",
    "weights_sha256",
    "n_parameters",
)

#: optional keys a card may carry in addition
#: ``input_scale`` (float, 1.0 when absent): the factor by which a user's image is resampled
#: before the network when the caller gives no diameter (the model was trained on images
#: resampled by it); the card's ``diameter`` is always measured on the model grid
#: ``diameter_mode`` (``"fixed"`` when absent): ``"estimate"`` means that when the caller gives no
#: diameter, inference estimates the nucleus diameter of the image and resamples it by
#: ``diameter / estimate`` (models trained on many object sizes brought to one grid diameter);
#: ``"fixed"`` resamples by ``input_scale`` only (models trained on one microscope's images)
#: ``scale_jitter`` ([lo, hi]): the range of object scale around ``diameter`` seen in training
DIAMETER_MODES: tuple[str, ...] = ("fixed", "estimate")
#: ``input`` (object, absent on older cards): the image -> plane rule the model was trained
#: with, ``{"rgb": "max"|"mean"|"luminance"|INDEX, "channel": null|INDEX|"mean"|"max"|...}``
#: (how RGB(A) colours are reduced, and what other multi-channel images use when the caller
#: gives no ``channel=``; null asks the caller). Inference applies it; absent means
#: ``{"rgb": "max", "channel": null}`` (see ``infer.axes``).
OPTIONAL_KEYS: tuple[str, ...] = (
    "description",
    "input_scale",
    "input",
    "diameter_mode",
    "scale_jitter",
)

#: accepted reducers in an ``input`` rule (besides a channel index >= 0)
INPUT_MODES: tuple[str, ...] = ("mean", "max", "luminance")

#: allowed range of ``input_scale`` (exclusive lower bound, inclusive upper bound)
MAX_INPUT_SCALE = 8.0

TASKS: tuple[str, ...] = ("count", "segment")

DEFAULT_NORMALIZATION: dict[str, Any] = {"method": "percentile", "low": 1.0, "high": 99.8}

#: count models: the density target is multiplied by this; predictions are divided by it
DEFAULT_DENSITY_SCALE = 100.0

#: preferred "headline" metrics, in order, per task (see :func:`key_metric`)
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "count": ("mae", "mean_absolute_error", "rmse", "mape", "mre", "acc", "accuracy"),
    "segment": ("aji", "f1", "f1_50", "ap50", "ap", "dice", "iou", "accuracy"),
}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_NORMALIZATION_METHODS = ("percentile",)


def check_name(name: object) -> str:
    """Return ``name`` if it is a safe model name, else raise :class:`InputError`.

    A name is 1-128 characters from letters, digits, ``-``, ``_`` and ``.``, starting with a
    letter or digit, and not ending in ``.json`` or ``.safetensors``.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    if name.lower().endswith((".json", ".safetensors")):
        raise InputError(f"invalid model name {name!r}: leave out the file extension")
    return name


def is_valid_name(name: object) -> bool:
    """True when :func:`check_name` would accept ``name``."""
    try:
        check_name(name)
    except InputError:
        return False
    return True


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC, e.g. ``2024-05-01T12:00:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _package_version() -> str:
    from napari_nalu_count import __version__

    return __version__


def _registry():
    return importlib.import_module("napari_nalu_count.nn.registry")


def make_card(name: str, task: str, config: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """Build a card for a model named ``name`` solving ``task`` with architecture ``config``.

    Other card keys may be given as keyword arguments (``normalization``, ``density_scale``,
    ``diameter`` in pixels, ``training``, ``metrics`` (include ``split``), ``created``,
    ``description``). Defaults: percentile 1/99.8 normalisation, density scale 100 for counting
    (None for segmentation), no diameter, empty training info, ``metrics={"split": None}``, the
    current UTC time and package version. ``weights_sha256`` and ``n_parameters`` are filled in
    by ``save_model``.
    """
    check_name(name)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    allowed = set(CARD_KEYS) | set(OPTIONAL_KEYS)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"make_card() got unknown card keys: {', '.join(unknown)}")
    card: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "config": dict(config),
        "normalization": dict(DEFAULT_NORMALIZATION),
        "density_scale": DEFAULT_DENSITY_SCALE if task == "count" else None,
        "diameter": None,
        "training": {},
        "metrics": {"split": None},
        "created": utc_now_iso(),
        "package_version": _package_version(),
        "weights_sha256": "",
        "n_parameters": 0,
    }
    card.update(fields)
    if isinstance(card["metrics"], Mapping) and "split" not in card["metrics"]:
        card["metrics"] = {"split": None, **card["metrics"]}
    return card


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_card(card: object, source: str | Path, *, check_weight_fields: bool = True) -> dict:
    """Check a card read from ``source`` (a path, used in messages); return it unchanged.

    Raises :class:`ModelFileError` for a non-object card, missing keys, an unknown
    ``format_version``, an unknown task, an invalid config (via ``nn.registry.validate_config``),
    a task that does not match the config, or malformed values. ``check_weight_fields=False``
    skips ``weights_sha256`` / ``n_parameters`` (a card that has not been saved yet).
    """
    where = f"model card {source}"
    if not isinstance(card, Mapping):
        raise ModelFileError(f"{where} must hold a JSON object, not {type(card).__name__}")
    missing = [k for k in CARD_KEYS if k not in card]
    if "format_version" in missing:
        raise ModelFileError(
            f"{where} has no 'format_version' key; is it a napari-nalu-count card?"
        )
    version = card["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ModelFileError(
            f"{where} has format_version {version!r}; this version of napari-nalu-count reads "
            f"format {FORMAT_VERSION} (upgrade the package to read newer models)"
        )
    if missing:
        raise ModelFileError(f"{where} is missing required key(s): {', '.join(missing)}")
    if not isinstance(card["name"], str) or not card["name"]:
        raise ModelFileError(f"{where}: 'name' must be a non-empty string")
    task = card["task"]
    if task not in TASKS:
        raise ModelFileError(f"{where}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    config = card["config"]
    if not isinstance(config, Mapping):
        raise ModelFileError(f"{where}: 'config' must be an object")
    registry = _registry()
    try:
        registry.validate_config(dict(config))
        config_task = registry.task_of(dict(config))
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: invalid model config: {exc}") from exc
    if config_task != task:
        raise ModelFileError(
            f"{where}: task {task!r} does not match its config (architecture "
            f"{config.get('architecture')!r} with out_channels={config.get('out_channels')!r} "
            f"is a {config_task!r} network)"
        )
    norm = card["normalization"]
    if not isinstance(norm, Mapping) or norm.get("method") not in _NORMALIZATION_METHODS:
        raise ModelFileError(
            f"{where}: 'normalization' must be an object with method 'percentile', got {norm!r}"
        )
    low, high = norm.get("low"), norm.get("high")
    if not (_is_number(low) and _is_number(high) and 0 <= low < high <= 100):
        raise ModelFileError(
            f"{where}: normalization percentiles must satisfy 0 <= low < high <= 100, "
            f"got low={low!r}, high={high!r}"
        )
    scale = card["density_scale"]
    if task == "count" and not (_is_number(scale) and scale > 0):
        raise ModelFileError(
            f"{where}: a count model needs a positive 'density_scale', got {scale!r}"
        )
    if task == "segment" and scale is not None and not _is_number(scale):
        raise ModelFileError(f"{where}: 'density_scale' must be a number or null")
    diameter = card["diameter"]
    if diameter is not None and not (_is_number(diameter) and diameter > 0):
        raise ModelFileError(f"{where}: 'diameter' must be a positive number of pixels or null")
    if "input_scale" in card:
        s = card["input_scale"]
        if not (_is_number(s) and 0 < s <= MAX_INPUT_SCALE):
            raise ModelFileError(
                f"{where}: 'input_scale' must be a number in (0, {MAX_INPUT_SCALE:g}], got {s!r}"
            )
    mode = card.get("diameter_mode", "fixed")
    if mode not in DIAMETER_MODES:
        raise ModelFileError(
            f"{where}: 'diameter_mode' must be one of {', '.join(DIAMETER_MODES)}, got {mode!r}"
        )
    if mode == "estimate" and diameter is None:
        raise ModelFileError(f"{where}: diameter_mode 'estimate' needs the card's 'diameter'")
    if "scale_jitter" in card:
        sj = card["scale_jitter"]
        if not (
            isinstance(sj, (list, tuple))
            and len(sj) == 2
            and all(_is_number(v) for v in sj)
            and 0 < sj[0] <= sj[1]
        ):
            raise ModelFileError(f"{where}: 'scale_jitter' must be [lo, hi] with 0 < lo <= hi")
    if "input" in card:
        _check_input_rule(card["input"], where)
    if not isinstance(card["training"], Mapping):
        raise ModelFileError(f"{where}: 'training' must be an object")
    metrics = card["metrics"]
    if not isinstance(metrics, Mapping) or "split" not in metrics:
        raise ModelFileError(
            f"{where}: 'metrics' must be an object with a 'split' key naming the data they were "
            "measured on"
        )
    if not isinstance(card["created"], str):
        raise ModelFileError(f"{where}: 'created' must be an ISO-8601 date string")
    if not isinstance(card["package_version"], str):
        raise ModelFileError(f"{where}: 'package_version' must be a string")
    if check_weight_fields:
        sha = card["weights_sha256"]
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise ModelFileError(f"{where}: 'weights_sha256' must be 64 lowercase hex digits")
        n = card["n_parameters"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ModelFileError(f"{where}: 'n_parameters' must be a non-negative integer")
    return card  # type: ignore[return-value]


def _check_input_rule(rule: object, where: str) -> None:
    expected = (
        '{"rgb": "max"|"mean"|"luminance"|INDEX, "channel": null|INDEX|"mean"|"max"|"luminance"}'
    )
    if not isinstance(rule, Mapping) or set(rule) - {"rgb", "channel"}:
        raise ModelFileError(f"{where}: 'input' must be an object {expected}, got {rule!r}")
    for key, value in rule.items():
        if value is None and key == "channel":
            continue
        ok = (
            value in INPUT_MODES
            if isinstance(value, str)
            else (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        )
        if not ok:
            raise ModelFileError(f"{where}: bad input rule {key}={value!r}; expected {expected}")


def key_metric(card: Mapping[str, Any]) -> tuple[str, float, Any] | None:
    """The card's headline metric as ``(name, value, split)``, or None when it has none.

    Picks the first of :data:`KEY_METRICS` for the card's task that is present, else the first
    numeric metric.
    """
    metrics = card.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    split = metrics.get("split")
    lowered = {str(k).lower(): k for k in metrics if k != "split"}
    for wanted in KEY_METRICS.get(str(card.get("task")), ()):
        key = lowered.get(wanted)
        if key is not None and _is_number(metrics[key]):
            return str(key), float(metrics[key]), split
    for key, value in metrics.items():
        if key != "split" and _is_number(value):
            return str(key), float(value), split
    return None


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps`` accepts: numpy/torch scalars become Python numbers,
    arrays and tuples become lists, non-finite floats become None, paths become strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    raise TypeError(f"card value {obj!r} of type {type(obj).__name__} is not JSON-serializable")
