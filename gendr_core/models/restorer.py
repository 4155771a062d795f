"""One-step restorers: GenDR-Pix (pixel space) and the latent GenDR / DFOSD models.

Every restorer implements ``predict(x, cond) -> y``: ``x`` is an image on the output grid,
(B,3,H,W) in [0,1] with H, W multiples of ``pad_multiple``; ``y`` has the same shape
(unclamped). ``cond`` is a (B or 1, L, D) prompt embedding. The one-step estimate is
x0 = (x_t - beta * eps(x_t; t, c)) / alpha (GenDR Eq. 2), with alpha, beta and t taken from
the model's config. A restorer may carry a learned post-fix, ``fixmod`` (GenDR-Pix Sec. A.1,
:class:`~gendr_core.models.fixmod.FixMod`), stored under ``fixmod.`` in the same model file; it
is applied by the pipeline after stitching, never inside ``predict``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..config import DFOSDConfig, FixModConfig, GenDRConfig, GenDRPixConfig, ModelConfig
from ..errors import ConfigError
from ..ops.shuffle import shuffle, unshuffle
from .fixmod import FixMod
from .unet import build_unet, build_vae, estimate_unet_activation_bytes


class OneStepRestorer(nn.Module):
    """Shared parts: UNet, fixed prompt embeddings, the one-step formula."""

    kind: ClassVar[str] = ""
    fixmod: FixMod | None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = build_unet(config.unet)
        d = config.unet.cross_attention_dim
        # Fixed positive/negative prompt embeddings, stored in the model file (GenDR Sec. 3.4).
        self.prompt_pos = nn.Parameter(torch.zeros(1, config.prompt_tokens, d), requires_grad=False)
        self.prompt_neg = nn.Parameter(torch.zeros(1, config.prompt_tokens, d), requires_grad=False)
        self.register_module("fixmod", None)  # optional learned FixMod, see attach_fixmod

    def attach_fixmod(self, fixmod: FixMod | FixModConfig | None) -> FixMod | None:
        """Attach a learned FixMod (a module, or a fresh one built from its config) on this model's
        device and dtype, or remove it with None. Its tensors then save and load with the model."""
        if isinstance(fixmod, FixModConfig):
            fixmod = FixMod(fixmod)
        if fixmod is not None:
            fixmod = fixmod.to(device=self.device, dtype=self.dtype)
        self.fixmod = fixmod
        return fixmod

    @property
    def pad_multiple(self) -> int:
        return self.config.pad_multiple

    @property
    def pad_period(self) -> int:
        """Pixels per cell of the model's input grid (pixel-unshuffle or VAE factor): pads that
        differ by a multiple of it see the same grid phase."""
        return self.config.vae.downsample_factor if hasattr(self.config, "vae") else self.config.shuffle_factor

    @property
    def max_pad(self) -> int:
        """Largest PadCFG branch pad side accepted: the period, or the model's own pads if wider."""
        return max(self.pad_period, *self.config.pos_pad, *self.config.neg_pad)

    @property
    def device(self) -> torch.device:
        return self.prompt_pos.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def resolve_embeddings(self, pos: Tensor | None = None, neg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The model's fixed embeddings, or caller-supplied ones after a shape check."""
        d = self.config.unet.cross_attention_dim
        out = []
        for name, given, own in (("positive", pos, self.prompt_pos), ("negative", neg, self.prompt_neg)):
            if given is None:
                out.append(own)
                continue
            if given.ndim == 2:
                given = given[None]
            if given.ndim != 3 or given.shape[-1] != d:
                raise ConfigError(
                    f"{name} conditioning has shape {tuple(given.shape)}, but this {self.kind} model "
                    f"expects (B, tokens, {d}) (its UNet cross_attention_dim is {d}); use conditioning "
                    "from a matching text encoder or leave it empty to use the model's own embeddings"
                )
            out.append(given.to(device=self.device, dtype=self.dtype))
        return out[0], out[1]

    def one_step(self, z: Tensor, cond: Tensor) -> Tensor:
        """x0 = (z - beta * eps) / alpha at the fixed timestep (GenDR Eq. 2)."""
        c = self.config
        t = torch.full((z.shape[0],), c.timestep, device=z.device, dtype=torch.long)
        cond = cond.to(z.dtype).expand(z.shape[0], *cond.shape[1:]) if cond.shape[0] == 1 else cond.to(z.dtype)
        eps = self.unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
        return (z - c.beta * eps) / c.alpha

    def predict(self, x: Tensor, cond: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def estimate_bytes(self, h: int, w: int, batch: int = 1) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.predict(x, self.prompt_pos if cond is None else cond)


class GenDRPix(OneStepRestorer):
    """GenDR-Pix: crop(shuffle(G(unshuffle(pad(x))))) with no VAE (GenDR-Pix Sec. 4)."""

    kind = "gendr_pix"
    config: GenDRPixConfig

    def predict(self, x: Tensor, cond: Tensor) -> Tensor:
        f = self.config.shuffle_factor
        z = unshuffle(x.to(self.dtype) * 2 - 1, f)  # (B,3,H,W) -> (B,3f^2,H/f,W/f)
        x0 = self.one_step(z, cond)
        return (shuffle(x0, f) + 1) / 2  # (B,3f^2,H/f,W/f) -> (B,3,H,W)

    def estimate_bytes(self, h: int, w: int, batch: int = 1) -> int:
        f = self.config.shuffle_factor
        el = torch.finfo(self.dtype).bits // 8
        act = estimate_unet_activation_bytes(self.config.unet, h // f, w // f, batch, el)
        return act + 4 * batch * 3 * h * w * 4  # + input/output images in fp32


class _LatentOneStep(OneStepRestorer):
    """VAE encode -> one step in latent space -> VAE decode (GenDR Fig. 4, DFOSD)."""

    config: GenDRConfig | DFOSDConfig

    def __init__(self, config: GenDRConfig | DFOSDConfig) -> None:
        super().__init__(config)
        self.vae = build_vae(config.vae)
        self.set_vae_tile(config.vae_tile)

    def set_vae_tile(self, tile: int) -> None:
        """Tiled VAE encode/decode (diffusers' own tiling) for large images; 0 turns it off."""
        if tile <= 0:
            self.vae.disable_tiling()
            return
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile
        self.vae.tile_latent_min_size = tile // self.config.vae.downsample_factor

    def encode(self, x: Tensor) -> Tensor:
        v = self.config.vae
        z = self.vae.encode(x.to(self.dtype) * 2 - 1).latent_dist.mode()
        return (z - (v.shift_factor or 0.0)) * v.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        v = self.config.vae
        y = self.vae.decode(z / v.scaling_factor + (v.shift_factor or 0.0)).sample
        return (y + 1) / 2

    def predict(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.decode(self.one_step(self.encode(x), cond))

    def estimate_bytes(self, h: int, w: int, batch: int = 1) -> int:
        f = self.config.vae.downsample_factor
        el = torch.finfo(self.dtype).bits // 8
        act = estimate_unet_activation_bytes(self.config.unet, h // f, w // f, batch, el)
        if self.config.vae_tile > 0:
            h = w = self.config.vae_tile
        # decoder levels at full resolution; factor calibrated with `gendr-pix bench --compare` (1024^2, CPU)
        vae = sum(self.config.vae.block_out_channels) * batch * h * w * el
        return max(act, vae) + 4 * batch * 3 * h * w * 4


class GenDRTeacher(_LatentOneStep):
    """GenDR: SD2.1-layout UNet on the 16-channel f8 VAE (GenDR Sec. 3.4)."""

    kind = "gendr"
    config: GenDRConfig


class DFOSD(_LatentOneStep):
    """DFOSD: SD2.1 VAE + UNet + learned text embedding (stored as ``prompt_pos``)."""

    kind = "dfosd"
    config: DFOSDConfig


MODEL_CLASSES: dict[str, type[OneStepRestorer]] = {c.kind: c for c in (GenDRPix, GenDRTeacher, DFOSD)}
CONFIG_CLASSES: dict[str, type] = {"gendr_pix": GenDRPixConfig, "gendr": GenDRConfig, "dfosd": DFOSDConfig}


def build_model(config: ModelConfig) -> OneStepRestorer:
    """The restorer class that matches the config's type."""
    if isinstance(config, GenDRPixConfig):
        return GenDRPix(config)
    if isinstance(config, GenDRConfig):
        return GenDRTeacher(config)
    if isinstance(config, DFOSDConfig):
        return DFOSD(config)
    raise ConfigError(f"no model for config type {type(config).__name__}")
