"""Speed of ``count`` and ``segment`` against the FLOP roofline and a classical baseline.

In one run on one machine: megapixels per second of :func:`~napari_nalu_count.infer.count` and
:func:`~napari_nalu_count.infer.segment` on a synthetic ``SIZE x SIZE`` uint16 image (default
2048, seed 0), end to end (normalisation, tiling, network, peaks / watershed); the network's
FLOPs per pixel (``torch.utils.flop_counter``, FLOPs = 2 x multiply-accumulates, the convention
of ``nalu-count bench flops``) divided into the machine's measured float32 matmul GFLOP/s gives
the roofline in Mpx/s and the fraction achieved; scikit-image ``blob_log`` counting on the same
image is the classical baseline. ``--variants`` also times, one at a time on the counting model
(1024 px crop) and against the baseline of the same run: the CPU thread count (1 vs 2), BN
folding, channels_last, the tile size (the baseline uses the engine's automatic tile size),
the batch size, ``torch.inference_mode`` against ``torch.no_grad`` / plain autograd, and
torch.compile. A counting model whose card has ``input_scale`` (e.g. 0.5: the network sees the
image at half resolution) costs ``input_scale**2`` times its FLOPs per image pixel.

Models: the bundled ``nuclei-count``/``nuclei-seg`` (or ``--count-model``/``--seg-model``);
when absent, the architectures' default configs with untrained weights are timed instead (speed
does not depend on the weights) and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from napari_nalu_count.bench._memory_child import CONFIGURATIONS

#: the engine as it was before issue 17's speed work, as far as switches reach: PyTorch for the
#: networks, full-size tiles, every plane normalised by each step that needs it (segment: three
#: times), the seed counter's density resampled to the image, percentiles by partitioning,
#: density maps upsampled by scipy; planes of any size segmented whole
BASELINE_OPTIONS: dict[str, Any] = {
    "backend": "torch",
    "balanced_tiles": False,
    "share_work": False,
    "segment_blocks": False,
    "inplace_relu": False,
    "_histogram_percentiles": False,
    "_fast_upsampling": False,
    "_fast_downsampling": False,
    "fold_residuals": False,
    "split_decoders": False,
    "fuse_heads": False,
}


@contextlib.contextmanager
def engine_config(options: dict[str, Any]):
    """Run the engine with ``options`` (engine ``OPTIONS`` keys, plus
    ``_histogram_percentiles``, ``_fast_upsampling``, ``_fast_downsampling``) and restore
    everything afterwards."""
    from napari_nalu_count.data import normalize
    from napari_nalu_count.infer import engine, scale

    saved = dict(engine.OPTIONS)
    saved_hist = normalize.HISTOGRAM_MIN_SIZE
    saved_up = scale.FAST_UPSAMPLING
    saved_down = scale.FAST_DOWNSAMPLING
    try:
        for k, v in options.items():
            if k == "_histogram_percentiles":
                normalize.HISTOGRAM_MIN_SIZE = saved_hist if v else 1 << 62
            elif k == "_fast_upsampling":
                scale.FAST_UPSAMPLING = bool(v)
            elif k == "_fast_downsampling":
                scale.FAST_DOWNSAMPLING = bool(v)
            else:
                engine.OPTIONS[k] = v
        yield
    finally:
        engine.OPTIONS.clear()
        engine.OPTIONS.update(saved)
        normalize.HISTOGRAM_MIN_SIZE = saved_hist
        scale.FAST_UPSAMPLING = saved_up
        scale.FAST_DOWNSAMPLING = saved_down


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=2048, help="image edge in pixels (2048)")
    parser.add_argument("--count-model", default="nuclei-count", metavar="NAME|PATH")
    parser.add_argument("--seg-model", default="nuclei-seg", metavar="NAME|PATH")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per figure (best)")
    parser.add_argument(
        "--variants", action="store_true", help="also time each engine switch separately"
    )
    parser.add_argument("--no-segment", action="store_true", help="skip the segmentation model")
    parser.add_argument(
        "--diameter",
        type=float,
        default=28.66,
        help="nucleus diameter of the synthetic image in pixels (28.66: BBBC039's)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time the previous engine (PyTorch, full-size tiles, no shared work) in the "
        "same run, interleaved, and report the speed-ups",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also time the engine with each speed switch turned back, one at a time",
    )
    parser.add_argument(
        "--small",
        type=int,
        default=0,
        metavar="N",
        help="also count N small images one call each (issue 17: 64), diameter estimated and given",
    )
    parser.add_argument("--small-size", type=int, default=256, help="their edge (256)")
    parser.add_argument(
        "--memory",
        type=int,
        default=None,
        metavar="SIZE",
        help="also measure the peak RSS of count and segment on a SIZE x SIZE uint16 image "
        "(e.g. 8192), each in its own process (Linux)",
    )
    parser.add_argument(
        "--allocator",
        action="store_true",
        help="also compare the engine's glibc allocator tuning with glibc's defaults, in "
        "separate processes (REPEATS pairs per task at --size; Linux)",
    )
    parser.add_argument(
        "--compare-model",
        metavar="NAME|PATH",
        default=None,
        help="also time this counting model end to end on the same image (e.g. a previous "
        "bundled model) and report the speed ratio",
    )


def _model(spec: str, task: str, device: torch.device) -> tuple[Any, str]:
    """A loaded model, or a stand-in from the default config when the bundled one is absent."""
    from napari_nalu_count.errors import ModelFileError
    from napari_nalu_count.models import load_model

    try:
        return load_model(spec, device=str(device)), spec
    except ModelFileError:
        from napari_nalu_count.nn.registry import build_model, default_config

        arch = "fcrn_a" if task == "count" else "se_unet"
        torch.manual_seed(0)
        net = build_model(default_config(arch)).eval()
        card = {
            "task": task,
            "config": net.config,
            "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
            "density_scale": 100.0 if task == "count" else None,
            "diameter": None,
        }
        stand_in = SimpleNamespace(
            net=net, card=card, config=net.config, task=task, name=f"default {arch}"
        )
        return stand_in, f"default_config({arch!r}), untrained ({spec!r} not installed)"


def _grid_scale(counter: Any, res: Any) -> float:
    """Resampling factor the engine applied to the image (``card diameter / diameter`` or the
    card's ``input_scale``)."""
    card = counter.card
    if res.diameter and card.get("diameter"):
        return float(card["diameter"]) / float(res.diameter)
    return float(card.get("input_scale") or 1.0)


def flops_per_pixel(net: torch.nn.Module, in_channels: int = 1, size: int = 256) -> float:
    """Network FLOPs per input pixel (2 x MACs of conv/matmul), counted on the meta device."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(net).to("meta").eval()
    x = torch.zeros(1, in_channels, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(x)
    return counter.get_total_flops() / (size * size)


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 1.5) -> float:
    """Best measured float32 matmul throughput (GFLOP/s) on ``device``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < t_end or best == float("inf"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _forward_with(grad_mode: str):
    """A replacement for ``engine._forward_fn`` running under another autograd mode."""
    import contextlib

    def make(net, task, density_scale):
        inv = 1.0 / float(density_scale)
        ctx = torch.no_grad if grad_mode == "no_grad" else contextlib.nullcontext

        def forward(x):
            with ctx():
                y = net(x)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                y = y[:, :1] * inv if task == "count" else torch.softmax(y.float(), dim=1)
                return y.detach()

        return forward

    return make


def _network_only(net: torch.nn.Module, tile: int, device: torch.device, n: int = 5) -> float:
    """Seconds per pixel of the bare forward pass on ``tile x tile`` inputs (no tiling): the
    best of ``n`` timed calls after one warm-up, like every end-to-end figure of this
    benchmark (a mean let one call slowed by the machine halve the roofline fraction)."""
    x = torch.randn(1, 1, tile, tile, device=device)
    best = float("inf")
    with torch.inference_mode():
        net(x)
        for _ in range(n):
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best / (tile * tile)


def _blob_log_count(image: np.ndarray, diameter: float) -> int:
    from skimage.feature import blob_log

    from napari_nalu_count.data.normalize import percentile_normalize

    norm = np.clip(percentile_normalize(image), 0, 1)
    s = diameter / (2 * np.sqrt(2))
    blobs = blob_log(norm, min_sigma=0.6 * s, max_sigma=1.5 * s, num_sigma=5, threshold=0.05)
    return len(blobs)


def _timed(
    fns: dict[str, Any], configs: dict[str, dict[str, Any]], repeats: int
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, Any]]:
    """Best seconds per configuration of ``fns[name]()``, the configurations interleaved
    (``repeats`` rounds of one call each), after one untimed warm-up call per configuration;
    also every time and the last result per configuration."""
    times: dict[str, list[float]] = {k: [] for k in configs}
    results: dict[str, Any] = {}
    for name, cfg in configs.items():
        with engine_config(cfg):
            results[name] = fns[name]()
    for _ in range(max(1, repeats)):
        for name, cfg in configs.items():
            with engine_config(cfg):
                t0 = time.perf_counter()
                results[name] = fns[name]()
                times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}, times, results


#: one engine switch changed at a time (``--ablation``): turned back to its previous setting,
#: or, for the opt-in ONNX Runtime backend, turned on (PyTorch when it is not installed)
ABLATIONS: dict[str, dict[str, Any]] = {
    "ONNX Runtime (opt-in) instead of PyTorch": {"backend": "auto"},
    "full-size tiles (balanced_tiles off)": {"balanced_tiles": False},
    "no shared work (share_work off, percentiles by partition)": {
        "share_work": False,
        "_histogram_percentiles": False,
    },
    "density upsampled by scipy (fast upsampling off)": {"_fast_upsampling": False},
    "input shrunk by SciPy filter + zoom (fast downsampling off)": {"_fast_downsampling": False},
    "NAU residual branches not folded (fold_residuals off)": {"fold_residuals": False},
    "decoders convolve the concatenation (split_decoders off)": {"split_decoders": False},
    "density and size heads as two convolutions (fuse_heads off)": {"fuse_heads": False},
    "ReLU not in place (inplace_relu off)": {"inplace_relu": False},
}
# the allocator tuning (engine option malloc_tuning) is process-wide and leaves the heap of the
# calls before it behind: it is compared in separate processes instead (--allocator)


def _child_row(task: str, conf: str, args: list[str]) -> dict:
    """One ``_memory_child`` process: its JSON line (printed as it arrives), or an error row."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "napari_nalu_count.bench._memory_child", task, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"task": task, "configuration": conf, "error": out.stderr[-500:]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _memory_rows(size: int, threads: int, baseline: bool, segment: bool) -> list[dict]:
    """Peak RSS of count / segment on a SIZE x SIZE uint16 image, one child process each."""
    rows = []
    tasks = ["count"] + (["segment"] if segment else [])
    for task in tasks:
        for conf in ["current"] + (["baseline"] if baseline else []):
            extra = ["baseline"] if conf == "baseline" else []
            rows.append(_child_row(task, conf, [str(size), str(threads)] + extra))
    return rows


#: the child configurations of --allocator (``_memory_child`` CONF) and the summary key of the
#: current engine's speed-up over each
ALLOCATOR_CONFS = {"current": None, "untuned": "speedup", "mmap": "speedup_no_mmap"}


def _allocator_rows(size: int, threads: int, rounds: int, segment: bool) -> dict:
    """The engine with its allocator tuning against glibc's defaults and against the tuning with
    ``mmap`` still allowed for large blocks (``--allocator``): for each task, ``rounds`` rounds of
    child processes (order rotating), each the best of 2 steady calls on a SIZE x SIZE uint16
    image; the median of the children per configuration."""
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    order = list(ALLOCATOR_CONFS)
    for task in ["count"] + (["segment"] if segment else []):
        for r in range(max(1, rounds)):
            k = r % len(order)
            for conf in order[k:] + order[:k]:
                rows.append(_child_row(task, conf, [str(size), str(threads), conf, "2"]))
        per = {}
        for conf in ALLOCATOR_CONFS:
            name = CONFIGURATIONS[conf]
            ok = [x for x in rows if x.get("task") == task and x.get("configuration") == name]
            if ok:
                per[name] = {
                    "seconds_median": float(np.median([x["seconds"] for x in ok])),
                    "minor_faults_median": float(np.median([min(x["minor_faults"]) for x in ok])),
                    "peak_rss_mib_max": max(x["peak_rss_mib"] for x in ok),
                    "children": len(ok),
                }
        cur = per.get(CONFIGURATIONS["current"])
        if cur is not None:
            for conf, key in ALLOCATOR_CONFS.items():
                if key and CONFIGURATIONS[conf] in per:
                    other = per[CONFIGURATIONS[conf]]
                    per[key] = other["seconds_median"] / cur["seconds_median"]
        summary[task] = per
    return {"size": size, "rounds": rounds, "rows": rows, "summary": summary}


def run(args: argparse.Namespace) -> int:
    from napari_nalu_count.infer import backend as _backend
    from napari_nalu_count.infer import count, engine, segment
    from napari_nalu_count.infer.device import auto_tile_size, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = resolve_device(args.device)
    size = int(args.size)
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    counter, count_source = _model(args.count_model, "count", device)
    tile = auto_tile_size(device, stride=max(int(getattr(counter.net, "stride", 1) or 1), 8))
    diameter = float(args.diameter)
    n_cells = _n_cells(size, diameter)
    image = speed_image(size, diameter)
    mpx = size * size / 1e6
    with_base = bool(getattr(args, "baseline", False))
    configs: dict[str, dict[str, Any]] = {"current": {}}
    if with_base:
        configs["previous"] = dict(BASELINE_OPTIONS)
    if getattr(args, "ablation", False):
        configs.update(ABLATIONS)

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "backend": _backend.resolve(engine.OPTIONS["backend"], device),
        "device": str(device),
        "load_average": load_start,
        "auto_tile_size": tile,
    }
    gflops = matmul_gflops(device)
    dev = str(device)
    t_cfg, all_times, res_cfg = _timed(
        {k: (lambda: count(image, counter, device=dev)) for k in configs}, configs, args.repeats
    )
    t_count = t_cfg["current"]
    res = res_cfg["current"]
    grid = _grid_scale(counter, res)
    if res.diameter_source != "model" or grid != 1.0:
        count_source += (
            f" (nuclei {res.diameter:.1f} px, {res.diameter_source}; grid x{grid:.3g})"
            if res.diameter
            else f" (grid x{grid:.3g})"
        )
    size_estimate = None
    if res.diameter_source == "estimated":
        # two measures: the engine's own clock around the estimate (regressor plus the size
        # head's check passes not reused for the count; median of the repeats) and the
        # difference to the same count with the estimated diameter given (noisier: two
        # best-of-N end-to-end times)
        t_given = _best(
            lambda: count(image, counter, device=dev, diameter=res.diameter), args.repeats
        )
        engine_s = [
            float(count(image, counter, device=dev).size_estimate["seconds"])
            for _ in range(max(3, args.repeats))
        ]
        est_s = float(np.median(engine_s))
        size_estimate = {
            "diameter_px": res.diameter,
            "true_diameter_px": diameter,
            "seconds": est_s,
            "share_of_count": est_s / t_count,
            "engine_seconds": engine_s,
            "detail": res.size_estimate,
            "difference_seconds": t_count - t_given,
            "difference_share_of_count": (t_count - t_given) / t_count,
        }
    # FLOPs per pixel of the *image*: a model run on a grid resampled by s sees s**2 the pixels
    fpp_count = flops_per_pixel(counter.net) * grid**2
    roof_count = gflops * 1e9 / fpp_count / 1e6  # Mpx/s if every FLOP ran at matmul speed
    # the bare network on the plane it really runs on (the model grid, at most one tile)
    side = min(tile, max(8, int(round(size * grid)) // 8 * 8))
    net_rows = {}
    for name in ["current"] + (["previous"] if with_base else []):
        with engine_config(configs[name]):
            net_s = _network_only(engine.prepare_net(counter, device), side, device)
        net_rows[name] = net_s * grid**2  # per image pixel

    t0 = time.perf_counter()
    n_blob = _blob_log_count(image, diameter)
    t_blob = time.perf_counter() - t0

    def count_row(what: str, name: str, t: float, result: Any) -> dict[str, Any]:
        return {
            "what": what,
            "configuration": name,
            "model": count_source,
            "seconds": t,
            "mpx_per_s": mpx / t,
            "flops_per_px": fpp_count,
            "roofline_mpx_per_s": roof_count,
            "roofline_fraction": (mpx / t) / roof_count,
            "result": result,
            "times": all_times.get(name),
        }

    rows: list[dict[str, Any]] = [
        count_row("count (end to end)", "current", t_count, float(res.count))
    ]
    for name, t in t_cfg.items():
        if name != "current":
            rows.append(count_row(f"count, {name}", name, t, float(res_cfg[name].count)))
    for name, net_s in net_rows.items():
        rows.append(
            {
                "what": f"count network only, {name} ({side} px plane)",
                "configuration": name,
                "model": count_source,
                "seconds": net_s * size * size,
                "mpx_per_s": 1e-6 / net_s,
                "flops_per_px": fpp_count,
                "roofline_mpx_per_s": roof_count,
                "roofline_fraction": (1e-6 / net_s) / roof_count,
                "result": None,
            }
        )
    rows.append(
        {
            "what": "blob_log baseline",
            "configuration": None,
            "model": "skimage.feature.blob_log, 5 sigmas",
            "seconds": t_blob,
            "mpx_per_s": mpx / t_blob,
            "flops_per_px": None,
            "roofline_mpx_per_s": None,
            "roofline_fraction": None,
            "result": n_blob,
        }
    )
    compare = None
    if args.compare_model:
        other, other_source = _model(args.compare_model, "count", device)
        count(image[:256, :256], other, device=dev)
        t_other = _best(lambda: count(image, other, device=dev), args.repeats)
        other_res = count(image, other, device=dev)
        compare = {
            "model": other_source,
            "seconds": t_other,
            "mpx_per_s": mpx / t_other,
            "result": float(other_res.count),
            "speed_ratio_new_over_compared": t_other / t_count,
        }
        rows.insert(
            1,
            {
                "what": "count (end to end), compared model",
                "configuration": "current",
                "model": other_source,
                "seconds": t_other,
                "mpx_per_s": mpx / t_other,
                "flops_per_px": None,
                "roofline_mpx_per_s": None,
                "roofline_fraction": None,
                "result": float(other_res.count),
            },
        )
    seg_agreement = None
    if not args.no_segment:
        seg, seg_source = _model(args.seg_model, "segment", device)
        seg_cfgs = dict(configs)
        t_seg, seg_times, seg_res = _timed(
            {k: (lambda: segment(image, seg, device=dev)) for k in seg_cfgs},
            seg_cfgs,
            args.repeats,
        )
        cur = seg_res["current"]
        seg_grid = _grid_scale(seg, cur)
        fpp_seg = flops_per_pixel(seg.net) * seg_grid**2
        seg_source += f" (grid x{seg_grid:.3g})"
        fpp_counter = flops_per_pixel(counter.net)

        def seed_fpp(name: str) -> float:
            # count-guided seeds: the counter once more, on its grid made finer by seed_grid
            if getattr(seg_res[name], "seeds", None) != "count":
                return 0.0
            sg = float(configs[name].get("seed_grid", engine.OPTIONS["seed_grid"]))
            return fpp_counter * (grid * sg) ** 2

        at = 1
        for name, t in t_seg.items():
            fpp_total = fpp_seg + seed_fpp(name)
            roof_total = gflops * 1e9 / fpp_total / 1e6
            rows.insert(
                at,
                {
                    "what": "segment (end to end)" if name == "current" else f"segment, {name}",
                    "configuration": name,
                    "model": seg_source,
                    "seconds": t,
                    "mpx_per_s": mpx / t,
                    "flops_per_px": fpp_total,
                    "flops_per_px_segmenter": fpp_seg,
                    "flops_per_px_seed_counter": fpp_total - fpp_seg,
                    "roofline_mpx_per_s": roof_total,
                    "roofline_fraction": (mpx / t) / roof_total,
                    "result": int(seg_res[name].count),
                    "times": seg_times[name],
                },
            )
            at += 1
        if "previous" in seg_res:
            prev = seg_res["previous"]
            seg_agreement = {
                "objects_current": int(cur.count),
                "objects_previous": int(prev.count),
                "pixels_with_other_label_state": float(
                    np.mean((cur.labels > 0) != (prev.labels > 0))
                ),
            }
    small = None
    if getattr(args, "small", 0):
        small_cfgs = {k: v for k, v in configs.items() if k in ("current", "previous")}
        small = _small_images(args, counter, dev, small_cfgs)
    alloc = None
    if getattr(args, "allocator", False):
        alloc = _allocator_rows(size, threads, args.repeats, not args.no_segment)
    memory = None
    if getattr(args, "memory", None):
        memory = _memory_rows(int(args.memory), threads, with_base, not args.no_segment)

    variants: list[dict[str, Any]] = []
    if args.variants:
        variants = _variants(args, image, counter, device, tile, threads)

    # the roofline from the better of two matmul measurements (start and end of the run): a
    # busy machine at one of them would otherwise inflate the fractions
    gflops_end = matmul_gflops(device)
    if gflops_end > gflops:
        scale = gflops / gflops_end
        for r in rows:
            if r.get("roofline_mpx_per_s"):
                r["roofline_mpx_per_s"] /= scale
                r["roofline_fraction"] *= scale
    gflops_measured = [gflops, gflops_end]
    gflops = max(gflops, gflops_end)
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _print(machine, gflops, size, rows, variants, count_source)
    blob = next(r for r in rows if r["what"] == "blob_log baseline")
    ratio = rows[0]["mpx_per_s"] / blob["mpx_per_s"]
    print(f"count / blob_log speed ratio: {ratio:.2f}")
    speedups = {}
    for task in ("count", "segment"):
        cur = next(
            (
                r
                for r in rows
                if r["what"].startswith(task)
                and r["configuration"] == "current"
                and "network" not in r["what"]
            ),
            None,
        )
        for r in rows:
            if (
                cur
                and r["what"].startswith(task)
                and "network" not in r["what"]
                and r["configuration"] not in (None, "current")
            ):
                speedups[f"{task}: current vs {r['configuration']}"] = r["seconds"] / cur["seconds"]
    if "previous" in net_rows:
        speedups["count network: current vs previous"] = net_rows["previous"] / net_rows["current"]
    for k, v in speedups.items():
        print(f"speed-up {k}: {v:.2f}x")
    if size_estimate:
        print(
            f"size estimate: {size_estimate['diameter_px']:.1f} px (true {diameter:g}), "
            f"{size_estimate['seconds']:.3f} s = {100 * size_estimate['share_of_count']:.1f} % "
            "of the count time (engine clock, median); by difference to the count with it given "
            f"{size_estimate['difference_seconds']:.3f} s = "
            f"{100 * size_estimate['difference_share_of_count']:.1f} %"
        )
    if compare:
        print(f"count speed vs {compare['model']}: {compare['speed_ratio_new_over_compared']:.2f}x")
    if small:
        for name, v in small["configurations"].items():
            print(
                f"{small['n']} images of {small['size']} px, one call each, {name}: "
                + ", ".join(f"{k} {v[k]['mpx_per_s']:.2f} Mpx/s" for k in ("estimated", "given"))
            )
    if memory:
        for m in memory:
            if "error" in m:
                print(f"memory {m['task']} ({m['configuration']}): failed")
            else:
                print(
                    f"memory {m['task']} {m['size']} px ({m['configuration']}): peak RSS "
                    f"{m['peak_rss_mib'] / 1024:.2f} GiB, {m['seconds']:.1f} s"
                )
    if alloc:
        for task, per in alloc["summary"].items():
            a = per.get(CONFIGURATIONS["current"])
            for conf, label in (("untuned", "glibc defaults"), ("mmap", "mmap allowed")):
                key = ALLOCATOR_CONFS[conf]
                if key in per:
                    b = per[CONFIGURATIONS[conf]]
                    print(
                        f"allocator {task} {size} px: tuned {a['seconds_median']:.3f} s "
                        f"({a['minor_faults_median']:.0f} faults, peak "
                        f"{a['peak_rss_mib_max']:.0f} MiB) vs {label} {b['seconds_median']:.3f} s "
                        f"({b['minor_faults_median']:.0f} faults, peak {b['peak_rss_mib_max']:.0f} "
                        f"MiB): {per[key]:.2f}x"
                    )
    net_frac = next(r for r in rows if r["what"].startswith("count network only, current"))
    targets = _targets(rows, net_frac, small, memory, size_estimate)
    for k, v in targets.items():
        print(f"target {k}: {v}")
    if seg_agreement:
        print(f"segment agreement with the previous engine: {seg_agreement}")
    print(f"load average at start {load_start}, at end {load_end}")
    if getattr(args, "json", None):
        flags = " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k
            in (
                "size",
                "device",
                "threads",
                "repeats",
                "diameter",
                "compare_model",
                "small",
                "small_size",
                "memory",
            )
            and v not in (None, 0)
        )
        switches = [
            f" --{k}"
            for k in ("variants", "no_segment", "baseline", "ablation", "allocator")
            if getattr(args, k, False)
        ]
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "benchmark": "speed",
                    "command": "nalu-count bench speed "
                    + flags
                    + "".join(s.replace("_", "-") for s in switches),
                    "machine": machine,
                    "load_average_start": load_start,
                    "load_average_end": load_end,
                    "image": {"size": size, "n_cells": n_cells, "diameter": diameter, "seed": 0},
                    "engine_options": {k: str(v) for k, v in engine.OPTIONS.items()},
                    "baseline_options": BASELINE_OPTIONS if with_base else None,
                    "size_estimate": size_estimate,
                    "compared_model": compare,
                    "matmul_gflops": gflops,
                    "matmul_gflops_start_end": gflops_measured,
                    "rows": rows,
                    "speedups": speedups,
                    "segment_agreement": seg_agreement,
                    "small_images": small,
                    "memory": memory,
                    "allocator": alloc,
                    "targets": targets,
                    "variants": variants,
                    "count_over_blob_log": ratio,
                },
                fh,
                indent=2,
            )
    return 0


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:
        return None


def _n_cells(side: int, diameter: float) -> int:
    """Nuclei on a ``side x side`` benchmark plane: one per ``(2 diameter)^2`` pixels."""
    return int(side * side / (diameter * diameter * 4))


def speed_image(size: int = 2048, diameter: float = 28.66) -> np.ndarray:
    """The benchmark's ``size x size`` uint16 synthetic image (seed 0): nuclei of ``diameter``
    px, :func:`_n_cells` of them."""
    from napari_nalu_count.data.synthetic import synthetic_cells

    n_cells = _n_cells(size, diameter)
    return synthetic_cells((size, size), n_cells=n_cells, diameter=diameter, seed=0).image


def small_images(n: int = 64, side: int = 256, diameter: float = 28.66) -> list[np.ndarray]:
    """The ``--small`` images: ``n`` synthetic ``side x side`` planes (seeds 0..n-1), at least
    one nucleus each, at the density of :func:`speed_image`."""
    from napari_nalu_count.data.synthetic import synthetic_cells

    cells = max(1, _n_cells(side, diameter))
    return [
        synthetic_cells((side, side), n_cells=cells, diameter=diameter, seed=i).image
        for i in range(n)
    ]


def _small_images(args: argparse.Namespace, counter: Any, dev: str, configs: dict) -> dict:
    """N images of S x S counted one call each, the diameter estimated and given."""
    from napari_nalu_count.infer import count

    n, side, d = int(args.small), int(args.small_size), float(args.diameter)
    imgs = small_images(n, side, d)
    mpx = n * side * side / 1e6
    out: dict[str, Any] = {"n": n, "size": side, "diameter": d, "configurations": {}}
    for mode, kw in (("estimated", {}), ("given", {"diameter": d})):

        def batch(kw=kw) -> list[float]:
            return [float(count(im, counter, device=dev, **kw).count) for im in imgs]

        best, times, results = _timed({k: batch for k in configs}, configs, min(2, args.repeats))
        for name in configs:
            out["configurations"].setdefault(name, {})[mode] = {
                "seconds": best[name],
                "ms_per_call": 1000 * best[name] / n,
                "mpx_per_s": mpx / best[name],
                "times": times[name],
                "total_count": float(np.sum(results[name])),
            }
    return out


def _targets(
    rows: list[dict],
    net: dict,
    small: dict | None,
    memory: list | None,
    size_estimate: dict | None = None,
) -> dict:
    """Issue 17's targets (and issue 12's size-estimate share), met or not, from this run."""
    out = {}
    if size_estimate:
        share = size_estimate["share_of_count"]
        out["size estimate <= 15 % of the count time"] = (
            f"{'met' if share <= 0.15 else 'NOT met'} ({100 * share:.1f} %)"
        )
    count_row = rows[0]
    out["count >= 4 Mpx/s end to end"] = (
        f"{'met' if count_row['mpx_per_s'] >= 4 else 'NOT met'} ({count_row['mpx_per_s']:.2f})"
    )
    frac = net["roofline_fraction"]
    out["count network >= 50 % of the matmul roofline"] = (
        f"{'met' if frac >= 0.5 else 'NOT met'} ({100 * frac:.1f} %)"
    )
    seg = next((r for r in rows if r["what"] == "segment (end to end)"), None)
    if seg:
        out["segment >= 2 Mpx/s end to end"] = (
            f"{'met' if seg['mpx_per_s'] >= 2 else 'NOT met'} ({seg['mpx_per_s']:.2f})"
        )
    if small:
        cur = small["configurations"]["current"]
        for mode in ("estimated", "given"):
            v = cur[mode]["mpx_per_s"]
            out[f"{small['n']} small images >= 3 Mpx/s (diameter {mode})"] = (
                f"{'met' if v >= 3 else 'NOT met'} ({v:.2f})"
            )
    for m in memory or []:
        if m.get("configuration") == "current engine":
            gib = m["peak_rss_mib"] / 1024
            out[f"{m['task']} {m['size']} px peak RSS < 2 GB"] = (
                f"{'met' if m['peak_rss_mib'] * 2**20 < 2e9 else 'NOT met'} ({gib:.2f} GiB)"
            )
    return out


def _variants(args, image, counter, device, tile, threads) -> list[dict[str, Any]]:
    """The one-switch-at-a-time variants on a 1024 px crop (``--variants``)."""
    from napari_nalu_count.infer import count, engine

    size = image.shape[0]
    variants: list[dict[str, Any]] = []
    saved = dict(engine.OPTIONS)
    crop = image[: min(size, 1024), : min(size, 1024)]
    cmpx = crop.size / 1e6
    other = 2 if threads == 1 else 1
    # (label, engine options, tile size, threads, autograd mode)
    trials: list[tuple[str, dict, int | None, int, str]] = [
        (
            f"baseline: engine defaults, tile auto ({tile}), {threads} thr, inference_mode",
            {},
            None,
            threads,
            "inference_mode",
        ),
        (f"{other} thread(s)", {}, None, other, "inference_mode"),
        ("no BN folding", {"fuse_bn": False}, None, threads, "inference_mode"),
        ("NCHW (channels_last off)", {"channels_last": False}, None, threads, "inference_mode"),
        ("torch.no_grad instead of inference_mode", {}, None, threads, "no_grad"),
        ("autograd on (no grad context)", {}, None, threads, "grad"),
        ("tile 256", {}, 256, threads, "inference_mode"),
        ("tile 512", {}, 512, threads, "inference_mode"),
        ("batch 1", {"batch_size": 1}, None, threads, "inference_mode"),
        ("torch.compile", {"compile": True}, None, threads, "inference_mode"),
        ("baseline again (last: order / drift check)", {}, None, threads, "inference_mode"),
    ]
    saved_fwd = engine._forward_fn
    try:
        for label, opts, tile_v, n_thr, grad_mode in trials:
            engine.OPTIONS.update(saved)
            engine.OPTIONS.update(opts)
            torch.set_num_threads(n_thr)
            if grad_mode != "inference_mode":
                engine._forward_fn = _forward_with(grad_mode)
            try:
                # warm up on the whole crop: allocator, BN folding, compilation
                count(crop, counter, device=str(device), tile_size=tile_v)
                t = _best(
                    lambda t_=tile_v: count(crop, counter, device=str(device), tile_size=t_),
                    args.repeats,
                )
                variants.append({"variant": label, "seconds": t, "mpx_per_s": cmpx / t})
            except Exception as exc:  # e.g. torch.compile without a compiler
                variants.append({"variant": label, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                engine._forward_fn = saved_fwd
    finally:
        engine.OPTIONS.clear()
        engine.OPTIONS.update(saved)
        torch.set_num_threads(threads)
    base = variants[0].get("seconds")
    for v in variants:
        if base and "seconds" in v:
            v["speed_vs_baseline"] = base / v["seconds"]
    return variants


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print(machine, gflops, size, rows, variants, source) -> None:
    print(
        f"machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch "
        f"{machine['torch']} ({machine['torch_threads']} threads), device {machine['device']}"
    )
    print(f"image: {size} x {size} uint16 synthetic nuclei; matmul: {gflops:.1f} GFLOP/s")
    print(
        f"{'what':34s} {'s':>8s} {'Mpx/s':>8s} {'kFLOP/px':>9s} {'roof Mpx/s':>10s} {'roof %':>7s}"
    )
    for r in rows:
        fpp = None if r["flops_per_px"] is None else r["flops_per_px"] / 1e3
        frac = None if r["roofline_fraction"] is None else 100 * r["roofline_fraction"]
        print(
            f"{r['what']:34s} {r['seconds']:8.2f} {r['mpx_per_s']:8.3f} {_fmt(fpp, '9.1f')} "
            f"{_fmt(r['roofline_mpx_per_s'], '10.3f')} {_fmt(frac, '7.1f')}"
        )
    print("models: " + "; ".join(sorted({str(r["model"]) for r in rows})))
    if variants:
        print(f"\n{'variant (1024 px crop, count)':64s} {'s':>8s} {'Mpx/s':>8s} {'x base':>7s}")
        for v in variants:
            if "error" in v:
                print(f"{v['variant']:64s} failed: {v['error'][:60]}")
            else:
                print(
                    f"{v['variant']:64s} {v['seconds']:8.2f} {v['mpx_per_s']:8.3f} "
                    f"{_fmt(v.get('speed_vs_baseline'), '7.2f')}"
                )
