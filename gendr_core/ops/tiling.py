"""Overlapping tiles blended with smooth weights.

Tile origins are multiples of ``align`` (the model's pad multiple) so every tile sees the
same pixel-unshuffle/downsampling phase as the full image. Blend weights along an axis are
0 for the first quarter of an overlap, rise with a raised cosine over its middle half and
are 1 beyond; at image borders they stay 1. Hence a model whose one-sided receptive field
is at most ``overlap // 4`` pixels gives exactly its full-image output (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Progress = Callable[[int, int], None]


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[(start, end)] covering [0, length) with tiles of ``tile`` px overlapping by ``overlap``."""
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    spans, s = [], 0
    while True:
        e = min(s + tile, length)
        spans.append((s, e))
        if e == length:
            return spans
        s += stride


def _ramp(n: int, overlap: int, ramp_start: bool, ramp_end: bool, device, dtype) -> Tensor:
    w = torch.ones(n, device=device, dtype=dtype)
    if overlap <= 0:
        return w
    m = overlap // 4
    r = overlap - 2 * m  # cosine part
    t = torch.arange(overlap, device=device, dtype=torch.float64)
    up = torch.where(t < m, 0.0, torch.where(t >= m + r, 1.0, 0.5 - 0.5 * torch.cos(math.pi * (t - m + 0.5) / r)))
    up = up.to(dtype)
    k = min(overlap, n)
    if ramp_start:
        w[:k] = torch.minimum(w[:k], up[:k])
    if ramp_end:
        w[n - k :] = torch.minimum(w[n - k :], up[:k].flip(0))
    return w


def aligned_tile(tile: int, overlap: int, align: int = 1) -> tuple[int, int]:
    """(tile, overlap) as :func:`tiled_apply` uses them: tile down, overlap up to multiples of ``align``."""
    tile, overlap = max(align, tile // align * align), math.ceil(overlap / align) * align
    if overlap >= tile:
        raise ValueError(f"overlap={overlap} must be smaller than tile={tile} (after aligning to {align})")
    return tile, overlap


def tile_count(h: int, w: int, tile: int, overlap: int, align: int = 1) -> int:
    """Number of tiles :func:`tiled_apply` runs on an (h, w) image (for progress totals)."""
    tile, overlap = aligned_tile(tile, overlap, align)
    return len(tile_spans(h, tile, overlap)) * len(tile_spans(w, tile, overlap))


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    align: int = 1,
    progress: Progress | None = None,
) -> Tensor:
    """Apply a same-size image function ``fn`` on (B,C,H,W) ``x`` tile by tile and blend.

    ``tile`` and ``overlap`` are rounded to multiples of ``align``; ``overlap`` must be
    smaller than ``tile``.
    """
    tile, overlap = aligned_tile(tile, overlap, align)
    h, w = x.shape[-2:]
    ys, xs = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    out = None
    # The weights are separable, w(y, x) = wy(y) * wx(x), so their sum over the tiles is too:
    # two vectors instead of a full-size weight buffer.
    sum_y = torch.zeros(h, device=x.device, dtype=torch.float32)
    sum_x = torch.zeros(w, device=x.device, dtype=torch.float32)
    ramps_x = [_ramp(x1 - x0, overlap, x0 > 0, x1 < w, x.device, torch.float32) for x0, x1 in xs]
    for (x0, x1), wx in zip(xs, ramps_x, strict=True):
        sum_x[x0:x1] += wx
    total, done = len(ys) * len(xs), 0
    for y0, y1 in ys:
        wy = _ramp(y1 - y0, overlap, y0 > 0, y1 < h, x.device, torch.float32)
        sum_y[y0:y1] += wy
        for (x0, x1), wx in zip(xs, ramps_x, strict=True):
            y = fn(x[..., y0:y1, x0:x1])
            if out is None:
                out = torch.zeros((*y.shape[:2], h, w), device=x.device, dtype=torch.float32)
            out[..., y0:y1, x0:x1].addcmul_(y.float(), wy[:, None] * wx[None, :])
            done += 1
            if progress:
                progress(done, total)
    assert out is not None
    out.div_(sum_y[:, None]).div_(sum_x[None, :])  # in place: no second full-size buffer
    return out if x.dtype == torch.float32 else out.to(x.dtype)
