"""Train the learned FixMod (GenDR-Pix Sec. A.1) behind a frozen restorer; write restorer + FixMod
as one model file.

The paper builds FixMod from "the wavelet color fix and a small pretrained UNet" and trains it
"jointly" with GenDR-Pix. We train it *after* Stage II, with the restorer frozen, on the restorer's
own inference outputs (gendr_core.models.fixmod.FixMod, gendr_core.pipeline.post_fix):

    y      = restore_grid(x_lq)                       the restorer at ``guidance``, inference pads, no grad
    x_fix  = FixMod(y, x_lq) = wavelet_color_fix(y + r(y, x_lq), x_lq)
    L      = l1 * |x_fix - x_t|_1 + mfs * L_F(x_fix, x_t)          (L_F: masked Fourier loss, Eq. 2)

x_lq is the bicubic LQ on the output grid and x_t the target: the teacher output x_r when the data
carries it (``targets``: precomputed teacher shards, gendr_core.data.TeacherPairShards, items with
``hr``, ``lr``, ``xr``) and ``target`` is "auto"; the HQ crop otherwise. Without ``targets`` the LQ
crops are degraded as the restorer's own training data were (its file's recorded train config), unless
``degradation`` says otherwise. FixMod starts with a zero
last layer, i.e. as the wavelet color fix exactly (``fixmod_init`` "file" continues from the
restorer file's own FixMod instead). Training keeps an EMA of the FixMod weights, validates
restorer / +wavelet fix / +FixMod against HQ, checkpoints and resumes through trainers/loop.py, and
finally writes the restorer's tensors unchanged plus the EMA FixMod under ``fixmod.`` to
``output_model`` (atomic, via gendr_core.checkpoint.save_model).

Run:  python -m trainers.train_fixmod --config trainers/configs/fixmod_tiny_cpu.json
Resume is automatic from the newest checkpoint in ``output_dir`` (``--no-resume`` to restart;
``--stop-after N`` for time-boxed sessions).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from gendr_core.checkpoint import (
    CONFIG_KEY,
    FIXMOD_CONFIG_KEY,
    KIND_KEY,
    VERSION_KEY,
    load_model,
    resolve_model_path,
    save_model,
)
from gendr_core.config import FixModConfig, JSONConfig
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import ConfigError
from gendr_core.losses import l1_loss, masked_fourier_loss
from gendr_core.metrics import psnr_y
from gendr_core.models import FixMod
from gendr_core.ops.color_fix import wavelet_color_fix
from gendr_core.ops.resize import resize
from gendr_core.pipeline import restore_grid
from trainers.loop import (
    METRICS_FILE,
    DataConfig,
    JsonlLog,
    OptimConfig,
    batch_shard,
    build_hr_dataset,
    ema_update,
    finish_distributed,
    gather_indices,
    load_val_set,
    make_scheduler,
    plot_curves,
    reduce_for_log,
    resume_from_latest,
    save_checkpoint,
    setup_accelerator,
    step_loader,
    stop_step,
    write_run_config,
)
from trainers.loop import load_config as load_config_as

logger = logging.getLogger("trainers.train_fixmod")

TRAIN_STEP_KEY = "gendr_pix.fixmod_train_step"
TRAIN_CONFIG_KEY = "gendr_pix.fixmod_train_config"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FixModLossConfig(JSONConfig):
    l1: float = 1.0
    mfs: float = 0.1  # lambda_3 of Algorithm 1
    mfs_period: int = 8  # the unshuffle grid; 8 also covers the x4 grid's frequencies
    mfs_half_width: int = 1

    def __post_init__(self) -> None:
        if self.l1 < 0 or self.mfs < 0 or not (self.l1 or self.mfs):
            raise ConfigError(f"loss weights l1={self.l1}, mfs={self.mfs} must be >= 0 and not both 0")


@dataclass(frozen=True)
class FixModTrainConfig(JSONConfig):
    restorer: str  # model file or shipped name; frozen, its tensors go unchanged into output_model
    fixmod: FixModConfig = field(default_factory=FixModConfig)
    fixmod_init: str = "zero"  # "zero": start as the wavelet fix; "file": the restorer file's own FixMod
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig | None = None  # None: the restorer's own (resolve_degradation)
    targets: str | None = None  # folder of precomputed teacher shards (gendr_core.data.TeacherPairShards)
    target: str = "auto"  # "auto": the teacher output x_r when the data has it, else HQ; "hr": always HQ
    guidance: float = 1.0  # PadCFG w of the restorer pass that produces FixMod's input
    loss: FixModLossConfig = field(default_factory=FixModLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=100, max_steps=3000))
    output_dir: str = "runs/fixmod"
    output_model: str | None = None  # default: <output_dir>/model_fixmod.safetensors
    dtype: str = "auto"  # tensors of output_model: "auto" = the restorer file's, or "fp32" / "fp16" / "bf16"
    seed: int = 0
    mixed_precision: str = "no"
    threads: int = 0
    log_every: int = 25
    val_every: int = 250
    save_every: int = 250
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if self.fixmod_init not in ("zero", "file"):
            raise ConfigError(f"fixmod_init={self.fixmod_init!r} must be 'zero' or 'file'")
        if self.target not in ("auto", "hr"):
            raise ConfigError(f"target={self.target!r} must be 'auto' or 'hr'")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} must be 'auto' or one of {sorted(_DTYPES)}")

    def output_path(self) -> Path:
        return Path(self.output_model) if self.output_model else Path(self.output_dir) / "model_fixmod.safetensors"


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> FixModTrainConfig:
    """Parse a JSON config file (with its ``base`` chain) into FixModTrainConfig; dotted ``overrides``."""
    return load_config_as(FixModTrainConfig, path, overrides)


# ----------------------------------------------------------------------------- helpers


def file_dtype(path: Path) -> torch.dtype:
    """The dtype of a model file's floating tensors (read from its prompt embedding)."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("prompt_pos").dtype


def resolve_degradation(cfg: FixModTrainConfig, meta: dict[str, str], where: Path) -> FixModTrainConfig:
    """``cfg`` with ``degradation`` filled: the one the restorer was trained with, read from its file's
    ``gendr_pix.train_config`` (written by trainers/export.py), so FixMod learns to fix the outputs the
    restorer gives on the inputs it was made for; Real-ESRGAN defaults when the file records none."""
    if cfg.degradation is not None or cfg.targets:
        return cfg
    train_cfg = json.loads(meta.get("gendr_pix.train_config", "{}"))
    if train_cfg.get("degradation") is None:
        logger.info("%s records no training degradation; using the Real-ESRGAN defaults", where)
        return replace(cfg, degradation=DegradationConfig())
    logger.info("degradation: the restorer's own, from %s", where)
    return replace(cfg, degradation=DegradationConfig.from_dict(
        train_cfg["degradation"], where=f"{where}: 'gendr_pix.train_config'.degradation"))


def init_fixmod(cfg: FixModTrainConfig, file_fixmod: FixMod | None, where: Path) -> FixMod:
    """A fresh FixMod (zero last layer) or, with ``fixmod_init`` "file", the restorer file's own."""
    net = FixMod(cfg.fixmod)
    if cfg.fixmod_init == "file":
        if file_fixmod is None:
            raise ConfigError(f"fixmod_init='file': {where} has no learned FixMod to continue from")
        if file_fixmod.config != cfg.fixmod:
            raise ConfigError(f"fixmod_init='file': the FixMod of {where} has config {file_fixmod.config}, the "
                              f"training config's 'fixmod' is {cfg.fixmod}")
        net.load_state_dict({k: v.float() for k, v in file_fixmod.state_dict().items()})
    return net


class _Cycle(torch.utils.data.Dataset):
    """Item ``i`` -> item ``i mod len(ds)``, so step-indexed batches run over a finite shard set."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, i: int):
        return {**self.ds[i % len(self.ds)], "index": i}


def build_dataset(cfg: FixModTrainConfig):
    if cfg.targets and cfg.data.shards:
        raise ConfigError(f"give targets={cfg.targets} (teacher pairs) or data.shards={cfg.data.shards} (HR images), "
                          "not both")
    if cfg.targets:
        try:
            from gendr_core.data import TeacherPairShards
        except ImportError:
            raise ConfigError(f"targets={cfg.targets}: this gendr_core has no data.TeacherPairShards") from None
        ds = TeacherPairShards(cfg.targets, seed=cfg.seed)
        logger.info("targets: %d precomputed teacher pairs from %s", len(ds), cfg.targets)
        return _Cycle(ds)
    bsz = cfg.data.batch_size
    return build_hr_dataset(cfg.data, cfg.degradation or DegradationConfig(), cfg.seed, cfg.optim.max_steps * bsz)


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """hr (B,3,H,W), lr (B,3,h,w), index (B,) and, when every item has one, the teacher output xr (B,3,H,W)."""
    sizes = sorted({tuple(it["lr"].shape) for it in items})
    if len(sizes) != 1:
        raise ConfigError(f"batch mixes LR sizes {sizes}; the dataset must draw one scale per batch")
    out = {k: torch.stack([it[k] for it in items]) for k in ("hr", "lr")}
    out["index"] = torch.tensor([it["index"] for it in items])
    if all("xr" in it for it in items):
        out["xr"] = torch.stack([it["xr"] for it in items])
    return out


@torch.no_grad()
def restorer_pass(restorer, lr: torch.Tensor, size: tuple[int, int], guidance: float) -> tuple[torch.Tensor, ...]:
    """(x_lq on the output grid, the restorer's output y), both float32 (B,3,H,W)."""
    grid = resize(lr.to(restorer.device), size, "bicubic")
    return grid, restore_grid(grid, restorer, guidance=guidance, tile="off").float()


@torch.no_grad()
def validate_fixmod(net: FixMod, cached: list[tuple[torch.Tensor, ...]], scale: int) -> dict[str, float]:
    """Mean PSNR-Y (border ``scale``) against HR of bicubic, the restorer, restorer + wavelet fix and
    restorer + FixMod (``psnr_y``)."""
    cols: dict[str, list[float]] = {"psnr_y": [], "psnr_y_restorer": [], "psnr_y_wavelet": [], "psnr_y_bicubic": []}
    for hr, grid, y in cached:
        outs = {"psnr_y": net(y, grid), "psnr_y_restorer": y, "psnr_y_wavelet": wavelet_color_fix(y, grid),
                "psnr_y_bicubic": grid}
        for k, v in outs.items():
            cols[k].append(float(psnr_y(v.clamp(0, 1), hr.to(v), crop_border=scale)))
    return {k: sum(v) / len(v) for k, v in cols.items()}


def export_model(restorer, net: FixMod, cfg: FixModTrainConfig, source: Path, step: int, resolved: dict) -> Path:
    """restorer + ``net`` -> ``cfg.output_path()``: the restorer's tensors in the source file's dtype
    (unchanged), the FixMod under ``fixmod.``, the source's provenance metadata kept."""
    dtype = file_dtype(source) if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
    own = (KIND_KEY, CONFIG_KEY, VERSION_KEY, FIXMOD_CONFIG_KEY)
    meta = {k: v for k, v in getattr(restorer, "metadata", {}).items() if k.startswith("gendr_pix.") and k not in own}
    meta.update({TRAIN_STEP_KEY: str(step), TRAIN_CONFIG_KEY: json.dumps(resolved, sort_keys=True),
                 "gendr_pix.fixmod_restorer": source.name})
    restorer.attach_fixmod(net)
    try:
        return save_model(restorer, cfg.output_path(), dtype=dtype, metadata=meta)
    finally:
        restorer.attach_fixmod(None)


# ----------------------------------------------------------------------------- main


def train(cfg: FixModTrainConfig, resume: bool = True, stop_after: int | None = None) -> Path:
    """Train until ``optim.max_steps`` (or ``stop_after`` more steps); returns the written model file
    (written when ``optim.max_steps`` is reached) or, when stopped earlier, ``output_dir``."""
    out = Path(cfg.output_dir)
    _, acc = setup_accelerator(out, cfg.mixed_precision, cfg.threads, cfg.seed)
    bsz = cfg.data.batch_size  # the global batch
    shard = batch_shard(acc, bsz)  # this process's slice of it

    # -- frozen restorer, trainable FixMod
    source = resolve_model_path(cfg.restorer)
    restorer = load_model(source, device=acc.device, dtype=torch.float32)
    cfg = resolve_degradation(cfg, restorer.metadata, source)
    file_fixmod = restorer.fixmod
    restorer.attach_fixmod(None)  # the restorer pass never runs a FixMod
    if cfg.data.crop_size % cfg.fixmod.pad_multiple:
        logger.info("crop %d is padded to FixMod's multiple %d", cfg.data.crop_size, cfg.fixmod.pad_multiple)
    net = init_fixmod(cfg, file_fixmod, source).to(acc.device)
    eval_net = FixMod(cfg.fixmod).to(acc.device).eval().requires_grad_(False)
    ema = {k: v.detach().clone().float() for k, v in net.state_dict().items()}
    o = cfg.optim
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    net, opt = acc.prepare(net, opt)
    unwrapped = acc.unwrap_model(net)

    # -- resume
    log, metrics = JsonlLog(out / "train_log.jsonl"), JsonlLog(out / METRICS_FILE)
    step, ema = resume_from_latest(acc, out, log, ema, resume)
    end = stop_step(step, o.max_steps, stop_after)
    sched = make_scheduler(opt, o, step)  # at lr_at(step)

    # -- data
    dl = step_loader(build_dataset(cfg), cfg.data, step, end, shard, collate)
    cached = []
    if acc.is_main_process and cfg.val_every:
        for hr, lr in load_val_set(cfg.data.val_dirs, cfg.data.val_crop, cfg.data.val_scale):
            cached.append((hr, *restorer_pass(restorer, lr, tuple(hr.shape[-2:]), cfg.guidance)))
    resolved = json.loads(cfg.to_json())
    if acc.is_main_process:
        write_run_config(out, resolved)
        if step == 0:
            log.write({"kind": "run", "step": 0, "restorer": str(source), "restorer_kind": restorer.kind,
                       "fixmod_parameters": sum(p.numel() for p in unwrapped.parameters()),
                       "targets": cfg.targets, "target": cfg.target})

    pbar = tqdm(total=end, initial=step, disable=not acc.is_main_process, desc="fixmod", dynamic_ncols=True)
    t0, seen = time.time(), 0
    for batch in dl:
        hr = batch["hr"].to(acc.device)
        target = batch["xr"].to(acc.device) if cfg.target == "auto" and "xr" in batch else hr
        grid, y = restorer_pass(restorer, batch["lr"], tuple(hr.shape[-2:]), cfg.guidance)
        with acc.autocast():
            fixed = net(y, grid)  # (B,3,H,W) float32
        losses = {}
        if cfg.loss.l1:
            losses["l1"] = cfg.loss.l1 * l1_loss(fixed, target)
        if cfg.loss.mfs:
            losses["mfs"] = cfg.loss.mfs * masked_fourier_loss(fixed, target, period=cfg.loss.mfs_period,
                                                               half_width=cfg.loss.mfs_half_width)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if o.grad_clip:
            acc.clip_grad_norm_(net.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        ema_update(ema, unwrapped, o.ema_decay)
        step += 1
        seen += hr.shape[0]
        pbar.update(1)
        if step % cfg.log_every == 0 or step == end:  # every process: the scalars are mean-reduced over them
            scal = reduce_for_log(acc, {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in losses.items()},
                                        "l1_restorer": l1_loss(y, target)})  # the batch without FixMod, to compare
            indices = gather_indices(acc, batch["index"])
        if acc.is_main_process and (step % cfg.log_every == 0 or step == end):
            rec = {"kind": "train", "step": step, "loss": scal["loss"], "lr": sched.get_last_lr()[0],
                   "images_per_s": seen * shard.world_size / (time.time() - t0),
                   "target": "xr" if target is not hr else "hr", **{k: v for k, v in scal.items() if k != "loss"}}
            log.write(rec)
            metrics.write({"step": step, "loss": scal["loss"], "world_size": shard.world_size,
                           "samples_seen": step * bsz, "lr": rec["lr"],
                           **{k: v for k, v in scal.items() if k.startswith("loss_")}, "rank_indices": indices})
            pbar.set_postfix(loss=f"{scal['loss']:.4f}")
        if acc.is_main_process and cached and (step % cfg.val_every == 0 or step == end):
            eval_net.load_state_dict(ema)
            rec = {"kind": "val", "step": step, **validate_fixmod(eval_net, cached, cfg.data.val_scale)}
            log.write(rec)
            logger.info("step %d: val PSNR-Y %.3f dB with FixMod (restorer %.3f, + wavelet fix %.3f)", step,
                        rec["psnr_y"], rec["psnr_y_restorer"], rec["psnr_y_wavelet"])
            plot_curves(log, out / "curves.png")
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(acc, out, step, ema, resolved, cfg.keep_checkpoints)
    pbar.close()
    if step < o.max_steps:
        return out
    if acc.is_main_process:
        eval_net.load_state_dict(ema)
        path = export_model(restorer, eval_net.cpu(), cfg, source, step, resolved)
        logger.info("wrote %s: %s + FixMod (EMA, step %d)", path, source.name, step)
    acc.wait_for_everyone()
    return cfg.output_path()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="JSON file parsed into FixModTrainConfig")
    ap.add_argument("--restorer", help="override restorer (model file or shipped name)")
    ap.add_argument("--out", "--output-dir", dest="output_dir",
                    help="override output_dir (logs, metrics.jsonl, checkpoints)")
    ap.add_argument("--output-model", help="override output_model (.safetensors)")
    ap.add_argument("--max-steps", type=int, help="override optim.max_steps")
    ap.add_argument("--stop-after", type=int, help="stop after this many more steps (for time-boxed sessions)")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = ap.parse_args(argv)
    overrides: dict[str, object] = {}
    for key, value in (("restorer", args.restorer), ("output_dir", args.output_dir),
                       ("output_model", args.output_model), ("optim.max_steps", args.max_steps)):
        if value:
            overrides[key] = value
    train(load_config(args.config, overrides), resume=not args.no_resume, stop_after=args.stop_after)
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
