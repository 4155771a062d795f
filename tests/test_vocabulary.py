"""One name per concept: node inputs, `gendr-pix upscale` flags, upscale() keywords and README agree."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stub  # noqa: E402

from gendr_core.cli import build_parser, main  # noqa: E402
from gendr_core.pipeline import TILING, VOCABULARY, upscale  # noqa: E402

NODES_WITH_OPTIONS = ("GenDRPixPadCFGSampler", "GenDRPixRandPad")
# inputs that are data, not options: the CLI reads them from its INPUT files (alpha = the mask)
DATA_INPUTS = {"image", "model", "mask"}
DEPRECATED_FLAGS = {"--tile", "--overlap", "--randpad", "--ensemble"}
UPSCALE_ONLY = {"scale", "guidance", "fixmod", "tiling", "tile_size"}  # named upscale() parameters or tiling keys


def upscale_flags() -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices["upscale"]
    return {opt: action for action in parser._actions for opt in action.option_strings}


@pytest.fixture(scope="module")
def node_options():
    pack = comfy_stub.load_pack()
    nodes = {c.GET_SCHEMA().node_id: c for c in pack.nodes.NODES}
    return {nid: [i.id for i in nodes[nid].GET_SCHEMA().inputs if i.id not in DATA_INPUTS]
            for nid in NODES_WITH_OPTIONS}


def test_every_node_option_is_a_cli_flag_and_an_upscale_keyword(node_options):
    flags = upscale_flags()
    keywords = set(inspect.signature(upscale).parameters) | set(VOCABULARY) | UPSCALE_ONLY
    for node_id, names in node_options.items():
        for name in names:
            assert f"--{name.replace('_', '-')}" in flags, f"{node_id}.{name} has no CLI flag"
            assert name in keywords, f"{node_id}.{name} is not an upscale() keyword"
    assert flags["--tiling"].choices == TILING


def test_every_cli_option_flag_is_a_node_input_or_a_cli_only_flag(node_options):
    node_names = {n for names in node_options.values() for n in names}
    cli_only = {"--output", "--model", "--device", "--dtype", "--threads", "--format", "--overwrite", "--skip-existing",
                "--quiet", "--color-fix",
                "--help"}
    for flag in upscale_flags():
        if not flag.startswith("--") or flag in DEPRECATED_FLAGS | cli_only:
            continue
        assert flag[2:].replace("-", "_") in node_names, f"{flag} is named differently from every node input"


def test_readme_names_each_flag_once_under_its_new_name():
    readme = (comfy_stub.REPO / "README.md").read_text()
    for flag in ("--tiling", "--tile-size", "--tile-overlap", "--positive-pad", "--negative-pad", "--passes",
                 "--flips", "--positive", "--negative"):
        assert flag in readme, flag
    usage = readme.split("## Command line", 1)[1].split("gendr-pix upscale", 1)[1].split("gendr-pix inspect", 1)[0]
    for old in ("--randpad", "--ensemble", "--overlap"):
        assert old not in usage.replace("--tile-overlap", ""), f"the upscale usage still shows {old}"


@pytest.fixture
def model_file(tmp_path, tiny_pix):
    from gendr_core import save_model

    return str(save_model(tiny_pix, tmp_path / "tiny.safetensors"))


def test_deprecated_flags_give_the_same_image_as_the_new_ones(tmp_path, model_file, capsys):
    import numpy as np

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src)
    run = lambda out, *flags: main(["upscale", str(src), "-o", str(tmp_path / out), "--model", model_file,  # noqa: E731
                                    "--scale", "2", "-q", *flags])
    assert run("new.png", "--tiling", "fixed", "--tile-size", "32", "--tile-overlap", "16", "--passes", "2",
               "--flips", "2", "--seed", "3") == 0
    capsys.readouterr()
    assert run("old.png", "--tile", "32", "--overlap", "16", "--randpad", "2", "--ensemble", "2", "--seed", "3") == 0
    err = capsys.readouterr().err
    assert "--tile is deprecated; use --tiling/--tile-size" in err and "--randpad is deprecated" in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "new.png")), np.asarray(Image.open(tmp_path / "old.png")))
    assert run("both.png", "--tile-overlap", "8", "--overlap", "8") == 2
    assert "give --tile-overlap or the deprecated --overlap, not both" in capsys.readouterr().err


def test_cli_pads_and_embedding_files_match_the_library(tmp_path, model_file, tiny_pix, capsys):
    import numpy as np
    from safetensors.torch import save_file

    from gendr_core import load_model

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src)
    d = tiny_pix.config.unet.cross_attention_dim
    emb = torch.randn(5, d, generator=torch.Generator().manual_seed(2))
    save_file({"embedding": emb}, str(tmp_path / "pos.safetensors"))
    out = tmp_path / "o.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", model_file, "--scale", "2", "-q", "--guidance", "1.5",
                 "--positive-pad", "2,6,2,6", "--negative-pad", "1 7 0 8", "--positive",
                 str(tmp_path / "pos.safetensors")]) == 0
    lib = upscale(Image.open(src), load_model(model_file), scale=2, guidance=1.5, positive_pad=(2, 6, 2, 6),
                  negative_pad=(1, 7, 0, 8), positive=emb[None])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(lib))
    save_file({"a": emb, "b": emb.clone()}, str(tmp_path / "two.safetensors"))
    rc = main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", model_file, "-q", "--negative",
               str(tmp_path / "two.safetensors")])
    assert rc == 2 and "2 tensors (a, b); name the embedding 'embedding'" in capsys.readouterr().err
    save_file({"embedding": torch.zeros(3, d + 1)}, str(tmp_path / "wide.safetensors"))
    rc = main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", model_file, "-q", "--positive",
               str(tmp_path / "wide.safetensors")])
    assert rc == 2 and f"cross_attention_dim is {d}" in capsys.readouterr().err
