"""Round 11: density peaks without scikit-image's spacing pass, a seeded watershed that floods
only the components with two or more seeds, the background gate without pooling ops
(docs/benchmarks/speed.md).

    python benchmarks/notes/r11_peaks.py equal   # points of every val image, old vs new
    python benchmarks/notes/r11_peaks.py small   # 64 images of 256 px, A/B, alternating
    python benchmarks/notes/r11_peaks.py big     # count and segment of the 2048 px image, A/B

"old" is :func:`reference_peaks` (``peak_local_max`` + a whole-plane ``uniform_filter``, as
``postprocess.density_peaks`` was before this round) and :func:`reference_watershed`
(scikit-image's watershed of the whole plane, unseeded components labelled again,
:func:`reference_relabel`) and :func:`reference_gate` (the background gate
with PyTorch's pooling ops), patched into the engine; "new" is the shipped
code. Set ``R11_ONLY=peaks`` to patch the peaks only (the first run of this round), or
``R11_ONLY=all`` to switch the shrink's transposes and the fused heads too (all of round 11).
``equal`` counts and segments the BBBC039, DSB and Aitslab val images of ``../shared/data``
(size estimated, sets skipped when absent) both ways and reports how many point sets / label
images differ. ``small`` and ``big`` alternate old and new in one process
(2 torch threads) and print best and median times.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_nalu_count.infer import engine
from napari_nalu_count.infer import postprocess as post

NEW = post.density_peaks


def reference_peaks(density, diameter, *, min_mass=0.3, smooth=True):
    from skimage.feature import peak_local_max

    dens = np.asarray(density, dtype=np.float32)
    d = max(2.0, float(diameter))
    work = ndi.gaussian_filter(dens, max(0.5, d / 8.0), output=np.float32) if smooth else dens
    if not np.any(work > 0):
        return np.zeros((0, 2), dtype=np.float64)
    md = max(1, int(round(d / 2.0)))
    coords = peak_local_max(
        work, min_distance=md, threshold_abs=min_mass / (d * d), exclude_border=False
    )
    if len(coords) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    size = max(1, int(round(d)))
    mass = ndi.uniform_filter(dens, size=size, mode="constant", output=np.float32)
    keep = mass[coords[:, 0], coords[:, 1]] * np.float32(size * size) >= min_mass
    pts = coords[keep].astype(np.float64)
    order = np.lexsort((pts[:, 1], pts[:, 0])) if len(pts) else np.zeros(0, dtype=int)
    return pts[order]


NEW_WATERSHED = post._seeded_watershed
NEW_GATE = engine.gate_background


def reference_gate(density, diameter):
    """engine.gate_background as it was before round 11 (pooling ops)."""
    import torch.nn.functional as F

    smooth = F.avg_pool2d(density, 3, stride=1, padding=1, count_include_pad=False)
    keep = (smooth > engine.GATE_LEVEL).to(density.dtype)
    h, w = keep.shape[-2:]
    b = engine.GATE_BLOCK
    r = max(1, -(-int(round(engine.GATE_RADIUS * float(diameter))) // b))
    keep = F.max_pool2d(keep, b, stride=b, ceil_mode=True)
    keep = F.max_pool2d(keep, (1, 2 * r + 1), stride=1, padding=(0, r))
    keep = F.max_pool2d(keep, (2 * r + 1, 1), stride=1, padding=(r, 0))
    keep = keep.repeat_interleave(b, dim=-2).repeat_interleave(b, dim=-1)[..., :h, :w]
    return density * keep + 0.0


def label_orphans(labels, foreground):
    """The foreground left at 0 labelled again and numbered after the maximum (round 10)."""
    orphan = foreground & (labels == 0)
    if orphan.any():
        extra, n_extra = ndi.label(orphan)
        if n_extra:
            labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def reference_watershed(elevation, markers, foreground, *, orphans=False):
    """scikit-image's watershed of the whole plane, then (``orphans``) the unseeded
    foreground labelled again and numbered after the maximum, as before round 11."""
    from skimage.segmentation import watershed

    labels = watershed(elevation, markers=markers, mask=foreground)
    return label_orphans(labels, foreground) if orphans else labels


NEW_RELABEL = post._relabel


def reference_relabel(labels, min_size=0):
    """Small objects dropped, then the ids renumbered, in two passes (round 10)."""
    return NEW_RELABEL(post._remove_small(labels.astype(np.int32), min_size))


NEW_SHRINK = None


def reference_shrink(plane, shape, sigma):
    """scale._shrink_banded as it was before round 11 (SciPy's product with a transposed
    view, NumPy's transposing copy)."""
    from napari_nalu_count.infer import scale

    my = scale._shrink_matrix(plane.shape[0], int(shape[0]), float(sigma))
    mx = scale._shrink_matrix(plane.shape[1], int(shape[1]), float(sigma))
    rows = my @ np.ascontiguousarray(plane)
    return np.ascontiguousarray((mx @ rows.T).T, dtype=np.float32)


def use(which: str) -> None:
    post.density_peaks = NEW if which == "new" else reference_peaks
    if os.environ.get("R11_ONLY") != "peaks":
        post._seeded_watershed = NEW_WATERSHED if which == "new" else reference_watershed
        post._relabel = NEW_RELABEL if which == "new" else reference_relabel
        engine.gate_background = NEW_GATE if which == "new" else reference_gate
    if os.environ.get("R11_ONLY") == "all":  # everything of round 11, shrink and heads too
        from napari_nalu_count.infer import scale

        global NEW_SHRINK
        if NEW_SHRINK is None:
            NEW_SHRINK = scale._shrink_banded
        scale._shrink_banded = NEW_SHRINK if which == "new" else reference_shrink
        engine.OPTIONS["fuse_heads"] = which == "new"


def compare_on_val(switch, old, new) -> None:
    """Count and segment every val image with ``switch(old)`` and ``switch(new)`` in force;
    print per set how many point sets and label images differ and the largest count
    difference. Leaves ``switch(new)`` in force."""
    from napari_nalu_count.bench.accuracy import load_set
    from napari_nalu_count.infer import count, segment

    for name in ("bbbc039", "dsb", "aitslab"):
        try:
            samples = load_set("../shared/data", name)
        except Exception as exc:  # noqa: BLE001
            print(name, "skipped:", exc)
            continue
        diff_pts = diff_lab = n_pts = 0
        diff_count = 0.0
        for s in samples:
            out = {}
            for which in (old, new):
                switch(which)
                c = count(s.image, "nuclei-count")
                g = segment(s.image)
                out[which] = (c.points, g.labels, c.count)
            n_pts += len(out[new][0])
            diff_pts += not np.array_equal(out[old][0], out[new][0])
            diff_lab += not np.array_equal(out[old][1], out[new][1])
            diff_count = max(diff_count, abs(out[old][2] - out[new][2]))
        switch(new)
        print(
            f"{name}: {len(samples)} images, {n_pts} points; point sets differing {diff_pts}, "
            f"label images differing {diff_lab}, largest count difference {diff_count:.3g}"
        )


def alternate(fn, rounds: int, switch, old="old", new="new") -> dict:
    """Seconds of ``fn`` per round under ``switch(old)`` and ``switch(new)``, alternating
    which goes first; leaves ``switch(new)`` in force."""
    times: dict = {old: [], new: []}
    for r in range(rounds):
        for which in (old, new) if r % 2 == 0 else (new, old):
            switch(which)
            t = time.perf_counter()
            fn()
            times[which].append(time.perf_counter() - t)
    switch(new)
    return times


def equal() -> None:
    compare_on_val(use, "old", "new")


def small() -> None:
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count

    d, side, n = 28.66, 256, 64
    cells = max(1, int(side * side / (d * d * 4)))
    imgs = [synthetic_cells((side, side), n_cells=cells, diameter=d, seed=i) for i in range(n)]
    imgs = [s.image for s in imgs]
    [count(im, "nuclei-count").count for im in imgs[:4]]
    times = alternate(lambda: [count(im, "nuclei-count").count for im in imgs], 6, use)
    mpx = n * side * side / 1e6
    for k, v in times.items():
        print(
            f"small {k}: best {1000 * min(v) / n:.2f} ms/call ({mpx / min(v):.2f} Mpx/s), "
            f"median {1000 * statistics.median(v) / n:.2f} ms/call "
            f"({mpx / statistics.median(v):.2f} Mpx/s)"
        )
    print(f"ratio best {min(times['old']) / min(times['new']):.3f}")


def big() -> None:
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, segment

    d, size = 28.66, 2048
    img = synthetic_cells((size, size), n_cells=int(size * size / (d * d * 4)), diameter=d, seed=0)
    img = img.image
    count(img, "nuclei-count")
    for what, fn in (
        ("count", lambda: count(img, "nuclei-count")),
        ("segment", lambda: segment(img)),
    ):
        times = alternate(fn, 6, use)
        for k, v in times.items():
            print(f"{what} {k}: best {min(v):.3f} s median {statistics.median(v):.3f} s")
        print(f"{what} ratio best {min(times['old']) / min(times['new']):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    {"equal": equal, "small": small, "big": big}[sys.argv[1]]()
