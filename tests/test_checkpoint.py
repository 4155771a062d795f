from __future__ import annotations

import json
import re

import pytest
import safetensors.torch
import torch

from gendr_core import load_model, read_header, save_model
from gendr_core import checkpoint
from gendr_core.checkpoint import CONFIG_KEY, KIND_KEY, default_dtype, describe, parse_dtype, warn_slow_dtype
from gendr_core.config import tiny_dfosd_config, tiny_gendr_config
from gendr_core.errors import CheckpointFormatError
from gendr_core.models import build_model


def test_save_load_round_trip_identical(tmp_path, tiny_pix):
    p = save_model(tiny_pix, tmp_path / "m.safetensors")
    kind, cfg, meta = read_header(p)
    assert kind == "gendr_pix" and cfg == tiny_pix.config and meta["format"] == "pt"
    loaded = load_model(p, device="cpu", dtype="fp32")
    assert loaded.config == tiny_pix.config
    a, b = tiny_pix.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("make", [tiny_gendr_config, tiny_dfosd_config])
def test_latent_kinds_round_trip(tmp_path, make):
    m = build_model(make())
    p = save_model(m, tmp_path / "m.safetensors")
    assert load_model(p, device="cpu").kind == m.kind


def test_fp16_save_and_dtype_choice(tmp_path, tiny_pix):
    p = save_model(tiny_pix, tmp_path / "h.safetensors", dtype=torch.float16)
    m = load_model(p, device="cpu")
    assert m.dtype == default_dtype(torch.device("cpu"))  # auto: bf16 on CPUs with native bf16, else fp32
    assert load_model(p, device="cpu", dtype="fp32").dtype == torch.float32
    assert load_model(p, device="cpu", dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='fp8'"):
        parse_dtype("fp8")


def test_interrupted_save_keeps_old_file(tmp_path, tiny_pix, monkeypatch):
    p = save_model(tiny_pix, tmp_path / "m.safetensors")
    before = p.read_bytes()

    def boom(sd, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("gendr_core.checkpoint.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_pix, p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]


def test_pickle_files_are_refused(tmp_path):
    p = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(1)}, p)
    with pytest.raises(CheckpointFormatError, match="gendr-pix convert"):
        load_model(p)


def test_errors_name_file_key_and_value(tmp_path, tiny_pix):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(missing)
    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointFormatError, match=f"bare.safetensors: no '{KIND_KEY}'"):
        load_model(bare)
    # wrong tensor shape: the message names the key and the expected shape
    sd = {k: v.contiguous() for k, v in tiny_pix.state_dict().items()}
    sd["prompt_pos"] = torch.zeros(1, 5, 8)
    meta = {"format": "pt", KIND_KEY: "gendr_pix", CONFIG_KEY: tiny_pix.config.to_json()}
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(sd, bad, metadata=meta)
    with pytest.raises(CheckpointFormatError, match=r"'prompt_pos' has shape \(1, 5, 8\), expected \(1, 4, 8\)"):
        load_model(bad)
    # bad kind / bad config JSON
    safetensors.torch.save_file(sd, bad, metadata={**meta, KIND_KEY: "sdxl"})
    with pytest.raises(CheckpointFormatError, match="'sdxl'"):
        load_model(bad)
    cfg = json.loads(tiny_pix.config.to_json())
    cfg["shuffle"] = 8
    safetensors.torch.save_file(sd, bad, metadata={**meta, CONFIG_KEY: json.dumps(cfg)})
    with pytest.raises(CheckpointFormatError, match=r"unknown key\(s\) \['shuffle'\]"):
        load_model(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(CheckpointFormatError, match="trunc.safetensors: not a readable"):
        load_model(trunc)


def test_describe(tiny_pix):
    d = describe(tiny_pix)
    assert d["kind"] == "gendr_pix" and d["parameters"] == sum(p.numel() for p in tiny_pix.parameters())
    assert d["prompt_embeddings"]["positive"] == [1, 4, 8]


# ----------------------------------------------------------------------------- learned FixMod in the model file


def with_fixmod(model, seed: int = 1):
    from gendr_core.config import tiny_fixmod_config

    torch.manual_seed(seed)
    net = model.attach_fixmod(tiny_fixmod_config())
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return model


def test_fixmod_round_trip_identical_tensors_and_outputs(tmp_path, tiny_pix):
    from gendr_core import upscale
    from gendr_core.checkpoint import FIXMOD_CONFIG_KEY, read_fixmod_config

    m = with_fixmod(tiny_pix)
    p = save_model(m, tmp_path / "m.safetensors")
    _, _, meta = read_header(p)
    assert read_fixmod_config(p, meta) == m.fixmod.config and FIXMOD_CONFIG_KEY in meta
    with safetensors.safe_open(str(p), framework="pt") as f:
        assert sorted(k for k in f.keys() if k.startswith("fixmod.")) == sorted(
            f"fixmod.{k}" for k in m.fixmod.state_dict())
    loaded = load_model(p, device="cpu", dtype="fp32")
    assert loaded.fixmod is not None and loaded.fixmod.config == m.fixmod.config
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(q.requires_grad for q in loaded.fixmod.parameters())
    x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    # same weights bit for bit (above); outputs to fp32 rounding (oneDNN may pick other kernels for
    # the loaded, file-backed tensors)
    torch.testing.assert_close(upscale(x, loaded, 2), upscale(x, m, 2), rtol=0, atol=1e-5)
    assert not torch.equal(upscale(x, loaded, 2), upscale(x, loaded, 2, fixmod="off"))
    # fp16 file: FixMod weights stored in fp16 too, loaded in the requested dtype
    h = load_model(save_model(m, tmp_path / "h.safetensors", dtype=torch.float16), device="cpu", dtype="bf16")
    assert h.fixmod.head.weight.dtype == torch.bfloat16
    # a file without FixMod loads as before
    assert load_model(save_model(build_model(tiny_pix.config), tmp_path / "plain.safetensors"), device="cpu").fixmod is None
    m.attach_fixmod(None)
    assert "fixmod.head.weight" not in m.state_dict()


@pytest.mark.parametrize("make", [tiny_gendr_config, tiny_dfosd_config])
def test_fixmod_on_latent_kinds(tmp_path, make):
    m = with_fixmod(build_model(make()))
    loaded = load_model(save_model(m, tmp_path / "m.safetensors"), device="cpu", dtype="fp32")
    assert loaded.kind == m.kind and torch.equal(loaded.fixmod.head.weight, m.fixmod.head.weight)


def test_fixmod_file_errors_name_file_and_keys(tmp_path, tiny_pix):
    from gendr_core.checkpoint import FIXMOD_CONFIG_KEY, FIXMOD_PREFIX, load_state_dict

    m = with_fixmod(tiny_pix)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    meta = {"format": "pt", KIND_KEY: "gendr_pix", CONFIG_KEY: m.config.to_json(),
            FIXMOD_CONFIG_KEY: m.fixmod.config.to_json()}
    bad = tmp_path / "bad.safetensors"
    # FixMod tensors but no FixMod config
    safetensors.torch.save_file(sd, bad, metadata={k: v for k, v in meta.items() if k != FIXMOD_CONFIG_KEY})
    with pytest.raises(CheckpointFormatError, match=r"bad.safetensors: tensor\(s\) \['fixmod\..*belong to a learned "
                                                    r"FixMod but the metadata has no 'gendr_pix.fixmod_config'"):
        load_model(bad)
    # FixMod config but its tensors missing
    safetensors.torch.save_file({k: v for k, v in sd.items() if not k.startswith(FIXMOD_PREFIX)}, bad, metadata=meta)
    with pytest.raises(CheckpointFormatError, match=r"bad.safetensors: missing tensor\(s\) \['fixmod\."):
        load_model(bad)
    # a FixMod config that does not parse
    safetensors.torch.save_file(sd, bad, metadata={**meta, FIXMOD_CONFIG_KEY: '{"width": 3}'})
    with pytest.raises(CheckpointFormatError, match=r"bad.safetensors: 'gendr_pix.fixmod_config': unknown key\(s\) "
                                                    r"\['width'\]"):
        load_model(bad)
    # a FixMod tensor of the wrong shape, and a stray tensor next to a valid FixMod
    safetensors.torch.save_file({**sd, "fixmod.head.bias": torch.zeros(5)}, bad, metadata=meta)
    with pytest.raises(CheckpointFormatError, match=r"'fixmod.head.bias' has shape \(5,\), expected \(12,\)"):
        load_model(bad)
    safetensors.torch.save_file({**sd, "fixmod.extra": torch.zeros(1)}, bad, metadata=meta)
    with pytest.raises(CheckpointFormatError, match=r"unexpected tensor\(s\) \['fixmod.extra'\]"):
        load_model(bad)
    # readers of the restorer alone (e.g. a trainer's init_from) are told how, and can skip the FixMod
    good = save_model(m, tmp_path / "good.safetensors")
    plain = {k: v.shape for k, v in build_model(m.config).state_dict().items()}
    with pytest.raises(CheckpointFormatError, match=r"skip_prefixes=\('fixmod.',\)"):
        load_state_dict(good, plain)
    restorer = load_state_dict(good, plain, skip_prefixes=(FIXMOD_PREFIX,))
    assert restorer.keys() == plain.keys() and torch.equal(restorer["prompt_pos"], m.prompt_pos)
    with pytest.raises(ValueError, match=r"metadata keys \['gendr_pix.fixmod_config'\] are written from the model"):
        save_model(m, tmp_path / "x.safetensors", metadata={FIXMOD_CONFIG_KEY: "{}"})


def test_describe_fixmod(tiny_pix):
    assert describe(tiny_pix)["fixmod"] is None
    m = with_fixmod(tiny_pix)
    d = describe(m)
    assert d["fixmod"] == {"parameters": 2_524, "config": json.loads(m.fixmod.config.to_json())}
    assert d["parameters"] == sum(p.numel() for p in m.parameters())  # restorer + FixMod


def test_shipped_models_are_one_tuple():
    from gendr_core import checkpoint

    assert checkpoint.DEFAULT_MODEL == checkpoint.SHIPPED_MODELS[0]
    assert checkpoint.FIDELITY_MODEL in checkpoint.SHIPPED_MODELS
    assert list(checkpoint.BUILTIN_MODELS) == list(checkpoint.SHIPPED_MODELS)
    assert all(p == checkpoint.ASSETS_DIR / f"{n}.safetensors" for n, p in checkpoint.BUILTIN_MODELS.items())
    assert checkpoint.resolve_model_path(None) == checkpoint.BUILTIN_MODELS[checkpoint.DEFAULT_MODEL] or \
        not checkpoint.BUILTIN_MODELS[checkpoint.DEFAULT_MODEL].exists()


def test_raw_sd21_file_is_named_a_training_base(tmp_path, capsys):
    from gendr_core.cli import main as cli_main

    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
          "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)}
    ckpt = tmp_path / "v2-1_512-ema-pruned.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, ckpt)  # the Lightning layout of the released .ckpt
    raw = tmp_path / "v2-1_768-ema-pruned.safetensors"
    safetensors.torch.save_file(sd, raw)
    for path in (raw, ckpt):
        for load in (read_header, load_model):
            with pytest.raises(CheckpointFormatError, match=rf"^{re.escape(str(path))}: is a Stable Diffusion "
                               r"single-file checkpoint \(LDM keys\), a training base, not a restorer; train "
                               r"restorers from it with `python -m trainers\.recipe"):
                load(path)
    img = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(img)
    assert cli_main(["upscale", str(img), "-o", str(tmp_path / "out.png"), "--model", str(raw), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "training base, not a restorer" in err and "trainers.recipe" in err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_cpu_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, caplog, native):
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert default_dtype(cpu) == (torch.bfloat16 if native else torch.float32)
    assert warn_slow_dtype(cpu, torch.float32) is None
    slow_bf16 = warn_slow_dtype(cpu, torch.bfloat16)
    assert (slow_bf16 is None) == native
    line = warn_slow_dtype(cpu, torch.float16)
    assert line is not None and "float16" in line and "emulated" in line
    assert warn_slow_dtype(torch.device("cuda"), torch.float16) is None


def test_cpu_bf16_probe_matches_torch():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert checkpoint.cpu_has_native_bf16() == expected


def test_physical_cores_counts_distinct_core_ids_per_package():
    smt = "".join(f"processor : {i}\nphysical id : {i // 4}\ncore id : {(i % 4) // 2}\n\n" for i in range(8))
    assert checkpoint.physical_cores(smt) == 4  # 2 packages x 2 cores x 2 hyper-threads
    assert checkpoint.physical_cores("processor : 0\n") is None


def test_default_threads_is_physical_cores_within_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.setattr(checkpoint, "physical_cores", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert checkpoint.default_threads() == 3  # a container / taskset limit of 3 CPUs
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert checkpoint.default_threads() == 8  # 16 logical CPUs, 8 physical cores
    monkeypatch.setattr(checkpoint, "physical_cores", lambda: None)
    assert checkpoint.default_threads() == 16
