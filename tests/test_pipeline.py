from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gendr_core import upscale
from gendr_core.errors import ConfigError, ImageInputError
from gendr_core.models import OneStepRestorer
from gendr_core.ops.resize import resize
from gendr_core.pipeline import CPU_SPEED_TILE, CPU_SPEED_TILE_ABOVE, auto_tile, plan_tiles, restore_grid


class ConvRestorer(OneStepRestorer):
    """A predictor with a 2-px receptive field and no global ops (for tiling tests)."""

    kind = "test_conv"

    def __init__(self, config):
        super().__init__(config)
        self.conv = torch.nn.Conv2d(3, 3, 5, padding=2, padding_mode="reflect")

    def predict(self, x, cond):
        return x + 0.1 * torch.tanh(self.conv(x))

    def estimate_bytes(self, h, w, batch=1):
        return 100 * batch * h * w


@pytest.fixture
def conv_model():
    from gendr_core.config import tiny_gendr_pix_config

    torch.manual_seed(0)
    return ConvRestorer(tiny_gendr_pix_config()).eval()


def test_upscale_tensor_shapes_and_range(tiny_pix, gen):
    x = torch.rand(2, 3, 30, 37, generator=gen)
    for scale, size in ((4, (120, 148)), (2.5, (75, 92)), (1, (30, 37))):
        y = upscale(x, tiny_pix, scale=scale, guidance=1.8)
        assert y.shape == (2, 3, *size) and y.min() >= 0 and y.max() <= 1


def test_batched_and_sequential_branches_agree(tiny_pix, gen):
    x = torch.rand(1, 3, 40, 40, generator=gen)
    a = upscale(x, tiny_pix, scale=2, guidance=1.8, branch_mode="batched")
    b = upscale(x, tiny_pix, scale=2, guidance=1.8, branch_mode="sequential")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_tiled_equals_full_on_small_receptive_field_model(conv_model, gen):
    grid = torch.rand(1, 3, 300, 260, generator=gen)
    full = restore_grid(grid, conv_model, guidance=1.8, tile="off")
    tiled = restore_grid(grid, conv_model, guidance=1.8, tile=128, overlap=64)
    assert (full - tiled).abs().max() < 1e-5


def test_auto_tiling_plans_from_memory_budget(conv_model):
    assert plan_tiles(conv_model, 512, 512, 1, 1, 64, budget=1 << 40).tile == 0
    plan = plan_tiles(conv_model, 2048, 2048, 1, 1, 64, budget=100 * 600 * 600)
    assert plan.tile and plan.tile % conv_model.pad_multiple == 0 and plan.estimated_bytes <= plan.budget_bytes


def test_auto_tiling_takes_speed_tiles_on_a_cpu_above_1024_px(conv_model, monkeypatch):
    assert (CPU_SPEED_TILE, CPU_SPEED_TILE_ABOVE) == (768, 1536)
    big = 1 << 40
    m = conv_model.pad_multiple
    # fits, but longer than 1536 px on a CPU: 768-px tiles, whose estimate is that of one tile
    plan = plan_tiles(conv_model, 2048, 1536, 1, 1, 64, budget=big)
    # 768 + the widest pad per axis (8) = 776, rounded up to the pad multiple 16 -> 784
    assert plan.tile == 768 // m * m and plan.estimated_bytes == 100 * 784 * 784
    assert plan_tiles(conv_model, 1536, 1536, 1, 1, 64, budget=big).tile == 0  # not above 1536: whole
    assert plan_tiles(conv_model, 1537, 300, 1, 1, 64, budget=big).tile == 768
    # speed_tile=0 (what a GPU gets) plans from memory alone; so does a device other than the CPU
    assert plan_tiles(conv_model, 2048, 2048, 1, 1, 64, budget=big, speed_tile=0).tile == 0
    with monkeypatch.context() as mp:
        mp.setattr(ConvRestorer, "device", property(lambda self: torch.device("cuda", 0)))
        assert plan_tiles(conv_model, 2048, 2048, 1, 1, 64, budget=big).tile == 0
    # an overlap that leaves no room in a 512 tile: the whole image
    assert plan_tiles(conv_model, 2048, 2048, 1, 1, 768, budget=big).tile == 0
    # memory still rules when the whole image does not fit
    tight = plan_tiles(conv_model, 4096, 4096, 1, 1, 64, budget=100 * 300 * 300)
    assert 0 < tight.tile < 768 and tight.estimated_bytes <= tight.budget_bytes
    assert auto_tile(conv_model, 2048, 2048, budget=big) == 768
    assert auto_tile(conv_model, 2048, 2048, guidance=1.8, budget=big) == 768


def test_oom_halves_the_tile_and_retries(conv_model, gen, caplog):
    sizes = []
    real = conv_model.predict

    def flaky(x, cond):
        sizes.append(x.shape[-1])
        if x.shape[-1] > 200:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x, cond)

    conv_model.predict = flaky
    grid = torch.rand(1, 3, 256, 256, generator=gen)
    out = restore_grid(grid, conv_model, tile=512, overlap=32)
    assert out.shape == grid.shape
    # 512 (whole 256-px image, padded to 272) fails, 256 (still the whole image) fails, 128 succeeds
    assert sizes[:2] == [272, 272] and max(sizes[2:]) <= 200
    assert "retrying with tile 256" in caplog.text and "retrying with tile 128" in caplog.text
    with pytest.raises(torch.OutOfMemoryError):
        restore_grid(grid, conv_model, tile="off")


def test_progress_reports_every_tile(conv_model, gen):
    calls = []
    restore_grid(torch.rand(1, 3, 256, 256, generator=gen), conv_model, tile=128, overlap=64,
                 progress=lambda d, t: calls.append((d, t)))
    blocks = 5  # ConvRestorer runs no UNet block: one step of all 5 blocks per pass
    assert calls == [(i * blocks, 9 * blocks) for i in range(1, 10)]


def test_pil_rgba_gray_and_16bit(tiny_pix):
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 4), dtype=np.uint8), "RGBA")
    out = upscale(rgba, tiny_pix, scale=2)
    assert out.mode == "RGBA" and out.size == (48, 40)
    gray = Image.fromarray(np.full((16, 16), 100, dtype=np.uint8), "L")
    assert upscale(gray, tiny_pix, scale=2).mode == "L"
    g16 = Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))
    out16 = upscale(g16, tiny_pix, scale=2)
    assert out16.mode in ("I;16", "I") and out16.size == (32, 32)


def test_color_fix_applied_after_stitching(conv_model, gen):
    from gendr_core.ops.color_fix import wavelet_color_fix

    x = torch.rand(1, 3, 64, 64, generator=gen)
    y = upscale(x, conv_model, scale=2, color_fix=1.0, tile=64, overlap=32)
    assert y.shape == (1, 3, 128, 128)
    grid = resize(x, (128, 128), "bicubic")
    stitched = restore_grid(grid, conv_model, tile=64, overlap=32).float()
    assert torch.equal(y, wavelet_color_fix(stitched, grid, 1.0).clamp(0, 1))  # once, on the stitched image


def attach_trained_fixmod(model, seed=1):
    from gendr_core.config import tiny_fixmod_config

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.attach_fixmod(tiny_fixmod_config()).parameters():
            p.normal_(0, 0.2)
    return model


def test_default_post_fix_keeps_outputs_of_files_without_fixmod(tiny_pix, gen):
    from gendr_core.ops.color_fix import wavelet_color_fix

    x = torch.rand(1, 3, 16, 24, generator=gen)
    grid = resize(x, (32, 48), "bicubic")
    restored = restore_grid(grid, tiny_pix, tile="off").float()
    assert torch.equal(upscale(x, tiny_pix, 2), restored.clamp(0, 1))  # as before FixMod existed
    assert torch.equal(upscale(x, tiny_pix, 2, fixmod="off"), restored.clamp(0, 1))
    assert torch.equal(upscale(x, tiny_pix, 2, color_fix=0.5), wavelet_color_fix(restored, grid, 0.5).clamp(0, 1))
    assert torch.equal(upscale(x, tiny_pix, 2, fixmod="wavelet"), wavelet_color_fix(restored, grid).clamp(0, 1))
    from gendr_core.errors import ConfigError

    with pytest.raises(ConfigError, match="has no learned FixMod"):
        upscale(x, tiny_pix, 2, fixmod="learned")


def test_learned_fixmod_runs_once_after_stitching(conv_model, gen):
    from gendr_core.pipeline import post_fix

    model = attach_trained_fixmod(conv_model)
    x = torch.rand(1, 3, 64, 64, generator=gen)
    grid = resize(x, (128, 128), "bicubic")
    stitched = restore_grid(grid, model, tile=64, overlap=32).float()
    with torch.no_grad():
        fixed = model.fixmod(stitched, grid)
    y = upscale(x, model, scale=2, tile=64, overlap=32)  # default: the file's learned FixMod
    assert torch.equal(y, fixed.clamp(0, 1))
    assert torch.equal(upscale(x, model, scale=2, tile=64, overlap=32, fixmod="learned"), y)
    half = upscale(x, model, scale=2, tile=64, overlap=32, color_fix=0.5)
    assert torch.equal(half, post_fix(stitched, grid, model, "learned", 0.5).clamp(0, 1))
    assert torch.equal(half, (stitched + 0.5 * (fixed - stitched)).clamp(0, 1))
    assert torch.equal(upscale(x, model, scale=2, tile=64, overlap=32, fixmod="off"), stitched.clamp(0, 1))
    with pytest.raises(ValueError, match="no effect with fixmod='off'"):
        upscale(x, model, scale=2, fixmod="off", color_fix=1.0)


def test_degenerate_inputs_raise_clear_errors(tiny_pix):
    with pytest.raises(ImageInputError, match="empty"):
        upscale(torch.zeros(1, 3, 0, 5), tiny_pix)
    bad = torch.rand(1, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ImageInputError, match="NaN"):
        upscale(bad, tiny_pix)
    with pytest.raises(ImageInputError, match=r"\(B,3,H,W\)"):
        upscale(torch.rand(3, 8, 8), tiny_pix)
    with pytest.raises(ConfigError, match="scale=0"):
        upscale(torch.rand(1, 3, 8, 8), tiny_pix, scale=0)
    with pytest.raises(ValueError, match="branch_mode"):
        upscale(torch.rand(1, 3, 8, 8), tiny_pix, branch_mode="parallel")
    with pytest.raises(ImageInputError, match="PIL.Image or a torch.Tensor"):
        upscale("image.png", tiny_pix)


def test_randpad_ensemble_through_pipeline(tiny_pix, gen):
    x = torch.rand(1, 3, 32, 32, generator=gen)
    a = upscale(x, tiny_pix, scale=2, randpad=3, seed=1)
    b = upscale(x, tiny_pix, scale=2, randpad=3, seed=1)
    assert torch.equal(a, b) and a.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="needs guidance=1.0"):
        upscale(x, tiny_pix, scale=2, randpad=3, guidance=2.0)


def test_flip_ensemble_through_pipeline_matches_manual_mean(tiny_pix, gen):
    x = torch.rand(1, 3, 24, 40, generator=gen)  # not square: the transposed passes pad differently
    ens = upscale(x, tiny_pix, scale=2, ensemble=8, tile="off")
    assert ens.shape == (1, 3, 48, 80)
    grid = resize(x, (48, 80), "bicubic")
    members = []
    for k in range(8):
        t = grid
        t = t.flip(-1) if k & 1 else t
        t = t.flip(-2) if k & 2 else t
        t = t.transpose(-1, -2) if k & 4 else t
        y = restore_grid(t, tiny_pix, tile="off")
        y = y.transpose(-1, -2) if k & 4 else y
        y = y.flip(-2) if k & 2 else y
        members.append(y.flip(-1) if k & 1 else y)
    torch.testing.assert_close(ens, (sum(members) / 8).clamp(0, 1), rtol=0, atol=1e-5)
    assert (members[0] - members[5]).abs().max() > 1e-4  # the passes differ, so the mean is not trivial
    with pytest.raises(ValueError, match="flips=3"):
        upscale(x, tiny_pix, scale=2, ensemble=3)
