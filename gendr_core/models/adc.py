"""GenDR-Adc, the Stage I generator of GenDR-Pix (Algorithm 1, "Remove Encoder").

``z_g = G_theta(x_l; t, c)``: the LQ image on the output grid, mapped to [-1, 1] and x``f``
pixel-unshuffled (``(B,3,H,W) -> (B,3f^2,H/f,W/f)``, f = 8 = the VAE's factor, so the grid is the
latent grid), goes through the teacher's UNet body with a re-initialised ``3f^2``-channel input head;
the output is the HQ latent itself (B,C_latent,H/f,W/f).

Our reading of the output (Algorithm 1 is silent): the teacher computes ``x0 = (z_l - beta eps) /
alpha`` (GenDR Eq. 2), which needs the input and output in one space. GenDR-Adc's input is pixels and
its output a latent, so there is no ``z_l`` to subtract from; we read ``G_theta``'s UNet output as
``z_g`` directly (the teacher's ``conv_out`` is kept as the initialisation of that head).

:meth:`GenDRAdc.to_gendr_pix` is the Stage II hand-off (``psi <- theta``): the same weights with a
re-initialised ``3f^2``-channel output tail, as a :class:`~gendr_core.models.GenDRPix`, whose
encoder half (``conv_in`` .. mid block) is exactly ``G_theta``'s, so the one file serves Stage II as
both the student's initialisation and the frozen discriminator backbone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ..config import SD21_PROMPT_TOKENS, JSONConfig, UNetConfig, tiny_unet_config
from ..errors import ConfigError, ImageInputError
from ..ops.shuffle import unshuffle
from .restorer import GenDRPix, GenDRTeacher
from .unet import build_unet

__all__ = ["GenDRAdcConfig", "GenDRAdc", "reinit_conv", "tiny_adc_config"]


@dataclass(frozen=True)
class GenDRAdcConfig(JSONConfig):
    """GenDR-Adc: ``unet`` takes ``3 * shuffle_factor^2`` channels and returns latents."""

    unet: UNetConfig = field(default_factory=lambda: UNetConfig(in_channels=192, out_channels=16))
    shuffle_factor: int = 8
    timestep: int = 499
    prompt_tokens: int = SD21_PROMPT_TOKENS

    def __post_init__(self) -> None:
        f = self.shuffle_factor
        if f < 1:
            raise ConfigError(f"GenDRAdcConfig.shuffle_factor={f} must be >= 1")
        if self.unet.in_channels != 3 * f * f:
            raise ConfigError(f"GenDRAdcConfig: unet.in_channels={self.unet.in_channels} must be "
                              f"3*shuffle_factor^2={3 * f * f}")
        if not 0 <= self.timestep < 1000:
            raise ConfigError(f"GenDRAdcConfig.timestep={self.timestep} must be in [0, 1000)")

    @property
    def pad_multiple(self) -> int:
        return self.shuffle_factor * self.unet.downsample_factor


def tiny_adc_config() -> GenDRAdcConfig:
    """The tiny test/CPU layout (diffusers' tiny UNet, 16 latent channels)."""
    return GenDRAdcConfig(unet=tiny_unet_config(192, 16), shuffle_factor=8, prompt_tokens=4)


@torch.no_grad()
def reinit_conv(conv: nn.Conv2d, in_channels: int | None = None, out_channels: int | None = None,
                generator: torch.Generator | None = None) -> nn.Conv2d:
    """A fresh ``nn.Conv2d`` with the geometry of ``conv`` and new in/out widths, initialised as
    PyTorch initialises a new convolution (Kaiming-uniform weight with a = sqrt(5), bias uniform in
    +-1/sqrt(fan_in)) but drawn from ``generator``, so a seeded run re-initialises identically."""
    cin = conv.in_channels if in_channels is None else in_channels
    cout = conv.out_channels if out_channels is None else out_channels
    new = nn.Conv2d(cin, cout, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    bias=conv.bias is not None).to(device=conv.weight.device, dtype=conv.weight.dtype)
    nn.init.kaiming_uniform_(new.weight, a=5**0.5, generator=generator)
    if new.bias is not None:
        fan_in = cin * new.kernel_size[0] * new.kernel_size[1]
        bound = 1 / fan_in**0.5
        nn.init.uniform_(new.bias, -bound, bound, generator=generator)
    return new


class GenDRAdc(nn.Module):
    """``G_theta`` of Stage I: ``forward(x, cond=None)`` maps (B,3,H,W) in [0,1] (H, W multiples of
    ``pad_multiple``) to the latent (B,C_latent,H/f,W/f) at the fixed timestep."""

    def __init__(self, config: GenDRAdcConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = build_unet(config.unet)
        d = config.unet.cross_attention_dim
        self.prompt_pos = nn.Parameter(torch.zeros(1, config.prompt_tokens, d))

    @classmethod
    def from_teacher(cls, teacher: GenDRTeacher, shuffle_factor: int = 8,
                     generator: torch.Generator | None = None) -> GenDRAdc:
        """``theta <- mu`` (Algorithm 1): the teacher's UNet and positive prompt, copied, with a
        re-initialised ``3 f^2``-channel ``conv_in`` (:func:`reinit_conv`). The latent grid must be the
        unshuffle grid: ``shuffle_factor`` = the teacher VAE's downsampling factor."""
        vae_f = teacher.config.vae.downsample_factor
        if shuffle_factor != vae_f:
            raise ConfigError(f"GenDR-Adc: shuffle_factor={shuffle_factor} must equal the teacher VAE's factor {vae_f} "
                              "(the unshuffled pixels and the latents share one grid)")
        c = 3 * shuffle_factor**2
        cfg = GenDRAdcConfig(unet=replace(teacher.config.unet, in_channels=c), shuffle_factor=shuffle_factor,
                             timestep=teacher.config.timestep, prompt_tokens=teacher.config.prompt_tokens)
        unet = copy.deepcopy(teacher.unet).float()
        unet.conv_in = reinit_conv(unet.conv_in, in_channels=c, generator=generator)
        unet.register_to_config(in_channels=c)
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.config = cfg
        model.unet = unet.requires_grad_(True).train()
        model.prompt_pos = nn.Parameter(teacher.prompt_pos.detach().float().clone())
        return model

    @property
    def pad_multiple(self) -> int:
        return self.config.pad_multiple

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        f, m = self.config.shuffle_factor, self.pad_multiple
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2] % m or x.shape[-1] % m:
            raise ImageInputError(f"GenDR-Adc input must be (B,3,H,W) with H, W multiples of {m}, got {tuple(x.shape)}")
        dtype = self.unet.conv_in.weight.dtype
        z = unshuffle(x.to(dtype) * 2 - 1, f)  # (B,3,H,W) -> (B,3f^2,H/f,W/f)
        cond = self.prompt_pos if cond is None else cond
        cond = cond.to(dtype).expand(z.shape[0], -1, -1) if cond.shape[0] == 1 else cond.to(dtype)
        t = torch.full((z.shape[0],), self.config.timestep, device=z.device, dtype=torch.long)
        return self.unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]  # z_g (B,C_lat,H/f,W/f)

    @torch.no_grad()
    def to_gendr_pix(self, generator: torch.Generator | None = None, **pix_fields) -> GenDRPix:
        """``psi <- theta`` (Algorithm 1, Stage II): a :class:`GenDRPix` with every weight of this model
        except ``conv_out``, which is re-initialised with ``3 f^2`` outputs (:func:`reinit_conv`). Both
        prompt embeddings start as this model's positive one; ``pix_fields`` set other
        ``GenDRPixConfig`` fields (pads, guidance)."""
        from ..config import GenDRPixConfig

        c = 3 * self.config.shuffle_factor**2
        pix_cfg = GenDRPixConfig(unet=replace(self.config.unet, out_channels=c),
                                 shuffle_factor=self.config.shuffle_factor, timestep=self.config.timestep,
                                 prompt_tokens=self.config.prompt_tokens, **pix_fields)
        pix = GenDRPix(pix_cfg)
        sd = {k: v for k, v in self.unet.state_dict().items() if not k.startswith("conv_out.")}
        missing, unexpected = pix.unet.load_state_dict(sd, strict=False)
        if unexpected or sorted(missing) != ["conv_out.bias", "conv_out.weight"]:
            raise ConfigError(f"GenDR-Adc -> GenDR-Pix: unexpected key mismatch (missing {missing}, "
                              f"unexpected {unexpected})")
        pix.unet.conv_out = reinit_conv(self.unet.conv_out, out_channels=c, generator=generator)
        pix.prompt_pos.copy_(self.prompt_pos.float())
        pix.prompt_neg.copy_(self.prompt_pos.float())
        return pix
