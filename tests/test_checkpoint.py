from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from gendr_core import load_model, read_header, save_model
from gendr_core.checkpoint import CONFIG_KEY, KIND_KEY, describe, parse_dtype
from gendr_core.config import tiny_dfosd_config, tiny_gendr_config
from gendr_core.errors import CheckpointFormatError
from gendr_core.models import build_model


def test_save_load_round_trip_identical(tmp_path, tiny_pix):
    p = save_model(tiny_pix, tmp_path / "m.safetensors")
    kind, cfg, meta = read_header(p)
    assert kind == "gendr_pix" and cfg == tiny_pix.config and meta["format"] == "pt"
    loaded = load_model(p, device="cpu")
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
    assert m.dtype == torch.float32  # CPU default dtype
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
