"""Distributed training on the CPU (gloo): ``torchrun --nproc_per_node 2`` trains as one process
with the same global batch does, every rank on its own slice of it; only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from gendr_core.checkpoint import save_model  # noqa: E402
from gendr_core.config import tiny_gendr_pix_config  # noqa: E402
from gendr_core.errors import ConfigError  # noqa: E402
from gendr_core.models import GenDRPix  # noqa: E402
from trainers import train_pixel, train_stage2  # noqa: E402
from trainers.loop import BatchShard, JsonlLog, StepBatchSampler, latest_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainers" / "configs"
FIXTURES = REPO / "tests" / "fixtures"
STEPS = 20
# A small LR for the comparisons: float rounding differs with the batch split (convolutions over 2 vs 4
# items, the gradient all-reduce), and Adam's first steps are nearly sign(gradient), so an element whose
# gradient is rounding noise moves by a full LR. At tiny_cpu.json's LR 2e-3 that alone grows the 1- vs 2-pass
# loss difference from 5e-7 (step 1) to 1e-3 (step 4) (measured, gradient accumulation 2 vs 1 pass).
LR = 1e-5


def _launch(launcher: str, module: str, config: Path, out: Path, nproc: int = 2) -> str:
    """Run ``module`` with ``nproc`` CPU processes (gloo) under ``torchrun`` or ``accelerate launch
    --multi_gpu`` (accelerate's torchrun launcher); returns its output."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cmd += ["-m", module, "--config", str(config), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def _metrics(out: Path) -> list[dict]:
    return JsonlLog(out / "metrics.jsonl").read()


def _assert_same_run(one: Path, two: Path, global_batch: int) -> None:
    """2 processes vs 1: the same steps, losses to fp32 tolerance, the world's items = the 1-process
    batch, split into disjoint rank slices; one writer; final EMA weights equal to fp32 tolerance."""
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == list(range(1, STEPS + 1))  # one line per step
    assert {r["world_size"] for r in m1} == {1} and {r["world_size"] for r in m2} == {2}
    assert [r["samples_seen"] for r in m2] == [global_batch * r["step"] for r in m2]
    for a, b in zip(m1, m2, strict=True):
        assert set(a) == set(b)
        for key in (k for k in a if k == "loss" or k.startswith("loss_")):
            assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key, a[key], b[key])
        (whole,), (r0, r1) = a["rank_indices"], b["rank_indices"]
        assert len(r0) == len(r1) == global_batch // 2 and not set(r0) & set(r1)  # disjoint slices
        assert sorted(r0 + r1) == whole == list(range((a["step"] - 1) * global_batch, a["step"] * global_batch))
    ck1, ck2 = latest_checkpoint(one), latest_checkpoint(two)
    assert ck1.name == ck2.name == f"step_{STEPS:07d}"
    assert sorted(p.name for p in ck2.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    e1, e2 = load_file(str(ck1 / "ema.safetensors")), load_file(str(ck2 / "ema.safetensors"))
    assert set(e1) == set(e2)
    for k in e1:
        torch.testing.assert_close(e2[k], e1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_batch_shards_split_every_global_batch_into_disjoint_slices():
    one = list(StepBatchSampler(6, 2, 5))
    assert one == [list(range(12, 18)), list(range(18, 24)), list(range(24, 30))]  # the 1-process batches
    parts = [list(StepBatchSampler(6, 2, 5, BatchShard(r, 3, 6))) for r in range(3)]
    for step, whole in enumerate(one):
        assert [p[step] for p in parts] == [whole[0:2], whole[2:4], whole[4:6]]
    assert [BatchShard(r, 3, 6).local_count(3) for r in range(3)] == [2, 1, 0]  # the batch's first 3 items
    with pytest.raises(ConfigError, match=r"data.batch_size=5 is the global batch .* use 6"):
        BatchShard(0, 2, 5)
    # DataLoader workers: each batch of a batch sampler goes to one worker, so no item repeats
    dl = torch.utils.data.DataLoader(list(range(40)), batch_sampler=StepBatchSampler(4, 0, 5, BatchShard(1, 2, 4)),
                                     num_workers=2)
    assert [b.tolist() for b in dl] == [[2, 3], [6, 7], [10, 11], [14, 15], [18, 19]]


def _pixel_config(tmp_path: Path) -> Path:
    """tiny_cpu.json, global batch 4, adversarial + MFS terms, negative samples (3 of 4: two on rank 0,
    one on rank 1 of 2), scales 2 and 4 mixed per batch."""
    cfg = tmp_path / "pixel.json"
    cfg.write_text(json.dumps({
        "base": str(CONFIGS / "tiny_cpu.json"), "threads": 1, "val_every": 0, "save_every": STEPS, "log_every": 1,
        "data": {"train_dirs": [str(FIXTURES)], "val_dirs": [], "batch_size": 4},
        "loss": {"neg_fraction": 0.75, "neg_start_step": 0},
        "optim": {"max_steps": STEPS, "lr": LR}}))
    return cfg


def test_pixel_gradient_accumulation_equals_the_whole_batch_in_one_pass(tmp_path):
    """gradient_accumulation_steps=2: two passes of 2 items per step train as one pass of 4."""
    cfg = _pixel_config(tmp_path)
    over = {"optim.max_steps": 4, "save_every": 4}
    one = train_pixel.train(train_pixel.load_config(cfg, {**over, "output_dir": str(tmp_path / "one")}), resume=False)
    two = train_pixel.train(train_pixel.load_config(cfg, {**over, "output_dir": str(tmp_path / "two"),
                                                          "gradient_accumulation_steps": 2}), resume=False)
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3, 4]
    for a, b in zip(m1, m2, strict=True):
        for key in (k for k in a if k == "loss" or k.startswith("loss_")):
            assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key, a[key], b[key])
    with pytest.raises(ConfigError, match=r"multiple of processes x gradient_accumulation_steps = 1 x 3"):
        train_pixel.load_config(cfg, {"gradient_accumulation_steps": 3})


def test_pixel_trainer_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node 2 over 20 steps, global batch 4 (2 per rank); see _pixel_config."""
    cfg = _pixel_config(tmp_path)
    one = train_pixel.train(train_pixel.load_config(cfg, {"output_dir": str(tmp_path / "one")}), resume=False)
    _launch("torchrun", "trainers.train_pixel", cfg, tmp_path / "two")
    _assert_same_run(one, tmp_path / "two", 4)
    assert all("loss_neg_l1" in r and "loss_adv_g" in r for r in _metrics(one))


def _tiny_model_file(cls: type, config, path: Path) -> Path:
    """A seeded ``cls(config)`` with a random positive prompt (not the zero init), saved to ``path``."""
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():
        model.prompt_pos.normal_(0, 0.5)
    return save_model(model, path)


def _stage2_config(tmp_path: Path) -> Path:
    """stage2_tiny_cpu.json (global batch 2, adversarial, feature matching, L1 + MFS) from a tiny student."""
    init = _tiny_model_file(GenDRPix, tiny_gendr_pix_config(), tmp_path / "student.safetensors")
    cfg = tmp_path / "stage2.json"
    cfg.write_text(json.dumps({
        "base": str(CONFIGS / "stage2_tiny_cpu.json"), "init_from": str(init), "val_every": 0,
        "save_every": STEPS, "data": {"train_dirs": [str(FIXTURES)], "val_dirs": []},
        "optim": {"max_steps": STEPS, "lr": LR, "disc_lr": LR}}))
    return cfg


def test_stage2_gradient_accumulation_equals_the_whole_batch_in_one_pass(tmp_path):
    """gradient_accumulation_steps=2 (two passes of 1 item, D step then G step over both) == one pass of 2."""
    cfg = _stage2_config(tmp_path)
    over = {"optim.max_steps": 3, "save_every": 3}
    one = train_stage2.train(train_stage2.load_config(cfg, {**over, "output_dir": str(tmp_path / "one")}),
                             resume=False)
    two = train_stage2.train(train_stage2.load_config(cfg, {**over, "output_dir": str(tmp_path / "two"),
                                                            "gradient_accumulation_steps": 2}), resume=False)
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3]
    for a, b in zip(m1, m2, strict=True):
        assert set(a) == set(b)
        for key in (k for k in a if k == "loss" or k.startswith("loss_")):
            assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key, a[key], b[key])


def test_stage2_trainer_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """Stage II under ``accelerate launch --multi_gpu --num_processes 2`` on the CPU (2 ranks, global batch 2):
    D heads in DDP, per-sample RandPad of the global batch; 20 steps equal a 1-process run."""
    cfg = _stage2_config(tmp_path)
    one = train_stage2.train(train_stage2.load_config(cfg, {"output_dir": str(tmp_path / "one")}), resume=False)
    _launch("accelerate", "trainers.train_stage2", cfg, tmp_path / "two")
    _assert_same_run(one, tmp_path / "two", 2)
    assert all("loss_adv_d" in r and "loss_perceptual" in r for r in _metrics(one))


def test_fixmod_trainer_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """train_fixmod (a learned FixMod on the frozen shipped gendr-pix-s) under torchrun with 2 ranks, global
    batch 2: 20 steps equal a 1-process run, each rank on its own half of every batch."""
    from trainers import train_fixmod

    cfg = tmp_path / "fixmod.json"
    cfg.write_text(json.dumps({
        "base": str(CONFIGS / "fixmod_tiny_cpu.json"), "threads": 1, "val_every": 0, "save_every": STEPS,
        "log_every": 1, "data": {"train_dirs": [str(FIXTURES)], "val_dirs": [], "batch_size": 2},
        "optim": {"max_steps": STEPS, "lr": LR}}))
    train_fixmod.train(train_fixmod.load_config(cfg, {"output_dir": str(tmp_path / "one")}), resume=False)
    _launch("torchrun", "trainers.train_fixmod", cfg, tmp_path / "two")  # train() returns the export file
    _assert_same_run(tmp_path / "one", tmp_path / "two", 2)


def test_stage1_trainer_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """train_stage1 (GenDR-Adc distilled from a frozen tiny teacher, adversarial heads in DDP) under torchrun
    with 2 ranks, global batch 2 (1 per rank): 20 steps equal a 1-process run, each rank on its own half."""
    from gendr_core.config import tiny_gendr_f8_config
    from gendr_core.models import GenDRTeacher
    from trainers import train_stage1

    teacher_file = _tiny_model_file(GenDRTeacher, tiny_gendr_f8_config(), tmp_path / "teacher.safetensors")
    cfg = tmp_path / "stage1.json"
    cfg.write_text(json.dumps({
        "base": str(CONFIGS / "stage1_tiny_cpu.json"), "teacher": str(teacher_file), "save_every": STEPS,
        "data": {"train_dirs": [str(FIXTURES)]},
        "optim": {"max_steps": STEPS, "lr": LR, "disc_lr": LR}}))
    train_stage1.train(train_stage1.load_config(cfg, {"output_dir": str(tmp_path / "one")}), resume=False)
    _launch("torchrun", "trainers.train_stage1", cfg, tmp_path / "two")
    _assert_same_run(tmp_path / "one", tmp_path / "two", 2)
    assert all("loss_adv_g" in r and "adv_d" in r for r in _metrics(tmp_path / "one"))
