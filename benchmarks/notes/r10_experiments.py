"""Round 10 experiments behind docs/benchmarks/speed.md (one process, 2 torch threads).

    python benchmarks/notes/r10_experiments.py fft       # one batched irfft2 vs one per scale
    python benchmarks/notes/r10_experiments.py small     # 64 images of 256 px, A/B, alternating
    python benchmarks/notes/r10_experiments.py equal     # old vs new estimate on many images
    python benchmarks/notes/r10_experiments.py seg-grid 18 OUTDIR  # segmenter on another grid

``fft`` times the inverse transforms of the size estimator's first octave (three LoG
transfer functions on the 288 x 145 spectrum of a 256 px window): SciPy's ``irfft2`` over the
leading axis of a ``(3, 288, 145)`` array, against three ``irfft2`` calls of one plane each.
``small`` counts the 64 images of ``bench speed --small 64`` (256 px, nuclei 28.66 px) one
call each with the size estimated, alternating the estimator's LoG responses as before this
round (:func:`batched_log_responses`, patched in) and as now, 5 rounds, and prints the best
and median pass of each in ms per call and Mpx/s, with the totals of the counts (which must be
equal to float32 rounding). ``equal`` compares the diameters both give on the val images of
``../shared/data`` (skipped sets when absent), on synthetic planes of 8 to 1024 px and on a
4 x 5 noise plane.

``seg-grid D OUTDIR`` writes the bundled segmenter with its card's ``diameter`` set to ``D``
(same weights: the network then sees nuclei of D px instead of 20) as
``OUTDIR/nuclei-seg-D.json``; docs/benchmarks/seg_grid_r10/ holds ``nalu-count bench accuracy
--data ../shared/data --sets bbbc039,dsb,aitslab --diameter true --no-baselines --scale-limit
25 --threads 1 --seg-model OUTDIR/nuclei-seg-D.json`` for D = 18 and 20, run side by side.
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit

import numpy as np


def batched_log_responses(level: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """The estimator's LoG responses as before round 10: one batched inverse transform, and
    (in :func:`napari_nalu_count.infer.size.scale_profile` then) SciPy's filter on levels
    under twice the kernel radius; here only the transform differs (the caller chooses)."""
    from scipy import fft

    from napari_nalu_count.infer import size as S

    radius = max(int(4.0 * s + 0.5) for s in sigmas)
    padded = np.pad(np.asarray(level, dtype=np.float32), radius, mode="symmetric")
    shape = tuple(fft.next_fast_len(n, real=True) for n in padded.shape)
    spec = fft.rfft2(padded, s=shape)
    tf = S._log_transfer(shape, tuple(sigmas), radius)
    resp = fft.irfft2(spec[None] * tf, s=shape, axes=(-2, -1))
    h, w = level.shape
    return resp[:, radius : radius + h, radius : radius + w]


def old_scale_profile(x, octave_crop=None, pyramid="gauss"):
    """``scale_profile`` as it was before round 10 (batched transform, SciPy's filter on the
    smallest levels)."""
    from scipy import ndimage as ndi

    from napari_nalu_count.infer import size as S

    level = np.ascontiguousarray(x, dtype=np.float32)
    stats = []
    for _octave in range(S.N_OCTAVES):
        sigmas = [S.SIGMA0 * 2 ** (j / S.PER_OCTAVE) for j in range(S.PER_OCTAVE)]
        read = level
        if octave_crop and max(level.shape) > octave_crop:
            read = np.ascontiguousarray(level[S.window_slices(level, int(octave_crop))])
        if min(read.shape) > 2 * int(4.0 * sigmas[-1] + 0.5):
            stats.extend(S._stats(r) for r in batched_log_responses(read, sigmas))
        else:
            for s in sigmas:
                stats.append(S._stats(-(s * s) * ndi.gaussian_laplace(read, s, mode="reflect")))
        if min(level.shape) < 16:
            break
        level = S._decimate(level, pyramid)
    arr = np.maximum(np.asarray(stats, dtype=np.float64), 1e-6)
    if len(arr) < S.N_SCALES:
        arr = np.vstack([arr, np.repeat(arr[-1:], S.N_SCALES - len(arr), axis=0)])
    arr = np.log(arr / arr.max(axis=0, keepdims=True))
    return arr.T.reshape(-1).astype(np.float64)


def fft_timing() -> None:
    from scipy import fft

    from napari_nalu_count.infer import size as S

    x = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    sig = [S.SIGMA0 * 2 ** (j / S.PER_OCTAVE) for j in range(S.PER_OCTAVE)]
    radius = 8
    padded = np.pad(x, radius, mode="symmetric")
    shape = tuple(fft.next_fast_len(n, real=True) for n in padded.shape)
    tf = S._log_transfer(shape, tuple(sig), radius)
    spec = fft.rfft2(padded, s=shape)
    prod = spec[None] * tf
    batched = min(
        timeit.repeat(lambda: fft.irfft2(prod, s=shape, axes=(-2, -1)), number=50, repeat=5)
    )
    loop = min(timeit.repeat(lambda: [fft.irfft2(p, s=shape) for p in prod], number=50, repeat=5))
    a = fft.irfft2(prod, s=shape, axes=(-2, -1))
    b = np.stack([fft.irfft2(p, s=shape) for p in prod])
    print(
        f"spectrum {prod.shape}: batched irfft2 {batched / 50 * 1e3:.3f} ms, "
        f"one per scale {loop / 50 * 1e3:.3f} ms ({batched / loop:.2f}x); "
        f"max difference {float(np.abs(a - b).max()):.3g}"
    )
    whole = min(timeit.repeat(lambda: S._log_responses(x, sig), number=50, repeat=5))
    old = min(timeit.repeat(lambda: batched_log_responses(x, sig), number=50, repeat=5))
    print(
        f"_log_responses 256 px: before {old / 50 * 1e3:.3f} ms, now {whole / 50 * 1e3:.3f} ms "
        f"({old / whole:.2f}x)"
    )


def small() -> None:
    import torch

    torch.set_num_threads(2)
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count
    from napari_nalu_count.infer import size as S

    d, side, n = 28.66, 256, 64
    cells = max(1, int(side * side / (d * d * 4)))
    imgs = [
        synthetic_cells((side, side), n_cells=cells, diameter=d, seed=i).image for i in range(n)
    ]
    new_profile = S.scale_profile
    for im in imgs[:4]:
        count(im)
    times: dict[str, list[float]] = {"before": [], "now": []}
    totals: dict[str, float] = {}
    for _ in range(5):
        for name, prof in (("before", old_scale_profile), ("now", new_profile)):
            S.scale_profile = prof
            t0 = time.perf_counter()
            total = sum(float(count(im).count) for im in imgs)
            times[name].append(time.perf_counter() - t0)
            totals[name] = total
    S.scale_profile = new_profile
    mpx = n * side * side / 1e6
    for name, v in times.items():
        print(
            f"{name}: best {min(v) / n * 1e3:.2f} ms per call ({mpx / min(v):.2f} Mpx/s), "
            f"median {statistics.median(v) / n * 1e3:.2f} ms ({mpx / statistics.median(v):.2f} "
            f"Mpx/s); total count {totals[name]:.4f}"
        )
    print(
        f"speed-up (best) {min(times['before']) / min(times['now']):.2f}x, "
        f"(median) {statistics.median(times['before']) / statistics.median(times['now']):.2f}x"
    )


def equal() -> None:
    from pathlib import Path

    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import size as S

    planes = []
    root = Path("../shared/data")
    if root.is_dir():
        from napari_nalu_count import data

        for loader in (data.load_bbbc039, data.load_dsb2018, data.load_aitslab):
            try:
                planes += [s.image for s in loader(str(root), "val")]
            except Exception as exc:  # a set missing here: say so, go on
                print(f"{loader.__name__}: skipped ({exc})")
    planes.append(np.random.default_rng(0).random((4, 5)))
    for side in (8, 9, 33, 100, 256, 640, 1024):
        n_cells, diameter = max(1, side * side // 900), min(12.0, side / 2)
        planes.append(synthetic_cells((side, side), n_cells, diameter, seed=side).image)
    reg = S.load_regressor()
    new_profile = S.scale_profile
    rel = []
    for p in planes:
        S.scale_profile = old_scale_profile
        a = S.estimate_diameter(p, regressor=reg)
        S.scale_profile = new_profile
        b = S.estimate_diameter(p, regressor=reg)
        if a is not None and b is not None:
            rel.append(abs(a - b) / a)
    print(
        f"{len(rel)} planes: largest relative difference of the diameter {max(rel):.3g}, "
        f"median {statistics.median(rel):.3g}"
    )


def seg_grid() -> None:
    import json
    import shutil
    from pathlib import Path

    from napari_nalu_count.models import bundled

    d, out = float(sys.argv[2]), Path(sys.argv[3])
    src = Path(bundled.__file__).parent / "nuclei-seg"
    card = json.loads(src.with_suffix(".json").read_text())
    card["diameter"], card["name"] = d, f"nuclei-seg-{d:g}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"nuclei-seg-{d:g}.json").write_text(json.dumps(card))
    shutil.copy(src.with_suffix(".safetensors"), out / f"nuclei-seg-{d:g}.safetensors")
    print(out / f"nuclei-seg-{d:g}.json")


if __name__ == "__main__":
    cmds = {"fft": fft_timing, "small": small, "equal": equal, "seg-grid": seg_grid}
    cmds[sys.argv[1]]()
