from __future__ import annotations

import pytest
import torch

from gendr_core import build_model
from gendr_core.config import (
    DFOSDConfig,
    GenDRConfig,
    GenDRPixConfig,
    UNetConfig,
    sd_alphas,
    tiny_dfosd_config,
    tiny_gendr_config,
    tiny_gendr_pix_config,
)
from gendr_core.errors import ConfigError
from gendr_core.models import build_unet, build_vae, widen_io


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_size_parameter_counts_on_meta_device():
    with torch.device("meta"):
        pix = build_model(GenDRPixConfig())
        teacher = build_model(GenDRConfig())
    assert next(pix.unet.parameters()).is_meta
    assert _count(pix.unet) == 866_993_792  # GenDR-Pix paper: 866M
    assert _count(teacher.unet) == 865_979_856
    assert _count(teacher.vae) == 57_266_643  # GenDR paper: 57.27M (ostris vae-kl-f8-d16)
    assert pix.pad_multiple == 64 and teacher.pad_multiple == 64


def test_config_json_round_trip_and_unknown_keys():
    for cfg in (GenDRPixConfig(), GenDRConfig(), DFOSDConfig(), tiny_gendr_pix_config()):
        assert type(cfg).from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bogus'\]; valid keys are \["):
        GenDRPixConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="192"):
        GenDRPixConfig(unet=UNetConfig(in_channels=4, out_channels=4))
    with pytest.raises(ConfigError, match="timestep=1000"):
        GenDRPixConfig(timestep=1000)


def test_sd21_schedule_alphas():
    a, b = sd_alphas(999)
    assert abs(a * a - 0.004660) < 1e-5 and abs(a * a + b * b - 1) < 1e-12


def test_one_step_formula_matches_equation(gen):
    model = build_model(tiny_gendr_pix_config()).eval()
    x = torch.rand(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        y = model.predict(x, model.prompt_pos)
        z = torch.nn.functional.pixel_unshuffle(2 * x - 1, 8)
        t = torch.full((2,), 499)
        eps = model.unet(z, t, encoder_hidden_states=model.prompt_pos.expand(2, -1, -1)).sample
        ref = (torch.nn.functional.pixel_shuffle((z - 0.5 * eps) / 0.5, 8) + 1) / 2
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_gendr_pix_config, tiny_gendr_config, tiny_dfosd_config])
def test_every_model_kind_restores_same_size(gen, make):
    model = build_model(make()).eval()
    x = torch.rand(1, 3, 64, 128, generator=gen)
    with torch.no_grad():
        assert model.predict(x, model.prompt_neg).shape == x.shape


def test_latent_vae_tiling_switch():
    model = build_model(tiny_gendr_config())
    model.set_vae_tile(64)
    assert model.vae.use_tiling and model.vae.tile_sample_min_size == 64 and model.vae.tile_latent_min_size == 32
    model.set_vae_tile(0)
    assert not model.vae.use_tiling


def test_resolve_embeddings_checks_dim(tiny_pix):
    pos, neg = tiny_pix.resolve_embeddings(torch.ones(1, 3, 8), None)
    assert pos.shape == (1, 3, 8) and neg is tiny_pix.prompt_neg
    with pytest.raises(ConfigError, match="cross_attention_dim is 8"):
        tiny_pix.resolve_embeddings(torch.ones(1, 77, 1024))


def test_widen_io_constant_input_response(gen):
    cfg = tiny_gendr_pix_config().unet.replace(in_channels=4, out_channels=4)
    unet = build_unet(cfg).eval()
    old_in = unet.conv_in
    x4 = torch.full((1, 4, 8, 8), 0.3)
    with torch.no_grad():
        ref = old_in(x4)
        widen_io(unet, 192)
        out = unet.conv_in(torch.full((1, 192, 8, 8), 0.3))
    assert unet.conv_in.in_channels == 192 and unet.conv_out.out_channels == 192
    assert unet.config.in_channels == 192
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_build_vae_latent_channels():
    vae = build_vae(tiny_gendr_config().vae)
    assert vae.config.latent_channels == 16


# ------------------------------------------------------------------------------------------------
# Stage II discriminator: frozen previous-stage generator features + trainable heads
# ------------------------------------------------------------------------------------------------


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_gendr_pix_config())
    with torch.no_grad():
        model.prompt_pos.normal_(0, 1)
    return model.eval()


def test_frozen_features_are_the_unets_own_encoder_activations(gen):
    """features() at depths 0..3 equal conv_in / down block / mid block outputs of a full UNet forward."""
    import copy

    from gendr_core.models.discriminators import FrozenGeneratorFeatures

    model = _backbone()
    ref, hooks = {}, []
    unet = model.unet
    hooks.append(unet.conv_in.register_forward_hook(lambda m, i, o: ref.__setitem__(0, o.clone())))
    for k, blk in enumerate(unet.down_blocks, start=1):
        hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: ref.__setitem__(k, o[0].clone())))
    hooks.append(unet.mid_block.register_forward_hook(lambda m, i, o: ref.__setitem__(3, o.clone())))
    x = torch.rand(2, 3, 64, 48, generator=gen)
    with torch.no_grad():
        model(x)  # positive prompt at the model's timestep, as the features use
    for h in hooks:
        h.remove()
    feats = FrozenGeneratorFeatures(copy.deepcopy(model), depths=(0, 1, 2, 3))
    assert feats.channels == (8, 8, 16, 16)
    with torch.no_grad():
        out = feats(x)
    assert [tuple(f.shape) for f in out] == [(2, 8, 8, 6), (2, 8, 4, 3), (2, 16, 4, 3), (2, 16, 4, 3)]
    for k, f in enumerate(out):
        torch.testing.assert_close(f, ref[k], rtol=0, atol=1e-5)
    # default depths: every down block + the mid block; shallow depths drop the deeper modules
    assert FrozenGeneratorFeatures(_backbone()).depths == (1, 2, 3)
    shallow = FrozenGeneratorFeatures(_backbone(), depths=(1,))
    assert len(shallow.down_blocks) == 1 and shallow.mid_block is None and not hasattr(shallow, "up_blocks")
    with pytest.raises(ConfigError, match=r"increasing and unique in \[0, 3\]"):
        FrozenGeneratorFeatures(_backbone(), depths=(2, 1))
    with pytest.raises(ConfigError, match=r"\[0, 3\]"):
        FrozenGeneratorFeatures(_backbone(), depths=(4,))


def test_discriminator_gradients_reach_heads_and_input_never_the_backbone(gen):
    from gendr_core.losses import discriminator_adv_loss, generator_adv_loss
    from gendr_core.models.discriminators import GeneratorFeatureDiscriminator

    disc = GeneratorFeatureDiscriminator(_backbone(), head_channels=8)
    disc.train()
    assert not disc.features.training and disc.heads.training  # backbone stays in eval mode
    backbone = list(disc.features.parameters())
    assert backbone and all(not p.requires_grad for p in backbone)
    real = torch.rand(2, 3, 56, 56, generator=gen)
    fake = torch.rand(2, 3, 56, 56, generator=gen).requires_grad_(True)
    # D step: features under no_grad (sg[d]); heads get gradients, the backbone none
    logits = disc(torch.cat([real, fake.detach()]), detach_features=True)
    assert [tuple(m.shape) for m in logits] == [(4, 1, 2, 2)] * 3  # 56/8 = 7 -> 4 after one down-sampler -> 2
    discriminator_adv_loss([m[:2] for m in logits], [m[2:] for m in logits]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.heads.parameters())
    assert all(p.grad is None for p in backbone) and fake.grad is None
    # G step: gradients flow through the frozen backbone to the image
    disc.heads.zero_grad(set_to_none=True)
    generator_adv_loss(disc(fake)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone)
    assert disc.mean_logits(real).shape == (2, 3)


def test_discriminator_heads_layout_and_size_check():
    from gendr_core.errors import ImageInputError
    from gendr_core.models.discriminators import DiscriminatorHeads

    heads = DiscriminatorHeads((8, 16), width=12, spectral_norm=True)
    conv, norm, act, out = heads.heads[1]
    assert (conv.kernel_size, conv.stride, conv.in_channels, conv.out_channels) == ((4, 4), (2, 2), 16, 12)
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 4 and isinstance(act, torch.nn.SiLU)
    assert (out.kernel_size, out.out_channels) == ((1, 1), 1)
    assert hasattr(conv, "parametrizations")  # spectral norm on request
    maps = heads([torch.zeros(1, 8, 6, 6), torch.zeros(1, 16, 3, 5)])
    assert [tuple(m.shape) for m in maps] == [(1, 1, 3, 3), (1, 1, 1, 2)]
    with pytest.raises(ImageInputError, match="needs >= 2x2"):
        heads([torch.zeros(1, 8, 6, 6), torch.zeros(1, 16, 1, 4)])


def test_randpad_per_sample_offsets_follow_eq3():
    """Eq. 3: p_h, p_w in {0..7} (not Fig. 10's randint(0, 8)), pad [p, 8-p], size H+8 x W+8, reflect."""
    from gendr_core.models.discriminators import rand_pad_per_sample
    from gendr_core.ops.padding import crop

    g = torch.Generator().manual_seed(123)
    x = torch.rand(4, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    seen_lr, seen_tb = set(), set()
    for _ in range(300):
        y, pads = rand_pad_per_sample(x, g)
        assert y.shape == (4, 3, 24, 32) and len(pads) == 4
        for i, p in enumerate(pads):
            assert 0 <= p.left < 8 and 0 <= p.top < 8 and p.left + p.right == 8 and p.top + p.bottom == 8
            assert torch.equal(crop(y[i : i + 1], p), x[i : i + 1])
            seen_lr.add(p.left)
            seen_tb.add(p.top)
    assert seen_lr == seen_tb == set(range(8))
    # reflect mode: the first padded column mirrors column p (left pad p >= 1)
    y, pads = rand_pad_per_sample(x[:1], torch.Generator().manual_seed(5))
    p = pads[0]
    assert (p.left, p.top) == (3, 6)
    assert torch.equal(y[0, :, p.top : p.top + 16, 0], x[0, :, :, p.left])
