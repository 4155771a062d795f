"""Pixel (un)shuffle, the parameter-free encoder/decoder of GenDR-Pix.

Channel order is (c, i, j), the same as einops ``b c (h i) (w j) -> b (c i j) h w``;
``shuffle(unshuffle(x, f), f)`` is exact.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def unshuffle(x: Tensor, factor: int = 8) -> Tensor:
    """(B,C,H,W) -> (B,C*f*f,H/f,W/f); H and W must be multiples of ``factor``."""
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"unshuffle: H={h} and W={w} must be multiples of factor={factor}")
    return F.pixel_unshuffle(x, factor)


def shuffle(z: Tensor, factor: int = 8) -> Tensor:
    """(B,C*f*f,h,w) -> (B,C,h*f,w*f), the inverse of :func:`unshuffle`."""
    c = z.shape[-3]
    if c % (factor * factor):
        raise ValueError(f"shuffle: channels={c} must be a multiple of factor^2={factor * factor}")
    return F.pixel_shuffle(z, factor)
