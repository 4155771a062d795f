from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from gendr_core import save_model
from gendr_core.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def model_file(tmp_path, tiny_pix):
    return str(save_model(tiny_pix, tmp_path / "tiny.safetensors"))


def test_upscale_file_and_folder(tmp_path, model_file):
    out = tmp_path / "one.png"
    src = FIXTURES / "kodim23_crop96.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", model_file, "--scale", "2", "-q"]) == 0
    assert Image.open(out).size == (192, 192)
    folder = tmp_path / "outs"
    assert main(["upscale", str(FIXTURES), "-o", str(folder), "--model", model_file, "--scale", "1.5",
                 "--guidance", "1.8", "-q"]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["kodim03_crop80x64_x1.5.png", "kodim08_crop192_x1.5.png", "kodim19_gray64_x1.5.png",
                     "kodim23_crop96_x1.5.png"]
    assert Image.open(folder / "kodim19_gray64_x1.5.png").mode == "L"
    assert Image.open(folder / "kodim03_crop80x64_x1.5.png").size == (120, 96)


def test_never_overwrites_without_flag(tmp_path, model_file, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep me")
    rc = main(["upscale", str(FIXTURES / "kodim23_crop96.png"), "-o", str(out), "--model", model_file, "-q"])
    assert rc == 2 and out.read_bytes() == b"keep me"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(out) in err
    assert main(["upscale", str(FIXTURES / "kodim23_crop96.png"), "-o", str(out), "--model", model_file, "-q",
                 "--overwrite", "--scale", "1"]) == 0
    assert Image.open(out).size == (96, 96)


@pytest.mark.parametrize("args, needle", [
    (["upscale", "missing.png"], "input not found: missing.png"),
    (["upscale", str(FIXTURES / "kodim23_crop96.png"), "--model", "m.ckpt"], "pickle"),
    (["upscale", str(FIXTURES / "kodim23_crop96.png"), "--scale", "0"], "scale=0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle, capsys, model_file):
    if "m.ckpt" in args:
        torch.save({"x": torch.zeros(1)}, tmp_path / "m.ckpt")
        args = [a.replace("m.ckpt", str(tmp_path / "m.ckpt")) for a in args]
    elif "--model" not in args:
        args = args + ["--model", model_file]
    rc = main(args + ["-o", str(tmp_path / "x.png"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_inspect_json(model_file, capsys, tiny_pix):
    assert main(["inspect", model_file, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "gendr_pix" and info["parameters"] == sum(p.numel() for p in tiny_pix.parameters())


def test_upscale_ensemble_flag_matches_the_library(tmp_path, model_file):
    import numpy as np

    from gendr_core import load_model, upscale

    src = FIXTURES / "kodim23_crop96.png"
    out = tmp_path / "ens.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", model_file, "--scale", "2", "--ensemble", "2",
                 "-q"]) == 0
    ref = upscale(Image.open(src), load_model(model_file), scale=2, ensemble=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(ref))
    with pytest.raises(SystemExit):  # argparse rejects sizes outside 1/2/4/8
        main(["upscale", str(src), "--model", model_file, "--ensemble", "3"])


@pytest.fixture
def fixmod_file(tmp_path, tiny_pix):
    import copy

    from gendr_core.config import tiny_fixmod_config

    model = copy.deepcopy(tiny_pix)  # tiny_pix itself stays without FixMod (model_file saves it)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.attach_fixmod(tiny_fixmod_config()).parameters():
            p.normal_(0, 0.2)
    return str(save_model(model, tmp_path / "with_fixmod.safetensors"))


def test_upscale_fixmod_flag_matches_the_library(tmp_path, fixmod_file, model_file, capsys):
    import numpy as np

    from gendr_core import load_model, upscale

    src = FIXTURES / "kodim23_crop96.png"
    lib = load_model(fixmod_file)
    runs = {"default": [], "off": ["--fixmod", "off"], "wavelet": ["--fixmod", "wavelet", "--color-fix", "0.5"],
            "learned": ["--fixmod", "learned", "--color-fix", "0.5"]}
    expect = {"default": {}, "off": {"fixmod": "off"}, "wavelet": {"fixmod": "wavelet", "color_fix": 0.5},
              "learned": {"fixmod": "learned", "color_fix": 0.5}}
    outs = {}
    for name, flags in runs.items():
        out = tmp_path / f"{name}.png"
        assert main(["upscale", str(src), "-o", str(out), "--model", fixmod_file, "--scale", "2", "-q", *flags]) == 0
        outs[name] = np.asarray(Image.open(out))
        ref = upscale(Image.open(src), lib, scale=2, **expect[name])
        assert np.array_equal(outs[name], np.asarray(ref)), name
    assert not np.array_equal(outs["default"], outs["off"])  # the file's FixMod runs by default
    # 'learned' on a file without FixMod: one line naming the file, exit 2, nothing written
    capsys.readouterr()
    rc = main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", model_file, "--fixmod", "learned", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"{model_file} has no learned FixMod" in err
    assert not (tmp_path / "x.png").exists()
    rc = main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", model_file, "--fixmod", "off",
               "--color-fix", "1", "-q"])
    assert rc == 2 and "no effect with fixmod='off'" in capsys.readouterr().err


def test_inspect_shows_fixmod(fixmod_file, model_file, capsys):
    assert main(["inspect", fixmod_file]) == 0
    text = capsys.readouterr().out
    assert 'fixmod:      learned, 2,524 parameters, config {"channels": [4, 8]' in text
    assert "gendr_pix.fixmod_config" not in text  # shown once, on the fixmod line
    assert main(["inspect", fixmod_file, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fixmod"]["parameters"] == 2_524
    assert main(["inspect", model_file]) == 0
    assert "fixmod:      none" in capsys.readouterr().out


def test_model_help_lists_the_shipped_models(capsys, monkeypatch):
    from gendr_core.checkpoint import DEFAULT_MODEL, SHIPPED_MODELS

    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens: keep names such as gendr-pix-s-detail whole

    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"({', '.join(SHIPPED_MODELS)}; default {DEFAULT_MODEL})" in text
    assert "--fixmod {auto,off,wavelet,learned}" in text


# ----------------------------------------------------------------------------- one clear line for bad requests


def _png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR then claims ``width`` x ``height`` (CRC fixed up): a decompression bomb header."""
    import struct
    import zlib

    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("flags, line", [
    (["--guidance", "nan"], "gendr-pix: error: --guidance=nan must be a finite number in [0, 10]"),
    (["--scale", "inf"], "gendr-pix: error: --scale=inf must be a finite number > 0"),
    (["--scale", "-1"], "gendr-pix: error: --scale=-1.0 is out of range: it must be > 0"),
    (["--color-fix", "nan"], "gendr-pix: error: --color-fix=nan must be a finite number in [0, 1]"),
    (["--tile-overlap", "-8"], "gendr-pix: error: --tile-overlap=-8 is out of range: it must be >= 0"),
    (["--tiling", "fixed", "--tile-size", "8"], "gendr-pix: error: --tile-size=8 is too small: a tile must be "
                                                "'auto', 'off' or at least the model's pad multiple 16 pixels"),
    (["--tile-size", "64", "--tile-overlap", "64"], "gendr-pix: error: --tile-overlap=64 must be smaller than "
                                                    "--tile-size=64 (both aligned to the model's pad multiple 16: "
                                                    "tile 64); allowed --tile-overlap: 0..48"),
    (["--passes", "-2"], "gendr-pix: error: --passes=-2 is out of range: it must be in [0, 64]"),
    (["--negative-pad", "9,0,0,0", "--guidance", "1.5"], "gendr-pix: error: --negative-pad=(9, 0, 0, 0): "
                                                         "--negative-pad left=9 is out of range: it must be in "
                                                         "[0, 8]; a pad side never needs more than the model's "
                                                         "period 8 (see README, PadCFG)"),
    (["--seed", "-1"], f"gendr-pix: error: --seed=-1 is out of range: it must be in [0, {2**64 - 1}]"),
    (["--threads", "0"], "gendr-pix: error: --threads=0 is out of range: it must be in [1, 4096]"),
])
def test_numeric_flags_reject_nan_inf_and_range_naming_the_flag(tmp_path, model_file, capsys, flags, line):
    rc = main(["upscale", str(FIXTURES / "kodim23_crop96.png"), "-o", str(tmp_path / "x.png"), "--model", model_file,
               "-q", *flags])
    assert rc == 2 and capsys.readouterr().err == line + "\n" and not (tmp_path / "x.png").exists()


def test_decompression_bomb_header_is_one_line(tmp_path, model_file, capsys):
    bomb = _png_with_declared_size(tmp_path / "bomb.png", 100_000, 100_000)
    rc = main(["upscale", str(bomb), "-o", str(tmp_path / "x.png"), "--model", model_file, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"gendr-pix: error: {bomb}: its header declares more than ") and "refusing" in err


def test_cuda_device_without_cuda_is_one_line(tmp_path, model_file, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main(["upscale", str(FIXTURES / "kodim23_crop96.png"), "-o", str(tmp_path / "x.png"), "--model", model_file,
               "--device", "cuda", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("gendr-pix: error: --device cuda: no CUDA device is available") and "--device cpu" in err


def test_a_request_bigger_than_the_machine_is_refused_with_what_it_needs(tmp_path, model_file, capsys, monkeypatch):
    monkeypatch.setattr("gendr_core.pipeline.available_memory", lambda device: 8 << 30)  # 8 GiB free
    src = tmp_path / "small.png"
    Image.new("RGB", (32, 24), (120, 80, 40)).save(src)
    rc = main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", model_file, "--scale", "1000", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not (tmp_path / "x.png").exists()
    assert err.startswith(f"gendr-pix: error: {src}: a 32000x24000 output (batch 1) needs about ")
    assert "but only 8.0 GiB is free; use a smaller scale (at most " in err


def test_exif_orientation_is_honoured(tmp_path, model_file):
    src = tmp_path / "phone.jpg"
    img = Image.new("RGB", (32, 16), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise: portrait
    img.save(src, exif=exif.tobytes())
    out = tmp_path / "up.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", model_file, "--scale", "2", "-q"]) == 0
    assert Image.open(out).size == (32, 64)


def test_threads_flag_and_default(tmp_path, model_file, monkeypatch):
    import torch

    from gendr_core import checkpoint

    before = torch.get_num_threads()
    try:
        assert main(["upscale", str(FIXTURES / "kodim23_crop96.png"), "-o", str(tmp_path / "a.png"),
                     "--model", model_file, "-q", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(checkpoint, "default_threads", lambda: 6)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of one launch share the cores
        assert main(["upscale", str(FIXTURES / "kodim23_crop96.png"), "-o", str(tmp_path / "b.png"),
                     "--model", model_file, "-q"]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
