"""Speed switches of issue 18 (gendr_core.ops.attention, models.unet, pipeline.SpeedOptions): values, never timings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gendr_core.bench import model_macs
from gendr_core.config import tiny_gendr_pix_config
from gendr_core.errors import ConfigError
from gendr_core.models import build_model
from gendr_core.models.unet import (
    InterruptibleAttention,
    WindowedSelfAttention,
    attention_processors,
    blocks_by_level,
    set_ff_chunking,
    set_window_attention,
    transformer_blocks,
)
from gendr_core.ops.attention import chunked_apply, query_chunked_sdpa, window_bands, windowed_sdpa
from gendr_core.ops.guidance import pad_cfg
from gendr_core.pipeline import SpeedOptions, apply_speed_options, check_options, restore_grid

GRID = (24, 16)  # level-1 tokens of a 192x128 image at x8 unshuffle


@pytest.fixture
def pix():
    torch.manual_seed(0)
    model = build_model(tiny_gendr_pix_config()).eval()
    with torch.no_grad():
        model.prompt_pos.normal_()
    return model


def _image(seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, GRID[0] * 8, GRID[1] * 8, generator=torch.Generator().manual_seed(seed))


def _predict(model, x):
    with torch.no_grad():
        return model.predict(x, model.prompt_pos)


# ----------------------------------------------------------------------------- pure ops


def test_window_bands_split_evenly_and_never_exceed_the_window():
    assert window_bands(64, 64) == [(0, 64, 64)]
    assert window_bands(10, 64) == [(0, 10, 10)]
    assert window_bands(65, 64) == [(0, 33, 33), (33, 65, 32)]  # 33 + 32, not 64 + 1
    assert window_bands(130, 64) == [(0, 44, 44), (44, 130, 43)]  # 44 + 43 + 43
    assert window_bands(128, 64) == [(0, 128, 64)]
    assert window_bands(270, 64) == [(0, 270, 54)]  # 4K height at level 1: five windows of 54
    with pytest.raises(ValueError, match="window=0"):
        window_bands(10, 0)


def _reference_windows(q, k, v, grid, window):
    """Full attention on each window cut out of the grid by explicit loops (independent of the batching)."""
    b, heads, n, d = q.shape
    h, w = grid
    out = torch.empty_like(q).reshape(b, heads, h, w, d)
    rows = [(r0 + i * s, r0 + (i + 1) * s) for r0, r1, s in window_bands(h, window) for i in range((r1 - r0) // s)]
    cols = [(c0 + i * s, c0 + (i + 1) * s) for c0, c1, s in window_bands(w, window) for i in range((c1 - c0) // s)]
    g = [t.reshape(b, heads, h, w, d) for t in (q, k, v)]
    for r0, r1 in rows:
        for c0, c1 in cols:
            part = [t[:, :, r0:r1, c0:c1].reshape(b, heads, -1, d) for t in g]
            out[:, :, r0:r1, c0:c1] = F.scaled_dot_product_attention(*part).reshape(b, heads, r1 - r0, c1 - c0, d)
    return out.reshape(b, heads, n, d)


def test_windowed_sdpa_is_full_attention_when_the_window_covers_the_grid_and_per_window_otherwise():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 24 * 16, 5, generator=gen) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(windowed_sdpa(q, k, v, (24, 16), 24), full)
    assert torch.equal(windowed_sdpa(q, k, v, (24, 16), 64), full)
    for window in (7, 8, 16, 23):  # uneven bands on both axes, one axis covered (16), ...
        got = windowed_sdpa(q, k, v, (24, 16), window)
        torch.testing.assert_close(got, _reference_windows(q, k, v, (24, 16), window), rtol=0, atol=1e-6)
        assert (got - full).abs().max() > 1e-3  # a real restriction
    with pytest.raises(ValueError, match="grid 5x5"):
        windowed_sdpa(q, k, v, (5, 5), 4)


def test_query_chunked_sdpa_is_full_attention_with_a_call_between_slices():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 5, generator=gen) for n in (50, 40, 40))
    full = F.scaled_dot_product_attention(q, k, v)
    calls = []
    got = query_chunked_sdpa(q, k, v, max_pairs=12 * 40 + 7, between=lambda: calls.append(1))  # 12 queries a slice
    torch.testing.assert_close(got, full, rtol=0, atol=1e-6)
    assert len(calls) == 4  # slices 12, 12, 12, 12, 2: a call between each pair
    calls.clear()
    assert torch.equal(query_chunked_sdpa(q, k, v, 50 * 40, lambda: calls.append(1)), full) and not calls
    assert query_chunked_sdpa(q, k, v, 1).shape == full.shape  # at least one query per slice
    with pytest.raises(ValueError, match="max_pairs=0"):
        query_chunked_sdpa(q, k, v, 0)


def test_chunked_apply_splits_the_token_axis_unevenly():
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    sizes = []

    def rowwise(t):
        sizes.append(t.shape[1])
        return t * 2 + 1

    assert torch.equal(chunked_apply(rowwise, x, 3), x * 2 + 1)
    assert sizes == [3, 3, 3, 1]
    sizes.clear()
    assert torch.equal(chunked_apply(rowwise, x, 10), x * 2 + 1) and sizes == [10]
    with pytest.raises(ValueError, match="chunk=0"):
        chunked_apply(rowwise, x, 0)


# ----------------------------------------------------------------------------- the UNet switches


def test_levels_of_the_tiny_unet():
    model = build_model(tiny_gendr_pix_config())
    unet = model.unet
    assert blocks_by_level(unet) == [(1, unet.down_blocks[0]), (2, unet.down_blocks[1]), (2, unet.mid_block),
                                     (2, unet.up_blocks[0]), (1, unet.up_blocks[1])]
    assert len(transformer_blocks(unet, (1,))) == 3 and len(transformer_blocks(unet, (2,))) == 1
    assert attention_processors(unet) == {"AttnProcessor2_0": 8}  # diffusers' SDPA processor everywhere


def test_window_attention_covering_the_grid_equals_full_attention(pix):
    x = _image()
    ref = _predict(pix, x)
    keys = list(pix.state_dict())
    assert set_window_attention(pix.unet, 24) == 3  # level-1 self-attention: 1 down + 2 up layers
    assert attention_processors(pix.unet) == {"WindowedSelfAttention": 3, "AttnProcessor2_0": 5}
    assert torch.equal(_predict(pix, x), ref)
    set_window_attention(pix.unet, 8)  # windows of 8x8 tokens on the 24x16 grid: outputs change
    small = _predict(pix, x)
    assert (small - ref).abs().max() > 1e-4
    procs = [a.processor for a in (tb.attn1 for tb in transformer_blocks(pix.unet, (1,)))]
    assert all(isinstance(p, WindowedSelfAttention) and p.grid == GRID and p.window == 8 for p in procs)
    assert set_window_attention(pix.unet, 0) == 3 and attention_processors(pix.unet) == {"AttnProcessor2_0": 8}
    assert torch.equal(_predict(pix, x), ref)  # restored exactly; the grid hooks are gone
    assert all(not t._forward_pre_hooks for t in pix.unet.modules())
    assert list(pix.state_dict()) == keys
    with pytest.raises(ConfigError, match="attention_window=-1"):
        set_window_attention(pix.unet, -1)


def test_interruptible_attention_checks_between_query_slices_and_equals_full_attention(pix):
    from gendr_core.progress import pass_events

    x = _image()
    ref = _predict(pix, x)
    before = [a.processor for a in pix.unet.modules() if type(a).__name__ == "Attention"]
    calls = []
    with pass_events(pix, check=lambda: calls.append(1)):
        assert attention_processors(pix.unet) == {"InterruptibleAttention": 8}
        plain = _predict(pix, x)  # level-1 grid 24x16 = 384 tokens: 384^2 pairs, above no threshold
        n_plain = len(calls)
        for a in pix.unet.modules():
            if isinstance(getattr(a, "processor", None), InterruptibleAttention):
                a.processor.max_pairs = 384 * 100  # 100 queries a slice where the grid has 384 tokens
        sliced = _predict(pix, x)
    assert torch.equal(plain, ref)  # below the threshold the inner processor runs as is
    torch.testing.assert_close(sliced, ref, rtol=0, atol=1e-5)
    # 3 level-1 self-attentions x 3 extra calls (4 slices of <= 100 queries); cross-attention is not sliced
    assert len(calls) - 2 * n_plain == 3 * 3
    after = [a.processor for a in pix.unet.modules() if type(a).__name__ == "Attention"]
    assert all(p is q for p, q in zip(before, after, strict=True))  # the same processor objects are back
    assert attention_processors(pix.unet) == {"AttnProcessor2_0": 8}


def test_a_cancel_between_attention_slices_stops_the_attention(pix):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from gendr_core.progress import pass_events

    class Stop(Exception):
        pass

    seen = []

    def check():
        seen.append(1)
        if len(seen) == 2:
            raise Stop

    attn = transformer_blocks(pix.unet, (1,))[0].attn1
    hidden = torch.randn(1, 384, attn.to_q.in_features)
    with pytest.raises(Stop):  # no hooks here: only the slices call check()
        InterruptibleAttention(AttnProcessor2_0(), check, max_pairs=384 * 100)(attn, hidden)
    assert len(seen) == 2  # stopped after the second of four slices
    other = lambda attn, h, *a, **k: "inner"  # noqa: E731 - e.g. WindowedSelfAttention: never sliced
    assert InterruptibleAttention(other, check, max_pairs=1)(attn, hidden) == "inner" and len(seen) == 2
    with pass_events(pix, check=None):
        assert attention_processors(pix.unet) == {"AttnProcessor2_0": 8}  # nothing wrapped without a check


def test_window_attention_macs_drop_by_the_hand_count(pix):
    # QK^T and AV: 2 * C * N^2 MACs per self-attention (C = heads x head_dim = 8 channels at level 1).
    # 24x16 tokens in windows of 8x8: N^2 = 384^2 becomes 6 * 64^2 in each of the 3 level-1 layers.
    # A 184x120 image + PadCFG's positive pad (4,4,4,4) is 192x128 pixels: 24x16 tokens.
    hw = (GRID[0] * 8 - 8, GRID[1] * 8 - 8)
    full = model_macs(pix, hw)
    win = model_macs(pix, hw, speed=SpeedOptions(attention_window=8))
    assert full - win == 3 * 2 * 8 * (384**2 - 6 * 64**2) == 5_898_240
    assert attention_processors(pix.unet) == {"AttnProcessor2_0": 8}  # counted on a meta copy


def test_feed_forward_chunking_at_the_two_finest_levels(pix):
    x = _image()
    ref = _predict(pix, x)
    seen: list[int] = []
    hooks = [tb.ff.net[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
             for tb in transformer_blocks(pix.unet, (1, 2))]
    assert set_ff_chunking(pix.unet, 100) == 4
    y = _predict(pix, x)
    for h in hooks:
        h.remove()
    # level 1: 384 tokens in slices 100,100,100,84 (down, then 2 up layers); level 2 (mid): 12x8 = 96 tokens
    assert seen == [100, 100, 100, 84, 96] + [100, 100, 100, 84] * 2
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    assert set_ff_chunking(pix.unet, 0) == 4 and torch.equal(_predict(pix, x), ref)
    assert all("forward" not in tb.ff.__dict__ for tb in transformer_blocks(pix.unet, (1, 2)))


def test_speed_options_channels_last_and_compile(pix):
    x = _image()
    ref = _predict(pix, x)
    with pytest.raises(ConfigError, match="ff_chunk=-2"):
        SpeedOptions(ff_chunk=-2)
    done = apply_speed_options(pix, SpeedOptions(channels_last=True, ff_chunk=64, attention_window=32))
    assert done == {"ff_chunked": 4, "attention_windowed": 3, "memory_format": "channels_last"}
    conv = pix.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(_predict(pix, x), ref, rtol=0, atol=1e-5)
    apply_speed_options(pix, SpeedOptions(compile=True, compile_backend="eager", attention_window=32))
    assert pix.unet._compiled_call_impl is not None  # nn.Module.compile: in place, same state-dict keys
    torch.testing.assert_close(_predict(pix, x), ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- sequential PadCFG


def test_sequential_padcfg_runs_one_branch_at_a_time_with_the_single_pass_estimate(pix):
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    calls: list[tuple[int, ...]] = []

    def predict(t, cond):
        calls.append(tuple(t.shape))
        return t * 0.5 + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)  # each sample its own branch's cond

    cond_p, cond_n = torch.full((1, 4, 8), 0.2), torch.full((1, 4, 8), -0.1)
    seq = pad_cfg(predict, x, cond_p, cond_n, 1.8, multiple=64, batched=False)
    assert calls == [(2, 3, 64, 64), (2, 3, 64, 64)]  # two passes of the batch, never 2B at once
    calls.clear()
    bat = pad_cfg(predict, x, cond_p, cond_n, 1.8, multiple=64, batched=True)
    assert calls == [(4, 3, 64, 64)]
    torch.testing.assert_close(seq, bat, rtol=0, atol=1e-6)
    torch.testing.assert_close(seq, x * 0.5 + 1.8 * 0.2 + (1 - 1.8) * -0.1, rtol=0, atol=1e-6)
    # the memory plan of sequential PadCFG is that of one pass, batched needs two
    assert check_options(pix, guidance=1.8, branch_mode="sequential")["passes"] == 1
    assert check_options(pix, guidance=1.8, branch_mode="batched")["passes"] == 2
    img = torch.rand(1, 3, 64, 72, generator=torch.Generator().manual_seed(4))
    a = restore_grid(img, pix, guidance=1.8, branch_mode="sequential", tile="off")
    b = restore_grid(img, pix, guidance=1.8, branch_mode="batched", tile="off")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
