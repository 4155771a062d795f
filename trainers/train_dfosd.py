"""DFOSD (paper 003, Sec. 3): a distillation-free one-step SR model trained on real pairs only.

Generator G_theta (Sec. 3.1, Eq. 1): the SD2.1 VAE (frozen) and UNet (frozen + LoRA rank 16,
alpha 16, adapter ``"gen"``) with a learnable text embedding c (the model's ``prompt_pos``),
``z^_H = (z_L - sqrt(1 - abar_T) eps_theta(z_L; T, c)) / sqrt(abar_T)``, ``x^_H = D(z^_H)``, T = 999.

Noise-aware discriminator (Sec. 3.2, Eq. 2-4; gendr_core.models.noise_aware): a second copy of the
SD2.1 UNet's down + mid blocks (LoRA rank 16) and an MLP head on ``F(z, t)``, t uniform in [0, 999]::

    L_D = sp[-D(F(z_H, t))] + sp[D(F(sg[z^_H], t))]                      (Eq. 3, read with z^_H as the negative)
    L_G = L_spatial + lambda_1 sp[-D(F(z^_H, t))],                        (Eq. 2, 8)
    L_spatial = MSE(x^_H, x_H) + lambda_2 EA-DISTS(x^_H, x_H)            (Eq. 5-8, gendr_core.losses.dfosd)

The paper gives no values for lambda_1, lambda_2: our defaults are lambda_2 = 1 (the DISTS scale of the
other trainers) and lambda_1 = 0.05 (GenDR-Pix's adversarial weight); both are config keys. The
discriminator sees the generator's embedding (detached) as its text conditioning: DFOSD has no prompt.
D is updated first, then G with D's parameters held fixed. Paper scale (Sec. 4): AdamW, LR 5e-5 for
G and D, batch 16, 100k iterations, 4 A100s.

Output: checkpoints (EMA of the generator's LoRA + embedding), ``metrics.jsonl`` and, when finished,
``<output_dir>/dfosd.safetensors``: a ``dfosd`` model file with the LoRA merged into the UNet.

Run:  python -m trainers.train_dfosd --config trainers/configs/dfosd_tiny_cpu.json --out DIR
      (paper scale: --sd21-base v2-1_512-ema-pruned.safetensors --vgg16 FILE)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from gendr_core.checkpoint import save_model
from gendr_core.config import DFOSDConfig, JSONConfig
from gendr_core.data import collate_pairs
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import CheckpointFormatError, ConfigError
from gendr_core.losses import EADISTS, dfosd_spatial_loss, discriminator_adv_loss, generator_adv_loss
from gendr_core.models import DFOSD, LoRAConfig, add_lora_adapter, adapter_parameters, frozen_parameters
from gendr_core.models.noise_aware import DFOSD_LORA, NoiseAwareDiscriminator
from gendr_core.ops.resize import resize
from trainers.loop import (
    METRICS_FILE,
    DataConfig,
    JsonlLog,
    OptimConfig,
    adamw_pair,
    average_gradients,
    batch_shard,
    build_hr_dataset,
    ema_update,
    finish_distributed,
    latest_checkpoint,
    load_trainer_state,
    make_schedulers,
    reduce_for_log,
    refuse_deepspeed,
    resume_from_latest,
    save_checkpoint,
    save_trainer_state,
    setup_accelerator,
    step_generator,
    step_loader,
    stop_step,
    trainer_state_path,
    write_run_config,
)
from trainers.loop import load_config as load_config_as

logger = logging.getLogger("trainers.train_dfosd")

EXPORT_FILE = "dfosd.safetensors"
ADAPTER = "gen"


@dataclass(frozen=True)
class DFOSDLossConfig(JSONConfig):
    mse: float = 1.0
    ea_dists: float = 1.0  # lambda_2 (not given by the paper)
    adversarial: float = 0.05  # lambda_1 (not given by the paper)
    vgg16: str | None = None  # local ImageNet VGG16 weights for EA-DISTS
    random_vgg: bool = False  # tiny runs only: EA-DISTS on a random VGG16 (not perceptual)

    def __post_init__(self) -> None:
        if self.ea_dists and not (self.vgg16 or self.random_vgg):
            raise ConfigError("loss.ea_dists > 0 needs loss.vgg16 (local VGG16 weights, --vgg16 FILE); "
                              "set loss.ea_dists = 0 to train without EA-DISTS")


@dataclass(frozen=True)
class DFOSDTrainConfig(JSONConfig):
    model: DFOSDConfig | None = None  # layout when built without sd21_base (tiny runs)
    sd21_base: str | None = None  # SD2.1 single file (LDM keys, with VAE) or diffusers folder
    lora: LoRAConfig = DFOSD_LORA  # generator and discriminator (rank 16, alpha 16)
    nad_hidden: int = 256
    loss: DFOSDLossConfig = field(default_factory=DFOSDLossConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_size=512, batch_size=16, scales=(4,)))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, disc_lr=5e-5, warmup_steps=0,
                                                                   schedule="constant", max_steps=100_000))
    degradation: DegradationConfig | None = None
    output_dir: str = "runs/dfosd"
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    threads: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if self.sd21_base is None and self.model is None:
            raise ConfigError("give sd21_base (an SD2.1 checkpoint file or diffusers folder with its VAE) or, for "
                              "a from-scratch tiny run, model (a DFOSD layout)")


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> DFOSDTrainConfig:
    return load_config_as(DFOSDTrainConfig, path, overrides)


def build_dfosd(cfg: DFOSDTrainConfig):
    """DFOSD before training: SD2.1 UNet + VAE from ``sd21_base`` (or ``model``, random), with the
    generator's LoRA adapter (only the adapter and the embedding train), and a copy of the plain
    SD2.1 UNet for the noise-aware discriminator. Returns (model, nad_unet)."""
    base_cfg = cfg.model or DFOSDConfig()
    unet_sd = vae_sd = None
    if cfg.sd21_base:
        from gendr_core.formats import read_source

        _, src = read_source(cfg.sd21_base)
        if src.vae_sd is None:
            raise CheckpointFormatError(f"sd21_base={cfg.sd21_base}: no VAE in it; DFOSD needs SD2.1's VAE "
                                        "(a full single-file checkpoint, or a diffusers folder with vae/)")
        base_cfg = replace(base_cfg, unet=src.unet_config, vae=src.vae_config)
        unet_sd, vae_sd = src.unet_sd, src.vae_sd
    model = DFOSD(base_cfg)
    if unet_sd is not None:
        model.unet.load_state_dict(unet_sd)
        model.vae.load_state_dict(vae_sd)
    model.requires_grad_(False)
    nad_unet = copy.deepcopy(model.unet)  # D is initialised from the same pretrained UNet (Sec. 3.2)
    add_lora_adapter(model.unet, ADAPTER, cfg.lora)
    model.prompt_pos.requires_grad_(True)  # the learnable text embedding
    return model, nad_unet


def merged_state_dict(model: DFOSD) -> dict[str, torch.Tensor]:
    """The model's state dict with the LoRA adapter merged into the UNet weights (peft ``merge``)
    and the adapter tensors dropped: the layout of a plain :class:`DFOSD`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    m = copy.deepcopy(model)
    for mod in m.unet.modules():
        if isinstance(mod, BaseTunerLayer):
            mod.merge(adapter_names=[ADAPTER])
    return {k.replace(".base_layer.", "."): v for k, v in m.state_dict().items() if "lora_" not in k}


def export(run_or_ckpt: str | Path, out: str | Path) -> Path:
    """EMA generator of a checkpoint -> a ``dfosd`` model file (LoRA merged)."""
    src = Path(run_or_ckpt)
    ckpt = src if (src / "train_state.json").is_file() else latest_checkpoint(src)
    if ckpt is None:
        raise FileNotFoundError(f"{src}: no checkpoint folder with train_state.json under {src / 'checkpoints'}")
    train_cfg = json.loads((ckpt / "config.json").read_text())
    if "dfosd_model" not in train_cfg:
        raise CheckpointFormatError(f"{ckpt}/config.json has no 'dfosd_model'; is it a train_dfosd run?")
    mcfg = DFOSDConfig.from_dict(train_cfg["dfosd_model"], where=f"{ckpt}/config.json")
    model = DFOSD(mcfg)
    add_lora_adapter(model.unet, ADAPTER, LoRAConfig.from_dict(train_cfg["lora"], where=f"{ckpt}/config.json"))
    model.load_state_dict({k: v.float() for k, v in load_file(str(ckpt / "ema.safetensors")).items()})
    plain = DFOSD(mcfg)
    plain.load_state_dict(merged_state_dict(model))
    step = json.loads((ckpt / "train_state.json").read_text())["step"]
    meta = {"gendr_pix.train_step": str(step), "gendr_pix.stage": "dfosd",
            "gendr_pix.train_config": json.dumps(train_cfg, sort_keys=True)}
    path = save_model(plain, out, metadata=meta)
    logger.info("exported DFOSD step %d to %s", step, path)
    return path


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of ``module`` that train (LoRA, embedding, head), by name."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    want = {n for n, p in params.items() if p.requires_grad}
    if set(state) != want:
        raise ConfigError(f"trainer state of {type(module).__name__}: {len(want - set(state))} missing, "
                          f"{len(set(state) - want)} unexpected parameters (same config as the run?)")
    for n, v in state.items():
        params[n].copy_(v)


def dfosd_losses(model: DFOSD, nad: NoiseAwareDiscriminator, x_l: torch.Tensor, x_h: torch.Tensor,
                 loss: DFOSDLossConfig, ea_dists: torch.nn.Module | None, gen: torch.Generator,
                 update_d) -> dict[str, torch.Tensor]:
    """One DFOSD iteration up to the generator loss: ``update_d(L_D)`` steps the NAD first (on
    F(z_H, t) vs F(sg[z^_H], t)), then the weighted generator terms are returned (NAD frozen; keys mse,
    ea_dists, adv_g, and ``adv_d`` detached)."""
    b = x_h.shape[0]
    with torch.no_grad():
        z_l, z_h = model.encode(x_l), model.encode(x_h)
    cond = model.prompt_pos
    z_g = model.one_step(z_l, cond)  # z^_H, Eq. 1
    x_g = model.decode(z_g)  # x^_H in [0, 1] (unclamped)
    terms: dict[str, torch.Tensor] = {}
    if loss.adversarial:
        t = nad.sample_t(2 * b, gen).to(x_h.device)
        noise = torch.randn((2 * b, *z_h.shape[1:]), generator=gen).to(x_h.device)
        logits, _ = nad(torch.cat([z_h, z_g.detach()]), cond.detach(), t, noise)  # F(., t), Eq. 4
        d_loss = discriminator_adv_loss(logits[:b].float(), logits[b:].float())
        update_d(d_loss)
        with frozen_parameters(nad):
            fake, _ = nad(z_g, cond.detach(), t[b:], noise[b:])
        terms["adv_g"] = loss.adversarial * generator_adv_loss(fake.float())
        terms["adv_d"] = d_loss.detach()
    if ea_dists is not None and loss.ea_dists:
        sp = dfosd_spatial_loss(x_g, x_h, ea_dists, loss.ea_dists)
        terms["mse"], terms["ea_dists"] = loss.mse * sp["mse"], loss.ea_dists * sp["ea_dists"]
    else:
        terms["mse"] = loss.mse * torch.nn.functional.mse_loss(x_g.float(), x_h.float())
    return terms


def train(cfg: DFOSDTrainConfig, resume: bool = True, stop_after: int | None = None) -> Path:
    """Train until ``optim.max_steps`` (or ``stop_after`` more steps); returns output_dir."""
    out = Path(cfg.output_dir)
    _, acc = setup_accelerator(out, cfg.mixed_precision, cfg.threads, cfg.seed)
    refuse_deepspeed(acc, "train_dfosd")
    dev = acc.device
    bsz = cfg.data.batch_size
    shard = batch_shard(acc, bsz)
    o = cfg.optim

    model, nad_unet = build_dfosd(cfg)
    model = model.to(dev)
    nad = NoiseAwareDiscriminator(nad_unet, cfg.lora, cfg.nad_hidden).to(dev)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    ea = EADISTS(cfg.loss.vgg16, allow_random=cfg.loss.random_vgg, seed=cfg.seed).to(dev) if cfg.loss.ea_dists else None
    g_params = adapter_parameters(model.unet, ADAPTER) + [model.prompt_pos]
    d_params = nad.trainable_parameters()
    opt_g, opt_d = adamw_pair(g_params, d_params, o)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    log, metrics = JsonlLog(out / "train_log.jsonl"), JsonlLog(out / METRICS_FILE)
    step, ema = resume_from_latest(acc, out, log, ema, resume)
    opts = {"g": opt_g, "d": opt_d}
    if step:  # live trainable weights + optimiser states (safetensors, written before each checkpoint)
        groups = load_trainer_state(trainer_state_path(out, step), opts)
        load_trainable(model, groups["generator"])
        load_trainable(nad, groups["nad"])
    sched_g, sched_d = make_schedulers(opt_g, opt_d, o, step, d_start=0)  # both schedules count from step 0
    end = stop_step(step, o.max_steps, stop_after)
    ds = build_hr_dataset(cfg.data, cfg.degradation or DegradationConfig(), cfg.seed, o.max_steps * bsz)
    dl = step_loader(ds, cfg.data, step, end, shard, collate_pairs)
    resolved = {**json.loads(cfg.to_json()), "dfosd_model": model.config.to_dict()}
    if acc.is_main_process:
        write_run_config(out, resolved)
        log.write({"kind": "run", "step": step, "ea_dists": "random VGG16" if cfg.loss.random_vgg else cfg.loss.vgg16})

    def update_d(d_loss: torch.Tensor) -> None:
        opt_d.zero_grad(set_to_none=True)
        acc.backward(d_loss)
        average_gradients(acc, d_params)
        opt_d.step()
        sched_d.step()
        opt_d.zero_grad(set_to_none=True)

    pbar = tqdm(total=end, initial=step, disable=not acc.is_main_process, desc="dfosd", dynamic_ncols=True)
    t0, seen = time.time(), 0
    for batch in dl:
        x_h = batch["hr"].to(dev)
        x_l = resize(batch["lr"].to(dev), tuple(x_h.shape[-2:]), "bicubic")
        with acc.autocast():
            terms = dfosd_losses(model, nad, x_l, x_h, cfg.loss, ea, step_generator(cfg.seed, step), update_d)
        stats = {"adv_d": terms.pop("adv_d")} if "adv_d" in terms else {}
        loss = sum(terms.values())
        opt_g.zero_grad(set_to_none=True)
        acc.backward(loss)
        average_gradients(acc, g_params)
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(g_params, o.grad_clip)
        opt_g.step()
        sched_g.step()
        ema_update(ema, model, o.ema_decay)
        step += 1
        seen += x_h.shape[0]
        pbar.update(1)
        if step % cfg.log_every == 0 or step == end:
            scal = reduce_for_log(acc, {"loss": loss.detach(), **stats,
                                        **{f"loss_{k}": v.detach() for k, v in terms.items()}})
            if acc.is_main_process:
                lr_now = sched_g.get_last_lr()[0]
                log.write({"kind": "train", "step": step, "lr": lr_now,
                           "images_per_s": seen * shard.world_size / (time.time() - t0), **scal})
                metrics.write({"step": step, "loss": scal["loss"], "world_size": shard.world_size,
                               "samples_seen": step * bsz, "lr": lr_now, **{k: v for k, v in scal.items() if k != "loss"}})
                pbar.set_postfix(loss=f"{scal['loss']:.4f}")
        if step % cfg.save_every == 0 or step == end:
            if acc.is_main_process:
                save_trainer_state(trainer_state_path(out, step), {"generator": trainable_state(model),
                                                                   "nad": trainable_state(nad)},
                                   opts, cfg.keep_checkpoints)
            save_checkpoint(acc, out, step, ema, resolved, cfg.keep_checkpoints)
    pbar.close()
    if acc.is_main_process and step == o.max_steps:
        export(out, out / EXPORT_FILE)
    acc.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="JSON file parsed into DFOSDTrainConfig")
    ap.add_argument("--out", "--output-dir", dest="output_dir", help="override output_dir")
    ap.add_argument("--sd21-base", help="override sd21_base (SD2.1 checkpoint file or diffusers folder)")
    ap.add_argument("--vgg16", help="override loss.vgg16 (local VGG16 weights for EA-DISTS)")
    ap.add_argument("--max-steps", type=int, help="override optim.max_steps")
    ap.add_argument("--stop-after", type=int, help="stop after this many more steps")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = ap.parse_args(argv)
    names = {"output_dir": "output_dir", "sd21_base": "sd21_base", "vgg16": "loss.vgg16",
             "max_steps": "optim.max_steps"}
    overrides = {key: getattr(args, a) for a, key in names.items() if getattr(args, a)}
    train(load_config(args.config, overrides), resume=not args.no_resume, stop_after=args.stop_after)
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
