"""glibc allocator settings for inference on large planes (engine option ``malloc_tuning``).

A forward pass over a tile batch allocates and frees activation tensors of 1-100 MiB each,
several times per layer. With glibc's defaults most of them are served by fresh ``mmap`` calls
and given back on ``free``; the kernel then zero-fills every page again at first touch. On a
2048 x 2048 segment that was about 400,000 minor page faults per call, a large part of the time
around the convolutions (a ``torch.cat`` of two 16-channel 512 x 512 maps: 17 ms into a fresh
tensor, 1.8 ms into a reused one).

Tuned, tensors up to :data:`MMAP_THRESHOLD` come from the heap and up to :data:`TRIM_THRESHOLD`
of freed heap is kept for the next layer instead of being returned at once (faults per segment
call about 400k -> 70k). glibc caps that threshold at 32 MiB, and the segmenter's largest
activations (16 channels of a 752 x 752 tile: 34.5 MiB) are just above it: every one of them was
still a fresh ``mmap`` whose pages are faulted in again (an out-of-place multiply of such a
tensor: 19.4 ms, in place 1.6 ms; 2.9 ms out of place from the heap). With
:data:`DISABLE_MMAP` (on) ``mmap`` is not used for allocations at all (``M_MMAP_MAX`` = 0): they
come from the heap, which keeps up to TRIM_THRESHOLD of freed memory at its top (a 2048 x 2048
segment call: 160k -> 1 page faults).
Where the heap cannot grow glibc still falls back to ``mmap``. The price is resident memory
that stays mapped between calls (up to TRIM_THRESHOLD); ``docs/benchmarks/speed.md`` (rounds 7
and 9) has the measured gains and peak memory.

Only glibc (Linux) has ``mallopt``; elsewhere this is a no-op. The settings are process-wide:
they are applied once, when the engine first prepares a network with the option on, and put
back to glibc's defaults when the option is turned off. Set ``NALU_COUNT_MALLOC_TUNING=0`` in
the environment to keep the process's allocator untouched (e.g. when the host application
tunes it itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading

#: allocations at least this large are mmapped (glibc's default: 128 KiB, raised dynamically)
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap above this is given back to the system
TRIM_THRESHOLD = 256 << 20
#: :func:`large_mapped`'s trim threshold (less free heap kept between blocks of a large plane)
BLOCK_TRIM_THRESHOLD = 64 << 20
#: allocations never use ``mmap`` while tuned (``M_MMAP_MAX`` = 0; see the module docstring)
DISABLE_MMAP = True
#: glibc's defaults, restored when the option is turned off
DEFAULT_MMAP_THRESHOLD = 128 << 10
DEFAULT_TRIM_THRESHOLD = 128 << 10
DEFAULT_MMAP_MAX = 65536
#: ``mallopt`` parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
ENV = "NALU_COUNT_MALLOC_TUNING"

_lock = threading.Lock()
_state: bool | None = None  # None: never touched (glibc's own dynamic defaults)
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "mallopt") and hasattr(lib, "gnu_get_libc_version"):
                    lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    lib.mallopt.restype = ctypes.c_int
                    lib.malloc_trim.argtypes = [ctypes.c_size_t]
                    lib.malloc_trim.restype = ctypes.c_int
                    _libc = lib
            except OSError:  # pragma: no cover - no loadable C library
                _libc = None
    return _libc or None


def available() -> bool:
    """True where the allocator can be tuned (glibc) and the environment does not opt out."""
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"} and (
        _glibc() is not None
    )


def state() -> bool | None:
    """True: tuned; False: put back to the defaults; None: never touched by this module."""
    return _state


def apply(on: bool) -> bool:
    """Tune (``on``) or restore glibc's allocator; returns whether it is tuned afterwards.

    Cheap when nothing changes (the engine calls it on every prepared-network lookup)."""
    global _state
    want = bool(on) and available()
    if want and _state is True:
        return True
    if not want and _state is not True:  # untouched or already restored: leave it alone
        return False
    lib = _glibc()
    if lib is None:
        return False
    with _lock:
        if want:
            ok = _tune(lib)
            _state = ok
            return ok
        _restore(lib)
        lib.malloc_trim(0)
        _state = False
        return False


def _tune(lib: ctypes.CDLL) -> bool:
    ok = lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = lib.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    mmap_max = 0 if DISABLE_MMAP else DEFAULT_MMAP_MAX
    return lib.mallopt(_M_MMAP_MAX, mmap_max) == 1 and ok


def _restore(lib: ctypes.CDLL) -> None:
    lib.mallopt(_M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD)
    lib.mallopt(_M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    lib.mallopt(_M_MMAP_MAX, DEFAULT_MMAP_MAX)


@contextlib.contextmanager
def large_mapped():
    """The tuning with ``mmap`` allowed again inside the block (M_MMAP_MAX back to glibc's
    default) and at most :data:`BLOCK_TRIM_THRESHOLD` of free heap kept, then as before.

    For segmentation of planes cut into blocks: activations of up to :data:`MMAP_THRESHOLD`
    still come from the heap and are reused from block to block, while the few larger
    long-lived arrays (the labels, the resampled plane) are mappings of their own that go back
    to the system when freed, instead of sitting in the heap under the blocks' temporaries
    (8192 x 8192 segment, 2 threads, one child process per run: 58.3 s and 1.64 GiB peak
    RSS against 76.6 / 78.3 s and 1.48 / 1.46 GiB with :func:`paused`, and 51.2-55.9 s but
    1.71-1.75 GiB with the heap's 256 MiB trim threshold; docs/benchmarks/speed.md, round 14).
    A no-op where the tuning is off or unavailable."""
    lib = _glibc()
    if lib is None or _state is not True:
        yield
        return
    with _lock:
        lib.mallopt(_M_MMAP_MAX, DEFAULT_MMAP_MAX)
        lib.mallopt(_M_TRIM_THRESHOLD, BLOCK_TRIM_THRESHOLD)
        lib.malloc_trim(0)
    try:
        yield
    finally:
        with _lock:
            _tune(lib)


def release() -> None:
    """Give free heap memory back to the system (end of a batch; no-op without glibc)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


@contextlib.contextmanager
def paused():
    """glibc's default thresholds inside the block, the tuning (if on) again after it.

    For work whose peak memory matters more than its page faults (segmentation of planes too
    large to segment whole): freed memory goes back to the system at once."""
    lib = _glibc()
    if lib is None or _state is not True:
        yield
        return
    with _lock:
        _restore(lib)
        lib.malloc_trim(0)
    try:
        yield
    finally:
        with _lock:
            _tune(lib)
