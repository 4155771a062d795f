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
            mode = {1: "nearest", 3: "bicubic"}[int(ly.params[0])]
            kw = {} if mode == "nearest" else {"align_corners": False}
            outs = [F.interpolate(ins[0], scale_factor=float(ly.params[1]), mode=mode, **kw)]
        elif ly.type == "PReLU":
            a = ly.weight.view(1, -1, 1, 1)
            outs = [torch.where(ins[0] > 0, ins[0], a * ins[0])]
        elif ly.type == "PixelShuffle":
            outs = [F.pixel_shuffle(ins[0], int(ly.params[0]))]
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


def write_tiny_srvgg(tmp_path, nf=8, n_conv=2, scale=4, fp16=True, seed=0, tail=None):
    """An SRVGGNetCompact-shaped ncnn .param/.bin pair (conv+PReLU, n_conv x (conv+PReLU), conv to
    3*s^2, PixelShuffle, + nearest-upsampled input); ``tail``: a trailing bicubic resize factor.
    Returns (param, bin, [(kind, weight, bias)] in graph order)."""
    g = torch.Generator().manual_seed(seed)
    lines = ["Input input 0 1 data", "Split sp 1 2 data d0 d1"]
    items, x, n = [], "d1", 0

    def new():
        nonlocal n
        n += 1
        return f"t{n}"

    for i in range(n_conv + 2):
        cin, cout = (3 if i == 0 else nf), (3 * scale * scale if i == n_conv + 1 else nf)
        w = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
        w = w.half().float() if fp16 else w
        b = torch.randn(cout, generator=g) * 0.01
        y = new()
        lines.append(f"Convolution conv{i} 1 1 {x} {y} 0={cout} 1=3 4=1 5=1 6={w.numel()}")
        items.append(("conv", w, b))
        x = y
        if i <= n_conv:
            y = new()
            lines.append(f"PReLU prelu{i} 1 1 {x} {y} 0={nf}")
            items.append(("prelu", torch.rand(nf, generator=g) * 0.3, None))
            x = y
    y = new()
    lines.append(f"PixelShuffle shuffle 1 1 {x} {y} 0={scale}")
    up = new()
    lines.append(f"Interp up 1 1 d0 {up} 0=1 1={scale:e} 2={scale:e}")
    out = new()
    lines.append(f"BinaryOp add 2 1 {y} {up} {out}")
    if tail:
        lines.append(f"Interp tail 1 1 {out} {new()} 0=3 1={tail:e} 2={tail:e}")
    param = tmp_path / "vgg.param"
    param.write_text("7767517\n" + f"{len(lines)} {n + 2}\n" + "\n".join(lines) + "\n")
    data = bytearray()
    for kind, w, b in items:
        if kind == "conv":
            data += (TAG_FP16 if fp16 else TAG_FP32).to_bytes(4, "little")
            data += w.numpy().astype(np.float16 if fp16 else np.float32).tobytes()
            data += b.numpy().astype(np.float32).tobytes()
        else:  # PReLU slopes: raw float32, no tag
            data += w.numpy().astype(np.float32).tobytes()
    binf = tmp_path / "vgg.bin"
    binf.write_bytes(bytes(data))
    return param, binf, items


@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_srvgg_conversion_is_exact(tmp_path, fp16):
    from safetensors import safe_open

    param, _, items = write_tiny_srvgg(tmp_path, fp16=fp16)
    out = convert_ncnn(param, tmp_path / "vgg.safetensors")
    with safe_open(str(out), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert sorted(sd) == sorted(["body.0.weight", "body.0.bias", "body.1.weight", "body.2.weight", "body.2.bias",
                                 "body.3.weight", "body.4.weight", "body.4.bias", "body.5.weight",
                                 "body.6.weight", "body.6.bias"])
    for i, (kind, w, b) in enumerate(items):
        assert torch.equal(sd[f"body.{i}.weight"], w)
        if kind == "conv":
            assert torch.equal(sd[f"body.{i}.bias"], b)
    assert sd["body.6.weight"].shape == (48, 8, 3, 3) and sd["body.5.weight"].shape == (8,)
    assert meta["architecture"] == "SRVGGNetCompact" and meta["scale"] == "4" and "notes" not in meta


def test_ncnn_srvgg_trailing_resize_is_noted(tmp_path):
    from safetensors import safe_open

    param, _, _ = write_tiny_srvgg(tmp_path, tail=0.5)
    out = convert_ncnn(param, tmp_path / "vgg.safetensors")
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["notes"].startswith("the ncnn graph ends with a bicubic x0.5 resize (tail)")
        assert f.get_tensor("body.6.weight").shape == (48, 8, 3, 3)  # the x4 network itself


def test_ncnn_structure_errors_name_the_layer(tmp_path):
    param, binf, _ = write_tiny_rrdb(tmp_path)
    text = param.read_text()
    (tmp_path / "e.param").write_text(text.replace("-23301=2,2.000000e-01,1.000000e+00",
                                                   "-23301=2,5.000000e-01,1.000000e+00", 1))  # first RDB sum
    layers = parse_param(tmp_path / "e.param")
    read_bin(binf, layers)
    with pytest.raises(CheckpointFormatError, match=r"e\.param.*layer rdb_0_0 \(Eltwise\).*0\.2 \* branch"):
        rrdbnet_state_dict(layers, tmp_path / "e.param")
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("Interp up0"))
    lines[i] = lines[i].replace("Interp up0", "Sigmoid up0")
    (tmp_path / "f.param").write_text("\n".join(lines) + "\n")
    layers = parse_param(tmp_path / "f.param")
    read_bin(binf, layers)
    with pytest.raises(CheckpointFormatError, match=r"f\.param.*layer up0 of type Sigmoid"):
        rrdbnet_state_dict(layers, tmp_path / "f.param")
    vparam, vbin, _ = write_tiny_srvgg(tmp_path)
    (tmp_path / "g.param").write_text(vparam.read_text().replace("0=1 1=4.000000e+00 2=4.000000e+00",
                                                                 "0=2 1=4.000000e+00 2=4.000000e+00"))
    with pytest.raises(CheckpointFormatError, match=r"g\.param.*layer up \(Interp\).*nearest x4"):
        convert_ncnn(tmp_path / "g.param", tmp_path / "g.safetensors", vbin)
    assert not (tmp_path / "g.safetensors").exists()


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


def _save_sd(module, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def test_spandrel_format_models_load_and_equal_the_module(tmp_path):
    _spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    from gendr_core.teachers import PREPAD, load_teacher

    torch.manual_seed(0)
    x = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(3))
    xp = F.pad(x, (PREPAD,) * 4, mode="reflect")
    for net, arch, s in ((ESRGAN(num_filters=8, num_blocks=1, scale=4), "ESRGAN", 4),
                         (Compact(num_feat=8, num_conv=2, upscale=2), "Compact", 2)):
        net.eval()
        teacher = load_teacher(_save_sd(net, tmp_path / f"{arch}.safetensors"))
        assert teacher.native_scale == s and arch.lower() in teacher.name.lower()
        with torch.no_grad():
            want = net(xp)[..., s * PREPAD : s * (PREPAD + 13), s * PREPAD : s * (PREPAD + 11)].clamp(0, 1)
        got = teacher.restore(x, (13 * s, 11 * s))
        assert got.shape == (2, 3, 13 * s, 11 * s) and torch.equal(got, want)
        assert not any(p.requires_grad for p in teacher.parameters())
        teacher.train()
        assert not teacher.training and not teacher.model.training


def test_spandrel_size_requirements_are_met_by_padding(tmp_path):
    _spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    from gendr_core.teachers import load_teacher

    # Real-ESRGAN x2: pixel-unshuffle by 2, then the x4 net (spandrel: in_nc 12, scale 4 -> x2, multiple of 4)
    net = ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2).eval()
    teacher = load_teacher(_save_sd(net, tmp_path / "x2.safetensors"))
    assert (teacher.native_scale, teacher.multiple_of, teacher.minimum) == (2, 4, 4)
    x = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(4))  # 33 x 31 after the pre-pad
    xp = F.pad(F.pad(x, (10,) * 4, mode="reflect"), (0, 1, 0, 3), mode="reflect")  # -> 36 x 32, multiples of 4
    with torch.no_grad():
        want = net(xp)[..., 20:46, 20:42].clamp(0, 1)
    got = teacher.restore(x, (26, 22))
    assert got.shape == (1, 3, 26, 22) and torch.equal(got, want)


def test_spandrel_converted_srvgg_matches_the_ncnn_graph(tmp_path):
    _spandrel()
    from gendr_core.teachers import load_teacher

    param, binf, _ = write_tiny_srvgg(tmp_path, scale=4)
    teacher = load_teacher(convert_ncnn(param, tmp_path / "vgg.safetensors"))
    layers = parse_param(param)
    read_bin(binf, layers)
    x = torch.rand(1, 3, 10, 9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), run_ncnn_graph(layers, x), atol=1e-6)
    assert teacher.native_scale == 4


# ----------------------------------------------------------------------------- Teacher wrapper (no spandrel)


class _NearestX2(torch.nn.Module):
    """Stand-in SR net: nearest x2, refusing inputs that break a multiple-of-8 / minimum-32 rule."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0 and min(x.shape[-2:]) >= 32
        return F.interpolate(x * self.w, scale_factor=2, mode="nearest")


def test_teacher_pads_to_size_requirements_and_tiles_exactly():
    from gendr_core.teachers import Teacher

    net = _NearestX2()
    teacher = Teacher(net, "stub", 2, minimum=32, multiple_of=8)
    x = torch.rand(1, 3, 21, 45, generator=torch.Generator().manual_seed(6))
    want = F.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.equal(teacher.restore(x, (42, 90)), want)
    assert net.seen == [(48, 72)]  # 41 x 65 (10-px pre-pad) -> padded up to the rule
    net.seen.clear()
    assert torch.equal(teacher.restore(x, (42, 90), tile=16), want)  # a local net: tiles stitch exactly
    assert net.seen == [(40, 40), (40, 40), (40, 40), (32, 40), (32, 40), (32, 40)]  # 2 x 3 tiles + context
    assert not net.w.requires_grad and not teacher.training


def test_missing_spandrel_names_the_file_and_the_fix(tmp_path, monkeypatch):
    import sys

    from gendr_core.errors import MissingDependencyError
    from gendr_core.teachers import load_teacher

    f = tmp_path / "4x_Other.pth"
    f.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel -> ImportError
    with pytest.raises(MissingDependencyError, match=r"4x_Other\.pth.*pip install spandrel.*torchvision"):
        load_teacher(f)


def test_non_sr_spandrel_models_are_refused(tmp_path, monkeypatch):
    import sys
    import types

    from gendr_core.teachers import load_teacher

    class Desc:
        def __init__(self, purpose, cin=3, cout=3):
            self.purpose, self.input_channels, self.output_channels = purpose, cin, cout
            self.architecture = types.SimpleNamespace(name="Fake")

    class ImageModelDescriptor(Desc):
        pass

    fake = types.ModuleType("spandrel")
    fake.ImageModelDescriptor = ImageModelDescriptor
    answer = {}
    fake.ModelLoader = lambda device=None: types.SimpleNamespace(load_from_file=lambda p: answer["desc"])
    monkeypatch.setitem(sys.modules, "spandrel", fake)
    f = tmp_path / "m.safetensors"
    _save_sd(torch.nn.Conv2d(1, 1, 1), f)
    for desc, msg in ((Desc("Inpainting"), "is a Inpainting model"), (ImageModelDescriptor("FaceSR"), "FaceSR"),
                      (ImageModelDescriptor("SR", cin=1, cout=1), "1->1 channels")):
        answer["desc"] = desc
        with pytest.raises(CheckpointFormatError, match=rf"m\.safetensors.*{msg}"):
            load_teacher(f)


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
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


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


def test_make_targets_resume_checks_settings_and_extends_count(tmp_path, tiny_teacher_file):
    from safetensors.torch import load_file

    from gendr_core.errors import ConfigError
    from trainers.make_teacher_targets import make_targets

    path, _ = tiny_teacher_file
    kw = dict(crop=32, scale=4, shard_size=4, batch=4)
    out = tmp_path / "t"
    first = make_targets(str(path), out, [FIXTURES], count=6, **kw)
    mtime0 = first[0].stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"shard_00000\.safetensors was made with other settings \(seed"):
        make_targets(str(path), out, [FIXTURES], count=6, seed=1, **kw)
    # a larger --count keeps complete shards and recomputes the short last one
    grown = make_targets(str(path), out, [FIXTURES], count=8, **kw)
    assert first[0].stat().st_mtime_ns == mtime0 and load_file(str(grown[1]))["hr"].shape == (4, 3, 32, 32)
    fresh = make_targets(str(path), tmp_path / "fresh", [FIXTURES], count=8, **kw)
    for a, b in zip(grown, fresh, strict=True):
        ta, tb = load_file(str(a)), load_file(str(b))
        assert all(torch.equal(ta[k], tb[k]) for k in ("hr", "lr", "xr"))
    with pytest.raises(ConfigError, match=r"shards beyond --count 4 \(shard_00001\.safetensors"):
        make_targets(str(path), out, [FIXTURES], count=4, **kw)
