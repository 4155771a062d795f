"""Conversion between PIL images / files and float tensors in [0, 1].

Supported inputs: RGB, RGBA/LA (alpha kept separately), grayscale L/I;16/I/F, palette, CMYK
(converted to RGB through its ICC profile, or with a warning line without one). 16-bit PNGs
and TIFFs of every colour type keep their 16 bits (:mod:`gendr_core.png16` and
:mod:`gendr_core.tiff16` read and write those Pillow reduces to 8 bits), and :func:`save_image`
writes 16 bits again (PNG or TIFF output). An embedded ICC profile is
kept and written into the output, so a colour-managed viewer shows the output in the input's
colour space. EXIF orientation is applied on reading. Files are written atomically.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import ImageInputError
from .fileio import atomic_write
from .png16 import png16_info, read_png16, write_png16
from .tiff16 import read_tiff16, tiff16_info, write_tiff16

logger = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`pil_to_tensor` dropped, so :func:`tensor_to_pil` can restore it."""

    mode: str
    grayscale: bool
    sixteen_bit: bool
    icc: bytes | None = None  # the input's ICC profile, written into the output


def pil_to_tensor(img: Image.Image) -> tuple[Tensor, Tensor | None, ImageInfo]:
    """PIL image -> (rgb (1,3,H,W) float32 [0,1], alpha (1,1,H,W) or None, info)."""
    if img.width == 0 or img.height == 0:
        raise ImageInputError(f"image has zero size {img.size}")
    img = upright(img)
    mode = img.mode
    icc = img.info.get("icc_profile") or None
    alpha = None
    sixteen = mode in ("I;16", "I;16B", "I;16L", "I")
    if mode == "CMYK":
        img, icc = cmyk_to_rgb(img, icc), None
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
    return x, alpha, ImageInfo(mode=mode, grayscale=gray, sixteen_bit=sixteen, icc=icc)


def cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK -> RGB through the image's ICC profile to sRGB, or Pillow's plain formula with a warning."""
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImportError, OSError, ValueError) as exc:  # ImageCms.PyCMSError is an OSError
            logger.warning("CMYK image: its ICC profile cannot be used (%s); converting without it", exc)
    logger.warning("CMYK image without a usable ICC profile: converted to RGB with a plain formula "
                   "(colours may shift; convert it to RGB in an editor that knows its profile for exact colours)")
    return img.convert("RGB")


def array_to_tensor(arr: np.ndarray, icc: bytes | None = None) -> tuple[Tensor, Tensor | None, ImageInfo]:
    """(H, W, C) uint16, C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA -> (rgb, alpha, info), 16 bits kept."""
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[-1]
    v = torch.from_numpy((arr.astype(np.float64) / 65535.0).astype(np.float32)).permute(2, 0, 1)[None]
    colour, alpha = (v[:, :c - 1], v[:, c - 1:]) if c in (2, 4) else (v, None)
    rgb = colour.expand(1, 3, *colour.shape[-2:]).contiguous() if colour.shape[1] == 1 else colour
    mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[c]
    return rgb, alpha, ImageInfo(mode=mode, grayscale=c <= 2, sixteen_bit=True, icc=icc)


def tensor_to_array16(x: Tensor, alpha: Tensor | None, grayscale: bool) -> np.ndarray:
    """(1,3,H,W) [0,1] (+ alpha) -> (H, W, C) uint16, gray as the channel mean."""
    y = x.detach().float().clamp(0, 1)[0].cpu()
    planes = [y.mean(0, keepdim=True)] if grayscale else [y]
    if alpha is not None:
        planes.append(alpha.detach().float().clamp(0, 1).reshape(1, *alpha.shape[-2:]).cpu())
    return (torch.cat(planes).permute(1, 2, 0).double().numpy() * 65535).round().astype(np.uint16)


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
    if info is not None and info.icc:
        img.info["icc_profile"] = info.icc
    return img


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file, decoded and turned upright by its EXIF orientation; errors name the file.

    A header that declares more pixels than Pillow's decompression-bomb limit is refused before
    any pixel is decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the memory check decides
            img = Image.open(path)
        with img:
            img.load()
            return upright(img)
    except Image.DecompressionBombError:
        raise ImageInputError(f"{path}: its header declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; "
                              "refusing to decode it (a corrupt or malicious file, or an image too big to "
                              "process)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageInputError(f"{path}: cannot decode image ({exc})") from None


def upright(img: Image.Image) -> Image.Image:
    """``img`` rotated/flipped as its EXIF orientation tag says (as image viewers show it)."""
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError):  # unreadable EXIF: take the pixels as stored
        return img
    return ImageOps.exif_transpose(img) if orientation not in (None, 1) else img


def load_image(path: str | os.PathLike) -> tuple[Tensor, Tensor | None, ImageInfo]:
    """Read an image file as (rgb, alpha, info) (see :func:`pil_to_tensor`); errors name the file.

    16-bit colour PNGs, which Pillow would reduce to 8 bits, are read by :mod:`gendr_core.png16`."""
    try:
        if Path(path).is_file() and png16_info(path) is not None:
            return array_to_tensor(*read_png16(path))
        if Path(path).is_file() and tiff16_info(path):
            return array_to_tensor(*read_tiff16(path))
        return pil_to_tensor(open_image(path))
    except ImageInputError as exc:
        text = str(exc)
        raise ImageInputError(text if text.startswith(str(path)) else f"{path}: {text}") from None


def save_image(path: str | os.PathLike, x: Tensor, alpha: Tensor | None = None, info: ImageInfo | None = None,
               **save_kwargs) -> Path:
    """Write a (1,3,H,W) result atomically as its input was: gray stays gray, a 16-bit input gives a
    16-bit PNG (other formats are 8-bit), the input's ICC profile is embedded."""
    path = Path(path)
    suffix = path.suffix.lower()
    if info is not None and info.sixteen_bit and suffix in (".png", ".tif", ".tiff"):
        arr = tensor_to_array16(x, alpha, info.grayscale)
        write = write_png16 if suffix == ".png" else write_tiff16
        atomic_write(path, lambda tmp: write(tmp, arr, info.icc))
        return path
    return save_image_atomic(tensor_to_pil(x, alpha, info), path, **save_kwargs)


def save_image_atomic(img: Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Save ``img`` to a temp file beside ``path`` and rename: no half-written outputs."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageInputError(f"{path}: unknown output image extension {path.suffix!r}")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    if img.info.get("icc_profile") and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        save_kwargs.setdefault("icc_profile", img.info["icc_profile"])
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **save_kwargs))
    return path
