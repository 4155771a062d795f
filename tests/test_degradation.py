"""Tests of gendr_core.degradation: kernels, sampling determinism, sizes, codecs, noise."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from gendr_core.degradation import (
    KERNEL_KINDS,
    CodecConfig,
    CodecParams,
    DegradationConfig,
    DegradationParams,
    DegradationStage,
    KernelParams,
    add_gaussian_noise,
    add_poisson_noise,
    apply_codec,
    degrade,
    degrade_batch,
    degrade_fixed,
    degrade_random,
    filter2d,
    fixed_eval_degradation,
    gaussian_kernel,
    make_kernel,
    sample_degradation,
    sinc_kernel,
)
from gendr_core.errors import ConfigError, ImageInputError, MissingDependencyError

HAVE_AV = importlib.util.find_spec("av") is not None
NO_AV_REASON = "PyAV (`pip install av`) is not installed: H.264/H.265 round trips cannot be tested"
# Without PyAV the default config would draw h264/h265; fall back to JPEG-only there.
CFG = DegradationConfig() if HAVE_AV else DegradationConfig.realesrgan(apisr_codecs=False)


def smooth_image(h: int = 48, w: int = 64) -> torch.Tensor:
    """A smooth colour test image (3,h,w) in [0.1, 0.9]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(3 * xx + yy), 0.5 + 0.3 * torch.cos(2 * yy), 0.1 + 0.8 * xx])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("kind", KERNEL_KINDS)
@pytest.mark.parametrize("size", [7, 21])
def test_kernels_sum_to_one_and_have_requested_size(kind, size):
    p = KernelParams(kind, size, sigma_x=1.5, sigma_y=0.7, theta=0.4, beta=1.5, omega_c=1.2)
    k = make_kernel(p)
    assert k.shape == (size, size) and k.dtype == torch.float32
    assert abs(float(k.sum()) - 1.0) < 1e-5
    assert torch.allclose(k, k.flip(0, 1), atol=1e-7)  # point symmetric: conv == correlation


def test_isotropic_gaussian_matches_hand_computed_3x3():
    # sigma=1: weights exp(-r^2/2) -> centre 1/(1 + 4e^-0.5 + 4e^-1).
    k = gaussian_kernel(3, 1.0)
    assert float(k[1, 1]) == pytest.approx(0.2041799556, abs=1e-7)
    assert float(k[0, 1]) == pytest.approx(0.1238414032, abs=1e-7)
    assert float(k[0, 0]) == pytest.approx(0.0751136080, abs=1e-7)


def test_anisotropic_gaussian_axes_and_rotation():
    k = gaussian_kernel(9, 2.0, 1.0, 0.0)  # sigma_x along columns
    assert float(k[4, 5] / k[4, 4]) == pytest.approx(math.exp(-0.5 / 4.0), rel=1e-5)
    assert float(k[5, 4] / k[4, 4]) == pytest.approx(math.exp(-0.5 / 1.0), rel=1e-5)
    assert torch.allclose(gaussian_kernel(9, 2.0, 1.0, math.pi / 2), gaussian_kernel(9, 1.0, 2.0), atol=1e-7)


def test_generalized_and_plateau_shapes():
    g = gaussian_kernel(7, 1.0, beta=2.0, family="generalized")
    assert float(g[3, 4] / g[3, 3]) == pytest.approx(math.exp(-0.5), rel=1e-5)  # q=1: q^beta = 1
    assert float(g[3, 5] / g[3, 3]) == pytest.approx(math.exp(-0.5 * 16), rel=1e-4)  # q=4: 4^2
    p = gaussian_kernel(7, 1.0, beta=1.5, family="plateau")
    assert float(p[3, 5] / p[3, 3]) == pytest.approx(1 / (1 + 4**1.5), rel=1e-5)


def test_sinc_kernel_sums_to_one_and_follows_bessel_profile():
    k = sinc_kernel(21, math.pi)
    assert abs(float(k.sum()) - 1.0) < 1e-5
    # k(r=1)/k(0) = [pi J1(pi) / (2 pi)] / [pi^2 / (4 pi)] = 2 J1(pi) / pi = 0.181191755
    assert float(k[10, 11] / k[10, 10]) == pytest.approx(0.1811917550, rel=1e-5)
    assert torch.allclose(k, k.t(), atol=1e-8)


def test_filter2d_constant_batched_and_separable_paths():
    x = torch.rand(2, 3, 30, 26)
    flat = torch.full((1, 3, 30, 26), 0.3)
    assert torch.allclose(filter2d(flat, sinc_kernel(21, 1.0)), flat, atol=1e-6)
    k_iso, k_aniso = gaussian_kernel(21, 2.0), gaussian_kernel(21, 2.0, 0.6, 0.5)
    both = filter2d(x, torch.stack([k_iso, k_aniso]))  # grouped conv, per-sample kernels
    assert torch.allclose(both[0:1], filter2d(x[0:1], k_iso), atol=1e-5)  # separable path
    assert torch.allclose(both[1:2], filter2d(x[1:2], k_aniso), atol=1e-6)
    ref = F.conv2d(F.pad(x[:1], (10,) * 4, mode="reflect"), k_iso.expand(3, 1, 21, 21), groups=3)
    assert torch.allclose(filter2d(x[:1], k_iso), ref, atol=1e-5)
    tiny = filter2d(torch.rand(1, 3, 4, 5), k_iso)  # smaller than the kernel: replicate padding
    assert tiny.shape == (1, 3, 4, 5)


# -------------------------------------------------------------------- config round trips


def test_config_json_round_trip_and_errors():
    for cfg in (DegradationConfig(), fixed_eval_degradation(3), DegradationConfig.bicubic((2, 4))):
        assert DegradationConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="valid keys are"):
        DegradationConfig.from_dict({"scales": [4], "bogus": 1})
    with pytest.raises(ConfigError, match=r"0\.5, 0\.6"):
        DegradationStage(resize_probs=(0.5, 0.6, 0.1))
    with pytest.raises(ConfigError, match="'gif'"):
        CodecConfig(names=("gif",), probs=(1.0,))
    with pytest.raises(ConfigError, match="8"):
        DegradationStage(kernel_sizes=(7, 8))
    off = CodecConfig(names=(), probs=())
    assert not off.uses_video and not DegradationConfig.realesrgan(apisr_codecs=False).uses_video


def test_params_json_round_trip():
    p = sample_degradation(CFG, gen(3), (64, 48), scale=4)
    q = DegradationParams.from_json(p.to_json())
    assert q == p
    d = json.loads(p.to_json())
    assert d["lr_size"] == [16, 12] and isinstance(d["noise_seed"], int) and len(d["stages"]) == 2


# ---------------------------------------------------------------------- determinism/sizes


def test_sampling_and_degrade_are_deterministic():
    hr = torch.rand(3, 64, 64)
    for seed in range(4):
        p1, p2 = sample_degradation(CFG, gen(seed), (64, 64)), sample_degradation(CFG, gen(seed), (64, 64))
        assert p1 == p2 and p1.to_json() == p2.to_json()
        assert torch.equal(degrade(hr, p1), degrade(hr, p2))
    pa, pb = sample_degradation(CFG, gen(0), (64, 64)), sample_degradation(CFG, gen(1), (64, 64))
    assert pa != pb and pa.noise_seed != pb.noise_seed
    pa4, pb4 = (sample_degradation(CFG, gen(s), (64, 64), scale=4) for s in (0, 1))
    assert not torch.equal(degrade(hr, pa4), degrade(hr, pb4))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lr_is_hr_over_scale_in_range_and_8bit(scale):
    hr = torch.rand(1, 3, 48, 60)
    for seed in range(3):
        p = sample_degradation(CFG, gen(seed), (48, 60), scale=scale)
        lr = degrade(hr, p)
        assert lr.shape == (1, 3, 48 // scale, 60 // scale) and lr.dtype == torch.float32
        assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
        levels = lr * 255
        assert float((levels - levels.round()).abs().max()) < 1e-4


def test_non_divisible_size_floors_and_scale_sampling():
    p = sample_degradation(CFG, gen(0), (50, 39), scale=4)
    assert p.lr_size == (12, 9) and degrade(torch.rand(3, 50, 39), p).shape == (3, 12, 9)
    drawn = {sample_degradation(CFG, gen(s), (24, 24)).scale for s in range(40)}
    assert drawn == {2, 3, 4}
    with pytest.raises(ImageInputError, match="hr_size"):
        degrade(torch.rand(3, 40, 40), p)


def test_degrade_batch_and_random():
    hr = torch.rand(3, 3, 32, 32)
    lr, params = degrade_random(hr, CFG, gen(5), scale=2)
    assert lr.shape == (3, 3, 16, 16) and len(params) == 3 and {p.scale for p in params} == {2}
    assert torch.equal(lr[1], degrade(hr[1], params[1]))
    mixed = [params[0], sample_degradation(CFG, gen(9), (32, 32), scale=4), params[2]]
    with pytest.raises(ImageInputError, match="different LR sizes"):
        degrade_batch(hr, mixed)


def test_fixed_eval_degradation_is_deterministic():
    hr = smooth_image(64, 64)
    a, b = degrade_fixed(hr, 4, seed=0), degrade_fixed(hr, 4, seed=0)
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, degrade_fixed(hr, 4, seed=1))  # only the noise differs
    p0, p1 = (sample_degradation(fixed_eval_degradation(4), gen(s), (64, 64)) for s in (0, 1))
    assert p0.stages == p1.stages and p0.final_codec == p1.final_codec == CodecParams("jpeg", 75)
    blur = p0.stages[0].blur
    assert (blur.kind, blur.size, blur.sigma_x) == ("iso", 21, 1.2)
    assert p0.stages[1].noise == "gaussian" and p0.stages[1].noise_level == pytest.approx(5 / 255)
    clean = F.interpolate(hr[None], size=(16, 16), mode="bicubic", antialias=True)[0]
    assert psnr(a, clean) > 25


# ------------------------------------------------------------------------------- noise


def test_gaussian_noise_level_and_gray():
    x = torch.full((1, 3, 64, 64), 0.5)
    y = add_gaussian_noise(x, 10 / 255, gray=False, gen=gen(0))
    assert float((y - x).std()) == pytest.approx(10 / 255, rel=0.05)
    g = add_gaussian_noise(x, 10 / 255, gray=True, gen=gen(0))
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])


def test_poisson_noise_uses_power_of_two_levels():
    # 128 distinct 8-bit levels -> vals = 128, so Var(noise) = mean(q) / 128 (Real-ESRGAN).
    levels = torch.arange(64, 192, dtype=torch.float32) / 255
    x = levels.repeat(3, 64, 1).unsqueeze(0)  # (1, 3, 64, 128)
    y = add_poisson_noise(x, 1.0, gray=False, gen=gen(0))
    expected = math.sqrt(float(x.mean()) / 128)
    assert float((y - x).std()) == pytest.approx(expected, rel=0.1)
    assert float((y - x).mean()) == pytest.approx(0.0, abs=2e-3)


# ------------------------------------------------------------------------------ codecs


def test_jpeg_q95_smooth_image_psnr():
    x = smooth_image()
    y = apply_codec(x, CodecParams("jpeg", 95))
    assert y.shape == x.shape and psnr(y, x) > 35


def test_webp_round_trip_preserves_size():
    x = smooth_image(37, 53)
    y = apply_codec(x, CodecParams("webp", 50, method=0))
    assert y.shape == (3, 37, 53) and psnr(y, x) > 25


@pytest.mark.skipif(not HAVE_AV, reason=NO_AV_REASON)
@pytest.mark.parametrize("codec,crf", [("h264", 30), ("h265", 38)])
def test_video_round_trip_smooth_image(codec, crf):
    x = smooth_image(37, 54)  # odd height: padded to even for yuv420p, cropped back
    y = apply_codec(x, CodecParams(codec, crf, preset="superfast"))
    assert y.shape == (3, 37, 54) and psnr(y, x) > 25
    assert torch.equal(y, apply_codec(x, CodecParams(codec, crf, preset="superfast")))


def test_video_codec_without_pyav_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(MissingDependencyError, match="pip install av"):
        apply_codec(smooth_image(16, 16), CodecParams("h264", 30))
    with pytest.raises(MissingDependencyError, match="pip install av"):
        DegradationConfig().check_dependencies()
    DegradationConfig.realesrgan(apisr_codecs=False).check_dependencies()  # JPEG only: fine
