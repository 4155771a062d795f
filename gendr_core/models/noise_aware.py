"""DFOSD's noise-aware discriminator (NAD), DFOSD Sec. 3.2, Eq. 2-4.

``D(F(z, t))``: a latent ``z`` (the generator's z^_H or the HR latent z_H) is forward-diffused to a
random step t (Eq. 4, ``F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) eps``), run through the down
blocks and the mid block of an SD UNet (initialised from the pretrained UNet, LoRA rank 16 /
alpha 16 on those blocks only, Sec. 4.1) and mapped by a randomly initialised MLP to one realism
logit per position of the mid-block map ("realism scores for different regions", Fig. 2).
The losses are the softplus pair of :mod:`gendr_core.losses.adversarial` on these logits: Eq. 2
``-log D`` is ``softplus(-logit)``; Eq. 3 as printed feeds ``F(z_H, t)`` to both terms, which we
read as a typo for ``log(1 - D(F(z^_H, t))) - log D(F(z_H, t))`` (the generated latent is the
negative, as Sec. 3.4 says).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ImageInputError
from ..ops.diffusion import forward_diffuse, sample_timesteps, scaled_linear_alphas_cumprod
from .lora import LoRAConfig, add_lora_adapter, adapter_parameters
from .unet_features import encoder_features

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

__all__ = ["DFOSD_LORA", "NoiseAwareDiscriminator"]

#: DFOSD Sec. 4.1: "setting both the rank and scaling factor alpha of LoRA to 16".
DFOSD_LORA = LoRAConfig(rank=16, alpha=16.0)


class NoiseAwareDiscriminator(nn.Module):
    """NAD of DFOSD: UNet down + mid blocks (frozen base + LoRA ``"nad"``) and a per-position MLP head.

    ``unet`` is taken over (load a separate copy of the SD UNet for it; the generator has its own):
    its up blocks and output layers are dropped, its weights frozen, and LoRA is injected into the
    down and mid blocks only (``conv_in`` and the time embedding stay frozen). Trainable:
    :meth:`trainable_parameters` = LoRA + head.

    ``forward(z, cond, t=None, noise=None, generator=None)`` -> (logits (B,1,h/2^(n-1),w/2^(n-1)),
    t (B,)). Missing ``t`` is drawn uniformly from ``{t_min, ..., t_max}`` = {0, ..., 999} (DFOSD's
    ``t ~ [0, T]``, T = 1000 steps, 0-indexed), missing ``noise`` from N(0, I), both with
    ``generator``. The timestep also enters the UNet's time embedding: that is what makes the
    discriminator noise-aware. ``cond`` is the text conditioning the UNet cross-attends to (DFOSD has
    no prompt: pass the generator's learned embedding, detached).
    """

    def __init__(self, unet: UNet2DConditionModel, lora: LoRAConfig = DFOSD_LORA, head_hidden: int = 256,
                 t_min: int = 0, t_max: int = 999, alphas_cumprod: Tensor | None = None) -> None:
        super().__init__()
        if unet.mid_block is None:
            raise ConfigError("NoiseAwareDiscriminator needs a UNet with a mid block (DFOSD reads its output)")
        if not 0 <= t_min <= t_max < 1000:
            raise ConfigError(f"NoiseAwareDiscriminator: need 0 <= t_min={t_min} <= t_max={t_max} < 1000")
        if head_hidden < 1:
            raise ConfigError(f"NoiseAwareDiscriminator: head_hidden={head_hidden} must be >= 1")
        unet.up_blocks = nn.ModuleList()  # the decoder half is never run: free it
        unet.conv_norm_out = unet.conv_act = unet.conv_out = None
        unet.requires_grad_(False)
        add_lora_adapter(unet, "nad", lora, scope=("down_blocks", "mid_block"))
        self.unet = unet
        self.lora_config = lora
        width = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(nn.Conv2d(width, head_hidden, 1), nn.SiLU(), nn.Conv2d(head_hidden, 1, 1))
        self.t_min, self.t_max = t_min, t_max
        self.alphas_cumprod = (scaled_linear_alphas_cumprod() if alphas_cumprod is None
                               else alphas_cumprod.detach().to(torch.float64))
        self.depth = len(unet.down_blocks) + 1  # the mid block output

    def lora_parameters(self) -> list[nn.Parameter]:
        return adapter_parameters(self.unet, "nad")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA of the down/mid blocks + the MLP head (what the discriminator optimiser gets)."""
        return self.lora_parameters() + list(self.head.parameters())

    def sample_t(self, batch: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        return sample_timesteps(batch, self.t_min, self.t_max, generator, device)

    def forward(self, z: Tensor, cond: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if z.dim() != 4 or z.shape[1] != self.unet.config.in_channels:
            raise ImageInputError(f"NoiseAwareDiscriminator: expected latents (B,{self.unet.config.in_channels},h,w), "
                                  f"got {tuple(z.shape)}")
        b = z.shape[0]
        if t is None:
            t = self.sample_t(b, generator).to(z.device)
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        z_t = forward_diffuse(z, t, noise, self.alphas_cumprod)  # F(z, t), Eq. 4
        (mid,) = encoder_features(self.unet, z_t, t, cond, depths=(self.depth,))  # (B,C_mid,h',w')
        return self.head(mid.to(self.head[0].weight.dtype)), t  # (B,1,h',w')
