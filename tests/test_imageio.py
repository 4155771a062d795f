"""Images in and out losslessly: 16-bit PNG end to end, gray stays gray, CMYK, ICC profiles, EXIF."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from gendr_core import upscale
from gendr_core.cli import main
from gendr_core.imageio import load_image, save_image
from gendr_core.models import OneStepRestorer
from gendr_core.png16 import read_png16, unfilter, write_png16


class IdentityRestorer(OneStepRestorer):
    """predict(x) == x: any change to an image comes from the I/O and the pipeline around the model."""

    kind = "gendr_pix"

    def predict(self, x, cond):
        return x

    def estimate_bytes(self, h, w, batch=1):
        return 16 * batch * h * w


@pytest.fixture
def identity(monkeypatch):
    from gendr_core.config import tiny_gendr_pix_config

    model = IdentityRestorer(tiny_gendr_pix_config()).eval()
    monkeypatch.setattr("gendr_core.checkpoint.load_model", lambda *a, **k: model)  # what the CLI loads
    return model


def ramp16(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, c)).astype(np.uint16)


def filtered_png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A 16-bit PNG written with the given filter type per row (as libpng's adaptive filtering does)."""
    h, w, c = pixels.shape
    bpp = 2 * c
    raw = pixels.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, w, bpp).astype(np.int32)
    rows = []
    for y in range(h):
        up = raw[y - 1] if y else np.zeros_like(raw[0])
        left = np.concatenate([np.zeros((1, bpp), np.int32), raw[y, :-1]])
        ul = np.concatenate([np.zeros((1, bpp), np.int32), up[:-1]])
        p = left + up - ul
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        pred = [0, left, up, (left + up) >> 1, paeth][filters[y]]
        rows.append(bytes([filters[y]]) + ((raw[y] - pred) & 0xFF).astype(np.uint8).tobytes())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ctype = {2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("c", [2, 3, 4])
def test_png16_reader_undoes_all_five_filters_exactly(tmp_path, c):
    pixels = ramp16(7, 9, c, seed=c)
    path = tmp_path / "f.png"
    path.write_bytes(filtered_png(pixels, [0, 1, 2, 3, 4, 4, 3]))
    got, icc = read_png16(path)
    assert got.dtype == np.uint16 and np.array_equal(got, pixels) and icc is None


def test_png16_writer_round_trips_and_keeps_the_profile(tmp_path):
    pixels = ramp16(5, 6, 3)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_png16(tmp_path / "w.png", pixels, icc)
    got, got_icc = read_png16(tmp_path / "w.png")
    assert np.array_equal(got, pixels) and got_icc == icc
    assert Image.open(tmp_path / "w.png").size == (6, 5)  # other readers accept the file
    with pytest.raises(Exception, match="filter type 7"):
        unfilter(np.array([7], np.uint8), np.zeros((1, 2, 6), np.uint8))


@pytest.mark.parametrize("c", [3, 4, 2])
def test_16bit_png_through_the_cli_stays_16bit_within_one_level(tmp_path, identity, c):
    pixels = ramp16(24, 20, c)
    src, out = tmp_path / "in16.png", tmp_path / "out16.png"
    write_png16(src, pixels)
    assert main(["upscale", str(src), "-o", str(out), "--scale", "1", "-q"]) == 0
    got, _ = read_png16(out)
    assert got.shape == pixels.shape and got.dtype == np.uint16
    assert int(np.abs(got.astype(np.int64) - pixels).max()) <= 1  # max error <= 1/65535


def test_16bit_through_the_api_tensor_is_lossless(tmp_path, identity):
    pixels = ramp16(16, 16, 3)
    write_png16(tmp_path / "a.png", pixels)
    x, alpha, info = load_image(tmp_path / "a.png")
    assert info.sixteen_bit and not info.grayscale and alpha is None
    y = upscale(x, identity, scale=1)
    assert float((y - x).abs().max()) <= 1 / 65535 / 2
    save_image(tmp_path / "b.png", y, None, info)
    assert np.array_equal(read_png16(tmp_path / "b.png")[0], pixels)


def test_gray_in_gray_out_with_no_colour_speckle(tiny_pix, tmp_path):
    gen = torch.Generator().manual_seed(0)
    g = torch.rand(2, 1, 20, 20, generator=gen).expand(2, 3, 20, 20).contiguous()
    mixed = torch.cat([g[:1], torch.rand(1, 3, 20, 20, generator=gen)])  # one gray, one colour image
    y = upscale(mixed, tiny_pix, scale=2, guidance=1.5)
    assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 1], y[0, 2])  # |R - G| = 0 exactly
    assert (y[1, 0] - y[1, 1]).abs().max() > 1e-3  # the colour image keeps its colour
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8), "L")
    gray.save(tmp_path / "g.png")
    x, _, info = load_image(tmp_path / "g.png")
    save_image(tmp_path / "g_out.png", upscale(x, tiny_pix, scale=2), None, info)
    assert Image.open(tmp_path / "g_out.png").mode == "L"


def test_cmyk_without_profile_becomes_rgb_with_a_warning_line(tmp_path, identity, caplog):
    src = tmp_path / "c.jpg"
    cmyk = Image.new("CMYK", (16, 12), (10, 200, 30, 5))
    cmyk.save(src, quality=100)
    out = tmp_path / "c.png"
    assert main(["upscale", str(src), "-o", str(out), "--scale", "1", "-q"]) == 0
    got = Image.open(out)
    expect = np.asarray(Image.open(src).convert("RGB")).astype(int)
    assert got.mode == "RGB" and np.abs(np.asarray(got).astype(int) - expect).max() <= 1
    warnings = [r.getMessage() for r in caplog.records if "CMYK" in r.getMessage()]
    assert len(warnings) == 1 and "converted to RGB with a plain formula" in warnings[0]


def test_icc_profile_is_carried_to_the_output(tmp_path, identity):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any non-sRGB profile bytes
    src = tmp_path / "p.png"
    Image.new("RGB", (16, 16), (30, 60, 90)).save(src, icc_profile=icc)
    for suffix in ("png", "jpg", "webp"):
        out = tmp_path / f"p_out.{suffix}"
        assert main(["upscale", str(src), "-o", str(out), "--scale", "1", "-q"]) == 0
        assert Image.open(out).info.get("icc_profile") == icc, suffix


def test_exif_orientation_is_applied_to_the_pixels(tmp_path, identity):
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = (255, 0, 0)  # left half red as stored
    src = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the stored left half ends up on top
    Image.fromarray(arr).save(src, exif=exif.tobytes())
    out = tmp_path / "o_out.png"
    assert main(["upscale", str(src), "-o", str(out), "--scale", "1", "-q"]) == 0
    got = np.asarray(Image.open(out))
    assert got.shape == (32, 16, 3)
    assert (got[:16, :, 0] == 255).all() and (got[16:, :, 0] == 0).all()


@pytest.mark.parametrize("c", [3, 4])
def test_16bit_tiff_round_trip_and_through_the_cli(tmp_path, identity, c):
    from gendr_core.tiff16 import read_tiff16, tiff16_info, write_tiff16

    pixels = ramp16(10, 13, c)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_tiff16(tmp_path / "a.tif", pixels, icc)
    assert tiff16_info(tmp_path / "a.tif")
    got, got_icc = read_tiff16(tmp_path / "a.tif")
    assert np.array_equal(got, pixels) and got_icc == icc
    if c == 3:
        assert Image.open(tmp_path / "a.tif").size == (13, 10)  # Pillow reads our file (as 8 bits)
    assert main(["upscale", str(tmp_path / "a.tif"), "-o", str(tmp_path / "b.tif"), "--scale", "1", "-q"]) == 0
    out, out_icc = read_tiff16(tmp_path / "b.tif")
    assert int(np.abs(out.astype(np.int64) - pixels).max()) <= 1 and out_icc == icc
