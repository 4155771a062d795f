from __future__ import annotations

import einops
import pytest
import torch

from gendr_core.ops.color_fix import wavelet_blur, wavelet_color_fix, wavelet_decompose
from gendr_core.ops.guidance import dihedral, dihedral_ensemble, pad_cfg, rand_pad_ensemble, run_padded
from gendr_core.ops.padding import Pad, crop, crop_to_multiple, pad_fixed, pad_to_multiple, rand_pad, sample_rand_pad
from gendr_core.ops.resize import output_size, upscale_bicubic
from gendr_core.ops.shuffle import shuffle, unshuffle
from gendr_core.ops.tiling import tile_spans, tiled_apply


def test_unshuffle_shape_order_and_exact_round_trip(gen):
    x = torch.rand(2, 3, 64, 48, generator=gen)
    z = unshuffle(x, 8)
    assert z.shape == (2, 192, 8, 6)
    assert torch.equal(z, einops.rearrange(x, "b c (h i) (w j) -> b (c i j) h w", i=8, j=8))
    assert torch.equal(shuffle(z, 8), x)


def test_unshuffle_rejects_bad_sizes():
    with pytest.raises(ValueError, match="H=30"):
        unshuffle(torch.zeros(1, 3, 30, 32), 8)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("pad", [(4, 4, 4, 4), (3, 5, 3, 5), (0, 7, 2, 0), (40, 1, 0, 33)])
def test_pad_crop_exact(gen, mode, pad):
    x = torch.rand(1, 3, 10, 13, generator=gen)
    y = pad_fixed(x, pad, mode)
    assert y.shape == (1, 3, 10 + pad[2] + pad[3], 13 + pad[0] + pad[1])
    assert torch.equal(crop(y, pad), x)


def test_reflect_pad_matches_torch_when_narrow(gen):
    x = torch.rand(1, 3, 9, 9, generator=gen)
    assert torch.equal(pad_fixed(x, (3, 5, 3, 5)), torch.nn.functional.pad(x, (3, 5, 3, 5), mode="reflect"))


def test_pad_to_multiple_composes_branch_pad(gen):
    x = torch.rand(1, 3, 30, 37, generator=gen)
    y, p = pad_to_multiple(x, 64, (3, 5, 3, 5))
    assert y.shape[-2:] == (64, 64)
    assert p == Pad(3, 64 - 37 - 3, 3, 64 - 30 - 3)
    assert torch.equal(crop(y, p), x)


def test_rand_pad_range_and_seed(gen):
    pads = {sample_rand_pad(torch.Generator().manual_seed(s)) for s in range(200)}
    assert all(p.left + p.right == 8 and p.top + p.bottom == 8 for p in pads)
    assert {p.left for p in pads} == set(range(8))
    x = torch.rand(1, 3, 16, 16, generator=gen)
    a, pa = rand_pad(x, torch.Generator().manual_seed(3))
    b, pb = rand_pad(x, torch.Generator().manual_seed(3))
    assert pa == pb and torch.equal(a, b) and a.shape == (1, 3, 24, 24)


def identity(x, cond):
    return x.clone()


@pytest.mark.parametrize("w", [1.0, 1.8, 3.0])
@pytest.mark.parametrize("batched", [True, False])
def test_pad_cfg_identity_predictor_is_exact(gen, w, batched):
    x = torch.rand(2, 3, 21, 35, generator=gen)
    c = torch.zeros(1, 4, 8)
    y = pad_cfg(identity, x, c, c, w, multiple=16, batched=batched)
    assert y.shape == x.shape
    if w == 1.0:
        assert torch.equal(y, x)
    else:  # w*x + (1-w)*x up to one rounding of the float combination
        torch.testing.assert_close(y, x, rtol=0, atol=2e-7 * abs(w) * 4)


def test_pad_cfg_against_hand_built_two_pass_reference(gen):
    weight = torch.randn(3, 3, 3, 3, generator=gen) * 0.2

    def predict(x, cond):  # position-dependent, so the pads matter; cond enters additively
        return torch.nn.functional.conv2d(x, weight, padding=1) + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    x = torch.rand(1, 3, 19, 22, generator=gen)
    cp, cn = torch.full((1, 2, 4), 0.3), torch.full((1, 2, 4), -0.1)
    w = 1.8
    # hand-built: pad each branch (Eq. 7 pads), bring to a multiple of 8, run, crop its own pad
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    xp = pad_fixed(xp, (0, (-xp.shape[-1]) % 8, 0, (-xp.shape[-2]) % 8))
    yp = predict(xp, cp)[..., 4 : 4 + 19, 4 : 4 + 22]
    xn = torch.nn.functional.pad(x, (3, 5, 3, 5), mode="reflect")
    xn = pad_fixed(xn, (0, (-xn.shape[-1]) % 8, 0, (-xn.shape[-2]) % 8))
    yn = predict(xn, cn)[..., 3 : 3 + 19, 3 : 3 + 22]
    ref = w * yp + (1 - w) * yn
    for batched in (True, False):
        out = pad_cfg(predict, x, cp, cn, w, multiple=8, batched=batched)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # the branches really differ (pads and conditions), so the test can fail
    assert (yp - yn).abs().max() > 0.1


def test_rand_pad_ensemble_identity_and_mean(gen):
    x = torch.rand(1, 3, 16, 20, generator=gen)
    c = torch.zeros(1, 1, 1)
    assert torch.allclose(rand_pad_ensemble(identity, x, c, 5, multiple=8, generator=gen), x, atol=1e-6)

    def shift(x, cond):  # returns x rolled by one pixel: depends on the pad
        return torch.roll(x, 1, dims=-1)

    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ens = rand_pad_ensemble(shift, x, c, 3, multiple=8, generator=g1)
    manual = sum(run_padded(shift, x, c, sample_rand_pad(g2), 8) for _ in range(3)) / 3
    torch.testing.assert_close(ens, manual, rtol=0, atol=1e-6)


def test_dihedral_group_inverse_and_ensemble_mean(gen):
    x = torch.rand(2, 3, 5, 7, generator=gen)
    images = [dihedral(x, k) for k in range(8)]
    assert [tuple(t.shape[-2:]) for t in images] == [(5, 7)] * 4 + [(7, 5)] * 4
    assert all(torch.equal(dihedral(t, k, inverse=True), x) for k, t in enumerate(images))
    assert len({tuple(t.flatten().tolist()) for t in images}) == 8  # eight distinct elements
    assert torch.equal(dihedral(x, 5), x.flip(-1).transpose(-1, -2))
    # an equivariant restorer (pointwise) is unchanged by the ensemble; a shift is not
    torch.testing.assert_close(dihedral_ensemble(lambda t: t * 2, x, 8), x * 2, rtol=0, atol=1e-6)
    row = torch.arange(4.0).view(1, 1, 1, 4)  # roll by one along W, undone per transform
    ens = dihedral_ensemble(lambda t: torch.roll(t, 1, dims=-1), row, 2)
    # identity pass: [3,0,1,2]; flipped pass: flip(roll(flip(row))) = [1,2,3,0]; mean of the two
    assert ens.flatten().tolist() == [2.0, 1.0, 2.0, 1.0]
    calls = []
    dihedral_ensemble(lambda t: t, x, 4, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(ValueError, match="ensemble=3"):
        dihedral_ensemble(lambda t: t, x, 3)
    with pytest.raises(ValueError, match="k=8"):
        dihedral(x, 8)


def test_resize_sizes_and_range(gen):
    assert output_size(10, 7, 4) == (40, 28)
    assert output_size(10, 7, 2.5) == (25, 18)
    x = torch.rand(1, 3, 10, 7, generator=gen)
    y = upscale_bicubic(x, 2.5)
    assert y.shape == (1, 3, 25, 18) and y.min() >= 0 and y.max() <= 1
    assert torch.equal(upscale_bicubic(x, 1), x)


def test_wavelet_decompose_sums_and_color_fix(gen):
    x = torch.rand(1, 3, 40, 40, generator=gen)
    high, low = wavelet_decompose(x, 5)
    torch.testing.assert_close(high + low, x, rtol=0, atol=1e-6)
    c = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(wavelet_blur(c, 4), c)  # blur kernel sums to 1
    # content with a colour cast gets the reference's low frequencies back
    ref = torch.rand(1, 3, 64, 64, generator=gen)
    content = ref + torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    fixed = wavelet_color_fix(content, ref)
    torch.testing.assert_close(fixed, ref, rtol=0, atol=1e-5)
    half = wavelet_color_fix(content, ref, 0.5)
    torch.testing.assert_close(half, (content + ref) / 2, rtol=0, atol=1e-5)
    assert torch.equal(wavelet_color_fix(content, ref, 0.0), content)


def test_tile_spans_cover_and_overlap():
    spans = tile_spans(300, 128, 32)
    assert spans[0][0] == 0 and spans[-1][1] == 300
    for (_a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
        assert a1 - b0 == 32 and b0 % 32 == 0
    assert tile_spans(100, 128, 32) == [(0, 100)]


def test_tiled_equals_full_for_small_receptive_field(gen):
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 3, 3, padding=1))

    def fn(t):  # one-sided receptive field 2 px; reflect padding at tile borders
        with torch.no_grad():
            return conv(t)

    x = torch.rand(1, 3, 200, 170, generator=gen)
    full = fn(x)
    tiled = tiled_apply(fn, x, tile=64, overlap=16, align=8)
    assert (tiled - full).abs().max() < 1e-5
    # a receptive field larger than the blend margin would show seams: the check can fail
    big = torch.nn.Conv2d(3, 3, 15, padding=7)
    with torch.no_grad():
        diff = (tiled_apply(big, x, tile=64, overlap=16, align=8) - big(x)).abs().max()
    assert diff > 1e-3


def test_tiled_apply_progress_counts(gen):
    calls = []
    tiled_apply(lambda t: t, torch.rand(1, 3, 100, 100, generator=gen), 64, 16, 8, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 4) for i in range(1, 5)]


def test_crop_to_multiple_drops_only_the_right_and_bottom_remainder():
    x = torch.arange(2 * 3 * 10 * 13, dtype=torch.float32).reshape(2, 3, 10, 13)
    y = crop_to_multiple(x, 4)
    assert y.shape == (2, 3, 8, 12)
    assert torch.equal(y, x[..., :8, :12])
    assert torch.equal(crop_to_multiple(x, 1), x)
    assert crop_to_multiple(x[0], 5).shape == (3, 10, 10)  # (C,H,W) too
    with pytest.raises(ValueError, match="multiple=0"):
        crop_to_multiple(x, 0)
