"""One training loop for counting (density regression) and segmentation (3-class maps).

:func:`train` draws random augmented patches (:class:`~.dataset.PatchSampler`), optimises with
Adam under a learning-rate schedule, validates on *whole* validation images after every epoch,
keeps the best weights (a state_dict copy in memory) and stops early when the monitored metric
has not improved for ``patience`` epochs.

- Counting: loss = MSE between the predicted and the target density (the target is
  ``dots_to_density(dots, sigma) * density_scale``); validation reports the count MAE
  ``|sum(pred) / density_scale - n_dots|`` per image (and RMSE, MAE / mean count, ...).
- Segmentation: loss = cross-entropy (optionally + soft Dice); validation reports the mean IoU
  over the classes and instance F1 at IoU 0.5 (instances from the class map).

The arithmetic units' regularisers are added to the loss (``+ reg_weight * net.regularization()``)
and the FRE selection is re-drawn at the start of every epoch (``net.reselect_fre(epoch)``).
Progress is reported as typed events (:mod:`napari_nalu_count.events`: ``TrainStep``,
``EpochEnd``, ``TrainDone``): :func:`train_events` yields them (a generator for a napari
``thread_worker``), :func:`train` hands them to ``callback``. A
:class:`~napari_nalu_count.errors.CancelToken` stops the run before the next step, keeping the
best weights so far. Nothing is written to disk here (saving is ``models.save_model``'s job).

Runs are deterministic given ``TrainConfig.seed`` (weights initialised under
``torch.manual_seed(seed)``, patches and augmentation from ``numpy.random.default_rng(seed)``),
unless ``max_minutes`` makes the schedule depend on the wall clock.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_nalu_count.errors import Cancelled, CancelToken, InputError, TrainingDiverged
from napari_nalu_count.events import EpochEnd, Event, TrainDone, TrainStep, drive

from .dataset import CountLabelSampler, PatchSampler, Prepared, prepare
from .metrics import classes_to_instances, confusion_matrix, count_metrics, instance_f1, mean_iou

__all__ = ["TrainConfig", "TrainResult", "evaluate", "recalibrate_bn", "train", "train_events"]

Callback = Callable[[Event], None]

_LOWER_IS_BETTER = {"mae", "rmse", "mre", "loss", "mre_mean", "mae_mean"}


DEFAULT_SIGMA = 3.0
"""Density sigma (pixels) of a counting network trained from scratch with ``sigma=None``."""


def _is_sigma(value: Any) -> bool:
    """Whether ``value`` is a usable density sigma: a finite real number >= 0 (not a bool)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def start_model_sigma(card: Mapping[str, Any] | None) -> float:
    """The density sigma a model was trained with (its card's ``training.settings.sigma``), or
    :data:`DEFAULT_SIGMA` when the card does not record a usable one."""
    settings = ((card or {}).get("training") or {}).get("settings") or {}
    value = settings.get("sigma") if isinstance(settings, Mapping) else None
    return float(value) if _is_sigma(value) else DEFAULT_SIGMA


@dataclass
class TrainConfig:
    """Training settings (all plain values, so ``dataclasses.asdict`` goes into a card).

    Sizes are in pixels, ``max_minutes`` in minutes of wall-clock time (None: no limit).
    ``fre`` (``{"B", "X", "seed"}``) is put into the architecture config before the network is
    built (or the given network is rebuilt with it); ``None`` keeps the network as it is.
    ``monitor`` is the validation metric for model selection and early stopping (default:
    ``mae`` for counting, ``f1`` for segmentation). ``schedule`` is ``"cosine"``, ``"plateau"``
    or ``"constant"``. ``bn_recalibrate`` > 0 re-estimates the BatchNorm running statistics on
    up to that many *whole* training images (cumulative average, see :func:`recalibrate_bn`)
    before every validation, so the eval-mode statistics match whole-image inference rather
    than the last training patches; 0 keeps the running averages of the patches.

    Generalisation settings: ``count_weight`` adds ``count_weight x smooth-L1(predicted patch
    count - true patch count)`` (cells) to the counting loss, so density mass is learned as a
    count and not only pixel by pixel; ``scale_jitter`` ``[lo, hi]`` resamples every patch by a
    log-uniform factor (objects ``lo``-``hi`` times their size on the model grid), so an object
    size estimate that is off by that much costs little; ``appearance`` (True or a dict of
    :class:`~napari_nalu_count.data.augment.Appearance` settings) simulates other microscopes;
    ``ema`` > 0 keeps an exponential moving average of the weights (decay ``ema`` per step, with
    a short warm-up) that is validated and kept instead of the raw weights, which smooths the
    step-to-step noise of small-batch training;
    ``wide_jitter``/``wide_prob``: that fraction of the patches is resampled in the wider range
    instead; they train only a size head (``size_weight`` x the density-weighted MSE of the
    predicted log object size), so the network can tell how far off a size estimate is;
    ``source_weights`` (``{source: weight}``, sources from ``Sample.meta["source"]``) balances
    data sets of different sizes. ``edge_margin`` (counting, pixels): leave a band along patch
    sides that cut through the image out of the loss (see :class:`~.dataset.PatchSampler`).
    ``small_weight`` (segmentation): the loss weighs the pixels of objects under
    ``small_size`` px (equivalent diameter on the model grid: micronuclei, fragments) and a
    1 px ring around them ``1 + small_weight`` times (:func:`~.dataset.small_object_weights`).
    With several sources, validation also reports every metric per
    source (``mre@SOURCE``, ``f1@SOURCE``) and their means (``mre_mean``, ``f1_mean``), which
    ``monitor`` may select.

    Annotations inside boxes only (``Sample.boxes``): the loss sees the boxes, and outside
    them, where nothing is labelled, ``keep_weight`` x the squared difference to the *start*
    network's own prediction (its density and size map, or its class probabilities as soft
    targets for segmentation) keeps the network where it was; without it the unlabelled rest
    of the image is free to drift, and a fine-tune on a few boxes could double the count of a
    whole image (measured: docs/uncertainty.md). 0 turns it off.

    ``anchor_weight`` > 0 (fine-tuning): after every optimiser step each weight moves back
    towards its value at the start of training by ``lr x anchor_weight`` of the difference
    (weight decay towards the start model instead of towards zero, decoupled from Adam's
    gradient scaling), so a few images pull the network only as far as they keep pulling.

    ``sigma`` (counting): the Gaussian sigma (pixels) the dots are spread with into the density
    target. None (default) means :data:`DEFAULT_SIGMA` when training from scratch, and the
    start model's own sigma (its card's ``training.settings``) when training from a loaded
    model (:func:`train` or :func:`~.tune.tune` given one, :func:`~.finetune.fine_tune`,
    ``nalu-count train|tune --from``), so a fine-tune keeps the density shape its start model
    was trained for.

    ``freeze_bn`` (fine-tuning): BatchNorm layers keep the start model's running statistics
    (eval mode while training; their scale and shift are still learned), so the statistics of
    a few images' patches do not replace those of the data the start model was trained on.

    Count-level labels (samples with ``counts`` and no dots or labels): every step also draws
    ``batch_size`` whole boxes of them (:class:`~.dataset.CountLabelSampler`) and adds
    ``count_label_weight x mean((predicted - true)^2 / (true + 1))``, the predicted count
    being the density integral inside the box (cells).
    """

    epochs: int = 30
    steps_per_epoch: int = 50
    batch_size: int = 4
    patch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    patience: int = 10
    seed: int = 0
    sigma: float | None = None
    density_scale: float = 100.0
    fre: dict | None = None
    dice: bool = False
    dice_weight: float = 1.0
    class_weights: list[float] | None = None
    aux_weight: float = 0.3
    reg_weight: float = 1e-3
    augment: bool = True
    boundary_width: int = 1
    normalization: dict = field(
        default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.8}
    )
    monitor: str | None = None
    max_minutes: float | None = None
    grad_clip: float | None = 10.0
    device: str = "cpu"
    bn_recalibrate: int = 0
    count_weight: float = 0.0
    size_weight: float = 0.1
    ema: float = 0.0
    scale_jitter: list[float] | None = None
    wide_jitter: list[float] | None = None
    wide_prob: float = 0.0
    appearance: bool | dict | None = None
    source_weights: dict[str, float] | None = None
    edge_margin: float = 0.0
    small_weight: float = 0.0
    small_size: float = 8.0
    count_label_weight: float = 1.0
    keep_weight: float = 1.0
    anchor_weight: float = 0.0
    freeze_bn: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the settings."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        for name in ("epochs", "steps_per_epoch", "batch_size", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.patch_size, int) or self.patch_size < 16:
            raise InputError(f"patch_size must be an integer >= 16, got {self.patch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"learning rate must be positive, got {self.lr!r}")
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise InputError(
                f"schedule must be 'cosine', 'plateau' or 'constant', got {self.schedule!r}"
            )
        if not self.density_scale > 0:
            raise InputError(f"density_scale must be positive, got {self.density_scale!r}")
        if self.sigma is not None and not _is_sigma(self.sigma):
            raise InputError(f"sigma must be a number >= 0 or None, got {self.sigma!r}")
        if not isinstance(self.bn_recalibrate, int) or self.bn_recalibrate < 0:
            raise InputError(
                f"bn_recalibrate must be a non-negative integer, got {self.bn_recalibrate!r}"
            )
        if not 0.0 <= self.ema < 1.0:
            raise InputError(f"ema must be a decay in [0, 1), got {self.ema!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise InputError(f"max_minutes must be positive, got {self.max_minutes!r}")
        if not (self.count_weight >= 0 and math.isfinite(self.count_weight)):
            raise InputError(f"count_weight must be >= 0, got {self.count_weight!r}")
        if not (self.anchor_weight >= 0 and math.isfinite(self.anchor_weight)):
            raise InputError(f"anchor_weight must be >= 0, got {self.anchor_weight!r}")
        if not (self.count_label_weight >= 0 and math.isfinite(self.count_label_weight)):
            raise InputError(f"count_label_weight must be >= 0, got {self.count_label_weight!r}")
        if self.scale_jitter is not None:
            sj = list(self.scale_jitter)
            if len(sj) != 2 or not 0 < float(sj[0]) <= float(sj[1]):
                raise InputError(
                    f"scale_jitter must be [lo, hi] with 0 < lo <= hi, got {self.scale_jitter!r}"
                )


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``net`` holds the best weights (by ``monitor`` on validation; the last weights without
    validation data), in eval mode on the CPU. ``history`` has one dict per finished epoch
    (``epoch``, ``step``, ``loss``, ``lr``, ``metrics``, ``seconds``). ``config`` is the network's
    architecture config when known.
    """

    net: nn.Module
    history: list[dict[str, Any]]
    best_metrics: dict[str, Any]
    best_epoch: int | None
    cancelled: bool
    stopped_early: bool
    config: dict | None
    train_config: TrainConfig
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# model set-up


def _registry():
    from napari_nalu_count.nn import registry

    return registry


def _resolve_model(model_or_config: Any, fre: dict | None, seed: int) -> tuple[nn.Module, dict]:
    """Build / unwrap the network; apply ``fre`` to its config. Returns ``(net, config)``."""
    registry = _registry()
    config: dict | None
    state = None
    if isinstance(model_or_config, Mapping):
        config = dict(model_or_config)
    elif hasattr(model_or_config, "net") and hasattr(model_or_config, "config"):  # LoadedModel
        config = dict(model_or_config.config)
        state = model_or_config.net.state_dict()
    elif isinstance(model_or_config, nn.Module):
        config = getattr(model_or_config, "config", None)
        if fre is None or config is None:
            if fre is not None:
                raise InputError("cannot add FRE to a network without a config")
            return model_or_config, (dict(config) if config is not None else None)
        state = model_or_config.state_dict()
        config = dict(config)
    else:
        raise InputError(
            f"train() needs a config dict, a network or a loaded model, not "
            f"{type(model_or_config).__name__}"
        )
    if fre is not None:
        config["fre"] = dict(fre)
    config = registry.validate_config(config)
    torch.manual_seed(seed)
    net = registry.build_model(config)
    if state is not None:
        net.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return net, config


def _task_of(net: nn.Module, config: dict | None) -> str:
    if config is not None:
        return _registry().task_of(config)
    return (
        "count"
        if getattr(net, "head", None) is not None and net.head.out_channels == 1
        else ("segment")
    )


def _n_classes(net: nn.Module, config: dict | None) -> int:
    if config is not None:
        return int(config.get("out_channels", 3))
    return int(getattr(getattr(net, "head", None), "out_channels", 3))


# ---------------------------------------------------------------------------------------------
# losses and evaluation


def _dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss averaged over classes; ``valid`` ``(B, 1, H, W)`` masks padding."""
    prob = logits.softmax(1) * valid
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype) * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def _loss(
    net: nn.Module,
    out: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    task: str,
    cfg: TrainConfig,
    class_weights: torch.Tensor | None,
    info: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    aux = getattr(net, "aux_logits", None)
    if task == "count":
        size = out[:, 1:2] if out.shape[1] > 1 else None
        out = out[:, :1]
        narrow = None
        if info and "narrow" in info:
            narrow = info["narrow"].to(out.device).reshape(-1, 1, 1, 1)
        dvalid = valid if narrow is None else valid * narrow
        n = dvalid.sum().clamp_min(1.0)
        loss = (((out - y) ** 2) * dvalid).sum() / n
        if cfg.count_weight:
            pred_n = (out * valid).sum(dim=(1, 2, 3)) / cfg.density_scale
            true_n = (y * valid).sum(dim=(1, 2, 3)) / cfg.density_scale
            per = F.smooth_l1_loss(pred_n, true_n, beta=1.0, reduction="none")
            if narrow is not None:
                per = per * narrow.reshape(-1)
                loss = loss + cfg.count_weight * per.sum() / narrow.sum().clamp_min(1.0)
            else:
                loss = loss + cfg.count_weight * per.mean()
        if size is not None and info and "log_size" in info and cfg.size_weight:
            target = info["log_size"].to(out.device).reshape(-1, 1, 1, 1)
            loss = loss + cfg.size_weight * _weighted_sq(size, target, y * valid)
        if aux is not None:
            loss = loss + cfg.aux_weight * (((aux - y) ** 2) * valid).sum() / n
        return loss
    v = valid[:, 0]
    ce = F.cross_entropy(out, y, weight=class_weights, reduction="none")
    loss = (ce * v).sum() / v.sum().clamp_min(1.0)
    if cfg.dice:
        loss = loss + cfg.dice_weight * _dice_loss(out, y, valid)
    if aux is not None:
        ce_aux = F.cross_entropy(aux, y, weight=class_weights, reduction="none")
        loss = loss + cfg.aux_weight * (ce_aux * v).sum() / v.sum().clamp_min(1.0)
    return loss


def _weighted_sq(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``w``-weighted mean of ``(a - b)^2`` (0 where the weights sum to 0): the size head's
    losses, weighted by density so that only where nuclei are counts."""
    return (w * (a - b) ** 2).sum() / w.sum().clamp_min(1e-6)


def _count_label_loss(
    net: nn.Module,
    draws: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    cfg: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """Mean of ``(integral of the density inside the box - count)^2 / (count + 1)``."""
    parts = []
    for x, region, n in draws:
        out = net(x.to(device))[:, :1]
        pred = (out * region.to(device)).sum() / cfg.density_scale
        parts.append((pred - n) ** 2 / (n + 1.0))
    return torch.stack(parts).mean()


def _keep_loss(
    teacher: nn.Module, x: torch.Tensor, out: torch.Tensor, outside: torch.Tensor, task: str
) -> torch.Tensor:
    """Mean over the unlabelled pixels (``outside`` ``(B, 1, H, W)``) of the difference to the
    start network's prediction: squared density difference (counting; plus, with a size head,
    the squared difference of its log-size map weighted by the start network's density),
    cross-entropy against its class probabilities (segmentation)."""
    m = outside.to(out.device)
    n = m.sum().clamp_min(1.0)
    with torch.no_grad():
        ref = teacher(x)
        if isinstance(ref, (tuple, list)):
            ref = ref[0]
    if task == "count":
        loss = (((out[:, :1] - ref[:, :1]) ** 2) * m).sum() / n
        if out.shape[1] > 1 and ref.shape[1] > 1:
            # the size head there too, weighted by the start network's density (where it sees
            # nuclei): otherwise a few boxes move the diameter the model estimates for whole
            # images, and with it the grid everything is counted on
            loss = loss + _weighted_sq(out[:, 1:2], ref[:, 1:2], ref[:, :1].clamp_min(0.0) * m)
        return loss
    soft = ref.softmax(1)
    ce = -(soft * out.log_softmax(1)).sum(1, keepdim=True)
    return (ce * m).sum() / n


@torch.no_grad()
def _predict(net: nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
    return net(x)[0].float().cpu().numpy()


def evaluate(
    net: nn.Module,
    items: Sequence[Prepared],
    task: str,
    *,
    density_scale: float = 100.0,
    n_classes: int = 3,
    device: str | torch.device = "cpu",
    boundary_width: int = 1,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Validation metrics of ``net`` on whole images (``items`` from :func:`~.dataset.prepare`).

    Counting: ``mae``, ``rmse``, ``mre`` (MAE / mean true count), ``bias``, ``mean_true``,
    ``n_images``. Segmentation: ``miou``, ``iou_per_class``, ``f1`` (instance F1 at IoU 0.5),
    ``precision``, ``recall``, ``f1_75`` (IoU 0.75), ``mae`` (instance count error per image),
    ``n_images``. The network is put in eval mode (and left so).
    """
    dev = torch.device(device)
    net.eval()
    sources = [str(it.meta.get("source", "")) for it in items]
    if task == "count":
        pred, true, size_err = [], [], []
        for it in items:
            if cancel is not None:
                cancel.raise_if_cancelled()
            density = _predict(net, it.image, dev)
            d0 = density[0] if it.region is None else density[0][it.region]
            pred.append(float(d0.sum()) / density_scale)
            true.append(it.count)
            if density.shape[0] > 1:  # size head: density-weighted mean log size vs the truth
                w = np.clip(density[0], 0, None)
                if w.sum() > 0:
                    est = float((w * density[1]).sum() / w.sum())
                    ratio = float(it.meta.get("size_ratio", 1.0) or 1.0)
                    size_err.append(abs(est - np.log(ratio)))
        out = count_metrics(pred, true)
        if size_err:
            out["size_log_err"] = float(np.mean(size_err))
        return _per_source(
            out,
            sources,
            lambda idx: count_metrics([pred[i] for i in idx], [true[i] for i in idx]),
            ("mre", "mae"),
        )
    from napari_nalu_count.data import instances_to_classes

    cm = np.zeros((n_classes, n_classes), np.int64)
    pairs = []
    pred_counts, true_counts = [], []
    for it in items:
        if cancel is not None:
            cancel.raise_if_cancelled()
        classes = _predict(net, it.image, dev).argmax(0).astype(np.uint8)
        target = instances_to_classes(it.labels, boundary_width=boundary_width)
        cm += confusion_matrix(target, classes, n_classes)
        inst = classes_to_instances(classes)
        pairs.append((it.labels, inst))
        pred_counts.append(float(len(np.unique(inst[inst > 0]))))
        true_counts.append(it.count)
    miou, per_class = mean_iou(cm)
    matches = instance_f1(pairs, (0.5, 0.75))
    m50 = matches[0.5]

    def f1_of(idx: list[int]) -> dict[str, Any]:
        sub = instance_f1([pairs[i] for i in idx], (0.5,))
        return {"f1": sub[0.5].f1}

    extra = _per_source({}, sources, f1_of, ("f1",))
    return extra | {
        "miou": miou,
        "iou_per_class": per_class,
        "f1": m50.f1,
        "precision": m50.precision,
        "recall": m50.recall,
        "f1_75": matches[0.75].f1,
        "mae": count_metrics(pred_counts, true_counts)["mae"],
        "n_images": len(items),
    }


def _per_source(
    metrics: dict[str, Any], sources: list[str], compute: Callable, keys: tuple[str, ...]
) -> dict[str, Any]:
    """Add ``KEY@SOURCE`` and ``KEY_mean`` (mean over sources) when items come from several
    sources (``Prepared.meta['source']``); unchanged for a single source."""
    names = sorted(set(sources))
    if len(names) < 2:
        return metrics
    out = dict(metrics)
    per: dict[str, list[float]] = {k: [] for k in keys}
    for src in names:
        sub = compute([i for i, s in enumerate(sources) if s == src])
        for k in keys:
            v = float(sub[k])
            out[f"{k}@{src or '?'}"] = v
            per[k].append(v)
    for k in keys:
        out[f"{k}_mean"] = float(np.mean(per[k]))
    return out


@torch.no_grad()
def recalibrate_bn(
    net: nn.Module,
    items: Sequence[Prepared],
    max_images: int | None = None,
    *,
    device: str | torch.device = "cpu",
    cancel: CancelToken | None = None,
) -> int:
    """Re-estimate every BatchNorm's running statistics on whole images (in place).

    The statistics are reset and recomputed as the cumulative average (``momentum=None``) over
    the first ``max_images`` of ``items`` (all when None), one image per forward pass; the rest
    of the network runs in eval mode (FRE off, no auxiliary heads). Patch-trained networks then
    see the same statistics at inference as on whole images. Returns the number of images used
    (0: nothing changed, e.g. no BatchNorm or no images). The network is left in eval mode.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    use = list(items)[: max_images if max_images is not None else len(items)]
    net.eval()
    if not bns or not use:
        return 0
    dev = torch.device(device)
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        if m.track_running_stats:
            m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for it in use:
            if cancel is not None:
                cancel.raise_if_cancelled()
            net(torch.from_numpy(np.ascontiguousarray(it.image[None])).to(dev))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        net.eval()
    return len(use)


class _Ema:
    """Exponential moving average of a network's floating-point parameters and buffers."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.n = 0
        self.state = {
            k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        for k, v in net.state_dict().items():
            if k in self.state:
                self.state[k].mul_(d).add_(v.detach(), alpha=1.0 - d)

    def swap_in(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights; return the live ones to restore afterwards."""
        live = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict({**live, **self.state})
        return live


def _better(a: float, b: float | None, monitor: str) -> bool:
    if b is None or not math.isfinite(b):
        return math.isfinite(a)
    return a < b if monitor in _LOWER_IS_BETTER else a > b


# ---------------------------------------------------------------------------------------------
# the loop


def _patch_sampler(
    items: Sequence[Prepared], task: str, cfg: TrainConfig, rng: np.random.Generator
) -> PatchSampler:
    return PatchSampler(
        items,
        task,
        cfg.patch_size,
        cfg.batch_size,
        rng,
        sigma=cfg.sigma,
        density_scale=cfg.density_scale,
        augment=cfg.augment,
        boundary_width=cfg.boundary_width,
        scale_jitter=cfg.scale_jitter,
        appearance=cfg.appearance,
        source_weights=cfg.source_weights,
        wide_jitter=cfg.wide_jitter,
        wide_prob=cfg.wide_prob,
        edge_margin=cfg.edge_margin if task == "count" else 0.0,
        small_weight=cfg.small_weight if task == "segment" else 0.0,
        small_size=cfg.small_size,
    )


def train(
    model_or_config: Any,
    train_samples: Sequence[Any],
    val_samples: Sequence[Any] | None = None,
    task: str | None = None,
    cfg: TrainConfig | None = None,
    *,
    callback: Callback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train a counting or segmentation network; return the best weights and the history.

    ``model_or_config`` is an architecture config dict (built under ``torch.manual_seed(seed)``),
    a network (trained in place) or a ``LoadedModel`` (its weights are copied). ``train_samples``
    and ``val_samples`` are ``data.readers.Sample`` objects (dots for counting, labels for
    segmentation); ``task`` defaults to the config's. ``callback`` receives the events of
    :func:`train_events` (:class:`~napari_nalu_count.events.TrainStep` per step,
    :class:`~napari_nalu_count.events.EpochEnd` per validated epoch, one
    :class:`~napari_nalu_count.events.TrainDone`); they also read like the dicts
    ``{"kind": "step" | "epoch" | "done", "epoch", "step", "loss", "metrics", ...}``.

    Epochs and steps count from 1 in events. A set ``cancel`` token stops the run before the
    next step; the result then holds the best weights so far and ``cancelled=True``. A NaN or
    infinite loss raises :class:`~napari_nalu_count.errors.TrainingDiverged` (epoch, step,
    loss, and the best validated weights so far as ``best_state``, or None).
    """
    steps = train_events(model_or_config, train_samples, val_samples, task, cfg, cancel=cancel)
    return drive(steps, callback)


def train_events(
    model_or_config: Any,
    train_samples: Sequence[Any],
    val_samples: Sequence[Any] | None = None,
    task: str | None = None,
    cfg: TrainConfig | None = None,
    *,
    cancel: CancelToken | None = None,
) -> Generator[Event, None, TrainResult]:
    """:func:`train` as an event generator: yields ``TrainStep`` / ``EpochEnd`` / ``TrainDone``
    and returns the :class:`TrainResult`."""
    cfg = cfg or TrainConfig()
    cfg.check()
    if cfg.sigma is None:  # a loaded model's own sigma, else the default (on a copy)
        cfg = dataclasses.replace(
            cfg, sigma=start_model_sigma(getattr(model_or_config, "card", None))
        )
    net, config = _resolve_model(model_or_config, cfg.fre, cfg.seed)
    inferred = _task_of(net, config)
    task = task or inferred
    if task != inferred:
        raise InputError(f"task {task!r} does not match the network, which is a {inferred!r} model")
    n_classes = _n_classes(net, config)
    monitor = cfg.monitor or ("mae" if task == "count" else "f1")
    device = torch.device(cfg.device)
    in_ch = int((config or {}).get("in_channels", 1))

    train_items = prepare(train_samples, task, normalization=cfg.normalization, in_channels=in_ch)
    val_items = prepare(val_samples or [], task, normalization=cfg.normalization, in_channels=in_ch)
    rng = np.random.default_rng(cfg.seed)
    count_items = [it for it in train_items if it.count_only]
    dense_items = [it for it in train_items if not it.count_only]
    count_sampler = None
    if count_items:
        count_sampler = CountLabelSampler(
            count_items,
            cfg.batch_size,
            rng,
            augment=cfg.augment,
            scale_jitter=cfg.scale_jitter,
            appearance=cfg.appearance,
        )
    sampler = None
    if dense_items:
        sampler = _patch_sampler(dense_items, task, cfg, rng)
    teacher = None
    if cfg.keep_weight > 0 and any(it.region is not None for it in dense_items):
        teacher = copy.deepcopy(net).to(device).eval()
        teacher.requires_grad_(False)
    net.to(device)
    net.requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    anchor = [p.detach().clone() for p in params] if cfg.anchor_weight > 0 else None
    plateau = None
    if cfg.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min" if monitor in _LOWER_IS_BETTER else "max",
            factor=0.5,
            patience=max(1, cfg.patience // 3),
            min_lr=cfg.min_lr,
        )
    class_weights = None
    if task == "segment" and cfg.class_weights is not None:
        class_weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    budget_s = None if cfg.max_minutes is None else cfg.max_minutes * 60.0

    def lr_at(step: int, elapsed: float) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.schedule != "cosine":
            return opt.param_groups[0]["lr"]
        progress = step / max(1, total_steps)
        if budget_s is not None:
            progress = max(progress, elapsed / budget_s)
        progress = min(1.0, progress)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    ema = _Ema(net, cfg.ema) if cfg.ema > 0 else None
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, Any] = {}
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs = 0
    cancelled = stopped_early = out_of_time = False
    step = 0
    epoch = 0
    t0 = time.perf_counter()

    def is_cancelled() -> bool:
        return cancel is not None and cancel.cancelled

    for epoch in range(1, cfg.epochs + 1):
        if is_cancelled():
            cancelled = True
            break
        if hasattr(net, "reselect_fre"):
            net.reselect_fre(epoch - 1)
        net.train()
        if cfg.freeze_bn:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        epoch_losses: list[float] = []
        te = time.perf_counter()
        for _ in range(cfg.steps_per_epoch):
            if is_cancelled():
                cancelled = True
                break
            lr = lr_at(step, time.perf_counter() - t0)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = torch.zeros((), device=device)
            if sampler is not None:
                x, y, valid = sampler.batch()
                x, y, valid = x.to(device), y.to(device), valid.to(device)
                out = net(x)
                loss = _loss(net, out, y, valid, task, cfg, class_weights, sampler.batch_info)
                outside = sampler.batch_info.get("outside")
                if teacher is not None and outside is not None:
                    loss = loss + cfg.keep_weight * _keep_loss(teacher, x, out, outside, task)
            if count_sampler is not None:
                draws = count_sampler.batch()
                loss = loss + cfg.count_label_weight * _count_label_loss(net, draws, cfg, device)
            if cfg.reg_weight and hasattr(net, "regularization"):
                loss = loss + cfg.reg_weight * net.regularization()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if anchor is not None:
                pull = min(1.0, lr * cfg.anchor_weight)
                with torch.no_grad():
                    for p, a in zip(params, anchor, strict=True):
                        p.lerp_(a, pull)
            if ema is not None:
                ema.update(net)
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    epoch,
                    step,
                    value,
                    best_state=best_state,
                    best_epoch=best_epoch,
                    best_metrics=best_metrics,
                    history=history,
                )
            losses.append(value)
            epoch_losses.append(value)
            yield TrainStep(epoch, step, value, lr, total_steps)
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                out_of_time = True
                break
        if cancelled and not epoch_losses:
            break
        # validation (skipped when cancelled: the run must stop within one step)
        metrics: dict[str, Any] = {}
        improved = False
        live = ema.swap_in(net) if ema is not None and not cancelled else None
        if not cancelled:
            if cfg.bn_recalibrate:
                try:
                    recalibrate_bn(
                        net, train_items, cfg.bn_recalibrate, device=device, cancel=cancel
                    )
                except Cancelled:
                    cancelled = True
        if not cancelled:
            if val_items:
                try:
                    metrics = evaluate(
                        net,
                        val_items,
                        task,
                        density_scale=cfg.density_scale,
                        n_classes=n_classes,
                        device=device,
                        boundary_width=cfg.boundary_width,
                        cancel=cancel,
                    )
                except Cancelled:
                    cancelled = True
        if not cancelled:
            if val_items:
                value = float(metrics.get(monitor, float("nan")))
                improved = _better(value, best_value, monitor)
                if improved:
                    best_value = value
            else:
                improved = True  # no validation data: keep the latest weights
            if improved:
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                best_metrics = dict(metrics)
                best_epoch = epoch
                bad_epochs = 0
            else:
                bad_epochs += 1
            if plateau is not None and metrics:
                plateau.step(float(metrics.get(monitor, float("nan"))))
        if live is not None:
            net.load_state_dict(live)
            net.train()
        record = {
            "epoch": epoch,
            "step": step,
            "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "lr": opt.param_groups[0]["lr"],
            "metrics": metrics,
            "best": improved,
            "seconds": time.perf_counter() - te,
        }
        if not cancelled:
            history.append(record)
            yield EpochEnd(**record)
        if cancelled or out_of_time:
            break
        if val_items and bad_epochs >= cfg.patience:
            stopped_early = True
            break

    if best_state is not None:
        net.load_state_dict(best_state)
    net.to("cpu")
    net.eval()
    seconds = time.perf_counter() - t0
    yield TrainDone(
        epoch=epoch,
        step=step,
        loss=losses[-1] if losses else float("nan"),
        metrics=dict(best_metrics),
        best_epoch=best_epoch,
        cancelled=cancelled,
        stopped_early=stopped_early,
        seconds=seconds,
    )
    return TrainResult(
        net=net,
        history=history,
        best_metrics=best_metrics,
        best_epoch=best_epoch,
        cancelled=cancelled,
        stopped_early=stopped_early,
        config=config,
        train_config=copy.deepcopy(cfg),
        steps=step,
        seconds=seconds,
        losses=losses,
    )
