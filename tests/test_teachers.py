"""Teachers: ncnn RRDBNet conversion (exact), spandrel loading, our files as teachers, target shards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gendr_core.errors import CheckpointFormatError
from gendr_core.ncnn import TAG_FP16, TAG_FP32, convert_ncnn, parse_param, read_bin, rrdbnet_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# ----------------------------------------------------------------------------- a tiny synthetic ncnn RRDBNet


def write_tiny_rrdb(tmp_path, blocks=1, nf=8, gc=4, ups=2, fp16=True, seed=0, slope=0.2):
    """Write an RRDBNet-shaped ncnn .param/.bin pair with known weights; returns (param, bin, convs)
    where convs is the list of (name, weight, bias) in graph order."""
    g = torch.Generator().manual_seed(seed)
    lines, convs, blob = [], [], [0]

    def new():
        blob[0] += 1
        return f"b{blob[0]}"

    def conv(name, src, cin, cout, leaky):
        w = (torch.randn(cout, cin, 3, 3, generator=g) * 0.1)
        b = torch.randn(cout, generator=g) * 0.01
        if fp16:
            w = w.half().float()
        out = new()
        act = f" 9=2 -23310=1,{slope:e}" if leaky else ""
        lines.append(f"Convolution {name} 1 1 {src} {out} 0={cout} 1=3 4=1 5=1 6={w.numel()}{act}")
        convs.append((name, w, b))
        return out

    def split(src, n):
        outs = [new() for _ in range(n)]
        lines.append(f"Split sp_{src} 1 {n} {src} {' '.join(outs)}")
        return outs

    def add(a, b, name):
        out = new()
        lines.append(f"Eltwise {name} 2 1 {a} {b} {out} 0=1 -23301=2,2.000000e-01,1.000000e+00")
        return out

    lines.append("Input input 0 1 data")
    first = conv("conv_first", "data", 3, nf, False)
    trunk_in, x = split(first, 2)
    for bi in range(blocks):
        block_in = x
        for r in range(3):
            rdb_in, skip = split(block_in if r == 0 else x, 2)
            feats = [rdb_in]
            for c in range(1, 6):
                cat_in = feats[0] if c == 1 else new()
                if c > 1:
                    lines.append(f"Concat cat_{bi}_{r}_{c} {len(feats)} 1 {' '.join(feats)} {cat_in}")
                out = conv(f"c_{bi}_{r}_{c}", cat_in, nf + (c - 1) * gc, gc if c < 5 else nf, c < 5)
                feats.append(out)
            x = add(feats[-1], skip, f"rdb_{bi}_{r}")
        x = add(x, block_in, f"rrdb_{bi}")
    body = conv("conv_body", x, nf, nf, False)
    out = new()
    lines.append(f"BinaryOp trunk_add 2 1 {trunk_in} {body} {out}")
    x = out
    for u in range(ups):
        y = new()
        lines.append(f"Interp up{u} 1 1 {x} {y} 0=1 1=2.000000e+00 2=2.000000e+00")
        x = conv(f"conv_up{u + 1}", y, nf, nf, True)
    x = conv("conv_hr", x, nf, nf, True)
    conv("conv_last", x, nf, 3, False)
    param = tmp_path / "tiny.param"
    param.write_text("7767517\n" + f"{len(lines)} {blob[0] + 1}\n" + "\n".join(lines) + "\n")
    data = bytearray()
    for _, w, b in convs:
        data += (TAG_FP16 if fp16 else TAG_FP32).to_bytes(4, "little")
        data += w.numpy().astype(np.float16 if fp16 else np.float32).tobytes()
        data += b.numpy().astype(np.float32).tobytes()
    binf = tmp_path / "tiny.bin"
    binf.write_bytes(bytes(data))
    return param, binf, convs


def run_ncnn_graph(layers, x):
    """Reference: evaluate the ncnn graph layer by layer in torch (Convolution, Split, Concat,
    Eltwise, BinaryOp add, nearest Interp), straight from the parsed file."""
    blobs = {"data": x}
    for ly in layers:
        ins = [blobs[b] for b in ly.inputs]
        if ly.type == "Input":
            continue
        if ly.type == "Convolution":
            y = F.conv2d(ins[0], ly.weight, ly.bias, padding=int(ly.params.get(4, 0)))
            if int(ly.params.get(9, 0)) == 2:
                y = F.leaky_relu(y, ly.params[10][0])
            outs = [y]
        elif ly.type == "Split":
            outs = ins * len(ly.outputs)
        elif ly.type == "Concat":
            outs = [torch.cat(ins, 1)]
        elif ly.type == "Eltwise":
            a, b = ly.params[1]
            outs = [a * ins[0] + b * ins[1]]
        elif ly.type == "BinaryOp":
            outs = [ins[0] + ins[1]]
        elif ly.type == "Interp":
            outs = [F.interpolate(ins[0], scale_factor=2, mode="nearest")]
        else:
            raise AssertionError(ly.type)
        blobs.update(zip(ly.outputs, outs, strict=True))
    return blobs[layers[-1].outputs[0]]


@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_rrdbnet_conversion_is_exact(tmp_path, fp16):
    param, binf, convs = write_tiny_rrdb(tmp_path, blocks=2, fp16=fp16)
    out = convert_ncnn(param, tmp_path / "tiny.safetensors")
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    names = ["conv_first"] + [f"body.{b}.rdb{r}.conv{c}" for b in range(2) for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    assert sorted(sd) == sorted([f"{n}.{p}" for n in names for p in ("weight", "bias")])
    for n, (_, w, b) in zip(names, convs, strict=True):
        assert torch.equal(sd[f"{n}.weight"], w) and torch.equal(sd[f"{n}.bias"], b)
    assert sd["body.1.rdb3.conv4.weight"].shape == (4, 8 + 3 * 4, 3, 3)
    assert "BSD-3-Clause" in meta["licence"] and len(meta["source_bin_sha256"]) == 64


def test_ncnn_malformed_files_are_named(tmp_path):
    param, binf, _ = write_tiny_rrdb(tmp_path)
    data = binf.read_bytes()
    binf.write_bytes(data[:-100])
    with pytest.raises(CheckpointFormatError, match=r"tiny\.bin.*conv_last"):
        read_bin(binf, parse_param(param))
    binf.write_bytes(data + b"\0" * 8)
    with pytest.raises(CheckpointFormatError, match="8 bytes left"):
        read_bin(binf, parse_param(param))
    binf.write_bytes(b"\x01\x02\x03\x04" + data[4:])
    with pytest.raises(CheckpointFormatError, match="storage tag 0x04030201"):
        read_bin(binf, parse_param(param))
    param2, binf2, _ = write_tiny_rrdb(tmp_path, slope=0.1)
    layers = parse_param(param2)
    read_bin(binf2, layers)
    with pytest.raises(CheckpointFormatError, match=r"c_0_0_1 .*leaky ReLU"):
        rrdbnet_state_dict(layers, param2)
    (tmp_path / "bad.param").write_text("not ncnn\n")
    with pytest.raises(CheckpointFormatError, match="bad.param.*7767517"):
        parse_param(tmp_path / "bad.param")


def test_convert_cli_writes_ncnn_model(tmp_path):
    from gendr_core.cli import main

    param, _, _ = write_tiny_rrdb(tmp_path)
    out = tmp_path / "cli.safetensors"
    assert main(["convert", str(param), "-o", str(out)]) == 0 and out.is_file()
    assert main(["convert", str(param), "-o", str(out)]) == 2  # exists, no --overwrite


# ----------------------------------------------------------------------------- spandrel (needs torchvision)


def _spandrel():
    try:
        import spandrel  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision failing to import
        pytest.skip(f"SKIPPED LOUDLY: spandrel is not importable here ({type(exc).__name__}: {exc}); "
                    "it needs a torchvision that matches torch (see trainers/README.md, 'Teachers')")


def test_spandrel_loads_converted_model_and_matches_the_ncnn_graph(tmp_path):
    _spandrel()
    from gendr_core.teachers import PREPAD, load_teacher

    param, binf, _ = write_tiny_rrdb(tmp_path, blocks=1, gc=32)  # spandrel assumes 32 growth channels
    out = convert_ncnn(param, tmp_path / "tiny.safetensors")
    teacher = load_teacher(out)
    assert teacher.native_scale == 4 and "ESRGAN" in teacher.name
    layers = parse_param(param)
    read_bin(binf, layers)
    x = torch.rand(1, 3, 14, 12, generator=torch.Generator().manual_seed(1))
    ref = run_ncnn_graph(layers, x)
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), ref, atol=1e-5)
    # restore(): reflect pre-pad by PREPAD LQ pixels, run, crop, clamp
    xp = F.pad(x, (PREPAD,) * 4, mode="reflect")
    want = run_ncnn_graph(layers, xp)[..., 4 * PREPAD : 4 * (PREPAD + 14), 4 * PREPAD : 4 * (PREPAD + 12)].clamp(0, 1)
    got = teacher.restore(x, (56, 48))
    assert got.shape == (1, 3, 56, 48) and torch.allclose(got, want, atol=1e-5)
    assert teacher.restore(x, (28, 24)).shape == (1, 3, 28, 24)  # other scales: resized
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training


# ----------------------------------------------------------------------------- our files, errors


@pytest.fixture
def tiny_teacher_file(tmp_path, tiny_pix):
    from gendr_core.checkpoint import save_model

    with torch.no_grad():
        for p in tiny_pix.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return save_model(tiny_pix, tmp_path / "tiny_teacher.safetensors"), tiny_pix


def test_our_model_file_as_teacher_equals_restore_grid(tiny_teacher_file):
    from gendr_core.ops.resize import resize
    from gendr_core.pipeline import restore_grid
    from gendr_core.teachers import load_teacher

    path, model = tiny_teacher_file
    teacher = load_teacher(path)
    assert teacher.native_scale is None
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    want = restore_grid(resize(lq, (64, 64), "bicubic"), model, tile="off").clamp(0, 1)
    got = teacher.restore(lq, (64, 64))
    assert (got - want).abs().max() < 1e-5  # same weights, a separately built module (float summation order)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_load_teacher_errors_name_the_file(tmp_path):
    from gendr_core.teachers import load_teacher

    (tmp_path / "x.param").write_text("7767517\n")
    with pytest.raises(CheckpointFormatError, match=r"x\.param.*gendr-pix convert"):
        load_teacher(tmp_path / "x.param")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_teacher(tmp_path / "missing.safetensors")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointFormatError, match=r"m\.onnx.*unsupported"):
        load_teacher(tmp_path / "m.onnx")


# ----------------------------------------------------------------------------- target shards


def test_make_targets_shards_resume_and_joint_augmentation(tmp_path, tiny_teacher_file):
    from gendr_core.data import TeacherPairShards, apply_dihedral, dihedral_flags
    from gendr_core.teachers import load_teacher
    from trainers.make_teacher_targets import make_targets

    path, _ = tiny_teacher_file
    out = tmp_path / "targets"
    shards = make_targets(str(path), out, [FIXTURES], count=6, crop=32, scale=4, shard_size=4, batch=3)
    assert [p.name for p in shards] == ["shard_00000.safetensors", "shard_00001.safetensors"]
    mtimes = [p.stat().st_mtime_ns for p in shards]
    make_targets(str(path), out, [FIXTURES], count=6, crop=32, scale=4, shard_size=4, batch=3)
    assert [p.stat().st_mtime_ns for p in shards] == mtimes  # complete shards are never recomputed
    assert json.loads((out / "manifest.json").read_text())["count"] == 6

    plain = TeacherPairShards(out, augment=False)
    assert len(plain) == 6 and plain.scale == 4
    it = plain[5]
    assert it["hr"].shape == (3, 32, 32) and it["lr"].shape == (3, 8, 8) and it["xr"].shape == (3, 32, 32)
    # xr is the teacher's output on the stored (8-bit) lr, stored in 8 bits
    xr = load_teacher(path).restore(it["lr"][None], (32, 32))[0]
    assert torch.equal(it["xr"], xr.mul(255).round().div(255))
    aug = TeacherPairShards(out, seed=3)
    for i in range(6):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([3, i]).generate_state(1)[0]))
        flags = dihedral_flags(gen)
        for k in ("hr", "lr", "xr"):
            assert torch.equal(aug[i][k], apply_dihedral(plain[i][k], flags))
    assert TeacherPairShards(out, epoch_length=10)[9]["path"] == plain[3]["path"]


def test_shard_dataset_errors(tmp_path):
    from gendr_core.data import TeacherPairShards

    with pytest.raises(FileNotFoundError, match="make_teacher_targets"):
        TeacherPairShards(tmp_path)
