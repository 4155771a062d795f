"""The one-command recipe (trainers/recipe.py): every stage at tiny scale, wired, resumable, exported
as files that `gendr-pix upscale --model` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from gendr_core.checkpoint import read_header  # noqa: E402
from gendr_core.cli import main as cli_main  # noqa: E402
from gendr_core.errors import ConfigError  # noqa: E402
from gendr_core.imageio import load_image  # noqa: E402
from trainers import recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainers" / "configs"
FIXTURES = REPO / "tests" / "fixtures"


def test_recipe_configs_parse_and_wire_the_stages(tmp_path):
    rc = recipe.load_recipe(CONFIGS / "recipe_paper.json")
    assert rc.mixed_precision == "bf16"
    for stage in recipe.STAGES:
        assert Path(getattr(rc, stage)).is_file() and Path(getattr(rc, stage)).parent == CONFIGS, stage
    ov = recipe.stage_overrides(rc, "stage2", tmp_path)
    done = recipe.stage_outputs(tmp_path)
    assert ov["init_from"] == ov["disc_backbone"] == str(done["stage1"]) and ov["teacher"] == str(done["cida"])
    assert recipe.stage_overrides(rc, "cida", tmp_path)["score_base"] == str(done["vae16_base"])
    from trainers import train_dfosd, train_gendr, train_stage1, train_stage2

    cida = train_gendr.load_config(rc.cida, recipe.stage_overrides(rc, "cida", tmp_path))
    assert (cida.lora.rank, cida.lora.alpha, cida.data.batch_size, cida.data.crop_size) == (64, 128.0, 1024, 512)
    assert (cida.optim.lr, cida.optim.max_steps, cida.mixed_precision) == (1e-5, 50000, "bf16")
    base = train_gendr.load_config(rc.vae16_base)
    assert (base.data.batch_size, base.optim.max_steps, base.repa.weight) == (2048, 100000, 0.1)
    s1 = train_stage1.load_config(rc.stage1, recipe.stage_overrides(rc, "stage1", tmp_path))
    assert (s1.data.batch_size, s1.data.crop_size, s1.optim.lr, s1.loss.adversarial) == (512, 512, 1e-5, 0.05)
    s2 = train_stage2.load_config(rc.stage2, recipe.stage_overrides(rc, "stage2", tmp_path))
    assert (s2.loss.adversarial, s2.loss.perceptual, s2.loss.mfs, s2.data.batch_size) == (0.05, 1.0, 0.1, 512)
    df = train_dfosd.load_config(rc.dfosd, recipe.stage_overrides(rc, "dfosd", tmp_path))
    assert (df.lora.rank, df.lora.alpha, df.optim.lr, df.data.batch_size, df.optim.max_steps) == (
        16, 16.0, 5e-5, 16, 100000)
    (tmp_path / "r.json").write_text(json.dumps({"stage1": ""}))
    with pytest.raises(ConfigError, match="'stage1' must name that stage's training config"):
        recipe.load_recipe(tmp_path / "r.json")


def test_tiny_recipe_end_to_end_resumable_and_exported(tmp_path):
    out = tmp_path / "run"
    exports = _run_tiny(out)
    for stage in recipe.STAGES:
        recs = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == [1, 2], stage
        assert all({"step", "loss", "world_size"} <= set(r) and r["world_size"] == 1 for r in recs), stage
    assert set(exports) == {"teacher", "dfosd", "gendr_pix"}
    kinds = {k: read_header(p)[0] for k, p in exports.items()}
    assert kinds == {"teacher": "gendr", "dfosd": "dfosd", "gendr_pix": "gendr_pix"}
    assert "gendr_pix.fixmod_config" in read_header(exports["gendr_pix"])[2]  # FixMod rides in the GenDR-Pix file
    stamps = {s: p.stat().st_mtime_ns for s, p in recipe.stage_outputs(out).items()}
    _run_tiny(out)  # every stage is done: nothing retrains
    assert stamps == {s: p.stat().st_mtime_ns for s, p in recipe.stage_outputs(out).items()}
    for kind, path in exports.items():  # the CLI restores an image with each exported kind
        dst = tmp_path / f"{kind}.png"
        assert cli_main(["upscale", str(FIXTURES / "kodim19_gray64.png"), "-o", str(dst), "--model", str(path),
                         "--device", "cpu"]) == 0
        img, _, _ = load_image(dst)
        assert img.shape[-2:] == (256, 256), kind


def _run_tiny(out: Path) -> dict[str, Path]:
    over = out.parent / "recipe_tiny_2steps.json"
    over.write_text(json.dumps({"base": str(CONFIGS / "recipe_tiny.json"), "max_steps": 2, "save_every": 1,
                                "threads": 1}))
    return recipe.run_recipe(over, out)
