"""16-bit colour PNG read and write, which Pillow reduces to 8 bits (it has no 48/64-bit mode).

Only what Pillow lacks: 16-bit RGB, RGBA and gray+alpha PNGs (colour types 2, 6, 4), not
interlaced. Rows are unfiltered with the five PNG filters (PNG spec, section 9) along
anti-diagonals: pixel (y, x) depends on its left, upper and upper-left neighbours only, so
every pixel of one anti-diagonal is reconstructed in one vectorised step (H + W - 1 steps).
Written files use filter 0 on every row and carry the input's ICC profile when one is given.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ImageInputError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
OURS = (2, 4, 6)  # the 16-bit colour types Pillow cannot keep


def _chunks(data: bytes):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        yield kind, data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IEND":
            return


def png16_info(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    """(width, height, colour type, interlace) of a 16-bit PNG of a type Pillow cannot keep, else None."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or not head.startswith(SIGNATURE) or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return (w, h, ctype, interlace) if depth == 16 and ctype in OURS else None


def read_png16(path: str | os.PathLike) -> tuple[np.ndarray, bytes | None]:
    """A 16-bit colour PNG as (H, W, C) uint16 and its ICC profile (or None)."""
    path = Path(path)
    data = path.read_bytes()
    info = png16_info(path)
    if info is None:
        raise ImageInputError(f"{path}: not a 16-bit RGB/RGBA/gray+alpha PNG")
    w, h, ctype, interlace = info
    if interlace:
        raise ImageInputError(f"{path}: interlaced 16-bit PNGs are not supported; save it without interlacing "
                              "(Adam7 off) to keep its 16 bits")
    idat, icc = [], None
    for kind, body in _chunks(data):
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"iCCP":
            name_end = body.index(b"\0")
            icc = zlib.decompress(body[name_end + 2:])
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ImageInputError(f"{path}: corrupt PNG data ({exc})") from None
    bpp = 2 * CHANNELS[ctype]
    stride = 1 + w * bpp
    if len(raw) < h * stride:
        raise ImageInputError(f"{path}: truncated PNG ({len(raw)} of {h * stride} bytes of pixel data)")
    rows = np.frombuffer(raw[:h * stride], np.uint8).reshape(h, stride)
    pixels = unfilter(rows[:, 0], rows[:, 1:].reshape(h, w, bpp))
    return pixels.view(">u2").reshape(h, w, CHANNELS[ctype]).astype(np.uint16), icc


def unfilter(ftype: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Undo PNG filtering: ``ftype`` (H,) filter per row, ``filtered`` (H, W, bpp) bytes -> (H, W, bpp) uint8."""
    if ftype.max(initial=0) > 4:
        raise ImageInputError(f"corrupt PNG: filter type {int(ftype.max())} (0-4 allowed)")
    h, w, bpp = filtered.shape
    out = np.zeros((h + 1, w + 1, bpp), np.int16)  # a zero row above and a zero column left of the image
    src = filtered.astype(np.int16)
    ft = ftype.astype(np.int16)
    for t in range(h + w - 1):
        ys = np.arange(max(0, t - w + 1), min(h, t + 1))
        xs = t - ys
        a, b, c = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]  # left, up, upper-left
        f = ft[ys][:, None]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[ys + 1, xs + 1] = (src[ys, xs] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def write_png16(path: str | os.PathLike, pixels: np.ndarray, icc: bytes | None = None) -> None:
    """Write (H, W) or (H, W, C) uint16 (C = 1, 2, 3 or 4) as a 16-bit PNG, filter 0, ``icc`` embedded."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.zeros((h, 1 + w * c * 2), np.uint8)
    rows[:, 1:] = pixels.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, w * c * 2)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    parts = [SIGNATURE, chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))]
    if icc:
        parts.append(chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    parts += [chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), chunk(b"IEND", b"")]
    Path(path).write_bytes(b"".join(parts))
