"""DFOSD trainer (trainers/train_dfosd.py): gradients of the two updates, the LoRA merge of the
export, a tiny run with resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from gendr_core.checkpoint import load_model, read_header  # noqa: E402
from gendr_core.errors import ConfigError  # noqa: E402
from gendr_core.losses import EADISTS, generator_adv_loss  # noqa: E402
from gendr_core.models import adapter_parameters  # noqa: E402
from gendr_core.models.noise_aware import NoiseAwareDiscriminator  # noqa: E402
from trainers import train_dfosd as td  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainers" / "configs" / "dfosd_tiny_cpu.json"
FIXTURES = REPO / "tests" / "fixtures"


def _cfg(tmp_path: Path, name: str = "run", **over) -> td.DFOSDTrainConfig:
    base = {"output_dir": str(tmp_path / name), "data.train_dirs": [str(FIXTURES)]}
    base.update(over)
    return td.load_config(TINY, base)


def _parts(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path)
    model, nad_unet = td.build_dfosd(cfg)
    nad = NoiseAwareDiscriminator(nad_unet, cfg.lora, cfg.nad_hidden)
    return cfg, model, nad


def test_updates_reach_exactly_the_nad_then_the_generator_lora_and_embedding(tmp_path):
    cfg, model, nad = _parts(tmp_path)
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k and k != "prompt_pos"}
    x_h = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    x_l = (x_h * 0.9).clamp(0, 1)
    seen = []

    def update_d(d_loss):
        d_loss.backward()
        seen.append([p for p in nad.trainable_parameters() if p.grad is not None])
        assert all(p.grad is None for p in model.parameters())  # sg[z^_H]
        for p in nad.trainable_parameters():
            p.grad = None

    ea = EADISTS(None, allow_random=True)
    terms = td.dfosd_losses(model, nad, x_l, x_h, cfg.loss, ea, torch.Generator().manual_seed(2), update_d)
    assert len(seen[0]) == len(nad.trainable_parameters())  # LoRA of down/mid + MLP head
    assert set(terms) == {"mse", "ea_dists", "adv_g", "adv_d"}
    terms.pop("adv_d")
    sum(terms.values()).backward()
    assert all(p.grad is None for p in nad.parameters())
    g = adapter_parameters(model.unet, td.ADAPTER)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g) and model.prompt_pos.grad is not None
    trained = {id(p) for p in g} | {id(model.prompt_pos)}
    assert all(p.grad is None for p in model.parameters() if id(p) not in trained)  # VAE and base UNet frozen
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base_before.items())


def test_adversarial_term_by_hand(tmp_path):
    cfg, model, nad = _parts(tmp_path)
    x_h = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    loss = td.DFOSDLossConfig(mse=1.0, ea_dists=0.0, adversarial=0.05)
    terms = td.dfosd_losses(model, nad, x_h, x_h, loss, None, torch.Generator().manual_seed(4), lambda d: None)
    g = torch.Generator().manual_seed(4)
    t = nad.sample_t(2, g)
    noise = torch.randn((2, 4, 32, 32), generator=g)
    with torch.no_grad():
        z = model.one_step(model.encode(x_h), model.prompt_pos)
        fake, _ = nad(z, model.prompt_pos, t[1:], noise[1:])
        mse = torch.nn.functional.mse_loss(model.decode(z), x_h)
    assert torch.allclose(terms["adv_g"], 0.05 * torch.nn.functional.softplus(-fake).mean(), rtol=1e-5)
    assert torch.allclose(terms["adv_g"], 0.05 * generator_adv_loss(fake), rtol=1e-6)
    assert torch.allclose(terms["mse"], mse, rtol=1e-5)


def test_tiny_run_resumes_and_exports_a_merged_dfosd(tmp_path):
    cfg = _cfg(tmp_path, "split", **{"optim.warmup_steps": 5})
    td.train(cfg, stop_after=2)
    out = td.train(cfg)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and all(r["world_size"] == 1 for r in recs)
    # the LR after each step: warm-up (step + 1) / 5, carried on across the resume at step 2
    assert [r["lr"] for r in recs] == pytest.approx([cfg.optim.lr * f for f in (0.4, 0.6, 0.8, 1.0)])
    kind, mcfg, meta = read_header(out / td.EXPORT_FILE)
    assert (kind, meta["gendr_pix.stage"]) == ("dfosd", "dfosd")
    exported = load_model(out / td.EXPORT_FILE, "cpu", torch.float32)
    # the merged UNet computes what the LoRA-wrapped EMA model computes
    from safetensors.torch import load_file

    from gendr_core.models import DFOSD, add_lora_adapter

    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    wrapped = DFOSD(mcfg)
    add_lora_adapter(wrapped.unet, td.ADAPTER, cfg.lora)
    wrapped.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(exported(x), wrapped.eval()(x), atol=1e-5)
    assert not torch.equal(exported.prompt_pos, torch.zeros_like(exported.prompt_pos))  # the embedding trained


def test_config_errors():
    with pytest.raises(ConfigError, match="give sd21_base"):
        td.DFOSDTrainConfig(loss=td.DFOSDLossConfig(ea_dists=0.0))
    with pytest.raises(ConfigError, match="loss.ea_dists > 0 needs loss.vgg16"):
        td.DFOSDLossConfig()
