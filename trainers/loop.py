"""Pieces shared by the trainer scripts (``train_pixel``, ``train_stage2``): typed data/optimiser
config sections, config files with a ``"base"`` chain, accelerate set-up, the LR schedule, EMA,
validation, checkpoints with resume, logs and plots. One copy of each.

Checkpoint folder ``<out>/checkpoints/step_XXXXXXX/`` holds accelerate's ``save_state``
(model/optimizer/RNG), ``ema.safetensors`` (EMA generator weights), ``train_state.json``
(step) and ``config.json`` (the resolved training config). A folder is written under a
temporary name and renamed when complete, so an interrupted save never shadows the last
good checkpoint (a half-written ``step_XXXXXXX.tmp`` folder is never picked up).

Distributed runs (``torchrun`` / ``accelerate launch``, one process per device): ``data.batch_size``
is the *global* batch; :class:`StepBatchSampler` gives every process its own slice of each
global batch (:class:`BatchShard`), so the world sees each item once per step and a 1-process
run sees exactly the batches it always did. Logged scalars are averaged over the processes
(:func:`reduce_for_log`); only the main process writes logs, ``metrics.jsonl``, plots and the
files of a checkpoint other than accelerate's per-process RNG state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from gendr_core.checkpoint import load_model, load_state_dict, read_header, resolve_model_path
from gendr_core.config import JSONConfig
from gendr_core.data import HRFolderDataset, ShardedHRDataset
from gendr_core.degradation import DegradationConfig, degrade_fixed
from gendr_core.errors import ConfigError, MissingDependencyError
from gendr_core.imageio import load_image
from gendr_core.metrics import psnr_y
from gendr_core.ops.padding import crop_to_multiple
from gendr_core.ops.resize import resize
from gendr_core.pipeline import restore_grid

logger = logging.getLogger(__name__)

CKPT_PREFIX = "step_"
METRICS_FILE = "metrics.jsonl"  # per-step scalars of every trainer: step, loss, world_size, samples_seen, ...
C = TypeVar("C")


# ----------------------------------------------------------------------------- config sections


@dataclass(frozen=True)
class DataConfig(JSONConfig):
    train_dirs: tuple[str, ...] = ("../shared/data/train_hr",)
    # folder packed by trainers/make_shards.py: when set, training images stream from its tar shards
    # (gendr_core.data.ShardedHRDataset) instead of being decoded from train_dirs into memory
    shards: str | None = None
    val_dirs: tuple[str, ...] = ("../shared/data/val/Set5/HR", "../shared/data/val/Set14/HR")
    crop_size: int = 192
    batch_size: int = 8
    scales: tuple[int, ...] = (2, 3, 4)
    num_workers: int = 0
    val_crop: int = 256  # centre crop of each val image (0 = whole image)
    val_scale: int = 4


@dataclass(frozen=True)
class OptimConfig(JSONConfig):
    lr: float = 2e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    schedule: str = "cosine"  # or "constant"
    min_lr_ratio: float = 0.05
    max_steps: int = 10000
    grad_clip: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule={self.schedule!r} must be 'cosine' or 'constant'")


def build_hr_dataset(data: DataConfig, degradation: DegradationConfig | None, seed: int,
                     epoch_length: int) -> HRFolderDataset:
    """The trainers' (HR crop, degraded LR) items: streamed from ``data.shards`` when set
    (:class:`~gendr_core.data.ShardedHRDataset`, memory flat in the number of images), else the
    images of ``data.train_dirs`` decoded once into memory (:class:`~gendr_core.data.HRFolderDataset`).
    ``data.batch_size`` (the global batch) is the one-scale-per-batch group of both."""
    common = dict(crop_size=data.crop_size, scales=data.scales, degradation=degradation, seed=seed,
                  epoch_length=epoch_length, batch_size=data.batch_size)
    if data.shards:
        return ShardedHRDataset(data.shards, **common)
    return HRFolderDataset(list(data.train_dirs), **common)


def step_loader(ds, data: DataConfig, step: int, end: int, shard, collate_fn) -> torch.utils.data.DataLoader:
    """Batches ``step`` .. ``end`` of ``ds`` (one :class:`StepBatchSampler` batch of the global
    ``data.batch_size`` a step, this process's ``shard`` of it) on ``data.num_workers`` workers."""
    return torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(data.batch_size, step, end, shard),
                                       num_workers=data.num_workers, collate_fn=collate_fn,
                                       persistent_workers=data.num_workers > 0)


def write_run_config(out: Path, resolved: dict[str, Any]) -> None:
    """``out/config.json``: the resolved training config of the run (main process only)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))


def read_config_json(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's JSON with its ``"base"`` (a path relative to the file) merged underneath.

    Sections (JSON objects) merge key by key, recursively; any other value, lists included,
    replaces the base's. So a follow-up recipe lists only what it changes.
    """
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}"
                                + (f" (the 'base' of {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'base' chain loops back to itself: {' -> '.join(map(str, chain + (path,)))}")
    data = json.loads(path.read_text())
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a config file path, got {base!r}")

    def merge(under: dict, over: dict) -> dict:
        out = dict(under)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(read_config_json(path.parent / base, chain + (path.resolve(),)), data)


def load_config(cls: type[C], path: str | Path, overrides: dict[str, object] | None = None) -> C:
    """Parse a JSON config file (with its ``base`` chain) into ``cls``; ``overrides`` set dotted fields."""
    path = Path(path)
    data = read_config_json(path)
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cls.from_dict(data, where=str(path))  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- set-up, schedule, EMA


def require_accelerate():
    try:
        import accelerate
    except ImportError:
        raise MissingDependencyError("training needs accelerate: pip install '.[train]'") from None
    return accelerate


def setup_accelerator(out: Path, mixed_precision: str, threads: int, seed: int):
    """accelerate ``Accelerator`` for ``out``, torch threads, seeds, logging; returns (module, accelerator).

    On a machine without an accelerator device the Accelerator is made with ``cpu=True``: only then
    does accelerate turn a ``torchrun`` launch into a real gloo process group (``MULTI_CPU``); with
    ``cpu=False`` every process would train alone as ``DistributedType.NO``."""
    accelerate = require_accelerate()
    check_launch_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch` (its config file)
    if mixed_precision == "no" and launched not in ("no", ""):
        logger.info("mixed precision %s from the accelerate launch config (the training config says 'no')", launched)
        mixed_precision = launched
    device_api = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA only before
    has_device = device_api.is_available() if device_api is not None else torch.cuda.is_available()
    acc = accelerate.Accelerator(mixed_precision=mixed_precision, project_dir=str(out), cpu=not has_device)
    if threads:
        torch.set_num_threads(threads)
    accelerate.utils.set_seed(seed)
    return accelerate, acc


def exclude_from_ddp(model: torch.nn.Module, names: Sequence[str]) -> None:
    """Keep the parameters ``names`` out of DDP's gradient reducer; call before ``accelerator.prepare``.

    For parameters that a trainer fits from gradients it computes (``torch.autograd.grad``) and
    sums over the processes itself (:func:`sum_over_processes`). DDP still expects a gradient for
    every other parameter in every backward, so a parameter that is unused by mistake fails loudly.
    Has no effect without DDP."""
    known = {n for n, _ in model.named_parameters()}
    missing = sorted(set(names) - known)
    if missing:
        raise ConfigError(f"exclude_from_ddp: {type(model).__name__} has no parameter(s) {missing}")
    # DDP matches some of its checks against "module.param" names built as f"{module_name}.{name}", which
    # gives ".name" for parameters of the root module (torch 2.13): list both spellings
    spellings = [*names, *(f".{n}" for n in names if "." not in n)]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, spellings)


def refuse_deepspeed(accelerator, script: str) -> None:
    """Stop a trainer with a generator + discriminator under DeepSpeed, which it does not support yet."""
    if str(accelerator.distributed_type).endswith("DEEPSPEED"):
        raise ConfigError(f"{script} prepares two models (generator and discriminator) and fits some parameters from "
                          "gradients of its own, which accelerate's DeepSpeed integration (one model per plugin) does "
                          "not cover yet; launch it with DDP, e.g. trainers/configs/accelerate_ddp_8gpu_bf16.yaml")


def finish_distributed() -> None:
    """Tear down the process group of a distributed run (``torchrun`` / ``accelerate launch``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_launch_environment(env: dict[str, str] | None = None) -> None:
    """Refuse the launch that looks distributed but is one process: ``accelerate launch --cpu
    --num_processes N`` (N > 1) without an MPI host file runs the script once, with MASTER_ADDR set
    but no WORLD_SIZE/RANK (accelerate's CPU launcher needs mpirun), so N would silently be 1."""
    env = os.environ if env is None else env
    world_vars = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if (env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") and "MASTER_ADDR" in env
            and not any(v in env for v in world_vars)):
        raise ConfigError("accelerate launch --cpu --num_processes N starts ONE process unless it is given an MPI host "
                          "file (--mpirun_hostfile); for N CPU processes use `torchrun --nproc_per_node N -m "
                          "trainers.<script> ...` or `accelerate launch --multi_gpu --num_processes N -m "
                          "trainers.<script> ...` (accelerate's torchrun launcher; on a machine without GPUs the "
                          "trainers run it on the CPU with gloo; see trainers/README.md)")


def lr_at(step: int, o: OptimConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` (or constant)."""
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    p = min(1.0, (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def make_scheduler(opt: torch.optim.Optimizer, o: OptimConfig, start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR(lr_at) for ``opt`` whose schedule is already ``start`` steps in (a resumed run)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s, _o=o, _start=start: lr_at(s + _start, _o))


def make_schedulers(opt_g, opt_d, o: OptimConfig, step: int, d_start: int) -> list:
    """:func:`make_scheduler` for the generator and discriminator optimisers at ``step``
    (the discriminator's schedule starts at ``d_start``, when adversarial training begins)."""
    return [make_scheduler(opt_g, o, step), make_scheduler(opt_d, o, max(0, step - d_start))]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step's own draws (RandPad offsets, blur sigmas): a pure
    function of (seed, step), so a resumed run draws what an uninterrupted one does, and every
    process of a distributed run draws the same numbers."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights, for every floating tensor of the model."""
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            ema[k].lerp_(v.detach().to(ema[k].dtype), 1 - decay)
        else:
            ema[k].copy_(v)


def load_init_weights(model: torch.nn.Module, init_from: str, where: str = "init_from") -> Path:
    """Load a model file's restorer weights into ``model``; its config must equal ``model.config``.
    A learned FixMod stored in the file (``fixmod.*``) is not part of the restorer and is skipped."""
    from gendr_core.checkpoint import FIXMOD_PREFIX

    path = resolve_model_path(init_from)
    _, init_cfg, _ = read_header(path)
    if init_cfg != model.config:
        raise ConfigError(f"{where}={path}: its model config differs from the training config's 'model'")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(load_state_dict(path, expected, skip_prefixes=(FIXMOD_PREFIX,)))
    return path


# ----------------------------------------------------------------------------- validation


def load_val_set(val_dirs: Sequence[str], val_crop: int, scale: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(hr, lr) pairs: HR centre crops (``val_crop``, 0 = whole image) degraded by the fixed
    evaluation degradation at ``scale``."""
    paths = sorted(p for d in val_dirs if Path(d).is_dir() for p in Path(d).rglob("*")
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        logger.warning("no validation images found in %s; validation disabled", list(val_dirs))
        return []
    pairs = []
    for i, p in enumerate(paths):
        hr, _, _ = load_image(p)
        h, w = hr.shape[-2:]
        if val_crop:
            top, left = max(0, (h - val_crop) // 2), max(0, (w - val_crop) // 2)
            hr = hr[..., top : top + val_crop, left : left + val_crop]
        hr = crop_to_multiple(hr, scale)
        pairs.append((hr, degrade_fixed(hr, scale, seed=i)))
    return pairs


@torch.no_grad()
def validate(model, pairs, scale: int, teacher_outputs: Sequence[torch.Tensor] | None = None) -> dict[str, float]:
    """Mean PSNR-Y (border ``scale``) of ``model`` and of bicubic against HR; with
    ``teacher_outputs`` (one per pair) also the teacher's own PSNR-Y against HR
    (``psnr_y_teacher``), the model's PSNR-Y against the teacher (``psnr_y_to_teacher``) and
    the mean L1 between model and teacher (``l1_to_teacher``)."""
    ps, pb, pt, pmt, l1t = [], [], [], [], []
    for i, (hr, lr) in enumerate(pairs):
        grid = resize(lr, tuple(hr.shape[-2:]), "bicubic")
        sr = restore_grid(grid, model, tile="off").clamp(0, 1)
        ps.append(float(psnr_y(sr, hr, crop_border=scale)))
        pb.append(float(psnr_y(grid, hr, crop_border=scale)))
        if teacher_outputs is not None:
            t = teacher_outputs[i].to(sr)
            pt.append(float(psnr_y(t, hr, crop_border=scale)))
            pmt.append(float(psnr_y(sr, t, crop_border=scale)))
            l1t.append(float((sr - t).abs().mean()))
    out = {"psnr_y": sum(ps) / len(ps), "psnr_y_bicubic": sum(pb) / len(pb)}
    if teacher_outputs is not None:
        out.update(psnr_y_teacher=sum(pt) / len(pt), psnr_y_to_teacher=sum(pmt) / len(pmt),
                   l1_to_teacher=sum(l1t) / len(l1t))
    return out


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{CKPT_PREFIX}{step:07d}"


def latest_checkpoint(out: Path) -> Path | None:
    """Newest complete checkpoint folder under ``out/checkpoints``, or None."""
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX):].isdigit()
            and (p / "train_state.json").is_file()]  # never a half-renamed "step_X.tmp"
    return max(done, key=lambda p: int(p.name[len(CKPT_PREFIX):]), default=None)


def save_checkpoint(accelerator, out: Path, step: int, ema_state: dict[str, torch.Tensor], config: dict[str, Any],
                    keep: int = 3) -> Path:
    """accelerate state + EMA + step + config, written atomically (temp folder + rename)."""
    final = checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's RNG state is in tmp before it is renamed
    if accelerator.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "train_state.json").write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpts = sorted((p for p in final.parent.iterdir() if p.name.startswith(CKPT_PREFIX)
                        and p.name[len(CKPT_PREFIX):].isdigit()),
                       key=lambda p: int(p.name[len(CKPT_PREFIX):]))
        for old in ckpts[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore accelerate state from ``path``; returns (step, EMA state dict)."""
    accelerator.load_state(str(path))
    step = json.loads((path / "train_state.json").read_text())["step"]
    return step, load_file(str(path / "ema.safetensors"))


def resume_from_latest(accelerator, out: Path, log: JsonlLog, ema: dict[str, torch.Tensor],
                       resume: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore the newest complete checkpoint under ``out`` (when ``resume``): returns (step, EMA)
    and drops records newer than that step from ``log`` and ``out/metrics.jsonl`` (main process);
    (0, ``ema``) when there is none."""
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is None:
        return 0, ema
    step, ema_sd = load_checkpoint(accelerator, ckpt)
    if accelerator.is_main_process:
        for lg in (log, JsonlLog(out / METRICS_FILE)):
            if lg.path.exists():
                lg.truncate_after(step)
    accelerator.wait_for_everyone()
    logger.info("resumed from %s at step %d", ckpt, step)
    return step, {k: v.to(torch.float32) for k, v in ema_sd.items()}


def stop_step(step: int, max_steps: int, stop_after: int | None) -> int:
    """The step a run started (or resumed) at ``step`` ends at: ``max_steps``, or ``stop_after``
    more steps when that comes first (time-boxed sessions)."""
    return max_steps if stop_after is None else min(max_steps, step + stop_after)


def adamw_pair(g_params, d_params, optim) -> tuple[torch.optim.AdamW, torch.optim.AdamW]:
    """AdamW for a generator's and a discriminator's parameters, at ``optim.lr`` and ``optim.disc_lr``
    with the same betas and weight decay (an :class:`OptimConfig`)."""
    return (torch.optim.AdamW(g_params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay),
            torch.optim.AdamW(d_params, lr=optim.disc_lr, betas=optim.betas, weight_decay=optim.weight_decay))


@dataclass(frozen=True)
class BatchShard:
    """One process's slice ``[start, start + size)`` of every global batch of ``global_batch`` items.

    ``global_batch`` (``data.batch_size``) must be a multiple of ``world_size``; every process
    trains on ``size = global_batch / world_size`` items per step, so the gradient that DDP
    averages over the processes is the gradient of the global-batch mean loss.
    """

    rank: int = 0
    world_size: int = 1
    global_batch: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"process rank={self.rank} is not in [0, world_size={self.world_size})")
        if self.global_batch < 1 or self.global_batch % self.world_size:
            fit = -(-max(1, self.global_batch) // self.world_size) * self.world_size
            raise ConfigError(f"data.batch_size={self.global_batch} is the global batch and must be a multiple of "
                              f"the {self.world_size} processes (each trains on batch_size / processes items per "
                              f"step); use {fit}, or launch a number of processes that divides it")

    @property
    def size(self) -> int:
        return self.global_batch // self.world_size

    @property
    def start(self) -> int:
        return self.rank * self.size

    def indices(self, step: int) -> list[int]:
        """Dataset items of this process at ``step``."""
        first = step * self.global_batch + self.start
        return list(range(first, first + self.size))

    def local_count(self, k: int) -> int:
        """How many of the global batch's first ``k`` items fall in this slice."""
        return max(0, min(k - self.start, self.size))


def check_accumulation(steps: int, global_batch: int, world_size: int = 1) -> None:
    """``gradient_accumulation_steps`` must be >= 1 and divide every process's slice of the batch."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"gradient_accumulation_steps={steps!r} must be an integer >= 1 (1 = no accumulation)")
    if global_batch % (world_size * steps):
        raise ConfigError(f"data.batch_size={global_batch} (the global batch) must be a multiple of processes x "
                          f"gradient_accumulation_steps = {world_size} x {steps}: every forward pass takes "
                          f"batch_size / {world_size * steps} items")


def batch_shard(accelerator, global_batch: int) -> BatchShard:
    """The :class:`BatchShard` of this process of ``accelerator``."""
    return BatchShard(accelerator.process_index, accelerator.num_processes, global_batch)


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batch ``step`` = dataset items [step*B, (step+1)*B): a pure function of the step.

    The dataset itself shuffles images and draws one scale per batch from (seed, index), so
    resuming at step k replays exactly the batches an uninterrupted run would have seen.
    With ``shard`` (distributed runs) this process yields only its slice of each global
    batch (:class:`BatchShard`), so the processes together see every item once. DataLoader
    workers need no slicing of their own: each batch of a batch sampler goes to one worker.
    """

    def __init__(self, batch_size: int, start_step: int, max_steps: int, shard: BatchShard | None = None) -> None:
        if shard is not None and shard.global_batch != batch_size:
            raise ConfigError(f"shard of a {shard.global_batch}-item batch given for batch_size={batch_size}")
        self.b, self.start, self.max = batch_size, start_step, max_steps
        self.shard = shard or BatchShard(0, 1, batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.max):
            yield self.shard.indices(step)

    def __len__(self) -> int:
        return max(0, self.max - self.start)


def reduce_for_log(accelerator, means: dict[str, Any], sums: dict[str, Any] | None = None) -> dict[str, float]:
    """One step's logged scalars over every process: ``means`` averaged (each process's mean over its
    equal slice of the batch, so the result is the global-batch mean), ``sums`` added (terms that a
    process already weighted by its share). Every process must call it with the same keys in the
    same order. With one process the values are returned as they are."""
    sums = sums or {}
    keys = [*means, *sums]
    values = [float(v) for v in (*means.values(), *sums.values())]
    n = accelerator.num_processes
    if n == 1:
        return dict(zip(keys, values, strict=True))
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum")
    return {k: float(total[i]) / (n if i < len(means) else 1) for i, k in enumerate(keys)}


def sum_over_processes(accelerator, t: torch.Tensor) -> torch.Tensor:
    """In-place sum of ``t`` over every process (a no-op with one); for gradients that a trainer
    computes outside DDP's reducer (see ``train_pixel``'s negative embedding)."""
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def gather_indices(accelerator, index: torch.Tensor) -> list[list[int]]:
    """The dataset items of this step on every process, rank by rank (equal slices)."""
    if accelerator.num_processes == 1:
        return [index.tolist()]
    every = accelerator.gather(index.to(accelerator.device)).cpu()
    return [c.tolist() for c in every.chunk(accelerator.num_processes)]


class JsonlLog:
    """Append-only JSON-lines log, flushed per record (survives a kill; a line torn by a kill
    during the write is skipped with a warning)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i < len(lines) - 1:
                    raise ConfigError(f"{self.path}: line {i + 1} is not JSON ({exc}); fix or delete that line") from None
                logger.warning("%s: skipping its last line, cut off by an interrupted write", self.path)
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (after resuming from an older checkpoint); atomic."""
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)


def loss_axis_scale(train_records: list[dict]) -> str:
    """``"log"`` when every finite ``loss*`` value is positive, else ``"symlog"`` (-PSNR terms are
    negative, and a log axis cannot show them)."""
    positive = all(r[k] > 0 for r in train_records for k in r if k.startswith("loss") and math.isfinite(r[k]))
    return "log" if positive else "symlog"


def plot_curves(log: JsonlLog, png: Path) -> Path | None:
    """Loss and validation PSNR curves as a PNG (needs matplotlib; skipped otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed; no curve plot")
        return None
    recs = log.read()
    train = [r for r in recs if r.get("kind") == "train"]
    val = [r for r in recs if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in train for k in r if k.startswith("loss")}):
        pts = [(r["step"], r[key]) for r in train if key in r and math.isfinite(r[key])]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), label=key)
    axes[0].set(xlabel="step", ylabel="loss", yscale=loss_axis_scale(train), title="training losses")
    axes[0].legend(fontsize=7)
    if val:
        steps = [r["step"] for r in val]
        axes[1].plot(steps, [r["psnr_y"] for r in val], "o-", label="model vs HR")
        axes[1].plot(steps, [r["psnr_y_bicubic"] for r in val], "--", label="bicubic vs HR")
        if all("psnr_y_teacher" in r for r in val):
            axes[1].plot(steps, [r["psnr_y_teacher"] for r in val], ":", label="teacher vs HR")
            axes[1].plot(steps, [r["psnr_y_to_teacher"] for r in val], "s-", label="model vs teacher")
        axes[1].legend(fontsize=7)
    axes[1].set(xlabel="step", ylabel="PSNR-Y (dB)", title="validation")
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)
    return png


def average_gradients(accelerator, params: Sequence[torch.nn.Parameter]) -> None:
    """Mean of every gradient in ``params`` over the processes (a no-op with one), for modules a
    trainer calls outside DDP's ``forward`` (LoRA score networks used through their methods, heads
    run on features of a shared frozen UNet); see ``train_gendr``."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            sum_over_processes(accelerator, p.grad).div_(accelerator.num_processes)


TRAINER_STATE_DIR = "trainer_state"


def trainer_state_path(out: Path, step: int) -> Path:
    """``out/trainer_state/step_XXXXXXX.safetensors``: the live weights and optimiser states of a trainer
    that does not hand its modules to ``accelerator.prepare`` (``train_gendr``, ``train_dfosd``)."""
    return out / TRAINER_STATE_DIR / f"{CKPT_PREFIX}{step:07d}.safetensors"


def save_trainer_state(path: Path, tensors: dict[str, dict[str, torch.Tensor]],
                       optimizers: dict[str, torch.optim.Optimizer], keep: int = 3) -> Path:
    """Write named groups of tensors and optimiser states as one safetensors file (atomic; tensors under
    ``<group>/<name>``, optimiser tensors under ``opt.<name>/<param index>/<key>``, everything else as
    JSON metadata): no pickle. Call on the main process *before* :func:`save_checkpoint`, so a
    complete checkpoint always has its state file; keeps the newest ``keep`` files."""
    flat: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"format": "pt"}
    for group, sd in tensors.items():
        for k, v in sd.items():
            flat[f"{group}/{k}"] = v.detach().cpu().contiguous()
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    flat[f"opt.{name}/{idx}/{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        meta[f"opt.{name}"] = json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp), metadata=meta)
    os.replace(tmp, path)
    olds = sorted(p for p in path.parent.glob(f"{CKPT_PREFIX}*.safetensors"))
    for old in olds[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_trainer_state(path: Path, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, dict[str, torch.Tensor]]:
    """Restore the optimisers saved by :func:`save_trainer_state` in place; returns the tensor groups
    (the caller loads them into its modules)."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path}: trainer state of the checkpoint being resumed is missing; restart the run "
                                "with --no-resume or restore the file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        flat = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        group, name = key.split("/", 1)
        if not group.startswith("opt."):
            groups.setdefault(group, {})[name] = v
    for name, opt in optimizers.items():
        if f"opt.{name}" not in meta:
            raise ConfigError(f"{path}: no state for optimiser {name!r} (has {sorted(k for k in meta if k != 'format')})")
        saved = json.loads(meta[f"opt.{name}"])
        state: dict[int, dict[str, Any]] = {}
        for key, v in flat.items():
            if key.startswith(f"opt.{name}/"):
                _, idx, k = key.split("/", 2)
                state.setdefault(int(idx), {})[k] = v
        for idx, sc in saved["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return groups


def load_frozen_model(path: str, device: torch.device, cls: type, option: str, need: str):
    """A model file of class ``cls`` (fp32, on ``device``) for a trainer's frozen part, or one
    ConfigError naming the config ``option``, the file, its kind and ``need`` (what it must be)."""
    model = load_model(path, device=device, dtype=torch.float32)
    if not isinstance(model, cls):
        raise ConfigError(f"{option}={path} is a {model.kind!r} model; {need}")
    return model
