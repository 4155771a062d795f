"""16-bit RGB / RGBA / gray+alpha TIFF read and write, which Pillow reduces to 8 bits.

Reads the common layout: one image, strips, chunky samples (PlanarConfiguration 1), no
compression or Deflate (Adobe or old code), horizontal-differencing predictor or none,
either byte order. Other layouts (tiles, LZW, planar) are refused with a line saying so.
Writes one uncompressed little-endian strip, with the ICC profile (tag 34675) when given.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ImageInputError

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 16: 8}
TYPE_CODES = {1: "B", 2: "B", 3: "H", 4: "I", 7: "B", 16: "Q"}


def _read_ifd(data: bytes) -> tuple[str, dict[int, tuple]]:
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        raise ImageInputError("not a TIFF file")
    (off,) = struct.unpack(order + "I", data[4:8])
    (n,) = struct.unpack(order + "H", data[off:off + 2])
    tags = {}
    for i in range(n):
        tag, typ, count = struct.unpack(order + "HHI", data[off + 2 + 12 * i:off + 10 + 12 * i])
        size = TYPE_SIZES.get(typ, 1) * count
        field = data[off + 10 + 12 * i:off + 14 + 12 * i]
        if size > 4:
            (ptr,) = struct.unpack(order + "I", field)
            field = data[ptr:ptr + size]
        if typ in TYPE_CODES:
            tags[tag] = struct.unpack(order + TYPE_CODES[typ] * count, field[:size])
        else:
            tags[tag] = (field[:size],)
    return order, tags


def tiff16_info(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a 16-bit TIFF with 2-4 samples per pixel (what Pillow cannot keep)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in (b"II*\x00", b"MM\x00*"):
        return False
    try:
        _, tags = _read_ifd(Path(path).read_bytes())
    except (ImageInputError, struct.error):
        return False
    spp = tags.get(277, (1,))[0]
    return 2 <= spp <= 4 and all(b == 16 for b in tags.get(258, (1,)))


def read_tiff16(path: str | os.PathLike) -> tuple[np.ndarray, bytes | None]:
    """A 16-bit TIFF as (H, W, C) uint16 and its ICC profile (or None)."""
    path = Path(path)
    data = path.read_bytes()
    order, tags = _read_ifd(data)
    w, h, spp = tags[256][0], tags[257][0], tags.get(277, (1,))[0]
    compression, predictor = tags.get(259, (1,))[0], tags.get(317, (1,))[0]
    unsupported = []
    if 322 in tags:
        unsupported.append("tiles")
    if tags.get(284, (1,))[0] != 1:
        unsupported.append("planar samples")
    if compression not in (1, 8, 32946):
        unsupported.append(f"compression {compression} (only none and Deflate)")
    if predictor not in (1, 2):
        unsupported.append(f"predictor {predictor}")
    if unsupported:
        raise ImageInputError(f"{path}: a 16-bit TIFF with {', '.join(unsupported)} cannot be read with its 16 bits; "
                              "save it uncompressed or with Deflate (ZIP) compression")
    strips = []
    for off, n in zip(tags[273], tags[279], strict=True):
        chunk = data[off:off + n]
        strips.append(zlib.decompress(chunk) if compression != 1 else chunk)
    raw = b"".join(strips)
    need = h * w * spp * 2
    if len(raw) < need:
        raise ImageInputError(f"{path}: truncated TIFF ({len(raw)} of {need} bytes of pixel data)")
    arr = np.frombuffer(raw[:need], order + "u2").reshape(h, w, spp).astype(np.uint16)
    if predictor == 2:  # horizontal differencing, modulo 2^16
        arr = np.cumsum(arr, axis=1, dtype=np.uint16)
    icc = tags.get(34675)
    if icc and isinstance(icc[0], bytes):
        icc = icc[0]
    return arr, bytes(icc) if icc else None


def write_tiff16(path: str | os.PathLike, pixels: np.ndarray, icc: bytes | None = None) -> None:
    """Write (H, W) or (H, W, C) uint16 as an uncompressed little-endian 16-bit TIFF."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    body = pixels.astype("<u2").tobytes()
    photometric = 2 if c >= 3 else 1
    extra = c in (2, 4)
    entries = [(256, 4, [w]), (257, 4, [h]), (258, 3, [16] * c), (259, 3, [1]), (262, 3, [photometric]),
               (273, 4, [0]), (277, 3, [c]), (278, 4, [h]), (279, 4, [len(body)]), (284, 3, [1])]
    if extra:
        entries.append((338, 3, [2]))  # unassociated alpha
    if icc:
        entries.append((34675, 7, list(icc)))
    entries.sort()
    ifd_size = 2 + 12 * len(entries) + 4
    extra_data, data_pos = b"", 8 + ifd_size
    fixed = []
    for tag, typ, values in entries:
        blob = struct.pack("<" + TYPE_CODES[typ] * len(values), *values)
        fixed.append((tag, typ, len(values), blob))
        if len(blob) > 4:
            extra_data += blob + (b"\0" if len(blob) % 2 else b"")
    pixel_pos = data_pos + len(extra_data)
    out, ptr = [b"II*\x00", struct.pack("<I", 8), struct.pack("<H", len(fixed))], data_pos
    for tag, typ, count, blob in fixed:
        if tag == 273:
            blob = struct.pack("<I", pixel_pos)
        if len(blob) > 4:
            out.append(struct.pack("<HHII", tag, typ, count, ptr))
            ptr += len(blob) + (len(blob) % 2)
        else:
            out.append(struct.pack("<HHI", tag, typ, count) + blob.ljust(4, b"\0"))
    out += [struct.pack("<I", 0), extra_data, body]
    Path(path).write_bytes(b"".join(out))
