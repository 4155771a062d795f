"""Option checks of upscale(): NaN/Inf/out-of-range named, pads bounded, whole-job memory refusal."""

from __future__ import annotations

import math

import pytest
import torch

from gendr_core import budget, upscale
from gendr_core.errors import ConfigError, MemoryBudgetError
from gendr_core.pipeline import check_options, plan_tiles
from gendr_core.validation import check_float, check_int, check_pad, check_tile

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs, needle", [
    ({"scale": NAN}, "scale=nan must be a finite number > 0"),
    ({"scale": INF}, "scale=inf must be a finite number > 0"),
    ({"scale": -2}, "scale=-2 is out of range: it must be > 0"),
    ({"guidance": NAN}, "guidance=nan must be a finite number in [0, 10]"),
    ({"guidance": -INF}, "guidance=-inf must be a finite number"),
    ({"guidance": 11}, "guidance=11 is out of range: it must be in [0, 10]"),
    ({"color_fix": NAN}, "color_fix=nan must be a finite number in [0, 1]"),
    ({"color_fix": 1.5}, "color_fix=1.5 is out of range: it must be in [0, 1]"),
    ({"tile_overlap": -8}, "tile_overlap=-8 is out of range: it must be >= 0"),
    ({"tile_overlap": 2.5}, "tile_overlap=2.5 must be a whole number"),
    ({"tiling": "fixed", "tile_size": 0.5}, "tile_size=0.5 must be a whole number"),
    ({"tiling": "fixed", "tile_size": -64}, "tile_size=-64 is out of range: it must be >= 0"),
    ({"tiling": "fixed", "tile_size": 8}, "tile_size=8 is too small: a tile must be 'auto', 'off' or at least the "
                                          "model's pad multiple 16 pixels"),
    ({"tiling": "fixed", "tile_size": 64, "tile_overlap": 64}, "tile_overlap=64 must be smaller than tile_size=64"),
    ({"tiling": "tiles"}, "tiling='tiles' must be one of auto, off, fixed"),
    ({"passes": -1}, "passes=-1 is out of range: it must be in [0, 64]"),
    ({"passes": INF}, "passes=inf must be a whole number in [0, 64]"),
    ({"flips": 3}, "flips=3 must be one of 1, 2, 4, 8"),
    ({"seed": -1}, "seed=-1 is out of range"),
    ({"positive_pad": (9999, 0, 0, 0)}, "positive_pad=(9999, 0, 0, 0): positive_pad left=9999 is out of range: "
                                        "it must be in [0, 8]"),
    ({"negative_pad": (0, 0, -1, 0)}, "negative_pad=(0, 0, -1, 0): negative_pad top=-1"),
    ({"negative_pad": (1, 2, 3)}, "negative_pad=(1, 2, 3) must be four whole numbers"),
    ({"branch_mode": "parallel"}, "branch_mode='parallel' must be one of batched, sequential"),
])
def test_every_numeric_option_is_checked_and_named(tiny_pix, kwargs, needle):
    calls = []
    real = tiny_pix.predict
    tiny_pix.predict = lambda x, c: (calls.append(1), real(x, c))[1]
    try:
        with pytest.raises(ConfigError) as info:
            upscale(torch.rand(1, 3, 8, 8), tiny_pix, **kwargs)
    finally:
        del tiny_pix.predict
    assert needle in str(info.value)
    assert calls == []  # refused before the model ran


def test_checks_return_clean_values_and_accept_limits():
    assert check_float("x", 0, 0, 1) == 0.0 and check_float("x", 1, 0, 1) == 1.0
    with pytest.raises(ConfigError, match=r"x=0 is out of range: it must be in \(0, 1\]"):
        check_float("x", 0, 0, 1, low_open=True)
    assert check_int("n", 4.0) == 4 and type(check_int("n", 4.0)) is int
    with pytest.raises(ConfigError, match="must be a whole number"):
        check_int("n", True)
    assert check_pad("p", [8, 0, 0, 8], 8) == (8, 0, 0, 8)
    assert check_tile("tile", 0, 32, 64) == "off" and check_tile("tile", "auto", 32, 2000) == "auto"
    # the overlap is rounded up and the tile down to the multiple: 40 -> 64 against 100 -> 96 is fine
    assert check_tile("tile", 100, 32, 40) == 100
    with pytest.raises(ConfigError, match=r"allowed overlap: 0\.\.64$"):
        check_tile("tile", 100, 32, 65)


def test_pad_bound_is_the_model_period_or_its_own_wider_pads(tiny_pix):
    from gendr_core import build_model
    from gendr_core.config import tiny_gendr_pix_config

    assert tiny_pix.pad_period == 8 and tiny_pix.max_pad == 8
    x4 = build_model(tiny_gendr_pix_config(shuffle_factor=4))  # gendr-pix-s's grid, own pads (4,4,4,4)/(3,5,3,5)
    assert x4.pad_period == 4 and x4.max_pad == 5
    assert check_options(x4)["neg_pad"] == (3, 5, 3, 5)
    with pytest.raises(ConfigError, match="pos_pad right=6 is out of range: it must be in \\[0, 5\\]"):
        check_options(x4, pos_pad=(0, 6, 0, 0), guidance=1.5)


def test_pads_enter_the_memory_estimate(tiny_pix):
    opts = check_options(tiny_pix, guidance=1.5, pos_pad=(8, 8, 0, 0), neg_pad=(0, 0, 1, 2))
    assert opts["pad"] == (3, 16) and opts["passes"] == 2  # (top+bottom, left+right) of the widest branches
    assert check_options(tiny_pix, guidance=1.0, pos_pad=(1, 1, 1, 1), neg_pad=(8, 8, 8, 8))["pad"] == (2, 2)
    assert check_options(tiny_pix, randpad=2)["pad"] == (8, 8)
    # a 64x64 image padded by 20 in width rounds up to 96 columns at multiple 16
    narrow = budget.estimate_job(tiny_pix, (64, 64), 1, 1.0, pad=(0, 0))
    wide = budget.estimate_job(tiny_pix, (64, 64), 1, 1.0, pad=(0, 20))
    assert narrow.work == tiny_pix.estimate_bytes(64, 64) and wide.work == tiny_pix.estimate_bytes(64, 96)
    plan = plan_tiles(tiny_pix, 64, 64, 1, 1, 16, budget=tiny_pix.estimate_bytes(64, 64), pad=(0, 16))
    assert plan.tile != 0  # the padded whole image no longer fits the budget that the unpadded one would


def test_whole_job_estimate_parts_are_exact_for_known_sizes(tiny_pix):
    est = budget.estimate_job(tiny_pix, (24, 32), 2, 4.0, post_fix="wavelet", save_bytes_per_px=18)
    px = 96 * 128
    assert est.output_hw == (96, 128)
    assert est.grid == est.output == 2 * 3 * px * 4
    assert est.post_fix == budget.WAVELET_COPIES * est.output and est.save == 2 * px * 18
    assert est.device_peak == est.grid + est.output + max(est.work, est.post_fix)


def test_a_job_bigger_than_the_machine_is_refused_before_it_starts(tiny_pix, monkeypatch):
    monkeypatch.setattr("gendr_core.pipeline.available_memory", lambda device: 64 << 20)  # 64 MiB free
    ran = []
    real = tiny_pix.predict
    tiny_pix.predict = lambda x, c: (ran.append(1), real(x, c))[1]
    try:
        with pytest.raises(MemoryBudgetError) as info:
            upscale(torch.rand(1, 3, 24, 32), tiny_pix, scale=1000)  # a 32000x24000 output
    finally:
        del tiny_pix.predict
    msg = str(info.value)
    assert ran == [] and msg.startswith("a 32000x24000 output (batch 1) needs about")
    assert "but only 0.1 GiB is free; use a smaller scale (at most" in msg
    max_scale = float(msg.split("(at most ")[1].split(" fits")[0])
    assert 10 < max_scale < 100
    est = budget.estimate_job(tiny_pix, (24, 32), 1, max_scale * 0.99, tile=128)
    assert est.device_peak <= 64 << 20  # the suggested scale does fit
    # the same job on a machine with room runs, tiled within what is left after the full-size buffers
    monkeypatch.setattr("gendr_core.pipeline.available_memory", lambda device: 1 << 40)
    assert upscale(torch.rand(1, 3, 24, 32), tiny_pix, scale=2).shape == (1, 3, 48, 64)


def test_tiled_blend_uses_separable_weight_sums_exactly():
    from gendr_core.ops.tiling import tiled_apply

    x = torch.rand(1, 3, 100, 70, generator=torch.Generator().manual_seed(0))
    y = tiled_apply(lambda t: t, x, 48, 16, align=8)
    assert torch.allclose(y, x, atol=2e-7, rtol=0)  # identity tiles blend back to the input
    assert math.isclose(float((y - x).abs().max()), 0.0, abs_tol=2e-7)


def test_old_keyword_names_still_work_and_warn(tiny_pix):
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    new = upscale(x, tiny_pix, scale=2, guidance=1.5, tiling="fixed", tile_size=32, tile_overlap=16,
                  positive_pad=(2, 6, 2, 6), negative_pad=(1, 7, 0, 8))
    with pytest.warns(DeprecationWarning, match=r"upscale\(tile=\.\.\.\) is deprecated; use tiling/tile_size"):
        old = upscale(x, tiny_pix, scale=2, guidance=1.5, tile=32, overlap=16, pos_pad=(2, 6, 2, 6),
                      neg_pad=(1, 7, 0, 8))
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning, match="use passes"):
        a = upscale(x, tiny_pix, scale=1, randpad=2, ensemble=2, seed=4)
    assert torch.equal(a, upscale(x, tiny_pix, scale=1, passes=2, flips=2, seed=4))
    with pytest.raises(ConfigError, match="give tile_overlap or its deprecated name overlap, not both"):
        upscale(x, tiny_pix, overlap=8, tile_overlap=8)
    with pytest.raises(TypeError, match="unknown keyword"):
        upscale(x, tiny_pix, tilesize=64)
