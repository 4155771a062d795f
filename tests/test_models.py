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
