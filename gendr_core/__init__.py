"""gendr_core: one-step pixel-space restoration and upscaling (GenDR-Pix, GenDR, DFOSD)."""

from __future__ import annotations

import torch as _torch

from .checkpoint import DEFAULT_MODEL, SHIPPED_MODELS, describe, load_model, read_header, save_model
from .config import DFOSDConfig, FixModConfig, GenDRConfig, GenDRPixConfig, UNetConfig, VAEConfig
from .errors import CheckpointFormatError, ConfigError, GenDRPixError, ImageInputError
from .models import DFOSD, FixMod, GenDRPix, GenDRTeacher, OneStepRestorer, build_model
from .pipeline import post_fix, restore_grid, upscale

if tuple(int(p) for p in _torch.__version__.split("+")[0].split(".")[:2]) < (2, 1):
    raise ImportError(f"gendr_core needs torch >= 2.1, found {_torch.__version__}")

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DFOSD",
    "CheckpointFormatError",
    "ConfigError",
    "DFOSDConfig",
    "FixMod",
    "FixModConfig",
    "GenDRConfig",
    "GenDRPix",
    "GenDRPixConfig",
    "GenDRPixError",
    "GenDRTeacher",
    "ImageInputError",
    "OneStepRestorer",
    "SHIPPED_MODELS",
    "UNetConfig",
    "VAEConfig",
    "build_model",
    "describe",
    "load_model",
    "post_fix",
    "read_header",
    "restore_grid",
    "save_model",
    "upscale",
]
