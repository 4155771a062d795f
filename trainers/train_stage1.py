"""GenDR-Pix Stage I (Algorithm 1, "Remove Encoder"): distil the GenDR teacher into GenDR-Adc, a
generator that reads x8-unshuffled LQ pixels and writes HQ latents (no VAE encoder).

Notation of Algorithm 1 (Stage I), t = 499 (GenDR's t_s = 500, 0-indexed):

    z_g = G_theta(x_l; t, c)      GenDR-Adc (gendr_core.models.adc): theta <- mu with a re-initialised
                                  192-channel input head; x_l = bicubic LQ on the output grid
    z_l, z_h = E(x_l), E(x_h)     the teacher's 16-channel VAE encoder (frozen)
    z_r = G_mu(z_l; t, c)         the frozen teacher's one-step latent (GenDR Eq. 2)
    d = G_mu(.; t, c)             encoder-half features (down + mid blocks) of the frozen teacher UNet
                                  at t with the teacher's prompt; h_phi = DiscriminatorHeads

    L_phi   = sp[-h_phi(sg[d(z_h)])] + sp[h_phi(sg[d(z_g)])]
    L_theta = |z_r - z_g|_1 + lambda_1 sp[-h_sg[phi](d(z_g))],     lambda_1 = 0.05

Each step updates phi first, then theta with the just-updated heads held fixed (Algorithm 1 order).
Readings (Algorithm 1 is terse):

* ``h_sg[phi](z_g)`` in L_theta is read as ``h_sg[phi](d_g)`` -- the heads only ever see teacher
  features (they are defined on them in L_phi); the gradient reaches theta through the frozen
  teacher UNet (parameters stopped, input differentiable).
* The features see the clean latents at t = 499 (Algorithm 1 feeds z_g and z_h, not noised ones).
* |.|_1 is the mean absolute difference over all latent elements (as Stage II's L1).
* The positive prompt embedding c trains with the UNet (it is part of theta); the teacher's stays.

Output: checkpoints of G_theta (EMA in ``ema.safetensors``), ``metrics.jsonl``, and at the end
``<output_dir>/stage2_init.safetensors``: the Stage II hand-off (``psi <- theta`` with a re-initialised
192-channel output tail, a GenDR-Pix model file; :meth:`GenDRAdc.to_gendr_pix`). Give it to
``trainers.train_stage2`` as ``init_from`` (and, by default, as its discriminator backbone: its
encoder half is G_theta's). ``python -m trainers.train_stage1 --export RUN -o FILE`` writes it again.

Run:  python -m trainers.train_stage1 --config trainers/configs/stage1_tiny_cpu.json --out DIR
Paper scale (GenDR-Pix Sec. 5.1): AdamW, constant LR 1e-5, bf16, batch 512 of 512^2 patches, 8 GPUs,
until 20M images. Resume is automatic from the newest checkpoint in the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from gendr_core.checkpoint import save_model
from gendr_core.config import JSONConfig
from gendr_core.data import collate_pairs
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import CheckpointFormatError, ConfigError
from gendr_core.losses import discriminator_adv_loss, generator_adv_loss, l1_loss
from gendr_core.models import GenDRTeacher, frozen_parameters
from gendr_core.models.adc import GenDRAdc, GenDRAdcConfig
from gendr_core.models.discriminators import DiscriminatorHeads
from gendr_core.models.unet_features import encoder_channels, encoder_depths, encoder_features
from gendr_core.ops.resize import resize
from trainers.loop import (
    METRICS_FILE,
    DataConfig,
    JsonlLog,
    OptimConfig,
    adamw_pair,
    batch_shard,
    build_hr_dataset,
    ema_update,
    finish_distributed,
    gather_indices,
    latest_checkpoint,
    load_frozen_model,
    make_schedulers,
    reduce_for_log,
    refuse_deepspeed,
    resume_from_latest,
    save_checkpoint,
    setup_accelerator,
    step_loader,
    stop_step,
    write_run_config,
)
from trainers.loop import load_config as load_config_as
from trainers.train_stage2 import DiscConfig

logger = logging.getLogger("trainers.train_stage1")

HANDOFF_FILE = "stage2_init.safetensors"


@dataclass(frozen=True)
class Stage1LossConfig(JSONConfig):
    l1: float = 1.0  # |z_r - z_g|_1
    adversarial: float = 0.05  # lambda_1 (Algorithm 1)
    adv_start_step: int = 0  # adversarial terms (G and D) from this step

    def __post_init__(self) -> None:
        if self.l1 < 0 or self.adversarial < 0:
            raise ConfigError(f"loss weights must be >= 0, got l1={self.l1}, adversarial={self.adversarial}")
        if not (self.l1 or self.adversarial):
            raise ConfigError("loss.l1 and loss.adversarial are both 0: set at least one (Algorithm 1: 1 and 0.05)")


@dataclass(frozen=True)
class Stage1Config(JSONConfig):
    teacher: str | None = None  # the GenDR teacher G_mu (a "gendr" model file); required
    shuffle_factor: int = 8  # = the teacher VAE's factor
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=4, scales=(4,)))
    loss: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, disc_lr=1e-5, warmup_steps=0,
                                                                   schedule="constant", max_steps=10000))
    degradation: DegradationConfig | None = None  # None = Real-ESRGAN defaults
    output_dir: str = "runs/stage1"
    seed: int = 0
    mixed_precision: str = "no"
    threads: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3
    handoff_seed: int = 0  # generator seed of the Stage II tail re-initialisation

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ConfigError("teacher is required: the GenDR teacher model file G_mu (kind 'gendr'), e.g. the "
                              "export of trainers.train_gendr")


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> Stage1Config:
    return load_config_as(Stage1Config, path, overrides)


def teacher_features(teacher: GenDRTeacher, z: torch.Tensor, depths: tuple[int, ...]) -> list[torch.Tensor]:
    """``d = G_mu(z; t, c)``: encoder-half features of the frozen teacher UNet at its timestep with its
    own prompt (parameters frozen by the caller's model; differentiable w.r.t. ``z``)."""
    t = torch.full((z.shape[0],), teacher.config.timestep, device=z.device, dtype=torch.long)
    return encoder_features(teacher.unet, z, t, teacher.prompt_pos, depths)


@torch.no_grad()
def teacher_latents(teacher: GenDRTeacher, x_l: torch.Tensor, x_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_r, z_h)``: ``z_r = G_mu(E(x_l); t, c)`` (GenDR Eq. 2) and ``z_h = E(x_h)``, no graph."""
    return teacher.one_step(teacher.encode(x_l), teacher.prompt_pos), teacher.encode(x_h)


def discriminator_loss(heads: torch.nn.Module, teacher: GenDRTeacher, z_h: torch.Tensor, z_g: torch.Tensor,
                       depths: tuple[int, ...]) -> torch.Tensor:
    """``L_phi = sp[-h_phi(sg[d(z_h)])] + sp[h_phi(sg[d(sg[z_g])])]``: features without a graph, real and
    fake in one pass; gradients reach the heads only."""
    b = z_h.shape[0]
    with torch.no_grad():
        feats = teacher_features(teacher, torch.cat([z_h, z_g.detach()]), depths)
    logits = [m.float() for m in heads(feats)]
    return discriminator_adv_loss([m[:b] for m in logits], [m[b:] for m in logits])


def generator_terms(heads: torch.nn.Module, teacher: GenDRTeacher, z_g: torch.Tensor, z_r: torch.Tensor,
                    depths: tuple[int, ...], loss: Stage1LossConfig, use_adv: bool) -> dict[str, torch.Tensor]:
    """The weighted terms of ``L_theta = |z_r - z_g|_1 + lambda_1 sp[-h_sg[phi](d(z_g))]``: the heads run
    under :func:`frozen_parameters` (pass the unwrapped module, after their update), the teacher is
    frozen, so gradients reach ``z_g`` (theta) only. Keys: l1, adv_g (weights 0 skip)."""
    terms: dict[str, torch.Tensor] = {}
    if loss.l1:
        terms["l1"] = loss.l1 * l1_loss(z_g.float(), z_r.float())
    if use_adv and loss.adversarial:
        with frozen_parameters(heads):
            logits = heads(teacher_features(teacher, z_g, depths))
        terms["adv_g"] = loss.adversarial * generator_adv_loss([m.float() for m in logits])
    return terms


def export_handoff(run_or_ckpt: str | Path, out: str | Path, seed: int | None = None) -> Path:
    """EMA G_theta of a Stage I checkpoint -> the Stage II hand-off GenDR-Pix model file."""
    src = Path(run_or_ckpt)
    ckpt = src if (src / "train_state.json").is_file() else latest_checkpoint(src)
    if ckpt is None:
        raise FileNotFoundError(f"{src}: no Stage I checkpoint (train_state.json) under {src / 'checkpoints'}")
    train_cfg = json.loads((ckpt / "config.json").read_text())
    if "adc" not in train_cfg:
        raise CheckpointFormatError(f"{ckpt}/config.json has no 'adc' model config; is it a Stage I run?")
    model = GenDRAdc(GenDRAdcConfig.from_dict(train_cfg["adc"], where=f"{ckpt}/config.json: 'adc'"))
    model.load_state_dict({k: v.float() for k, v in load_file(str(ckpt / "ema.safetensors")).items()})
    seed = train_cfg.get("handoff_seed", 0) if seed is None else seed
    pix = model.to_gendr_pix(torch.Generator().manual_seed(seed))
    step = json.loads((ckpt / "train_state.json").read_text())["step"]
    meta = {"gendr_pix.train_step": str(step), "gendr_pix.stage": "stage1_handoff",
            "gendr_pix.stage1_config": json.dumps(train_cfg, sort_keys=True)}
    path = save_model(pix, out, metadata=meta)
    logger.info("Stage I step %d -> Stage II init %s (output tail re-initialised, seed %d)", step, path, seed)
    return path


def train(cfg: Stage1Config, resume: bool = True, stop_after: int | None = None) -> Path:
    """Train until ``optim.max_steps`` (or ``stop_after`` more steps); returns output_dir."""
    out = Path(cfg.output_dir)
    _, acc = setup_accelerator(out, cfg.mixed_precision, cfg.threads, cfg.seed)
    refuse_deepspeed(acc, "train_stage1")
    dev = acc.device
    bsz = cfg.data.batch_size
    shard = batch_shard(acc, bsz)

    # -- frozen teacher G_mu; generator G_theta (theta <- mu, fresh 192-channel head); heads h_phi
    teacher = load_frozen_model(cfg.teacher, dev, GenDRTeacher, "teacher",
                                "Stage I distils a GenDR teacher (kind 'gendr': 16-channel VAE + UNet)")
    model = GenDRAdc.from_teacher(teacher, cfg.shuffle_factor, torch.Generator().manual_seed(cfg.seed))
    if cfg.data.crop_size % model.pad_multiple or cfg.data.crop_size % teacher.pad_multiple:
        raise ConfigError(f"data.crop_size={cfg.data.crop_size} must be a multiple of {model.pad_multiple} (GenDR-Adc) "
                          f"and {teacher.pad_multiple} (teacher {cfg.teacher})")
    depths = encoder_depths(teacher.unet, cfg.disc.depths or None)
    cfg = replace(cfg, disc=replace(cfg.disc, depths=depths))
    heads = DiscriminatorHeads(encoder_channels(teacher.unet, depths), cfg.disc.head_channels, cfg.disc.spectral_norm)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    o = cfg.optim
    opt_g, opt_d = adamw_pair(model.parameters(), heads.parameters(), o)
    model, heads, opt_g, opt_d = acc.prepare(model, heads, opt_g, opt_d)
    unwrapped, heads_raw = acc.unwrap_model(model), acc.unwrap_model(heads)

    log, metrics = JsonlLog(out / "train_log.jsonl"), JsonlLog(out / METRICS_FILE)
    step, ema = resume_from_latest(acc, out, log, ema, resume)
    end = stop_step(step, o.max_steps, stop_after)
    ds = build_hr_dataset(cfg.data, cfg.degradation or DegradationConfig(), cfg.seed, o.max_steps * bsz)
    dl = step_loader(ds, cfg.data, step, end, shard, collate_pairs)
    resolved = {**json.loads(cfg.to_json()), "adc": unwrapped.config.to_dict()}
    if acc.is_main_process:
        write_run_config(out, resolved)
        log.write({"kind": "run", "step": step, "teacher": cfg.teacher, "disc_depths": list(depths)})

    scheds = make_schedulers(opt_g, opt_d, o, step, cfg.loss.adv_start_step)
    pbar = tqdm(total=end, initial=step, disable=not acc.is_main_process, desc="stage1", dynamic_ncols=True)
    t0, seen = time.time(), 0
    for batch in dl:
        hr = batch["hr"].to(dev)
        x_l = resize(batch["lr"].to(dev), tuple(hr.shape[-2:]), "bicubic")  # LQ on the output grid
        use_adv = cfg.loss.adversarial > 0 and step >= cfg.loss.adv_start_step
        z_r, z_h = teacher_latents(teacher, x_l, hr)
        with acc.autocast():
            z_g = model(x_l)  # (B,3,H,W) -> (B,C_lat,H/8,W/8)
        d_loss = None
        if use_adv:  # phi first (Algorithm 1)
            with acc.autocast():
                d_loss = discriminator_loss(heads, teacher, z_h, z_g, depths)
            opt_d.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            opt_d.step()
            scheds[1].step()
            opt_d.zero_grad(set_to_none=True)
        with acc.autocast():
            terms = generator_terms(heads_raw, teacher, z_g, z_r, depths, cfg.loss, use_adv)
        monitor = (z_g.detach().float() - z_h).abs().mean()
        loss = sum(terms.values())
        opt_g.zero_grad(set_to_none=True)
        acc.backward(loss)
        if o.grad_clip:
            acc.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt_g.step()
        scheds[0].step()
        ema_update(ema, unwrapped, o.ema_decay)
        step += 1
        seen += hr.shape[0]
        pbar.update(1)
        if step % cfg.log_every == 0 or step == end:
            scal = reduce_for_log(acc, {"loss": loss.detach(), "l1_hr_latent": monitor,
                                        **({"adv_d": d_loss.detach()} if d_loss is not None else {}),
                                        **{f"loss_{k}": v.detach() for k, v in terms.items()}})
            indices = gather_indices(acc, batch["index"])  # every process: a collective
            if acc.is_main_process:
                lr_now = scheds[0].get_last_lr()[0]
                log.write({"kind": "train", "step": step, "lr": lr_now,
                           "images_per_s": seen * shard.world_size / (time.time() - t0), **scal})
                metrics.write({"step": step, "loss": scal["loss"], "world_size": shard.world_size,
                               "samples_seen": step * bsz, "lr": lr_now,
                               **{k: v for k, v in scal.items() if k != "loss"}, "rank_indices": indices})
                pbar.set_postfix(loss=f"{scal['loss']:.4f}")
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(acc, out, step, ema, resolved, cfg.keep_checkpoints)
    pbar.close()
    if acc.is_main_process and step == o.max_steps:
        export_handoff(out, out / HANDOFF_FILE, cfg.handoff_seed)
    acc.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="JSON file parsed into Stage1Config")
    ap.add_argument("--out", "--output-dir", dest="output_dir", help="override output_dir")
    ap.add_argument("--teacher", help="override teacher (the GenDR teacher model file)")
    ap.add_argument("--max-steps", type=int, help="override optim.max_steps")
    ap.add_argument("--stop-after", type=int, help="stop after this many more steps")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--export", metavar="RUN", help="only write the Stage II hand-off of RUN (a Stage I output "
                    "folder or checkpoint) to -o FILE")
    ap.add_argument("-o", "--output", help="hand-off file for --export")
    args = ap.parse_args(argv)
    if args.export:
        if not args.output:
            ap.error("--export needs -o FILE")
        logging.basicConfig(level=logging.INFO)
        export_handoff(args.export, args.output)
        return 0
    if not args.config:
        ap.error("--config is required (or --export RUN -o FILE)")
    overrides: dict[str, object] = {}
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.teacher:
        overrides["teacher"] = args.teacher
    if args.max_steps:
        overrides["optim.max_steps"] = args.max_steps
    train(load_config(args.config, overrides), resume=not args.no_resume, stop_after=args.stop_after)
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
