"""The inference engine behind ``count`` and ``segment`` (API, CLI and widgets all call these).

Pipeline per plane (stacks are walked plane by plane, dask arrays computed one plane at a time):

1. read the plane, reduce channels (``channel=``), refuse NaN/Inf; a constant plane is empty
   (count 0, no points, no labels) and skips the network;
2. normalise as the model card says (percentile, :func:`~napari_nalu_count.data.normalize.
   percentile_normalize`), leaving a few large bright artefacts out of the high percentile
   and clamping hot pixels (``OPTIONS["bright_artefacts"]``, ``OPTIONS["hot_pixels"]``;
   recorded in the result's ``corrections``);
3. resample by ``card diameter / diameter``: a given ``diameter`` wins; ``"auto"``, and
   ``None`` for models whose card says ``diameter_mode: "estimate"`` (the bundled generalist
   models), estimate it once, from the first non-empty plane (:mod:`.size`: a learned
   scale-profile regressor, tens of milliseconds) and, for counters with a size head, check the
   estimate with the network itself (one pass on a window of at most ``REFINE_WINDOW`` px of
   the model grid, or the whole plane when it has at most ``REFINE_WHOLE_PIXELS`` pixels, whose
   output is then reused by the count when no resampling follows): when the
   objects it sees are more than ``REFINE_TOLERANCE`` off the model's diameter the image is
   resampled again. Counting then checks the estimate against the plane's round foreground
   islands (:func:`_island_check`: large textured nuclei, whose grain both checks read as
   small cells). ``None`` for other models resamples by the card's ``input_scale`` (1.0
   when absent);
4. predict tile by tile with overlap and smooth blending (:mod:`.tiling`) under
   ``torch.inference_mode`` with batch norm folded into the convolutions; CUDA out-of-memory
   errors halve the batch, then the tile, and retry the plane;
5. post-process on the model grid (density peaks, watershed) and map back to the image grid.

Each call exists twice: :func:`count_events` / :func:`segment_events` are generators that yield
:class:`~napari_nalu_count.events.Progress` events (one per tile) and return the result, for a
napari ``thread_worker`` to drive; :func:`count` / :func:`segment` drive them and report each
event to ``progress(done, total, message)``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_nalu_count.errors import CancelToken, InputError
from napari_nalu_count.events import Event, Progress, drive
from napari_nalu_count.infer import allocator as _allocator
from napari_nalu_count.infer import axes as _axes
from napari_nalu_count.infer import backend as _backend
from napari_nalu_count.infer import background as _background
from napari_nalu_count.infer import device as _device
from napari_nalu_count.infer import inputs as _inputs
from napari_nalu_count.infer import multiscale as _multiscale
from napari_nalu_count.infer import postprocess as _post
from napari_nalu_count.infer import scale as _scale
from napari_nalu_count.infer.tiling import (
    balanced_tile,
    n_tiles,
    predict_tiled,
    predict_tiled_steps,
)

ProgressFn = Callable[[int, int, str], Any]

#: engine-wide switches (the speed benchmark flips them to measure each one's effect)
OPTIONS: dict[str, Any] = {
    "fuse_bn": True,  # fold BatchNorm into the preceding convolution at load
    # a NAC/NAU residual branch (unit, BN, concat, 1x1 squeeze) becomes two added 1x1
    # convolutions in the inference copy (nn.blocks.FoldedArithmeticResidual)
    "fold_residuals": True,
    # a U-Net decoder's first convolution split by input channels (up / skip) and the two
    # results added, instead of convolving their concatenation (nn.unet.SplitInputDoubleConv)
    "split_decoders": True,
    # a counting U-Net's density and size heads as one 1x1 convolution with two outputs
    # (nn.unet.fuse_heads): a one-output 1x1 convolution misses oneDNN's fast path
    "fuse_heads": True,
    "channels_last": True,  # NHWC memory format: 2.1x faster on CPU (docs/benchmarks/speed.md)
    # ReLU modules of the inference copy work in place (each follows a convolution whose output
    # nothing else reads): 1.16x on the segmenter's network; LeakyReLU in place measured slower
    "inplace_relu": True,
    "compile": False,  # torch.compile the network (pays only for long runs on a GPU)
    # "torch" / "auto" / "onnxruntime" (None: $NALU_COUNT_BACKEND, else "torch"), see .backend
    "backend": None,
    "overlap": 64,  # pixels shared by neighbouring tiles
    # tiles shrunk to cover each plane evenly (same tile count, fewer pixels), see .tiling
    "balanced_tiles": True,
    "batch_size": None,  # tiles per forward pass; None = automatic per device
    "size_check": True,  # check an estimated diameter with the counter's size head
    # ... and with the plane's round foreground islands (large textured nuclei), see
    # :func:`_island_check`
    "island_check": True,
    # segment(): the counter that places the watershed seeds runs this many times finer than
    # its model grid (nuclei 12 px -> 16 px): its peaks separate touching nuclei better
    # (docs/models.md, "count-guided seeds")
    "seed_grid": 1.33,
    # segment planes larger than SEGMENT_BLOCK_PIXELS block by block (bounded memory)
    "segment_blocks": True,
    # normalise each plane once (the size estimate and segment's counter reuse it) and skip
    # the seed counter's density map on the image grid in segment (only its points are used)
    "share_work": True,
    # glibc allocator tuned for large activation tensors (fewer page faults), see .allocator
    "malloc_tuning": True,
    # the counter's density is zeroed farther than a nucleus diameter from every density bump
    # (the network's small non-zero floor on empty background adds up over a sparse field),
    # see :func:`gate_background`
    "gate_background": True,
    # isolated pixels far brighter than their neighbours (a camera's hot pixels, cosmic rays)
    # are clamped after normalisation, see :func:`~napari_nalu_count.data.normalize.
    # suppress_hot_pixels`; the size estimator does the same
    "hot_pixels": True,
    # a few large bright artefacts (dust, dead-cell clumps) are left out of the normalisation's
    # high percentile, see :func:`~napari_nalu_count.data.normalize.artefact_high`
    "bright_artefacts": True,
    # segment(background="auto"): the segmenter network also sees the plane flattened when its
    # seed counter found the background uneven (False: only the seeds come from a flattened
    # plane)
    "auto_background_segmenter": True,
    # the bright artefacts found by the rule above are also left out of the plane (set to the
    # background's level, 0) for the size estimate, the count and the segmentation (blocked
    # counting too: the area found on its subsample, read in each block)
    "mask_artefacts": True,
}
#: smallest tile the out-of-memory fallback goes down to
MIN_TILE = 64
#: size-head check of an estimated diameter: window edge on the model grid (pixels), the
#: relative size error above which the image is resampled again, and at most this many checks
REFINE_WINDOW = 256
REFINE_TOLERANCE = 1.25
REFINE_ROUNDS = 2
#: model-grid planes up to this many pixels are predicted whole for the check (the size head is
#: still read on the REFINE_WINDOW window), so that the check's pass *is* the count's pass when
#: the estimate holds (the usual case: 94 % of val estimates are within 30 %); a window pass
#: of its own cost 32 of the estimate's 57 ms on BBBC039's 520 x 696 images. When the check
#: does resample, the whole plane costs at most 4 windows.
REFINE_WHOLE_PIXELS = 512 * 512
#: the size head's estimate is used only when the window holds at least this many cells
REFINE_MIN_CELLS = 2.0
#: island check (:func:`_island_check`): the islands' diameter replaces an estimate it exceeds
#: this many times, when at least ISLAND_MIN_COUNT round islands cover at least
#: ISLAND_MIN_COVER of the foreground and span ISLAND_MIN_SAMPLES samples of their grid
ISLAND_VETO = 1.5
ISLAND_MIN_COUNT = 5
ISLAND_MIN_COVER = 0.1
ISLAND_MIN_SAMPLES = 8.0
#: ... unless the median island holds more than this many cells at the checked size (a
#: colony of small nuclei, not a textured nucleus; see :func:`_island_check`)
ISLAND_MAX_CELLS = 22.0
#: islands this many times the hint are measured again with their own diameter as the hint
ISLAND_REMEASURE = 1.25
#: ... and the counter then runs on a grid this much coarser than the islands' diameter asks
#: for: at their own size it still reads the chromatin grain as cells (+20-48 % on 90 px
#: textured nuclei, 1.25x: +1-19 %; plain nuclei lose 0-1 point at 1.25x)
ISLAND_COARSEN = 1.25


@dataclass
class CountResult:
    """Result of :func:`count`.

    ``count``: float for one 2-D plane, 1-D float64 array (one per plane, stack axes flattened in
    C order) for stacks. ``density``: float32, the image's stack + spatial shape in ``axes``
    order, in cells per pixel (its sum is the count). ``points``: ``(N, len(axes))`` float64
    cell centres in image pixel coordinates, columns in ``axes`` order (stack indices included).
    ``diameter``: the object diameter used for rescaling (pixels of the image), None when not
    rescaled; ``diameter_source``: ``"given"`` (by the caller), ``"estimated"`` (see the module
    docstring) or ``"model"`` (no rescaling but the card's ``input_scale``).

    Multiscale inputs: ``level`` is the pyramid level counted (None for a plain array) and
    ``level_scale`` its size factor per axis of ``axes`` relative to level 0 (level-0 size /
    level size; 1 on stack axes): the results have that level's geometry, so a layer over
    level 0 takes ``scale = level0_scale * level_scale``.

    ``count(..., volume=True)`` on a stack with a ``Z`` axis adds ``volume_count`` (cells
    detected in 3-D: a float for one volume, a 1-D array with one per volume, i.e. per index of
    the other stack axes in C order, for ``TZYX``), ``volume_points`` (``(N, len(axes))``
    centres in ``axes`` order, ``z`` refined to a fraction of a plane) and ``z_diameter`` (the
    nucleus extent along Z in planes used, given or estimated); see :mod:`.volume`. They are
    None otherwise.

    ``count(..., uncertainty=True)`` adds ``count_sd`` (the calibrated standard deviation of
    the count, cells: a float for a 2-D image, one per plane for stacks, like ``count``),
    ``uncertainty`` (float32, the shape of ``density``: a per-pixel standard deviation in
    cells per pixel, high where the model is unsure) and ``uncertainty_info`` (the raw
    augmentation counts ``tta_counts`` per plane, their sd ``tta_sd`` and the ``calibration``
    used); see :mod:`.uncertainty`. They are None otherwise.

    ``size_estimate`` (``diameter_source == "estimated"`` only, else None): how the diameter
    was found, ``regressor`` (the learned estimate, px), ``size_head`` (one ``log_size`` /
    ``cells`` entry per check pass of the counter's size head), ``refined`` (px, when checked)
    and ``seconds``: the time the estimate added to the count (regressor plus check passes
    whose prediction was not reused for the count).
    """

    count: float | np.ndarray
    density: np.ndarray
    points: np.ndarray
    axes: str
    diameter: float | None = None
    model: str = ""
    diameter_source: str = "model"
    level: int | None = None
    level_scale: tuple[float, ...] | None = None
    volume_count: float | np.ndarray | None = None
    volume_points: np.ndarray | None = None
    z_diameter: float | None = None
    count_sd: float | np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    uncertainty_info: dict[str, Any] | None = None
    size_estimate: dict[str, Any] | None = None
    #: the background opening's width in object diameters when a plane's background was
    #: subtracted (``background=`` on, or ``"auto"`` and found uneven), else None
    background: float | None = None
    #: what the normalisation corrected in the image (all planes): ``"hot_pixels"``, pixels
    #: clamped (:func:`~napari_nalu_count.data.normalize.suppress_hot_pixels`),
    #: ``"bright_artefacts"``, planes whose high percentile left a few large bright artefacts
    #: out (:func:`~napari_nalu_count.data.normalize.artefact_high`), and
    #: ``"artefact_pixels"``, the pixels of those artefacts also left out of the plane (set to
    #: the background's level: not sized, counted or segmented),
    #: ``"uneven_background"``, planes that ``background="auto"`` flattened; empty when
    #: nothing was corrected
    corrections: dict[str, int] = field(default_factory=dict)
    #: ``background="auto"``: per plane judged, :func:`.background.assess_background`'s
    #: ``amplitude``, ``residual`` and ``uneven``
    background_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plane_counts(self) -> np.ndarray:
        """The counts shaped like the stack (its ``T``/``Z`` axes in ``axes`` order); a 0-d
        array for a 2-D image. ``plane_counts.ravel()`` is ``count`` (the CSV frame order)."""
        return _stack_shaped(self.count, self.density.shape, self.axes)

    @property
    def plane_sd(self) -> np.ndarray | None:
        """``count_sd`` shaped like :attr:`plane_counts` (None without uncertainty)."""
        if self.count_sd is None:
            return None
        return _stack_shaped(self.count_sd, self.density.shape, self.axes)


@dataclass
class SegmentResult:
    """Result of :func:`segment`.

    ``labels``: int32 instance labels of the image's stack + spatial shape (``axes`` order), each
    plane numbered 1..n on its own. ``count``: int for a 2-D plane, 1-D int64 array per plane
    for stacks.

    ``segment(..., volume=True)`` on a stack with a ``Z`` axis adds ``volume_labels`` (int32,
    the shape of ``labels``: the per-plane objects linked across Z by overlap, one id per 3-D
    object, numbered per volume), ``volume_count`` (an int for one volume, a 1-D array
    with one per volume for ``TZYX``) and ``volume_points`` (the 3-D objects' centroids, ``axes``
    order); see :func:`.volume.link_labels`. ``level`` / ``level_scale`` as in
    :class:`CountResult`.
    """

    labels: np.ndarray
    count: int | np.ndarray
    axes: str
    diameter: float | None = None
    model: str = ""
    seeds: str = "count"
    diameter_source: str = "model"
    level: int | None = None
    level_scale: tuple[float, ...] | None = None
    volume_labels: np.ndarray | None = None
    volume_count: int | np.ndarray | None = None
    volume_points: np.ndarray | None = None
    #: as :attr:`CountResult.background`
    background: float | None = None
    #: as :attr:`CountResult.corrections` (the segmenter's own normalisation; the planes
    #: flattened by ``background="auto"``)
    corrections: dict[str, int] = field(default_factory=dict)
    #: as :attr:`CountResult.background_checks` (the seed counter's, when it judged)
    background_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plane_counts(self) -> np.ndarray:
        """Objects per plane shaped like the stack; a 0-d array for a 2-D image."""
        return _stack_shaped(self.count, self.labels.shape, self.axes)


def describe_corrections(corrections: dict[str, int] | None, pixels: int | None = None) -> str:
    """One line saying what the normalisation corrected (a result's ``corrections``), e.g.
    ``"40 hot pixels ignored; bright artefacts left out of the brightness range and the count
    (12 % of the image)"``; "" when nothing was. ``pixels``: the image's pixels (all planes),
    for the artefacts' share (see :func:`result_pixels`)."""
    fixes = corrections or {}

    def planes(key: str) -> str:
        n = int(fixes[key])
        return "" if n == 1 else f" ({n} planes)"

    parts = []
    if fixes.get("hot_pixels"):
        n = int(fixes["hot_pixels"])
        parts.append(f"{n} hot pixel{'s' if n != 1 else ''} ignored")
    if fixes.get("bright_artefacts"):
        masked = int(fixes.get("artefact_pixels", 0))
        what = "the brightness range and the count" if masked else "the brightness range"
        amount = ""
        if masked and pixels:
            share = 100.0 * masked / float(pixels)
            amount = f" ({share:.0f} % of the image)" if share >= 1 else " (under 1 % of the image)"
        parts.append(f"bright artefacts left out of {what}{amount}{planes('bright_artefacts')}")
    if fixes.get("uneven_background"):
        parts.append(f"uneven background found and flattened{planes('uneven_background')}")
    return "; ".join(parts)


def result_pixels(result: Any) -> int | None:
    """The pixels (all planes) of the image a :class:`CountResult` or :class:`SegmentResult`
    came from (its density or label image), or None."""
    for name in ("labels", "density"):
        arr = getattr(result, name, None)
        if isinstance(arr, np.ndarray) and arr.size:
            return int(arr.size)
    return None


def _stack_shaped(count: Any, shape: tuple[int, ...], axes: str) -> np.ndarray:
    stack = tuple(int(n) for n, a in zip(shape, axes, strict=False) if a in _axes.STACK_AXES)
    return np.asarray(count).reshape(stack)


# ------------------------------------------------------------------------------------------
# models


def _resolve_model(model: Any, task: str, device: torch.device) -> Any:
    """A LoadedModel (or anything with ``.net``, ``.card``, ``.task``) of ``task``."""
    if hasattr(model, "net") and hasattr(model, "card"):
        loaded = model
    elif isinstance(model, (str, os.PathLike)):
        # the cached model itself, read only: the engine runs its own prepared copy, and a
        # stable object lets that copy be reused across calls (no deep copy per call)
        from napari_nalu_count.models.store import load_model_shared

        loaded = load_model_shared(model, device=str(device))
    else:
        raise InputError(f"model must be a name, a path or a loaded model, got {model!r}")
    got = getattr(loaded, "task", None) or loaded.card.get("task")
    if got != task:
        name = getattr(loaded, "name", "") or loaded.card.get("name", "?")
        want = "a counting" if task == "count" else "a segmentation"
        raise InputError(f"model {name!r} is a {got!r} model; {task} needs {want} model")
    return loaded


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair inside ``nn.Sequential`` containers (in place).

    The BN is replaced by ``nn.Identity`` and its affine transform moved into the convolution's
    weight and bias (eval-mode statistics). Returns the number of folded pairs.
    """
    folded = 0
    for module in list(net.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules.keys())
        for a, b in zip(names[:-1], names[1:], strict=True):
            conv, bn = module._modules[a], module._modules[b]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            with torch.no_grad():
                std = torch.sqrt(bn.running_var + bn.eps)
                gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
                beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
                factor = gamma / std
                conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
                new_bias = beta + (bias - bn.running_mean) * factor
                conv.bias = nn.Parameter(new_bias.detach().clone(), requires_grad=False)
            module._modules[b] = nn.Identity()
            folded += 1
    return folded


def fold_residuals(net: nn.Module) -> int:
    """Replace every foldable :class:`~napari_nalu_count.nn.blocks.ArithmeticResidual` of an
    eval-mode network (NAC or NAU unit) by its
    :class:`~napari_nalu_count.nn.blocks.FoldedArithmeticResidual` (in place; NALU and NMU
    branches are not linear and stay). Returns the number replaced."""
    from napari_nalu_count.nn.blocks import FoldedArithmeticResidual

    n = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if FoldedArithmeticResidual.foldable(child):
                setattr(module, name, FoldedArithmeticResidual.from_residual(child))
                n += 1
    return n


@dataclass
class _Prepared:
    net: Any
    fingerprint: tuple
    ref: Any = field(repr=False, default=None)


_prep_cache: dict[tuple, _Prepared] = {}
_prep_lock = threading.Lock()


def _fingerprint(net: nn.Module) -> tuple:
    """Changes when any parameter/buffer is modified in place (torch's version counters)."""
    return tuple(t._version for t in net.state_dict(keep_vars=True).values())


def prepare_net(loaded: Any, device: torch.device) -> Any:
    """An inference copy of ``loaded.net`` on ``device``: eval mode, BN folded, then either an
    :class:`~.backend.OrtNet` (ONNX Runtime, see :mod:`.backend`) or the PyTorch network,
    optionally channels_last / compiled (see :data:`OPTIONS`). Either is called on
    ``(N, C, H, W)`` tensors and has ``stride``. The caller's network is never modified.

    Copies are cached per (network, device, options, backend, threads) and rebuilt when the
    original's weights change in place (e.g. after fine-tuning).
    """
    src = loaded.net
    _allocator.apply(OPTIONS["malloc_tuning"])
    backend = "torch" if OPTIONS["compile"] else _backend.resolve(OPTIONS["backend"], device)
    threads = torch.get_num_threads() if backend == "onnxruntime" else 0
    key = (
        id(src),
        str(device),
        OPTIONS["fuse_bn"],
        OPTIONS["fold_residuals"],
        OPTIONS["split_decoders"],
        OPTIONS["fuse_heads"],
        OPTIONS["channels_last"],
        OPTIONS["compile"],
        OPTIONS["inplace_relu"],
        backend,
        threads,
    )
    fp = _fingerprint(src)
    with _prep_lock:
        hit = _prep_cache.get(key)
        if hit is not None and hit.ref() is src and hit.fingerprint == fp:
            return hit.net
    net = copy.deepcopy(src).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if (
        OPTIONS["fuse_bn"]
        or OPTIONS["fold_residuals"]
        or OPTIONS["split_decoders"]
        or OPTIONS["fuse_heads"]
    ):
        check = torch.randn(
            1, _in_channels(loaded), 64, 64, generator=torch.Generator().manual_seed(0)
        )
        with torch.inference_mode():
            ref_out = net.to("cpu")(check)
        fused = copy.deepcopy(net)
        folded = fold_batchnorm(fused) if OPTIONS["fuse_bn"] else 0
        folded += fold_residuals(fused) if OPTIONS["fold_residuals"] else 0
        if OPTIONS["split_decoders"]:
            from napari_nalu_count.nn.unet import split_decoder_inputs

            folded += split_decoder_inputs(fused)
        if OPTIONS["fuse_heads"]:
            from napari_nalu_count.nn.unet import fuse_heads

            folded += fuse_heads(fused)
        if folded:
            with torch.inference_mode():
                out = fused(check)
            scale = float(ref_out.abs().max()) + 1e-6
            if float((out - ref_out).abs().max()) <= 1e-3 * scale:
                net = fused
            else:  # pragma: no cover - would mean an unexpected module layout
                warnings.warn(
                    "folding BN / residual units or splitting decoder inputs changed the "
                    "output; using the plain network"
                )
    if OPTIONS["inplace_relu"]:
        _relu_in_place(net)
    prepared: Any = None
    if backend == "onnxruntime":
        prepared = _backend.to_onnxruntime(net.to("cpu").float(), _in_channels(loaded), threads)
    if prepared is None:
        net = net.to(device)
        if OPTIONS["channels_last"]:
            net = net.to(memory_format=torch.channels_last)
        if OPTIONS["compile"]:
            net = torch.compile(net, dynamic=False)
        prepared = net
    with _prep_lock:
        _prep_cache[key] = _Prepared(net=prepared, fingerprint=fp, ref=weakref.ref(src))
        for k in [k for k, v in _prep_cache.items() if v.ref() is None]:
            del _prep_cache[k]
    return prepared


def _relu_in_place(net: torch.nn.Module) -> int:
    """Make the ``nn.ReLU`` modules of an inference copy work in place; returns how many.

    Safe where each ReLU takes a tensor only it reads: in this package's networks every one
    ends a ``Conv -> BN -> activation`` sequence (BN folded or not). Only ReLU: in-place
    LeakyReLU was slower (0.94x on the counter's network, docs/benchmarks/speed.md)."""
    n = 0
    for mod in net.modules():
        if type(mod) is torch.nn.ReLU:
            mod.inplace = True
            n += 1
    return n


def _in_channels(loaded: Any) -> int:
    cfg = getattr(loaded, "config", None) or loaded.card.get("config", {})
    return int(cfg.get("in_channels", 1))


def _out_channels(loaded: Any) -> int:
    cfg = getattr(loaded, "config", None) or loaded.card.get("config", {})
    return int(cfg.get("out_channels", 1))


def _has_size_head(loaded: Any) -> bool:
    cfg = getattr(loaded, "config", None) or loaded.card.get("config", {})
    return bool(cfg.get("size_head", False))


def _stride(net: Any) -> int:
    return int(getattr(net, "stride", 1) or 1)


# ------------------------------------------------------------------------------------------
# shared per-call machinery


def _normalize(plane: np.ndarray, card: dict, corrections: dict | None = None) -> np.ndarray:
    """Normalise a raw ``(H, W)`` plane as the card says; float32. ``corrections`` (a call's
    :attr:`CountResult.corrections`) counts the hot pixels clamped and the planes whose bright
    artefacts were left out of the high percentile."""
    from napari_nalu_count.data.normalize import (
        grow_artefacts,
        percentile_normalize,
        suppress_hot_pixels,
    )

    norm = card.get("normalization") or {"method": "percentile", "low": 1.0, "high": 99.8}
    method = norm.get("method", "percentile")
    if method == "percentile":
        regions: dict[str, Any] = {}
        out = percentile_normalize(
            plane,
            norm.get("low", 1.0),
            norm.get("high", 99.8),
            sparse=True,
            artefacts=OPTIONS["bright_artefacts"],
            info=corrections,
            regions=regions,
        )
        if OPTIONS["hot_pixels"] and out.ndim == 2:
            suppress_hot_pixels(out, info=corrections)
        if OPTIONS["mask_artefacts"] and "mask" in regions and out.ndim == 2:
            # the artefacts themselves: not nuclei, not to be counted or sized
            grown = grow_artefacts(regions["mask"])
            _leave_out_artefacts(out, grown, int(regions["step"]), corrections)
        return out
    if method in (None, "none"):
        return np.asarray(plane, dtype=np.float32)
    raise InputError(f"unsupported normalization method {method!r} in the model card")


def _leave_out_artefacts(
    out: np.ndarray,
    grown: np.ndarray,
    step: int,
    corrections: dict | None,
    core: tuple[int, int, int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
    spacing: int = 1,
) -> None:
    """Set the bright artefacts' area (:func:`~napari_nalu_count.data.normalize.artefact_area`
    of ``grown``, stride ``step``; ``out`` holds the plane's pixels from ``origin`` every
    ``spacing``) of a normalised 2-D array to the background's level, in place, and add its
    pixels inside ``core`` (a block's own part; all of ``out`` by default) to
    ``corrections["artefact_pixels"]``."""
    from napari_nalu_count.data.normalize import artefact_area, tally

    area = artefact_area(grown, step, out.shape, origin, spacing)
    out[area] = 0.0
    y0, y1, x0, x1 = core if core is not None else (0, out.shape[0], 0, out.shape[1])
    tally(corrections, "artefact_pixels", int(np.count_nonzero(area[y0:y1, x0:x1])))


def _same_normalization(a: dict, b: dict) -> bool:
    """True when two model cards normalise images the same way."""
    default = {"method": "percentile", "low": 1.0, "high": 99.8}
    na, nb = (
        dict(default, **(a.get("normalization") or {})),
        dict(default, **(b.get("normalization") or {})),
    )
    return na == nb


def _size_normalized(card: dict, norm: np.ndarray) -> np.ndarray | None:
    """``norm`` when the card's normalisation is the size estimator's own (percentile 1 /
    99.8), so the estimator can take it as is; None otherwise."""
    from napari_nalu_count.infer.size import NORM_PERCENTILES

    cfg = card.get("normalization") or {"method": "percentile", "low": 1.0, "high": 99.8}
    if cfg.get("method", "percentile") != "percentile":
        return None
    if (float(cfg.get("low", 1.0)), float(cfg.get("high", 99.8))) != NORM_PERCENTILES:
        return None
    return norm


def _check_finite(plane: np.ndarray, index: tuple[int, ...]) -> None:
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
        where = f" (plane {index})" if index else ""
        raise InputError(f"image contains NaN or infinite values{where}; replace or mask them")


def _is_constant(plane: np.ndarray) -> bool:
    return plane.size == 0 or bool(plane.min() == plane.max())


class _Runner:
    """Tiles, batches, progress, cancel and the out-of-memory fallback for one call."""

    def __init__(
        self,
        net: Any,
        device: torch.device,
        forward: Callable[[torch.Tensor], torch.Tensor],
        out_channels: int,
        tile_size: int | None,
        n_planes: int,
        cancel: CancelToken | None,
        label: str,
    ) -> None:
        stride = _stride(net)
        if tile_size is None:
            tile = _device.auto_tile_size(device, stride=max(stride, 8))
        else:
            if int(tile_size) < 16:
                raise InputError(f"tile_size must be at least 16 pixels, got {tile_size}")
            tile = int(tile_size)
        self.tile = tile
        self.stride = stride
        self.batch = OPTIONS["batch_size"] or _device.auto_batch_size(device, tile)
        self.overlap = int(OPTIONS["overlap"])
        self.device = device
        # channels_last inputs for a channels_last PyTorch network (ONNX Runtime takes NCHW)
        self.channels_last = bool(OPTIONS["channels_last"]) and isinstance(net, nn.Module)
        self.forward = forward
        self.out_channels = out_channels
        self.n_planes = n_planes
        #: what the normalisation corrected in the user's image (see CountResult.corrections)
        self.corrections: dict[str, int] = {}
        #: ``background="auto"``: the verdict of each plane judged (see _plane_background)
        self.background_checks: list[dict[str, Any]] = []
        self.cancel = cancel
        self.label = label
        self.done = 0
        self.total = 0
        self.passes = 1  # network passes per plane (test-time augmentation runs several)

    def _overlap_for(self, tile: int) -> int:
        return min(self.overlap, tile // 4)

    def tile_for(self, shape: tuple[int, int]) -> int | tuple[int, int]:
        """The tile for a plane of ``shape``: ``self.tile``, or with ``balanced_tiles`` the
        smallest ``(tile_h, tile_w)`` (multiples of the stride) that covers the plane with as
        many tiles as ``self.tile`` needs (:func:`.tiling.balanced_tile`)."""
        if not OPTIONS["balanced_tiles"]:
            return self.tile
        ov = self._overlap_for(self.tile)
        m = max(self.stride, 1)
        return (
            balanced_tile(int(shape[0]), self.tile, ov, m),
            balanced_tile(int(shape[1]), self.tile, ov, m),
        )

    def set_total(self, shape: tuple[int, int], planes_left: int) -> None:
        self.total = self.done + planes_left * self.passes * n_tiles(
            shape, self.tile_for(shape), self._overlap_for(self.tile)
        )

    def report(self, message: str) -> Progress:
        """The progress event for now: tiles done of the tiles planned."""
        return Progress(self.done, max(self.total, self.done), message)

    def check_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()

    def skip_plane(self, shape: tuple[int, int], plane_no: int, note: str = "empty") -> Progress:
        """Count a plane's tiles as done without running them (empty, or already run)."""
        self.done += n_tiles(shape, self.tile_for(shape), self._overlap_for(self.tile))
        return self.report(f"{self.label}: plane {plane_no + 1}/{self.n_planes} ({note})")

    def predict_quiet(self, plane: np.ndarray) -> np.ndarray:
        """One prediction of ``plane`` without progress accounting (diameter checks)."""
        return predict_tiled(
            self.forward,
            plane,
            self.out_channels,
            tile=self.tile_for(plane.shape),
            overlap=self._overlap_for(self.tile),
            batch_size=self.batch,
            device=self.device,
            channels_last=self.channels_last,
            on_tile=self.check_cancel,
        )

    def run(self, plane: np.ndarray, plane_no: int) -> Generator[Progress, None, np.ndarray]:
        """``(H, W)`` float32 -> ``(C, H, W)`` float32 prediction, with OOM fallback; yields a
        :class:`Progress` after every tile."""
        start = self.done
        msg = f"{self.label}: plane {plane_no + 1}/{self.n_planes}"
        while True:
            try:
                steps = predict_tiled_steps(
                    self.forward,
                    plane,
                    self.out_channels,
                    tile=self.tile_for(plane.shape),
                    overlap=self._overlap_for(self.tile),
                    batch_size=self.batch,
                    device=self.device,
                    channels_last=self.channels_last,
                )
                while True:
                    try:
                        next(steps)
                    except StopIteration as stop:
                        return stop.value
                    self.done += 1
                    yield self.report(msg)
                    self.check_cancel()
            except Exception as exc:
                if not _device.is_out_of_memory(exc):
                    raise
                _device.empty_cache(self.device)
                if self.batch > 1:
                    self.batch = max(1, self.batch // 2)
                elif self.tile > MIN_TILE:
                    step = max(self.stride, 8)
                    self.tile = max(MIN_TILE, (self.tile // 2) // step * step)
                else:
                    raise InputError(
                        f"out of memory on {self.device} even with {MIN_TILE} px tiles; "
                        "try device='cpu'"
                    ) from exc
                self.done = start
                self.set_total(plane.shape, self.n_planes - plane_no)
                yield self.report(f"{msg}: out of memory, retrying with {self.tile} px tiles")


#: :func:`gate_background`: a density bump is where the 3 x 3 mean density exceeds this many
#: cells per model-grid pixel (a counted cell peaks near 0.04 on its 12 px grid, a fragment the
#: counter gives 0.15 of a cell near 0.006; the floor on empty background is ~1e-5)
GATE_LEVEL = 2e-3
#: ... and the density is kept within this many object diameters of a bump
GATE_RADIUS = 1.0
#: the dilation's block edge (pixels)
GATE_BLOCK = 4


def gate_background(density: torch.Tensor, diameter: float) -> torch.Tensor:
    """``density`` ``(B, 1, H, W)`` (cells per pixel of a grid on which objects are
    ``diameter`` px) with every value farther than :data:`GATE_RADIUS` diameters (a square
    neighbourhood, on blocks of :data:`GATE_BLOCK` pixels, so up to a block more) from a
    density bump (:data:`GATE_LEVEL`) set to 0.

    The counting network's output on empty background is not exactly 0 but a floor of about
    +-1e-5 per pixel that depends on the background's noise: over a large, sparsely populated
    field it adds up to tens of cells of either sign (with their diameter given, 3 nuclei in
    a 1024 px field were counted -0.9 and 20 in a 2048 px field 63; docs/models.md, "Sparse
    fields"). Near the objects nothing changes: the mass of every counted cell lies within a
    diameter of its own bump.
    """
    # the 3 x 3 mean (pixels outside the plane not counted) as a sum of shifted slices and a
    # separable count: F.avg_pool2d took 13.9 of the gate's 19.5 ms on a 608 px tile (a
    # 1-channel plane is its slow case), the slices 0.4 ms
    h, w = density.shape[-2:]
    padded = F.pad(density, (1, 1, 1, 1))
    rows = padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    n_y = torch.full((h,), 3.0, dtype=density.dtype, device=density.device)
    n_x = torch.full((w,), 3.0, dtype=density.dtype, device=density.device)
    n_y[0] -= 1
    n_y[-1] -= 1
    n_x[0] -= 1
    n_x[-1] -= 1
    keep = total / (n_y[:, None] * n_x[None, :]) > GATE_LEVEL
    # the dilation on blocks of GATE_BLOCK pixels (any pixel of a block kept keeps the block,
    # then the radius rounded up to whole blocks along each axis): 15x cheaper than dilating
    # every pixel, and it keeps at most a block more
    b = GATE_BLOCK
    r = max(1, -(-int(round(GATE_RADIUS * float(diameter))) // b))
    hb, wb = -(-h // b), -(-w // b)
    if (hb * b, wb * b) != (h, w):
        keep = F.pad(keep, (0, wb * b - w, 0, hb * b - h))
    blocks = keep.reshape(*keep.shape[:-2], hb, b, wb, b).any(dim=-1).any(dim=-2)
    blocks = _dilate_blocks(_dilate_blocks(blocks, r, -1), r, -2)
    keep = blocks[..., :, None, :, None].expand(*blocks.shape[:-2], hb, b, wb, b)
    keep = keep.reshape(*blocks.shape[:-2], hb * b, wb * b)[..., :h, :w]
    return torch.where(keep, density, torch.zeros((), dtype=density.dtype, device=density.device))


def _dilate_blocks(mask: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """``mask`` (bool) OR-ed with its shifts by 1..``r`` along ``dim`` both ways (a 1-D
    dilation of radius ``r``, by doubling: log2(r) + 1 steps)."""
    out = mask.clone()
    n = out.shape[dim]
    limit = min(r, n - 1)  # a shift by n - 1 already reaches the whole axis
    done = 0
    while done < limit:
        step = min(done + 1, limit - done)  # covers done + step, contiguously
        grown = out.clone()
        grown.narrow(dim, step, n - step).logical_or_(out.narrow(dim, 0, n - step))
        grown.narrow(dim, 0, n - step).logical_or_(out.narrow(dim, step, n - step))
        out = grown
        done += step
    return out


def _forward_fn(
    net: Any,
    task: str,
    density_scale: float,
    gate_diameter: Callable[[], float] | None = None,
) -> Callable:
    """The tile forward of a prepared network: densities in cells per pixel (and the size
    head's log size) for a counter, class probabilities for a segmenter. ``gate_diameter``
    (counters): the object diameter on the grid being run, read at each call, for
    :func:`gate_background` (``OPTIONS["gate_background"]``)."""
    inv = 1.0 / float(density_scale)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = net(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            if task == "count":
                dens = y[:, :1] * inv
                if gate_diameter is not None and OPTIONS["gate_background"]:
                    dens = gate_background(dens, gate_diameter())
                if y.shape[1] > 1:  # size head: [density, log size]
                    return torch.cat([dens, y[:, 1:2]], dim=1)
                return dens
            return torch.softmax(y.float(), dim=1)

    return forward


class _ScaleState:
    """Resolves the rescaling factor once per call (see the module docstring, step 3).

    ``diameter=d``: factor ``card_diameter / d`` (the card's diameter is on the model grid);
    ``"auto"`` (and ``None`` when the card's ``diameter_mode`` is ``"estimate"``): estimated
    from the first non-empty plane; otherwise ``None`` means the card's ``input_scale``.
    """

    def __init__(
        self,
        diameter: Any,
        card_diameter: float | None,
        input_scale: float | None = None,
        mode: str | None = None,
    ) -> None:
        self.requested = _inputs.parse_diameter(diameter)
        self.card_diameter = float(card_diameter) if card_diameter else None
        self.input_scale = _scale.input_scale_factor(input_scale)
        self.factor: float | None = None
        self.diameter: float | None = None
        #: the network runs as if objects were this many times the diameter (set by the
        #: island check for textured nuclei, whose grain a counter splits at their own size)
        self.coarsen = 1.0
        self.source = "model"
        self.estimate: dict[str, Any] = {}
        if self.requested is None and mode == "estimate" and self.card_diameter:
            self.requested = "auto"
        if self.requested is None:
            self.factor = self.input_scale
        elif self.requested != "auto":
            self.diameter = self.requested  # type: ignore[assignment]
            self.factor = _scale.scale_factor(self.diameter, self.card_diameter)
            self.source = "given"

    @property
    def pending(self) -> bool:
        return self.factor is None

    def set_diameter(self, d: float) -> float:
        """Use an (estimated) image diameter ``d``; clipped to the resampling range (and the
        network's grid then coarsened by :attr:`coarsen`, within the same range)."""
        grid_d = d * self.coarsen
        if self.card_diameter:
            lo = self.card_diameter / _scale.MAX_SCALE
            hi = self.card_diameter / _scale.MIN_SCALE
            d = float(min(max(d, lo), hi))
            grid_d = float(min(max(grid_d, lo), hi))
        self.diameter = d
        self.factor = _scale.scale_factor(grid_d, self.card_diameter)
        self.source = "estimated"
        return self.factor

    def resolve(self, raw: np.ndarray, norm: np.ndarray | None = None) -> float:
        """The factor; estimates the diameter from ``raw`` (a raw plane) when pending.

        ``norm``: the same plane already normalised as the size estimator does it (percentile
        1 / 99.8, see :func:`_size_normalized`); then that work is not repeated."""
        if self.factor is None:
            t0 = time.perf_counter()
            if norm is not None and OPTIONS["share_work"]:
                est = _scale.estimate_diameter(norm, normalized=True)
            else:
                est = _scale.estimate_diameter(raw)
            seconds = time.perf_counter() - t0
            self.estimate = {"regressor": est, "regressor_seconds": seconds, "seconds": seconds}
            if est is None:
                self.factor = 1.0
            else:
                self.set_diameter(est)
        return self.factor

    @property
    def model_grid_diameter(self) -> float:
        """Object diameter on the grid the network sees (for peak spacing)."""
        if self.card_diameter:
            return self.card_diameter / self.coarsen
        if isinstance(self.diameter, float):
            return self.diameter
        return 10.0


def _model_input(
    norm: np.ndarray, factor: float, grid_diameter: float | None, background: float | None
) -> np.ndarray:
    """A normalised plane as the network sees it: resampled by ``factor`` to the model grid,
    then, with ``background`` (the opening's width in object diameters, see
    :func:`.background.parse_background`) and a known object diameter on that grid, its smooth
    background subtracted (:func:`.background.flatten_background`)."""
    plane = _scale.rescale_plane(norm, factor)
    if background and grid_diameter:
        plane = _background.flatten_background(plane, float(grid_diameter), float(background))
    return plane


def _plane_background(
    background: float | str | None,
    norm: np.ndarray,
    scale: _ScaleState,
    card: dict,
    runner: _Runner,
    step: int = 1,
) -> float | None:
    """The opening's width for one plane: ``background`` itself unless it is ``"auto"``;
    then :data:`.background.DEFAULT_FACTOR` where :func:`.background.assess_background`
    finds the normalised plane's background uneven and smooth (noted in
    ``runner.corrections["uneven_background"]``), else None. ``step``: ``norm`` is every
    ``step``-th pixel of the plane (blocked counting judges its subsample). Needs the object
    size (the scale resolved) and a percentile-normalising card."""
    if background != _background.AUTO:
        return background  # type: ignore[return-value]
    method = (card.get("normalization") or {}).get("method", "percentile")
    if method != "percentile" or not scale.card_diameter or not scale.factor:
        return None
    diameter = float(scale.card_diameter) / float(scale.factor) / float(step)
    verdict = _background.assess_background(norm, diameter)
    runner.background_checks.append(
        {k: round(v, 4) if isinstance(v, float) else v for k, v in verdict.items()}
    )
    if not verdict["uneven"]:
        return None
    from napari_nalu_count.data.normalize import tally

    tally(runner.corrections, "uneven_background")
    return _background.DEFAULT_FACTOR


def _weighted_log_size(pred: np.ndarray) -> tuple[float, float]:
    """``(density-weighted mean log size, cells)`` of a ``[density, log size]`` prediction."""
    w = np.clip(pred[0], 0.0, None)
    mass = float(w.sum(dtype=np.float64))
    if mass <= 0:
        return 0.0, 0.0
    return float((w * pred[1]).sum(dtype=np.float64) / mass), mass


def _refine_diameter(
    runner: _Runner, norm: np.ndarray, scale: _ScaleState, background: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check an estimated diameter with the counter's size head (module docstring, step 3).

    Returns ``(model_plane, prediction or None)``: the plane resampled by the final factor and,
    when the last check ran on that whole plane, its prediction (to be reused).
    """
    from napari_nalu_count.infer.size import window_slices

    model_plane = _model_input(norm, scale.factor, scale.card_diameter, background)
    pred = None
    checks = []
    for _ in range(REFINE_ROUNDS):
        runner.check_cancel()
        # the size head is read on the same window either way; a small plane is predicted
        # whole so that the pass can be the count's own (the window's context then differs
        # only at its edges)
        rows, cols = window_slices(model_plane, REFINE_WINDOW)
        whole = model_plane.size <= REFINE_WHOLE_PIXELS
        t0 = time.perf_counter()
        if whole:
            out = runner.predict_quiet(model_plane)
            m, cells = _weighted_log_size(out[:, rows, cols])
        else:
            out = runner.predict_quiet(model_plane[rows, cols])
            m, cells = _weighted_log_size(out)
        seconds = time.perf_counter() - t0
        checks.append({"log_size": round(m, 4), "cells": round(cells, 2), "seconds": seconds})
        pred = out if whole else None
        if cells < REFINE_MIN_CELLS or abs(m) <= np.log(REFINE_TOLERANCE):
            break
        m = float(np.clip(m, -np.log(4.0), np.log(4.0)))
        scale.set_diameter(float(scale.diameter) * float(np.exp(m)))
        model_plane = _model_input(norm, scale.factor, scale.card_diameter, background)
        pred = None
    scale.estimate["size_head"] = checks
    scale.estimate["refined"] = scale.diameter
    # a check pass whose prediction the count reuses is not extra time
    extra = sum(c["seconds"] for c in checks) - (checks[-1]["seconds"] if pred is not None else 0)
    scale.estimate["seconds"] = scale.estimate.get("regressor_seconds", 0.0) + extra
    return model_plane, pred


def _cells_per_island(
    density: np.ndarray, labels: np.ndarray, block: int, plane_shape: tuple[int, int]
) -> float:
    """Median, over the islands of ``labels`` (a grid of ``block`` x ``block`` pixel blocks
    of a plane of ``plane_shape``), of the cells of ``density`` (the counter's output on the
    model grid, any resampling of that plane) whose pixel centres fall in the island."""
    hm, wm = density.shape
    h, w = plane_shape
    rows = ((np.arange(hm) + 0.5) * (h / hm) / block).astype(np.intp)
    cols = ((np.arange(wm) + 0.5) * (w / wm) / block).astype(np.intp)
    rows = np.minimum(rows, labels.shape[0] - 1)
    cols = np.minimum(cols, labels.shape[1] - 1)
    on_grid = labels[rows[:, None], cols[None, :]]
    n = int(labels.max())
    cells = np.bincount(on_grid.ravel(), weights=density.ravel(), minlength=n + 1)[1:]
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return float(np.median(cells[ids - 1])) if len(ids) else 0.0


def _islands_refute(isl: dict[str, float], diameter: float) -> bool:
    """Whether :func:`~.size.island_diameter`'s numbers refute an estimated ``diameter``:
    enough round, resolved islands, covering enough of the foreground, at least
    :data:`ISLAND_VETO` times as large (the rule of :func:`_island_check`)."""
    return (
        isl["islands"] >= ISLAND_MIN_COUNT
        and isl["cover"] >= ISLAND_MIN_COVER
        and isl["samples"] >= ISLAND_MIN_SAMPLES
        and isl["diameter"] >= ISLAND_VETO * diameter
    )


def _island_check(
    norm: np.ndarray,
    scale: _ScaleState,
    runner: _Runner | None = None,
    background: float | None = None,
    prediction: np.ndarray | None = None,
) -> tuple[bool, np.ndarray | None]:
    """Check an estimated diameter against the plane's round foreground islands.

    Large nuclei with a grainy chromatin texture fool both the size regressor and the
    counter's size head: they read the grain as small cells (round 17 measured 0.2-0.55x the
    true size on ~90 px textured nuclei, and counts of 3-10x the truth). Smoothed at the
    regressor's scale, such nuclei are round islands of their own size
    (:func:`~.size.island_diameter`). When enough islands are round, well resolved and
    cover enough of the foreground, and their median diameter is at least
    :data:`ISLAND_VETO` times the estimate, the islands' diameter is used instead. Plain
    nuclei pass untouched (their islands match the estimate, or touch each other and are
    not round), as do tissues (one large irregular region). The network then runs
    :data:`ISLAND_COARSEN` times coarser than that diameter asks for (the reported diameter
    is the islands'). Returns whether the estimate changed and, when it did not, a
    prediction of the plane at the unchanged size that this check made (else None), for the
    count to reuse; ``scale.estimate["islands"]`` records the measurement.

    A colony, organoid or spheroid of small packed nuclei is a round island too, of many
    nuclei. So before the islands win, the counter's density at the checked size
    (``prediction``, the whole plane's at ``scale.factor``, or one pass of ``runner``) is
    summed per island: where the median island holds more than :data:`ISLAND_MAX_CELLS`
    cells it is a colony, and the estimate stands (textured nuclei of 60-130 px read as 1.2-17
    on the round-18 probes, hand-drawn colonies of 22-56 bright nuclei as 25-61; colonies of
    up to ~16 nuclei still pass for textured nuclei, and dimmer, hazier colonies often fool
    the first estimate already, when this count no longer sees their nuclei: docs/models.md,
    round 18)."""
    from napari_nalu_count.infer.size import round_islands

    if scale.diameter is None:
        return False, None
    t0 = time.perf_counter()
    hint = float(scale.estimate.get("regressor") or scale.diameter)
    need = (ISLAND_VETO * float(scale.diameter), ISLAND_MIN_COUNT, ISLAND_MIN_SAMPLES)
    isl, labels, block = round_islands(norm, hint, remeasure=ISLAND_REMEASURE, need=need)
    use = _islands_refute(isl, float(scale.diameter))
    cells = made = None
    if use and labels is not None and runner is not None:
        if prediction is None:
            plane = _model_input(norm, float(scale.factor), scale.card_diameter, background)
            prediction = made = runner.predict_quiet(plane)
        cells = _cells_per_island(prediction[0], labels, block, norm.shape)
        use = cells <= ISLAND_MAX_CELLS
    seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        k: (round(float(v), 3) if np.isfinite(v) else None) for k, v in isl.items()
    }
    record.update(
        cells_per_island=None if cells is None else round(cells, 2),
        seconds=seconds,
        used=bool(use),
        coarsen=ISLAND_COARSEN if use else 1.0,
    )
    scale.estimate["islands"] = record
    scale.estimate["seconds"] = scale.estimate.get("seconds", 0.0) + seconds
    if use:
        scale.coarsen = ISLAND_COARSEN
        scale.set_diameter(isl["diameter"])
        return True, None
    return False, made


# ------------------------------------------------------------------------------------------
# count


def count(
    image: Any,
    model: Any = "nuclei-count",
    *,
    axes: str | None = None,
    diameter: float | str | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    tile_size: int | None = None,
    channel: int | str | None = None,
    min_mass: float = 0.3,
    level: int | None = None,
    block_size: int | None = None,
    volume: bool = False,
    z_diameter: float | None = None,
    uncertainty: bool = False,
    background: float | bool | str | None = "auto",
) -> CountResult:
    """Count cells with a density-regression model.

    Parameters
    ----------
    image
        numpy or dask array: ``(H, W)``, stacks (``T``/``Z`` axes), channels (``C``) or RGB(A);
        uint8/uint16/int/float. Dask arrays are read one plane at a time. Array-likes (nested
        lists of numbers) are converted; a path (str or Path) to an image file is read with
        the axes the file records (used unless ``axes`` is given). Anything else raises
        :class:`~napari_nalu_count.errors.InputError` (see :mod:`.inputs`).
    model
        Model name (bundled or user), path to a model file, or a ``LoadedModel`` (task
        ``count``).
    axes
        Axis letters (``"YX"``, ``"TYX"``, ``"ZYX"``, ``"YXC"``, ``"TZYX"`` ...); inferred when
        None (see :mod:`napari_nalu_count.infer.axes`).
    diameter
        Typical cell diameter in pixels of ``image`` (the image is resampled so cells match the
        model's training diameter), ``"auto"`` to estimate it, or None to use the image at the
        model's own resolution (resampled by the card's ``input_scale``, 1.0 when absent).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    progress
        ``progress(done, total, message)`` called after every tile (planes x tiles).
    cancel
        A :class:`~napari_nalu_count.errors.CancelToken`; checked between tiles, raises
        :class:`~napari_nalu_count.errors.Cancelled`.
    tile_size
        Tile edge in pixels (default: chosen for the device).
    channel
        Channel index, or ``"mean"``/``"max"``/``"luminance"``, for images with a ``C`` axis;
        None applies the model card's input rule (max over RGB(A) colours when the card has
        none; see :mod:`.axes`).
    min_mass
        Minimum density mass (cells) around a peak for it to become a point.
    level
        For a multiscale ``image`` (a list/tuple of arrays from largest to smallest, napari's
        ``MultiScaleData``, a dask pyramid; see :mod:`.multiscale`): the level to count, 0
        (full resolution) by default. ``diameter`` is then in pixels of that level. Results have
        that level's geometry; ``CountResult.level_scale`` says its size factor.
    block_size
        Read and process each plane in blocks of this edge (pixels of the image), each read
        from the (lazy) array on its own, instead of reading the whole plane: memory is then
        bounded by the output density plus one block. Default: blocks of
        :data:`BLOCK_SIZE` for multiscale inputs, whole planes for everything else (as before).
        Blocks overlap by a margin, percentiles for the normalisation come from a regular
        subsample of the plane and the size estimate from its central window.
    volume
        For stacks with a ``Z`` axis: also detect cells in 3-D and count them once per volume
        (``CountResult.volume_count``, ``.volume_points``; see :mod:`.volume`).
    z_diameter
        Nucleus extent along Z in planes for ``volume=True`` (None: estimated by linking the
        per-plane cells across planes).
    uncertainty
        Also run test-time augmentation (8 passes per plane instead of 1) and return the
        calibrated ``count_sd`` and the ``uncertainty`` map (see :class:`CountResult` and
        :mod:`.uncertainty`); ``count`` is unchanged. Not available with blocks
        (``block_size`` or multiscale inputs).
    background
        Subtract a smooth uneven background (haze, uneven illumination) before the network
        sees the image. ``"auto"`` (default): only where the plane's background is both
        uneven and smooth (:func:`.background.assess_background`: a ramp, a bump,
        vignetting; not the out-of-focus nuclei of dense tissue, which flattening would
        count too); ``CountResult.corrections["uneven_background"]`` says how many planes
        were flattened and ``background_checks`` what was measured. ``True``: always (a grey
        opening 3 object diameters wide, on the model grid); a number: the width in
        diameters (at least 2); None / False: never. Flattening recovers the nuclei an uneven
        background hides (val images with an added ramp: Aitslab 16.3 -> 9.9 %, BBBC039
        5.4 -> 3.8 %; docs/models.md, "Appearance" and "Round 20"). Models whose card has no
        object diameter ignore it.
    """
    _inputs.check_callbacks(progress, None)
    steps = count_events(
        image,
        model,
        axes=axes,
        diameter=diameter,
        device=device,
        cancel=cancel,
        tile_size=tile_size,
        channel=channel,
        min_mass=min_mass,
        level=level,
        block_size=block_size,
        volume=volume,
        z_diameter=z_diameter,
        uncertainty=uncertainty,
        background=background,
    )
    return drive(steps, _tile_callback(progress))


def count_events(
    image: Any,
    model: Any = "nuclei-count",
    *,
    axes: str | None = None,
    diameter: float | str | None = None,
    device: str = "auto",
    cancel: CancelToken | None = None,
    tile_size: int | None = None,
    channel: int | str | None = None,
    min_mass: float = 0.3,
    level: int | None = None,
    block_size: int | None = None,
    volume: bool = False,
    z_diameter: float | None = None,
    uncertainty: bool = False,
    background: float | bool | str | None = "auto",
    grid_scale: float = 1.0,
    _normalized: np.ndarray | None = None,
    _density: bool = True,
) -> Generator[Event, None, CountResult]:
    """:func:`count` as an event generator: yields a :class:`~napari_nalu_count.events.Progress`
    per tile (and while the nucleus size is estimated) and returns the :class:`CountResult`.
    Arguments are checked when it starts (the first ``next``), as :func:`count` checks them.

    ``grid_scale`` (> 0, default 1) runs the network that many times finer than its model grid
    once the nucleus size is known (the size estimate and its check are unchanged); peaks are
    then looked for with the diameter they have on that grid. :func:`segment` uses it for its
    count-guided seeds (``OPTIONS["seed_grid"]``).
    For :func:`segment`'s count-guided seeds only (a 2-D plane): ``_normalized`` is the plane
    already normalised as this model's card says (not repeated) and ``_density=False`` skips
    the density map on the image grid (``density`` is then an empty array; count and points
    are computed as usual).
    """
    grid_scale = _check_positive(grid_scale, "grid_scale")
    background = _background.parse_background(background)
    if grid_scale != 1.0 and block_size is not None:
        raise InputError("grid_scale is not available with block_size")
    ms = None if isinstance(image, (str, os.PathLike)) else _multiscale.resolve(image, level)
    if ms is None and level not in (None, 0):
        raise InputError(f"level={level} given but the image is not multiscale")
    if ms is not None:
        image = ms.array
    block = _check_block(block_size, ms is not None)
    volume = _check_flag(volume, "volume")
    uncertainty = _check_flag(uncertainty, "uncertainty")
    if uncertainty and block is not None:
        raise InputError(
            "uncertainty=True needs whole planes: it is not available with block_size or "
            "multiscale images (count a level that fits in memory without blocks)"
        )
    if z_diameter is not None:
        z_diameter = _check_positive(z_diameter, "z_diameter")
    image, axes, diameter, device = _inputs.check_call(
        image, axes, diameter, device, None, cancel, tile_size, channel
    )
    min_mass = _inputs.check_min_mass(min_mass)
    dev = _device.resolve_device(device)
    loaded = _resolve_model(model, "count", dev)
    card = loaded.card
    plan = _axes.make_plan(image, axes, channel, _axes.input_rule(card))
    net = prepare_net(loaded, dev)
    density_scale = float(card.get("density_scale") or 1.0)
    n_out = 2 if _has_size_head(loaded) else 1
    scale = _ScaleState(
        diameter, card.get("diameter"), card.get("input_scale"), card.get("diameter_mode")
    )
    runner = _Runner(
        net,
        dev,
        _forward_fn(net, "count", density_scale, lambda: scale.model_grid_diameter * grid_scale),
        n_out,
        tile_size,
        plan.n_planes,
        cancel,
        "count",
    )

    h, w = plan.plane_shape
    if not _density and (plan.is_stack or uncertainty or volume or block is not None):
        raise ValueError("_density=False is for one 2-D plane without blocks, volume or TTA")
    if _normalized is not None and plan.is_stack:
        raise ValueError("_normalized is for one 2-D plane")
    density = np.zeros(plan.stack_shape + ((h, w) if _density else (0, 0)), dtype=np.float32)
    counts = np.zeros(plan.n_planes, dtype=np.float64)
    all_points: list[np.ndarray] = []
    unc_map = tta_counts = None
    if uncertainty:
        from napari_nalu_count.infer import uncertainty as _unc

        runner.passes = len(_unc.TTA) + 1
        unc_map = np.zeros(density.shape, dtype=np.float32)
        tta_counts = np.zeros((plan.n_planes, runner.passes), dtype=np.float64)
    total_set = False
    if volume and "Z" not in plan.out_axes:
        raise InputError(
            f"volume=True needs a Z axis; the image's axes are {plan.axes!r} (pass axes='ZYX' "
            "or 'TZYX')"
        )
    planes = _axes.iter_planes(image, plan) if block is None else iter(())
    #: the opening's width of a flattened plane (``"auto"``: when one was judged uneven)
    flattened: float | None = None
    for k, (idx, raw) in enumerate(planes):
        runner.check_cancel()
        _check_finite(raw, idx)
        if _is_constant(raw):
            if not total_set and scale.factor is not None:
                runner.set_total(_scale.scaled_shape((h, w), scale.factor), plan.n_planes - k)
                total_set = True
            shape = _scale.scaled_shape((h, w), scale.factor or 1.0)
            yield runner.skip_plane(shape, k)
            continue
        norm = _normalize(raw, card, runner.corrections) if _normalized is None else _normalized
        reuse = model_plane = None
        estimating = scale.pending
        if estimating:
            yield runner.report("count: estimating the nucleus size")
            scale.resolve(raw, _size_normalized(card, norm))
        # judged once the size is known (before the size checks, which see the same plane)
        bg = _plane_background(background, norm, scale, card, runner)
        flattened = flattened or bg
        if estimating:
            if n_out == 2 and scale.source == "estimated" and OPTIONS["size_check"]:
                model_plane, reuse = _refine_diameter(runner, norm, scale, bg)
            if scale.source == "estimated" and OPTIONS["island_check"]:
                changed, made = _island_check(norm, scale, runner, bg, reuse)
                if changed:
                    model_plane = reuse = None
                elif made is not None:  # the check's pass at this size is the count's
                    reuse = made
        if model_plane is None and grid_scale == 1.0:
            model_plane = _model_input(norm, scale.factor, scale.card_diameter, bg)
        if grid_scale != 1.0:
            reuse = None
            grid_d = scale.card_diameter * grid_scale if scale.card_diameter else None
            model_plane = _model_input(norm, scale.factor * grid_scale, grid_d, bg)
        del raw, norm
        if not total_set:
            runner.set_total(model_plane.shape, plan.n_planes - k)
            total_set = True
            yield runner.report(f"count: plane 1/{plan.n_planes}")
        if reuse is not None:
            yield runner.skip_plane(model_plane.shape, k, note="size check reused")
            pred = reuse
        else:
            pred = yield from runner.run(model_plane, k)
        dens = pred[0]
        del pred
        if uncertainty:
            tta_counts[k], sd_px = yield from _unc.tta_plane(
                functools.partial(runner.run, plane_no=k), model_plane, dens
            )
            target = unc_map[idx] if idx else unc_map
            target[...] = _scale.density_to_original(sd_px, (h, w))
            del sd_px
        del model_plane
        counts[k] = float(dens.sum(dtype=np.float64))
        pts = _post.density_peaks(dens, scale.model_grid_diameter * grid_scale, min_mass=min_mass)
        pts = _scale.points_to_original(pts, dens.shape, (h, w))
        if plan.is_stack and len(pts):
            pts = np.hstack([np.tile(np.asarray(idx, dtype=np.float64), (len(pts), 1)), pts])
        all_points.append(pts)
        if _density:
            target = density[idx] if idx else density
            target[...] = _scale.density_to_original(dens, (h, w))
        del dens
    if block is not None:
        flattened = yield from _count_blocked(
            image,
            plan,
            card,
            runner,
            scale,
            min_mass,
            block,
            density,
            counts,
            all_points,
            n_out,
            background,
        )
    yield runner.report("count: done")

    ncol = len(plan.stack_shape) + 2
    points = (
        np.vstack([p for p in all_points if len(p)])
        if any(len(p) for p in all_points)
        else np.zeros((0, ncol))
    )
    vol_count = vol_points = zd_used = None
    if volume:
        yield runner.report("count: detecting cells in 3-D")
        vol_count, vol_points, zd_used = _volume_count(
            density, points, plan, scale, z_diameter, min_mass
        )
        vol_points = _axes.points_to_output_order(vol_points, plan)
    sd_out = unc_out = info = None
    if uncertainty:
        cal = _unc.calibration_for(loaded)
        tta_sd = tta_counts.std(axis=1, ddof=1)
        sds = np.array([cal.count_sd(t, c) for t, c in zip(tta_sd, counts, strict=True)])
        sd_out = sds if plan.is_stack else float(sds[0])
        unc_out = _axes.to_output_order(cal.sd_map(unc_map, density), plan)
        info = {
            "tta_counts": tta_counts.tolist(),
            "tta_sd": tta_sd.tolist(),
            "calibration": {"tta": cal.tta, "rel": cal.rel, "abs": cal.abs, "source": cal.source},
        }
    return CountResult(
        count=counts if plan.is_stack else float(counts[0]),
        density=_axes.to_output_order(density, plan),
        points=_axes.points_to_output_order(points, plan),
        axes=plan.out_axes,
        diameter=scale.diameter if isinstance(scale.diameter, float) else None,
        model=str(getattr(loaded, "name", "")),
        diameter_source=scale.source,
        level=None if ms is None else ms.index,
        level_scale=None if ms is None else _level_scale(ms, plan),
        volume_count=vol_count,
        volume_points=vol_points,
        z_diameter=zd_used,
        count_sd=sd_out,
        uncertainty=unc_out,
        size_estimate=dict(scale.estimate) if scale.source == "estimated" else None,
        background=flattened if scale.card_diameter else None,
        background_checks=list(runner.background_checks),
        uncertainty_info=info,
        corrections=dict(runner.corrections),
    )


# ------------------------------------------------------------------------------------------
# multiscale / blocks / volumes

#: block edge (pixels of the image) for multiscale inputs when ``block_size`` is None
BLOCK_SIZE = 2048
#: the normalisation percentiles of a blocked plane come from a regular subsample of at most
#: this many pixels
SAMPLE_PIXELS = 1 << 20
#: edge of the central window a blocked plane's object size is estimated on
ESTIMATE_WINDOW = 1024


def _check_block(block_size: Any, multiscale: bool) -> int | None:
    if block_size is None:
        return BLOCK_SIZE if multiscale else None
    v = _inputs.check_int(block_size, "block_size", 64, 1 << 20)
    return int(v)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    v = float(value)
    if not (np.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return v


def _level_scale(ms: Any, plan: _axes.PlanePlan) -> tuple[float, ...]:
    by_axis = dict(zip(plan.axes, ms.factors, strict=True))
    return tuple(float(by_axis[a]) for a in plan.out_axes)


def _read_block(lazy: Any, plan: _axes.PlanePlan, ys: slice, xs: slice) -> np.ndarray:
    """A ``(h, w)`` block of one plane of the canonical view (``[C,] Y, X``), channels reduced."""
    block = _axes._materialize(lazy[..., ys, xs])
    if "C" in plan.axes:
        block = _axes._reduce_channels(block, plan.channel)
    if block.dtype == np.bool_:
        block = block.astype(np.float32)
    return block


def _block_starts(length: int, block: int) -> list[tuple[int, int]]:
    return [(a, min(length, a + block)) for a in range(0, length, block)]


def _count_blocked(
    image: Any,
    plan: _axes.PlanePlan,
    card: dict,
    runner: _Runner,
    scale: _ScaleState,
    min_mass: float,
    block: int,
    density: np.ndarray,
    counts: np.ndarray,
    all_points: list[np.ndarray],
    n_out: int,
    background: float | str | None = None,
) -> Generator[Progress, None, float | None]:
    """The plane loop of :func:`count` in blocks read one at a time (``block_size``); yields
    the progress events and returns the opening's width if a plane was flattened."""
    norm_cfg = card.get("normalization") or {"method": "percentile", "low": 1.0, "high": 99.8}
    method = norm_cfg.get("method", "percentile")
    if method not in ("percentile", None, "none"):
        raise InputError(f"unsupported normalization method {method!r} in the model card")
    view = _axes.canonical_view(image, plan)
    h, w = plan.plane_shape
    step = max(1, int(np.ceil(np.sqrt(h * w / SAMPLE_PIXELS))))
    idxs = list(np.ndindex(*plan.stack_shape)) if plan.stack_shape else [()]
    flattened: float | None = None
    for k, idx in enumerate(idxs):
        idx = tuple(int(i) for i in idx)
        runner.check_cancel()
        lazy = view[idx] if idx else view
        sample = _read_block(lazy, plan, slice(None, None, step), slice(None, None, step))
        _check_finite(sample, idx)
        if _is_constant(sample):
            yield runner.report(f"count: plane {k + 1}/{plan.n_planes} (empty)")
            continue
        if method == "percentile":
            from napari_nalu_count.data.normalize import normalization_range

            regions: dict[str, Any] = {}
            lo, hi = normalization_range(
                sample,
                norm_cfg.get("low", 1.0),
                norm_cfg.get("high", 99.8),
                sparse=True,
                artefacts=OPTIONS["bright_artefacts"],
                info=runner.corrections,
                regions=regions,
            )
        else:
            lo, hi, regions = 0.0, 1.0, {}
        span = hi - lo
        grown = None  # the artefacts to leave out, on the sample's subsample (as whole planes)
        if OPTIONS["mask_artefacts"] and "mask" in regions:
            from napari_nalu_count.data.normalize import grow_artefacts

            grown = (grow_artefacts(regions["mask"]), step * int(regions["step"]))

        def normalize(
            raw: np.ndarray,
            lo: float = lo,
            span: float = span,
            core: tuple[int, int, int, int] | None = None,
            origin: tuple[int, int] = (0, 0),
            spacing: int = 1,
            grown: tuple[np.ndarray, int] | None = grown,
        ) -> np.ndarray:
            """``raw`` normalised; hot pixels clamped (counted only inside ``core``, the
            block's own part, so that halos shared by two blocks are not counted twice); the
            bright artefacts' area set to 0 (``raw`` holds the plane's rows ``origin[0] +
            spacing * i`` and columns ``origin[1] + spacing * j``; its pixels counted inside
            ``core`` as the hot pixels)."""
            if not span > 1e-20:
                return np.zeros(raw.shape, dtype=np.float32)
            work_dtype = np.float64 if raw.dtype == np.float64 else np.float32
            work = raw.astype(work_dtype, copy=False)
            out = ((work - work_dtype(lo)) * work_dtype(1.0 / span)).astype(np.float32)
            if method == "percentile" and OPTIONS["hot_pixels"] and out.ndim == 2:
                from napari_nalu_count.data.normalize import suppress_hot_pixels

                suppress_hot_pixels(out, core, info=runner.corrections)
            if grown is not None and out.ndim == 2:
                _leave_out_artefacts(out, *grown, runner.corrections, core, origin, spacing)
            return out

        window = None
        if scale.pending:
            yield runner.report("count: estimating the nucleus size")
            wy, wx = min(ESTIMATE_WINDOW, h), min(ESTIMATE_WINDOW, w)
            y0, x0 = (h - wy) // 2, (w - wx) // 2
            window = _read_block(lazy, plan, slice(y0, y0 + wy), slice(x0, x0 + wx))
            scale.resolve(window)
        # "auto": judged on the plane's subsample once the size is known, before the size
        # checks (its hot pixels and artefacts are counted with the blocks)
        bg = background
        if background == _background.AUTO:
            judged = normalize(sample, core=(0, 0, 0, 0), spacing=step)
            bg = _plane_background(background, judged, scale, card, runner, step)
            del judged
        flattened = flattened or bg
        if window is not None and scale.source == "estimated":
            normalized = normalize(window, core=(0, 0, 0, 0), origin=(y0, x0))
            if n_out == 2 and OPTIONS["size_check"]:
                _refine_diameter(runner, normalized, scale, bg)
            if OPTIONS["island_check"]:
                _island_check(normalized, scale, runner, bg)
            del normalized
        del window
        f = float(scale.factor or 1.0)
        card_d = scale.card_diameter or 10.0
        halo = max(float(OPTIONS["overlap"]), 3.0 * card_d)
        if bg and scale.card_diameter:
            # the background at a pixel reads this far: the network's context starts after it
            halo += _background.background_support(scale.card_diameter, bg)
        halo = int(np.ceil(halo / f))
        grid = [(ya, xa) for ya in _block_starts(h, block) for xa in _block_starts(w, block)]

        def padded(
            y: tuple[int, int], x: tuple[int, int], halo: int = halo
        ) -> tuple[int, int, int, int]:
            a, b = max(0, y[0] - halo), min(h, y[1] + halo)
            return a, b, max(0, x[0] - halo), min(w, x[1] + halo)

        tiles = 0
        for y, x in grid:
            a, b, c, d = padded(y, x)
            shape = _scale.scaled_shape((b - a, d - c), f)
            tiles += n_tiles(shape, runner.tile_for(shape), runner._overlap_for(runner.tile))
        runner.total = runner.done + tiles * (plan.n_planes - k)
        target = density[idx] if idx else density
        pts_plane = []
        for y, x in grid:
            runner.check_cancel()
            a, b, c, d = padded(y, x)
            raw = _read_block(lazy, plan, slice(a, b), slice(c, d))
            _check_finite(raw, idx)
            own = (y[0] - a, y[1] - a, x[0] - c, x[1] - c)
            model_block = _model_input(
                normalize(raw, core=own, origin=(a, c)), f, scale.card_diameter, bg
            )
            del raw
            pred = yield from runner.run(model_block, k)
            dens = pred[0]
            del pred, model_block
            pts = _post.density_peaks(dens, scale.model_grid_diameter, min_mass=min_mass)
            pts = _scale.points_to_original(pts, dens.shape, (b - a, d - c))
            if len(pts):
                pts = pts + np.array([a, c], dtype=np.float64)
                keep = (pts[:, 0] >= y[0] - 0.5) & (pts[:, 0] < y[1] - 0.5)
                keep &= (pts[:, 1] >= x[0] - 0.5) & (pts[:, 1] < x[1] - 0.5)
                pts_plane.append(pts[keep])
            full = _scale.density_to_original(dens, (b - a, d - c))
            target[y[0] : y[1], x[0] : x[1]] = full[y[0] - a : y[1] - a, x[0] - c : x[1] - c]
            del dens, full
        counts[k] = float(target.sum(dtype=np.float64))
        pts = np.vstack(pts_plane) if pts_plane else np.zeros((0, 2))
        if len(pts):
            pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
        if plan.is_stack and len(pts):
            pts = np.hstack([np.tile(np.asarray(idx, dtype=np.float64), (len(pts), 1)), pts])
        all_points.append(pts)
    return flattened


def _volume_count(
    density: np.ndarray,
    points: np.ndarray,
    plan: _axes.PlanePlan,
    scale: _ScaleState,
    z_diameter: float | None,
    min_mass: float,
) -> tuple[Any, np.ndarray, float | None]:
    """3-D detections per volume: ``(volume counts, points in canonical order, z extent)``."""
    from napari_nalu_count.infer import volume as _volume

    stack_axes = "".join(a for a in plan.axes if a in _axes.STACK_AXES)
    zi = stack_axes.index("Z")
    others = [i for i in range(len(stack_axes)) if i != zi]
    other_shape = tuple(plan.stack_shape[i] for i in others)
    d_img = float(scale.model_grid_diameter) / float(scale.factor or 1.0)
    nz = plan.stack_shape[zi]
    results, rows = [], []
    used: list[float] = []
    for oidx in np.ndindex(*other_shape) if other_shape else [()]:
        sel: list[Any] = list(oidx)
        sel.insert(zi, slice(None))
        stack = density[tuple(sel)]  # (Z, H, W)
        if len(points):
            mask = np.ones(len(points), dtype=bool)
            for pos, v in zip(others, oidx, strict=True):
                mask &= np.rint(points[:, pos]) == v
            mine = points[mask]
            per_plane = [mine[np.rint(mine[:, zi]) == z][:, -2:] for z in range(nz)]
        else:
            per_plane = [np.zeros((0, 2)) for _ in range(nz)]
        zd = z_diameter
        if zd is None:
            zd = _volume.estimate_z_extent(per_plane, d_img) or 1.0
        used.append(float(zd))
        found = _volume.volume_peaks(stack, d_img, zd, min_mass=min_mass)
        results.append(len(found))
        for z, y, x in found:
            row = [float(v) for v in oidx]
            row.insert(zi, float(z))
            rows.append(row + [float(y), float(x)])
    vpoints = np.asarray(rows, dtype=np.float64).reshape(-1, len(stack_axes) + 2)
    vcount: Any = float(results[0]) if not other_shape else np.asarray(results, dtype=np.float64)
    zd_out = float(np.median(used)) if used else None
    return vcount, vpoints, zd_out


# ------------------------------------------------------------------------------------------
# segment


def segment(
    image: Any,
    model: Any = "nuclei-seg",
    *,
    axes: str | None = None,
    diameter: float | str | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    tile_size: int | None = None,
    channel: int | str | None = None,
    seeds: str = "count",
    count_model: Any = "nuclei-count",
    min_size: int | None = None,
    level: int | None = None,
    volume: bool = False,
    background: float | bool | str | None = "auto",
) -> SegmentResult:
    """Instance segmentation with an interior/boundary model and a seeded watershed.

    Parameters are those of :func:`count`, plus:

    seeds
        ``"interior"``: watershed seeds are the connected components of the predicted interior;
        ``"count"``: the cell centres found by ``count_model`` (count-guided segmentation).
    count_model
        The counting model used when ``seeds="count"`` (name, path or ``LoadedModel``).
    min_size
        Smallest object kept, in pixels of the model grid (default: ~1/16 of the area of a disc
        of the card's diameter, at least 8).
    level
        For a multiscale ``image``: the level to segment (0 by default), as in :func:`count`;
        the chosen level is read plane by plane (whole planes, not blocks: the watershed
        needs the whole plane). ``SegmentResult.level_scale`` says its size factor.
    volume
        For stacks with a ``Z`` axis: also link the per-plane objects across Z into 3-D objects
        (``SegmentResult.volume_labels``, ``.volume_count``, ``.volume_points``).
    background
        As in :func:`count` (default ``"auto"``): subtract a smooth uneven background first
        (the seed counter's input too; with ``"auto"`` the segmenter follows the seed
        counter's verdict on each plane).
    """
    _inputs.check_callbacks(progress, None)
    steps = segment_events(
        image,
        model,
        axes=axes,
        diameter=diameter,
        device=device,
        cancel=cancel,
        tile_size=tile_size,
        channel=channel,
        seeds=seeds,
        count_model=count_model,
        min_size=min_size,
        level=level,
        volume=volume,
        background=background,
    )
    return drive(steps, _tile_callback(progress))


def segment_events(
    image: Any,
    model: Any = "nuclei-seg",
    *,
    axes: str | None = None,
    diameter: float | str | None = None,
    device: str = "auto",
    cancel: CancelToken | None = None,
    tile_size: int | None = None,
    channel: int | str | None = None,
    seeds: str = "count",
    count_model: Any = "nuclei-count",
    min_size: int | None = None,
    level: int | None = None,
    volume: bool = False,
    background: float | bool | str | None = "auto",
) -> Generator[Event, None, SegmentResult]:
    """:func:`segment` as an event generator: yields a :class:`~napari_nalu_count.events.
    Progress` per tile (the seed counter's tiles included) and returns the
    :class:`SegmentResult`."""
    ms = None if isinstance(image, (str, os.PathLike)) else _multiscale.resolve(image, level)
    if ms is not None:
        image = ms.array
    volume = _check_flag(volume, "volume")
    background = _background.parse_background(background)
    if not isinstance(seeds, str) or seeds not in _post.SEED_MODES:
        raise InputError(f"seeds must be one of {_post.SEED_MODES}, got {seeds!r}")
    image, axes, diameter, device = _inputs.check_call(
        image, axes, diameter, device, None, cancel, tile_size, channel
    )
    min_size = _inputs.check_int(min_size, "min_size", 0, 2**31 - 1)
    dev = _device.resolve_device(device)
    loaded = _resolve_model(model, "segment", dev)
    card = loaded.card
    plan = _axes.make_plan(image, axes, channel, _axes.input_rule(card))
    net = prepare_net(loaded, dev)
    n_cls = _out_channels(loaded)
    runner = _Runner(
        net,
        dev,
        _forward_fn(net, "segment", 1.0),
        n_cls,
        tile_size,
        plan.n_planes,
        cancel,
        "segment",
    )
    scale = _ScaleState(
        diameter, card.get("diameter"), card.get("input_scale"), card.get("diameter_mode")
    )
    if min_size is None:
        d = scale.card_diameter or 10.0
        min_size = max(8, int(np.pi * d * d / 4.0 / 16.0))

    if volume and "Z" not in plan.out_axes:
        raise InputError(
            f"volume=True needs a Z axis; the image's axes are {plan.axes!r} (pass axes='ZYX' "
            "or 'TZYX')"
        )
    counter = None
    share_norm = False
    if seeds == "count":
        counter = _resolve_model(count_model, "count", dev)
        share_norm = bool(OPTIONS["share_work"]) and _same_normalization(card, counter.card)

    h, w = plan.plane_shape
    labels = np.zeros(plan.stack_shape + (h, w), dtype=np.int32)
    counts = np.zeros(plan.n_planes, dtype=np.int64)
    total_set = False
    # planes segmented in blocks: arrays above the mmap threshold are mappings of their own
    # (the fully tuned allocator kept ~0.3 GiB more resident at 8192 x 8192; glibc's defaults
    # cost 1.37x the time in page faults), see allocator.large_mapped
    big = bool(OPTIONS["segment_blocks"]) and h * w > SEGMENT_BLOCK_PIXELS
    flattened: float | None = None
    checks: list[dict[str, Any]] = []  # the seed counter's background verdicts
    with _allocator.large_mapped() if big else contextlib.nullcontext():
        for k, (idx, raw) in enumerate(_axes.iter_planes(image, plan)):
            runner.check_cancel()
            _check_finite(raw, idx)
            if _is_constant(raw):
                shape = _scale.scaled_shape((h, w), scale.factor or 1.0)
                if not total_set:
                    runner.set_total(shape, plan.n_planes - k)
                    total_set = True
                yield runner.skip_plane(shape, k)
                continue
            norm = _normalize(raw, card, runner.corrections)
            points = None
            if counter is not None:
                # the counter finds the size first (its size head checks the estimate); the
                # segmenter then uses the same diameter
                pending = scale.pending
                seeding = f"segment: plane {k + 1}/{plan.n_planes}: finding the cells"
                sub = yield from _relay(
                    count_events(
                        raw,
                        counter,
                        axes="YX",
                        diameter=(
                            "auto" if pending and scale.requested == "auto" else scale.diameter
                        ),
                        device=str(dev),
                        cancel=cancel,
                        tile_size=tile_size,
                        grid_scale=float(OPTIONS["seed_grid"]),
                        background=background,
                        _normalized=norm if share_norm else None,
                        _density=not OPTIONS["share_work"],
                    ),
                    functools.partial(runner.report, seeding),
                )
                points = sub.points
                if pending and sub.diameter_source == "estimated" and sub.diameter:
                    scale.set_diameter(float(sub.diameter))
            if scale.pending:
                yield runner.report("segment: estimating the nucleus size")
            s = scale.resolve(raw, _size_normalized(card, norm))
            del raw
            if background == _background.AUTO and counter is not None:
                # the seed counter judged this plane's background: the segmenter follows it
                bg = sub.background if OPTIONS["auto_background_segmenter"] else None
                checks.extend(sub.background_checks)
                if sub.background:
                    from napari_nalu_count.data.normalize import tally

                    tally(runner.corrections, "uneven_background")
            else:
                bg = _plane_background(background, norm, scale, card, runner)
            flattened = flattened or bg
            if big:
                model_plane = _model_input(norm, s, scale.card_diameter, bg)
                del norm
                mshape = model_plane.shape
                if points is not None and mshape != (h, w):
                    points = np.column_stack(
                        [
                            (points[:, 0] + 0.5) * mshape[0] / h - 0.5,
                            (points[:, 1] + 0.5) * mshape[1] / w - 0.5,
                        ]
                    )
                halo = max(float(OPTIONS["overlap"]), 3.0 * (scale.card_diameter or 10.0))
                halo = int(np.ceil(halo))
                lab = yield from _segment_blocked(
                    runner,
                    model_plane,
                    points,
                    seeds,
                    min_size,
                    k,
                    halo,
                    max(64, int(round(SEGMENT_BLOCK * s))),
                    first=not total_set,
                )
                total_set = True
                del model_plane
                counts[k] = _labels_to_image(lab, labels[idx] if idx else labels)
                del lab
                continue
            model_plane = _model_input(norm, s, scale.card_diameter, bg)
            del norm
            if not total_set:
                runner.set_total(model_plane.shape, plan.n_planes - k)
                total_set = True
                yield runner.report(f"segment: plane 1/{plan.n_planes}")
            probs = yield from runner.run(model_plane, k)
            mshape = model_plane.shape
            del model_plane
            if points is not None and mshape != (h, w):
                points = np.column_stack(
                    [
                        (points[:, 0] + 0.5) * mshape[0] / h - 0.5,
                        (points[:, 1] + 0.5) * mshape[1] / w - 0.5,
                    ]
                )
            lab = _post.classes_to_instances(probs, seeds=seeds, points=points, min_size=min_size)
            del probs
            lab = _scale.labels_to_original(lab, (h, w))
            counts[k] = int(lab.max())
            target = labels[idx] if idx else labels
            target[...] = lab
    yield runner.report("segment: done")
    vol_labels = vol_count = vol_points = None
    if volume:
        vol_labels, vol_count, vol_points = _link_volume(labels, plan)
        vol_labels = _axes.to_output_order(vol_labels, plan)
        vol_points = _axes.points_to_output_order(vol_points, plan)
    return SegmentResult(
        labels=_axes.to_output_order(labels, plan),
        count=counts if plan.is_stack else int(counts[0]),
        axes=plan.out_axes,
        diameter=scale.diameter if isinstance(scale.diameter, float) else None,
        model=str(getattr(loaded, "name", "")),
        seeds=seeds,
        diameter_source=scale.source,
        level=None if ms is None else ms.index,
        level_scale=None if ms is None else _level_scale(ms, plan),
        background=flattened if scale.card_diameter else None,
        corrections=dict(runner.corrections),
        background_checks=checks + list(runner.background_checks),
        volume_labels=vol_labels,
        volume_count=vol_count,
        volume_points=vol_points,
    )


#: planes with more pixels than this are segmented in blocks (bounded memory: the whole-plane
#: watershed needs ~30 bytes per model-grid pixel) of SEGMENT_BLOCK image pixels plus a halo
SEGMENT_BLOCK_PIXELS = 3072 * 3072
SEGMENT_BLOCK = 2048


def _segment_blocked(
    runner: _Runner,
    model_plane: np.ndarray,
    points: np.ndarray | None,
    seeds: str,
    min_size: int,
    plane_no: int,
    halo: int,
    block: int,
    first: bool,
) -> Generator[Progress, None, np.ndarray]:
    """Instance labels (int32, 1..n) of a plane on the model grid, block by block.

    The plane is cut into blocks of ``block`` model-grid pixels; each is predicted and
    watershedded with ``halo`` pixels of context around it (the same resampled pixels as the
    whole plane, so only the tiling differs) and painted where no earlier object lies.
    ``points`` (cell centres on the model grid, rounded to pixels once for all blocks) seed
    every block that sees them. An object grown from a seed belongs to the block whose core
    holds that seed pixel, one fixed place for every block (owning by centroid instead lost an
    object whenever two blocks' segmentations put its centroid on opposite sides of their
    border); an object without a seed belongs to the block whose core holds its centroid. Ids
    are renumbered 1..n at the end if an object lost every pixel to its neighbours. Memory: the
    labels plus one block's work, not the whole-plane watershed (about 30 bytes per pixel)."""
    h, w = model_plane.shape
    if points is not None:
        # the pixel each seed lands on, the same in every block (classes_to_instances rounds
        # local coordinates, which may differ from the global rounding at exact halves)
        points = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    grid = [(ya, xa) for ya in _block_starts(h, block) for xa in _block_starts(w, block)]

    def padded(y: tuple[int, int], x: tuple[int, int]) -> tuple[int, int, int, int]:
        return max(0, y[0] - halo), min(h, y[1] + halo), max(0, x[0] - halo), min(w, x[1] + halo)

    if first:
        tiles = 0
        for y, x in grid:
            a, b, c, d = padded(y, x)
            tiles += n_tiles(
                (b - a, d - c), runner.tile_for((b - a, d - c)), runner._overlap_for(runner.tile)
            )
        runner.total = runner.done + tiles * (runner.n_planes - plane_no)
        yield runner.report(f"segment: plane {plane_no + 1}/{runner.n_planes}")
    out = np.zeros((h, w), dtype=np.int32)
    next_id = 0
    present = [False]
    for y, x in grid:
        runner.check_cancel()
        a, b, c, d = padded(y, x)
        probs = yield from runner.run(model_plane[a:b, c:d], plane_no)
        pts = None
        if points is not None:
            inside = (points[:, 0] >= a) & (points[:, 0] < b)
            inside &= (points[:, 1] >= c) & (points[:, 1] < d)
            pts = points[inside] - np.array([a, c], dtype=np.float64)
        lab = _post.classes_to_instances(probs, seeds=seeds, points=pts, min_size=min_size)
        del probs
        n = int(lab.max())
        if n == 0:
            continue
        seeded = owned = None
        if pts is not None and len(pts):
            py, px = pts[:, 0].astype(np.intp), pts[:, 1].astype(np.intp)
            hit = lab[py, px]
            core = (py + a >= y[0]) & (py + a < y[1]) & (px + c >= x[0]) & (px + c < x[1])
            seeded = np.zeros(n + 1, dtype=bool)
            seeded[hit] = True
            owned = np.zeros(n + 1, dtype=bool)
            owned[hit[core]] = True
        flat = lab.ravel()
        size = np.bincount(flat, minlength=n + 1).astype(np.float64)
        ys = np.repeat(np.arange(a, b, dtype=np.float64), d - c)
        cy = np.bincount(flat, weights=ys, minlength=n + 1)
        del ys
        xs = np.tile(np.arange(c, d, dtype=np.float64), b - a)
        cx = np.bincount(flat, weights=xs, minlength=n + 1)
        del xs
        with np.errstate(invalid="ignore", divide="ignore"):
            cy, cx = cy / size, cx / size
        keep = (size > 0) & (cy >= y[0] - 0.5) & (cy < y[1] - 0.5)
        keep &= (cx >= x[0] - 0.5) & (cx < x[1] - 0.5)
        if seeded is not None:
            keep = np.where(seeded, owned & (size > 0), keep)
        keep[0] = False
        ids = np.flatnonzero(keep)
        if len(ids) == 0:
            continue
        lut = np.zeros(n + 1, dtype=np.int32)
        lut[ids] = np.arange(next_id + 1, next_id + 1 + len(ids), dtype=np.int32)
        mapped = lut[lab]
        del lab
        region = out[a:b, c:d]
        paint = (mapped > 0) & (region == 0)
        region[paint] = mapped[paint]
        got = np.zeros(len(ids), dtype=bool)
        got[np.unique(mapped[paint]) - (next_id + 1)] = True
        present.extend(got.tolist())
        next_id += len(ids)
        del mapped, paint
    kept = np.asarray(present, dtype=bool)
    if not kept[1:].all():
        _renumber_rows(out, kept)
    return out


def _renumber_rows(labels: np.ndarray, kept: np.ndarray) -> None:
    """Map the ids with ``kept[id]`` to 1..n in place, 512 rows at a time (no full-size
    temporary)."""
    lut = np.zeros(len(kept), dtype=np.int32)
    lut[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    lut[0] = 0
    for r0 in range(0, labels.shape[0], 512):
        labels[r0 : r0 + 512] = lut[labels[r0 : r0 + 512]]


def _labels_to_image(lab: np.ndarray, target: np.ndarray) -> int:
    """:func:`.scale.labels_to_original` of model-grid labels into ``target`` (the image
    plane), 512 rows at a time; returns the number of objects (ids renumbered 1..n when
    shrinking lost some)."""
    h, w = target.shape
    mh, mw = lab.shape
    rows = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(np.intp), mh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(np.intp), mw - 1)
    n = int(lab.max())
    seen = np.zeros(n + 1, dtype=bool)
    for r0 in range(0, h, 512):
        part = lab[rows[r0 : r0 + 512]][:, cols]
        target[r0 : r0 + 512] = part
        seen[np.unique(part)] = True
    seen[0] = False
    if not seen[1:].all():
        _renumber_rows(target, seen)
    return int(seen.sum())


def _link_volume(labels: np.ndarray, plan: _axes.PlanePlan) -> tuple[np.ndarray, Any, np.ndarray]:
    """Per-plane labels (canonical order) linked across Z, per volume: ``(labels_3d, counts,
    centroids in canonical order)``."""
    from scipy import ndimage as ndi

    from napari_nalu_count.infer import volume as _volume

    stack_axes = "".join(a for a in plan.axes if a in _axes.STACK_AXES)
    zi = stack_axes.index("Z")
    others = [i for i in range(len(stack_axes)) if i != zi]
    other_shape = tuple(plan.stack_shape[i] for i in others)
    out = np.zeros(labels.shape, dtype=np.int32)
    counts, rows = [], []
    for oidx in np.ndindex(*other_shape) if other_shape else [()]:
        sel: list[Any] = list(oidx)
        sel.insert(zi, slice(None))
        linked, n = _volume.link_labels(labels[tuple(sel)])
        out[tuple(sel)] = linked
        counts.append(n)
        if n:
            cents = np.asarray(
                ndi.center_of_mass(np.ones(linked.shape), linked, np.arange(1, n + 1))
            ).reshape(-1, 3)
            for z, y, x in cents:
                row = [float(v) for v in oidx]
                row.insert(zi, float(z))
                rows.append(row + [float(y), float(x)])
    points = np.asarray(rows, dtype=np.float64).reshape(-1, len(stack_axes) + 2)
    vcount: Any = int(counts[0]) if not other_shape else np.asarray(counts, dtype=np.int64)
    return out, vcount, points


# ------------------------------------------------------------------------------------------
# driving the generators


def _tile_callback(progress: ProgressFn | None) -> Callable[[Event], None] | None:
    """``progress(done, total, message)`` fed from the :class:`Progress` events."""
    if progress is None:
        return None

    def on_event(event: Event) -> None:
        if isinstance(event, Progress):
            progress(event.done, event.total, event.message)

    return on_event


def _relay(steps: Generator[Event, None, Any], make: Callable[[], Event]) -> Generator:
    """Run a nested event generator, yielding ``make()`` in place of each of its events."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
        yield make()
