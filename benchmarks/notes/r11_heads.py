"""Round 11: the counter's density and size heads as one convolution (engine option
``fuse_heads``, :func:`napari_nalu_count.nn.unet.fuse_heads`), against two
(docs/benchmarks/speed.md).

    python benchmarks/notes/r11_heads.py equal   # every val image, counts / points / labels
    python benchmarks/notes/r11_heads.py time    # 2048 px image and 64 small images, A/B
    python benchmarks/notes/r11_heads.py network # the prepared network alone, 128 / 608 px

``equal`` counts and segments the BBBC039, DSB and Aitslab val images of ``../shared/data``
(size estimated) with the option off and on and reports the largest count difference and how
many point sets and label images differ. ``time`` alternates off / on in one process (2 torch
threads): count and segment of the 2048 px speed image (6 rounds) and the 64 small images of
``bench speed --small 64`` (6 rounds), best and median.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from napari_nalu_count.infer import count, engine, segment

sys.path.insert(0, str(Path(__file__).parent))
import r11_peaks  # noqa: E402


def use(on: bool) -> None:
    engine.OPTIONS["fuse_heads"] = on


def equal() -> None:
    r11_peaks.compare_on_val(use, False, True)


def timing() -> None:
    from napari_nalu_count.data.synthetic import synthetic_cells

    d, size = 28.66, 2048
    big = synthetic_cells((size, size), n_cells=int(size * size / (d * d * 4)), diameter=d, seed=0)
    big = big.image
    cells = max(1, int(256 * 256 / (d * d * 4)))
    small = [synthetic_cells((256, 256), n_cells=cells, diameter=d, seed=i) for i in range(64)]
    small = [s.image for s in small]
    for on in (False, True):
        use(on)
        count(big, "nuclei-count")
        [count(im, "nuclei-count") for im in small[:4]]
    for what, fn in (
        ("count 2048", lambda: count(big, "nuclei-count")),
        ("segment 2048", lambda: segment(big)),
        ("64 small", lambda: [count(im, "nuclei-count") for im in small]),
    ):
        times = r11_peaks.alternate(fn, 6, use, False, True)
        for on, v in times.items():
            print(
                f"{what} fuse_heads={on}: best {min(v):.3f} s, median {statistics.median(v):.3f} s"
            )
        print(f"{what} ratio best {min(times[False]) / min(times[True]):.3f}")


def network() -> None:
    """The prepared counter alone on a 128 px and a 608 px tile, off / on alternated."""
    dev = torch.device("cpu")
    loaded = engine._resolve_model("nuclei-count", "count", dev)
    nets = {}
    for on in (False, True):
        use(on)
        nets[on] = engine.prepare_net(loaded, dev)
    use(True)
    for side, n in ((128, 40), (608, 4)):
        x = torch.randn(1, 1, side, side).contiguous(memory_format=torch.channels_last)
        times: dict[bool, list[float]] = {False: [], True: []}
        with torch.inference_mode():
            for on in (False, True):
                nets[on](x)
            for r in range(8):
                for on in (False, True) if r % 2 == 0 else (True, False):
                    t = time.perf_counter()
                    for _ in range(n):
                        nets[on](x)
                    times[on].append((time.perf_counter() - t) / n)
        b0, b1 = min(times[False]), min(times[True])
        print(
            f"network {side} px: two heads {1000 * b0:.2f} ms, fused {1000 * b1:.2f} ms "
            f"(best of 8), ratio {b0 / b1:.3f}; medians "
            f"{1000 * statistics.median(times[False]):.2f} / "
            f"{1000 * statistics.median(times[True]):.2f} ms"
        )


if __name__ == "__main__":
    torch.set_num_threads(2)
    {"equal": equal, "time": timing, "network": network}[sys.argv[1]]()
