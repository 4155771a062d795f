"""gendr_core: one-step pixel-space restoration and upscaling (GenDR-Pix, GenDR, DFOSD)."""

from __future__ import annotations

import torch as _torch

from .checkpoint import describe, load_model, read_header, save_model
from .config import DFOSDConfig, GenDRConfig, GenDRPixConfig, UNetConfig, VAEConfig
from .errors import CheckpointFormatError, ConfigError, GenDRPixError, ImageInputError
from .models import DFOSD, GenDRPix, GenDRTeacher, OneStepRestorer, build_model
from .pipeline import restore_grid, upscale

if tuple(int(p) for p in _torch.__version__.split("+")[0].split(".")[:2]) < (2, 1):
    raise ImportError(f"gendr_core needs torch >= 2.1, found {_torch.__version__}")

__version__ = "0.1.0"

__all__ = [
    "DFOSD",
    "CheckpointFormatError",
    "ConfigError",
    "DFOSDConfig",
    "GenDRConfig",
    "GenDRPix",
    "GenDRPixConfig",
    "GenDRPixError",
    "GenDRTeacher",
    "ImageInputError",
    "OneStepRestorer",
    "UNetConfig",
    "VAEConfig",
    "build_model",
    "describe",
    "load_model",
    "read_header",
    "restore_grid",
    "save_model",
    "upscale",
]
