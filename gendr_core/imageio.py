"""Conversion between PIL images / files and float tensors in [0, 1].

Supported inputs: RGB, RGBA/LA (alpha kept separately), grayscale L/I;16/I/F (16-bit PNGs
keep their precision), palette images. Files are written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import ImageInputError
from .fileio import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`pil_to_tensor` dropped, so :func:`tensor_to_pil` can restore it."""

    mode: str
    grayscale: bool
    sixteen_bit: bool


def pil_to_tensor(img: Image.Image) -> tuple[Tensor, Tensor | None, ImageInfo]:
    """PIL image -> (rgb (1,3,H,W) float32 [0,1], alpha (1,1,H,W) or None, info)."""
    if img.width == 0 or img.height == 0:
        raise ImageInputError(f"image has zero size {img.size}")
    mode = img.mode
    alpha = None
    sixteen = mode in ("I;16", "I;16B", "I;16L", "I")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        alpha = torch.from_numpy(np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0)[None, None]
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        rgb = np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        rgb = np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=-1)
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    gray = mode in ("L", "LA", "I;16", "I;16B", "I;16L", "I", "F", "1")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return x, alpha, ImageInfo(mode=mode, grayscale=gray, sixteen_bit=sixteen)


def tensor_to_pil(x: Tensor, alpha: Tensor | None = None, info: ImageInfo | None = None) -> Image.Image:
    """(1,3,H,W) or (3,H,W) in [0,1] (+ optional alpha) -> PIL, restoring gray/16-bit/alpha."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ImageInputError(f"tensor_to_pil needs one image, got a batch of {x.shape[0]}")
        x = x[0]
    arr = x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if info is not None and info.grayscale:
        y = arr.mean(axis=-1)
        if info.sixteen_bit and alpha is None:
            return Image.fromarray(np.round(y * 65535).astype(np.uint16))
        img = Image.fromarray(np.round(y * 255).astype(np.uint8), mode="L")
    else:
        img = Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="RGB")
    if alpha is not None:
        a = alpha.detach().float().clamp(0, 1).reshape(alpha.shape[-2:]).cpu().numpy()
        img.putalpha(Image.fromarray(np.round(a * 255).astype(np.uint8), mode="L"))
    return img


def load_image(path: str | os.PathLike) -> tuple[Tensor, Tensor | None, ImageInfo]:
    """Read an image file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_tensor(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageInputError(f"{path}: cannot decode image ({exc})") from None
    except ImageInputError as exc:
        raise ImageInputError(f"{path}: {exc}") from None


def save_image_atomic(img: Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Save ``img`` to a temp file beside ``path`` and rename: no half-written outputs."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageInputError(f"{path}: unknown output image extension {path.suffix!r}")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **save_kwargs))
    return path
