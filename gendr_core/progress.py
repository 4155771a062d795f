"""Progress and cancellation inside one model pass, through forward hooks.

A whole-image pass of a large image runs for tens of seconds inside the UNet, where no tile
or branch loop can report or stop. :func:`pass_events` attaches, for the duration of a
``with`` block only, forward hooks to the restorer's UNet:

* after each top-level block (the down blocks, the mid block, the up blocks) finishes, it
  calls ``on_block()``, the unit of progress;
* after every ResNet / attention sub-block and every convolution, it calls ``check()``, which
  may raise to cancel (ComfyUI's interrupt check);
* it wraps each attention module's processor in
  :class:`~gendr_core.models.unet.InterruptibleAttention`, so that a self-attention over a large
  token grid (the coarsest level of a 4K pass, one of the longest steps on a CPU) also calls
  ``check()`` between slices of its queries. Cancel then waits for at most one convolution or
  one attention slice.

The hooks are removed and the processors restored when the block exits, on success and on any
exception, so the model is left exactly as it was (its ``_forward_hooks`` dicts are empty again
and each attention module has its own processor object back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from .models.unet import InterruptibleAttention, _of_type


def unet_blocks(model: nn.Module) -> list[nn.Module]:
    """The top-level blocks of ``model.unet`` in run order (down..., mid, up...), or [] without a UNet."""
    unet = getattr(model, "unet", None)
    if unet is None:
        return []
    blocks = list(getattr(unet, "down_blocks", []))
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks + list(getattr(unet, "up_blocks", []))


def blocks_per_pass(model: nn.Module) -> int:
    """Progress units of one forward pass: its UNet blocks (1 for a model without a UNet)."""
    return max(1, len(unet_blocks(model)))


def _check_points(model: nn.Module) -> list[nn.Module]:
    unet = getattr(model, "unet", None)
    mods = [] if unet is None else list(unet.modules())
    vae = getattr(model, "vae", None)  # latent models: the VAE passes at full resolution
    mods += [] if vae is None else list(vae.modules())
    return [m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear)) or type(m).__name__ in
            ("ResnetBlock2D", "Transformer2DModel", "BasicTransformerBlock", "Attention")]


@contextmanager
def pass_events(model: nn.Module, on_block: Callable[[], None] | None = None,
                check: Callable[[], None] | None = None) -> Iterator[int]:
    """Hooks calling ``on_block()`` after each UNet block and ``check()`` after each sub-step, while
    the block runs; yields the number of blocks per pass. Nothing is attached when both are None."""
    handles, wrapped = [], []
    try:
        if on_block is not None:
            for block in unet_blocks(model):
                handles.append(block.register_forward_hook(lambda m, a, o: on_block()))
        if check is not None:
            for mod in _check_points(model):
                handles.append(mod.register_forward_hook(lambda m, a, o: check()))
            unet = getattr(model, "unet", None)
            for attn in [] if unet is None else _of_type(unet, "Attention"):
                wrapped.append((attn, attn.processor))
                attn.set_processor(InterruptibleAttention(attn.processor, check))
        yield blocks_per_pass(model)
    finally:
        for h in handles:
            h.remove()
        for attn, processor in wrapped:
            attn.set_processor(processor)
