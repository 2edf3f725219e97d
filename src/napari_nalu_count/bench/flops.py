"""Parameters and FLOPs per pixel of every architecture x arithmetic unit type.

Each network is built from its default config (widths optionally scaled by ``--width-factor``)
and run once in eval mode on a ``1 x in_channels x SIZE x SIZE`` input under
``torch.utils.flop_counter.FlopCounterMode``. Convention: FLOPs = 2 x multiply-accumulates of
convolutions, transposed convolutions and matrix products (what FlopCounterMode counts); batch
norm, activations, pooling, interpolation and the NALU's elementwise exp/log/gates are not
counted. The NMU's core is elementwise (``prod_i (w x_i + 1 - w)``), which FlopCounterMode does
not see, so 3 FLOPs per factor (``in x out`` factors per pixel) are added analytically. FLOPs per
pixel = total / SIZE**2. Parameters = trainable parameters (buffers excluded).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..nn import ARCHITECTURES, UNIT_KINDS, build_model, default_config
from ..nn.arithmetic import NMU, PerPixel


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=int, default=256, help="side of the square input in pixels (256)"
    )
    parser.add_argument(
        "--width-factor",
        type=float,
        default=1.0,
        help="multiply every default width by this factor (rounded, at least 1); default 1",
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=ARCHITECTURES,
        help="only this architecture (repeatable; default: all)",
    )


def _hook_nmu(net: torch.nn.Module, counts: list[int]) -> list:
    """Forward hooks adding the analytic NMU FLOPs (3 per factor) to ``counts[0]``."""

    def hook(module: PerPixel, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        n, _, h, w = output.shape
        counts[0] += 3 * n * h * w * module.unit.in_features * module.unit.out_features

    return [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, PerPixel) and isinstance(m.unit, NMU)
    ]


def measure(
    architecture: str, unit: str | None, size: int = 256, width_factor: float = 1.0
) -> dict:
    """Parameters and FLOPs of one configuration on a ``size x size`` input (dict of figures)."""
    cfg = default_config(architecture)
    cfg["unit"] = unit
    cfg["widths"] = [max(1, round(w * width_factor)) for w in cfg["widths"]]
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    params = sum(p.numel() for p in net.parameters())
    # shapes only: the meta device runs no arithmetic, so the default widths cost nothing
    net = net.to("meta")
    x = torch.zeros(1, cfg["in_channels"], size, size, device="meta")
    nmu = [0]
    hooks = _hook_nmu(net, nmu)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    for h in hooks:
        h.remove()
    flops = int(counter.get_total_flops()) + nmu[0]
    return {
        "architecture": architecture,
        "unit": unit or "none",
        "widths": cfg["widths"],
        "params": params,
        "gflops": flops / 1e9,
        "flops_per_pixel": flops / (size * size),
    }


def run(args: argparse.Namespace) -> int:
    size = int(args.size)
    if size < 1 or args.width_factor <= 0:
        print("error: --size must be >= 1 and --width-factor > 0", file=sys.stderr)
        return 2
    archs = args.arch or list(ARCHITECTURES)
    rows = []
    t0 = time.perf_counter()
    for arch in archs:
        base = None
        for unit in (None, *UNIT_KINDS):
            row = measure(arch, unit, size, args.width_factor)
            base = base or row["flops_per_pixel"]
            row["flops_vs_none"] = row["flops_per_pixel"] / base
            rows.append(row)
    elapsed = time.perf_counter() - t0

    header = (
        f"{'architecture':<12} {'unit':<18} {'params':>10} "
        f"{'GFLOP/img':>10} {'kFLOP/px':>9} {'vs none':>8}"
    )
    print(f"FLOPs on a {size}x{size} input (2 x MACs of conv/matmul; NMU products added)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['architecture']:<12} {r['unit']:<18} {r['params']:>10,} "
            f"{r['gflops']:>10.2f} {r['flops_per_pixel'] / 1e3:>9.1f} {r['flops_vs_none']:>7.2f}x"
        )
    if args.json:
        report = {
            "benchmark": "flops",
            "command": "nalu-count " + " ".join(sys.argv[1:]) if sys.argv else "",
            "input_size": [size, size],
            "width_factor": args.width_factor,
            "convention": (
                "FLOPs = 2 x multiply-accumulates of conv/conv-transpose/matmul "
                "(torch.utils.flop_counter.FlopCounterMode) + 3 FLOPs per NMU factor; "
                "BN, activations, pooling, interpolation, NALU exp/log/gates not counted"
            ),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "elapsed_s": round(elapsed, 2),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
