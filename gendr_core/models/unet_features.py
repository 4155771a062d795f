"""Intermediate features of a diffusers ``UNet2DConditionModel``: the encoder half (down blocks +
mid block) for discriminators on UNet features, and a hook that captures one block's output
(REPA's "after the first downsampling block", GenDR Sec. 3.1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ImageInputError

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

__all__ = [
    "encoder_depths",
    "encoder_channels",
    "encoder_features",
    "embed_timestep",
    "run_encoder_blocks",
    "capture_output",
]


def encoder_depths(unet: UNet2DConditionModel, depths: Sequence[int] | None = None) -> tuple[int, ...]:
    """Validated feature depths: 0 = ``conv_in`` output, i = output of down block i (1..n, after its
    down-sampler), n + 1 = mid block output. ``None`` = every down block and the mid block."""
    n = len(unet.down_blocks)
    deepest = n + 1 if unet.mid_block is not None else n
    if depths is None or len(depths) == 0:
        return tuple(range(1, deepest + 1))
    out = tuple(int(d) for d in depths)
    if list(out) != sorted(set(out)) or out[0] < 0 or out[-1] > deepest:
        raise ConfigError(f"UNet feature depths {list(out)} must be increasing and unique in [0, {deepest}] "
                          f"(0 = conv_in, 1..{n} = down blocks, {n + 1} = mid block)")
    return out


def encoder_channels(unet: UNet2DConditionModel, depths: Sequence[int]) -> tuple[int, ...]:
    """Channel count of the features at each depth."""
    widths = [unet.conv_in.out_channels, *unet.config.block_out_channels, unet.config.block_out_channels[-1]]
    return tuple(widths[d] for d in depths)


def encoder_features(unet: UNet2DConditionModel, sample: Tensor, timestep: Tensor, cond: Tensor,
                     depths: Sequence[int] | None = None) -> list[Tensor]:
    """Run the encoder half of ``unet`` exactly as its own forward does (time embedding at
    ``timestep``, cross-attention on ``cond``) and return the features at ``depths`` (see
    :func:`encoder_depths`); blocks deeper than the deepest requested depth are not run.

    sample: (B,C_in,h,w); timestep: (B,) integer steps; cond: (B or 1, L, D).
    """
    depths = encoder_depths(unet, depths)
    if sample.dim() != 4 or sample.shape[1] != unet.config.in_channels:
        raise ImageInputError(f"UNet features: expected (B,{unet.config.in_channels},h,w), got {tuple(sample.shape)}")
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
        if getattr(unet.config, key, None) is not None:
            raise ConfigError(f"UNet features: config {key}={getattr(unet.config, key)!r} is not supported")
    dtype = unet.conv_in.weight.dtype
    emb = embed_timestep(unet.time_proj, unet.time_embedding, unet.time_embed_act, timestep.to(sample.device), dtype)
    cond = cond.to(dtype)
    cond = cond.expand(sample.shape[0], -1, -1) if cond.shape[0] == 1 else cond  # (B,L,D)
    n = len(unet.down_blocks)
    down = list(unet.down_blocks)[: min(n, depths[-1])]
    mid = unet.mid_block if depths[-1] == n + 1 else None
    return run_encoder_blocks(unet.conv_in(sample.to(dtype)), emb, cond, down, mid, depths)


def embed_timestep(time_proj: nn.Module, time_embedding: nn.Module, act: nn.Module | None, t: Tensor,
                   dtype: torch.dtype) -> Tensor:
    """The UNet's time embedding of (B,) steps: ``act(time_embedding(time_proj(t)))`` -> (B,T)."""
    emb = time_embedding(time_proj(t).to(dtype))
    return act(emb) if act is not None else emb


def run_encoder_blocks(h: Tensor, emb: Tensor, cond: Tensor, down_blocks: Sequence[nn.Module],
                       mid_block: nn.Module | None, depths: Sequence[int]) -> list[Tensor]:
    """Down blocks (then the mid block, when given) on the ``conv_in`` output ``h``; returns the
    features at ``depths`` (0 = ``h`` itself, i = down block i; the mid block's output whenever it
    runs). Cross-attention blocks see ``cond`` (B,L,D); all see the time embedding ``emb``."""
    feats = [h] if 0 in depths else []
    for i, block in enumerate(down_blocks, start=1):
        if getattr(block, "has_cross_attention", False):
            h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=cond)
        else:
            h, _ = block(hidden_states=h, temb=emb)
        if i in depths:
            feats.append(h)
    if mid_block is not None:
        if getattr(mid_block, "has_cross_attention", False):
            h = mid_block(h, emb, encoder_hidden_states=cond)
        else:
            h = mid_block(h, emb)
        feats.append(h)
    return feats


@contextmanager
def capture_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the output of every call of ``module`` inside the ``with`` block (graph kept).

    A block that returns a tuple (diffusers down blocks return ``(hidden_states, skips)``)
    contributes its first element. Used for REPA: ``with capture_output(unet.down_blocks[0]) as
    got: eps = unet(...)`` then ``got[-1]`` is ``h_t`` (B,C_1,h/2,w/2).
    """
    got: list[Tensor] = []

    def hook(_mod: nn.Module, _inp: object, out: object) -> None:
        got.append(out[0] if isinstance(out, tuple) else out)  # type: ignore[arg-type]

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()

