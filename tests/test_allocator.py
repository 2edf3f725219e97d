"""The glibc allocator tuning of the engine (``OPTIONS["malloc_tuning"]``, .infer.allocator)."""

from __future__ import annotations

import ast
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_nalu_count.infer import allocator, engine
from napari_nalu_count.models import make_card, save_model
from napari_nalu_count.nn.registry import build_model

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc (mallopt)")

CPU = torch.device("cpu")


@pytest.fixture
def restore_allocator():
    yield
    allocator.apply(engine.OPTIONS["malloc_tuning"])


#: run in a fresh process: a heap that earlier tests grew serves blocks of any size from free
#: chunks, whatever the thresholds say
CHILD = """
import os, resource, sys
import numpy as np
from napari_nalu_count.infer import allocator

MIB = int(os.environ.get("ALLOC_TEST_MIB", "8"))
allocator.DISABLE_MMAP = os.environ.get("ALLOC_TEST_NO_MMAP", "1") == "1"
# NumPy asks for transparent huge pages for large arrays (fewer, larger faults); torch does not
hugepages = getattr(np, "_core", getattr(np, "core", None)).multiarray
hugepages._set_madvise_hugepage(False)

def faults():
    # minor page faults of allocating, touching and freeing MIB MiB (median of 5 after one)
    counts = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones((MIB << 20) // 4, dtype=np.float32)
        del a
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(np.median(counts[1:]))

out = []
for step in sys.argv[1:]:
    if step == "pause":
        with allocator.paused():
            out.append((step, allocator.state(), faults()))
        continue
    if step == "mapped":
        with allocator.large_mapped():
            out.append((step, allocator.state(), faults()))
        continue
    allocator.apply(step == "on")
    out.append((step, allocator.state(), faults()))
print(out)
"""


def _child(*steps: str, mib: int = 8, no_mmap: bool = True) -> list[tuple[str, bool | None, float]]:
    env = dict(os.environ, ALLOC_TEST_MIB=str(mib), ALLOC_TEST_NO_MMAP="1" if no_mmap else "0")
    res = subprocess.run(
        [sys.executable, "-c", CHILD, *steps], capture_output=True, text=True, check=True, env=env
    )
    return ast.literal_eval(res.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocator_reuses_freed_blocks_and_defaults_do_not():
    pages = (8 << 20) // resource.getpagesize()
    # tuned from the start: freed blocks stay in the heap, the next one touches no new page
    ((_, state, faults),) = _child("on")
    assert state is True and faults < 0.05 * pages
    # glibc's defaults pinned (128 KiB mmap threshold): every block is a fresh mapping
    (_, s_on, f_on), (_, s_off, f_off) = _child("on", "off")
    assert (s_on, s_off) == (True, False)
    assert f_on < 0.05 * pages and f_off > 0.1 * pages


@glibc
def test_paused_gives_freed_blocks_back_and_then_tunes_again():
    pages = (8 << 20) // resource.getpagesize()
    (_, _, before), (_, s_pause, paused), (_, s_after, after) = _child("on", "pause", "on")
    # inside: glibc's defaults, every 8 MiB block is a fresh mapping (faulted in again)
    assert paused > 0.1 * pages and s_pause is True
    # after: tuned again, the freed block is reused
    assert before < 0.05 * pages and after < 0.05 * pages and s_after is True
    # never tuned: paused() leaves glibc's own (dynamic) settings alone, the freed block is
    # reused as before
    (_, s_p, f_p), (_, s_off, _) = _child("pause", "off")
    assert s_p is None and s_off is None and f_p < 0.05 * pages


@glibc
def test_blocks_above_glibcs_mmap_threshold_cap_are_reused_only_with_mmap_disabled():
    # glibc caps M_MMAP_THRESHOLD at 32 MiB: a 40 MiB block (the segmenter's 16-channel
    # activations of a 752 px tile are 34.5 MiB) is a fresh mapping unless mmap is disabled
    pages = (40 << 20) // resource.getpagesize()
    ((_, state, faults),) = _child("on", mib=40)
    assert state is True and faults < 0.05 * pages
    ((_, state, faults),) = _child("on", mib=40, no_mmap=False)
    assert state is True and faults > 0.5 * pages
    # paused: glibc's defaults again (mmap allowed), the block is faulted in every time
    (_, _, on), (_, _, paused), (_, _, again) = _child("on", "pause", "on", mib=40)
    assert on < 0.05 * pages and paused > 0.5 * pages and again < 0.05 * pages


@glibc
def test_large_blocks_in_a_worker_thread_still_allocate_with_mmap_disabled():
    # a thread's arena grows in heaps of at most 64 MiB; with mmap disabled glibc must fall back
    # to the main arena for larger blocks (napari runs inference in worker threads)
    code = """
import threading
import numpy as np
from napari_nalu_count.infer import allocator
assert allocator.apply(True)
out = []
def work():
    a = np.ones((300 << 20) // 4, dtype=np.float32)
    out.append(float(a.sum(dtype=np.float64)))
t = threading.Thread(target=work)
t.start()
t.join()
print(out)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ast.literal_eval(res.stdout.strip().splitlines()[-1]) == [float((300 << 20) // 4)]


@glibc
def test_large_mapped_maps_only_blocks_above_the_threshold_and_then_tunes_again():
    # inside: blocks under the mmap threshold still come from the heap and are reused ...
    small = (8 << 20) // resource.getpagesize()
    (_, _, on), (_, s_in, inside), (_, s_after, after) = _child("on", "mapped", "on")
    assert s_in is True and s_after is True
    assert on < 0.05 * small and inside < 0.05 * small and after < 0.05 * small
    # ... while a block above it (40 MiB) is a mapping of its own, given back when freed;
    # after the block the tuning (mmap disabled) reuses it again
    big = (40 << 20) // resource.getpagesize()
    (_, _, on), (_, _, inside), (_, _, after) = _child("on", "mapped", "on", mib=40)
    assert on < 0.05 * big and inside > 0.5 * big and after < 0.05 * big
    # never tuned: glibc's own settings are left alone
    (_, s_m, _), (_, s_off, _) = _child("mapped", "off")
    assert s_m is None and s_off is None


def test_segment_maps_large_blocks_only_for_planes_cut_in_blocks(options, monkeypatch):
    torch.manual_seed(0)
    net = build_model({"architecture": "se_unet", "widths": [4, 8]})
    save_model(net, make_card("alloc-seg", "segment", net.config, diameter=12.0), "alloc-seg")
    entered = []
    real = allocator.large_mapped

    def spy():
        entered.append(True)
        return real()

    monkeypatch.setattr(allocator, "large_mapped", spy)
    img = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    engine.segment(img, "alloc-seg", device="cpu", seeds="interior", diameter=12.0)
    assert entered == []
    monkeypatch.setattr(engine, "SEGMENT_BLOCK_PIXELS", 64 * 64)
    monkeypatch.setattr(engine, "SEGMENT_BLOCK", 48)
    engine.segment(img, "alloc-seg", device="cpu", seeds="interior", diameter=12.0)
    assert entered == [True]
    options["segment_blocks"] = False
    engine.segment(img, "alloc-seg", device="cpu", seeds="interior", diameter=12.0)
    assert entered == [True]


@glibc
def test_engine_applies_the_option_when_it_prepares_a_network(options, restore_allocator):
    torch.manual_seed(0)
    net = build_model({"architecture": "unet_count", "widths": [4, 8, 8], "unit": "nau"})
    save_model(net, make_card("alloc-count", "count", net.config, diameter=10.0), "alloc-count")
    loaded = engine._resolve_model("alloc-count", "count", CPU)
    options["malloc_tuning"] = False
    engine.prepare_net(loaded, CPU)
    assert allocator.state() in (None, False)
    options["malloc_tuning"] = True
    engine.prepare_net(loaded, CPU)
    assert allocator.state() is True
    options["malloc_tuning"] = False
    engine.prepare_net(loaded, CPU)
    assert allocator.state() is False


def test_environment_opt_out_and_no_glibc_are_no_ops(monkeypatch, restore_allocator):
    monkeypatch.setenv(allocator.ENV, "0")
    assert not allocator.available()
    assert allocator.apply(True) is False
    assert allocator.state() in (None, False)
    monkeypatch.delenv(allocator.ENV)
    monkeypatch.setattr(allocator, "_libc", None)  # as on macOS / Windows / musl
    monkeypatch.setattr(allocator, "_state", None)
    assert not allocator.available()
    assert allocator.apply(True) is False
    assert allocator.state() is None
    allocator.release()  # no C library: nothing to do, no error
