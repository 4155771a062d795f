"""Conversions between ComfyUI's tensor conventions and gendr_core's (no comfy import).

ComfyUI: IMAGE (B,H,W,C) float in [0,1]; MASK (B,H,W) or (H,W) in [0,1] with 1 = transparent
(``LoadImage`` gives 1 - alpha); CONDITIONING a list of ``[embedding (B,L,D), {...}]``.
gendr_core: images (B,3,H,W) float in [0,1]; prompt embeddings (B or 1, L, D).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ..gendr_core.ops.resize import resize
from ..gendr_core.validation import parse_pad_text

logger = logging.getLogger(__name__)


def bhwc_to_bchw(image: Tensor) -> Tensor:
    """(B,H,W,C) -> (B,C,H,W) float32."""
    if not isinstance(image, Tensor) or image.ndim != 4:
        raise ValueError(f"IMAGE must be a (B,H,W,C) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    return image.movedim(-1, 1).float()


def bchw_to_bhwc(x: Tensor) -> Tensor:
    """(B,C,H,W) -> (B,H,W,C) contiguous, clamped to [0, 1]."""
    return x.movedim(1, -1).clamp(0.0, 1.0).contiguous()


def split_alpha(image: Tensor) -> tuple[Tensor, Tensor | None]:
    """IMAGE (B,H,W,C) -> (RGB (B,H,W,3), MASK (B,H,W) = 1 - alpha, or None without alpha).

    C = 4 is RGBA, C = 1 grayscale (repeated to RGB), C = 3 returned as is.
    """
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"IMAGE must be (B,H,W,C) with C in 1, 3, 4; got shape {tuple(image.shape)}")
    c = image.shape[-1]
    if c == 4:
        return image[..., :3], 1.0 - image[..., 3]
    if c == 1:
        return image.expand(*image.shape[:-1], 3), None
    return image, None


def mask_to_bhw(mask: Tensor) -> Tensor:
    """MASK (H,W), (B,H,W) or (B,1,H,W) -> (B,H,W) float."""
    if mask.ndim == 2:
        mask = mask[None]
    elif mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"MASK must be (H,W) or (B,H,W), got shape {tuple(mask.shape)}")
    return mask.float()


def upscale_mask(mask: Tensor | None, size: tuple[int, int], batch: int) -> Tensor:
    """Resize a MASK to ``size`` = (H, W) with bicubic interpolation, clamped to [0, 1].

    No mask gives zeros (ComfyUI's "no alpha" mask). A single mask is repeated to ``batch``.
    """
    if mask is None:
        return torch.zeros(batch, *size)
    m = mask_to_bhw(mask)
    if m.shape[0] not in (1, batch):
        raise ValueError(f"MASK batch {m.shape[0]} does not match the image batch {batch}")
    m = resize(m[:, None].cpu(), size, "bicubic")[:, 0].clamp(0.0, 1.0)  # (B,1,h,w) -> (B,H,W)
    return m.expand(batch, *size).contiguous() if m.shape[0] == 1 else m


def same_aspect(small: tuple[int, int], big: tuple[int, int]) -> bool:
    """Whether (H, W) ``big`` can be ``small`` scaled by one factor, each side rounded to whole pixels."""
    (h, w), (bh, bw) = small, big
    return (bh - 0.5) / h <= (bw + 0.5) / w and (bw - 0.5) / w <= (bh + 0.5) / h


def match_reference(reference: Tensor, content: Tensor) -> Tensor:
    """Resize a (B or 1,3,h,w) reference to the (B,3,H,W) content grid (bicubic) and batch.

    A reference of another aspect ratio is refused: stretching it would move every colour the
    fix takes from it."""
    b = content.shape[0]
    if reference.shape[0] not in (1, b):
        raise ValueError(f"reference batch {reference.shape[0]} does not match the image batch {b}")
    (h, w), (ch, cw) = reference.shape[-2:], content.shape[-2:]
    if not same_aspect((h, w), (ch, cw)):
        raise ValueError(f"reference is {w}x{h} but image is {cw}x{ch}, another aspect ratio; connect the input "
                         "the image was restored from, or crop the reference to the image's aspect ratio first")
    ref = resize(reference.to(content.device), tuple(content.shape[-2:]), "bicubic")
    return ref.expand(b, *ref.shape[1:]) if ref.shape[0] == 1 else ref


def conditioning_embedding(cond: Any, name: str, batch: int) -> Tensor | None:
    """The cross-attention embedding (B or 1, L, D) of a ComfyUI CONDITIONING, or None.

    Only the first entry is used (several entries come from "Conditioning (Combine)", which
    a one-step model cannot area-blend).
    """
    if cond is None:
        return None
    if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)) \
            or not isinstance(cond[0][0], Tensor):
        raise ValueError(f"{name}: expected a CONDITIONING (a list of [embedding, options]) from a text encoder "
                         f"node, got {type(cond).__name__}")
    if len(cond) > 1:
        logger.warning("%s: CONDITIONING has %d entries; GenDR-Pix uses only the first", name, len(cond))
    emb = cond[0][0]
    if emb.ndim != 3 or emb.shape[0] not in (1, batch):
        raise ValueError(f"{name}: conditioning embedding has shape {tuple(emb.shape)}; expected (1 or {batch}, "
                         "tokens, dim) to match the image batch")
    return emb


def parse_pad(text: str, name: str) -> tuple[int, int, int, int] | None:
    """'auto' -> None (the model's own pads); 'l,r,t,b' -> four non-negative ints (ValueError otherwise)."""
    return parse_pad_text(text, name)
