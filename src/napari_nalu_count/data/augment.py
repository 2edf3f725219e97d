"""Augmentation that keeps an image, its dots and its instance labels consistent.

Geometric transforms (flips, 90-degree rotations, scale jitter, elastic deformation) move the
dots with the exact forward map of the same transform that warps the image (linear
interpolation) and the labels (nearest neighbour). Density targets are then re-rendered from the
moved dots (:func:`~napari_nalu_count.data.density.dots_to_density`), so the target's integral
is the number of kept dots by construction.

The elastic deformation follows U-Net / the FCRN counting work: random displacements on a coarse
3 x 3 grid (Gaussian, ``elastic`` px sd), interpolated smoothly (tensor-product quadratic through
the nodes) to every pixel. Border nodes move only along the border and the displacement
gradient is capped at 0.5, so the image rectangle maps one-to-one onto itself: nothing is
mirrored in (no unannotated phantom cells) and no dot leaves the image. Dots can only be lost
when ``scale`` zooms in with ``keep_shape=True`` (the crop cuts them off); those dots are truly
outside the output and are dropped, and their number is reported in ``Augmenter.last_dropped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_nalu_count.data.density import as_points, points_inside
from napari_nalu_count.data.normalize import cast_like
from napari_nalu_count.errors import InputError

__all__ = ["TEXTURES", "Appearance", "Augmenter", "ElasticField", "chromatin_texture"]

_MAX_GRADIENT = 0.5


def _lagrange(t: np.ndarray, n: int) -> np.ndarray:
    """Lagrange basis on ``n`` equispaced nodes of [0, 1], evaluated at ``t``: (len(t), n)."""
    nodes = np.linspace(0.0, 1.0, n)
    t = np.asarray(t, dtype=np.float64)[:, None]
    out = np.ones((t.shape[0], n))
    for j in range(n):
        for m in range(n):
            if m != j:
                out[:, j] *= (t[:, 0] - nodes[m]) / (nodes[j] - nodes[m])
    return out


@dataclass
class ElasticField:
    """Smooth displacement field on an (H, W) image from a coarse ``n x n`` node grid.

    ``dy``/``dx`` are the node displacements (n, n) in pixels. ``displacement(points)`` gives
    D(p) (N, 2) anywhere; the image warp samples the source at ``p + D(p)``.
    """

    shape: tuple[int, int]
    dy: np.ndarray
    dx: np.ndarray

    @classmethod
    def random(
        cls, shape: Sequence[int], sigma: float, rng: np.random.Generator, grid: int = 3
    ) -> ElasticField:
        h, w = int(shape[0]), int(shape[1])
        if grid < 2:
            raise InputError(f"elastic grid must have >= 2 nodes per side, got {grid}")
        dy = rng.normal(0.0, sigma, (grid, grid))
        dx = rng.normal(0.0, sigma, (grid, grid))
        dy[[0, -1], :] = 0.0  # top/bottom nodes slide only along the border
        dx[:, [0, -1]] = 0.0  # left/right nodes likewise
        field_ = cls((h, w), dy, dx)
        g = field_.max_gradient()
        if g > _MAX_GRADIENT:
            field_.dy *= _MAX_GRADIENT / g
            field_.dx *= _MAX_GRADIENT / g
        return field_

    def _basis(self, coord: np.ndarray, axis: int) -> np.ndarray:
        n = self.shape[axis]
        return _lagrange(coord / max(n - 1, 1), self.dy.shape[axis])

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """Displacements at every pixel: two (H, W) arrays (dy, dx)."""
        by = self._basis(np.arange(self.shape[0], dtype=np.float64), 0)
        bx = self._basis(np.arange(self.shape[1], dtype=np.float64), 1)
        return by @ self.dy @ bx.T, by @ self.dx @ bx.T

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """D(p) for points (N, 2) ``(y, x)``: (N, 2).

        Outside the pixel-centre rectangle (the half-pixel band up to the image edge) the field
        is extended constantly, so there the normal displacement is 0 and points in the band
        stay in it.
        """
        hi = np.array([self.shape[0] - 1.0, self.shape[1] - 1.0])
        points = np.clip(points, 0.0, hi)
        by = self._basis(points[:, 0], 0)
        bx = self._basis(points[:, 1], 1)
        return np.column_stack(
            [np.einsum("ni,ij,nj->n", by, self.dy, bx), np.einsum("ni,ij,nj->n", by, self.dx, bx)]
        )

    def max_gradient(self) -> float:
        """Largest Frobenius norm of the displacement Jacobian over the image."""
        dy, dx = self.dense()
        if min(self.shape) < 2:
            return 0.0
        gyy, gyx = np.gradient(dy)
        gxy, gxx = np.gradient(dx)
        return float(np.sqrt(gyy**2 + gyx**2 + gxy**2 + gxx**2).max())

    def invert(self, targets: np.ndarray, iterations: int = 100, tol: float = 1e-9) -> np.ndarray:
        """Solve ``p + D(p) = q`` for each target q (N, 2) (fixed point; contraction <= 0.5)."""
        p = targets.copy()
        for _ in range(iterations):
            nxt = targets - self.displacement(p)
            if np.max(np.abs(nxt - p), initial=0.0) < tol:
                return nxt
            p = nxt
        return p


@dataclass
class Augmenter:
    """Random, consistent augmentation of ``(image, dots, labels)``.

    Parameters
    ----------
    flip
        Random vertical and horizontal flips (each with probability 0.5).
    rot90
        Random rotation by 0, 90, 180 or 270 degrees (square or not: H and W swap).
    elastic
        Standard deviation in pixels of the coarse-grid node displacements (U-Net used 10);
        0 disables the elastic deformation.
    elastic_grid
        Nodes per side of the coarse grid (3 as in the counting/U-Net papers).
    scale
        ``(lo, hi)`` range of the zoom factor (log-uniform), or None. Objects become ``s`` times
        larger.
    keep_shape
        With ``scale``: keep the output (H, W) (zoom about the centre; zooming in crops and drops
        the dots cut off, zooming out pads with the image's 1st percentile, which adds no cells).
        Otherwise the output is resized to ``round(s * H), round(s * W)``.
    intensity
        ``(lo, hi)`` range of a multiplicative intensity factor, or None.
    gamma
        ``(lo, hi)`` range of a gamma applied to the min-max rescaled image, or None.
    noise
        Additive Gaussian noise sd as a fraction of the image's sd (0 disables).

    Calling the augmenter returns ``(image float32, dots (N', 2) float64 or None, labels int32 or
    None)``; ``last_dropped`` is the number of dots the last call dropped and ``last_ops`` what it
    did.
    """

    flip: bool = True
    rot90: bool = True
    elastic: float = 0.0
    elastic_grid: int = 3
    scale: tuple[float, float] | None = None
    keep_shape: bool = True
    intensity: tuple[float, float] | None = (0.8, 1.25)
    gamma: tuple[float, float] | None = (0.8, 1.25)
    noise: float = 0.0
    last_dropped: int = field(default=0, init=False, repr=False, compare=False)
    last_ops: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.elastic < 0:
            raise InputError(f"elastic must be >= 0 pixels, got {self.elastic}")
        for name in ("scale", "intensity", "gamma"):
            rng_ = getattr(self, name)
            if rng_ is not None and not (0 < rng_[0] <= rng_[1]):
                raise InputError(f"{name} must be a range (lo, hi) with 0 < lo <= hi, got {rng_}")
        if self.noise < 0:
            raise InputError(f"noise must be >= 0, got {self.noise}")

    @classmethod
    def strong(cls) -> Augmenter:
        """Flips, rotations, elastic (10 px), scale jitter 0.8-1.25, intensity, gamma, noise."""
        return cls(elastic=10.0, scale=(0.8, 1.25), noise=0.03)

    # -----------------------------------------------------------------------------------------

    def __call__(
        self,
        image: np.ndarray,
        dots: object | None = None,
        labels: np.ndarray | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Augment one image (H, W) or (H, W, C) with optional dots (N, 2) and labels (H, W)."""
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        img = np.asarray(image)
        if img.ndim not in (2, 3):
            raise InputError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
        if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
            raise InputError(f"image must be numeric, got dtype {img.dtype}")
        img = img.astype(np.float32)
        h, w = img.shape[:2]
        pts = None
        if dots is not None:
            pts = as_points(dots, 2)
            if not np.all(points_inside(pts, (h, w))):
                raise InputError(f"dots must lie inside the {h}x{w} image before augmentation")
        lab = None
        if labels is not None:
            lab = np.asarray(labels)
            if lab.shape != (h, w):
                raise InputError(f"labels shape {lab.shape} does not match image (H, W) {(h, w)}")
            lab = lab.astype(np.int32)
        ops: dict[str, Any] = {}
        n_in = 0 if pts is None else len(pts)

        img, pts, lab = self._dihedral(img, pts, lab, gen, ops)
        img, pts, lab = self._warp(img, pts, lab, gen, ops)
        if pts is not None:
            keep = points_inside(pts, img.shape[:2])
            pts = pts[keep]
        img = self._intensity(img, gen, ops)
        self.last_dropped = n_in - (0 if pts is None else len(pts))
        self.last_ops = ops
        return np.ascontiguousarray(img, dtype=np.float32), pts, lab

    def apply_sample(self, sample: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Augment a :class:`~napari_nalu_count.data.readers.Sample`; returns a new Sample."""
        from dataclasses import replace

        image, dots, labels = self(sample.image, sample.dots, sample.labels, rng)
        return replace(sample, image=image, dots=dots, labels=labels, meta=dict(sample.meta))

    # -----------------------------------------------------------------------------------------

    def _dihedral(self, img, pts, lab, gen, ops):
        if self.rot90:
            k = int(gen.integers(0, 4))
            ops["rot90"] = k
            for _ in range(k):
                h, w = img.shape[:2]
                img = np.rot90(img, 1, axes=(0, 1))
                if lab is not None:
                    lab = np.rot90(lab, 1, axes=(0, 1))
                if pts is not None:  # np.rot90: new[i, j] = old[j, W - 1 - i]
                    pts = np.column_stack([(w - 1) - pts[:, 1], pts[:, 0]])
        if self.flip:
            fy, fx = bool(gen.random() < 0.5), bool(gen.random() < 0.5)
            ops["flip"] = (fy, fx)
            h, w = img.shape[:2]
            if fy:
                img = img[::-1]
                lab = None if lab is None else lab[::-1]
                pts = None if pts is None else np.column_stack([(h - 1) - pts[:, 0], pts[:, 1]])
            if fx:
                img = img[:, ::-1]
                lab = None if lab is None else lab[:, ::-1]
                pts = None if pts is None else np.column_stack([pts[:, 0], (w - 1) - pts[:, 1]])
        return img, pts, lab

    def _warp(self, img, pts, lab, gen, ops):
        """Scale jitter and elastic deformation, as one resampling of the image and labels."""
        h, w = img.shape[:2]
        s = 1.0
        if self.scale is not None:
            lo, hi = np.log(self.scale[0]), np.log(self.scale[1])
            s = float(np.exp(gen.uniform(lo, hi)))
            ops["scale"] = s
        if s == 1.0 and self.elastic <= 0:
            return img, pts, lab
        if self.keep_shape:
            oh, ow = h, w
            centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
            factor = np.array([s, s])

            def forward(q):  # source -> intermediate (output frame before elastic)
                return centre + (q - centre) * factor

            def backward(m):
                return centre + (m - centre) / factor

        else:
            oh, ow = max(int(round(h * s)), 1), max(int(round(w * s)), 1)
            factor = np.array([oh / h, ow / w])

            def forward(q):
                return (q + 0.5) * factor - 0.5

            def backward(m):
                return (m + 0.5) / factor - 0.5

        elastic = None
        if self.elastic > 0:
            elastic = ElasticField.random((oh, ow), self.elastic, gen, self.elastic_grid)
            ops["elastic"] = {"dy": elastic.dy.tolist(), "dx": elastic.dx.tolist()}

        # backward map of every output pixel to source coordinates
        yy, xx = np.meshgrid(
            np.arange(oh, dtype=np.float64), np.arange(ow, dtype=np.float64), indexing="ij"
        )
        if elastic is not None:
            dy, dx = elastic.dense()
            yy, xx = yy + dy, xx + dx
        src = backward(np.stack([yy, xx], axis=-1))
        coords = [src[..., 0], src[..., 1]]
        pad = self.keep_shape and s < 1.0
        mode = "constant" if pad else "nearest"
        cval = float(np.percentile(img, 1.0)) if pad else 0.0
        source = img
        if s < 1.0:  # anti-alias before shrinking
            sig = 0.5 * (1.0 / s - 1.0)
            sigma = (sig, sig, 0.0) if img.ndim == 3 else (sig, sig)
            source = ndi.gaussian_filter(img, sigma)
        if img.ndim == 2:
            out = ndi.map_coordinates(source, coords, order=1, mode=mode, cval=cval)
        else:
            out = np.stack(
                [
                    ndi.map_coordinates(source[..., c], coords, order=1, mode=mode, cval=cval)
                    for c in range(img.shape[2])
                ],
                axis=-1,
            )
        if lab is not None:
            lab = ndi.map_coordinates(
                lab, coords, order=0, mode="constant" if pad else "nearest", cval=0
            ).astype(np.int32)
        if pts is not None and len(pts):
            mid = forward(pts)
            pts = elastic.invert(mid) if elastic is not None else mid
        return out.astype(np.float32), pts, lab

    def _intensity(self, img: np.ndarray, gen: np.random.Generator, ops) -> np.ndarray:
        if self.gamma is not None:
            g = float(np.exp(gen.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
            ops["gamma"] = g
            lo, hi = float(img.min()), float(img.max())
            if hi > lo:
                img = (((img - lo) / (hi - lo)) ** g) * (hi - lo) + lo
        if self.intensity is not None:
            a = float(gen.uniform(self.intensity[0], self.intensity[1]))
            ops["intensity"] = a
            img = img * a
        if self.noise > 0:
            sd = float(img.std()) * self.noise
            ops["noise_sd"] = sd
            img = img + gen.normal(0.0, sd, size=img.shape).astype(np.float32)
        return img.astype(np.float32, copy=False)


@dataclass
class Appearance:
    """Random microscope appearance on a *normalised* image (background ~0, nuclei ~1).

    Simulates what other labs' microscopes do to the same nuclei, each effect drawn with its
    own probability ``p``: a smooth uneven background (additive, up to ``background`` of the
    nucleus level) and uneven illumination (multiplicative, +-``illumination``), a nonlinear
    response (gamma in ``gamma``), optical blur (Gaussian sigma up to ``blur`` px), camera
    noise (Poisson-like signal-dependent plus Gaussian read noise, sd up to ``noise``),
    saturation (clipping at a level in ``saturate``) and coarse quantisation (an 8-bit camera
    whose signal spans only ``levels`` grey values). The result is renormalised the way
    inference normalises a whole image (the transformed background and nucleus levels map back
    to 0 and 1), so the network sees what ``percentile_normalize`` would give it.

    ``dim`` > 0 adds one more effect (same probability ``p``): after the renormalisation the
    nuclei are scaled by a gain drawn log-uniformly in ``[dim, 1.5]``. A whole-image percentile
    normalisation puts the nuclei of a real image well below 1 when a few much brighter objects
    (a saturated clump, debris, a mitotic cell) hold the top percentile, and above 1 when
    nuclei cover too little of the image to reach it; the gain teaches the network to count
    them anyway. 0 (the default) leaves it out.

    Geometry is untouched: dots, labels and counts stay exact.
    """

    p: float = 0.5
    background: float = 0.4
    illumination: float = 0.5
    gamma: tuple[float, float] = (0.5, 2.0)
    blur: float = 1.5
    noise: float = 0.12
    saturate: tuple[float, float] = (0.35, 0.9)
    levels: tuple[int, int] = (6, 64)
    dim: float = 0.0
    last_ops: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise InputError(f"p must be a probability in [0, 1], got {self.p}")
        if not 0.0 <= self.dim <= 1.0:
            raise InputError(f"dim must be a gain in [0, 1] (0: off), got {self.dim}")
        for name in ("background", "illumination", "blur", "noise"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "saturate", "levels"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise InputError(f"{name} must be a range (lo, hi) with 0 < lo <= hi")

    @staticmethod
    def _smooth_field(shape: tuple[int, int], gen: np.random.Generator) -> np.ndarray:
        """A smooth random field in [0, 1]: a tilted plane plus a few broad Gaussian bumps."""
        h, w = shape
        yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
        xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
        ang = gen.uniform(0, 2 * np.pi)
        f = np.cos(ang) * xx + np.sin(ang) * yy
        for _ in range(int(gen.integers(0, 3))):
            cy, cx = gen.uniform(-0.6, 0.6, 2)
            r = gen.uniform(0.2, 0.8)
            f = f + gen.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        f = f - f.min()
        top = float(f.max())
        return (f / top if top > 0 else f).astype(np.float32)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | int | None = None):
        """Augment a normalised ``(H, W)`` float image; returns float32 of the same shape."""
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2:
            raise InputError(f"Appearance expects a 2-D image, got shape {img.shape}")
        ops: dict[str, Any] = {}
        x = np.clip(img, 0.0, None)
        lo_ref, hi_ref = 0.0, 1.0  # where background and nuclei sit before the transforms

        def draw() -> bool:
            return bool(gen.random() < self.p)

        if draw():
            g = float(np.exp(gen.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
            ops["gamma"] = g
            x = x**g
        if self.illumination > 0 and draw():
            a = float(gen.uniform(-self.illumination, self.illumination))
            ops["illumination"] = a
            fld = self._smooth_field(x.shape, gen)
            gain = (1.0 + a * (fld - 0.5) * 2.0).clip(0.2, None)
            x = x * gain
            hi_ref *= float(gain.mean())
        if self.background > 0 and draw():
            b = float(gen.uniform(0.0, self.background))
            ops["background"] = b
            fld = self._smooth_field(x.shape, gen)
            x = x + b * fld
            hi_ref += b * float(fld.mean())
        if self.blur > 0 and draw():
            s = float(gen.uniform(0.3, self.blur))
            ops["blur"] = s
            x = ndi.gaussian_filter(x, s, mode="reflect")
        if self.noise > 0 and draw():
            sd = float(gen.uniform(0.01, self.noise))
            shot = float(gen.uniform(0.0, 1.0))
            ops["noise"] = (sd, shot)
            scale = np.sqrt(shot * np.clip(x, 0, None) + (1.0 - shot) * 0.05)
            x = x + gen.normal(0.0, 1.0, x.shape).astype(np.float32) * (sd * scale)
        if draw():  # 8-bit camera: offset, gain, few grey levels, saturation
            top = float(gen.uniform(*self.saturate)) if gen.random() < 0.5 else 2.0
            n = int(gen.integers(self.levels[0], self.levels[1] + 1))
            ops["quantise"] = (n, top)
            x = np.clip(x, 0.0, top)
            x = np.round(x * (n / max(top, 1.0))) * (max(top, 1.0) / n)
            hi_ref = min(hi_ref, top)
        x = x.astype(np.float32)
        # renormalise like inference's whole-image normalisation: the transformed background
        # and nucleus levels (tracked, not measured on this patch, which may hold no nucleus)
        # map back to 0 and 1
        if hi_ref - lo_ref > 1e-3 and (lo_ref, hi_ref) != (0.0, 1.0):
            x = (x - np.float32(lo_ref)) / np.float32(hi_ref - lo_ref)
        if self.dim > 0 and draw():
            g = float(np.exp(gen.uniform(np.log(self.dim), np.log(1.5))))
            ops["gain"] = g
            x = x * np.float32(g)
        self.last_ops = ops
        return np.ascontiguousarray(x, dtype=np.float32)


#: the kinds of :func:`chromatin_texture`
TEXTURES = ("mottled", "spots")


def chromatin_texture(
    image: np.ndarray,
    labels: np.ndarray,
    diameter: float,
    amp: float,
    *,
    kind: str = "mottled",
    grain: float = 0.08,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """``image`` with a chromatin-like texture inside its annotated objects (same dtype).

    Large nuclei imaged at high magnification are not smooth discs: heterochromatin makes them
    mottled or studded with bright foci, and a size estimate or counter that only saw smooth
    nuclei reads the texture as many small objects. The signal above the background (the
    median outside the objects) is modulated inside ``labels > 0``, softly (the mask blurred by
    0.03 ``diameter``, so the outline gets no hard edge):

    - ``"mottled"``: ``x' = bg + (x - bg) max(0, 1 + amp z)`` with ``z`` unit-sd band-passed
      noise (Gaussian of ``grain x diameter`` minus one three times wider);
    - ``"spots"``: the nucleus dimmed to ``1 - amp / 2`` of its signal, plus bright foci
      (Gaussian spots of sd ``grain x diameter / 2``, one per ``(2.5 grain diameter)^2`` of
      object area, each adding ``2 amp`` to the gain at its centre: a lone focus peaks at
      ``1 + 1.5 amp`` x the original signal).

    The objects do not move: dots and labels stay valid. ``amp`` 0 returns ``image`` as is.
    """
    if kind not in TEXTURES:
        raise InputError(f"texture kind {kind!r} is not one of {', '.join(TEXTURES)}")
    if not (np.isfinite(amp) and amp >= 0):
        raise InputError(f"texture amplitude must be a number >= 0, got {amp!r}")
    if not (np.isfinite(diameter) and diameter > 0 and np.isfinite(grain) and grain > 0):
        raise InputError(
            f"texture needs a positive diameter and grain, got {diameter!r} and {grain!r}"
        )
    img = np.asarray(image)
    lab = np.asarray(labels)
    if lab.shape != img.shape:
        raise InputError(f"labels {lab.shape} and image {img.shape} differ in shape")
    if amp == 0:
        return img
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = img.astype(np.float32)
    inside = lab > 0
    if not inside.any():
        return img
    bg = float(np.median(x[~inside])) if (~inside).any() else float(x.min())
    w = ndi.gaussian_filter(inside.astype(np.float32), 0.03 * float(diameter))
    s = max(float(grain) * float(diameter), 0.7)
    if kind == "mottled":
        z = ndi.gaussian_filter(rng.standard_normal(x.shape).astype(np.float32), s)
        z -= ndi.gaussian_filter(z, 3.0 * s)
        z /= max(float(z.std()), 1e-12)
        gain = np.maximum(0.0, 1.0 + w * float(amp) * z)
    else:
        n = rng.poisson(float(inside.sum()) / (2.5 * s) ** 2)
        ys, xs = np.nonzero(inside)
        pick = rng.integers(0, len(ys), size=n)
        spots = np.zeros(x.shape, dtype=np.float32)
        spots[ys[pick], xs[pick]] = 1.0
        spots = ndi.gaussian_filter(spots, s / 2.0) * (2.0 * np.pi * (s / 2.0) ** 2)
        gain = 1.0 + w * (float(amp) * (2.0 * spots - 0.5))
        gain = np.maximum(gain, 0.0)
    return cast_like(bg + (x - bg) * gain, img.dtype)
