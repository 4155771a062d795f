"""diffusers UNet/VAE construction from our typed configs, plus a memory estimate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import UNetConfig, VAEConfig

if TYPE_CHECKING:  # diffusers is imported lazily: it costs seconds at import time
    from diffusers import AutoencoderKL, UNet2DConditionModel


def build_unet(cfg: UNetConfig) -> UNet2DConditionModel:
    """diffusers ``UNet2DConditionModel(**cfg)`` (SD2.1 layout by default)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg.diffusers_kwargs())


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg.diffusers_kwargs())


@torch.no_grad()
def widen_io(unet: UNet2DConditionModel, channels: int) -> UNet2DConditionModel:
    """Replace conv_in/conv_out of a pretrained UNet to take/give ``channels`` channels.

    Used to start a GenDR-Pix generator (192 = 3 x 8 x 8 channels) from a latent UNet:
    conv_in weights are tiled over the new input channels and divided by the repeat
    count (so a constant input gives the same response); conv_out rows are tiled.
    """
    old_in, old_out = unet.conv_in, unet.conv_out
    c_in, c_out = old_in.in_channels, old_out.out_channels
    rep_in = -(-channels // c_in)
    new_in = nn.Conv2d(channels, old_in.out_channels, old_in.kernel_size, padding=old_in.padding)
    new_in.weight.copy_(old_in.weight.repeat(1, rep_in, 1, 1)[:, :channels] / rep_in)
    new_in.bias.copy_(old_in.bias)
    rep_out = -(-channels // c_out)
    new_out = nn.Conv2d(old_out.in_channels, channels, old_out.kernel_size, padding=old_out.padding)
    new_out.weight.copy_(old_out.weight.repeat(rep_out, 1, 1, 1)[:channels])
    new_out.bias.copy_(old_out.bias.repeat(rep_out)[:channels])
    unet.conv_in, unet.conv_out = new_in, new_out
    unet.register_to_config(in_channels=channels, out_channels=channels)
    return unet


def estimate_unet_activation_bytes(cfg: UNetConfig, h: int, w: int, batch: int, bytes_per_el: int) -> int:
    """Rough peak activation memory of one no-grad UNet forward at latent size (h, w).

    Skip connections of every level are alive at once; on top of them the largest level's
    working set (ResNet temporaries, and q/k/v/out + GEGLU feed-forward where it has
    attention). Attention itself is assumed to run through a fused SDPA kernel (O(n)).
    The coefficients are conservative; ``gendr-pix bench`` measures the real peak.
    """
    skips, worst = 0, 0
    for i, (c, kind) in enumerate(zip(cfg.block_out_channels, cfg.down_block_types, strict=True)):
        n = batch * (h >> i) * (w >> i)
        skips += (cfg.layers_per_block + 1) * c * n
        work = 6 * c * n + (16 * c * n if "Attn" in kind else 0)
        worst = max(worst, work)
    io = batch * h * w * (cfg.in_channels + cfg.out_channels) * 2
    return int(1.5 * (skips + worst + io) * bytes_per_el)
