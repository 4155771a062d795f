"""FixMod (GenDR-Pix Sec. A.1): config, the module's exact properties, and the post-fix rules."""

from __future__ import annotations

import json

import pytest
import torch

from gendr_core import FixMod, FixModConfig, build_model
from gendr_core.config import tiny_fixmod_config, tiny_gendr_pix_config
from gendr_core.errors import ConfigError, ImageInputError
from gendr_core.ops.color_fix import wavelet_color_fix, wavelet_decompose
from gendr_core.pipeline import post_fix, resolve_post_fix


def trained(config: FixModConfig, seed: int = 0, std: float = 0.2) -> FixMod:
    """A FixMod with non-zero weights everywhere (the zero-initialised head included)."""
    torch.manual_seed(seed)
    net = FixMod(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net


def pair(h: int, w: int, b: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip_and_errors():
    cfg = FixModConfig(channels=(8, 16), layers_per_level=2, unshuffle=2, wavelet_levels=4)
    assert FixModConfig.from_json(cfg.to_json()) == cfg and cfg.pad_multiple == 4
    assert FixModConfig().pad_multiple == 16  # x4 unshuffle, three levels
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['width'\]; valid keys are \['channels'"):
        FixModConfig.from_json('{"width": 8}')
    for bad, needle in ((dict(channels=()), "channels=()"), (dict(layers_per_level=0), "layers_per_level=0"),
                        (dict(unshuffle=0), "unshuffle=0"), (dict(wavelet_levels=0), "wavelet_levels=0")):
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            FixModConfig(**bad)


def test_parameter_counts():
    # default: stem 96->32, 32, s2 32->64, 64, s2 64->128, 128, laterals 128->64 and 64->32, 64, 32, head 32->48
    assert sum(p.numel() for p in FixMod(FixModConfig()).parameters()) == 384_176
    assert sum(p.numel() for p in FixMod(tiny_fixmod_config()).parameters()) == 2_524


# ----------------------------------------------------------------------------- the module


@pytest.mark.parametrize("hw", [(32, 32), (37, 29), (5, 7), (1, 1)])
def test_untrained_fixmod_is_exactly_the_wavelet_color_fix(hw):
    y, lq = pair(*hw, b=2)
    for cfg in (FixModConfig(), tiny_fixmod_config()):
        net = FixMod(cfg)
        assert not net.head.weight.any() and not net.head.bias.any()
        assert torch.equal(net.residual(y, lq), torch.zeros_like(y))
        assert torch.equal(net(y, lq), wavelet_color_fix(y, lq, 1.0, cfg.wavelet_levels))


@pytest.mark.parametrize("hw", [(32, 32), (37, 29), (5, 7)])
def test_any_size_and_only_the_high_band_of_the_residual_survives(hw):
    """wavelet_color_fix is linear: fixed = high(y + r) + low(ref) = wavelet_fix(y, ref) + high(r)."""
    cfg = tiny_fixmod_config()
    net = trained(cfg)
    y, lq = pair(*hw, b=2, seed=1)
    with torch.no_grad():
        r = net.residual(y, lq)
        out = net(y, lq)
    assert r.shape == out.shape == y.shape and out.dtype == torch.float32 and r.abs().max() > 0.05
    high_r, _ = wavelet_decompose(r, cfg.wavelet_levels)
    torch.testing.assert_close(out, wavelet_color_fix(y, lq, 1.0, cfg.wavelet_levels) + high_r, atol=1e-5, rtol=0)


def test_pure_function_of_each_image():
    """No normalisation or batch statistics: each image of a batch gets what it gets alone, every time."""
    net = trained(FixModConfig(), std=0.05)
    y, lq = pair(24, 40, b=3, seed=2)
    with torch.no_grad():
        batch = net(y, lq)
        torch.testing.assert_close(batch[1:2], net(y[1:2], lq[1:2]), atol=1e-5, rtol=0)
        assert torch.equal(net(y, lq), batch)


def test_local_receptive_field():
    """Changing the input far from a pixel leaves its residual unchanged (what makes FixMod cheap and local)."""
    net = trained(tiny_fixmod_config())
    y, lq = pair(64, 64, seed=3)
    y2 = y.clone()
    y2[..., :, 48:] = 0.0  # columns 48.. changed
    with torch.no_grad():
        a, b = net.residual(y, lq), net.residual(y2, lq)
    assert torch.equal(a[..., :, :24], b[..., :, :24]) and not torch.equal(a, b)


def test_low_precision_weights_return_float32():
    net = trained(tiny_fixmod_config()).to(torch.bfloat16)
    y, lq = pair(16, 16)
    with torch.no_grad():
        out = net(y, lq)
    assert out.dtype == torch.float32 and out.shape == y.shape and torch.isfinite(out).all()


def test_shape_errors_name_both_shapes():
    net = FixMod(tiny_fixmod_config())
    with pytest.raises(ImageInputError, match=r"image \(1, 3, 8, 8\) and reference \(1, 3, 4, 4\)"):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4))


def test_estimate_covers_inputs_and_grows_with_area():
    net = FixMod(FixModConfig())
    small, big = net.estimate_bytes(256, 256), net.estimate_bytes(512, 512)
    assert small > 4 * 6 * 256 * 256 and 3.9 < big / small < 4.1
    assert net.estimate_bytes(256, 256, batch=2) == 2 * small


# ----------------------------------------------------------------------------- post-fix rules


@pytest.fixture
def models():
    torch.manual_seed(0)
    plain = build_model(tiny_gendr_pix_config())
    with_net = build_model(tiny_gendr_pix_config())
    with_net.attach_fixmod(trained(tiny_fixmod_config()))
    with_net.source_path = "/models/with_fixmod.safetensors"
    return plain, with_net


def test_resolve_post_fix_table(models):
    plain, with_net = models
    table = {  # (model, fixmod, strength) -> (mode, strength)
        (plain, None, None): ("off", 0.0), (plain, "auto", None): ("off", 0.0), (plain, None, 0.5): ("wavelet", 0.5),
        (plain, "wavelet", None): ("wavelet", 1.0), (plain, "wavelet", 0.25): ("wavelet", 0.25),
        (plain, "off", None): ("off", 0.0), (plain, "off", 0.0): ("off", 0.0), (None, None, 1.0): ("wavelet", 1.0),
        (with_net, None, None): ("learned", 1.0), (with_net, "auto", 0.5): ("learned", 0.5),
        (with_net, "learned", None): ("learned", 1.0), (with_net, "wavelet", None): ("wavelet", 1.0),
        (with_net, "learned", 0.0): ("off", 0.0), (with_net, "off", None): ("off", 0.0),
    }
    for (model, mode, strength), expect in table.items():
        assert resolve_post_fix(model, mode, strength) == expect, (model is with_net, mode, strength)
    with pytest.raises(ConfigError, match="fixmod='learned': this gendr_pix model has no learned FixMod"):
        resolve_post_fix(plain, "learned")
    plain.source_path = "/models/plain.safetensors"
    with pytest.raises(ConfigError, match="/models/plain.safetensors has no learned FixMod"):
        resolve_post_fix(plain, "learned")
    with pytest.raises(ValueError, match="color_fix=0.5 has no effect with fixmod='off'"):
        resolve_post_fix(with_net, "off", 0.5)
    with pytest.raises(ValueError, match="fixmod='color' must be one of auto, off, wavelet, learned"):
        resolve_post_fix(plain, "color")
    with pytest.raises(ValueError, match=r"color_fix=1.5 is out of range: it must be in \[0, 1\]"):
        resolve_post_fix(plain, "wavelet", 1.5)


def test_post_fix_outputs(models):
    plain, with_net = models
    y, ref = pair(20, 28, b=2, seed=4)
    assert torch.equal(post_fix(y, ref, plain), y)  # the default leaves files without FixMod alone
    assert torch.equal(post_fix(y, ref, plain, strength=0.5), wavelet_color_fix(y, ref, 0.5))
    with torch.no_grad():
        fixed = with_net.fixmod(y, ref)
    assert torch.equal(post_fix(y, ref, with_net), fixed)
    assert torch.equal(post_fix(y, ref, with_net, "learned", 0.5), y + 0.5 * (fixed - y))
    assert torch.equal(post_fix(y, ref, with_net, "wavelet"), wavelet_color_fix(y, ref))
    assert torch.equal(post_fix(y, ref, with_net, "off"), y)


# ----------------------------------------------------------------------------- trainer


def test_train_fixmod_tiny_writes_restorer_plus_fixmod_and_resumes(tmp_path):
    from pathlib import Path

    from safetensors import safe_open

    from gendr_core import load_model, save_model
    from gendr_core.checkpoint import read_header
    from trainers.train_fixmod import TRAIN_STEP_KEY, load_config, train

    repo = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    restorer = build_model(tiny_gendr_pix_config())
    with torch.no_grad():
        restorer.prompt_pos.normal_()
    src = save_model(restorer, tmp_path / "restorer.safetensors", dtype=torch.float16)
    fixtures = [str(repo / "tests" / "fixtures")]

    def config(out):
        return load_config(repo / "trainers" / "configs" / "fixmod_tiny_cpu.json", {
            "restorer": str(src), "output_dir": str(tmp_path / out), "data.train_dirs": fixtures,
            "data.val_dirs": fixtures, "optim.max_steps": 3, "optim.warmup_steps": 4})

    cfg = config("run")
    path = train(cfg, resume=False)
    assert path == tmp_path / "run" / "model_fixmod.safetensors"
    model = load_model(path, device="cpu", dtype="fp32")
    assert model.fixmod is not None and model.fixmod.config == cfg.fixmod
    assert model.fixmod.head.weight.abs().max() > 0  # trained away from the zero init
    _, _, meta = read_header(path)
    assert meta[TRAIN_STEP_KEY] == "3" and json.loads(meta["gendr_pix.fixmod_train_config"])["restorer"] == str(src)
    with safe_open(str(src), framework="pt") as a, safe_open(str(path), framework="pt") as b:
        restorer_keys = set(a.keys())
        assert {k for k in b.keys() if not k.startswith("fixmod.")} == restorer_keys
        for k in restorer_keys:  # the restorer is frozen: bit-identical tensors, same dtype (fp16)
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)) and b.get_tensor(k).dtype == torch.float16, k
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3]
    # the LR after each step: warm-up (step + 1) / 4 (the resumed run below must carry it on)
    assert [r["lr"] for r in log if r["kind"] == "train"] == pytest.approx([cfg.optim.lr * f for f in (0.5, 0.75, 1)])
    (val,) = [r for r in log if r["kind"] == "val"]
    assert set(val) >= {"psnr_y", "psnr_y_restorer", "psnr_y_wavelet", "psnr_y_bicubic"}
    # stopped after 2 steps and resumed: the same FixMod as the uninterrupted run
    cfg2 = config("resumed")
    assert train(cfg2, resume=True, stop_after=2) == tmp_path / "resumed"
    assert not cfg2.output_path().exists()
    train(cfg2, resume=True)
    a, b = load_model(path, device="cpu").fixmod.state_dict(), load_model(cfg2.output_path(), device="cpu").fixmod
    assert all(torch.equal(a[k], v) for k, v in b.state_dict().items())


def test_train_fixmod_config_errors(tmp_path):
    from pathlib import Path

    from trainers.train_fixmod import FixModTrainConfig, init_fixmod, load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "trainers" / "configs" / "fixmod_tiny_cpu.json")
    assert cfg.restorer == "gendr-pix-s" and cfg.fixmod.channels == (8, 16, 32)
    with pytest.raises(ConfigError, match="missing 1 required positional argument: 'restorer'"):
        FixModTrainConfig.from_dict({})
    with pytest.raises(ConfigError, match="fixmod_init='warm' must be 'zero' or 'file'"):
        FixModTrainConfig(restorer="x", fixmod_init="warm")
    with pytest.raises(ConfigError, match="target='xr' must be 'auto' or 'hr'"):
        FixModTrainConfig(restorer="x", target="xr")
    with pytest.raises(ConfigError, match=r"model.safetensors has no learned FixMod to continue from"):
        init_fixmod(FixModTrainConfig(restorer="x", fixmod_init="file"), None, tmp_path / "model.safetensors")
    other = FixMod(tiny_fixmod_config())
    with pytest.raises(ConfigError, match="the training config's 'fixmod' is"):
        init_fixmod(FixModTrainConfig(restorer="x", fixmod_init="file"), other, tmp_path / "model.safetensors")
    same = trained(tiny_fixmod_config())
    net = init_fixmod(FixModTrainConfig(restorer="x", fixmod=tiny_fixmod_config(), fixmod_init="file"), same, tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), same.parameters(), strict=True))


def test_recipe_config_parses_with_the_default_fixmod():
    from pathlib import Path

    from trainers.train_fixmod import load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "trainers" / "configs" / "fixmod_gendr_pix_s.json")
    assert cfg.fixmod == FixModConfig() and cfg.restorer == "gendr-pix-s" and cfg.targets is None
    assert cfg.data.scales == (4,) and cfg.optim.max_steps == 2000 and cfg.output_path().name == "model_fixmod.safetensors"


def test_train_fixmod_degrades_like_the_restorer_was_trained(tmp_path):
    from gendr_core.degradation import DegradationConfig
    from trainers.train_fixmod import FixModTrainConfig, resolve_degradation

    mild = DegradationConfig(scales=(4,), final_sinc_prob=0.0)
    meta = {"gendr_pix.train_config": json.dumps({"degradation": mild.to_dict(), "seed": 0})}
    cfg = FixModTrainConfig(restorer="x")
    assert resolve_degradation(cfg, meta, tmp_path).degradation == mild
    assert resolve_degradation(cfg, {}, tmp_path).degradation == DegradationConfig()  # none recorded
    own = FixModTrainConfig(restorer="x", degradation=DegradationConfig(scales=(2,)))
    assert resolve_degradation(own, meta, tmp_path) is own
