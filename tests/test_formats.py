"""Format detection and conversion: SD2.x single files (LDM keys), diffusers UNets and folders, VGG16.

The LDM-layout state dict of a tiny SD2-style UNet/VAE is produced by a diffusers -> LDM key map
written here for the test only (the installed diffusers has no reverse converter); the library
side uses diffusers' own ``convert_ldm_*_checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import safetensors.torch
import torch

from gendr_core import load_model, read_header
from gendr_core.config import UNetConfig, VAEConfig, tiny_unet_config, tiny_vae_config
from gendr_core.errors import CheckpointFormatError, GenDRPixError
from gendr_core.checkpoint import SD_LDM_UNET_KEY
from gendr_core.formats import (
    CONTEXT_KEYS,
    FORMAT_KEYS,
    SD1_CONTEXT_DIM,
    SD2_CONTEXT_DIM,
    CheckpointFormat,
    add_convert_arguments,
    build_converted,
    convert_to_model,
    convert_vgg16,
    detect_format,
    load_diffusers_folder,
    read_state_dict,
    run_convert_command,
    sd21_ldm_to_diffusers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from gendr_core.models import build_unet, build_vae, widen_io

UCFG = tiny_unet_config(4, 4).replace(layers_per_block=2)  # 2 layers: exercises the LDM block indexing
VCFG = tiny_vae_config(4)

# ----------------------------------------------------------------------------- test-only diffusers -> LDM map

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    name, tail = rest.split(".", 1)
    return f"{_RESNET[name]}.{tail}"


def unet_to_ldm(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    n = cfg.layers_per_block + 1  # LDM blocks per level: layers + (down|up)sampler slot
    attn_up = {i for i, t in enumerate(cfg.up_block_types) if "Attn" in t}
    out = {}
    for k, v in sd.items():
        top = next((t for t in _UNET_TOP if k.startswith(t + ".")), None)
        if top:
            new = _UNET_TOP[top] + k[len(top):]
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            new = f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.0.{_resnet(m[3])}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
            new = f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            new = f"input_blocks.{1 + int(m[1]) * n + cfg.layers_per_block}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", k):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            new = f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{_resnet(m[3])}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
            new = f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            slot = 2 if int(m[1]) in attn_up else 1
            new = f"output_blocks.{int(m[1]) * n + cfg.layers_per_block}.{slot}.conv.{m[2]}"
        else:
            raise AssertionError(f"test map does not cover {k}")
        out["model.diffusion_model." + new] = v.clone()
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, torch.Tensor]:
    nb = len(cfg.block_out_channels)
    out = {}
    for k, v in sd.items():
        v = v.clone()
        new = k.replace("conv_norm_out", "norm_out")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            new = f"decoder.up.{nb - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            new = f"decoder.up.{nb - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", k):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and v.ndim == 2:
                v = v[:, :, None, None]  # LDM stores q/k/v/proj_out as 1x1 convs
        out["first_stage_model." + new] = v
    return out


@pytest.fixture(scope="module")
def originals():
    torch.manual_seed(0)
    unet, vae = build_unet(UCFG).eval(), build_vae(VCFG).eval()
    return unet, vae


@pytest.fixture(scope="module")
def ldm_sd(originals):
    unet, vae = originals
    sd = unet_to_ldm(unet.state_dict(), UCFG) | vae_to_ldm(vae.state_dict(), VCFG)
    sd["cond_stage_model.model.token_embedding.weight"] = torch.zeros(3, 8)  # text encoder: ignored
    return sd


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _unet_out(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, unet.config.in_channels, 16, 16, generator=g)
    c = torch.randn(1, 4, UCFG.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([499]), encoder_hidden_states=c).sample


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("fmt", list(CheckpointFormat))
def test_detect_every_format_from_synthetic_keys(fmt, tmp_path):
    if fmt is CheckpointFormat.DIFFUSERS_FOLDER:
        for layout in ("model_index.json", "unet/config.json"):
            d = tmp_path / layout.replace("/", "_")
            (d / layout).parent.mkdir(parents=True)
            (d / layout).write_text("{}")
            assert detect_format(d) is fmt
        bare = tmp_path / "bare_unet"
        bare.mkdir()
        (bare / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
        assert detect_format(bare) is fmt
        return
    keys = list(FORMAT_KEYS[fmt.name]) + ["something.else"]
    assert detect_format(keys) is fmt
    assert detect_format({k: torch.zeros(1) for k in keys}) is fmt


def test_detect_unknown_keys_lists_what_it_looked_for(tmp_path):
    with pytest.raises(CheckpointFormatError) as exc:
        detect_format(["encoder.weight", "decoder.bias"])
    msg = str(exc.value)
    for needed in FORMAT_KEYS.values():
        assert all(k in msg for k in needed)
    assert "encoder.weight" in msg and "model_index.json" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="model_index.json"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(("extra", "name"), [
    ("conditioner.embedders.1.model.ln_final.weight", "SDXL"),
    ("model.diffusion_model.label_emb.0.0.weight", "SDXL"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "SD1.x"),
])
def test_sd15_and_sdxl_single_files_are_rejected_by_name(tmp_path, ldm_sd, extra, name):
    keys = list(FORMAT_KEYS["SD21_LDM"]) + [extra]
    with pytest.raises(CheckpointFormatError, match=f"an {re.escape(name)}.*{re.escape(extra)}"):
        detect_format(keys)
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({**ldm_sd, extra: torch.zeros(2)}, path)
    with pytest.raises(CheckpointFormatError, match=f"{re.escape(str(path))}: this is an {re.escape(name)}"):
        detect_format(path)
    sd2 = {**ldm_sd, "cond_stage_model.model.ln_final.weight": torch.zeros(2)}  # SD2.x OpenCLIP text encoder
    assert detect_format(sd2) is CheckpointFormat.SD21_LDM


def test_detect_files_by_metadata_and_keys(tmp_path, tiny_pix, ldm_sd):
    from gendr_core import save_model

    assert detect_format(save_model(tiny_pix, tmp_path / "ours.safetensors")) is CheckpointFormat.GENDR_PIX
    safetensors.torch.save_file(ldm_sd, tmp_path / "sd21.safetensors")
    assert detect_format(tmp_path / "sd21.safetensors") is CheckpointFormat.SD21_LDM


# ----------------------------------------------------------------------------- SD2.x single file


def test_ldm_to_diffusers_is_exact(ldm_sd, originals):
    unet, vae = originals
    unet_sd, vae_sd = sd21_ldm_to_diffusers(ldm_sd, UCFG, VCFG)
    _assert_same(unet_sd, unet.state_dict())
    _assert_same(vae_sd, vae.state_dict())


def test_sd21_single_file_to_dfosd_model(tmp_path, ldm_sd, originals):
    unet, vae = originals
    src = tmp_path / "v2-tiny.safetensors"
    safetensors.torch.save_file(ldm_sd, src)
    out = convert_to_model(src, "dfosd", tmp_path / "dfosd.safetensors", unet_config=UCFG, vae_config=VCFG)
    model = load_model(out, device="cpu", dtype="fp32")
    assert model.kind == "dfosd" and model.config.unet == UCFG and model.config.vae == VCFG
    _assert_same(model.unet.state_dict(), unet.state_dict())
    _assert_same(model.vae.state_dict(), vae.state_dict())
    assert torch.count_nonzero(model.prompt_pos) == 0 and model.metadata["gendr_pix.source_format"] == "sd21_ldm"
    torch.testing.assert_close(_unet_out(model.unet), _unet_out(unet), atol=1e-6, rtol=0)
    with pytest.raises(GenDRPixError, match="--overwrite"):
        convert_to_model(src, "dfosd", out, unet_config=UCFG, vae_config=VCFG)


def test_sd21_to_gendr_pix_widens_io(tmp_path, ldm_sd, originals):
    unet, _ = originals
    model = build_converted(_write(tmp_path, ldm_sd), "gendr_pix", unet_config=UCFG, vae_config=VCFG)
    assert model.kind == "gendr_pix" and model.config.unet.in_channels == 192 and not hasattr(model, "vae")
    ref = widen_io(_copy(unet), 192)
    _assert_same(model.unet.state_dict(), ref.state_dict())
    y = model(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()


def _copy(unet):
    c = build_unet(UCFG)
    c.load_state_dict(unet.state_dict())
    return c


def _write(tmp_path, sd, name="v2.safetensors"):
    p = tmp_path / name
    safetensors.torch.save_file(sd, p)
    return p


def test_ckpt_is_read_with_weights_only(tmp_path, ldm_sd, originals, monkeypatch):
    p = tmp_path / "v2-tiny.ckpt"
    torch.save({"state_dict": dict(ldm_sd), "global_step": 3}, p)
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append((kwargs.get("weights_only"), kwargs.get("mmap")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert detect_format(p) is CheckpointFormat.SD21_LDM
    assert seen == [(True, True)]  # tensors only, memory-mapped: the key check reads no tensor data
    seen.clear()
    model = build_converted(p, "dfosd", unet_config=UCFG, vae_config=VCFG)
    assert seen == [(True, True)]  # read once
    _assert_same(model.unet.state_dict(), originals[0].state_dict())
    legacy = tmp_path / "v2-legacy.ckpt"  # torch < 1.6 format cannot be memory-mapped
    torch.save(dict(ldm_sd), legacy, _use_new_zipfile_serialization=False)
    seen.clear()
    assert detect_format(legacy) is CheckpointFormat.SD21_LDM and seen == [(True, False)]


# An SD1.x UNet with no text encoder beside it, in the three layouts CONTEXT_KEYS covers: only the
# keys the detector reads, with SD1.x's 768-wide cross-attention context (320 inner -> 4 here), and
# what the same keys are with SD2.1's 1024 (a bare LDM UNet is not a format we read).
_UNET_ALONE = {
    "ldm": ({SD_LDM_UNET_KEY: (4, 4, 3, 3), CONTEXT_KEYS[0]: (4,)}, CheckpointFormat.SD21_LDM),
    "ldm_unet_alone": ({"input_blocks.0.0.weight": (4, 4, 3, 3), CONTEXT_KEYS[1]: (4,)}, None),
    "diffusers": ({**dict.fromkeys(FORMAT_KEYS["DIFFUSERS_UNET"], (4, 4, 3, 3)), CONTEXT_KEYS[2]: (4,)},
                  CheckpointFormat.DIFFUSERS_UNET),
}


@pytest.mark.parametrize("layout", list(_UNET_ALONE))
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sd15_unet_alone_is_rejected_by_shape(tmp_path, layout, suffix):
    shapes, sd2_format = _UNET_ALONE[layout]

    def state_dict(context_dim):
        return {k: torch.zeros(*shape, context_dim) if k in CONTEXT_KEYS else torch.zeros(shape)
                for k, shape in shapes.items()}

    sd = state_dict(SD1_CONTEXT_DIM)
    path = tmp_path / f"sd15_unet{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(sd, path)
    else:
        torch.save(sd, path)
    said = rf"^{re.escape(str(path))}: this is an SD1\.x \(SD1\.5\) UNet, not SD2\.1: .*\(4, 768\)"
    with pytest.raises(CheckpointFormatError, match=said):
        detect_format(path)
    with pytest.raises(CheckpointFormatError, match=said):  # the path gendr-pix convert and the trainers take
        build_converted(path, "gendr_pix")
    with pytest.raises(CheckpointFormatError, match=r"^state dict: this is an SD1\.x"):
        detect_format(sd)
    if sd2_format is None:
        with pytest.raises(CheckpointFormatError, match="unknown checkpoint format"):
            detect_format(state_dict(SD2_CONTEXT_DIM))
    else:
        assert detect_format(state_dict(SD2_CONTEXT_DIM)) is sd2_format


def test_wrong_layout_names_the_tensor(tmp_path, ldm_sd):
    p = _write(tmp_path, ldm_sd)
    wider = UCFG.replace(cross_attention_dim=16)  # like an SD1.x (768) file against the SD2.1 (1024) layout
    with pytest.raises(CheckpointFormatError, match=r"attn2\.to_k\.weight.*Stable Diffusion 2\.x"):
        build_converted(p, "dfosd", unet_config=wider, vae_config=VCFG)


def test_prompt_embeds_are_stored(tmp_path, ldm_sd):
    emb = torch.randn(5, UCFG.cross_attention_dim)
    safetensors.torch.save_file({"prompt_pos": emb}, tmp_path / "emb.safetensors")
    model = build_converted(_write(tmp_path, ldm_sd), "dfosd", prompt_embeds=tmp_path / "emb.safetensors",
                            unet_config=UCFG, vae_config=VCFG)
    assert model.config.prompt_tokens == 5 and torch.equal(model.prompt_pos[0], emb)
    assert torch.count_nonzero(model.prompt_neg) == 0
    safetensors.torch.save_file({"prompt_pos": torch.zeros(5, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointFormatError, match=r"\(5, 3\)"):
        build_converted(_write(tmp_path, ldm_sd), "dfosd", prompt_embeds=tmp_path / "bad.safetensors",
                        unet_config=UCFG, vae_config=VCFG)


# ----------------------------------------------------------------------------- diffusers


def test_diffusers_unet_file(tmp_path, originals):
    unet, _ = originals
    sd = {k: v.contiguous() for k, v in unet.state_dict().items()}
    p = _write(tmp_path, sd, "diffusion_pytorch_model.safetensors")
    assert detect_format(p) is CheckpointFormat.DIFFUSERS_UNET
    model = build_converted(p, "gendr_pix", unet_config=UCFG)
    assert model.config.unet.in_channels == 192
    with pytest.raises(CheckpointFormatError, match="needs a VAE"):
        build_converted(p, "dfosd", unet_config=UCFG)


def test_diffusers_folder_round_trip(tmp_path, originals):
    unet, vae = originals
    root = tmp_path / "pipe"
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert detect_format(root) is CheckpointFormat.DIFFUSERS_FOLDER
    src = load_diffusers_folder(root)
    assert src.unet_config == UCFG and src.vae_config == VCFG
    _assert_same(src.unet_sd, unet.state_dict())
    _assert_same(src.vae_sd, vae.state_dict())
    model = build_converted(root, "dfosd")
    torch.testing.assert_close(_unet_out(model.unet), _unet_out(unet), atol=1e-6, rtol=0)
    # a bare UNet folder works too
    assert load_diffusers_folder(root / "unet").vae_sd is None


def test_sd21_base_config_json_gives_our_defaults():
    # unet/config.json and vae/config.json of SD2.1-base as published (REFERENCE.md 3.6)
    unet = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0", "act_fn": "silu",
            "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False, "cross_attention_dim": 1024,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
            "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
            "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "upcast_attention": False,
            "use_linear_projection": True}
    vae = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
           "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
           "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
           "up_block_types": ["UpDecoderBlock2D"] * 4, "force_upcast": True}
    assert unet_config_from_diffusers(unet) == UNetConfig()
    assert vae_config_from_diffusers(vae) == VAEConfig()
    with pytest.raises(CheckpointFormatError, match="up_block_types"):
        vae_config_from_diffusers(vae | {"up_block_types": ["UpDecoderBlock2D"] * 3 + ["AttnUpDecoderBlock2D"]})


def test_diffusers_folder_rejects_unsupported_values(tmp_path, originals):
    unet, _ = originals
    unet.save_pretrained(tmp_path / "m" / "unet")
    cfg_path = tmp_path / "m" / "unet" / "config.json"
    data = json.loads(cfg_path.read_text())
    data.update(act_fn="gelu", class_embed_type="timestep", some_future_key=1)
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointFormatError, match=r"act_fn='gelu'.*class_embed_type='timestep'") as exc:
        load_diffusers_folder(tmp_path / "m")
    assert "some_future_key" not in str(exc.value)


# ----------------------------------------------------------------------------- VGG16 and the CLI


def test_convert_vgg16_keeps_features(tmp_path):
    from gendr_core.vgg import VGG16_CONV_LAYERS

    sd = {}
    for i, (cin, cout) in VGG16_CONV_LAYERS.items():
        sd[f"features.{i}.weight"] = torch.full((cout, cin, 3, 3), float(i))
        sd[f"features.{i}.bias"] = torch.zeros(cout)
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(sd, tmp_path / "vgg16.pth")
    out = convert_vgg16(tmp_path / "vgg16.pth", tmp_path / "w" / "vgg16.safetensors")
    got = read_state_dict(out)
    assert set(got) == {k for k in sd if k.startswith("features.")}
    assert torch.equal(got["features.28.weight"], sd["features.28.weight"])


def test_cli_arguments_and_run(tmp_path, originals):
    unet, _ = originals
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    ap = argparse.ArgumentParser()
    add_convert_arguments(ap)
    out = tmp_path / "o.safetensors"
    args = ap.parse_args([str(tmp_path / "pipe"), "-o", str(out), "--kind", "gendr_pix", "--dtype", "fp16"])
    assert args.kind == "gendr_pix" and not args.vgg16
    assert run_convert_command(args) == 0
    kind, cfg, meta = read_header(out)
    assert kind == "gendr_pix" and cfg.unet == UCFG.replace(in_channels=192, out_channels=192)
    assert meta["gendr_pix.source_format"] == "diffusers_folder"
    with safetensors.safe_open(str(out), "pt") as f:
        assert f.get_tensor("unet.conv_in.weight").dtype == torch.float16
    with pytest.raises(GenDRPixError, match="output exists"):
        run_convert_command(args)
