"""The GenDR teacher trainer (trainers/train_gendr.py): SD2.1-VAE16 base (widened conv_in/conv_out,
VAE16 folder with and without scaling factors), the DINOv2 file, and the three phases chained at tiny
scale with probes that nothing frozen moved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from gendr_core.checkpoint import load_model, read_header  # noqa: E402
from gendr_core.config import VAEConfig, tiny_unet_config  # noqa: E402
from gendr_core.errors import CheckpointFormatError, ConfigError  # noqa: E402
from gendr_core.models import build_unet, build_vae  # noqa: E402
from gendr_core.models.dino import DinoEncoder, ViTConfig, load_dino_encoder  # noqa: E402
from trainers import train_gendr as tg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainers" / "configs"
FIXTURES = REPO / "tests" / "fixtures"
TINY_VIT = ViTConfig(dim=16, depth=1, heads=2, patch_size=8, pretrain_grid=4, image_size=32)
F8_VAE16 = VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=16, norm_num_groups=4,
                     sample_size=32)


def _vae_folder(root: Path, scaling: float | None) -> Path:
    torch.manual_seed(1)
    vae = build_vae(F8_VAE16)
    folder = root / ("vae16" if scaling else "vae16_noscale")
    vae.save_pretrained(folder, safe_serialization=True)
    cfg = json.loads((folder / "config.json").read_text())
    if scaling is None:
        cfg.pop("scaling_factor", None)
        cfg.pop("shift_factor", None)
    else:
        cfg.update(scaling_factor=scaling, shift_factor=0.125)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _sd21_folder(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(2)
    unet = build_unet(tiny_unet_config(4, 4))
    unet.save_pretrained(root / "sd21" / "unet", safe_serialization=True)
    (root / "sd21" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root / "sd21", {k: v.clone() for k, v in unet.state_dict().items()}


def _base_cfg(tmp_path: Path, **over) -> tg.GenDRTrainConfig:
    base = {"output_dir": str(tmp_path / "base"), "data.train_dirs": [str(FIXTURES)]}
    base.update(over)
    return tg.load_config(CONFIGS / "gendr_base_tiny_cpu.json", base)


def test_base_widens_sd21_to_16_channels_and_reads_the_vae_scaling(tmp_path):
    sd21, orig = _sd21_folder(tmp_path)
    cfg = _base_cfg(tmp_path, sd21_base=str(sd21), vae=str(_vae_folder(tmp_path, 0.2614)))
    model = tg.build_base(cfg, [])
    sd = model.unet.state_dict()
    assert sd["conv_in.weight"].shape == (8, 16, 3, 3) and sd["conv_out.weight"].shape == (16, 8, 3, 3)
    for k in range(16):  # latent channel k <- SD2.1 channel k mod 4 (input weights / 4)
        assert torch.equal(sd["conv_in.weight"][:, k], orig["conv_in.weight"][:, k % 4] / 4)
        assert torch.equal(sd["conv_out.weight"][k], orig["conv_out.weight"][k % 4])
        assert torch.equal(sd["conv_out.bias"][k], orig["conv_out.bias"][k % 4])
    assert torch.equal(sd["conv_in.bias"], orig["conv_in.bias"])
    assert all(torch.equal(sd[k], v) for k, v in orig.items() if not k.startswith(("conv_in.", "conv_out.")))
    assert (model.config.vae.scaling_factor, model.config.vae.shift_factor) == (0.2614, 0.125)
    # a constant-over-repeats 16-channel latent sees SD2.1's conv_in response
    z4 = torch.randn(1, 4, 8, 8)
    ref = torch.nn.functional.conv2d(z4, orig["conv_in.weight"], orig["conv_in.bias"], padding=1)
    assert torch.allclose(model.unet.conv_in(z4.repeat(1, 4, 1, 1)), ref, atol=1e-6)


def test_vae_without_scaling_factor_is_estimated_and_stored(tmp_path):
    folder = _vae_folder(tmp_path, None)
    cfg = _base_cfg(tmp_path, vae=str(folder))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 3, 32, 32, generator=gen) for _ in range(2)]
    model = tg.build_base(cfg, batches)
    with torch.no_grad():
        z = torch.cat([model.vae.encode(x * 2 - 1).latent_dist.mode().flatten() for x in batches])
    assert model.config.vae.scaling_factor == pytest.approx(1 / float(z.std()), rel=1e-6)
    assert model.config.vae.shift_factor == pytest.approx(float(z.mean()), rel=1e-6, abs=1e-9)
    with torch.no_grad():
        enc = model.encode(torch.cat(batches))
    assert float(enc.std()) == pytest.approx(1.0, rel=1e-4) and abs(float(enc.mean())) < 1e-5


def test_dinov2_file_round_trip_and_wrong_layouts(tmp_path):
    enc = DinoEncoder(TINY_VIT).init_random(3)
    sd = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file({**sd, "mask_token": torch.zeros(1, 16)}, str(tmp_path / "dino.safetensors"))
    back = load_dino_encoder(tmp_path / "dino.safetensors", TINY_VIT)
    x = torch.rand(2, 3, 40, 56)
    out = back(x)
    assert out.shape == (2, 16, 4, 4) and torch.equal(out, enc(x))
    assert not any(p.requires_grad for p in back.parameters()) and not back.train().training
    save_file({k: v for k, v in sd.items() if k != "norm.weight"}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointFormatError, match="1 missing e.g. \\['norm.weight'\\]"):
        load_dino_encoder(tmp_path / "bad.safetensors", TINY_VIT)
    with pytest.raises(FileNotFoundError, match="DINOv2 weights not found"):
        load_dino_encoder(tmp_path / "none.safetensors", TINY_VIT)


def test_phase_configs_need_their_inputs():
    with pytest.raises(ConfigError, match="phase 'regression' needs init_from"):
        tg.GenDRTrainConfig(phase="regression", dino_random_seed=0)
    with pytest.raises(ConfigError, match="phase 'cida' needs score_base"):
        tg.GenDRTrainConfig(phase="cida", init_from="g.safetensors", dino_random_seed=0)
    with pytest.raises(ConfigError, match="needs dinov2"):
        tg.GenDRTrainConfig(phase="vae16_base", sd21_base="sd21")
    with pytest.raises(ConfigError, match="regression.perceptual > 0 needs regression.vgg16"):
        tg.RegressionLossConfig(perceptual=1.0)
    paper = tg.load_config(CONFIGS / "gendr_base_tiny_cpu.json")
    assert (paper.cida.kappa, paper.cida.xi, paper.cida.lambda_adv, paper.cida.lambda_repa) == (7.5, 1.2, 0.01, 0.1)
    assert (paper.cida.t_min, paper.cida.t_max, paper.cida.generator_timestep) == (20, 979, 499)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_three_phases_chain_and_frozen_parts_stay_bit_identical(tmp_path):
    common = {"data.train_dirs": [str(FIXTURES)], "optim.max_steps": 2, "save_every": 1,
              "regression.perceptual": 0.5, "regression.random_vgg": True}
    base = tg.train(_base_cfg(tmp_path, **common))
    base_file = base / tg.EXPORT_FILE
    kind, base_cfg, meta = read_header(base_file)
    assert (kind, meta["gendr_pix.stage"]) == ("gendr", "vae16_base")
    assert [r["step"] for r in _records(base)] == [1, 2] and {"loss_eps", "loss_repa"} <= set(_records(base)[0])
    base_model = load_model(base_file, "cpu", torch.float32)

    reg = tg.train(tg.load_config(CONFIGS / "gendr_regression_tiny_cpu.json",
                                  {**common, "init_from": str(base_file), "output_dir": str(tmp_path / "reg")}))
    assert {"loss_mse", "loss_perceptual"} <= set(_records(reg)[0])
    reg_model = load_model(reg / tg.EXPORT_FILE, "cpu", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(reg_model.vae.state_dict().values(),
                                                 base_model.vae.state_dict().values(), strict=True))  # VAE frozen
    assert not torch.equal(reg_model.unet.conv_out.weight, base_model.unet.conv_out.weight)  # G_theta trained

    cida_cfg = tg.load_config(CONFIGS / "gendr_cida_tiny_cpu.json",
                              {**common, "init_from": str(reg / tg.EXPORT_FILE), "score_base": str(base_file),
                               "output_dir": str(tmp_path / "cida"), "optim.warmup_steps": 4})
    cida = tg.train(cida_cfg, stop_after=1)
    cida = tg.train(cida_cfg)  # resumes: heads, both adapters, generator and optimisers from the checkpoint
    recs = _records(cida)
    assert [r["step"] for r in recs] == [1, 2] and all(r["world_size"] == 1 for r in recs)
    # the LR after each step: warm-up (step + 1) / 4, carried on across the resume at step 1
    assert [r["lr"] for r in recs] == pytest.approx([cida_cfg.optim.lr * 0.5, cida_cfg.optim.lr * 0.75])
    assert {"loss_cid", "loss_adv_g", "loss_repa", "adv_d", "score_real", "score_fake", "omega"} <= set(recs[0])
    # lambda_1 = 10 for the first lambda_cid_warmup_steps (2 here) steps
    assert read_header(cida / tg.EXPORT_FILE)[0] == "gendr"
    ema = load_file(str(sorted((cida / "checkpoints").iterdir())[-1] / "ema.safetensors"))
    assert all(torch.equal(ema[k], v) for k, v in reg_model.state_dict().items() if k.startswith("vae."))


def test_cida_iteration_updates_exactly_heads_adapters_then_generator():
    from gendr_core.config import GenDRConfig
    from gendr_core.models import GenDRTeacher, LoRAConfig, RepaProjector, ScoreNetworks
    from gendr_core.models.discriminators import DiscriminatorHeads
    from gendr_core.models.unet_features import capture_output, encoder_channels, encoder_depths

    torch.manual_seed(0)
    gen_model = GenDRTeacher(GenDRConfig(unet=tiny_unet_config(16, 16), vae=F8_VAE16, prompt_tokens=4))
    gen_model.vae.requires_grad_(False)
    base = GenDRTeacher(gen_model.config)
    scores = ScoreNetworks(base.unet, LoRAConfig(rank=4, alpha=8.0))
    depths = encoder_depths(base.unet)
    heads = DiscriminatorHeads(encoder_channels(base.unet, depths), 8)
    projector = RepaProjector(8, TINY_VIT.dim, 32)
    dino = DinoEncoder(TINY_VIT).init_random(0)
    frozen_before = {n: p.detach().clone() for n, p in scores.base_named_parameters()}
    heads_before = [p.detach().clone() for p in heads.parameters()]
    adapters_before = {a: [p.detach().clone() for p in scores.adapter_parameters(a)] for a in scores.ADAPTERS}
    opts = {"h": torch.optim.SGD(heads.parameters(), lr=0.1),
            "s": torch.optim.SGD([p for a in scores.ADAPTERS for p in scores.adapter_parameters(a)], lr=0.1)}
    called = []

    def update(name, loss, params):
        called.append(name)
        opts[name].zero_grad()
        loss.backward()
        assert all(p.grad is None for p in gen_model.unet.parameters())  # sg[z_g] in L_h, L_phi, L_psi
        assert all(p.grad is None for _, p in scores.base_named_parameters())
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    x_h = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_h = gen_model.encode(x_h)
        z_l = gen_model.encode(x_h * 0.8)
    c = torch.randn(1, 4, 8)
    with capture_output(gen_model.unet.down_blocks[0]) as got:
        z_g = gen_model.one_step(z_l, c)
    terms, extra = tg.cida_terms(tg.CiDAConfig(), 0, scores, heads, projector(got[-1]), dino(x_h), z_h, z_g, c,
                                 torch.zeros_like(c), torch.Generator().manual_seed(2), update)
    assert called == ["h", "s"]
    assert any(not torch.equal(p, q) for p, q in zip(heads.parameters(), heads_before, strict=True))
    for a in scores.ADAPTERS:  # each adapter moved (LoRA B leaves zero)
        assert any(not torch.equal(p, q) for p, q in zip(scores.adapter_parameters(a), adapters_before[a], strict=True))
    assert set(terms) == {"cid", "adv_g", "repa"} and set(extra) == {"adv_d", "score_real", "score_fake", "omega"}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in heads.parameters())  # sg[h]
    assert all(p.grad is None for a in scores.ADAPTERS for p in scores.adapter_parameters(a))  # sg[phi], sg[psi]
    assert all(p.grad is None for _, p in scores.base_named_parameters())
    assert all(p.grad is None for p in gen_model.vae.parameters()) and all(p.grad is None for p in dino.parameters())
    assert gen_model.unet.conv_out.weight.grad.abs().sum() > 0 and gen_model.unet.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in projector.parameters())
    # the shared frozen base is bit-identical after both adapters trained on it
    assert all(torch.equal(p, frozen_before[n]) for n, p in scores.base_named_parameters())
