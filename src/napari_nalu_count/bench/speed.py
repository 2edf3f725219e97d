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
import json
import os
import platform
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch


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


def _network_only(net: torch.nn.Module, tile: int, device: torch.device, n: int = 2) -> float:
    """Seconds per pixel of the bare forward pass on ``tile x tile`` inputs (no tiling)."""
    x = torch.randn(1, 1, tile, tile, device=device)
    with torch.inference_mode():
        net(x)
        t0 = time.perf_counter()
        for _ in range(n):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (n * tile * tile)


def _blob_log_count(image: np.ndarray, diameter: float) -> int:
    from skimage.feature import blob_log

    from napari_nalu_count.data.normalize import percentile_normalize

    norm = np.clip(percentile_normalize(image), 0, 1)
    s = diameter / (2 * np.sqrt(2))
    blobs = blob_log(norm, min_sigma=0.6 * s, max_sigma=1.5 * s, num_sigma=5, threshold=0.05)
    return len(blobs)


def run(args: argparse.Namespace) -> int:
    from napari_nalu_count.data.synthetic import synthetic_cells
    from napari_nalu_count.infer import count, engine, segment
    from napari_nalu_count.infer.device import auto_tile_size, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = resolve_device(args.device)
    size = int(args.size)
    counter, count_source = _model(args.count_model, "count", device)
    tile = auto_tile_size(device, stride=max(int(getattr(counter.net, "stride", 1) or 1), 8))
    diameter = float(args.diameter)
    n_cells = int(size * size / (diameter * diameter * 4))
    image = synthetic_cells((size, size), n_cells=n_cells, diameter=diameter, seed=0).image
    mpx = size * size / 1e6

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "auto_tile_size": tile,
    }
    gflops = matmul_gflops(device)
    count(image[:256, :256], counter, device=str(device))  # warm up (allocator, BN folding)
    t_count = _best(lambda: count(image, counter, device=str(device)), args.repeats)
    res = count(image, counter, device=str(device))
    grid = _grid_scale(counter, res)
    if res.diameter_source != "model" or grid != 1.0:
        count_source += (
            f" (nuclei {res.diameter:.1f} px, {res.diameter_source}; grid x{grid:.3g})"
            if res.diameter
            else f" (grid x{grid:.3g})"
        )
    size_estimate = None
    if res.diameter_source == "estimated":
        # the same count with the estimated diameter given: the difference is the estimate
        t_given = _best(
            lambda: count(image, counter, device=str(device), diameter=res.diameter),
            args.repeats,
        )
        size_estimate = {
            "diameter_px": res.diameter,
            "true_diameter_px": diameter,
            "seconds": t_count - t_given,
            "share_of_count": (t_count - t_given) / t_count,
        }
    # FLOPs per pixel of the *image*: a model run on a grid resampled by s sees s**2 the pixels
    fpp_count = flops_per_pixel(counter.net) * grid**2
    roof_count = gflops * 1e9 / fpp_count / 1e6  # Mpx/s if every FLOP ran at matmul speed
    net_s_per_px = _network_only(engine.prepare_net(counter, device), tile, device)
    net_s_per_px *= grid**2  # per image pixel

    t0 = time.perf_counter()
    n_blob = _blob_log_count(image, diameter)
    t_blob = time.perf_counter() - t0

    rows: list[dict[str, Any]] = [
        {
            "what": "count (end to end)",
            "model": count_source,
            "seconds": t_count,
            "mpx_per_s": mpx / t_count,
            "flops_per_px": fpp_count,
            "roofline_mpx_per_s": roof_count,
            "roofline_fraction": (mpx / t_count) / roof_count,
            "result": float(res.count),
        },
        {
            "what": f"count network only ({tile} px tile)",
            "model": count_source,
            "seconds": net_s_per_px * size * size,
            "mpx_per_s": 1e-6 / net_s_per_px,
            "flops_per_px": fpp_count,
            "roofline_mpx_per_s": roof_count,
            "roofline_fraction": (1e-6 / net_s_per_px) / roof_count,
            "result": None,
        },
        {
            "what": "blob_log baseline",
            "model": "skimage.feature.blob_log, 5 sigmas",
            "seconds": t_blob,
            "mpx_per_s": mpx / t_blob,
            "flops_per_px": None,
            "roofline_mpx_per_s": None,
            "roofline_fraction": None,
            "result": n_blob,
        },
    ]
    compare = None
    if args.compare_model:
        other, other_source = _model(args.compare_model, "count", device)
        count(image[:256, :256], other, device=str(device))
        t_other = _best(lambda: count(image, other, device=str(device)), args.repeats)
        other_res = count(image, other, device=str(device))
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
                "model": other_source,
                "seconds": t_other,
                "mpx_per_s": mpx / t_other,
                "flops_per_px": None,
                "roofline_mpx_per_s": None,
                "roofline_fraction": None,
                "result": float(other_res.count),
            },
        )
    if not args.no_segment:
        seg, seg_source = _model(args.seg_model, "segment", device)
        segment(image[:256, :256], seg, device=str(device))
        t_seg = _best(lambda: segment(image, seg, device=str(device)), args.repeats)
        seg_res = segment(image, seg, device=str(device))
        seg_grid = _grid_scale(seg, seg_res)
        fpp_seg = flops_per_pixel(seg.net) * seg_grid**2
        roof_seg = gflops * 1e9 / fpp_seg / 1e6
        rows.insert(
            2,
            {
                "what": "segment (end to end)",
                "model": seg_source,
                "seconds": t_seg,
                "mpx_per_s": mpx / t_seg,
                "flops_per_px": fpp_seg,
                "roofline_mpx_per_s": roof_seg,
                "roofline_fraction": (mpx / t_seg) / roof_seg,
                "result": int(seg_res.count),
            },
        )

    variants: list[dict[str, Any]] = []
    if args.variants:
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

    _print(machine, gflops, size, rows, variants, count_source)
    ratio = rows[0]["mpx_per_s"] / rows[-1]["mpx_per_s"]
    print(f"count / blob_log speed ratio: {ratio:.2f}")
    if size_estimate:
        print(
            f"size estimate: {size_estimate['diameter_px']:.1f} px (true {diameter:g}), "
            f"{size_estimate['seconds']:.3f} s = {100 * size_estimate['share_of_count']:.1f} % "
            "of the count time"
        )
    if compare:
        print(f"count speed vs {compare['model']}: {compare['speed_ratio_new_over_compared']:.2f}x")
    print(
        f"targets: count >= 1 Mpx/s: {'met' if rows[0]['mpx_per_s'] >= 1 else 'NOT met'}; "
        f">= 40% of roofline: {'met' if rows[0]['roofline_fraction'] >= 0.4 else 'NOT met'}"
    )
    if getattr(args, "json", None):
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "benchmark": "speed",
                    "command": "nalu-count bench speed "
                    + " ".join(
                        f"--{k.replace('_', '-')} {v}"
                        for k, v in vars(args).items()
                        if k
                        in ("size", "device", "threads", "repeats", "diameter", "compare_model")
                        and v is not None
                    )
                    + (" --variants" if args.variants else "")
                    + (" --no-segment" if args.no_segment else ""),
                    "machine": machine,
                    "image": {"size": size, "n_cells": n_cells, "diameter": diameter, "seed": 0},
                    "size_estimate": size_estimate,
                    "compared_model": compare,
                    "matmul_gflops": gflops,
                    "rows": rows,
                    "variants": variants,
                    "count_over_blob_log": ratio,
                },
                fh,
                indent=2,
            )
    return 0


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
