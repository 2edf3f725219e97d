"""Overlapping tiles with smooth blending, for images of any size at bounded memory.

A plane is cut into a grid of equal tiles (the last row/column is shifted back inside the
image, so every tile has the same shape and the network sees no padding but its own). Each
tile's prediction is multiplied by a separable window that ramps smoothly (``sin^2``) from ~0 to
1 across the overlap on every side that borders another tile, and stays 1 on sides that touch
the image border. Predictions are summed into one float32 output and divided by the summed
windows. Because the tile grid is a Cartesian product of row and column starts, the window sum is
separable too (``Sy[:, None] * Sx[None, :]``), so no full-size weight image is ever held.

Memory: the output (``C x H x W`` float32) plus one batch of tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np
import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with >= ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """Smallest tile edge (<= ``tile``, a multiple of ``multiple`` when below ``length``) that
    covers ``length`` with as few tiles as ``tile`` needs, with >= ``overlap`` between them.

    A 1430 px plane in 1024 px tiles with 64 px overlap needs 2 tiles per axis either way, but
    2 x 752 px run 1.36x fewer pixels than 2 x 1024 px: the network's work follows the plane,
    not the tile grid.
    """
    if length <= tile:
        return length
    ov = max(0, min(overlap, tile // 2))
    n = -(-(length - ov) // max(1, tile - ov))  # tiles of edge `tile` needed
    edge = -(-(length + (n - 1) * ov) // n)
    m = max(1, int(multiple))
    edge = -(-edge // m) * m
    return int(min(tile, max(edge, 2 * ov + 1)))


def ramp_window(size: int, overlap: int, ramp_left: bool, ramp_right: bool) -> np.ndarray:
    """1-D float32 weights of length ``size``: ``sin^2`` ramps of width ``overlap`` where asked.

    The ramps never reach 0 exactly (first weight ``sin^2(pi/4 / overlap)``), so every pixel
    keeps a positive total weight.
    """
    w = np.ones(size, dtype=np.float32)
    o = min(overlap, size // 2)
    if o > 0:
        t = (np.arange(o, dtype=np.float32) + 0.5) / o
        ramp = np.sin(0.5 * np.pi * t) ** 2
        if ramp_left:
            w[:o] = ramp
        if ramp_right:
            w[size - o :] = ramp[::-1]
    return w


def _pair(tile: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(tile, (tuple, list)):
        return int(tile[0]), int(tile[1])
    return int(tile), int(tile)


def plan_tiles(
    shape: tuple[int, int], tile: int | tuple[int, int], overlap: int
) -> tuple[list[tuple[int, int]], tuple[int, int], list[np.ndarray], list[np.ndarray]]:
    """Tile grid of a ``(H, W)`` plane; ``tile`` is an edge or a ``(tile_h, tile_w)`` pair.

    Returns ``(positions, (th, tw), y_windows, x_windows)``: top-left corners in row-major
    order, the tile shape (``min(tile_h, H), min(tile_w, W)``) and the 1-D windows per row /
    column. The overlap is at most half the (requested) tile edge.
    """
    h, w = shape
    ty, tx = _pair(tile)
    th, tw = min(ty, h), min(tx, w)
    ov = max(0, min(overlap, min(ty, tx) // 2))
    ys, xs = tile_starts(h, th, ov), tile_starts(w, tw, ov)
    wy = [ramp_window(th, ov, y > 0, y + th < h) for y in ys]
    wx = [ramp_window(tw, ov, x > 0, x + tw < w) for x in xs]
    positions = [(y, x) for y in ys for x in xs]
    return positions, (th, tw), wy, wx


def n_tiles(shape: tuple[int, int], tile: int | tuple[int, int], overlap: int) -> int:
    """Number of tiles :func:`predict_tiled` runs on a plane of ``shape``."""
    h, w = shape
    ty, tx = _pair(tile)
    ov = max(0, min(overlap, min(ty, tx) // 2))
    return len(tile_starts(h, min(ty, h), ov)) * len(tile_starts(w, min(tx, w), ov))


def predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    plane: np.ndarray,
    out_channels: int,
    *,
    tile: int | tuple[int, int],
    overlap: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    on_tile: Callable[[], None] | None = None,
) -> np.ndarray:
    """Run ``forward`` over a ``(H, W)`` float32 plane tile by tile; return ``(C, H, W)`` float32.

    ``forward`` maps a ``(B, 1, th, tw)`` float32 tensor on ``device`` to ``(B, C, th, tw)``
    (already scaled or soft-maxed: the blend averages whatever it returns). ``on_tile`` is
    called after every tile (progress, cancel check: it may raise to stop).
    """
    steps = predict_tiled_steps(
        forward,
        plane,
        out_channels,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
    )
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
        if on_tile is not None:
            on_tile()


def predict_tiled_steps(
    forward: Callable[[torch.Tensor], torch.Tensor],
    plane: np.ndarray,
    out_channels: int,
    *,
    tile: int | tuple[int, int],
    overlap: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> Generator[int, None, np.ndarray]:
    """:func:`predict_tiled` as a generator: yields the number of tiles done after every tile
    and returns the ``(C, H, W)`` prediction."""
    h, w = plane.shape
    positions, (th, tw), wy, wx = plan_tiles((h, w), tile, overlap)
    ys = sorted({p[0] for p in positions})
    xs = sorted({p[1] for p in positions})
    y_index = {y: i for i, y in enumerate(ys)}
    x_index = {x: i for i, x in enumerate(xs)}
    single = len(positions) == 1

    out = np.zeros((out_channels, h, w), dtype=np.float32)
    sy = np.zeros(h, dtype=np.float32)
    sx = np.zeros(w, dtype=np.float32)
    for y, win in zip(ys, wy, strict=True):
        sy[y : y + th] += win
    for x, win in zip(xs, wx, strict=True):
        sx[x : x + tw] += win

    batch_size = max(1, int(batch_size))
    for start in range(0, len(positions), batch_size):
        chunk = positions[start : start + batch_size]
        tiles = np.stack([plane[y : y + th, x : x + tw] for y, x in chunk])
        inp = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))[:, None]
        inp = inp.to(device)
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        pred = forward(inp)
        pred = pred.float().cpu().numpy()
        if pred.shape[1:] != (out_channels, th, tw):
            raise RuntimeError(
                f"network returned {tuple(pred.shape)} for a tile batch of {tuple(inp.shape)}; "
                f"expected (B, {out_channels}, {th}, {tw})"
            )
        for k, (y, x) in enumerate(chunk):
            if single:
                out[:, y : y + th, x : x + tw] = pred[k]
            else:
                win = wy[y_index[y]][:, None] * wx[x_index[x]][None, :]
                out[:, y : y + th, x : x + tw] += pred[k] * win
            yield start + k + 1
        del pred, inp, tiles
    if not single:
        # divide by the separable window sum, row block by row block (no full-size temporary)
        inv_x = (1.0 / sx).astype(np.float32)
        for r0 in range(0, h, 256):
            r1 = min(h, r0 + 256)
            norm = (1.0 / sy[r0:r1])[:, None] * inv_x[None, :]
            out[:, r0:r1] *= norm
    return out
