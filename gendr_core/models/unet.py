"""diffusers UNet/VAE construction from our typed configs, a memory estimate, and the
inference-only speed switches of issue 18 (feed-forward chunking, windowed level-1 attention).

Levels are numbered from the finest: level 1 is ``down_blocks[0]`` and ``up_blocks[-1]``, which
run at the UNet's input resolution (GenDR-Pix: one token per 8x8 pixels); level n is the
coarsest (the last down block, the mid block and ``up_blocks[0]``). None of the switches adds,
removes or renames a weight: state dicts and model files are unchanged.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..config import UNetConfig, VAEConfig
from ..errors import ConfigError
from ..ops.attention import chunked_apply, query_chunked_sdpa, windowed_sdpa

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


# ----------------------------------------------------------------------------- speed switches (inference only)


def blocks_by_level(unet: nn.Module) -> list[tuple[int, nn.Module]]:
    """(level, block) for every top-level UNet block; level 1 = finest (input resolution)."""
    n = len(unet.down_blocks)
    out = [(i + 1, b) for i, b in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        out.append((n, unet.mid_block))
    return out + [(n - j, b) for j, b in enumerate(unet.up_blocks)]


def _of_type(module: nn.Module, name: str) -> list[nn.Module]:
    return [m for m in module.modules() if type(m).__name__ == name]


def transformer_blocks(unet: nn.Module, levels: tuple[int, ...]) -> list[nn.Module]:
    """diffusers ``BasicTransformerBlock``s of the blocks at ``levels`` (run order)."""
    return [t for lvl, b in blocks_by_level(unet) if lvl in levels for t in _of_type(b, "BasicTransformerBlock")]


def _chunked_ff_forward(ff: nn.Module, tokens: int, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    # The class's forward on each slice of the token axis of (B, N, C); the hidden 4C-wide GEGLU
    # tensor (8C before the gate) then exists for `tokens` tokens at a time.
    return chunked_apply(lambda s: type(ff).forward(ff, s, *args, **kwargs), hidden_states, tokens, dim=1)


def set_ff_chunking(unet: nn.Module, tokens: int, levels: tuple[int, ...] = (1, 2)) -> int:
    """Run the feed-forward of every transformer block at ``levels`` (default: the two finest,
    where a 4K image has 130k and 32k tokens) on slices of ``tokens`` tokens; 0 turns it off.

    The instance's ``forward`` is replaced (the module, its weights and state-dict keys stay);
    the result equals the unchunked one up to the matmul's summation order. Returns the number
    of feed-forwards changed."""
    if tokens < 0:
        raise ConfigError(f"ff_chunk={tokens} must be >= 0 (tokens per feed-forward slice; 0 = off)")
    count = 0
    for block in transformer_blocks(unet, levels):
        ff = getattr(block, "ff", None)
        if ff is None:
            continue
        ff.__dict__.pop("forward", None)
        if tokens:
            ff.forward = functools.partial(_chunked_ff_forward, ff, tokens)
        count += 1
    return count


class WindowedSelfAttention:
    """diffusers attention processor: self-attention within windows of at most ``window`` x ``window``
    tokens (:func:`~gendr_core.ops.attention.windowed_sdpa`), for the (B, N, C) tokens of a
    ``Transformer2DModel`` whose (H, W) grid a forward pre-hook stores in ``grid`` before each call.

    The projections are the attention module's own (to_q/to_k/to_v/to_out), applied as in
    diffusers' SDPA processor; with a window that covers the grid the output is identical to it.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.grid: tuple[int, int] | None = None
        self.hook: Any = None  # the RemovableHandle of the grid pre-hook

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ConfigError("windowed attention handles unmasked self-attention on (B, N, C) tokens only")
        if self.grid is None:
            raise ConfigError("windowed attention: no token grid recorded; install it with set_window_attention")
        grid, window = self.grid, self.window
        return self_attention(attn, hidden_states, lambda q, k, v: windowed_sdpa(q, k, v, grid, window))


def self_attention(attn: nn.Module, hidden_states: Tensor, core: Any) -> Tensor:
    """Unmasked self-attention of a diffusers ``Attention`` module on (B, N, C) tokens, with the
    module's own projections applied as diffusers' SDPA processor applies them and
    ``core(q, k, v)`` on (B, heads, N, d) in place of ``F.scaled_dot_product_attention``."""
    b, n, _ = hidden_states.shape
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    d = k.shape[-1] // attn.heads
    q, k, v = (t.view(b, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))  # (B,N,C) -> (B,heads,N,d)
    out = core(q, k, v)
    out = out.transpose(1, 2).reshape(b, n, attn.heads * d).to(q.dtype)  # (B,heads,N,d) -> (B,N,C)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


# Query x key pairs per head of one attention slice between two cancel checks: the 16384-token
# self-attention of a 4096^2 output (gendr-pix-s, coarsest level) runs as 8 slices of 2048
# queries. Cancel latencies measured with it: bench/comfy_2026-12-05/README.md.
INTERRUPT_ATTENTION_PAIRS = 2**25


class InterruptibleAttention:
    """A pass-long wrapper of an attention module's processor (:func:`gendr_core.progress.pass_events`):
    self-attention over more than ``max_pairs`` query x key pairs runs as
    :func:`~gendr_core.ops.attention.query_chunked_sdpa`, calling ``check()`` (which may raise to
    cancel) between query slices; everything else (cross-attention, masks, group/spatial/q-k norms,
    small grids, other processors such as :class:`WindowedSelfAttention`) goes to ``inner`` unchanged."""

    def __init__(self, inner: Any, check: Any, max_pairs: int = INTERRUPT_ATTENTION_PAIRS) -> None:
        self.inner, self.check, self.max_pairs = inner, check, max_pairs

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        from diffusers.models.attention_processor import AttnProcessor2_0

        plain = (type(self.inner) is AttnProcessor2_0 and encoder_hidden_states is None and attention_mask is None
                 and hidden_states.ndim == 3 and attn.group_norm is None and attn.spatial_norm is None
                 and attn.norm_q is None and attn.norm_k is None and not args and not kwargs)
        if not plain or hidden_states.shape[1] ** 2 <= self.max_pairs:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self_attention(attn, hidden_states,
                              lambda q, k, v: query_chunked_sdpa(q, k, v, self.max_pairs, self.check))


def _record_grid(processors: list[WindowedSelfAttention], module: nn.Module, args: tuple, kwargs: dict) -> None:
    hidden = args[0] if args else kwargs["hidden_states"]  # (B,C,H,W) into the Transformer2DModel
    for p in processors:
        p.grid = (int(hidden.shape[-2]), int(hidden.shape[-1]))


def set_window_attention(unet: nn.Module, window: int) -> int:
    """Opt-in windowed self-attention at level 1 (windows of at most ``window`` x ``window`` tokens;
    64 = GenDR-Pix's 512-px training patch at x8 unshuffle); 0 restores full SDPA attention.

    Only the self-attention (``attn1``) of level-1 transformer blocks changes; cross-attention
    to the prompt and every coarser level keep full attention. It changes outputs wherever the
    token grid is larger than the window (measure before using it: ``gendr-pix bench
    --attention-window``). Returns the number of attention modules changed (0 for a UNet
    without level-1 attention, e.g. gendr-pix-s)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if window < 0:
        raise ConfigError(f"attention_window={window} must be >= 0 (tokens per window side; 0 = full attention)")
    count = 0
    for lvl, block in blocks_by_level(unet):
        if lvl != 1:
            continue
        for t2d in _of_type(block, "Transformer2DModel"):
            attns = [tb.attn1 for tb in _of_type(t2d, "BasicTransformerBlock")]
            for a in attns:
                old = a.processor
                if isinstance(old, WindowedSelfAttention) and old.hook is not None:
                    old.hook.remove()
                if window and (a.is_cross_attention or a.spatial_norm is not None or a.group_norm is not None
                               or a.norm_q is not None or a.norm_k is not None):
                    raise ConfigError("windowed attention: a level-1 attention uses a feature it does not "
                                      "implement (cross-attention, spatial/group norm or q/k norm)")
            if not window:  # back to diffusers' SDPA processor where we had replaced it
                for a in attns:
                    if isinstance(a.processor, WindowedSelfAttention):
                        a.set_processor(AttnProcessor2_0())
                        count += 1
                continue
            procs = [WindowedSelfAttention(window) for _ in attns]
            for a, p in zip(attns, procs, strict=True):
                a.set_processor(p)
            if procs:
                hook = t2d.register_forward_pre_hook(functools.partial(_record_grid, procs), with_kwargs=True)
                for p in procs:
                    p.hook = hook
            count += len(attns)
    return count


def attention_processors(unet: nn.Module) -> dict[str, int]:
    """How many attention modules run each processor class, e.g. ``{"AttnProcessor2_0": 32}``
    (diffusers' SDPA processor: ``F.scaled_dot_product_attention``, flash / memory-efficient
    kernels on CUDA)."""
    return dict(Counter(type(m.processor).__name__ for m in _of_type(unet, "Attention")))
