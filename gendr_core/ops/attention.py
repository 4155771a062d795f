"""Memory-saving forms of the UNet's attention and feed-forward steps (issue 18, GPU speed).

Pure tensor functions; :mod:`gendr_core.models.unet` installs them into a diffusers UNet.

* :func:`chunked_apply` runs a token-wise function (the GEGLU feed-forward of a transformer
  block) on slices of the token axis, so its 8x-wide hidden tensor exists for one slice at a
  time. Token-wise functions give the same values (up to the matmul's summation order).
* :func:`windowed_sdpa` is self-attention restricted to non-overlapping windows of the token
  grid, each run through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels
  on GPUs). A window that covers the grid is plain full attention.
* :func:`query_chunked_sdpa` is full attention computed for slices of the queries, with a
  callback between slices (ComfyUI's cancel check inside one long attention step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def chunked_apply(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int, dim: int = 1) -> Tensor:
    """``cat([fn(s) for s in x.split(chunk, dim)], dim)``; ``fn(x)`` itself when one chunk covers ``x``.

    ``fn`` must act on each index of ``dim`` independently (a token-wise MLP on (B, N, C)). The
    last slice is shorter when ``chunk`` does not divide the axis (diffusers' own feed-forward
    chunking refuses that case; token counts of arbitrary image sizes rarely divide evenly).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    if x.shape[dim] <= chunk:
        return fn(x)
    return torch.cat([fn(s) for s in x.split(chunk, dim)], dim)


def window_bands(n: int, window: int) -> list[tuple[int, int, int]]:
    """Split an axis of ``n`` tokens into ``ceil(n / window)`` windows of near-equal size.

    Returns (start, stop, size) bands: every window of a band has ``size`` tokens, and the
    sizes differ by at most one (``torch.tensor_split``'s order: the longer windows first).
    Our reading of "window = the 64x64-token training patch" (issue 18; GenDR-Pix Sec. 5.1
    trains on 512x512 crops, 64x64 tokens at the UNet's first level): no window is larger than
    the patch the model was trained on, and none is much smaller (65 tokens split as 33 + 32,
    not 64 + 1), so every token keeps a context close to the training one. No shifted windows:
    the model runs once, there is no second layer to shift in.
    """
    if n < 1 or window < 1:
        raise ValueError(f"window_bands(n={n}, window={window}): both must be >= 1")
    k = -(-n // window)  # windows along the axis
    size, longer = divmod(n, k)  # `longer` windows of size+1, then k-longer of size
    bands = []
    if longer:
        bands.append((0, longer * (size + 1), size + 1))
    if k - longer:
        bands.append((longer * (size + 1), n, size))
    return bands


def windowed_sdpa(q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """Self-attention of (B, heads, H*W, d) ``q, k, v`` within windows of at most ``window`` x ``window``
    tokens of the (H, W) token grid (row-major tokens, as diffusers' Transformer2DModel flattens them).

    Windows are laid out by :func:`window_bands` on each axis; windows of equal shape are
    batched into one SDPA call (at most four calls). Returns (B, heads, H*W, d). When the
    window covers the grid this is exactly ``F.scaled_dot_product_attention(q, k, v)``.
    """
    b, heads, n, d = q.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"windowed_sdpa: grid {h}x{w} does not hold the {n} tokens of q {tuple(q.shape)}")
    if h <= window and w <= window:
        return F.scaled_dot_product_attention(q, k, v)
    grids = [t.reshape(b, heads, h, w, t.shape[-1]) for t in (q, k, v)]  # (B,heads,N,d) -> (B,heads,H,W,d)
    out = q.new_empty(b, heads, h, w, v.shape[-1])
    for r0, r1, hs in window_bands(h, window):
        for c0, c1, ws in window_bands(w, window):
            nh, nw = (r1 - r0) // hs, (c1 - c0) // ws

            def windows(t: Tensor) -> Tensor:  # (B,heads,nh*hs,nw*ws,d) -> (B*nh*nw, heads, hs*ws, d)
                t = t[:, :, r0:r1, c0:c1].reshape(b, heads, nh, hs, nw, ws, t.shape[-1])
                return t.permute(0, 2, 4, 1, 3, 5, 6).reshape(b * nh * nw, heads, hs * ws, t.shape[-1])

            o = F.scaled_dot_product_attention(*(windows(t) for t in grids))
            o = o.reshape(b, nh, nw, heads, hs, ws, o.shape[-1]).permute(0, 3, 1, 4, 2, 5, 6)
            out[:, :, r0:r1, c0:c1] = o.reshape(b, heads, nh * hs, nw * ws, o.shape[-1])
    return out.reshape(b, heads, n, out.shape[-1])


def query_chunked_sdpa(q: Tensor, k: Tensor, v: Tensor, max_pairs: int,
                       between: Callable[[], None] | None = None) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` on (B, heads, N, d), computed for slices of the
    query axis of at most ``max_pairs // N_keys`` queries (at least one), calling ``between()``
    after every slice but the last. Each query's softmax runs over all keys, so the result is full
    attention (equal up to the kernel's summation order); one slice when ``N * N_keys <= max_pairs``.
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs={max_pairs} must be >= 1")
    n, n_keys = q.shape[-2], k.shape[-2]
    chunk = max(1, max_pairs // n_keys)
    if n <= chunk:
        return F.scaled_dot_product_attention(q, k, v)
    outs = []
    for i, qs in enumerate(q.split(chunk, dim=-2)):
        if i and between is not None:
            between()
        outs.append(F.scaled_dot_product_attention(qs, k, v))
    return torch.cat(outs, dim=-2)
