"""Resizing the low-quality input onto the output grid (any scale, integer or not)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..validation import check_float


def output_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Output (H, W) = round(h*scale), round(w*scale), at least 1."""
    scale = check_float("scale", scale, 0.0, None, low_open=True)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(x: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Resize (B,C,H,W) to ``size``; antialiased when shrinking; clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic"):
        kwargs["antialias"] = shrinking
    y = F.interpolate(x, size=size, mode=mode, **kwargs)
    return y.clamp_(0.0, 1.0) if mode == "bicubic" else y


def upscale_bicubic(x: Tensor, scale: float) -> Tensor:
    """Bicubic upscale (B,C,h,w) -> (B,C,round(h*scale),round(w*scale)), clamped to [0, 1]."""
    return resize(x, output_size(x.shape[-2], x.shape[-1], scale), "bicubic")
