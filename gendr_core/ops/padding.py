"""Padding and cropping that exactly invert each other.

A :class:`Pad` is ``(left, right, top, bottom)``, the order of ``torch.nn.functional.pad``
and of GenDR-Pix Eq. 3 (``[p_h, 8 - p_h, p_w, 8 - p_w]`` for left, right, top, bottom).
``crop(pad(x, p), p)`` returns ``x`` exactly for every mode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ImageInputError


class Pad(NamedTuple):
    left: int
    right: int
    top: int
    bottom: int

    def __add__(self, other: object) -> Pad:  # type: ignore[override]
        if not isinstance(other, tuple) or len(other) != 4:
            return NotImplemented
        return Pad(*(a + b for a, b in zip(self, other, strict=True)))


def _pad_axis_reflect(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    """Reflect-pad one spatial axis; pads wider than the image reflect repeatedly."""
    while before > 0 or after > 0:
        size = x.shape[dim]
        if size < 2:
            return _pad_axis_replicate(x, before, after, dim)
        b, a = min(before, size - 1), min(after, size - 1)
        pad = (b, a, 0, 0) if dim == -1 else (0, 0, b, a)
        x = F.pad(x, pad, mode="reflect")
        before, after = before - b, after - a
    return x


def _pad_axis_replicate(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
    return F.pad(x, pad, mode="replicate")


def pad_fixed(x: Tensor, pad: Pad | tuple[int, int, int, int], mode: str = "reflect") -> Tensor:
    """Pad (B,C,H,W) by ``pad`` = (left, right, top, bottom); reflect works for any width."""
    pad = Pad(*pad)
    if min(pad) < 0:
        raise ValueError(f"pad={tuple(pad)} must be non-negative")
    if not any(pad):
        return x
    if mode == "reflect":
        x = _pad_axis_reflect(x, pad.left, pad.right, -1)
        return _pad_axis_reflect(x, pad.top, pad.bottom, -2)
    if mode == "replicate":
        return F.pad(x, tuple(pad), mode="replicate")
    if mode == "constant":
        return F.pad(x, tuple(pad), mode="constant", value=0.0)
    raise ValueError(f"mode={mode!r} must be 'reflect', 'replicate' or 'constant'")


def crop(x: Tensor, pad: Pad | tuple[int, int, int, int]) -> Tensor:
    """Remove ``pad`` = (left, right, top, bottom) from the last two dims of ``x``."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def multiple_pad(h: int, w: int, multiple: int) -> Pad:
    """Right/bottom padding that brings (h, w) up to a multiple of ``multiple``."""
    return Pad(0, (-w) % multiple, 0, (-h) % multiple)


def pad_to_multiple(
    x: Tensor, multiple: int, base: Pad | tuple[int, int, int, int] = (0, 0, 0, 0), mode: str = "reflect"
) -> tuple[Tensor, Pad]:
    """Pad by ``base`` then on the right/bottom up to a multiple; returns the total Pad.

    (B,C,H,W) -> (B,C,H',W') with H' % multiple == W' % multiple == 0; ``crop(y, pad)``
    inverts it. Composing the branch pad and the multiple into one Pad keeps the 8x8 phase
    of PadCFG branches exact (STYLE.md data flow).
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")
    base = Pad(*base)
    h, w = x.shape[-2:]
    total = base + multiple_pad(h + base.top + base.bottom, w + base.left + base.right, multiple)
    return pad_fixed(x, total, mode), total


def crop_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Drop right/bottom rows and columns so H and W are multiples of ``multiple`` (SR mod-crop)."""
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")
    h, w = x.shape[-2:]
    return x[..., : h // multiple * multiple, : w // multiple * multiple]


def sample_rand_pad(generator: torch.Generator | None = None, period: int = 8) -> Pad:
    """Sample RandPad offsets, GenDR-Pix Eq. 3: p_h, p_w uniform in {0, ..., period-1}.

    Our reading: the text's {0, ..., 7} (Fig. 10's ``random.randint(0, 8)`` would include 8,
    which equals offset 0 up to a whole period of padding).
    """
    p = torch.randint(0, period, (2,), generator=generator).tolist()
    return Pad(p[0], period - p[0], p[1], period - p[1])


def rand_pad(
    x: Tensor, generator: torch.Generator | None = None, period: int = 8, mode: str = "reflect"
) -> tuple[Tensor, Pad]:
    """RandPad augmentation (GenDR-Pix Eq. 3, Fig. 10): (B,C,H,W) -> (B,C,H+8,W+8)."""
    pad = sample_rand_pad(generator, period)
    return pad_fixed(x, pad, mode), pad


def check_image_tensor(x: Tensor, name: str = "image") -> None:
    """Raise ImageInputError for empty, non-finite or wrongly shaped (B,C,H,W) tensors."""
    if not isinstance(x, Tensor):
        raise ImageInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ImageInputError(f"{name}: expected shape (B,C,H,W), got {tuple(x.shape)}")
    if x.numel() == 0 or min(x.shape) == 0:
        raise ImageInputError(f"{name}: empty tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ImageInputError(f"{name}: expected a float tensor in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ImageInputError(f"{name}: contains NaN or infinite values")
