"""GenDR-Pix Stage I (trainers/train_stage1.py, gendr_core/models/adc.py): theta <- mu with a fresh
192-channel head, gradient probes of Algorithm 1's two updates, the Stage II hand-off, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

from gendr_core.checkpoint import load_model, read_header, save_model  # noqa: E402
from gendr_core.config import tiny_gendr_f8_config, tiny_gendr_pix_config  # noqa: E402
from gendr_core.errors import ConfigError  # noqa: E402
from gendr_core.losses import generator_adv_loss  # noqa: E402
from gendr_core.models import GenDRTeacher  # noqa: E402
from gendr_core.models.adc import GenDRAdc, tiny_adc_config  # noqa: E402
from gendr_core.models.discriminators import DiscriminatorHeads, FrozenGeneratorFeatures  # noqa: E402
from gendr_core.models.unet_features import encoder_channels, encoder_depths, encoder_features  # noqa: E402
from gendr_core.ops.shuffle import unshuffle  # noqa: E402
from trainers import train_stage1 as s1  # noqa: E402
from trainers import train_stage2 as s2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainers" / "configs" / "stage1_tiny_cpu.json"
FIXTURES = REPO / "tests" / "fixtures"


def _teacher(seed: int = 0) -> GenDRTeacher:
    torch.manual_seed(seed)
    t = GenDRTeacher(tiny_gendr_f8_config())
    with torch.no_grad():
        t.prompt_pos.normal_(0, 0.5)
    return t.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return save_model(_teacher(), tmp_path_factory.mktemp("stage1") / "teacher.safetensors")


def test_adc_from_teacher_copies_the_body_and_reinitialises_the_head():
    teacher = _teacher()
    a = GenDRAdc.from_teacher(teacher, 8, torch.Generator().manual_seed(3))
    b = GenDRAdc.from_teacher(teacher, 8, torch.Generator().manual_seed(3))
    assert a.config == tiny_adc_config()
    t_sd, a_sd = teacher.unet.state_dict(), a.unet.state_dict()
    assert a_sd["conv_in.weight"].shape == (8, 192, 3, 3) and t_sd["conv_in.weight"].shape == (8, 16, 3, 3)
    for k, v in t_sd.items():
        if not k.startswith("conv_in."):
            assert torch.equal(a_sd[k], v), k  # theta <- mu
    assert torch.equal(a_sd["conv_in.weight"], b.unet.state_dict()["conv_in.weight"])  # seeded re-init
    bound = 1 / (192 * 9) ** 0.5  # PyTorch's default conv init range for fan_in = 192*3*3
    assert float(a_sd["conv_in.weight"].abs().max()) <= bound and float(a_sd["conv_in.bias"].abs().max()) <= bound
    assert torch.equal(a.prompt_pos, teacher.prompt_pos)
    assert a(torch.rand(2, 3, 64, 48)).shape == (2, 16, 8, 6)  # pixels in, latents out
    assert all(p.requires_grad for p in a.parameters()) and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="shuffle_factor=4 must equal the teacher VAE's factor 8"):
        GenDRAdc.from_teacher(teacher, 4)


def test_handoff_keeps_the_encoder_half_so_it_is_the_stage2_discriminator():
    adc = GenDRAdc.from_teacher(_teacher(), 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        adc.prompt_pos.add_(0.25)
    pix = adc.to_gendr_pix(torch.Generator().manual_seed(1))
    assert pix.config == tiny_gendr_pix_config()  # the layout of trainers/configs/stage2_tiny_cpu.json
    p_sd, a_sd = pix.unet.state_dict(), adc.unet.state_dict()
    assert p_sd["conv_out.weight"].shape == (192, 8, 3, 3) and a_sd["conv_out.weight"].shape == (16, 8, 3, 3)
    assert all(torch.equal(p_sd[k], v) for k, v in a_sd.items() if not k.startswith("conv_out."))
    assert torch.equal(pix.prompt_pos, adc.prompt_pos) and torch.equal(pix.prompt_neg, adc.prompt_pos)
    x = torch.rand(1, 3, 64, 64)
    feats = FrozenGeneratorFeatures(pix)(x)
    t = torch.full((1,), 499)
    ref = encoder_features(adc.unet, unshuffle(x * 2 - 1, 8), t, adc.prompt_pos)
    assert len(feats) == len(ref) == 3 and all(torch.equal(f, r) for f, r in zip(feats, ref, strict=True))


def _probe_models():
    teacher = _teacher()
    model = GenDRAdc.from_teacher(teacher, 8, torch.Generator().manual_seed(0))
    depths = encoder_depths(teacher.unet)
    heads = DiscriminatorHeads(encoder_channels(teacher.unet, depths), 8)
    x_h = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    x_l = (x_h + 0.1 * torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))).clamp(0, 1)
    return teacher, model, heads, depths, x_l, x_h


def test_stage1_gradients_reach_exactly_what_each_update_trains():
    teacher, model, heads, depths, x_l, x_h = _probe_models()
    z_r, z_h = s1.teacher_latents(teacher, x_l, x_h)
    assert not z_r.requires_grad and not z_h.requires_grad
    z_g = model(x_l)
    s1.discriminator_loss(heads, teacher, z_h, z_g, depths).backward()  # L_phi: heads only
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():  # an optimiser step of the heads between the two updates (Algorithm 1 order)
        for p in heads.parameters():
            p.sub_(0.01 * p.grad)
            p.grad = None
    sum(s1.generator_terms(heads, teacher, z_g, z_r, depths, s1.Stage1LossConfig(), True).values()).backward()
    assert all(p.grad is None for p in heads.parameters())  # h_sg[phi]
    assert all(p.grad is None for p in teacher.parameters())
    assert model.unet.conv_in.weight.grad.abs().sum() > 0 and model.prompt_pos.grad is not None
    assert all(p.requires_grad for p in heads.parameters())  # flags restored after the frozen block


def test_stage1_loss_values_by_hand():
    teacher, model, heads, depths, x_l, x_h = _probe_models()
    loss = s1.Stage1LossConfig(l1=1.0, adversarial=0.05)
    z_r, z_h = s1.teacher_latents(teacher, x_l, x_h)
    with torch.no_grad():
        z_g = model(x_l)
        terms = s1.generator_terms(heads, teacher, z_g, z_r, depths, loss, True)
        d = s1.discriminator_loss(heads, teacher, z_h, z_g, depths)
        assert torch.allclose(z_r, teacher.one_step(teacher.encode(x_l), teacher.prompt_pos))
        t = torch.full((2,), 499)
        fake = heads(encoder_features(teacher.unet, z_g, t, teacher.prompt_pos, depths))
        real = heads(encoder_features(teacher.unet, z_h, t, teacher.prompt_pos, depths))
    sp = torch.nn.functional.softplus
    assert torch.allclose(terms["l1"], (z_r - z_g).abs().mean(), rtol=1e-6, atol=0)
    assert torch.allclose(terms["adv_g"], 0.05 * sum(sp(-m).mean() for m in fake) / 3, rtol=1e-5, atol=0)
    assert torch.allclose(terms["adv_g"], 0.05 * generator_adv_loss(fake), rtol=1e-6, atol=0)
    by_hand = sum(sp(-r).mean() + sp(f).mean() for r, f in zip(real, fake, strict=True)) / 3
    assert torch.allclose(d, by_hand, rtol=1e-5, atol=0)
    assert set(s1.generator_terms(heads, teacher, z_g, z_r, depths, loss, False)) == {"l1"}


def _cfg(tmp_path: Path, teacher_file: Path, name: str, **over) -> s1.Stage1Config:
    base = {"teacher": str(teacher_file), "output_dir": str(tmp_path / name), "data.train_dirs": [str(FIXTURES)]}
    base.update(over)
    return s1.load_config(TINY, base)


def test_tiny_run_resumes_and_hands_off_to_stage2(tmp_path, teacher_file):
    straight = s1.train(_cfg(tmp_path, teacher_file, "straight"))
    split = _cfg(tmp_path, teacher_file, "split")
    s1.train(split, stop_after=3)
    assert not (Path(split.output_dir) / s1.HANDOFF_FILE).exists()  # only a finished run hands off
    s1.train(split)  # resumes at step 3
    recs = [json.loads(line) for line in (Path(split.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(r["world_size"] == 1 and r["samples_seen"] == 2 * r["step"] for r in recs)
    ref = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in recs] == pytest.approx([r["loss"] for r in ref], rel=1e-5)

    handoff = straight / s1.HANDOFF_FILE
    kind, cfg, meta = read_header(handoff)
    assert (kind, cfg, meta["gendr_pix.stage"], meta["gendr_pix.train_step"]) == (
        "gendr_pix", tiny_gendr_pix_config(), "stage1_handoff", "6")
    assert load_model(handoff, device="cpu", dtype=torch.float32)(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    again = s1.export_handoff(straight, tmp_path / "again.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(load_model(again, "cpu", torch.float32).state_dict().values(),
                                                 load_model(handoff, "cpu", torch.float32).state_dict().values(),
                                                 strict=True))
    # Stage II (unchanged trainer) starts from the hand-off, with it as the discriminator backbone
    s2cfg = s2.load_config(REPO / "trainers" / "configs" / "stage2_tiny_cpu.json",
                           {"init_from": str(handoff), "output_dir": str(tmp_path / "s2"), "val_every": 0,
                            "optim.max_steps": 2, "data.train_dirs": [str(FIXTURES)], "data.crop_size": 64})
    s2out = s2.train(s2cfg)
    assert len((s2out / "metrics.jsonl").read_text().splitlines()) == 2


def test_config_errors_name_the_field(tmp_path, teacher_file):
    with pytest.raises(ConfigError, match="teacher is required"):
        s1.Stage1Config()
    pix_file = save_model(GenDRAdc.from_teacher(_teacher()).to_gendr_pix(), tmp_path / "pix.safetensors")
    with pytest.raises(ConfigError, match="is a 'gendr_pix' model; Stage I distils a GenDR teacher"):
        s1.train(_cfg(tmp_path, pix_file, "bad"))
    with pytest.raises(ConfigError, match="data.crop_size=40 must be a multiple of 16"):
        s1.train(_cfg(tmp_path, teacher_file, "bad2", **{"data.crop_size": 40}))
