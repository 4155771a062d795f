"""Tiny-config training: the loss goes down, checkpoints resume, export loads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from gendr_core import load_model  # noqa: E402
from gendr_core.errors import ConfigError  # noqa: E402
from trainers.export import export  # noqa: E402
from trainers.loop import JsonlLog, latest_checkpoint, loss_axis_scale  # noqa: E402
from trainers.train_pixel import LossConfig, gaussian_blur, load_config, lr_at, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainers" / "configs" / "tiny_cpu.json"


def _cfg(tmp_path, **over):
    base = {"output_dir": str(tmp_path / "run"), "data.train_dirs": [str(REPO / "tests" / "fixtures")],
            "data.val_dirs": [str(REPO / "tests" / "fixtures")], "threads": 1}
    base.update(over)
    return load_config(TINY, base)


def test_config_file_parses_into_dataclasses_and_rejects_typos(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.model.pad_multiple == 16 and cfg.data.crop_size == 48
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"optim": {"learning_rate": 1}}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]"):
        load_config(bad)


def test_config_base_merges_sections_and_names_bad_bases(tmp_path):
    from gendr_core.errors import ConfigError

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.json").write_text(json.dumps({"seed": 3, "data": {"crop_size": 64, "batch_size": 2,
                                                                      "scales": [2, 4]}, "output_dir": "runs/a"}))
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"base": "../a.json", "data": {"batch_size": 5,
                                                                                        "scales": [4]}}))
    b = load_config(tmp_path / "sub" / "b.json")
    # nested keys merge (crop_size kept), lists and scalars replace, untouched sections come from the base
    assert (b.seed, b.data.crop_size, b.data.batch_size, b.data.scales, b.output_dir) == (3, 64, 5, (4,), "runs/a")
    (tmp_path / "c.json").write_text(json.dumps({"base": "missing.json"}))
    with pytest.raises(FileNotFoundError, match=r"missing\.json.*'base' of .*c\.json"):
        load_config(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({"base": "e.json"}))
    (tmp_path / "e.json").write_text(json.dumps({"base": "d.json"}))
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "d.json")


def test_lr_schedule_and_blur():
    from trainers.train_pixel import OptimConfig

    o = OptimConfig(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, o) == pytest.approx(0.1) and lr_at(10, o) == pytest.approx(1.0)
    assert lr_at(110, o) == pytest.approx(0.1) and lr_at(60, o) == pytest.approx(0.55)
    x = torch.zeros(1, 1, 21, 21)
    x[..., 10, 10] = 1
    y = gaussian_blur(x, torch.tensor([1.0]))
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert y[0, 0, 10, 10].item() == pytest.approx(1 / (2 * torch.pi), rel=2e-2)


def test_tiny_training_loss_decreases_and_exports(tmp_path):
    # the paper's alpha = beta = 0.5 without zero-init starts far from the target, so 30
    # steps must cut the loss clearly (the shipped residual setting starts near bicubic)
    cfg = _cfg(tmp_path, **{"optim.max_steps": 30, "model.alpha": 0.5, "model.beta": 0.5,
                            "zero_init_out": False, "loss.neg_start_step": 20})
    out = train(cfg, resume=False)
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    l1 = [r["loss_l1"] for r in recs if r["kind"] == "train"]
    assert len(l1) == 30
    first, last = sum(l1[:5]) / 5, sum(l1[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert any("loss_adv_g" in r for r in recs)  # the adversarial branch ran
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [("loss_neg_l1" in r) for r in train_recs] == [r["step"] > 20 for r in train_recs]  # neg_start_step
    assert any(r["kind"] == "val" for r in recs) and (out / "curves.png").is_file()
    model_path = export(out, tmp_path / "tiny.safetensors")
    m = load_model(model_path, device="cpu")
    assert m.config == cfg.model and m.metadata["gendr_pix.train_step"] == "30"


@pytest.mark.parametrize(("term", "weight"), [("mse", 2.0), ("psnr", 1.0), ("psnr_y", 1.0)])
def test_psnr_oriented_objectives_log_only_their_term(tmp_path, term, weight):
    cfg = _cfg(tmp_path, **{"optim.max_steps": 3, "loss.l1": 0.0, f"loss.{term}": weight, "loss.adversarial": 0.0,
                            "loss.mfs": 0.0, "val_every": 3, "save_every": 100})
    out = train(cfg, resume=False)
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"train"' in line]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert "loss_l1" not in r and not any(k.startswith("loss_adv") for k in r)
        # the total is exactly the weighted term (negative samples only train prompt_neg)
        assert r["loss"] == pytest.approx(r[f"loss_{term}"], rel=1e-6)
        if term == "mse":
            assert 0 < r["loss_mse"] < 2.0
        else:  # -PSNR in dB of an image pair in [0, 1]: between -100 (eps cap) and 0
            assert -100 < r[f"loss_{term}"] < 0
    assert (out / "curves.png").is_file()
    assert loss_axis_scale(recs) == ("log" if term == "mse" else "symlog")  # -PSNR is negative


def test_loss_weights_are_checked():
    with pytest.raises(ConfigError, match="mse"):
        LossConfig(mse=-1.0)
    with pytest.raises(ConfigError, match="psnr_y"):
        LossConfig(psnr_y=-0.5)
    with pytest.raises(ConfigError, match="all loss weights are 0"):
        LossConfig(l1=0.0, adversarial=0.0, perceptual=0.0, mfs=0.0)


def test_resume_after_kill_loses_at_most_one_interval_and_continues_the_same_curve(tmp_path):
    """SIGKILL a run, restart it: it resumes from its last checkpoint and its loss curve (every
    term) and final weights equal those of an uninterrupted run, step for step, bit for bit."""
    cfg_path = tmp_path / "cfg.json"
    data = json.loads(TINY.read_text())
    data.update(output_dir=str(tmp_path / "run"), threads=1, save_every=3, val_every=0, log_every=1)
    data["data"].update(train_dirs=[str(REPO / "tests" / "fixtures")], val_dirs=[])
    data["optim"]["max_steps"] = 400
    cfg_path.write_text(json.dumps(data))
    cmd = [sys.executable, "-m", "trainers.train_pixel", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            ck = latest_checkpoint(tmp_path / "run")
            if ck is not None and int(ck.name.split("_")[1]) >= 6:
                break
            time.sleep(0.2)
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    ck = latest_checkpoint(tmp_path / "run")
    assert ck is not None
    saved = int(ck.name.split("_")[1])
    logged = max(r["step"] for r in JsonlLog(tmp_path / "run" / "train_log.jsonl").read())  # a torn last line is skipped
    assert logged - saved <= 3 + 1  # lost at most one checkpoint interval (+ the step in flight)
    # resume and run 3 more steps: continues from the saved step
    cfg = load_config(cfg_path)
    train(cfg, resume=True, stop_after=3)
    recs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs]
    assert steps == list(range(1, saved + 4))  # no gap, no duplicate after truncation
    assert latest_checkpoint(tmp_path / "run").name == f"step_{saved + 3:07d}"
    # the same config uninterrupted: the same curve, exactly (data order, RNG, optimiser, EMA, LR)
    straight = train(load_config(cfg_path, {"output_dir": str(tmp_path / "straight")}), resume=False,
                     stop_after=saved + 3)
    killed, whole = JsonlLog(tmp_path / "run" / "metrics.jsonl").read(), JsonlLog(straight / "metrics.jsonl").read()
    assert [r["step"] for r in killed] == [r["step"] for r in whole] == list(range(1, saved + 4))
    for a, b in zip(killed, whole, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("loss")} == {k: v for k, v in b.items() if k.startswith("loss")}
    ck_a, ck_b = latest_checkpoint(tmp_path / "run"), latest_checkpoint(straight)
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        ta, tb = load_file(str(ck_a / name)), load_file(str(ck_b / name))
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_half_written_checkpoints_and_torn_log_lines_are_never_picked_up(tmp_path):
    """What a SIGKILL can leave behind: a checkpoint folder not yet renamed from .tmp (its files
    complete), one without train_state.json, a log line cut off mid-write."""
    root = tmp_path / "checkpoints"
    for name, complete in (("step_0000003", True), ("step_0000006.tmp", True), ("step_0000009", False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "train_state.json").write_text(json.dumps({"step": int(name[5:12])}))
    assert latest_checkpoint(tmp_path).name == "step_0000003"
    log = JsonlLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.5})
    with log.path.open("a") as f:
        f.write('{"step": 4, "lo')  # killed during the write
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    log.truncate_after(2)
    assert log.read() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "metrics.jsonl"]  # no temp file left


def test_shipped_recipe_configs_parse_and_polish_differs_only_where_documented():
    """gendr_pix_s.json (steps 0-6000) and gendr_pix_s_polish.json (resumes to 7600) per MODEL_CARD.md."""
    main_cfg = load_config(REPO / "trainers" / "configs" / "gendr_pix_s.json")
    polish = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_polish.json")
    assert main_cfg.output_dir == polish.output_dir == "runs/gendr_pix_s"
    assert (main_cfg.optim.max_steps, polish.optim.max_steps) == (6000, 7600)
    assert (main_cfg.loss.adversarial, polish.loss.adversarial) == (0.005, 0.0)
    assert dataclasses.replace(polish, optim=main_cfg.optim, loss=main_cfg.loss) == main_cfg
    assert dataclasses.replace(polish.optim, max_steps=6000) == main_cfg.optim
    assert dataclasses.replace(polish.loss, adversarial=0.005) == main_cfg.loss


def test_stage2_recipe_config_restarts_from_the_v2_export_with_its_own_schedule():
    """gendr_pix_s_stage2.json: a fresh L1 cosine run initialised from the step-7600 export."""
    polish = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_polish.json")
    stage2 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage2.json")
    assert stage2.init_from == "runs/gendr-pix-s-v2.safetensors"
    assert stage2.output_dir == "runs/gendr_pix_s_v3" != polish.output_dir  # no resume into the old run
    assert (stage2.optim.lr, stage2.optim.warmup_steps, stage2.optim.max_steps) == (5e-4, 200, 8000)
    assert (stage2.loss.adversarial, stage2.loss.neg_start_step, stage2.loss.neg_fraction) == (0.0, 6800, 0.25)
    # model, data and degradation are the shipped recipe's, so the v2 weights load into it
    assert (stage2.model, stage2.data, stage2.degradation) == (polish.model, polish.data, polish.degradation)


def test_stage3_recipe_config_restarts_from_the_v3_export_with_larger_crops():
    """gendr_pix_s_stage3.json: L1 restart from the v3 export on 288-px crops, batch 3 (MODEL_CARD.md)."""
    stage2 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage2.json")
    stage3 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage3.json")
    assert stage3.init_from == "runs/gendr-pix-s-v3.safetensors"
    assert stage3.output_dir == "runs/gendr_pix_s_v4" != stage2.output_dir
    assert (stage3.data.crop_size, stage3.data.batch_size) == (288, 3)
    assert stage3.data.crop_size % 12 == 0 and stage3.data.crop_size % stage3.model.pad_multiple == 0
    assert (stage3.optim.lr, stage3.optim.warmup_steps, stage3.optim.max_steps) == (3e-4, 100, 6000)
    assert (stage3.loss.adversarial, stage3.loss.neg_start_step, stage3.loss.neg_fraction) == (0.0, 5200, 0.34)
    assert stage3.model == stage2.model and stage3.degradation == stage2.degradation
    assert dataclasses.replace(stage3.data, crop_size=192, batch_size=4) == stage2.data


def test_stage4_recipe_config_fine_tunes_v4_with_mse_at_x4():
    """gendr_pix_s_stage4.json: MSE-only x4 fine-tune of the v4 export (MODEL_CARD.md, stage 4)."""
    stage3 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage3.json")
    stage4 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage4.json")
    assert stage4.init_from == "runs/gendr-pix-s-v4.safetensors" and stage4.output_dir == "runs/gendr_pix_s_v5"
    assert stage4.data.scales == (4,) and stage4.degradation.scales == (4,)
    assert (stage4.loss.l1, stage4.loss.mse, stage4.loss.neg_start_step) == (0.0, 1.0, 4400)
    assert (stage4.optim.lr, stage4.optim.warmup_steps, stage4.optim.max_steps) == (2e-4, 100, 5000)
    assert stage4.model == stage3.model and stage4.val_every == 500
    assert dataclasses.replace(stage4.data, scales=stage3.data.scales) == stage3.data
    assert dataclasses.replace(stage4.degradation, scales=stage3.degradation.scales) == stage3.degradation


def test_stage5_recipe_config_fine_tunes_the_stage4_step1000_export_with_the_psnr_loss():
    """gendr_pix_s_stage5.json: per-sample -PSNR loss from the stage-4 step-1000 export (MODEL_CARD.md)."""
    stage4 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage4.json")
    stage5 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage5.json")
    assert stage5.init_from == "runs/v5_s1000.safetensors" and stage5.output_dir == "runs/gendr_pix_s_v6"
    assert (stage5.loss.l1, stage5.loss.mse, stage5.loss.psnr, stage5.loss.neg_start_step) == (0.0, 0.0, 1.0, 2000)
    assert (stage5.optim.lr, stage5.optim.warmup_steps, stage5.optim.max_steps) == (1e-4, 50, 2500)
    assert stage5.model == stage4.model and stage5.data == stage4.data and stage5.degradation == stage4.degradation


def test_stage6_recipe_config_continues_the_psnr_loss_at_x2_to_x4():
    """gendr_pix_s_stage6.json (stopped, not shipped): -PSNR loss from the v6 export at the x2-x4 scale mix."""
    first = load_config(REPO / "trainers" / "configs" / "gendr_pix_s.json")
    stage5 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage5.json")
    stage6 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage6.json")
    assert stage6.init_from == "runs/gendr-pix-s-v6.safetensors" and stage6.output_dir == "runs/gendr_pix_s_v7"
    assert stage6.data.scales == stage6.degradation.scales == first.data.scales == (2, 3, 4, 4, 4, 4)
    assert (stage6.loss.psnr, stage6.loss.neg_start_step, stage6.optim.max_steps) == (1.0, 3500, 5000)
    assert dataclasses.replace(stage6.degradation, scales=(4,)) == stage5.degradation
    assert stage6.model == stage5.model


def test_stage7_recipe_config_fine_tunes_v6_with_the_luma_psnr_loss():
    """gendr_pix_s_stage7.json: -PSNR-Y (+ 0.25 x RGB -PSNR) from the v6 export at x4 (MODEL_CARD.md)."""
    stage5 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage5.json")
    stage7 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage7.json")
    assert stage7.init_from == "runs/gendr-pix-s-v6.safetensors" and stage7.output_dir == "runs/gendr_pix_s_stage7"
    assert (stage7.loss.l1, stage7.loss.mse, stage7.loss.psnr, stage7.loss.psnr_y) == (0.0, 0.0, 0.25, 1.0)
    assert (stage7.loss.neg_start_step, stage7.optim.lr, stage7.optim.max_steps) == (2000, 1e-4, 3500)
    assert stage7.model == stage5.model and stage7.data == stage5.data and stage7.degradation == stage5.degradation


def test_stage8_recipe_config_continues_stage7_on_384px_crops():
    """gendr_pix_s_stage8.json: stage 7's losses from the v7 export on 384-px crops, batch 2 (MODEL_CARD.md)."""
    stage7 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage7.json")
    stage8 = load_config(REPO / "trainers" / "configs" / "gendr_pix_s_stage8.json")
    assert stage8.init_from == "runs/gendr-pix-s-v7.safetensors" and stage8.output_dir == "runs/gendr_pix_s_stage8"
    assert (stage8.data.crop_size, stage8.data.batch_size) == (384, 2)
    assert dataclasses.replace(stage8.data, crop_size=288, batch_size=3) == stage7.data
    assert dataclasses.replace(stage8.loss, neg_start_step=2000) == stage7.loss
    assert (stage8.loss.neg_start_step, stage8.optim.lr, stage8.optim.max_steps) == (4000, 1e-4, 6000)
    assert stage8.model == stage7.model and stage8.degradation == stage7.degradation


def test_shared_lr_schedulers_warm_up_hold_and_resume():
    from trainers.loop import OptimConfig, make_scheduler, make_schedulers

    o = OptimConfig(lr=1e-3, disc_lr=2e-3, warmup_steps=4, schedule="constant", max_steps=10)

    def sgd(lr):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)

    def run(opt, sched, n):  # the LR each of n optimiser steps uses
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    opt = sgd(1e-3)
    sched = make_scheduler(opt, o)
    assert run(opt, sched, 2) == pytest.approx([2.5e-4, 5e-4])  # linear warm-up: (step + 1) / 4
    resumed = sgd(1e-3)
    resumed.load_state_dict(opt.state_dict())  # the saved LR is mid-warm-up; the base LR is kept
    assert run(resumed, make_scheduler(resumed, o, 2), 4) == pytest.approx([7.5e-4, 1e-3, 1e-3, 1e-3])
    assert run(opt, sched, 4) == pytest.approx([7.5e-4, 1e-3, 1e-3, 1e-3])  # the same as without the break
    opt_g, opt_d = sgd(o.lr), sgd(o.disc_lr)
    make_schedulers(opt_g, opt_d, o, step=3, d_start=2)  # D has had 1 step of its own schedule
    assert (opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]) == pytest.approx((1e-3, 1e-3))


def test_stop_step_and_adamw_pair_of_the_shared_loop():
    from trainers.loop import OptimConfig, adamw_pair, stop_step

    assert stop_step(0, 3000, None) == 3000 and stop_step(1000, 3000, 250) == 1250 and stop_step(2900, 3000, 250) == 3000
    g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    o = OptimConfig(lr=1e-4, disc_lr=3e-4, betas=(0.9, 0.99), weight_decay=0.01)
    opt_g, opt_d = adamw_pair(g.parameters(), d.parameters(), o)
    assert [(x["lr"], x["betas"], x["weight_decay"]) for x in opt_g.param_groups] == [(1e-4, (0.9, 0.99), 0.01)]
    assert [(x["lr"], x["betas"], x["weight_decay"]) for x in opt_d.param_groups] == [(3e-4, (0.9, 0.99), 0.01)]
    assert sum(p.numel() for p in opt_d.param_groups[0]["params"]) == 3
