"""Wavelet color fix: the non-learned half of FixMod (GenDR-Pix Sec. A.1).

Dilated a-trous blur with the 3x3 binomial kernel [[1,2,1],[2,4,2],[1,2,1]]/16, radius
2**i at level i, replicate padding; high = x - low after ``levels`` levels; the result is
high(content) + low(reference) (the StableSR/OSEDiff convention, REFERENCE.md 3.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ImageInputError


def wavelet_blur(x: Tensor, radius: int) -> Tensor:
    """Depthwise binomial 3x3 blur with dilation ``radius``: (B,C,H,W) -> (B,C,H,W)."""
    c = x.shape[1]
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    k = k.expand(c, 1, 3, 3)
    xp = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(xp, k, groups=c, dilation=radius)


def wavelet_decompose(x: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """Split x into (high, low) with high + low == x; low is the level-``levels`` blur."""
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = wavelet_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(content: Tensor, reference: Tensor, strength: float = 1.0, levels: int = 5) -> Tensor:
    """high(content) + low(reference), blended with ``content`` by ``strength`` in [0, 1]."""
    if content.shape != reference.shape:
        raise ImageInputError(
            f"color fix: content {tuple(content.shape)} and reference {tuple(reference.shape)} differ in shape"
        )
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    if strength == 0.0:
        return content
    high, _ = wavelet_decompose(content, levels)
    _, low = wavelet_decompose(reference, levels)
    fixed = high + low
    return fixed if strength == 1.0 else content + strength * (fixed - content)
