"""Training data: normalised images with their targets, random patches, batches.

:func:`prepare` turns :class:`~napari_nalu_count.data.readers.Sample` objects into
:class:`Prepared` items (``(C, H, W)`` float32 image normalised with ``percentile_normalize`` as
recorded in the card, plus dots or instance labels). :class:`PatchSampler` draws batches of
random ``patch_size`` crops, augments each crop with :class:`napari_nalu_count.data.augment.
Augmenter` and renders its target after augmentation:

- counting: the dots inside the crop -> ``dots_to_density(dots, sigma) * density_scale``;
- segmentation: the crop's instance labels -> ``instances_to_classes`` (0/1/2).

Images smaller than the patch are zero-padded (0 is the normalised background level) and a
``valid`` mask (1 on real pixels, 0 on padding) lets the loss ignore the padding.

:func:`spatial_split` cuts one annotated image into a training part and a held-out strip, for
fine-tuning on a single image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_nalu_count.errors import InputError

__all__ = [
    "CountLabelSampler",
    "PatchSampler",
    "Prepared",
    "load_folder",
    "prepare",
    "reduce_samples",
    "rescale_samples",
    "spatial_split",
]


@dataclass
class Prepared:
    """One training/validation image ready for the network.

    ``image`` is ``(C, H, W)`` float32 (normalised); ``dots`` ``(N, 2)`` ``(y, x)`` or None;
    ``labels`` int32 ``(H, W)`` or None; ``count`` the true number of objects (inside the
    boxes when there are boxes). ``boxes`` ``(k, 4)`` and ``region`` (bool ``(H, W)``, True
    inside them): where the annotations hold (None: everywhere); ``box_counts``: count-level
    labels per box (the whole image is one box when the sample had no boxes), for items
    without dots or labels (:attr:`count_only`).
    """

    image: np.ndarray
    dots: np.ndarray | None
    labels: np.ndarray | None
    count: float
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    boxes: np.ndarray | None = None
    region: np.ndarray | None = None
    box_counts: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def count_only(self) -> bool:
        """Only count-level labels (no dots, no labels): trained on density integrals."""
        return self.dots is None and self.labels is None and self.box_counts is not None


def _sample_axes(image: np.ndarray, axes: str | None) -> str:
    """Axes of a training image: the recorded ones, else ``YX``, ``YXC`` (channels last, as
    RGB) or ``CYX``."""
    if axes:
        return str(axes)
    if image.ndim == 2:
        return "YX"
    if image.ndim == 3:
        return "YXC" if image.shape[-1] <= 4 and image.shape[0] > 4 else "CYX"
    return ""


def _to_chw(
    image: np.ndarray,
    in_channels: int,
    name: str,
    rule: dict | None = None,
    axes: str | None = None,
) -> np.ndarray:
    """``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` -> ``(in_channels, H, W)``.

    A one-channel network gets the plane inference would give it: channels are reduced by the
    image -> plane rule ``rule`` (:func:`napari_nalu_count.infer.axes.to_planes`; max over RGB(A)
    colours by default), so training, fine-tuning and inference see the same plane.
    """
    from napari_nalu_count.infer.axes import to_planes

    img = np.asarray(image)
    ax = _sample_axes(img, axes)
    if (
        img.ndim not in (2, 3)
        or len(ax) != img.ndim
        or sorted(ax) not in (["X", "Y"], ["C", "X", "Y"])
    ):
        raise InputError(
            f"training image {name!r} has shape {img.shape}"
            + (f" (axes {axes!r})" if axes else "")
            + "; expected one 2-D image (H, W), (H, W, C) or (C, H, W), not a stack"
        )
    if "C" not in ax:
        return img[None]
    # dots and labels are in the image's stored pixel order: keep it (first spatial axis = rows)
    spatial = iter("YX")
    ax = "".join(a if a == "C" else next(spatial) for a in ax)
    chw = np.moveaxis(img, ax.index("C"), 0) if ax != "CYX" else img
    if chw.shape[0] == in_channels:
        return chw
    if in_channels == 1:
        try:
            return to_planes(img, ax, rule=rule)[None]
        except InputError as exc:
            raise InputError(f"training image {name!r}: {exc}") from None
    raise InputError(
        f"training image {name!r} has {chw.shape[0]} channels but the network expects {in_channels}"
    )


def reduce_samples(
    samples: Sequence[Any], rule: dict | None = None, in_channels: int = 1
) -> list[Any]:
    """Samples whose multi-channel images are reduced to one plane by ``rule``, the way
    inference reduces them (:func:`napari_nalu_count.infer.axes.to_planes`); 2-D images and
    networks with several input channels are left alone. A sample's ``meta["axes"]`` (set by
    the readers from the file) says where its channels are."""
    import dataclasses

    out: list[Any] = []
    for i, s in enumerate(samples):
        image = getattr(s, "image", None)
        if image is None or in_channels != 1 or np.ndim(image) == 2:
            out.append(s)
            continue
        meta = dict(getattr(s, "meta", {}) or {})
        name = getattr(s, "name", "") or f"image {i}"
        plane = _to_chw(np.asarray(image), 1, name, rule, meta.pop("axes", None))[0]
        if dataclasses.is_dataclass(s):
            out.append(dataclasses.replace(s, image=plane, meta=meta))
        else:  # pragma: no cover - any object with .image
            s.image = plane
            out.append(s)
    return out


def prepare(
    samples: Sequence[Any],
    task: str,
    *,
    normalization: dict | None = None,
    in_channels: int = 1,
    input_rule: dict | None = None,
) -> list[Prepared]:
    """Normalise ``samples`` and check they carry what ``task`` needs.

    Multi-channel images are reduced for a one-channel network by ``input_rule`` (the card's
    image -> plane rule, default max over RGB(A)), exactly as inference reduces them.

    Counting needs ``dots`` (or ``labels``, whose centroids become the dots) or count-level
    labels (``counts``, per box or for the whole image); segmentation needs ``labels``. A
    sample's ``boxes`` restrict its annotations to those boxes (``Prepared.region``). Raises
    :class:`InputError` otherwise.
    """
    from napari_nalu_count.data import instances_to_dots, percentile_normalize
    from napari_nalu_count.data.boxes import as_boxes, box_mask, dots_in_boxes

    norm = normalization or {"method": "percentile", "low": 1.0, "high": 99.8}
    low, high = float(norm.get("low", 1.0)), float(norm.get("high", 99.8))
    out: list[Prepared] = []
    for i, s in enumerate(samples):
        name = getattr(s, "name", "") or f"image {i}"
        image = getattr(s, "image", None)
        if image is None:
            raise InputError(f"sample {name!r} has no image")
        axes = (getattr(s, "meta", None) or {}).get("axes")
        chw = _to_chw(image, in_channels, name, input_rule, axes)
        norm_img = np.stack([percentile_normalize(c, low, high, sparse=True) for c in chw]).astype(
            np.float32
        )
        dots = getattr(s, "dots", None)
        labels = getattr(s, "labels", None)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != norm_img.shape[1:]:
                raise InputError(
                    f"labels of {name!r} have shape {labels.shape}, image {norm_img.shape[1:]}"
                )
            labels = labels.astype(np.int32, copy=False)
        if dots is not None:
            dots = np.asarray(dots, dtype=np.float64).reshape(-1, 2)
        hw = norm_img.shape[1:]
        boxes = getattr(s, "boxes", None)
        if boxes is not None:
            boxes = as_boxes(boxes, hw, f"boxes of {name!r}")
        region = None if boxes is None else box_mask(hw, boxes)
        counts = getattr(s, "counts", None)
        box_counts = None
        if counts is not None and dots is None and labels is None:
            box_counts = np.atleast_1d(np.asarray(counts, dtype=np.float64))
            want = 1 if boxes is None else len(boxes)
            if box_counts.shape != (want,) or not np.all(np.isfinite(box_counts)):
                raise InputError(
                    f"sample {name!r}: counts must be {want} finite number(s) (one per box, or "
                    f"one for the whole image), got {counts!r}"
                )
            if np.any(box_counts < 0):
                raise InputError(f"sample {name!r}: counts must be >= 0, got {counts!r}")
            if boxes is None:
                boxes = np.array([[0.0, 0.0, hw[0], hw[1]]])
        if task == "count":
            if box_counts is not None:
                count = float(box_counts.sum())
                out.append(
                    Prepared(
                        norm_img,
                        None,
                        None,
                        count,
                        name,
                        dict(getattr(s, "meta", {})),
                        boxes,
                        region,
                        box_counts,
                    )
                )
                continue
            if dots is None:
                if labels is None:
                    raise InputError(
                        f"counting needs dots, labels or counts; sample {name!r} has none"
                    )
                dots = instances_to_dots(labels)
            count = float(dots_in_boxes(dots, boxes).sum())
        elif task == "segment":
            if labels is None:
                raise InputError(
                    f"segmentation needs instance labels; sample {name!r} has none (dots alone "
                    "cannot train a segmenter)"
                )
            count = float(len(np.unique(labels[labels > 0])))
            if boxes is not None:
                count = float(dots_in_boxes(instances_to_dots(labels), boxes).sum())
        else:
            raise InputError(f"unknown task {task!r}; expected 'count' or 'segment'")
        meta = dict(getattr(s, "meta", {}))
        out.append(Prepared(norm_img, dots, labels, count, name, meta, boxes, region))
    return out


def _make_augmenter(augment: Any) -> Any:
    """``True`` -> a default ``data.augment.Augmenter`` (None with a warning if unavailable)."""
    if augment is False or augment is None:
        return None
    if augment is not True:
        return augment
    try:
        from napari_nalu_count.data.augment import Augmenter
    except ImportError:  # pragma: no cover - data.augment ships with the package
        warnings.warn("data.augment is unavailable: training without augmentation", stacklevel=3)
        return None
    return Augmenter()


def _fit(arr: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    """Crop (top-left anchored) / pad the last two axes of ``arr`` to ``size x size``."""
    arr = arr[..., :size, :size]
    h, w = arr.shape[-2:]
    if h == size and w == size:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, size - h), (0, size - w)]
    return np.pad(arr, pad, mode="constant", constant_values=fill)


class PatchSampler:
    """Random ``patch_size`` crops with augmentation, batched as tensors.

    ``batch()`` returns ``(x, y, valid)``: ``x`` float32 ``(B, C, P, P)``; ``y`` float32
    ``(B, 1, P, P)`` scaled density (count) or int64 ``(B, P, P)`` classes (segment); ``valid``
    float32 ``(B, 1, P, P)``. All randomness comes from ``rng`` (a numpy Generator).

    ``edge_margin`` (counting only, pixels of the patch as the network sees it): a band of that
    width along every patch side that cuts *through* the image (not along the image's own
    border) is left out of the loss (``valid`` = 0). A nucleus cut by such a side is counted by
    the target only when its centre lies inside the crop, which the network cannot see; at the
    image's own border the annotation's centre of the visible part is always inside, so a cut
    nucleus counts as one. Training on the ambiguous band taught the network to give a cut
    nucleus about half a cell, which under-counts every image at its border at inference;
    without the band the only supervision at an input edge is the image border's.
    """

    def __init__(
        self,
        items: Sequence[Prepared],
        task: str,
        patch_size: int,
        batch_size: int,
        rng: np.random.Generator,
        *,
        sigma: float = 3.0,
        density_scale: float = 100.0,
        augment: Any = True,
        boundary_width: int = 1,
        scale_jitter: Sequence[float] | None = None,
        appearance: Any = None,
        source_weights: dict[str, float] | None = None,
        wide_jitter: Sequence[float] | None = None,
        wide_prob: float = 0.0,
        edge_margin: float = 0.0,
        small_weight: float = 0.0,
        small_size: float = 8.0,
    ) -> None:
        if not items:
            raise InputError("no training images")
        if patch_size < 8:
            raise InputError(f"patch size must be at least 8 pixels, got {patch_size}")
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.items = list(items)
        self.task = task
        self.patch = int(patch_size)
        self.batch_size = int(batch_size)
        self.rng = rng
        self.sigma = float(sigma)
        self.scale = float(density_scale)
        self.augmenter = _make_augmenter(augment)
        self.boundary_width = int(boundary_width)
        if not (float(small_weight) >= 0 and float(small_size) > 0):
            raise InputError(
                f"small_weight must be >= 0 and small_size > 0, got {small_weight}, {small_size}"
            )
        self.small_weight = float(small_weight)
        self.small_size = float(small_size)
        self.scale_jitter = None
        if scale_jitter is not None:
            lo, hi = (float(v) for v in scale_jitter)
            if not 0 < lo <= hi:
                raise InputError(
                    f"scale_jitter must be (lo, hi) with 0 < lo <= hi, got {scale_jitter}"
                )
            self.scale_jitter = (lo, hi) if (lo, hi) != (1.0, 1.0) else None
        self.wide_jitter = None
        self.wide_prob = float(wide_prob)
        if wide_jitter is not None and self.wide_prob > 0:
            lo, hi = (float(v) for v in wide_jitter)
            if not 0 < lo <= hi:
                raise InputError(
                    f"wide_jitter must be (lo, hi) with 0 < lo <= hi, got {wide_jitter}"
                )
            self.wide_jitter = (lo, hi)
        self.appearance = _make_appearance(appearance)
        self.edge_margin = float(edge_margin)
        if not (self.edge_margin >= 0 and np.isfinite(self.edge_margin)):
            raise InputError(f"edge_margin must be >= 0 pixels, got {edge_margin!r}")
        #: per-sample ``(log object size relative to the model diameter, in the narrow range)``
        #: of the last :meth:`batch` (tensors ``(B,)``), for a size head's loss
        self.batch_info: dict[str, torch.Tensor] = {}
        #: per sample of the last batch: the image part outside its annotated boxes (or None);
        #: ``batch_info["outside"]`` ``(B, 1, P, P)`` when any sample has boxes
        self._outside: list[np.ndarray | None] = []
        self._info: list[tuple[float, bool]] = []
        areas = np.array([it.shape[0] * it.shape[1] for it in self.items], dtype=np.float64)
        self.weights = _sampling_weights(self.items, areas, source_weights)

    def _crop(self, it: Prepared) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        ratio = float(it.meta.get("size_ratio", 1.0) or 1.0)
        narrow = True
        if self.wide_jitter is not None and self.rng.random() < self.wide_prob:
            bounds, narrow = self.wide_jitter, False
        elif self.scale_jitter is not None:
            bounds = self.scale_jitter
        else:
            self._info.append((float(np.log(ratio)), True))
            return self._crop_at(it, self.patch)
        lo, hi = np.log(bounds[0]), np.log(bounds[1])
        j = float(np.exp(self.rng.uniform(lo, hi)))
        self._info.append((float(np.log(ratio * j)), narrow))
        q = max(8, int(round(self.patch / j)))
        image, dots, labels = self._crop_at(it, q, margin=self.edge_margin / j)
        return _resample_patch(image, dots, labels, j)

    def _crop_at(
        self, it: Prepared, p: int, margin: float | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """A ``p`` crop (over one of the item's boxes, when it has boxes). With boxes, or for
        counting with an ``edge_margin`` (a band of ``margin`` crop pixels along the sides that
        cut through the image), the labels slot carries the loss region packed in
        (:func:`_pack_region`), so the region follows every geometric transform the labels go
        through."""
        h, w = it.shape
        if it.boxes is not None and len(it.boxes):
            b = it.boxes[int(self.rng.integers(len(it.boxes)))]
            cy, cx = self.rng.uniform(b[0], b[2]), self.rng.uniform(b[1], b[3])
            y0 = int(np.clip(round(cy - p / 2), 0, max(h - p, 0)))
            x0 = int(np.clip(round(cx - p / 2), 0, max(w - p, 0)))
        else:
            y0 = int(self.rng.integers(0, h - p + 1)) if h > p else 0
            x0 = int(self.rng.integers(0, w - p + 1)) if w > p else 0
        y1, x1 = min(h, y0 + p), min(w, x0 + p)
        margin = self.edge_margin if margin is None else margin
        image = it.image[:, y0:y1, x0:x1]
        dots = None
        if it.dots is not None:
            d = it.dots
            inside = (d[:, 0] >= y0 - 0.5) & (d[:, 0] < y1 - 0.5)
            inside &= (d[:, 1] >= x0 - 0.5) & (d[:, 1] < x1 - 0.5)
            dots = d[inside] - np.array([y0, x0], dtype=np.float64)
        labels = None if it.labels is None else it.labels[y0:y1, x0:x1]
        region = None if it.region is None else np.asarray(it.region[y0:y1, x0:x1], bool)
        if self.task == "count" and self.edge_margin > 0:
            m = int(np.ceil(margin))
            band = np.ones((y1 - y0, x1 - x0), bool)
            if y0 > 0:
                band[:m] = False
            if y1 < h:
                band[max(0, y1 - y0 - m) :] = False
            if x0 > 0:
                band[:, :m] = False
            if x1 < w:
                band[:, max(0, x1 - x0 - m) :] = False
            region = band if region is None else region & band
        if region is not None:
            labels = _pack_region(region, labels if self.task == "segment" else None)
        return image, dots, labels

    def _augment(self, image, dots, labels):
        if self.augmenter is None:
            return image, dots, labels
        img2d = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        a_img, a_dots, a_labels = self.augmenter(img2d, dots=dots, labels=labels, rng=self.rng)
        a_img = np.asarray(a_img, dtype=np.float32)
        a_img = a_img[None] if a_img.ndim == 2 else np.moveaxis(a_img, -1, 0)
        return a_img, a_dots, a_labels

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One ``(image (C,P,P), target (P,P), valid (P,P))`` patch."""
        from napari_nalu_count.data import dots_to_density, instances_to_classes

        it = self.items[int(self.rng.choice(len(self.items), p=self.weights))]
        image, dots, labels = self._crop(it)
        packed = it.region is not None or (self.task == "count" and self.edge_margin > 0)
        if self.task == "segment":
            dots = None
        elif not packed:
            labels = None
        image, dots, labels = self._augment(image, dots, labels)
        if self.appearance is not None:
            image = np.stack([self.appearance(c, self.rng) for c in image])
        h, w = image.shape[-2:]
        valid = np.ones((h, w), np.float32)
        outside = None
        if packed:
            region, labels = _unpack_region(labels)
            valid *= region
            if it.region is not None:  # annotated boxes: the rest of the patch is unlabelled
                outside = 1.0 - region
            if self.task != "segment":
                labels = None
        self._outside.append(None if outside is None else _fit(outside, self.patch))
        if self.task == "count":
            d = np.zeros((0, 2)) if dots is None else np.asarray(dots, np.float64).reshape(-1, 2)
            target = dots_to_density(d, (h, w), sigma=self.sigma, out_of_bounds="clip")
            target = target.astype(np.float32) * np.float32(self.scale)
        else:
            target = instances_to_classes(labels, boundary_width=self.boundary_width)
            if self.small_weight:
                valid *= small_object_weights(labels, self.small_size, self.small_weight)
        p = self.patch
        return _fit(image, p).astype(np.float32), _fit(target, p), _fit(valid, p)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, valid)`` tensors for one batch (see the class docstring)."""
        self._info = []
        self._outside = []
        parts = [self.sample() for _ in range(self.batch_size)]
        self.batch_info = {
            "log_size": torch.tensor([i[0] for i in self._info], dtype=torch.float32),
            "narrow": torch.tensor([float(i[1]) for i in self._info], dtype=torch.float32),
        }
        if any(o is not None for o in self._outside):
            p = self.patch
            zero = np.zeros((p, p), np.float32)
            self.batch_info["outside"] = torch.from_numpy(
                np.stack([zero if o is None else o.astype(np.float32) for o in self._outside])
            )[:, None]
        x = torch.from_numpy(np.stack([p[0] for p in parts]))
        valid = torch.from_numpy(np.stack([p[2] for p in parts]))[:, None]
        if self.task == "count":
            y = torch.from_numpy(np.stack([p[1] for p in parts]).astype(np.float32))[:, None]
        else:
            y = torch.from_numpy(np.stack([p[1] for p in parts]).astype(np.int64))
        return x, y, valid


def small_object_weights(labels: np.ndarray, size: float, weight: float) -> np.ndarray:
    """Per-pixel loss weights of a label patch: ``1 + weight`` on the objects whose equivalent
    diameter is under ``size`` pixels and on a 1 px ring around each (where it meets its
    neighbours), 1 elsewhere. Objects touching the patch's side are left at 1: the crop may
    have cut them, so their size there says nothing.
    """
    from scipy import ndimage as ndi

    from napari_nalu_count.data.masks import instance_sizes

    lab = np.asarray(labels)
    out = np.ones(lab.shape, np.float32)
    if lab.size == 0 or lab.max() == 0:
        return out
    area = instance_sizes(lab)
    small = (area > 0) & (area < np.pi / 4.0 * float(size) ** 2)
    small[0] = False
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    small[edge] = False
    if not small.any():
        return out
    mask = ndi.binary_dilation(small[lab])
    out[mask] += np.float32(weight)
    return out


def _pack_region(region: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Region and labels in one int32 image (0 outside the region, label + 1 inside), so
    both go through the labels' geometric transforms (nearest neighbour)."""
    base = 0 if labels is None else labels.astype(np.int32)
    return np.where(region, base + 1, 0).astype(np.int32)


def _unpack_region(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(region float32, labels int32)`` from :func:`_pack_region`'s image."""
    packed = np.asarray(packed)
    return (packed > 0).astype(np.float32), np.maximum(packed - 1, 0).astype(np.int32)


class CountLabelSampler:
    """Whole boxes of count-labelled items (:attr:`Prepared.count_only`) for the loss on the
    density integral: each draw is one box with a context margin around it, augmented (flips,
    rotations, intensity, ``scale_jitter``, ``appearance``), with its region mask and its
    count. ``batch()`` returns a list of ``(x (1, C, h, w), region (1, 1, h, w), count)``."""

    def __init__(
        self,
        items: Sequence[Prepared],
        batch_size: int,
        rng: np.random.Generator,
        *,
        augment: Any = True,
        scale_jitter: Sequence[float] | None = None,
        appearance: Any = None,
        margin: int = 32,
    ) -> None:
        if not items:
            raise InputError("no count-labelled images")
        self.items = list(items)
        self.batch_size = int(batch_size)
        self.rng = rng
        self.augmenter = _make_augmenter(augment)
        self.scale_jitter = None if scale_jitter is None else tuple(float(v) for v in scale_jitter)
        self.appearance = _make_appearance(appearance)
        self.margin = int(margin)
        self.boxes = [(i, j) for i, it in enumerate(self.items) for j in range(len(it.boxes))]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        i, j = self.boxes[int(self.rng.integers(len(self.boxes)))]
        it = self.items[i]
        h, w = it.shape
        y0, x0, y1, x1 = np.rint(it.boxes[j]).astype(int)
        m = self.margin
        a, b, c, d = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
        image = it.image[:, a:b, c:d]
        region = np.zeros((b - a, d - c), dtype=bool)
        region[y0 - a : y1 - a, x0 - c : x1 - c] = True
        packed = _pack_region(region, None)
        if self.scale_jitter is not None:
            lo, hi = np.log(self.scale_jitter[0]), np.log(self.scale_jitter[1])
            s = float(np.exp(self.rng.uniform(lo, hi)))
            image, _, packed = _resample_patch(image, None, packed, s)
        if self.augmenter is not None:
            img2d = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            a_img, _, packed = self.augmenter(img2d, labels=packed, rng=self.rng)
            a_img = np.asarray(a_img, dtype=np.float32)
            image = a_img[None] if a_img.ndim == 2 else np.moveaxis(a_img, -1, 0)
        if self.appearance is not None:
            image = np.stack([self.appearance(ch, self.rng) for ch in image])
        region_f, _ = _unpack_region(packed)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        r = torch.from_numpy(region_f)[None, None]
        return x, r, float(it.box_counts[j])

    def batch(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        return [self.sample() for _ in range(self.batch_size)]


def _make_appearance(appearance: Any) -> Any:
    """``True`` -> a default :class:`~napari_nalu_count.data.augment.Appearance`; a dict ->
    ``Appearance(**dict)``; None/False -> None; anything callable is used as is."""
    if appearance is None or appearance is False:
        return None
    from napari_nalu_count.data.augment import Appearance

    if appearance is True:
        return Appearance()
    if isinstance(appearance, dict):
        return Appearance(**appearance)
    if callable(appearance):
        return appearance
    raise InputError(
        f"appearance must be True, a dict of Appearance settings or None, got {appearance!r}"
    )


def _sampling_weights(
    items: Sequence[Prepared], areas: np.ndarray, source_weights: dict[str, float] | None
) -> np.ndarray:
    """Per-image sampling probabilities: proportional to area, or, with ``source_weights``,
    ``source_weights[source]`` shared among that source's images by area (``meta['source']``;
    sources missing from the dict get weight 0, and an unknown-only mix is refused)."""
    if not source_weights:
        return areas / areas.sum()
    sources = [str(it.meta.get("source", "")) for it in items]
    w = np.zeros(len(items), dtype=np.float64)
    for src in set(sources):
        share = float(source_weights.get(src, 0.0))
        if share < 0:
            raise InputError(f"source weight of {src!r} must be >= 0, got {share}")
        idx = [i for i, s in enumerate(sources) if s == src]
        w[idx] = share * areas[idx] / areas[idx].sum()
    if not w.sum() > 0:
        raise InputError(
            f"source_weights {source_weights} give no weight to the training images' sources "
            f"{sorted(set(sources))}"
        )
    return w / w.sum()


def _resample_patch(
    image: np.ndarray, dots: np.ndarray | None, labels: np.ndarray | None, s: float
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Resample a ``(C, h, w)`` patch by ``s`` (objects get ``s`` times larger), with its dots
    (pixel-centre convention) and labels (nearest neighbour), as inference resamples planes."""
    from napari_nalu_count.infer.scale import rescale_plane, scaled_shape

    h, w = image.shape[-2:]
    new = scaled_shape((h, w), s)
    img = np.stack([rescale_plane(c, s) for c in image])
    fy, fx = new[0] / h, new[1] / w
    if dots is not None and len(dots):
        d = np.asarray(dots, dtype=np.float64).copy()
        d[:, 0] = (d[:, 0] + 0.5) * fy - 0.5
        d[:, 1] = (d[:, 1] + 0.5) * fx - 0.5
        inside = (d[:, 0] >= -0.5) & (d[:, 0] < new[0] - 0.5)
        inside &= (d[:, 1] >= -0.5) & (d[:, 1] < new[1] - 0.5)
        dots = d[inside]
    if labels is not None:
        rows = np.minimum(((np.arange(new[0]) + 0.5) / fy).astype(np.intp), h - 1)
        cols = np.minimum(((np.arange(new[1]) + 0.5) / fx).astype(np.intp), w - 1)
        labels = labels[rows][:, cols]
    return img, dots, labels


def rescale_samples(samples: Sequence[Any], s: float, task: str = "count") -> list[Any]:
    """Resample annotated 2-D samples by ``s`` the way inference resamples images.

    Images go through :func:`napari_nalu_count.infer.scale.rescale_plane` (per channel for
    channel-first / channel-last images), dots map with the pixel-centre convention
    ``p' = (p + 0.5) s - 0.5``, labels are resampled nearest-neighbour. For counting, samples
    with labels but no dots get their dots (instance centroids) computed *before* resampling,
    so small objects are not lost. ``s == 1`` returns the samples unchanged.
    """
    from napari_nalu_count.data import instances_to_dots
    from napari_nalu_count.data.boxes import scale_boxes
    from napari_nalu_count.data.readers import Sample
    from napari_nalu_count.infer.scale import rescale_plane, scaled_shape

    s = float(s)
    if not (np.isfinite(s) and s > 0):
        raise InputError(f"scale must be a positive number, got {s!r}")
    if s == 1.0:
        return list(samples)
    out: list[Any] = []
    for sample in samples:
        image = np.asarray(sample.image)
        if image.ndim == 2:
            img = rescale_plane(image, s)
            hw = image.shape
        elif image.ndim == 3 and image.shape[-1] <= 4 and image.shape[0] > 4:
            img = np.stack([rescale_plane(image[..., c], s) for c in range(image.shape[-1])], -1)
            hw = image.shape[:2]
        elif image.ndim == 3:
            img = np.stack([rescale_plane(c, s) for c in image])
            hw = image.shape[1:]
        else:
            raise InputError(f"cannot rescale an image of shape {image.shape}; expected 2-D")
        new_hw = scaled_shape(tuple(hw), s)
        fy, fx = new_hw[0] / hw[0], new_hw[1] / hw[1]
        dots = sample.dots
        labels = sample.labels
        if dots is None and labels is not None and task == "count":
            dots = instances_to_dots(labels)
        if dots is not None:
            d = np.asarray(dots, dtype=np.float64).reshape(-1, 2).copy()
            d[:, 0] = (d[:, 0] + 0.5) * fy - 0.5
            d[:, 1] = (d[:, 1] + 0.5) * fx - 0.5
            dots = d
        if labels is not None:
            lab = np.asarray(labels)
            rows = np.minimum(((np.arange(new_hw[0]) + 0.5) / fy).astype(np.intp), hw[0] - 1)
            cols = np.minimum(((np.arange(new_hw[1]) + 0.5) / fx).astype(np.intp), hw[1] - 1)
            labels = lab[rows][:, cols]
        meta = {**dict(getattr(sample, "meta", {}) or {}), "scale": s}
        out.append(
            Sample(
                image=img,
                dots=dots,
                labels=labels,
                name=getattr(sample, "name", ""),
                meta=meta,
                boxes=scale_boxes(getattr(sample, "boxes", None), fy, fx),
                counts=getattr(sample, "counts", None),
            )
        )
    return out


def spatial_split(sample: Any, holdout: float = 0.25) -> tuple[Any, Any]:
    """Split one annotated image into ``(train_part, held_out_strip)``.

    The strip is the last ``holdout`` fraction of the image along its longer axis (at least 16
    pixels and leaving at least 16 for training). Dots go to the part they fall in; instance
    labels are cropped (objects cut by the split appear in both parts, partially).
    """
    from napari_nalu_count.data.readers import Sample

    if not 0 < holdout < 1:
        raise InputError(f"holdout must be between 0 and 1, got {holdout}")
    image = np.asarray(sample.image)
    channels_last = image.ndim == 3 and image.shape[-1] <= 4 and image.shape[0] > 4
    if image.ndim == 2:
        h, w = image.shape
    elif image.ndim == 3:
        h, w = image.shape[:2] if channels_last else image.shape[1:]
    else:
        raise InputError(f"cannot split an image of shape {image.shape}; expected 2-D")
    axis = 0 if h >= w else 1
    n = h if axis == 0 else w
    cut = int(round(n * (1 - holdout)))
    cut = min(max(cut, 16), n - 16)
    if cut <= 0 or cut >= n:
        raise InputError(f"image of size {h}x{w} is too small to hold out a strip for validation")

    def part(lo: int, hi: int) -> Any:
        sl = [slice(None), slice(None)]
        sl[axis] = slice(lo, hi)
        if image.ndim == 2:
            img = image[tuple(sl)]
        elif channels_last:
            img = image[tuple(sl) + (slice(None),)]
        else:
            img = image[(slice(None),) + tuple(sl)]
        dots = None
        if sample.dots is not None:
            d = np.asarray(sample.dots, dtype=np.float64).reshape(-1, 2)
            keep = (d[:, axis] >= lo - 0.5) & (d[:, axis] < hi - 0.5)
            dots = d[keep].copy()
            dots[:, axis] -= lo
        labels = None
        if sample.labels is not None:
            labels = np.asarray(sample.labels)[tuple(sl)].copy()
        name = getattr(sample, "name", "") or "image"
        return Sample(image=img, dots=dots, labels=labels, name=f"{name}[{lo}:{hi}]")

    return part(0, cut), part(cut, n)


_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_LABEL_TAGS = ("_labels", "_label", "_masks", "_mask")


def load_folder(root: str | Path) -> list[Any]:
    """Annotated images from a folder: ``NAME.tif`` (or png/jpg) with ``NAME.csv`` points
    and/or a label image ``NAME_labels.tif`` / ``NAME_masks.png`` (also ``labels/NAME.*`` or
    ``masks/NAME.*``). Images without annotations are skipped; none at all raises
    :class:`InputError`."""
    from napari_nalu_count.data.readers import (
        Sample,
        read_image_axes,
        read_labels,
        read_points_csv,
    )

    base = Path(root)
    if not base.is_dir():
        raise InputError(f"training data folder not found: {base}")
    files = sorted(p for p in base.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    label_files = {p for p in files if any(p.stem.lower().endswith(t) for t in _LABEL_TAGS)}
    samples = []
    for img_path in files:
        if img_path in label_files:
            continue
        stem = img_path.stem
        dots = None
        csv = img_path.with_suffix(".csv")
        if csv.is_file():
            dots = read_points_csv(csv, ndim=2)
        labels = None
        candidates = [base / f"{stem}{t}{s}" for t in _LABEL_TAGS for s in _IMAGE_SUFFIXES]
        candidates += [
            base / d / f"{stem}{s}" for d in ("labels", "masks") for s in _IMAGE_SUFFIXES
        ]
        for cand in candidates:
            if cand.is_file():
                labels = read_labels(cand)
                break
        if dots is None and labels is None:
            continue
        image, axes = read_image_axes(img_path)
        meta = {"axes": axes} if axes else {}
        samples.append(Sample(image=image, dots=dots, labels=labels, name=stem, meta=meta))
    if not samples:
        raise InputError(
            f"no annotated images in {base}: expected NAME.tif with NAME.csv points or a label "
            "image NAME_labels.tif"
        )
    return samples
