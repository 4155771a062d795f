"""The accelerate launch configs in trainers/configs/ (8-GPU DDP, DeepSpeed ZeRO-2, 2 nodes) parse and
validate in accelerate's own launcher code, and give the processes the environment they promise.
No process is started; the runs themselves need GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import load_config_from_file  # noqa: E402
from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env  # noqa: E402

from gendr_core.errors import ConfigError  # noqa: E402
from trainers.loop import check_launch_environment  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"


def _launch_args(name: str):
    path = CONFIGS / name
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "trainers.train_pixel",
                                               "--config", "trainers/configs/tiny_cpu.json", "--out", "runs/x"])
    args, defaults, _ = _validate_launch_command(args)
    return load_config_from_file(str(path)), args, defaults


def test_ddp_8gpu_bf16_config():
    cfg, args, _ = _launch_args("accelerate_ddp_8gpu_bf16.yaml")
    assert (cfg.distributed_type, cfg.num_processes, cfg.num_machines) == (DistributedType.MULTI_GPU, 8, 1)
    assert args.multi_gpu and not args.use_deepspeed and args.module
    assert args.training_script == "trainers.train_pixel" and args.training_script_args[-2:] == ["--out", "runs/x"]
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and args.nproc_per_node == "8"


def test_zero2_config_partitions_optimizer_state_and_gradients_in_bf16():
    cfg, args, defaults = _launch_args("accelerate_zero2_8gpu_bf16.yaml")
    assert cfg.distributed_type == DistributedType.DEEPSPEED and cfg.num_processes == 8
    ds = cfg.deepspeed_config
    assert (ds["zero_stage"], ds["offload_optimizer_device"], ds["gradient_accumulation_steps"]) == (2, "none", 4)
    assert args.use_deepspeed and not args.multi_gpu
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "4" and env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_two_node_config_uses_c10d_rendezvous_on_node_0():
    cfg, args, _ = _launch_args("accelerate_ddp_2node_bf16.yaml")
    assert (cfg.num_machines, cfg.num_processes, cfg.rdzv_backend) == (2, 16, "c10d")
    args.main_process_port = 0  # a free port: the check that node 0's port is free must not depend on this machine
    env = prepare_multi_gpu_env(args)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 0)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_cpu_launch_without_mpi_is_refused_not_run_as_one_process():
    """`accelerate launch --cpu --num_processes 2` (no --mpirun_hostfile) starts the script once with
    MASTER_ADDR but no WORLD_SIZE: the trainers refuse it and name the commands that start 2."""
    with pytest.raises(ConfigError, match=r"torchrun --nproc_per_node N.*accelerate launch --multi_gpu"):
        check_launch_environment({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    check_launch_environment({"ACCELERATE_USE_CPU": "True"})  # --num_processes 1: fine
    check_launch_environment({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "h", "WORLD_SIZE": "2", "RANK": "0"})
