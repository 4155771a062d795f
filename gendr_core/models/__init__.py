"""Learnable parts: the one-step restorers and their building blocks."""

from .restorer import DFOSD, GenDRPix, GenDRTeacher, OneStepRestorer, build_model
from .unet import build_unet, build_vae, estimate_unet_activation_bytes, widen_io

__all__ = [
    "DFOSD",
    "GenDRPix",
    "GenDRTeacher",
    "OneStepRestorer",
    "build_model",
    "build_unet",
    "build_vae",
    "estimate_unet_activation_bytes",
    "widen_io",
]
