"""Round 9 experiments behind speed.md (one process, 2 threads, the 2048² speed image).

    python benchmarks/notes/r9_experiments.py profile        # torch profiler of one segment call
    python benchmarks/notes/r9_experiments.py fused [--prepack]  # oneDNN conv + activation
    python benchmarks/notes/r9_experiments.py se-inplace     # SE multiply in place, A/B
    python benchmarks/notes/r9_experiments.py children       # bench speed --allocator's children
    python benchmarks/notes/r9_experiments.py multiply [--tuned]  # x * gates vs in place

``fused`` times segment and count (best of 3) with the engine's cached inference copies, then
replaces every ``Conv2d -> Identity (folded BN) -> ReLU/LeakyReLU`` of those copies by
``torch.ops.mkldnn._convolution_pointwise`` with the activation as a post-op (weights prepacked
per input shape with ``--prepack``), times again and checks labels and counts. ``se-inplace``
alternates the SE blocks' ``x * gates`` with ``x.mul_(gates)``, 6 segment calls each (medians),
labels checked equal. ``children`` runs ``bench.speed._allocator_rows(2048, 2, 3, True)``
(the same children as ``bench speed --allocator``) and prints its summary. ``multiply`` times
an SE gate multiply of a 16 x 752 x 752 channels_last tensor (34.5 MiB) out of place and in place
(median of 20), with glibc's defaults or, with ``--tuned``, the engine's allocator tuning.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

D = 28.66


def image() -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    n = int(2048 * 2048 / (D * D * 4))
    return synthetic_cells((2048, 2048), n_cells=n, diameter=D, seed=0).image


def profile() -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from napari_nalu_count.infer import segment

    img = image()
    segment(img, diameter=D)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        segment(img, diameter=D)
    table = prof.key_averages(group_by_input_shape=True)
    print(table.table(sort_by="self_cpu_time_total", row_limit=40, max_shapes_column_width=70))


class FusedConvAct(nn.Module):
    """A convolution with its ReLU / LeakyReLU as a oneDNN post-op (channels_last in and out)."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, prepack: bool) -> None:
        super().__init__()
        self.w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        self.b = None if conv.bias is None else conv.bias.detach()
        self.geom = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if isinstance(act, nn.ReLU):
            self.attr, self.scalars = "relu", [None]
        else:
            self.attr, self.scalars = "leaky_relu", [act.negative_slope]
        self.prepack = prepack
        self.packed: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, stride, dil, groups = self.geom
        w = self.w
        if self.prepack:
            w = self.packed.get(tuple(x.shape))
            if w is None:
                w = torch.ops.mkldnn._reorder_convolution_weight(
                    self.w, pad, stride, dil, groups, list(x.shape)
                )
                self.packed[tuple(x.shape)] = w
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, self.b, pad, stride, dil, groups, self.attr, self.scalars, ""
        )


def _fuse(net: nn.Module, prepack: bool) -> int:
    n = 0
    for m in list(net.modules()):
        if not isinstance(m, nn.Sequential):
            continue
        keys = list(m._modules)
        for i in range(len(keys) - 2):
            a, b, c = (m._modules[k] for k in keys[i : i + 3])
            if (
                isinstance(a, nn.Conv2d)
                and isinstance(b, nn.Identity)
                and isinstance(c, (nn.ReLU, nn.LeakyReLU))
            ):
                m._modules[keys[i]] = FusedConvAct(a, c, prepack)
                m._modules[keys[i + 2]] = nn.Identity()
                n += 1
    return n


def fused(prepack: bool) -> None:
    from napari_nalu_count.infer import count, engine, segment

    img = image()
    segment(img, diameter=D)
    count(img, diameter=D)

    def timed(tag: str):
        ts, tc = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            r = segment(img, diameter=D)
            ts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c = count(img, diameter=D)
            tc.append(time.perf_counter() - t0)
        print(f"{tag}: segment best {min(ts):.3f} s, count best {min(tc):.3f} s")
        return r, c

    r1, c1 = timed("plain")
    print("fused modules", [_fuse(p.net, prepack) for p in engine._prep_cache.values()])
    r2, c2 = timed("fused" + (" prepacked" if prepack else ""))
    same = np.array_equal(r1.labels, r2.labels)
    print(f"labels equal {same}, count difference {abs(c1.count - c2.count)}")


def se_inplace() -> None:
    from napari_nalu_count.infer import segment
    from napari_nalu_count.nn import blocks

    img = image()
    plain = blocks.SEBlock.forward

    def in_place(self, x):
        gates = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x.mul_(gates[:, :, None, None])

    ref = segment(img, diameter=D).labels
    res: dict[str, list[float]] = {"plain": [], "in place": []}
    pairs = [("plain", plain), ("in place", in_place)]
    try:
        for i in range(6):
            for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
                blocks.SEBlock.forward = fn
                t0 = time.perf_counter()
                r = segment(img, diameter=D)
                res[name].append(time.perf_counter() - t0)
                assert np.array_equal(r.labels, ref)
    finally:
        blocks.SEBlock.forward = plain
    for k, v in res.items():
        print(f"{k}: median {statistics.median(v):.3f} s, best {min(v):.3f} s")


def children() -> None:
    from napari_nalu_count.bench.speed import _allocator_rows

    res = _allocator_rows(2048, 2, 3, True)
    print(json.dumps(res["summary"], indent=1))


def multiply(tuned: bool) -> None:
    from napari_nalu_count.infer import allocator

    if tuned:
        allocator.apply(True)
    x = torch.randn(1, 16, 752, 752).contiguous(memory_format=torch.channels_last)
    gates = torch.rand(1, 16)[:, :, None, None]

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    out = median_ms(lambda: x * gates)
    inplace = median_ms(lambda: x.mul_(gates))
    state = "tuned" if allocator.state() else "glibc defaults"
    print(f"{state}: out of place {out:.1f} ms, in place {inplace:.1f} ms")


def main() -> None:
    torch.set_num_threads(2)
    what = sys.argv[1] if len(sys.argv) > 1 else "profile"
    if what == "profile":
        profile()
    elif what == "fused":
        fused("--prepack" in sys.argv)
    elif what == "se-inplace":
        se_inplace()
    elif what == "children":
        children()
    elif what == "multiply":
        multiply("--tuned" in sys.argv)
    else:
        raise SystemExit(
            f"unknown experiment {what!r}: profile, fused, se-inplace, children or multiply"
        )


if __name__ == "__main__":
    main()
