"""One-step pixel-space training of a GenDR-Pix model against HQ targets.

This is the Stage II objective of GenDR-Pix Algorithm 1 with the HQ image standing in for
the teacher output x_r (no public GenDR teacher exists):

    L = L1(y, x_h) + l1 * softplus(-D(randpad(y))) + l2 * L_P(y, x_h) + l3 * L_F(y, x_h)

with lambda = (0.05, 1, 0.1) by default (Eq. 4, Alg. 1) and D a light discriminator on
pixel-unshuffled RandPad-ed images trained with softplus(-D(randpad(x_h))) +
softplus(D(randpad(sg[y]))). L_P is DISTS (or EA-DISTS) and needs ImageNet VGG16 weights
from a local file (``loss.perceptual_weights``); with none given, set ``loss.perceptual`` to 0.
``loss.l1`` weights the first term. ``loss.mse``, ``loss.psnr`` and ``loss.psnr_y`` add a
mean-squared-error term, a per-sample -PSNR term on RGB (``losses.neg_psnr_loss``) and one on the
BT.601 luma the benchmarks score (``losses.neg_psnr_y_loss``). None is in the paper: they are
PSNR-oriented fine-tuning objectives (MODEL_CARD.md, stages 4, 5, 7 and 8).

Negative embedding (for PadCFG): a fraction of every batch is trained with the negative
prompt embedding against a *blurred* HQ target. G(x, c-) thus learns a softer restoration,
and PadCFG's w*G(x,c+) + (1-w)*G(x,c-) = G+ + (w-1)(G+ - G-) extrapolates away from it,
adding detail for w > 1 at some PSNR cost, the trade-off of GenDR-Pix Fig. 13.

Run:  python -m trainers.train_pixel --config trainers/configs/gendr_pix_s.json [--out DIR]
Resume is automatic from the newest checkpoint in ``output_dir`` (``--no-resume`` to restart).
Distributed: ``torchrun --nproc_per_node N -m trainers.train_pixel ...`` (or ``accelerate launch``);
``data.batch_size`` is the global batch, split evenly over the processes, so N processes train
on the batches of a 1-process run (trainers/README.md, "Running on a cluster"). The negative
samples are the global batch's first ``round(neg_fraction * batch_size)`` items, wherever they
land; ``prompt_neg`` is fitted outside DDP's reducer and its gradient summed over the processes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gendr_core.config import GenDRPixConfig, JSONConfig
from gendr_core.data import collate_pairs
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import ConfigError
from gendr_core.losses import (
    DISTS,
    EADISTS,
    discriminator_adv_loss,
    generator_adv_loss,
    l1_loss,
    masked_fourier_loss,
    neg_psnr_loss,
    neg_psnr_y_loss,
)
from gendr_core.models import GenDRPix
from gendr_core.models.discriminators import PixelUnshuffleDiscriminator
from gendr_core.ops.padding import pad_fixed, sample_rand_pad
from gendr_core.ops.resize import resize
from trainers.loop import (
    METRICS_FILE,
    BatchShard,
    DataConfig,
    JsonlLog,
    OptimConfig,
    batch_shard,
    build_hr_dataset,
    check_accumulation,
    ema_update,
    exclude_from_ddp,
    finish_distributed,
    gather_indices,
    load_init_weights,
    load_val_set,
    lr_at,  # noqa: F401  (re-exported: the tests import it from here),
    make_schedulers,
    plot_curves,
    reduce_for_log,
    refuse_deepspeed,
    resume_from_latest,
    save_checkpoint,
    setup_accelerator,
    stop_step,
    step_loader,
    step_generator,
    sum_over_processes,
    validate,
    write_run_config,
)
from trainers.loop import load_config as load_config_as

logger = logging.getLogger("trainers.train_pixel")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LossConfig(JSONConfig):
    l1: float = 1.0
    mse: float = 0.0  # weight of a mean-squared-error term (PSNR-oriented fine-tuning; not in the paper)
    psnr: float = 0.0  # weight of losses.neg_psnr_loss (per-sample -PSNR in dB; not in the paper)
    psnr_y: float = 0.0  # weight of losses.neg_psnr_y_loss (per-sample -PSNR-Y in dB; not in the paper)
    adversarial: float = 0.05  # lambda_1
    perceptual: float = 1.0  # lambda_2 (DISTS)
    mfs: float = 0.1  # lambda_3
    mfs_half_width: int = 1
    perceptual_weights: str | None = None  # local ImageNet VGG16 weights file
    ea_dists: bool = False
    adv_start_step: int = 0
    neg_fraction: float = 0.25
    neg_start_step: int = 0  # negative-embedding samples only from this step (they only touch prompt_neg)
    neg_blur_sigma: tuple[float, float] = (1.0, 2.0)

    def __post_init__(self) -> None:
        weights = {"l1": self.l1, "mse": self.mse, "psnr": self.psnr, "psnr_y": self.psnr_y,
                   "adversarial": self.adversarial, "perceptual": self.perceptual, "mfs": self.mfs}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ConfigError(f"loss weights must be >= 0, got {bad}")
        if not any(weights.values()):
            raise ConfigError(f"all loss weights are 0 ({sorted(weights)}): set at least one, e.g. loss.l1 = 1")


@dataclass(frozen=True)
class PixelTrainConfig(JSONConfig):
    model: GenDRPixConfig = field(default_factory=GenDRPixConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    degradation: DegradationConfig | None = None  # None = Real-ESRGAN defaults
    disc_channels: tuple[int, ...] = (64, 128, 256)
    output_dir: str = "runs/pixel"
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1  # forward/backward passes per optimiser step, each of batch/(processes x this)
    zero_init_out: bool = True
    init_from: str | None = None
    threads: int = 0
    log_every: int = 25
    val_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if self.data.crop_size % self.model.pad_multiple:
            raise ConfigError(f"data.crop_size={self.data.crop_size} must be a multiple of the model's "
                              f"pad multiple {self.model.pad_multiple}")
        check_accumulation(self.gradient_accumulation_steps, self.data.batch_size)


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> PixelTrainConfig:
    """Parse a JSON config file (with its ``base`` chain); ``overrides`` set dotted fields."""
    return load_config_as(PixelTrainConfig, path, overrides)


# ----------------------------------------------------------------------------- helpers


def blur_radius(sigma: torch.Tensor) -> int:
    """Kernel radius of :func:`gaussian_blur` for a batch with these sigmas: ceil(3 max sigma)."""
    return int(math.ceil(3 * float(sigma.max())))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Per-sample isotropic Gaussian blur, (B,C,H,W) with sigma (B,), reflect padding; kernel
    radius ``radius`` (default :func:`blur_radius` of ``sigma``: pass the whole batch's radius to
    blur a slice of it exactly as the whole batch)."""
    r = blur_radius(sigma) if radius is None else radius
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, 2r+1)
    b, c, h, w = x.shape
    xp = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.conv2d(xp, kx, groups=b * c), ky, groups=b * c)
    return y.reshape(b, c, h, w)


def generator_terms(loss: LossConfig, y: torch.Tensor, hr: torch.Tensor, perceptual: torch.nn.Module | None,
                    disc: torch.nn.Module | None, pad_g) -> dict[str, torch.Tensor]:
    """The weighted generator terms of one forward pass (module docstring; weights 0 skip): l1, mse,
    psnr, psnr_y, mfs, perceptual, and with ``disc`` the adversarial term on ``y`` padded by the
    step's RandPad ``pad_g`` (Eq. 3)."""
    out: dict[str, torch.Tensor] = {}
    if loss.l1:
        out["l1"] = loss.l1 * l1_loss(y, hr)
    if loss.mse:
        out["mse"] = loss.mse * F.mse_loss(y, hr)
    if loss.psnr:
        out["psnr"] = loss.psnr * neg_psnr_loss(y, hr)
    if loss.psnr_y:
        out["psnr_y"] = loss.psnr_y * neg_psnr_y_loss(y, hr)
    if loss.mfs:
        out["mfs"] = loss.mfs * masked_fourier_loss(y, hr, half_width=loss.mfs_half_width)
    if perceptual is not None:
        out["perceptual"] = loss.perceptual * perceptual(y, hr).mean()
    if disc is not None:
        out["adv_g"] = loss.adversarial * generator_adv_loss(disc(pad_fixed(y, pad_g)))
    return out


# ----------------------------------------------------------------------------- main


def train(cfg: PixelTrainConfig, resume: bool = True, stop_after: int | None = None) -> Path:
    """Train until ``optim.max_steps`` (or ``stop_after`` more steps); returns output_dir."""
    out = Path(cfg.output_dir)
    _, acc = setup_accelerator(out, cfg.mixed_precision, cfg.threads, cfg.seed)
    bsz = cfg.data.batch_size  # the global batch
    shard = batch_shard(acc, bsz)  # this process's slice of it
    check_accumulation(cfg.gradient_accumulation_steps, bsz, shard.world_size)
    refuse_deepspeed(acc, "train_pixel")

    # -- model
    model = GenDRPix(cfg.model)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        model.prompt_pos.normal_(0, 0.1, generator=g)
        model.prompt_neg.normal_(0, 0.1, generator=g)
        if cfg.zero_init_out:
            model.unet.conv_out.weight.zero_()
            model.unet.conv_out.bias.zero_()
    if cfg.init_from:
        load_init_weights(model, cfg.init_from)
    model.prompt_pos.requires_grad_(True)
    model.prompt_neg.requires_grad_(True)
    # prompt_neg learns only from the negative samples, through torch.autograd.grad below, never
    # from the backward that DDP reduces: keep it out of DDP's reducer, sum its gradient ourselves
    exclude_from_ddp(model, ["prompt_neg"])
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    eval_model = copy.deepcopy(model).eval().requires_grad_(False)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    disc = PixelUnshuffleDiscriminator(cfg.model.shuffle_factor, cfg.disc_channels)
    perceptual = None
    if cfg.loss.perceptual > 0:
        cls = EADISTS if cfg.loss.ea_dists else DISTS
        perceptual = cls(cfg.loss.perceptual_weights).to(acc.device)

    o = cfg.optim
    opt_g = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=o.betas,
                              weight_decay=o.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=o.disc_lr, betas=(0.5, 0.99))
    model, disc, opt_g, opt_d = acc.prepare(model, disc, opt_g, opt_d)

    # -- resume
    log, metrics = JsonlLog(out / "train_log.jsonl"), JsonlLog(out / METRICS_FILE)
    step, ema = resume_from_latest(acc, out, log, ema, resume)
    end = stop_step(step, o.max_steps, stop_after)

    # -- data
    ds = build_hr_dataset(cfg.data, cfg.degradation or DegradationConfig(), cfg.seed, o.max_steps * bsz)
    dl = step_loader(ds, cfg.data, step, end, shard, collate_pairs)
    val_pairs = (load_val_set(cfg.data.val_dirs, cfg.data.val_crop, cfg.data.val_scale)
                 if acc.is_main_process and cfg.val_every else [])
    resolved = json.loads(cfg.to_json())
    if acc.is_main_process:
        write_run_config(out, resolved)

    unwrapped = acc.unwrap_model(model)
    scheds = make_schedulers(opt_g, opt_d, o, step, cfg.loss.adv_start_step)
    pbar = tqdm(total=end, initial=step, disable=not acc.is_main_process, desc="train", dynamic_ncols=True)
    t0, seen = time.time(), 0
    accum = cfg.gradient_accumulation_steps
    micro = shard.size // accum  # items per forward pass
    for batch in dl:
        gen = step_generator(cfg.seed, step)  # this step's RandPad offsets and blur sigmas: exact on resume
        hr = batch["hr"].to(acc.device)
        lr = batch["lr"].to(acc.device)
        b = hr.shape[0]  # this process's slice of the global batch (all of it with one process)
        x = resize(lr, tuple(hr.shape[-2:]), "bicubic")  # LR on the output grid
        # The whole batch trains the generator on HQ targets with the positive embedding.
        # k extra samples (the global batch's first k) train ONLY the negative embedding
        # (autograd.grad w.r.t. prompt_neg) towards blurred targets, so the UNet never learns to
        # blur (which cost PSNR when the negative samples shared the generator update).
        k = min(bsz, int(round(cfg.loss.neg_fraction * bsz))) if step >= cfg.loss.neg_start_step else 0
        use_adv = cfg.loss.adversarial > 0 and step >= cfg.loss.adv_start_step
        # the step's draws, in the order of a 1-pass step, for the whole global batch (same on every process)
        pad_g = sample_rand_pad(gen) if use_adv else None
        lo, hi = cfg.loss.neg_blur_sigma
        sig = lo + (hi - lo) * torch.rand(k, generator=gen) if k else None
        pad_real, pad_fake = (sample_rand_pad(gen), sample_rand_pad(gen)) if use_adv else (None, None)
        split = shard.world_size * accum > 1  # is a forward pass a part of the global batch?

        # -- generator: `accum` forward/backward passes, DDP's all-reduce on the last one only
        opt_g.zero_grad(set_to_none=True)
        parts, fakes, g_neg = [], [], None
        for a in range(accum):
            part = BatchShard(shard.rank * accum + a, shard.world_size * accum, bsz)  # its items of the global batch
            sl = slice(a * micro, (a + 1) * micro)
            with acc.no_sync(model) if a < accum - 1 else nullcontext():
                with acc.autocast():
                    y = model(x[sl], unwrapped.prompt_pos.expand(micro, -1, -1))
                y = y.float()
                losses = generator_terms(cfg.loss, y, hr[sl], perceptual, disc if use_adv else None, pad_g)
                loss = sum(losses.values())
                acc.backward(loss / accum if accum > 1 else loss)
            fakes.append(y.detach())
            k_part = part.local_count(k)
            if k_part:
                blurred = gaussian_blur(hr[sl][:k_part], sig[part.start : part.start + k_part].to(hr.device),
                                        blur_radius(sig))
                with acc.autocast():  # the bare module: this forward is not one that DDP reduces
                    y_neg = unwrapped(x[sl][:k_part], unwrapped.prompt_neg.expand(k_part, -1, -1)).float()
                neg_loss = l1_loss(y_neg, blurred)
                if split:  # this pass's share of the mean over the k samples
                    neg_loss = neg_loss * (k_part / k)
                (g,) = torch.autograd.grad(neg_loss, [unwrapped.prompt_neg])
                g_neg = g if g_neg is None else g_neg + g
                losses["neg_l1"] = neg_loss.detach()  # a share: summed over passes and processes in the log
            elif k:
                losses["neg_l1"] = torch.zeros((), device=hr.device)
            parts.append({"loss": loss.detach(), **{n: v.detach() for n, v in losses.items()}})
        if k:
            unwrapped.prompt_neg.grad = sum_over_processes(acc, g_neg if g_neg is not None
                                                          else torch.zeros_like(unwrapped.prompt_neg))
        if o.grad_clip:
            acc.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt_g.step()
        scheds[0].step()
        if use_adv:  # -- discriminator on the same passes
            opt_d.zero_grad(set_to_none=True)
            for a in range(accum):
                sl = slice(a * micro, (a + 1) * micro)
                with acc.no_sync(disc) if a < accum - 1 else nullcontext():
                    d_loss = discriminator_adv_loss(disc(pad_fixed(hr[sl], pad_real)), disc(pad_fixed(fakes[a], pad_fake)))
                    acc.backward(d_loss / accum if accum > 1 else d_loss)
                parts[a]["adv_d"] = d_loss.detach()
            opt_d.step()
            scheds[1].step()
        loss = parts[0]["loss"] if accum == 1 else sum(pt["loss"] for pt in parts) / accum
        losses = parts[0] if accum == 1 else {n: sum(pt[n] for pt in parts) / (1 if n == "neg_l1" else accum)
                                              for n in parts[0]}
        losses.pop("loss")
        ema_update(ema, unwrapped, o.ema_decay)
        step += 1
        seen += b
        pbar.update(1)
        if step % cfg.log_every == 0 or step == end:  # every process: the scalars are reduced over them
            means = {"loss": loss.detach(), **{f"loss_{n}": v.detach() for n, v in losses.items() if n != "neg_l1"}}
            scal = reduce_for_log(acc, means, {"loss_neg_l1": losses["neg_l1"]} if "neg_l1" in losses else {})
            indices = gather_indices(acc, batch["index"])
        if acc.is_main_process and (step % cfg.log_every == 0 or step == end):
            lr_now = scheds[0].get_last_lr()[0]
            rec = {"kind": "train", "step": step, "loss": scal["loss"], "lr": lr_now,
                   "images_per_s": seen * shard.world_size / (time.time() - t0), "scale": int(batch["scale"])}
            rec.update({f"loss_{n}": scal[f"loss_{n}"] for n in losses})
            log.write(rec)
            metrics.write({"step": step, "loss": scal["loss"], "world_size": shard.world_size,
                           "samples_seen": step * bsz, "lr": lr_now,
                           **{k_: v for k_, v in rec.items() if k_.startswith("loss_")}, "rank_indices": indices})
            pbar.set_postfix(loss=f"{scal['loss']:.4f}")
        if acc.is_main_process and val_pairs and (step % cfg.val_every == 0 or step == end):
            eval_model.load_state_dict({k: v.to(eval_model.prompt_pos.dtype) if v.is_floating_point() else v
                                        for k, v in ema.items()})
            rec = {"kind": "val", "step": step, **validate(eval_model, val_pairs, cfg.data.val_scale)}
            log.write(rec)
            logger.info("step %d: val PSNR-Y %.3f dB (bicubic %.3f dB)", step, rec["psnr_y"], rec["psnr_y_bicubic"])
            plot_curves(log, out / "curves.png")
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(acc, out, step, ema, resolved, cfg.keep_checkpoints)
    pbar.close()
    if acc.is_main_process:
        plot_curves(log, out / "curves.png")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="JSON file parsed into PixelTrainConfig")
    ap.add_argument("--out", "--output-dir", dest="output_dir",
                    help="override output_dir (logs, metrics.jsonl, checkpoints)")
    ap.add_argument("--max-steps", type=int, help="override optim.max_steps")
    ap.add_argument("--stop-after", type=int, help="stop after this many more steps (for time-boxed sessions)")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = ap.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.max_steps:
        overrides["optim.max_steps"] = args.max_steps
    cfg = load_config(args.config, overrides)
    train(cfg, resume=not args.no_resume, stop_after=args.stop_after)
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
