"""Learnable parts: the one-step restorers, the FixMod post-fix and their building blocks."""

from .fixmod import FixMod
from .restorer import DFOSD, GenDRPix, GenDRTeacher, OneStepRestorer, build_model
from .unet import build_unet, build_vae, estimate_unet_activation_bytes, widen_io

__all__ = [
    "DFOSD",
    "FixMod",
    "GenDRPix",
    "GenDRTeacher",
    "OneStepRestorer",
    "build_model",
    "build_unet",
    "build_vae",
    "estimate_unet_activation_bytes",
    "widen_io",
]
