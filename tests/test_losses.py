"""Tests of gendr_core.losses and gendr_core.vgg (CPU, small tensors, random VGG weights)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gendr_core.errors import CheckpointFormatError, ConfigError, ImageInputError, MissingDependencyError
from gendr_core.losses import (
    DISTS,
    DISTS_ALPHA_BETA_PATH,
    EADISTS,
    artifact_mask,
    channel_normalise,
    discriminator_adv_loss,
    dists_similarity,
    feature_matching_loss,
    generator_adv_loss,
    l1_loss,
    masked_fourier_loss,
    neg_psnr_loss,
    load_dists_alpha_beta,
    neg_psnr_y_loss,
    sobel_magnitude,
)
from gendr_core.metrics import psnr_y
from gendr_core.vgg import L2Pool2d, VGG16Features, convert_vgg16_to_safetensors, load_vgg16_state_dict

# ------------------------------------------------------------------------------------------------
# L1 / adversarial
# ------------------------------------------------------------------------------------------------


def test_l1_loss_mean() -> None:
    a = torch.zeros(1, 3, 2, 2)
    b = torch.full((1, 3, 2, 2), 0.25)
    b[0, 0, 0, 0] = 1.25
    # 11 elements at 0.25, one at 1.25 -> (11 * 0.25 + 1.25) / 12
    assert l1_loss(a, b).item() == pytest.approx((11 * 0.25 + 1.25) / 12)


def test_neg_psnr_loss_hand_computed_per_sample_mean() -> None:
    target = torch.zeros(2, 3, 4, 4)
    pred = target.clone()
    pred[0] += 0.1  # MSE 1e-2 -> PSNR 20 dB
    pred[1, :, :2] += 0.01 * math.sqrt(2)  # half the pixels off by 0.01*sqrt(2): MSE 1e-4 -> 40 dB
    # the mean of the per-sample -PSNR (-30 dB), not -PSNR of the batch MSE (-10 log10(5.05e-3) = -22.97)
    assert neg_psnr_loss(pred, target).item() == pytest.approx(-30.0, abs=1e-4)
    assert neg_psnr_loss(target, target).item() == pytest.approx(-100.0)  # eps = 1e-10 caps it
    pred.requires_grad_(True)
    neg_psnr_loss(pred, target).backward()
    g = pred.grad
    # d(10 log10 m_i)/d pred = (10 / ln 10) * 2 (pred - t) / (n m_i) / B: equal-weighted samples in dB
    n = 3 * 4 * 4
    assert g[0, 0, 0, 0].item() == pytest.approx(10 / math.log(10) * 2 * 0.1 / (n * 1e-2) / 2, rel=1e-4)
    assert g[1, 0, 0, 0].item() == pytest.approx(10 / math.log(10) * 2 * 0.01 * math.sqrt(2) / (n * 1e-4) / 2,
                                                 rel=1e-3)
    with pytest.raises(ImageInputError, match="neg_psnr_loss"):
        neg_psnr_loss(pred, target[:, :, :2])


def test_neg_psnr_y_loss_scores_luma_only() -> None:
    target = torch.full((2, 3, 4, 4), 0.5)
    pred = target.clone()
    # sample 0: +0.1 on R only -> luma error 65.481/255 * 0.1 -> PSNR-Y = -20 log10(0.0256788...)
    pred[0, 0] += 0.1
    # sample 1: a pure chroma change (dR, dG, dB) orthogonal to the luma weights -> luma error 0
    w = torch.tensor([65.481, 128.553, 24.966]) / 255.0
    d = torch.tensor([128.553, -65.481, 0.0]) / 255.0 * 0.05  # w . d = 0
    assert float(w @ d) == pytest.approx(0.0, abs=1e-7)
    pred[1] += d.view(3, 1, 1)
    expected0 = 20 * math.log10(65.481 / 255 * 0.1)  # -PSNR-Y in dB = 10 log10(MSE_Y)
    expected = (expected0 + 10 * math.log10(1e-10)) / 2  # sample 1 sits at the -100 dB eps cap
    assert neg_psnr_y_loss(pred, target).item() == pytest.approx(expected, abs=2e-3)
    # and it is minus the benchmark metric on sample 0 (peak 255 on [0,255] luma == peak 1 on [0,1])
    assert -neg_psnr_y_loss(pred[:1], target[:1]).item() == pytest.approx(float(psnr_y(pred[:1], target[:1])), abs=1e-4)
    with pytest.raises(ImageInputError, match="neg_psnr_y_loss"):
        neg_psnr_y_loss(pred[:, :1], target[:, :1])


def test_adversarial_losses_hand_computed() -> None:
    zeros = torch.zeros(4, 1)
    assert generator_adv_loss(zeros).item() == pytest.approx(math.log(2.0))
    assert discriminator_adv_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2.0))
    logits = torch.tensor([1.0, -1.0])
    expected_g = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert generator_adv_loss(logits).item() == pytest.approx(expected_g)
    # D: real logits 2 -> softplus(-2); fake logits -3 (shape differs) -> softplus(-3)
    real, fake = torch.full((2,), 2.0), torch.full((3, 1, 2), -3.0)
    expected_d = math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-3.0))
    assert discriminator_adv_loss(real, fake).item() == pytest.approx(expected_d)


def test_adversarial_losses_over_lists_of_logit_maps() -> None:
    """One map per discriminator head: mean over heads of each head's mean (maps of any size)."""
    maps = [torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    assert generator_adv_loss(maps).item() == pytest.approx((math.log(2.0) + math.log1p(math.exp(-1.0))) / 2)
    fake = [torch.full((1, 1, 3, 3), -1.0), torch.zeros(1, 1, 1, 1)]
    expected = (math.log(2.0) + math.log1p(math.exp(-1.0))) / 2 + (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    assert discriminator_adv_loss(maps, fake).item() == pytest.approx(expected)
    with pytest.raises(ImageInputError, match="empty"):
        generator_adv_loss([])


def test_feature_matching_loss_hand_computed() -> None:
    # depth 0: 2 channels at 2 positions. x: (3,4) and (0,1); y: (4,3) and (0,1)
    x0 = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # (1,2,1,2)
    y0 = torch.tensor([[[[4.0, 0.0]], [[3.0, 1.0]]]])
    # RMS over channels at position 0 is sqrt(12.5) for both: |3-4|/sqrt(12.5) per channel; position 1 equal
    d0 = 2 * (1 / math.sqrt(12.5)) / 4
    # depth 1: one channel, x = 2, y = -2 -> normalised +1 and -1
    x1, y1 = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -2.0)
    assert d0 == pytest.approx(0.1414214, rel=1e-6)
    assert feature_matching_loss([x0, x1], [y0, y1]).item() == pytest.approx((d0 + 2.0) / 2, rel=1e-5)
    # channel normalisation: unit RMS over channels, invariant to a positive scale per depth
    n = channel_normalise(x0)
    assert n.pow(2).mean(dim=1).flatten().tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert feature_matching_loss([x0, x1], [5 * x0, 0.5 * x1]).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ImageInputError, match="depth 1"):
        feature_matching_loss([x0, x1], [y0, torch.zeros(1, 2, 1, 1)])
    with pytest.raises(ImageInputError, match="same non-zero number"):
        feature_matching_loss([x0], [y0, y1])


# ------------------------------------------------------------------------------------------------
# Masked Fourier-space loss
# ------------------------------------------------------------------------------------------------


def test_artifact_mask_32x32_bands() -> None:
    m = artifact_mask(32, 32, period=8, half_width=1)
    assert m.shape == (32, 32)
    # centres 0,4,...,32 -> bands {c-1, c}: {31,0},{3,4},...,{27,28} -> 16 indices per axis
    band = {31, 0, 3, 4, 7, 8, 11, 12, 15, 16, 19, 20, 23, 24, 27, 28}
    assert 5 not in band
    assert {j for j in range(32) if m[5, j] == 1} == band
    assert m.sum().item() == 16 * 32 + 16 * 32 - 16 * 16  # 768
    assert torch.all(m[0] == 1) and torch.all(m[:, 31] == 1)


def test_artifact_mask_non_square_and_edge_cases() -> None:
    m = artifact_mask(32, 64, period=8, half_width=1)  # row centres: multiples of 4; columns: of 8
    assert m.shape == (32, 64)
    assert torch.all(m[3] == 1) and torch.all(m[4] == 1) and torch.all(m[:, 63] == 1)
    assert m[5, 5].item() == 0 and m[5, 7].item() == 1 and m[5, 8].item() == 1 and m[5, 9].item() == 0
    assert m.sum().item() == 16 * 64 + 16 * 16  # 16 full rows + 16 band columns on the other 16 rows
    assert artifact_mask(16, 16, half_width=0).sum().item() == 0
    assert artifact_mask(16, 16, half_width=1).sum().item() == 256  # s=1 covers everything at 16x16
    with pytest.raises(ConfigError):
        artifact_mask(16, 16, half_width=-1)
    with pytest.raises(ConfigError):
        masked_fourier_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), reduction="max")


def test_artifact_mask_points_is_the_intersection_of_the_bands() -> None:
    bands = artifact_mask(32, 64, period=8, half_width=1)
    points = artifact_mask(32, 64, period=8, half_width=1, kind="points")
    rows = {i for i in range(32) if bands[i].all()}  # 16 full row bands
    cols = {j for j in range(64) if bands[:, j].all()}  # 16 full column bands
    assert len(rows) == 16 and len(cols) == 16
    want = torch.zeros(32, 64)
    for i in rows:
        for j in cols:
            want[i, j] = 1
    assert torch.equal(points, want)
    assert points.sum().item() == 16 * 16 and points[0, 0] == 1 and points[4, 8] == 1 and points[0, 5] == 0
    assert torch.all(points <= bands)
    with pytest.raises(ConfigError, match="kind"):
        artifact_mask(16, 16, kind="stripes")


def test_mfs_points_mask_sees_the_grid_but_not_the_stripes_hand_computed() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    base = torch.full((1, 1, 32, 32), 0.5)
    # (0, 4): a period-8 column pattern, a harmonic of the grid -> in both masks, 0.1 as above
    grid = base + 0.1 * torch.cos(2 * math.pi * 4 * xx / 32)
    # (6, 4): on a column band, not on a row band -> in the band mask only
    stripe = base + 0.1 * torch.cos(2 * math.pi * (6 * yy + 4 * xx) / 32)
    assert masked_fourier_loss(grid, base, mask="points").item() == pytest.approx(0.1, rel=1e-4)
    assert masked_fourier_loss(stripe, base).item() == pytest.approx(0.1, rel=1e-4)
    assert masked_fourier_loss(stripe, base, mask="points").item() == pytest.approx(0.0, abs=1e-6)
    # an 8x8-periodic pattern has all its energy on the points: both masks give the same loss
    tile = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    pat = 0.5 + 0.05 * tile.repeat(1, 1, 4, 4)
    flat = torch.full_like(pat, 0.5)
    assert masked_fourier_loss(pat, flat, mask="points").item() == pytest.approx(
        masked_fourier_loss(pat, flat).item(), rel=1e-5)


def test_mfs_constant_offset_hand_computed() -> None:
    # Only the DC bin differs: |F_backward| = c * H * W per channel -> 0.5 * 1024 = 512.
    # Mean over all 2*3*32*32 elements: 2*3*512 / (2*3*1024) = 0.5 = the offset.
    target = torch.full((2, 3, 32, 32), 0.25)
    pred = torch.full((2, 3, 32, 32), 0.75)
    assert masked_fourier_loss(pred, target).item() == pytest.approx(0.5, rel=1e-6)
    assert masked_fourier_loss(pred, target, reduction="sum").item() == pytest.approx(2 * 3 * 512, rel=1e-6)
    per_image = masked_fourier_loss(pred, target, reduction="none")
    assert per_image.shape == (2,) and torch.allclose(per_image, torch.full((2,), 0.5))
    # ortho: DC differs by c*sqrt(HW) = 0.5*32 = 16 -> 16 / 1024 per channel
    assert masked_fourier_loss(pred, target, norm="ortho").item() == pytest.approx(16 / 1024, rel=1e-6)
    assert masked_fourier_loss(target, target).item() == 0.0


def test_mfs_ignores_unmasked_bins_hand_computed() -> None:
    # A single cosine at frequency (row 2, col 2) is outside the mask of a 32x32 image -> loss 0;
    # the same cosine at (0, 4) (a pixel-shuffle grid column, period 8) is inside.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    base = torch.full((1, 1, 32, 32), 0.5)
    off_band = base + 0.1 * torch.cos(2 * math.pi * (2 * yy + 2 * xx) / 32)
    on_band = base + 0.1 * torch.cos(2 * math.pi * 4 * xx / 32)
    assert masked_fourier_loss(off_band, base).item() == pytest.approx(0.0, abs=1e-6)
    # cos with amplitude a puts a*H*W/2 into bins (0,4) and (0,-4): 2 * 0.1*1024/2 / 1024 = 0.1
    assert masked_fourier_loss(on_band, base).item() == pytest.approx(0.1, rel=1e-4)


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="circular"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="circular"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@pytest.mark.parametrize("n", [64, 128])
def test_mfs_periodic_pattern_vs_smooth_change(n: int) -> None:
    g = torch.Generator().manual_seed(0)
    clean = _smooth(torch.randn(1, 3, n, n, generator=g), 4.0)
    clean = 0.5 + 0.2 * clean / clean.std()
    tile = torch.randn(1, 3, 8, 8, generator=g)
    tile = tile - tile.mean(dim=(2, 3), keepdim=True)
    periodic = tile.repeat(1, 1, n // 8, n // 8)  # x8 pixel-shuffle-like artifact
    # non-periodic smooth change: random low-frequency field with oblique frequencies (|u|,|v| in 2..5)
    spec = torch.zeros(1, 3, n, n, dtype=torch.complex64)
    for u in range(2, 6):
        for v in range(2, 6):
            for su, sv in ((1, 1), (1, -1)):
                spec[..., su * u, sv * v] = torch.randn(3, generator=g) + 1j * torch.randn(3, generator=g)
    smooth = torch.fft.ifft2(spec).real
    energy = 0.02 * n * math.sqrt(3)  # 2 % RMS per pixel
    periodic = periodic * energy / periodic.norm()
    smooth = smooth * energy / smooth.norm()
    assert periodic.norm().item() == pytest.approx(smooth.norm().item(), rel=1e-5)
    loss_periodic = masked_fourier_loss(clean + periodic, clean).item()
    loss_smooth = masked_fourier_loss(clean + smooth, clean).item()
    assert loss_periodic > 0.05
    assert loss_periodic > 100 * loss_smooth
    # resolution independence of the artifact penalty: a fixed tile gives the same loss at any size
    assert masked_fourier_loss(0.5 + tile.repeat(1, 1, n // 8, n // 8), torch.full((1, 3, n, n), 0.5)).item() == (
        pytest.approx(masked_fourier_loss(0.5 + tile, torch.full((1, 3, 8, 8), 0.5)).item(), rel=1e-3)
    )


def test_mfs_gradient_finite_bf16_input() -> None:
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = x.detach().clone()
    masked_fourier_loss(x, y).backward()  # identical amplitudes: |.| gradient at equality
    assert torch.isfinite(x.grad).all()
    xb = torch.rand(1, 3, 16, 16).bfloat16().requires_grad_(True)
    loss = masked_fourier_loss(xb, torch.rand(1, 3, 16, 16).bfloat16())
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(xb.grad.float()).all()


# ------------------------------------------------------------------------------------------------
# VGG / DISTS / EA-DISTS
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists() -> DISTS:
    return DISTS(None, allow_random=True, seed=0)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    return x, y


def test_vgg_parameter_names_match_torchvision() -> None:
    names = {k for k in VGG16Features().state_dict()}
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert names == {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}


def test_l2pool_constant_image() -> None:
    pool = L2Pool2d()
    x = torch.full((1, 2, 8, 8), 3.0)
    out = pool(x)
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[..., 1:, 1:], torch.full_like(out[..., 1:, 1:], 3.0), atol=1e-5)
    # corner: the valid 2x2 part of g = [[1,2,1],[2,4,2],[1,2,1]]/16 sums to 9/16 -> 3 * 3/4
    assert out[0, 0, 0, 0].item() == pytest.approx(2.25, abs=1e-5)


def test_dists_similarity_hand_computed() -> None:
    fx = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # mu 2.5, var 1.25
    c = 1e-6
    s1, s2 = dists_similarity(fx, 2 * fx)  # mu_y 5, var_y 5, cov 2.5
    assert s1.shape == (1, 1)
    assert s1.item() == pytest.approx((25 + c) / (31.25 + c), rel=1e-6)
    assert s2.item() == pytest.approx((5 + c) / (6.25 + c), rel=1e-6)
    s1, s2 = dists_similarity(fx, torch.full_like(fx, 2.0))  # mu_y 2, var_y 0, cov 0
    assert s1.item() == pytest.approx((10 + c) / (10.25 + c), rel=1e-6)
    assert s2.item() == pytest.approx(c / (1.25 + c), rel=1e-4)


OFFICIAL_DISTS_WEIGHTS = Path("/tmp/dists/DISTS_pytorch/weights.pt")


def test_dists_uses_the_official_alpha_beta(dists: DISTS) -> None:
    """DISTS(...) with no override loads the shipped DISTS_pytorch==0.1 weights (NOTICE_DISTS.md)."""
    alpha, beta = load_dists_alpha_beta()
    assert DISTS_ALPHA_BETA_PATH.is_file() and (DISTS_ALPHA_BETA_PATH.parent / "NOTICE_DISTS.md").is_file()
    assert alpha.shape == beta.shape == (1, 1475, 1, 1)
    assert alpha.sum().item() == pytest.approx(0.8760496, abs=1e-6)
    assert beta.sum().item() == pytest.approx(0.1239502, abs=1e-6)
    assert alpha.flatten()[0].item() == pytest.approx(0.02106655, rel=1e-5)
    assert beta.flatten()[0].item() == pytest.approx(0.02053877, rel=1e-5)
    assert beta.min().item() == 0.0 and alpha.min().item() > 0
    assert torch.equal(dists.alpha, alpha) and torch.equal(dists.beta, beta)
    if OFFICIAL_DISTS_WEIGHTS.is_file():  # the wheel's own file, where it is unpacked
        ref = torch.load(OFFICIAL_DISTS_WEIGHTS, map_location="cpu", weights_only=True)
        assert torch.equal(ref["alpha"], alpha) and torch.equal(ref["beta"], beta)


def test_dists_value_by_the_formula(dists: DISTS, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """1 - sum_k sum_c (a_kc S1_kc + b_kc S2_kc) / (sum a + sum b), computed here in float64 with
    explicit loops over the six stages, on the random-VGG features of the module."""
    x, y = images
    with torch.no_grad():
        fx, fy = dists.features(x), dists.features(y)
    alpha, beta = (t.double().flatten() for t in load_dists_alpha_beta())
    w = alpha.sum() + beta.sum()
    c, start, expected = 1e-6, 0, torch.ones(2, dtype=torch.float64)
    for a, b in zip(fx, fy, strict=True):
        a, b = a.double().flatten(2), b.double().flatten(2)  # (B,C,N)
        n_c = a.shape[1]
        ma, mb = a.mean(2), b.mean(2)
        va, vb = a.var(2, unbiased=False), b.var(2, unbiased=False)
        cov = ((a - ma[..., None]) * (b - mb[..., None])).mean(2)
        s1 = (2 * ma * mb + c) / (ma**2 + mb**2 + c)
        s2 = (2 * cov + c) / (va + vb + c)
        expected -= (s1 * alpha[start : start + n_c]).sum(1) / w + (s2 * beta[start : start + n_c]).sum(1) / w
        start += n_c
    assert start == 1475
    got = dists(x, y, reduction="none")
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5)
    assert 0 < float(got.min()) and float(got.max()) < 1


def test_dists_identity_positive_symmetric(dists: DISTS, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = images
    assert dists(x, x).abs().item() < 1e-6
    assert dists(x, x, reduction="none").abs().max().item() < 1e-6
    d_xy = dists(x, y, reduction="none")
    d_yx = dists(y, x, reduction="none")
    assert d_xy.shape == (2,)
    assert torch.all(d_xy > 0)
    assert torch.allclose(d_xy, d_yx, atol=1e-6)


def test_dists_frozen_but_differentiable(dists: DISTS, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = images
    assert all(not p.requires_grad for p in dists.parameters())
    dists.train()
    assert not dists.training and not dists.vgg.training
    xg = x.clone().requires_grad_(True)
    dists(xg, y).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in dists.parameters())


def test_dists_requires_weights_file_message() -> None:
    with pytest.raises(MissingDependencyError) as exc:
        DISTS(None)
    msg = str(exc.value)
    assert "VGG16" in msg and "perceptual_weights" in msg and "downloaded" in msg and "gendr-pix convert --vgg16" in msg


def test_dists_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "vgg16.safetensors"
    with pytest.raises(FileNotFoundError, match="nope"):
        DISTS(missing)


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    net = VGG16Features()
    net.init_random(seed=123)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_load_vgg_safetensors_and_pth_same_outputs(
    tmp_path: Path, vgg_state: dict[str, torch.Tensor], images: tuple[torch.Tensor, torch.Tensor], dists: DISTS
) -> None:
    from safetensors.torch import save_file

    st_path = tmp_path / "vgg16.safetensors"
    save_file(vgg_state, str(st_path))
    # torchvision-style full state dict with classifier keys, under a "vgg." prefix, as .pth
    full = {f"vgg.{k}": v for k, v in vgg_state.items()}
    full["classifier.0.weight"] = torch.zeros(4, 7)
    full["classifier.0.bias"] = torch.zeros(4)
    pth_path = tmp_path / "vgg16-test.pth"
    torch.save(full, pth_path)
    # bare "N.weight" keys are accepted too
    bare = {k.removeprefix("features."): v for k, v in vgg_state.items()}
    bare_path = tmp_path / "bare.pth"
    torch.save(bare, bare_path)

    x, y = images
    d_st, d_pth, d_bare = DISTS(st_path), DISTS(pth_path), DISTS(bare_path)
    for name, p in d_pth.vgg.state_dict().items():
        assert torch.equal(p, vgg_state[name])
    v_st = d_st(x, y, reduction="none")
    assert torch.equal(v_st, d_pth(x, y, reduction="none"))
    assert torch.equal(v_st, d_bare(x, y, reduction="none"))
    assert not torch.allclose(v_st, dists(x, y, reduction="none"))  # really loaded, not seed 0

    converted = convert_vgg16_to_safetensors(pth_path, tmp_path / "out" / "vgg16.safetensors")
    state = load_vgg16_state_dict(converted)
    assert set(state) == set(vgg_state) and all(torch.equal(state[k], vgg_state[k]) for k in state)


def test_load_vgg_wrong_shape_and_missing_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 5, 5)}, str(bad))
    with pytest.raises(CheckpointFormatError) as exc:
        load_vgg16_state_dict(bad)
    assert (
        "features.0.weight" in str(exc.value)
        and "(64, 3, 3, 3)" in str(exc.value)
        and "bad.safetensors" in str(exc.value)
    )

    partial = tmp_path / "partial.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(partial))
    with pytest.raises(CheckpointFormatError, match="features.0.bias"):
        load_vgg16_state_dict(partial)


def test_dists_alpha_beta_weights(tmp_path: Path, images: tuple[torch.Tensor, torch.Tensor], dists: DISTS) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    alpha = 0.1 + 0.05 * torch.rand(1, 1475, 1, 1, generator=g)
    beta = 0.1 + 0.05 * torch.rand(1, 1475, 1, 1, generator=g)
    pt_path = tmp_path / "weights.pt"
    torch.save({"alpha": alpha, "beta": beta}, pt_path)
    st_path = tmp_path / "dists.safetensors"
    save_file({"alpha": alpha, "beta": beta}, str(st_path))
    x, y = images
    d_pt = DISTS(None, dists_weights=pt_path, allow_random=True, seed=0)
    d_st = DISTS(None, dists_weights=st_path, allow_random=True, seed=0)
    assert d_pt(x, x).abs().item() < 1e-6
    v = d_pt(x, y, reduction="none")
    assert torch.equal(v, d_st(x, y, reduction="none"))
    assert torch.all(v > 0) and not torch.allclose(v, dists(x, y, reduction="none"))

    wrong = tmp_path / "wrong.pt"
    torch.save({"alpha": alpha[:, :100], "beta": beta}, wrong)
    with pytest.raises(CheckpointFormatError, match="alpha"):
        DISTS(None, dists_weights=wrong, allow_random=True)


def test_sobel_magnitude_hand_computed() -> None:
    flat = torch.full((1, 3, 6, 6), 0.7)
    assert torch.allclose(sobel_magnitude(flat), torch.full((1, 1, 6, 6), 1e-3), rtol=1e-4)  # sqrt(1e-6)
    step = torch.zeros(1, 3, 6, 6)
    step[..., 3:] = 1.0  # vertical edge between columns 2 and 3
    s = sobel_magnitude(step)
    assert s.shape == (1, 1, 6, 6)
    # columns 2 and 3 see weights 1+2+1 on one side -> |gx| = 4, gy = 0
    assert torch.allclose(s[0, 0, :, 2], torch.full((6,), math.sqrt(16 + 1e-6)))
    assert torch.allclose(s[0, 0, :, 3], torch.full((6,), math.sqrt(16 + 1e-6)))
    assert torch.allclose(s[0, 0, :, 0], torch.full((6,), 1e-3), rtol=1e-4)


def test_ea_dists(dists: DISTS, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = images
    ea = EADISTS(dists=dists)
    with pytest.raises(MissingDependencyError, match="perceptual_weights"):
        EADISTS(None)  # same constructor as DISTS
    assert ea.dists is dists  # shares the frozen VGG
    assert ea(x, x).abs().item() < 1e-6
    d = dists(x, y, reduction="none")
    e = ea(x, y, reduction="none")
    assert torch.all(e > d)
    xg = x.clone().requires_grad_(True)
    ea(xg, y).backward()
    assert torch.isfinite(xg.grad).all()
