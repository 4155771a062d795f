"""Learnable parts: the one-step restorers, the FixMod post-fix, discriminators, LoRA score networks
(GenDR CiDA), the REPA projector and their building blocks."""

from .fixmod import FixMod
from .lora import LoRAConfig, ScoreNetworks, add_lora_adapter, adapter_parameters, frozen_parameters
from .noise_aware import NoiseAwareDiscriminator
from .repa import RepaProjector
from .restorer import DFOSD, GenDRPix, GenDRTeacher, OneStepRestorer, build_model
from .unet import build_unet, build_vae, estimate_unet_activation_bytes, widen_io

__all__ = [
    "DFOSD",
    "FixMod",
    "GenDRPix",
    "GenDRTeacher",
    "LoRAConfig",
    "NoiseAwareDiscriminator",
    "OneStepRestorer",
    "RepaProjector",
    "ScoreNetworks",
    "add_lora_adapter",
    "adapter_parameters",
    "build_model",
    "build_unet",
    "build_vae",
    "estimate_unet_activation_bytes",
    "frozen_parameters",
    "widen_io",
]
