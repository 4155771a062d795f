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
# ncnn upscaler to 1 level in 8 bits (trainers/README.md, "Teachers").
PREPAD = 10


class Teacher(nn.Module):
    """Frozen LQ -> HQ restorer. Stays in eval mode and never requires gradients."""

    def __init__(self, model: nn.Module, name: str, native_scale: int | None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.native_scale = native_scale  # None: works on the output grid at any scale (our models)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @torch.no_grad()
    def restore(self, lq: Tensor, size: tuple[int, int]) -> Tensor:
        """(B,3,h,w) in [0,1] -> (B,3,H,W) = ``size``, clamped to [0,1]."""
        size = (int(size[0]), int(size[1]))
        if self.native_scale is None:
            from .pipeline import restore_grid

            grid = resize(lq.float(), size, "bicubic")
            return restore_grid(grid, self.model, tile="off").float().clamp_(0.0, 1.0)
        s, p = self.native_scale, PREPAD
        h, w = lq.shape[-2:]
        mode = "reflect" if min(h, w) > p else "replicate"
        dtype = next(self.model.parameters()).dtype
        x = F.pad(lq.to(dtype), (p, p, p, p), mode=mode)
        y = self.model(x)[..., p * s : (p + h) * s, p * s : (p + w) * s].float()
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
            "next to a torchvision that matches your torch"
        ) from None
    try:
        desc = spandrel.ModelLoader(device=device).load_from_file(str(path))
    except Exception as exc:
        raise CheckpointFormatError(f"spandrel cannot load teacher '{path}': {exc}") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.input_channels != 3 or desc.output_channels != 3:
        raise CheckpointFormatError(
            f"teacher '{path}' is a {desc.architecture.name} model with {desc.input_channels}->{desc.output_channels} "
            "channels; a teacher must be a single-image RGB restorer/upscaler"
        )
    if desc.purpose not in ("SR", "Restoration"):
        raise CheckpointFormatError(f"teacher '{path}' is a {desc.purpose} model ({desc.architecture.name}); "
                                    "a teacher must be a super-resolution or restoration model")
    net = desc.model.to(device=device, dtype=dtype)
    logger.info("teacher %s: %s x%d (spandrel)", path.name, desc.architecture.name, desc.scale)
    return Teacher(net, f"{path.stem} ({desc.architecture.name} x{desc.scale})", int(desc.scale))


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
