"""The frozen representation encoder E of REPA (GenDR Eq. 3, Algorithms 1-2): a DINOv2 vision
transformer, read from a user-supplied local safetensors state dict (nothing is downloaded).

Architecture (the one the file must hold; ``ViTConfig``): DINOv2's ViT-S/B/L with a plain MLP
(not ViT-g's SwiGLU) and without register tokens. State-dict keys as the DINOv2 release writes them::

    cls_token (1,1,D)   pos_embed (1,1+G*G,D)   mask_token (1,D) [ignored]
    patch_embed.proj.{weight (D,3,P,P), bias}
    blocks.<i>.norm1.{weight,bias}  blocks.<i>.attn.qkv.{weight (3D,D),bias}  blocks.<i>.attn.proj.{weight,bias}
    blocks.<i>.ls1.gamma (D)  blocks.<i>.norm2.{weight,bias}  blocks.<i>.mlp.fc1/fc2.{weight,bias}  blocks.<i>.ls2.gamma
    norm.{weight,bias}

DINOv2-B/14: D = 768, 12 blocks, 12 heads, P = 14, G = 37 (518-px pre-training grid). The position
embedding is resized bicubically to the input's patch grid (as DINOv2 does). Inputs are images in
[0, 1], resized to ``image_size`` (REPA feeds 224 px for 256-px images) and ImageNet-normalised;
the output is the final-norm patch tokens as a (B,D,g,g) map (the class token is dropped), which
:func:`gendr_core.losses.repa_loss` compares token by token with the projected UNet features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import JSONConfig
from ..errors import CheckpointFormatError, ConfigError, ImageInputError

logger = logging.getLogger(__name__)

__all__ = ["ViTConfig", "DinoEncoder", "DINOV2_VITB14", "load_dino_encoder"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig(JSONConfig):
    dim: int = 768
    depth: int = 12
    heads: int = 12
    patch_size: int = 14
    pretrain_grid: int = 37  # positions of pos_embed per side (518 / 14)
    mlp_ratio: float = 4.0
    image_size: int = 224  # the encoder's input side (a multiple of patch_size)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"ViTConfig.dim={self.dim} must be divisible by heads={self.heads}")
        if min(self.depth, self.patch_size, self.pretrain_grid, self.image_size) < 1:
            raise ConfigError(f"ViTConfig: depth, patch_size, pretrain_grid, image_size must be >= 1 ({self})")
        if self.image_size % self.patch_size:
            raise ConfigError(f"ViTConfig.image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")


DINOV2_VITB14 = ViTConfig()


class _Block(nn.Module):
    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.LayerNorm(c.dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(c.dim, 3 * c.dim)
        self.attn.proj = nn.Linear(c.dim, c.dim)
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(c.dim))
        self.norm2 = nn.LayerNorm(c.dim, eps=1e-6)
        hidden = int(c.dim * c.mlp_ratio)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(c.dim, hidden)
        self.mlp.fc2 = nn.Linear(hidden, c.dim)
        self.ls2 = nn.Module()
        self.ls2.gamma = nn.Parameter(torch.ones(c.dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B,heads,N,D/heads)
        x = x + self.ls1.gamma * self.attn.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.ls2.gamma * self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class DinoEncoder(nn.Module):
    """Frozen ViT ``E``: ``forward(x)`` (B,3,H,W) in [0,1] -> patch features (B,D,g,g),
    g = image_size / patch_size. Always in eval mode, no parameter requires a gradient."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.pretrain_grid**2, c.dim))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, c.dim, c.patch_size, stride=c.patch_size)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> DinoEncoder:
        return super().train(False)

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> DinoEncoder:
        """Random weights (tests and tiny runs only: the features are then not DINOv2's)."""
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ImageInputError(f"DINOv2 encoder input must be (B,3,H,W), got {tuple(x.shape)}")
        c = self.config
        dtype = self.patch_embed.proj.weight.dtype
        x = F.interpolate(x.float(), size=(c.image_size, c.image_size), mode="bicubic", align_corners=False)
        x = ((x - self.mean) / self.std).to(dtype)
        tok = self.patch_embed.proj(x)  # (B,D,g,g)
        b, d, g, _ = tok.shape
        pos = self.pos_embed[:, 1:].reshape(1, c.pretrain_grid, c.pretrain_grid, d).permute(0, 3, 1, 2)
        if g != c.pretrain_grid:
            pos = F.interpolate(pos.float(), size=(g, g), mode="bicubic", align_corners=False).to(dtype)
        seq = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1),
                         (tok + pos).flatten(2).transpose(1, 2)], dim=1)  # (B,1+g*g,D)
        for blk in self.blocks:
            seq = blk(seq)
        return self.norm(seq)[:, 1:].transpose(1, 2).reshape(b, d, g, g)


def load_dino_encoder(path: str | Path, config: ViTConfig = DINOV2_VITB14) -> DinoEncoder:
    """A :class:`DinoEncoder` from a local safetensors state dict of the documented layout
    (``mask_token`` and a ``teacher.``/``backbone.`` prefix are tolerated)."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"DINOv2 weights not found: {path} (give a local .safetensors state dict of "
                                "DINOv2 ViT-B/14, e.g. converted once from the official release)")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointFormatError(f"{path}: the DINOv2 encoder is read from a .safetensors state dict only")
    sd = load_file(str(path))
    for prefix in ("teacher.backbone.", "backbone.", "teacher."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    sd.pop("mask_token", None)
    if any(k.startswith("register_tokens") for k in sd):
        raise CheckpointFormatError(f"{path}: a DINOv2 with register tokens; use the plain ViT (no registers)")
    enc = DinoEncoder(config)
    own = enc.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointFormatError(
            f"{path}: not a DINOv2 state dict of {config} ({len(missing)} missing e.g. {missing[:3]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:3]}, wrong shapes {bad[:3]})")
    enc.load_state_dict({k: v.float() for k, v in sd.items()})
    logger.info("DINOv2 encoder: %s (dim %d, %d blocks, %d-px input)", path, config.dim, config.depth,
                config.image_size)
    return enc

