"""Teachers: frozen LQ -> HQ restorers that Stage II distils from (GenDR-Pix Alg. 1, x_r).

A teacher is loaded from a file, fully offline and without unpickling:

* this project's model files (GenDR-Pix, GenDR, DFOSD ``.safetensors``; the paper's own path:
  x_r = decode(G_mu(z_l))). The LQ image is moved onto the output grid bicubically and restored
  with :func:`gendr_core.pipeline.restore_grid`, exactly as ``gendr-pix upscale`` does;
* any single-image SR model file that **spandrel** loads (what ComfyUI keeps in
  ``models/upscale_models``: ``.safetensors``, or ``.pth`` through spandrel's restricted
  unpickler). spandrel needs a working torchvision; it is imported only here, on demand;
* ncnn ``.param/.bin`` files of the Real-ESRGAN family after ``gendr-pix convert X.param``
  (:mod:`gendr_core.ncnn`), which gives a spandrel-loadable ``.safetensors``.

``Teacher.restore(lq, size)`` maps (B,3,h,w) in [0,1] to (B,3,H,W) in [0,1] at any ``size``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointFormatError, MissingDependencyError
from .ops.resize import resize

logger = logging.getLogger(__name__)

# Reflect pre-padding of spandrel models' input, in LQ pixels, cropped off the output. The
# realesrgan-ncnn reference pads this way (10 px); with it our converted x4plus matches the
# ncnn upscaler to 1 level in 8 bits (trainers/README.md, "Teachers"). Tiles get the same
# 10 px of context from their neighbours.
PREPAD = 10


def _pad(x: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Reflect pad (B,C,h,w) where the image is larger than the pad, else replicate."""
    if not (left or right or top or bottom):
        return x
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > max(left, right, top, bottom) else "replicate"
    return F.pad(x, (left, right, top, bottom), mode=mode)


class Teacher(nn.Module):
    """Frozen LQ -> HQ restorer. Stays in eval mode and never requires gradients.

    ``native_scale``: the model's fixed scale (spandrel SR models), or None for our models, which
    work on the output grid at any scale. ``minimum``/``multiple_of``/``square``: the input size
    requirements spandrel declares for the architecture (met by padding, then cropped off).
    """

    def __init__(self, model: nn.Module, name: str, native_scale: int | None, *, minimum: int = 0,
                 multiple_of: int = 1, square: bool = False, prepad: int = PREPAD) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.native_scale = native_scale
        self.minimum, self.multiple_of, self.square, self.prepad = int(minimum), int(multiple_of), bool(square), prepad
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def _run_native(self, x: Tensor) -> Tensor:
        """The model on (B,3,h,w), padded bottom/right to the size requirements; (B,3,s*h,s*w)."""
        h, w = x.shape[-2:]
        m = self.multiple_of
        hp, wp = max(h, self.minimum), max(w, self.minimum)
        hp, wp = -(-hp // m) * m, -(-wp // m) * m
        if self.square:
            hp = wp = max(hp, wp)
        s = self.native_scale or 1
        y = self.model(_pad(x, 0, wp - w, 0, hp - h))
        return y[..., : h * s, : w * s]

    @torch.no_grad()
    def restore(self, lq: Tensor, size: tuple[int, int], tile: int | None = None) -> Tensor:
        """(B,3,h,w) in [0,1] -> (B,3,H,W) = ``size``, clamped to [0,1].

        spandrel models run at their native scale on the LQ image (reflect pre-padded by
        ``prepad``; in ``tile`` x ``tile`` LQ tiles with ``prepad`` px of context when given),
        then the output is resized bicubically to ``size`` if that differs. Our models restore
        the bicubic upscale of ``lq`` on the ``size`` grid (``tile``: LQ px, scaled to the grid).
        """
        size = (int(size[0]), int(size[1]))
        h, w = lq.shape[-2:]
        if self.native_scale is None:
            from .pipeline import restore_grid

            grid = resize(lq.float(), size, "bicubic")
            grid_tile: int | str = "off" if tile is None else max(1, round(tile * size[0] / h))
            return restore_grid(grid, self.model, tile=grid_tile).float().clamp_(0.0, 1.0)
        s, p = self.native_scale, self.prepad
        dtype = next(self.model.parameters()).dtype
        x = _pad(lq.to(dtype), p, p, p, p)
        if tile is None or (h <= tile and w <= tile):
            y = self._run_native(x)[..., p * s : (p + h) * s, p * s : (p + w) * s].float()
        else:
            y = lq.new_zeros((lq.shape[0], 3, h * s, w * s), dtype=torch.float32)
            for y0 in range(0, h, tile):
                for x0 in range(0, w, tile):
                    y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                    out = self._run_native(x[..., y0 : y1 + 2 * p, x0 : x1 + 2 * p])  # tile + p px context
                    y[..., y0 * s : y1 * s, x0 * s : x1 * s] = out[..., p * s : (p + y1 - y0) * s,
                                                                   p * s : (p + x1 - x0) * s].float()
        return resize(y.clamp_(0.0, 1.0), size, "bicubic").clamp_(0.0, 1.0)


def _is_our_model_file(path: Path) -> bool:
    if path.suffix.lower() != ".safetensors":
        return False
    from .checkpoint import KIND_KEY, _metadata

    return KIND_KEY in _metadata(path)


def _load_spandrel(path: Path, device: torch.device, dtype: torch.dtype) -> Teacher:
    try:
        import spandrel
    except Exception as exc:  # ImportError, or torchvision's RuntimeError on a mismatched build
        raise MissingDependencyError(
            f"teacher '{path}' is not a GenDR-Pix model file; other SR model files are loaded with spandrel, "
            f"which is not usable here ({type(exc).__name__}: {exc}). Install it with `pip install spandrel` "
            "(or `pip install 'gendr-pix[teachers]'`); spandrel needs a working torchvision that matches your torch"
        ) from None
    try:
        desc = spandrel.ModelLoader(device=device).load_from_file(str(path))
    except Exception as exc:
        raise CheckpointFormatError(f"spandrel cannot load teacher '{path}': {exc}") from None
    if desc.purpose not in ("SR", "Restoration") or not isinstance(desc, spandrel.ImageModelDescriptor):
        raise CheckpointFormatError(f"teacher '{path}' is a {desc.purpose} model ({desc.architecture.name}); "
                                    "a teacher must be a single-image super-resolution or restoration model")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise CheckpointFormatError(
            f"teacher '{path}' is a {desc.architecture.name} model with {desc.input_channels}->{desc.output_channels} "
            "channels; a teacher must restore RGB (3->3)"
        )
    net = desc.model.to(device=device, dtype=dtype)
    req = desc.size_requirements
    logger.info("teacher %s: %s x%d (spandrel; input size: minimum %d, multiple of %d%s)", path.name,
                desc.architecture.name, desc.scale, req.minimum, req.multiple_of, ", square" if req.square else "")
    return Teacher(net, f"{path.stem} ({desc.architecture.name} x{desc.scale})", int(desc.scale),
                   minimum=req.minimum, multiple_of=req.multiple_of, square=req.square)


def load_teacher(path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Teacher:
    """A frozen :class:`Teacher` from a file: ours, any spandrel SR file, or a converted ncnn model."""
    path = Path(path).expanduser()
    device = torch.device(device)
    if not path.is_file():
        raise FileNotFoundError(f"teacher file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".param", ".bin"):
        raise CheckpointFormatError(
            f"teacher '{path}' is an ncnn file; convert it once with "
            f"`gendr-pix convert {path.with_suffix('.param')} -o {path.with_suffix('.safetensors')}`"
        )
    if _is_our_model_file(path):
        from .checkpoint import load_model

        model = load_model(path, device=device, dtype=dtype)
        return Teacher(model, f"{path.stem} ({model.kind})", None)
    if suffix not in (".safetensors", ".pth", ".pt", ".ckpt"):
        raise CheckpointFormatError(f"teacher '{path}': unsupported file type {suffix!r}; expected .safetensors, "
                                    ".pth, or an ncnn .param converted with `gendr-pix convert`")
    return _load_spandrel(path, device, dtype)
