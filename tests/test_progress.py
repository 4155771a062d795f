"""Progress per UNet block and cancellation inside a pass (gendr_core.progress), hooks left behind: none."""

from __future__ import annotations

import pytest
import torch

from gendr_core import upscale
from gendr_core.progress import blocks_per_pass, pass_events, unet_blocks


class Cancelled(Exception):
    pass


def test_blocks_of_the_tiny_unet_in_run_order(tiny_pix):
    names = [type(b).__name__ for b in unet_blocks(tiny_pix)]
    assert names == ["CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "UpBlock2D",
                     "CrossAttnUpBlock2D"]
    assert blocks_per_pass(tiny_pix) == 5 and blocks_per_pass(torch.nn.Identity()) == 1


def test_progress_steps_once_per_block_of_every_pass(tiny_pix):
    calls = []
    upscale(torch.rand(1, 3, 16, 16), tiny_pix, scale=2, guidance=1.5, branch_mode="sequential",
            progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 10) for i in range(1, 11)]  # 2 branches x 5 blocks
    calls.clear()
    upscale(torch.rand(2, 3, 16, 16), tiny_pix, scale=2, guidance=1.5, branch_mode="batched",
            progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2 * i, 10) for i in range(1, 6)]  # one batched pass: each block counts for both branches


def test_a_raising_check_stops_inside_the_pass_and_leaves_the_model_unchanged(tiny_pix):
    before = {k: v.clone() for k, v in tiny_pix.state_dict().items()}
    checks = []

    def check():
        checks.append(1)
        if len(checks) == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        upscale(torch.rand(1, 3, 32, 32), tiny_pix, scale=1, interrupt=check)
    assert len(checks) == 3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_pix.modules())
    assert all(torch.equal(before[k], v) for k, v in tiny_pix.state_dict().items())
    full = []
    upscale(torch.rand(1, 3, 32, 32), tiny_pix, scale=1, interrupt=lambda: full.append(1))
    assert len(full) > 3 * blocks_per_pass(tiny_pix)  # far finer than one check per block


def test_hooks_are_removed_when_the_block_raises(tiny_pix):
    with pytest.raises(Cancelled), pass_events(tiny_pix, on_block=lambda: None, check=lambda: None) as n:
        assert n == 5 and any(m._forward_hooks for m in tiny_pix.modules())
        raise Cancelled
    assert all(not m._forward_hooks for m in tiny_pix.modules())
