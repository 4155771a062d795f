"""GenDR CiD/CiDA and REPA losses (gendr_core.losses.distill), the forward-diffusion ops, the LoRA
score networks (gendr_core.models.lora) and DFOSD's pieces (noise-aware discriminator, Eq. 8 loss).

Hand-built tensors for the closed forms; tiny diffusers UNets for the gradient probes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gendr_core.config import sd_alphas, tiny_unet_config
from gendr_core.errors import ConfigError, ImageInputError
from gendr_core.losses import (
    EADISTS,
    CiDAConfig,
    base_repa_loss,
    cid_generator_loss,
    cid_generator_term,
    cid_weight,
    classifier_free_guidance,
    denoising_loss,
    dfosd_spatial_loss,
    repa_loss,
    score_discriminator_losses,
    score_network_losses,
)
from gendr_core.models import build_unet
from gendr_core.models.discriminators import DiscriminatorHeads
from gendr_core.models.lora import LoRAConfig, ScoreNetworks, adapter_parameters, frozen_parameters
from gendr_core.models.noise_aware import DFOSD_LORA, NoiseAwareDiscriminator
from gendr_core.models.repa import RepaProjector
from gendr_core.models.unet_features import capture_output, encoder_channels, encoder_features
from gendr_core.ops.diffusion import (
    eps_to_x0,
    forward_diffuse,
    sample_timesteps,
    scaled_linear_alphas_cumprod,
    x0_to_eps,
)

TINY_LORA = LoRAConfig(rank=4, alpha=8.0)


# ------------------------------------------------------------------------------------------------
# Forward diffusion (SD2.1 schedule)
# ------------------------------------------------------------------------------------------------


def test_sd21_schedule_values() -> None:
    abar = scaled_linear_alphas_cumprod()
    assert abar.shape == (1000,) and abar.dtype == torch.float64
    # REFERENCE.md 3.1 (computed for SD2.1's scaled_linear schedule)
    assert abs(float(abar[999]) - 0.004660) < 5e-6
    assert abs(float(abar[200]) - 0.7537) < 5e-5
    assert abs(float(abar[100]) - 0.8942) < 5e-5
    betas = [(0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * i / 999) ** 2 for i in range(1000)]  # by hand
    for t in (0, 20, 499, 979, 999):
        prod = math.prod(1.0 - x for x in betas[: t + 1])
        assert math.isclose(float(abar[t]), prod, rel_tol=1e-12)
        a, b = sd_alphas(t)  # the one-step restorers' config helper reads the same schedule
        assert (a, b) == (math.sqrt(float(abar[t])), math.sqrt(1 - float(abar[t])))
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert torch.allclose(abar.float(), ref, atol=1e-6)


def test_forward_diffuse_and_x0_round_trip(gen: torch.Generator) -> None:
    abar = scaled_linear_alphas_cumprod()
    z = torch.randn(3, 4, 5, 5, generator=gen)
    eps = torch.randn(3, 4, 5, 5, generator=gen)
    t = torch.tensor([0, 499, 999])
    z_t = forward_diffuse(z, t, eps, abar)
    a = abar[t].sqrt().float().view(-1, 1, 1, 1)
    assert torch.allclose(z_t, a * z + (1 - a * a).sqrt() * eps, atol=1e-6)
    assert torch.allclose(eps_to_x0(z_t, eps, t, abar), z, atol=2e-4)
    assert torch.allclose(x0_to_eps(z_t, z, t, abar), eps, atol=1e-5)
    with pytest.raises(ImageInputError, match=r"\[0, 1000\), got min 0, max 1000"):
        forward_diffuse(z, torch.tensor([0, 1, 1000]), eps, abar)
    with pytest.raises(ImageInputError, match="integers"):
        forward_diffuse(z, torch.tensor([0.0, 1.0, 2.0]), eps, abar)


def test_sample_timesteps_inclusive_range() -> None:
    g = torch.Generator().manual_seed(1)
    t = sample_timesteps(20_000, 20, 979, g)
    assert t.dtype == torch.long and int(t.min()) == 20 and int(t.max()) == 979
    assert set(sample_timesteps(200, 5, 6, g).tolist()) == {5, 6}
    with pytest.raises(ConfigError, match="t_min=10 <= t_max=3"):
        sample_timesteps(2, 10, 3)


# ------------------------------------------------------------------------------------------------
# Pure CiD / REPA losses on hand-built tensors
# ------------------------------------------------------------------------------------------------


def test_classifier_free_guidance_hand_computed() -> None:
    u, c = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])
    assert torch.equal(classifier_free_guidance(u, c, 7.5), torch.tensor([[16.0, -13.0]]))  # u + 7.5 (c - u)
    assert torch.equal(classifier_free_guidance(u, c, 1.0), c)
    assert torch.equal(classifier_free_guidance(u, c, 0.0), u)


def test_cid_weight_normalisation() -> None:
    z_h = torch.zeros(2, 1, 2, 2)
    f = torch.tensor([1.0, -1.0, 3.0, -3.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    f[1] *= 0.5
    w = cid_weight(z_h, f, c=3.0)
    assert torch.allclose(w, torch.tensor([3.0 / 2.0, 3.0 / 1.0]))  # C / mean|z_h - f|: means 2 and 1
    mean_abs = (z_h - f).abs().flatten(1).mean(1)
    assert torch.allclose(w * mean_abs, torch.full((2,), 3.0))  # omega * ||z_h - f|| == C
    assert torch.allclose(cid_weight(z_h, 10 * f, c=3.0), w / 10)  # scale-invariant loss weighting
    fg = f.clone().requires_grad_(True)
    assert not cid_weight(z_h, fg).requires_grad  # sg[.]
    assert torch.isfinite(cid_weight(z_h, torch.zeros_like(z_h))).all()  # clamped denominator
    with pytest.raises(ConfigError, match="C=0"):
        cid_weight(z_h, f, c=0.0)


def test_cid_generator_loss_closed_form() -> None:
    f_r = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    f_f = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    z_h = torch.tensor([0.5, 1.0]).view(1, 2, 1, 1)
    omega = torch.tensor([2.0])
    # d = f_r - f_f = (1, 1); (1 - 1.2) f_r - z_h + 1.2 f_f = (-0.7, -0.2); mean(d * .) = -0.45; x omega
    loss = cid_generator_loss(f_r, f_f, z_h, omega, xi=1.2)
    assert torch.allclose(loss, torch.tensor(-0.9))
    # = L3 - xi L1 (Eq. 8, Eq. 5 on x0, Eq. 9)
    l3 = (omega * ((f_r - f_f) * (f_r - z_h)).flatten(1).mean(1)).mean()
    l1 = (omega * ((f_r - f_f) ** 2).flatten(1).mean(1)).mean()
    assert torch.allclose(loss, l3 - 1.2 * l1)
    # random batch: per-sample weights, batch mean
    g = torch.Generator().manual_seed(3)
    a, b, h = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    w = torch.rand(3, generator=g) + 0.5
    ref = sum(float(w[i]) * float(((a[i] - b[i]) * ((1 - 1.2) * a[i] - h[i] + 1.2 * b[i])).mean()) for i in range(3)) / 3
    assert math.isclose(float(cid_generator_loss(a, b, h, w)), ref, rel_tol=1e-5)
    with pytest.raises(ImageInputError, match=r"omega must have shape \(3,\)"):
        cid_generator_loss(a, b, h, torch.ones(1))


def test_denoising_loss_detaches_target() -> None:
    pred = torch.tensor([1.0, 3.0]).requires_grad_(True)
    target = torch.tensor([0.0, 1.0]).requires_grad_(True)
    loss = denoising_loss(pred, target)
    assert torch.allclose(loss, torch.tensor(2.5))  # (1 + 4) / 2
    loss.backward()
    assert target.grad is None and torch.allclose(pred.grad, torch.tensor([1.0, 2.0]))


def test_repa_loss_cosine_terms() -> None:
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])  # 4 tokens of dim 2
    target = e.T.reshape(1, 2, 2, 2)  # (B,D,h,w)
    assert torch.allclose(repa_loss(target.clone(), target), torch.tensor(-1.0))
    assert torch.allclose(repa_loss(-target, target), torch.tensor(1.0))
    assert torch.allclose(repa_loss(3 * target, target), torch.tensor(-1.0))  # scale invariant
    # tokens: (1,0)->(0,1) cos 0; (0,1)->(0,1) cos 1; (1,1)->(1,0) cos 1/sqrt2; (1,-1)->(1,-1) cos 1
    p = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, -1.0]]).T.reshape(1, 2, 2, 2)
    assert torch.allclose(repa_loss(p, target), torch.tensor(-(0 + 1 + 2**-0.5 + 1) / 4))
    tokens = target.flatten(2).transpose(1, 2)  # (1,4,2)
    assert torch.allclose(repa_loss(p, tokens), repa_loss(p, target))
    # a finer UNet grid is resized onto the encoder grid; a constant map stays constant
    fine = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    assert torch.allclose(repa_loss(fine, target), torch.tensor(-(1 + 0 + 2**-0.5 + 2**-0.5) / 4))
    with pytest.raises(ImageInputError, match="does not match"):
        repa_loss(p, torch.zeros(1, 3, 2))


def test_base_repa_loss_algorithm_1() -> None:
    eps_pred, eps = torch.tensor([[1.0, 3.0]]).view(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    h = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    out = base_repa_loss(eps_pred, eps, h, h, lam=0.1)
    assert torch.allclose(out["eps"], torch.tensor(5.0)) and torch.allclose(out["repa"], torch.tensor(-1.0))
    assert torch.allclose(out["total"], torch.tensor(5.0 - 0.1))  # ||eps_theta - eps||^2 - lambda cos


def test_repa_projector_and_capture_on_unet(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    unet = build_unet(tiny_unet_config(4, 4))
    proj = RepaProjector(8, 6, hidden=16)
    z = torch.randn(2, 4, 8, 8, generator=gen)
    cond = torch.randn(2, 3, 8, generator=gen)
    with capture_output(unet.down_blocks[0]) as got:
        unet(z, torch.tensor([10, 20]), encoder_hidden_states=cond)
    assert len(got) == 1 and got[0].shape == (2, 8, 4, 4)  # after the first down block (with its downsampler)
    target = torch.randn(2, 6, 2, 2, generator=gen)  # an encoder grid coarser than the UNet's
    loss = repa_loss(proj(got[0]), target)
    loss.backward()
    assert all(p.grad is not None for p in proj.parameters())
    assert unet.conv_in.weight.grad is not None  # REPA also trains the UNet it reads
    with capture_output(unet.down_blocks[0]) as again:
        pass
    assert again == [] and not unet.down_blocks[0]._forward_hooks  # the hook is removed


# ------------------------------------------------------------------------------------------------
# Real/fake score networks: two peft adapters on one frozen base
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def scores() -> ScoreNetworks:
    torch.manual_seed(0)
    return ScoreNetworks(build_unet(tiny_unet_config(4, 4)), TINY_LORA)


def _batch(gen: torch.Generator, b: int = 2):
    z_l = torch.randn(b, 4, 8, 8, generator=gen)
    z_h = torch.randn(b, 4, 8, 8, generator=gen)
    cond = torch.randn(1, 3, 8, generator=gen)
    uncond = torch.zeros(1, 3, 8)
    t = sample_timesteps(b, 20, 979, gen)
    noise = torch.randn(b, 4, 8, 8, generator=gen)
    return z_l, z_h, cond, uncond, t, noise


def _snapshot(named) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in named}


def test_lora_config_defaults_and_errors() -> None:
    cfg = LoRAConfig()
    assert (cfg.rank, cfg.alpha) == (64, 128.0)  # GenDR Sec. 4.1
    assert (DFOSD_LORA.rank, DFOSD_LORA.alpha) == (16, 16.0)  # DFOSD Sec. 4.1
    assert LoRAConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="rank=0"):
        LoRAConfig(rank=0)
    peft_cfg = cfg.to_peft()
    assert peft_cfg.r == 64 and peft_cfg.lora_alpha == 128.0


def test_score_networks_share_one_frozen_base(scores: ScoreNetworks, gen: torch.Generator) -> None:
    unet = scores.unet
    assert set(unet.peft_config) == {"real", "fake"}
    real, fake = scores.adapter_parameters("real"), scores.adapter_parameters("fake")
    assert real and fake and not {id(p) for p in real} & {id(p) for p in fake}
    assert sum(p.numel() for p in real) == sum(p.numel() for p in fake)
    base = scores.base_named_parameters()
    assert base and not any(p.requires_grad for _, p in base)
    assert all(p.requires_grad for p in real + fake)
    # one base: every LoRA layer wraps the same base weight for both adapters
    n_params = sum(1 for _ in unet.parameters())
    assert n_params == len(base) + len(real) + len(fake)
    z_l, z_h, cond, uncond, t, noise = _batch(gen)
    with torch.no_grad():
        out_r = scores.eps("real", z_h, t, cond)
        out_f = scores.eps("fake", z_h, t, cond)
        unet.disable_adapters()
        out_base = unet(z_h, t, encoder_hidden_states=cond.expand(2, -1, -1)).sample
        unet.enable_adapters()
    assert torch.equal(out_r, out_base) and torch.equal(out_f, out_base)  # B = 0 at init
    with pytest.raises(ConfigError, match="'other' does not exist"):
        scores.eps("other", z_h, t, cond)


def test_adapter_switching_and_steps_leave_base_bit_identical(scores: ScoreNetworks, gen: torch.Generator) -> None:
    z_l, z_h, cond, uncond, t, noise = _batch(gen)
    base0 = _snapshot(scores.base_named_parameters())
    opt_r = torch.optim.SGD(scores.adapter_parameters("real"), lr=0.5)
    opt_f = torch.optim.SGD(scores.adapter_parameters("fake"), lr=0.5)
    # step on the real adapter only
    real0 = [p.detach().clone() for p in scores.adapter_parameters("real")]
    fake0 = [p.detach().clone() for p in scores.adapter_parameters("fake")]
    scores.x0("real", z_h, t, cond).pow(2).mean().backward()
    assert all(p.grad is None for p in scores.adapter_parameters("fake"))
    opt_r.step()
    opt_r.zero_grad(set_to_none=True)
    assert any(not torch.equal(a, p) for a, p in zip(real0, scores.adapter_parameters("real"), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(fake0, scores.adapter_parameters("fake"), strict=True))
    # switch and step on the fake adapter only
    real1 = [p.detach().clone() for p in scores.adapter_parameters("real")]
    real1_state = {k: v.clone() for k, v in scores.adapter_state_dict("real").items()}
    scores.x0("fake", z_h, t, cond).pow(2).mean().backward()
    assert all(p.grad is None for p in scores.adapter_parameters("real"))
    opt_f.step()
    opt_f.zero_grad(set_to_none=True)
    assert all(torch.equal(a, p) for a, p in zip(real1, scores.adapter_parameters("real"), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(fake0, scores.adapter_parameters("fake"), strict=True))
    # switching back and forth changes nothing in the base, and each adapter gives its own output
    for name in ("real", "fake", "real", "fake"):
        scores.use(name)
    # an adapter's tensors round-trip through its own state dict (what a checkpoint stores)
    saved = {k: v.clone() for k, v in scores.adapter_state_dict("fake").items()}
    assert saved and all(".fake." in k and "lora_" in k for k in saved)
    scores.load_adapter_state_dict("real", {k.replace(".fake.", ".real."): v for k, v in saved.items()})
    with torch.no_grad():
        assert torch.equal(scores.x0("real", z_h, t, cond), scores.x0("fake", z_h, t, cond))
    scores.load_adapter_state_dict("real", real1_state)
    with pytest.raises(ConfigError, match="missing key"):
        scores.load_adapter_state_dict("real", {})
    for n, p in scores.base_named_parameters():
        assert torch.equal(p, base0[n]), n
    with torch.no_grad():
        out_r = scores.x0("real", z_h, t, cond)
        out_f = scores.x0("fake", z_h, t, cond)
        again_r = scores.x0("real", z_h, t, cond)
    assert not torch.allclose(out_r, out_f) and torch.equal(out_r, again_r)


def test_x0_cfg_is_batched_guidance(scores: ScoreNetworks, gen: torch.Generator) -> None:
    z_l, z_h, cond, uncond, t, noise = _batch(gen)
    for p in scores.adapter_parameters("real"):  # make the adapter non-trivial
        p.data.normal_(0, 0.1, generator=gen)
    with torch.no_grad():
        got = scores.x0_cfg("real", z_h, t, cond, uncond, 7.5)
        f_c = scores.x0("real", z_h, t, cond)
        f_u = scores.x0("real", z_h, t, uncond)
    assert torch.allclose(got, classifier_free_guidance(f_u, f_c, 7.5), atol=1e-4, rtol=1e-4)


def test_score_network_losses_train_each_adapter_only(scores: ScoreNetworks, gen: torch.Generator) -> None:
    z_l, z_h, cond, uncond, t, noise = _batch(gen)
    generator = nn.Conv2d(4, 4, 3, padding=1)
    z_g = generator(z_l)
    losses = score_network_losses(scores, z_h, z_g, t, noise, cond)
    assert set(losses) == {"score_real", "score_fake"}
    losses["score_real"].backward(retain_graph=True)  # L_phi alone: real adapter only
    assert all(p.grad is not None for p in scores.adapter_parameters("real"))
    assert all(p.grad is None for p in scores.adapter_parameters("fake"))
    scores.zero_grad(set_to_none=True)
    (losses["score_real"] + losses["score_fake"]).backward()
    assert all(p.grad is not None for p in scores.adapter_parameters("real"))
    assert all(p.grad is not None for p in scores.adapter_parameters("fake"))
    assert all(p.grad is None for _, p in scores.base_named_parameters())
    assert all(p.grad is None for p in generator.parameters())  # sg[z_g]


def test_cid_generator_term_gradients_reach_generator_only(scores: ScoreNetworks, gen: torch.Generator) -> None:
    z_l, z_h, cond, uncond, t, noise = _batch(gen)
    for name in ScoreNetworks.ADAPTERS:  # distinct adapters so that f_r != f_f
        for p in scores.adapter_parameters(name):
            p.data.normal_(0, 0.1, generator=gen)
    generator = nn.Conv2d(4, 4, 3, padding=1)
    z_h = z_h.requires_grad_(False)
    out = cid_generator_term(scores, generator(z_l), z_h, t, noise, cond, uncond, kappa=7.5, xi=1.2)
    assert out["cid"].dim() == 0 and torch.isfinite(out["cid"]) and not out["omega"].requires_grad
    out["cid"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    assert all(p.grad is None for p in scores.adapter_parameters("real"))  # sg[phi]
    assert all(p.grad is None for p in scores.adapter_parameters("fake"))  # sg[psi]
    assert all(p.grad is None for _, p in scores.base_named_parameters())
    # the adapters are trainable again after the frozen block
    assert all(p.requires_grad for n in ScoreNetworks.ADAPTERS for p in scores.adapter_parameters(n))
    # the value is the closed form on the frozen CFG predictions
    with torch.no_grad():
        z_g = generator(z_l)
        z_t = forward_diffuse(z_g, t, noise, scores.alphas_cumprod)
        f_r = scores.x0_cfg("real", z_t, t, cond, uncond, 7.5)
        f_f = scores.x0_cfg("fake", z_t, t, cond, uncond, 7.5)
        ref = cid_generator_loss(f_r, f_f, z_h, cid_weight(z_h, f_r), 1.2)
    assert torch.allclose(out["cid"].detach(), ref, rtol=1e-4, atol=1e-6)


def test_score_discriminator_losses_gradient_probes(scores: ScoreNetworks, gen: torch.Generator) -> None:
    z_l, z_h, cond, uncond, t, noise = _batch(gen)
    depths = (1, 2, 3)
    heads = DiscriminatorHeads(encoder_channels(scores.unet, depths), width=8)
    feats = scores.features("real", z_h, t, cond)
    assert [f.shape[1] for f in feats] == [8, 16, 16]
    generator = nn.Conv2d(4, 4, 3, padding=1)
    d = score_discriminator_losses(scores, heads, z_h, generator(z_l), t, cond, noise=noise)["adv_d"]
    d.backward()
    assert all(p.grad is not None for p in heads.parameters())
    assert all(p.grad is None for p in generator.parameters())
    assert all(p.grad is None for n in ScoreNetworks.ADAPTERS for p in scores.adapter_parameters(n))
    heads.zero_grad(set_to_none=True)
    g = score_discriminator_losses(scores, heads, z_h, generator(z_l), t, cond, noise=noise, generator_step=True)
    g["adv_g"].backward()
    assert all(p.grad is not None for p in generator.parameters())
    assert all(p.grad is None for p in heads.parameters())  # sg[h]
    assert all(p.requires_grad for p in heads.parameters())  # restored
    assert all(p.grad is None for n in ScoreNetworks.ADAPTERS for p in scores.adapter_parameters(n))


def test_frozen_parameters_restores_flags() -> None:
    m = nn.Linear(2, 2)
    m.bias.requires_grad_(False)
    with frozen_parameters(m):
        assert not m.weight.requires_grad
        y = m(torch.ones(1, 2, requires_grad=True)).sum()
    assert m.weight.requires_grad and not m.bias.requires_grad
    y.backward()
    assert m.weight.grad is None


def test_cida_config() -> None:
    cfg = CiDAConfig()
    assert (cfg.kappa, cfg.xi, cfg.lambda_adv, cfg.lambda_repa) == (7.5, 1.2, 0.01, 0.1)
    assert (cfg.t_min, cfg.t_max, cfg.generator_timestep) == (20, 979, 499)
    assert cfg.lambda_cid_at(0) == 10.0 and cfg.lambda_cid_at(9_999) == 10.0 and cfg.lambda_cid_at(10_000) == 1.0
    assert CiDAConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="t_max=1000"):
        CiDAConfig(t_max=1000)


# ------------------------------------------------------------------------------------------------
# DFOSD: noise-aware discriminator and the Eq. 8 spatial loss
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def nad() -> NoiseAwareDiscriminator:
    torch.manual_seed(0)
    return NoiseAwareDiscriminator(build_unet(tiny_unet_config(4, 4)), LoRAConfig(rank=4, alpha=4.0), head_hidden=8)


def test_nad_shapes_and_structure(nad: NoiseAwareDiscriminator, gen: torch.Generator) -> None:
    z = torch.randn(3, 4, 16, 16, generator=gen)
    cond = torch.randn(1, 3, 8, generator=gen)
    logits, t = nad(z, cond, generator=gen)
    assert logits.shape == (3, 1, 8, 8) and t.shape == (3,)  # one logit per position of the mid-block map
    assert len(nad.unet.up_blocks) == 0 and nad.unet.conv_out is None
    lora_names = [n for n, _ in nad.unet.named_parameters() if "lora_" in n]
    assert lora_names and all(n.startswith(("down_blocks.", "mid_block.")) for n in lora_names)
    # the timestep is an input: same latent and noise, different t -> different logits
    noise = torch.randn(z.shape, generator=gen)
    with torch.no_grad():
        a, _ = nad(z, cond, t=torch.full((3,), 10), noise=noise)
        b, _ = nad(z, cond, t=torch.full((3,), 900), noise=noise)
        c, _ = nad(z, cond, t=torch.full((3,), 10), noise=noise)
    assert not torch.allclose(a, b) and torch.equal(a, c)
    # it reads F(z, t): equal to the features of the explicitly diffused latent
    with torch.no_grad():
        t10 = torch.full((3,), 10)
        (mid,) = encoder_features(nad.unet, forward_diffuse(z, t10, noise, nad.alphas_cumprod), t10, cond, depths=(3,))
        assert torch.allclose(nad.head(mid), a, atol=1e-6)
    with pytest.raises(ImageInputError, match=r"expected latents \(B,4,h,w\)"):
        nad(torch.zeros(1, 3, 8, 8), cond)


def test_nad_t_sampling_range(nad: NoiseAwareDiscriminator) -> None:
    g = torch.Generator().manual_seed(0)
    t = nad.sample_t(20_000, g)
    assert int(t.min()) == 0 and int(t.max()) == 999  # DFOSD: t ~ [0, T], T = 1000 steps
    narrow = NoiseAwareDiscriminator(build_unet(tiny_unet_config(4, 4)), TINY_LORA, head_hidden=4, t_min=100, t_max=101)
    assert set(narrow.sample_t(100, g).tolist()) == {100, 101}


def test_nad_gradients_reach_lora_and_head_only(nad: NoiseAwareDiscriminator, gen: torch.Generator) -> None:
    from gendr_core.losses import discriminator_adv_loss, generator_adv_loss

    z_h = torch.randn(2, 4, 8, 8, generator=gen)
    generator = nn.Conv2d(4, 4, 3, padding=1)
    z_g = generator(torch.randn(2, 4, 8, 8, generator=gen))
    cond = torch.randn(1, 3, 8, generator=gen)
    real, _ = nad(z_h, cond, generator=gen)
    fake, _ = nad(z_g.detach(), cond, generator=gen)
    discriminator_adv_loss(real, fake).backward()  # DFOSD Eq. 3
    trainable = {id(p) for p in nad.trainable_parameters()}
    for n, p in nad.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, n
        else:
            assert p.grad is None and not p.requires_grad, n
    assert len(nad.lora_parameters()) > 0 and all(id(p) in trainable for p in nad.head.parameters())
    assert all(p.grad is None for p in generator.parameters())
    nad.zero_grad(set_to_none=True)
    with frozen_parameters(nad):  # generator step, Eq. 2: D fixed
        fake_g, _ = nad(z_g, cond, generator=gen)
    generator_adv_loss(fake_g).backward()
    assert all(p.grad is not None for p in generator.parameters())
    assert all(p.grad is None for p in nad.parameters())


def test_dfosd_spatial_loss_is_mse_plus_ea_dists(gen: torch.Generator) -> None:
    ea = EADISTS(None, allow_random=True)
    x = torch.rand(1, 3, 24, 24, generator=gen)
    y = torch.rand(1, 3, 24, 24, generator=gen)
    out = dfosd_spatial_loss(x, y, ea, lambda_ea=0.5)
    ref_ea = ea.dists(x, y) + ea.dists(*(s.expand(-1, 3, -1, -1) for s in _sobel_pair(x, y)))  # Eq. 5
    assert torch.allclose(out["ea_dists"], ref_ea)
    assert torch.allclose(out["spatial"], ((x - y) ** 2).mean() + 0.5 * ref_ea)  # Eq. 8


def _sobel_pair(x: torch.Tensor, y: torch.Tensor):
    """DFOSD Eq. 6-7 written out: Sobel kernels on the channel mean, magnitude (eps 1e-6, as ours)."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([gx, gx.t()])[:, None]
    out = []
    for img in (x, y):
        g = torch.nn.functional.conv2d(torch.nn.functional.pad(img.mean(1, keepdim=True), (1,) * 4, mode="replicate"), k)
        out.append(torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2 + 1e-6))
    return out


def test_adapter_parameters_unknown_name() -> None:
    m = build_unet(tiny_unet_config(4, 4))
    with pytest.raises(ConfigError, match="no LoRA adapter named 'x'"):
        adapter_parameters(m, "x")
