"""The GenDR teacher (GenDR Sec. 3, Algorithms 1-2, Sec. 4.1) in three phases, one per run folder:

``vae16_base``  SD2.1-VAE16 (Algorithm 1): the SD2.1 UNet moved into a 16-channel VAE's latent space,
                ``L = ||eps_theta(z_t; t, c) - eps||^2 - lambda cos(h_E, h(h_t))``, lambda = 0.1, t in
                {0..999}, h_t = output of the first down block, h = REPA MLP projector, h_E = DINOv2
                patch features of the image (Eq. 3).
``regression``  Algorithm 2, first loop: the one-step generator z_g = G_theta(z_l; t_s, c) (GenDR Eq. 2,
                alpha = beta = 0.5, t_s = 500 -> step 499) initialised from the base,
                ``L = ||z_g - z_h||^2 + L_percep``.
``cida``        Algorithm 2, second loop (gendr_core.losses.distill): heads h, then the real/fake LoRA
                score networks (rank 64, alpha 128, one shared frozen base f_mu), then
                ``lambda_1 L_cid + lambda_2 L_adv + lambda_3 L_repa`` with lambda = 10 (first 10k) / 1,
                0.01, 0.1; kappa = 7.5, xi = 1.2, omega = C / sg||z_h - f_phi,kappa||.

Every phase writes ``<out>/metrics.jsonl``, checkpoints (resume is automatic) and, when finished,
``<out>/gendr.safetensors``: a ``gendr`` model file (UNet + VAE16 + prompt embeddings). The
``vae16_base`` file holds the eps-predicting base (a training base, not a restorer); the next phases
read it (``init_from`` / ``score_base``).

Readings and choices (each a config key where it can be one):

* conv_in/conv_out 4 -> 16 (``gendr_core.models.widen_io``): latent channel k of the new VAE gets the
  SD2.1 weights of channel k mod 4, input weights divided by 4, so a latent whose 16 channels repeat a
  4-channel one gives SD2.1's response; the rest of the UNet is SD2.1's. GenDR does not say how the
  layers were initialised.
* VAE scaling/shift: from the VAE folder's ``config.json`` (``scaling_factor``, ``shift_factor``); when
  the folder has no ``scaling_factor`` they are estimated on ``vae_estimate_batches`` training batches
  (shift = latent mean, scaling = 1 / latent std) and stored in the model config.
* Prompts: we have no text encoder. ``c`` and ``empty`` are fixed embeddings, from ``prompts`` (a
  safetensors file with ``prompt_pos``/``prompt_neg``; tokens x cross_attention_dim) or, without it, the
  model's own ``prompt_pos`` and zeros. The base phase drops ``c`` to ``empty`` with probability
  ``cfg_dropout`` so CFG has an unconditional branch to read.
* L_percep of the regression phase is DISTS between the decoded latents ``D(z_g)`` and ``D(z_h)``
  (the frozen VAE decoder in the graph); it needs local VGG16 weights (``regression.vgg16``), or
  ``regression.random_vgg`` for tiny runs (then it is not perceptual and the log says so).
* The CiDA discriminator reads the real-score network's encoder features (f_sg[phi], Algorithm 2) at
  the score step t with the latents forward-diffused by the same noise (DMD2's reading). The REPA
  projector of the CiDA phase is new (the base phase's projector is not part of the model file).
* Multi-process runs average every gradient over the processes explicitly (:func:`average_gradients`):
  the score networks and heads are called through methods, not ``forward``, which DDP's reducer needs.

Run:  python -m trainers.train_gendr --config trainers/configs/gendr_base_tiny_cpu.json --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gendr_core.checkpoint import load_model, save_model
from gendr_core.config import GenDRConfig, JSONConfig, VAEConfig
from gendr_core.data import collate_pairs
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import CheckpointFormatError, ConfigError
from gendr_core.losses import (
    DISTS,
    CiDAConfig,
    base_repa_loss,
    cid_generator_term,
    repa_loss,
    score_discriminator_losses,
    score_network_losses,
)
from gendr_core.models import GenDRTeacher, LoRAConfig, RepaProjector, ScoreNetworks, build_unet, widen_io
from gendr_core.models.discriminators import DiscriminatorHeads
from gendr_core.models.dino import DINOV2_VITB14, DinoEncoder, ViTConfig, load_dino_encoder
from gendr_core.models.unet_features import capture_output, encoder_channels, encoder_depths
from gendr_core.ops.diffusion import forward_diffuse, sample_timesteps, scaled_linear_alphas_cumprod
from gendr_core.ops.resize import resize
from trainers.loop import (
    METRICS_FILE,
    DataConfig,
    JsonlLog,
    OptimConfig,
    average_gradients,
    batch_shard,
    build_hr_dataset,
    ema_update,
    finish_distributed,
    latest_checkpoint,
    load_trainer_state,
    make_scheduler,
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
from trainers.train_stage2 import DiscConfig

logger = logging.getLogger("trainers.train_gendr")

PHASES = ("vae16_base", "regression", "cida")
EXPORT_FILE = "gendr.safetensors"


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RepaConfig(JSONConfig):
    weight: float = 0.1  # lambda of Algorithm 1 (the base); CiDA uses cida.lambda_repa
    hidden: int = 2048
    layers: int = 3


@dataclass(frozen=True)
class RegressionLossConfig(JSONConfig):
    mse: float = 1.0
    perceptual: float = 1.0
    vgg16: str | None = None  # local ImageNet VGG16 weights for DISTS
    random_vgg: bool = False  # tiny runs only: DISTS on a random VGG16 (not perceptual)

    def __post_init__(self) -> None:
        if self.perceptual and not (self.vgg16 or self.random_vgg):
            raise ConfigError("regression.perceptual > 0 needs regression.vgg16 (a local VGG16 weights file, or "
                              "--vgg16 FILE); set regression.perceptual = 0 to train on the MSE alone")


@dataclass(frozen=True)
class GenDRTrainConfig(JSONConfig):
    phase: str = "vae16_base"
    model: GenDRConfig | None = None  # layout for a base built without files (tiny runs)
    sd21_base: str | None = None  # vae16_base: SD2.1 single file (.safetensors/.ckpt, LDM keys) or diffusers folder
    vae: str | None = None  # vae16_base: local diffusers folder of the 16-channel VAE (ostris/vae-kl-f8-d16)
    vae_estimate_batches: int = 8
    init_from: str | None = None  # regression: the vae16_base export; cida: the regression export
    score_base: str | None = None  # cida: f_mu, the vae16_base export
    prompts: str | None = None  # fixed embeddings c / empty (prompt_pos / prompt_neg)
    cfg_dropout: float = 0.1
    dinov2: str | None = None  # local DINOv2 safetensors (gendr_core.models.dino)
    dino: ViTConfig = DINOV2_VITB14
    dino_random_seed: int | None = None  # tiny runs only: a random encoder instead of dinov2
    repa: RepaConfig = field(default_factory=RepaConfig)
    regression: RegressionLossConfig = field(default_factory=lambda: RegressionLossConfig(perceptual=0.0))
    cida: CiDAConfig = field(default_factory=CiDAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_size=512, batch_size=4, scales=(4,)))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, disc_lr=1e-5, warmup_steps=0,
                                                                   schedule="constant", max_steps=10000))
    degradation: DegradationConfig | None = None
    output_dir: str = "runs/gendr"
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    threads: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ConfigError(f"phase={self.phase!r} must be one of {list(PHASES)}")
        if self.phase == "vae16_base" and self.sd21_base is None and self.model is None:
            raise ConfigError("phase 'vae16_base' needs 'sd21_base' (an SD2.1 checkpoint file or diffusers folder) or, "
                              "for a from-scratch tiny run, 'model' (a GenDR layout)")
        if self.phase in ("regression", "cida") and not self.init_from:
            raise ConfigError(f"phase {self.phase!r} needs init_from: the "
                              f"{'vae16_base' if self.phase == 'regression' else 'regression'} export")
        if self.phase == "cida" and not self.score_base:
            raise ConfigError("phase 'cida' needs score_base: the vae16_base export (the frozen base f_mu)")
        if self.phase in ("vae16_base", "cida") and not (self.dinov2 or self.dino_random_seed is not None):
            raise ConfigError(f"phase {self.phase!r} needs dinov2 (a local DINOv2 ViT-B/14 safetensors file, "
                              "--dinov2 FILE) for REPA; tiny runs may set dino_random_seed instead")
        if not 0 <= self.cfg_dropout < 1:
            raise ConfigError(f"cfg_dropout={self.cfg_dropout} must be in [0, 1)")


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> GenDRTrainConfig:
    return load_config_as(GenDRTrainConfig, path, overrides)


# ----------------------------------------------------------------------------- building


def vae_scaling_from_folder(folder: Path) -> tuple[float, float | None] | None:
    """(scaling_factor, shift_factor) from a diffusers VAE folder's config.json, or None without
    ``scaling_factor``."""
    data = json.loads((folder / "config.json").read_text())
    if data.get("scaling_factor") is None:
        return None
    return float(data["scaling_factor"]), (None if data.get("shift_factor") is None else float(data["shift_factor"]))


@torch.no_grad()
def estimate_vae_scaling(vae: torch.nn.Module, images: list[torch.Tensor]) -> tuple[float, float]:
    """(scaling, shift) with ``scaling = 1 / std`` and ``shift = mean`` of the unscaled latent modes of
    ``images`` (each (B,3,H,W) in [0,1]): ``(z - shift) * scaling`` then has unit variance."""
    zs = [vae.encode(x.to(next(vae.parameters()).dtype) * 2 - 1).latent_dist.mode().float().flatten() for x in images]
    z = torch.cat(zs)
    return float(1.0 / z.std().clamp_min(1e-6)), float(z.mean())


def build_base(cfg: GenDRTrainConfig, sample_batches: list[torch.Tensor]) -> GenDRTeacher:
    """SD2.1-VAE16 before training: the SD2.1 UNet (``sd21_base``) widened to the VAE's latent channels and
    the 16-channel VAE (``vae``); either may come from ``model`` (random init) instead."""
    from gendr_core.formats import _load_component, read_source

    start = cfg.model or GenDRConfig()
    unet_sd = vae_sd = None
    unet_cfg, vae_cfg = start.unet, start.vae
    if cfg.vae:
        folder = Path(cfg.vae).expanduser()
        vae_cfg, vae_sd = _load_component(folder, "vae")
        scaling = vae_scaling_from_folder(folder)
        if scaling is not None:
            vae_cfg = replace(vae_cfg, scaling_factor=scaling[0], shift_factor=scaling[1])
    c = vae_cfg.latent_channels
    if cfg.sd21_base:
        _, src = read_source(cfg.sd21_base)
        if src.unet_config.in_channels != 4:
            raise CheckpointFormatError(f"sd21_base={cfg.sd21_base}: a UNet with {src.unet_config.in_channels} input channels; "
                                        "the base phase starts from SD2.1's 4-channel UNet")
        unet = build_unet(src.unet_config)
        unet.load_state_dict(src.unet_sd)
        widen_io(unet, c)  # 4 -> 16 (module docstring)
        unet_sd, unet_cfg = unet.state_dict(), replace(src.unet_config, in_channels=c, out_channels=c)
    gcfg = replace(start, unet=unet_cfg, vae=vae_cfg)
    model = GenDRTeacher(gcfg)
    if unet_sd is not None:
        model.unet.load_state_dict(unet_sd)
    if vae_sd is not None:
        model.vae.load_state_dict(vae_sd)
    if cfg.vae and vae_scaling_from_folder(Path(cfg.vae).expanduser()) is None:
        scale, shift = estimate_vae_scaling(model.vae, sample_batches)
        logger.info("%s: no scaling_factor in config.json; estimated scaling %.5f, shift %.5f on %d batches",
                    cfg.vae, scale, shift, len(sample_batches))
        model.config = replace(gcfg, vae=replace(gcfg.vae, scaling_factor=scale, shift_factor=shift))
    return model


def load_generator(path: str, device: torch.device, what: str) -> GenDRTeacher:
    model = load_model(path, device=device, dtype=torch.float32)
    if not isinstance(model, GenDRTeacher):
        raise ConfigError(f"{what}={path} is a {model.kind!r} model; the GenDR phases read 'gendr' files "
                          "(exports of trainers.train_gendr)")
    return model


def build_dino(cfg: GenDRTrainConfig, device: torch.device) -> DinoEncoder:
    if cfg.dinov2:
        return load_dino_encoder(cfg.dinov2, cfg.dino).to(device)
    logger.warning("REPA with a RANDOM encoder (dino_random_seed=%s): a tiny-run stand-in, not DINOv2",
                   cfg.dino_random_seed)
    return DinoEncoder(cfg.dino).init_random(cfg.dino_random_seed or 0).to(device)


def prompt_pair(cfg: GenDRTrainConfig, model: GenDRTeacher) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, empty), (1,L,D) each, fixed (module docstring); ``prompts`` also sets the model's own."""
    d = model.config.unet.cross_attention_dim
    if cfg.prompts:
        from gendr_core.formats import read_prompt_embeds

        pos, neg = read_prompt_embeds(cfg.prompts, d)
        if pos.shape[1] != model.config.prompt_tokens:
            raise ConfigError(f"prompts={cfg.prompts}: {pos.shape[1]} tokens, the model has "
                              f"prompt_tokens={model.config.prompt_tokens}")
        with torch.no_grad():
            model.prompt_pos.copy_(pos)
            model.prompt_neg.copy_(neg if neg is not None else torch.zeros_like(pos))
    c = model.prompt_pos.detach().clone()
    return c, model.prompt_neg.detach().clone() if cfg.prompts else torch.zeros_like(c)


def trainable(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- main


def train(cfg: GenDRTrainConfig, resume: bool = True, stop_after: int | None = None) -> Path:
    """Run ``cfg.phase`` until ``optim.max_steps`` (or ``stop_after`` more steps); returns output_dir."""
    out = Path(cfg.output_dir)
    _, acc = setup_accelerator(out, cfg.mixed_precision, cfg.threads, cfg.seed)
    refuse_deepspeed(acc, "train_gendr")
    dev = acc.device
    bsz = cfg.data.batch_size
    shard = batch_shard(acc, bsz)
    o = cfg.optim
    ds = build_hr_dataset(cfg.data, cfg.degradation or DegradationConfig(), cfg.seed, o.max_steps * bsz)

    # -- models of the phase; `gen_model` is what the EMA tracks and the export writes
    dino = projector = scores = heads = perceptual = None
    if cfg.phase == "vae16_base":
        samples = [collate_pairs([ds[i] for i in range(k * bsz, (k + 1) * bsz)])["hr"]
                   for k in range(cfg.vae_estimate_batches)] if cfg.vae else []
        gen_model = build_base(cfg, samples).to(dev)
    else:
        gen_model = load_generator(cfg.init_from, dev, "init_from")
    gen_model.vae.requires_grad_(False).eval()
    gen_model.unet.requires_grad_(True).train()
    if cfg.gradient_checkpointing:
        gen_model.unet.enable_gradient_checkpointing()
    c, empty = prompt_pair(cfg, gen_model)
    c, empty = c.to(dev), empty.to(dev)
    if cfg.phase in ("vae16_base", "cida"):
        dino = build_dino(cfg, dev)
        projector = RepaProjector(gen_model.unet.config.block_out_channels[0], cfg.dino.dim, cfg.repa.hidden,
                                  cfg.repa.layers).to(dev)
    if cfg.phase == "regression" and cfg.regression.perceptual:
        perceptual = DISTS(cfg.regression.vgg16, allow_random=cfg.regression.random_vgg, seed=cfg.seed).to(dev)
    if cfg.phase == "cida":
        f_mu = load_generator(cfg.score_base, dev, "score_base").unet
        if cfg.gradient_checkpointing:
            f_mu.enable_gradient_checkpointing()
        scores = ScoreNetworks(f_mu, cfg.lora).to(dev)  # real/fake adapters on the one frozen base
        depths = encoder_depths(f_mu, cfg.disc.depths or None)
        cfg = replace(cfg, disc=replace(cfg.disc, depths=depths))
        heads = DiscriminatorHeads(encoder_channels(f_mu, depths), cfg.disc.head_channels,
                                   cfg.disc.spectral_norm).to(dev)
    abar = scaled_linear_alphas_cumprod()
    ema = {k: v.detach().clone().float() for k, v in gen_model.state_dict().items()}

    # -- optimisers: generator (+ projector); heads; both score adapters (one group each)
    opt_g = torch.optim.AdamW(trainable(gen_model.unet, *([projector] if projector else [])), lr=o.lr,
                              betas=o.betas, weight_decay=o.weight_decay)
    opts = {"g": opt_g}
    if scores is not None:
        opts["h"] = torch.optim.AdamW(heads.parameters(), lr=o.disc_lr, betas=o.betas, weight_decay=o.weight_decay)
        opts["s"] = torch.optim.AdamW([{"params": scores.adapter_parameters(a)} for a in scores.ADAPTERS],
                                      lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    log, metrics = JsonlLog(out / "train_log.jsonl"), JsonlLog(out / METRICS_FILE)
    step, ema = resume_from_latest(acc, out, log, ema, resume)
    if step:  # live weights + optimiser states (safetensors, written before each checkpoint)
        groups = load_trainer_state(trainer_state_path(out, step), opts)
        for name, mod in live_modules(gen_model, projector, heads).items():
            mod.load_state_dict(groups[name])
        if scores is not None:
            for a in scores.ADAPTERS:
                scores.load_adapter_state_dict(a, groups[f"adapter.{a}"])
    scheds = {k: make_scheduler(v, o, step) for k, v in opts.items()}
    end = stop_step(step, o.max_steps, stop_after)
    dl = step_loader(ds, cfg.data, step, end, shard, collate_pairs)
    resolved = {**json.loads(cfg.to_json()), "gendr_model": gen_model.config.to_dict()}
    if acc.is_main_process:
        write_run_config(out, resolved)
        log.write({"kind": "run", "step": step, "phase": cfg.phase,
                   "vae_scaling": gen_model.config.vae.scaling_factor, "vae_shift": gen_model.config.vae.shift_factor})
        logger.info("GenDR phase %s: %d -> %d", cfg.phase, step, end)

    pbar = tqdm(total=end, initial=step, disable=not acc.is_main_process, desc=cfg.phase, dynamic_ncols=True)
    t0, seen = time.time(), 0
    for batch in dl:
        x_h = batch["hr"].to(dev)
        b = x_h.shape[0]
        gen = step_generator(cfg.seed, step)
        with torch.no_grad():
            z_h = gen_model.encode(x_h).float()
        terms: dict[str, torch.Tensor] = {}
        if cfg.phase == "vae16_base":  # Algorithm 1
            t = sample_timesteps(b, 0, 999, gen).to(dev)
            eps = torch.randn(z_h.shape, generator=gen).to(dev)
            drop = (torch.rand(b, generator=gen) < cfg.cfg_dropout).to(dev).view(b, 1, 1)
            cond = torch.where(drop, empty.expand(b, -1, -1), c.expand(b, -1, -1))
            with acc.autocast(), capture_output(gen_model.unet.down_blocks[0]) as got:
                eps_pred = gen_model.unet(forward_diffuse(z_h, t, eps, abar), t, encoder_hidden_states=cond,
                                          return_dict=False)[0]
            with torch.no_grad():
                h_e = dino(x_h)
            parts = base_repa_loss(eps_pred.float(), eps, projector(got[-1]), h_e, cfg.repa.weight)
            terms = {"eps": parts["eps"], "repa": cfg.repa.weight * parts["repa"]}
        else:
            x_l = resize(batch["lr"].to(dev), tuple(x_h.shape[-2:]), "bicubic")
            with torch.no_grad():
                z_l = gen_model.encode(x_l).float()
            with acc.autocast(), capture_output(gen_model.unet.down_blocks[0]) as got:
                z_g = gen_model.one_step(z_l, c).float()  # z_g = G_theta(z_l; t_s, c), GenDR Eq. 2
        if cfg.phase == "regression":  # Algorithm 2, first loop
            terms["mse"] = cfg.regression.mse * F.mse_loss(z_g, z_h)
            if perceptual is not None:
                with torch.no_grad():
                    x_ref = gen_model.decode(z_h).clamp(0, 1)
                terms["perceptual"] = cfg.regression.perceptual * perceptual(gen_model.decode(z_g), x_ref).mean()
        if cfg.phase == "cida":  # Algorithm 2, second loop: steps 1-2 inside, step 3 below
            def update(name: str, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
                _update(acc, opts[name], scheds[name], loss, params, o.grad_clip)

            with torch.no_grad():
                h_e = dino(x_h)
            terms, extra = cida_terms(cfg.cida, step, scores, heads, projector(got[-1]), h_e, z_h, z_g, c, empty,
                                      gen, update, acc.autocast)
        loss = sum(terms.values())
        _update(acc, opt_g, scheds["g"], loss, opt_g.param_groups[0]["params"], o.grad_clip)
        ema_update(ema, gen_model, o.ema_decay)
        step += 1
        seen += b
        pbar.update(1)
        if step % cfg.log_every == 0 or step == end:
            scal = reduce_for_log(acc, {"loss": loss.detach(), **{f"loss_{n}": v.detach() for n, v in terms.items()},
                                        **(extra if cfg.phase == "cida" else {})})
            if acc.is_main_process:
                lr_now = scheds["g"].get_last_lr()[0]
                log.write({"kind": "train", "step": step, "lr": lr_now, "phase": cfg.phase,
                           "images_per_s": seen * shard.world_size / (time.time() - t0), **scal})
                metrics.write({"step": step, "loss": scal["loss"], "world_size": shard.world_size,
                               "samples_seen": step * bsz, "lr": lr_now, **{k: v for k, v in scal.items() if k != "loss"}})
                pbar.set_postfix(loss=f"{scal['loss']:.4f}")
        if step % cfg.save_every == 0 or step == end:
            if acc.is_main_process:
                groups = {n: m.state_dict() for n, m in live_modules(gen_model, projector, heads).items()}
                if scores is not None:
                    groups.update({f"adapter.{a}": scores.adapter_state_dict(a) for a in scores.ADAPTERS})
                save_trainer_state(trainer_state_path(out, step), groups, opts, cfg.keep_checkpoints)
            save_checkpoint(acc, out, step, ema, resolved, cfg.keep_checkpoints)
    pbar.close()
    if acc.is_main_process and step == o.max_steps:
        export(out, out / EXPORT_FILE)
    acc.wait_for_everyone()
    return out


def cida_terms(k: CiDAConfig, step: int, scores: ScoreNetworks, heads: torch.nn.Module, projected: torch.Tensor,
               h_e: torch.Tensor, z_h: torch.Tensor, z_g: torch.Tensor, c: torch.Tensor, empty: torch.Tensor,
               gen: torch.Generator, update, autocast=nullcontext) -> tuple[dict[str, torch.Tensor], dict]:
    """One CiDA iteration of Algorithm 2 up to the generator loss.

    1. ``update("h", L_h, heads)``: heads on f_sg[phi](z_h) vs f_sg[phi](sg[z_g]) at a score step t;
    2. ``update("s", L_phi + L_psi, adapters)``: the real score on z_h, the fake one on sg[z_g] (same t, eps);
    3. returns the weighted generator terms at a fresh (t, eps) -- ``lambda_1 L_cid`` (adapters frozen,
       graph to z_g through the frozen base), ``lambda_2 L_adv`` (heads and adapters frozen) and
       ``lambda_3 L_repa(projected, h_e)`` -- plus detached statistics. Nothing here steps theta.
    ``gen`` draws t and eps; ``update(name, loss, params)`` runs one optimiser step."""
    b = z_h.shape[0]
    t = sample_timesteps(b, k.t_min, k.t_max, gen).to(z_h.device)
    eps = torch.randn(z_h.shape, generator=gen).to(z_h.device)
    with autocast():
        adv_d = score_discriminator_losses(scores, heads, z_h, z_g, t, c, eps)["adv_d"]
    update("h", adv_d, trainable(heads))
    with autocast():
        sl = score_network_losses(scores, z_h, z_g, t, eps, c)
    update("s", sl["score_real"] + sl["score_fake"], [p for a in scores.ADAPTERS for p in scores.adapter_parameters(a)])
    t2 = sample_timesteps(b, k.t_min, k.t_max, gen).to(z_h.device)
    eps2 = torch.randn(z_h.shape, generator=gen).to(z_h.device)
    with autocast():
        cid = cid_generator_term(scores, z_g, z_h, t2, eps2, c, empty, k.kappa, k.xi, k.weight_c)
        adv_g = score_discriminator_losses(scores, heads, z_h, z_g, t2, c, eps2, generator_step=True)["adv_g"]
    terms = {"cid": k.lambda_cid_at(step) * cid["cid"], "adv_g": k.lambda_adv * adv_g,
             "repa": k.lambda_repa * repa_loss(projected, h_e)}
    extra = {"adv_d": adv_d.detach(), "score_real": sl["score_real"].detach(),
             "score_fake": sl["score_fake"].detach(), "omega": cid["omega"].detach()}
    return terms, extra


def live_modules(gen_model: GenDRTeacher, projector, heads) -> dict[str, torch.nn.Module]:
    """The trained modules whose live weights a checkpoint keeps (the VAE and the bases are frozen)."""
    return {n: m for n, m in (("unet", gen_model.unet), ("prompt", _Prompt(gen_model)), ("projector", projector),
                              ("heads", heads)) if m is not None}


class _Prompt(torch.nn.Module):
    """The model's two prompt embeddings as one module (for the trainer state)."""

    def __init__(self, model: GenDRTeacher) -> None:
        super().__init__()
        self.prompt_pos, self.prompt_neg = model.prompt_pos, model.prompt_neg


def _update(acc, opt, sched, loss: torch.Tensor, params: list[torch.nn.Parameter], clip: float) -> None:
    """One optimiser step on ``loss`` for ``params`` (gradients averaged over the processes)."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    average_gradients(acc, params)
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def export(run_or_ckpt: str | Path, out: str | Path) -> Path:
    """EMA generator of a checkpoint -> a ``gendr`` model file (config incl. the VAE scaling)."""
    src = Path(run_or_ckpt)
    ckpt = src if (src / "train_state.json").is_file() else latest_checkpoint(src)
    if ckpt is None:
        raise FileNotFoundError(f"{src}: no checkpoint folder with train_state.json under {src / 'checkpoints'}")
    train_cfg = json.loads((ckpt / "config.json").read_text())
    if "gendr_model" not in train_cfg:
        raise CheckpointFormatError(f"{ckpt}/config.json has no 'gendr_model'; is it a train_gendr run?")
    from safetensors.torch import load_file

    model = GenDRTeacher(GenDRConfig.from_dict(train_cfg["gendr_model"], where=f"{ckpt}/config.json"))
    model.load_state_dict({k: v.float() for k, v in load_file(str(ckpt / "ema.safetensors")).items()})
    step = json.loads((ckpt / "train_state.json").read_text())["step"]
    meta = {"gendr_pix.train_step": str(step), "gendr_pix.stage": train_cfg["phase"],
            "gendr_pix.train_config": json.dumps(train_cfg, sort_keys=True)}
    path = save_model(model, out, metadata=meta)
    logger.info("exported GenDR phase %s step %d to %s", train_cfg["phase"], step, path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="JSON file parsed into GenDRTrainConfig")
    ap.add_argument("--out", "--output-dir", dest="output_dir", help="override output_dir")
    ap.add_argument("--phase", choices=PHASES, help="override phase")
    ap.add_argument("--sd21-base", help="override sd21_base (SD2.1 checkpoint file or diffusers folder)")
    ap.add_argument("--vae", help="override vae (16-channel VAE diffusers folder)")
    ap.add_argument("--dinov2", help="override dinov2 (local DINOv2 ViT-B/14 safetensors)")
    ap.add_argument("--vgg16", help="override regression.vgg16 (local VGG16 weights for DISTS)")
    ap.add_argument("--init-from", help="override init_from")
    ap.add_argument("--score-base", help="override score_base")
    ap.add_argument("--max-steps", type=int, help="override optim.max_steps")
    ap.add_argument("--stop-after", type=int, help="stop after this many more steps")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = ap.parse_args(argv)
    names = {"output_dir": "output_dir", "phase": "phase", "sd21_base": "sd21_base", "vae": "vae", "dinov2": "dinov2",
             "vgg16": "regression.vgg16", "init_from": "init_from", "score_base": "score_base",
             "max_steps": "optim.max_steps"}
    overrides = {key: getattr(args, a) for a, key in names.items() if getattr(args, a)}
    train(load_config(args.config, overrides), resume=not args.no_resume, stop_after=args.stop_after)
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
