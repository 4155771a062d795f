"""GenDR-Pix Stage II (Algorithm 1, "Remove Decoder"): adversarial distillation of a pixel-space
student from a teacher, with the frozen previous-stage generator as the discriminator.

Notation of Algorithm 1 (Stage II) and Eq. 3-4:

    x_g = G_psi(x_l; t, c)         the student, initialised psi <- theta from ``init_from``
    x_r                             the reference: precomputed teacher targets (``targets``: shards
                                    written by trainers/make_teacher_targets.py), or a teacher run
                                    online (``teacher``: a model file for gendr_core.teachers),
                                    or, with neither, the HQ image x_h itself (then the "distillation"
                                    is plain supervised training with the paper's losses)
    d = G_theta(.; t, c)            the frozen previous-stage generator's encoder-half features
                                    (``disc_backbone``, default = ``init_from``),
                                    gendr_core.models.discriminators.FrozenGeneratorFeatures
    h_phi                           small trainable heads, one per feature depth (DiscriminatorHeads)

    L_phi = sp[-h_phi(sg[d(randpad(x_h))])] + sp[h_phi(sg[d(randpad(sg[x_g]))])]          (Eq. 4, 2nd line)
    L_psi = |x_r - x_g|_1 + l1 * sp[-h_sg[phi](d(randpad(x_g)))] + l2 * L_P(x_r, x_g)
            + l3 * L_F(x_r, x_g)                                                           (Alg. 1, Eq. 4)

with (l1, l2, l3) = (0.05, 1, 0.1) (Sec. 5.1), sp = softplus, L_F = losses.masked_fourier_loss (Eq. 2),
RandPad = pad [p, 8 - p] per side, p uniform in {0..7}, reflect (Eq. 3; Fig. 10's randint(0, 8) would
include 8, we follow the equation), drawn per sample. Each step updates phi first, then psi, as in
Algorithm 1; the generator term uses the just-updated heads with their weights held fixed.

Readings where the paper is silent or ambiguous (each is a config key):

* ``loss.randpad_generator`` (default true): the generator's adversarial input is RandPad-ed too.
  Eq. 4's generator line reads softplus(-G_1(y_stu)) with no randpad, while D is only ever trained on
  randpad-ed inputs. Feeding G's term at the one fixed phase would let the student fit the
  pixel-unshuffle phase that RandPad exists to hide (Sec. 4.1) and shows D inputs of a size (H, not
  H+8) and border it never trained on; applying the same augmentation to fakes in both steps is
  also what differentiable augmentation for GANs requires. Set false for the literal Eq. 4. (The
  period stays 8 for our x4 students: p mod 4 is uniform too, and H+8 keeps every size valid.)
* ``loss.perceptual_kind``: the paper's L_P is DISTS (A.1). "dists" needs local ImageNet VGG16
  weights (``loss.vgg16`` / ``--vgg16 FILE``; the official DISTS alpha/beta ship with gendr_core).
  Without VGG16, "feature_matching": losses.feature_matching_loss between the frozen backbone's
  features of x_g and x_r (the same features D reads, no RandPad). "auto" picks DISTS when
  ``loss.vgg16`` is set. The resolved choice is written to config.json and the log's run record.
* The PadCFG negative embedding (``prompt_neg``) stays as initialised (frozen): Stage II has no
  negative-prompt objective, and the pixel trainer's blurred-target re-fit would fight the
  detail this stage adds. The positive embedding trains with the UNet.
* ``loss.perceptual_randpad`` (default false): the feature-matching L_P reads the backbone at one
  fixed pixel-unshuffle phase, so the student can lower it with a pattern locked to that phase
  (the 4-px checker of the first detail model). True pads x_g and x_r with the same RandPad
  offsets per sample (Eq. 3, one draw for both, so the pair stays aligned) before the features,
  the way D's inputs are; the term then cannot be fitted at a single phase.
* The real input of D is x_h (Alg. 1: d_h = G_theta(x_h)), not the teacher output.
* ``loss.mfs_reference`` (default "target"): y_tea of Eq. 2 is x_r, as Alg. 1 writes L_F(x_r, x_g).
  Sec. 4.2 introduces the same loss on "the SR/HQ image y_stu and y_tea", and the artifact it removes
  is one the reference must not have: a real teacher can have its own periodic peaks (Real-ESRGAN
  x4plus scores 0.42 dB on our grid metric, with 1.4 dB at the period-4 harmonics of its LQ pixel
  grid; HR photos score about 0), and matching its amplitudes there teaches the student the
  teacher's peaks. "hq" compares x_g with the HQ crop x_h instead; L1 and L_P still follow x_r.
* ``loss.mfs_mask`` (default "bands"): the band mask of Eq. 2 as written (whole stripes), or
  "points", only the bins around the harmonics (gendr_core.losses.pixel.artifact_mask explains why).
* Scale of the feature-matching term: on gendr-pix-s (x4, 192-px crops, depths 1-5) its value is
  ~0.76 for the restored image vs HR (0.85 for unrelated images, 0.02 for HR + 1% noise) and its
  gradient w.r.t. x_g is ~100x the L1 term's, so with lambda_2 = 1 it dominates the update;
  ``loss.perceptual`` is the knob if fidelity drops too far.

Recipe ``gendr_pix_s_detail.json`` (the shipped detail model): student and D backbone = the shipped
gendr-pix-s (x4, 10.7M), Real-ESRGAN x4plus targets precomputed on 192-px HR crops, batch 4, x4.
LR 1e-4 for G and D, constant after a 50-step linear warm-up: the paper's 1e-5 is for batch 512
and 20M images; at batch 4 and a few thousand steps 1e-5 barely moves the model, while 1e-4 is
the largest rate at which this model's earlier fine-tunes (pixel stages 5-8, batch 2-3) ran
stably; EMA 0.999 smooths the small-batch noise. Adversarial terms from step 0 (Alg. 1 has no
warm-up, the student starts converged, lambda_1 = 0.05 is small and the LR warm-up covers the
first steps of the fresh heads). D reads every down block and the mid block (depths 1-5: 32, 64,
128, 160, 160 channels at 1/8 ... 1/32 of the padded image) with 64-channel heads.

Run:  python -m trainers.train_stage2 --config trainers/configs/gendr_pix_s_detail.json [--vgg16 FILE]
Resume is automatic from the newest checkpoint in ``output_dir`` (``--no-resume`` to restart;
``--stop-after N`` for time-boxed sessions). Export with ``python -m trainers.export OUTPUT_DIR -o m.safetensors``.
Distributed: ``torchrun --nproc_per_node N -m trainers.train_stage2 ... --out DIR``; ``data.batch_size`` is the
global batch, split evenly over the processes, and every process draws the RandPad offsets of the whole global
batch (the same stream) and applies its slice's, so N processes train as one does (trainers/README.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gendr_core.checkpoint import read_header, resolve_model_path
from gendr_core.config import GenDRPixConfig, JSONConfig
from gendr_core.data import collate_pairs
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import ConfigError
from gendr_core.fileio import file_sha256
from gendr_core.losses import (
    DISTS,
    discriminator_adv_loss,
    feature_matching_loss,
    generator_adv_loss,
    l1_loss,
    masked_fourier_loss,
)
from gendr_core.losses.pixel import MASK_KINDS
from gendr_core.models import GenDRPix
from gendr_core.models.discriminators import DiscriminatorHeads, FrozenGeneratorFeatures, rand_pad_per_sample
from gendr_core.ops.padding import Pad, pad_fixed, sample_rand_pad
from gendr_core.ops.resize import resize
from trainers.loop import (
    METRICS_FILE,
    BatchShard,
    DataConfig,
    JsonlLog,
    OptimConfig,
    adamw_pair,
    batch_shard,
    build_hr_dataset,
    check_accumulation,
    ema_update,
    finish_distributed,
    gather_indices,
    load_frozen_model,
    load_init_weights,
    load_val_set,
    make_schedulers,
    plot_curves,
    reduce_for_log,
    refuse_deepspeed,
    resume_from_latest,
    save_checkpoint,
    setup_accelerator,
    step_generator,
    step_loader,
    stop_step,
    validate,
    write_run_config,
)
from trainers.loop import load_config as load_config_as

logger = logging.getLogger("trainers.train_stage2")

PERCEPTUAL_KINDS = ("auto", "dists", "feature_matching")
MFS_REFERENCES = ("target", "hq")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Stage2LossConfig(JSONConfig):
    l1: float = 1.0  # |x_r - x_g|_1
    adversarial: float = 0.05  # lambda_1 (Sec. 5.1)
    perceptual: float = 1.0  # lambda_2
    mfs: float = 0.1  # lambda_3
    mfs_half_width: int = 1  # s of Eq. 2
    mfs_mask: str = "bands"  # "bands" (Eq. 2 as written) | "points" (the harmonic bins only), see module docstring
    mfs_reference: str = "target"  # y_tea of Eq. 2: "target" (x_r) | "hq" (x_h), see module docstring
    perceptual_kind: str = "auto"  # "auto" | "dists" | "feature_matching" (resolved at start)
    vgg16: str | None = None  # local ImageNet VGG16 weights for DISTS
    adv_start_step: int = 0  # adversarial terms (G and D) from this step
    randpad_generator: bool = True  # RandPad the generator's D input as well (see module docstring)
    perceptual_randpad: bool = False  # feature matching on x_g and x_r RandPad-ed alike (see module docstring)

    def __post_init__(self) -> None:
        weights = {"l1": self.l1, "adversarial": self.adversarial, "perceptual": self.perceptual, "mfs": self.mfs}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ConfigError(f"loss weights must be >= 0, got {bad}")
        if not any(weights.values()):
            raise ConfigError(f"all loss weights are 0 ({sorted(weights)}): set at least one, e.g. loss.l1 = 1")
        if self.mfs_mask not in MASK_KINDS:
            raise ConfigError(f"loss.mfs_mask={self.mfs_mask!r} must be one of {list(MASK_KINDS)}")
        if self.mfs_reference not in MFS_REFERENCES:
            raise ConfigError(f"loss.mfs_reference={self.mfs_reference!r} must be one of {list(MFS_REFERENCES)}")
        if self.perceptual_kind not in PERCEPTUAL_KINDS:
            raise ConfigError(f"loss.perceptual_kind={self.perceptual_kind!r} must be one of {list(PERCEPTUAL_KINDS)}")
        if self.perceptual_kind == "dists" and not self.vgg16:
            raise ConfigError("loss.perceptual_kind='dists' needs loss.vgg16 (a local ImageNet VGG16 weights file, "
                              "or --vgg16 FILE); use 'feature_matching' or 'auto' without one")


@dataclass(frozen=True)
class DiscConfig(JSONConfig):
    depths: tuple[int, ...] = ()  # () = every down block + the mid block (0 = conv_in, n + 1 = mid)
    head_channels: int = 64
    spectral_norm: bool = False


@dataclass(frozen=True)
class Stage2Config(JSONConfig):
    model: GenDRPixConfig | None = None  # None = the config stored in init_from
    init_from: str | None = None  # student init (a GenDR-Pix model file); required
    disc_backbone: str | None = None  # frozen previous-stage generator for D; None = init_from
    teacher: str | None = None  # model file run online by gendr_core.teachers.load_teacher
    targets: str | None = None  # folder of precomputed (hr, lr, xr) shards (gendr_core.data.TeacherPairShards)
    val_teacher: str | None = None  # teacher for the validation columns only; None = teacher
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=4, scales=(4,)))
    loss: Stage2LossConfig = field(default_factory=Stage2LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, disc_lr=1e-4, warmup_steps=50,
                                                                   schedule="constant", max_steps=3000))
    degradation: DegradationConfig | None = None  # LR synthesis without shards; None = Real-ESRGAN defaults
    output_dir: str = "runs/stage2"
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1  # forward/backward passes per optimiser step, each of batch/(processes x this)
    threads: int = 0
    log_every: int = 10
    val_every: int = 200
    save_every: int = 100
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if not self.init_from:
            raise ConfigError("init_from is required: the student starts from the previous stage's model file "
                              "(Alg. 1: psi <- theta), e.g. gendr_core/assets/gendr-pix-s.safetensors")
        check_accumulation(self.gradient_accumulation_steps, self.data.batch_size)
        if self.teacher and self.targets:
            raise ConfigError(f"give either 'teacher' (online, {self.teacher}) or 'targets' (shards, {self.targets}), "
                              "not both")
        if self.model is not None and self.data.crop_size % self.model.pad_multiple:
            raise ConfigError(f"data.crop_size={self.data.crop_size} must be a multiple of the model's "
                              f"pad multiple {self.model.pad_multiple}")

    @property
    def target_source(self) -> str:
        return "shards" if self.targets else "teacher" if self.teacher else "hq"


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> Stage2Config:
    """Parse a JSON config file (with its ``base`` chain) into Stage2Config; dotted ``overrides``."""
    return load_config_as(Stage2Config, path, overrides)


def resolve_config(cfg: Stage2Config) -> Stage2Config:
    """Fill every 'default from elsewhere' field: model (from init_from), disc_backbone,
    val_teacher, loss.perceptual_kind. disc.depths is filled once the backbone is built."""
    path = resolve_model_path(cfg.init_from)
    kind, init_cfg, _ = read_header(path)
    if kind != "gendr_pix":
        raise ConfigError(f"init_from={path} is a {kind!r} model; Stage II trains a GenDR-Pix student")
    if cfg.model is not None and cfg.model != init_cfg:
        raise ConfigError(f"init_from={path}: its model config differs from the training config's 'model' "
                          "(drop 'model' to take the file's)")
    kind_p = cfg.loss.perceptual_kind
    if kind_p == "auto":
        kind_p = "dists" if cfg.loss.vgg16 else "feature_matching"
    out = replace(cfg, model=init_cfg, disc_backbone=cfg.disc_backbone or cfg.init_from,
                  val_teacher=cfg.val_teacher or cfg.teacher, loss=replace(cfg.loss, perceptual_kind=kind_p))
    if out.data.crop_size % init_cfg.pad_multiple:
        raise ConfigError(f"data.crop_size={out.data.crop_size} must be a multiple of {init_cfg.pad_multiple}, "
                          f"the pad multiple of init_from={path}")
    return out


# ----------------------------------------------------------------------------- helpers


def rand_pad_shard(x: torch.Tensor, gen: torch.Generator,
                   shard: BatchShard | None = None) -> tuple[torch.Tensor, list[Pad]]:
    """RandPad per sample (``rand_pad_per_sample``) of this process's slice ``x`` of a global batch:
    the offsets of the whole global batch are drawn (the same stream on every process) and the
    slice's are applied, so a distributed step pads each item as a 1-process step does. Without a
    shard (or with one process) this is ``rand_pad_per_sample(x, gen)``."""
    if shard is None or shard.world_size == 1:
        return rand_pad_per_sample(x, gen)
    pads = [sample_rand_pad(gen) for _ in range(shard.global_batch)][shard.start : shard.start + shard.size]
    if len(pads) != x.shape[0]:
        raise ConfigError(f"batch slice of {x.shape[0]} items for a shard of {shard.size}")
    return torch.cat([pad_fixed(x[i : i + 1], p, "reflect") for i, p in enumerate(pads)]), pads


@contextmanager
def held_fixed(module: nn.Module) -> Iterator[None]:
    """h_{sg[phi]} of Alg. 1: run ``module`` with its parameters excluded from autograd and in eval
    mode (no spectral-norm power iteration), restoring both afterwards. Gradients still flow to
    the module's inputs."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.requires_grad_(False).eval()
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)
        module.train(was_training)


def load_frozen_teacher(path: str, device: torch.device, where: str):
    """gendr_core.teachers.load_teacher, frozen: its parameters never receive gradients."""
    from gendr_core.teachers import load_teacher

    teacher = load_teacher(path, device, torch.float32)
    for obj in (teacher, getattr(teacher, "model", None)):
        if isinstance(obj, nn.Module):
            obj.requires_grad_(False).eval()
    logger.info("%s: %s", where, path)
    return teacher


def collate_with_targets(items: list[dict[str, Any]]) -> dict[str, Any]:
    """collate_pairs + the teacher targets ``xr`` (B,3,H,W) when the items carry them."""
    batch = collate_pairs(items)
    if "xr" in items[0]:
        batch["xr"] = torch.stack([it["xr"] for it in items])
    return batch


def build_dataset(cfg: Stage2Config):
    """Step-indexed training items: teacher shards (hr, lr, xr; stored pairs repeat every pass with
    a fresh flip/transpose drawn from (seed, index)), or HR crops + on-the-fly degradation."""
    bsz = cfg.data.batch_size
    if cfg.targets and cfg.data.shards:
        raise ConfigError(f"give targets={cfg.targets} (teacher pairs) or data.shards={cfg.data.shards} (HR images), "
                          "not both")
    if cfg.targets:
        from gendr_core.data import TeacherPairShards  # written by make_teacher_targets; only for shard runs

        ds = TeacherPairShards(cfg.targets, seed=cfg.seed, epoch_length=cfg.optim.max_steps * bsz)
        if cfg.data.scales != (ds.scale,):
            raise ConfigError(f"data.scales={list(cfg.data.scales)} but the shards in targets={cfg.targets} are x{ds.scale}")
        logger.info("targets: %d precomputed teacher pairs (x%d) from %s", ds.n, ds.scale, cfg.targets)
        return ds
    return build_hr_dataset(cfg.data, cfg.degradation or DegradationConfig(), cfg.seed, cfg.optim.max_steps * bsz)


def discriminator_loss(features: FrozenGeneratorFeatures, heads: nn.Module, x_h: torch.Tensor, x_g: torch.Tensor,
                       gen: torch.Generator, autocast=nullcontext,
                       shard: BatchShard | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L_phi of Alg. 1 Stage II (Eq. 4, second line):
    ``sp[-h(sg[d(randpad(x_h))])] + sp[h(sg[d(randpad(sg[x_g]))])]``, every term averaged over the
    heads. The features are computed without a graph (sg), real and fake in one pass, each sample
    with its own RandPad offsets (:func:`rand_pad_shard`: a slice of a global batch with ``shard``).
    Returns (loss, {"d_real", "d_fake"}: mean logits)."""
    b = x_h.shape[0]
    real, _ = rand_pad_shard(x_h, gen, shard)
    fake, _ = rand_pad_shard(x_g.detach(), gen, shard)
    with torch.no_grad(), autocast():
        feats = features(torch.cat([real, fake]))
    with autocast():
        logits = [m.float() for m in heads(feats)]
    loss = discriminator_adv_loss([m[:b] for m in logits], [m[b:] for m in logits])
    stats = {"d_real": float(sum(m[:b].detach().mean() for m in logits) / len(logits)),
             "d_fake": float(sum(m[b:].detach().mean() for m in logits) / len(logits))}
    return loss, stats


def generator_losses(loss: Stage2LossConfig, x_g: torch.Tensor, x_r: torch.Tensor, features: FrozenGeneratorFeatures,
                     heads: nn.Module, gen: torch.Generator, perceptual: nn.Module | None = None, use_adv: bool = True,
                     autocast=nullcontext, shard: BatchShard | None = None,
                     x_h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The weighted terms of L_psi (Alg. 1 Stage II):
    ``|x_r - x_g|_1 + l1 sp[-h_sg[phi](d(randpad(x_g)))] + l2 L_P(x_r, x_g) + l3 L_F(x_r, x_g)``.

    ``heads`` must be the unwrapped module: it runs under :func:`held_fixed`, so the heads get no
    gradient and the frozen backbone never does; gradients reach ``x_g`` only. L_P is ``perceptual``
    (DISTS) when given, else :func:`gendr_core.losses.feature_matching_loss` on ``features`` of
    x_g and x_r (no RandPad). The RandPad of the adversarial input follows
    ``loss.randpad_generator`` (module docstring). L_F compares x_g with x_r, or with the HQ crop
    ``x_h`` when ``loss.mfs_reference == "hq"`` (then ``x_h`` is required), under ``loss.mfs_mask``.
    Keys: l1, mfs, perceptual, adv_g (weights 0 skip).
    """
    out: dict[str, torch.Tensor] = {}
    if loss.l1:
        out["l1"] = loss.l1 * l1_loss(x_g, x_r)
    if loss.mfs:
        if loss.mfs_reference == "hq" and x_h is None:
            raise ConfigError("loss.mfs_reference='hq' needs the HQ crop x_h")
        ref = x_h if loss.mfs_reference == "hq" else x_r
        out["mfs"] = loss.mfs * masked_fourier_loss(x_g, ref, half_width=loss.mfs_half_width, mask=loss.mfs_mask)
    if loss.perceptual:
        if perceptual is not None:
            out["perceptual"] = loss.perceptual * perceptual(x_g, x_r).mean()
        else:
            if loss.perceptual_randpad:  # one draw per sample, applied to both images
                x_g, pads = rand_pad_shard(x_g, gen, shard)
                x_r = torch.cat([pad_fixed(x_r[i : i + 1], p, "reflect") for i, p in enumerate(pads)])
            with autocast():
                f_g = features(x_g)
                with torch.no_grad():
                    f_r = features(x_r)
            out["perceptual"] = loss.perceptual * feature_matching_loss(f_g, f_r)
    if use_adv and loss.adversarial:
        g_in = rand_pad_shard(x_g, gen, shard)[0] if loss.randpad_generator else x_g
        with held_fixed(heads), autocast():
            logits = heads(features(g_in))
        out["adv_g"] = loss.adversarial * generator_adv_loss([m.float() for m in logits])
    return out


# ----------------------------------------------------------------------------- main


def train(cfg: Stage2Config, resume: bool = True, stop_after: int | None = None) -> Path:
    """Train until ``optim.max_steps`` (or ``stop_after`` more steps); returns output_dir."""
    out = Path(cfg.output_dir)
    _, acc = setup_accelerator(out, cfg.mixed_precision, cfg.threads, cfg.seed)
    cfg = resolve_config(cfg)
    dev = acc.device
    bsz = cfg.data.batch_size  # the global batch
    shard = batch_shard(acc, bsz)  # this process's slice of it
    check_accumulation(cfg.gradient_accumulation_steps, bsz, shard.world_size)
    refuse_deepspeed(acc, "train_stage2")

    # -- student G_psi (psi <- theta), EMA; PadCFG's negative embedding stays frozen
    model = GenDRPix(cfg.model)
    load_init_weights(model, cfg.init_from)
    model.prompt_pos.requires_grad_(True)
    model.prompt_neg.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    eval_model = copy.deepcopy(model).eval().requires_grad_(False)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    # -- discriminator: frozen G_theta features + trainable heads h_phi
    features = FrozenGeneratorFeatures(
        load_frozen_model(cfg.disc_backbone, dev, GenDRPix, "disc_backbone",
                          "the Stage II discriminator reads a GenDR-Pix generator (pixel-unshuffle input)"),
        cfg.disc.depths or None).to(dev)
    cfg = replace(cfg, disc=replace(cfg.disc, depths=features.depths))
    heads = DiscriminatorHeads(features.channels, cfg.disc.head_channels, cfg.disc.spectral_norm)
    perceptual = DISTS(cfg.loss.vgg16).to(dev) if cfg.loss.perceptual and cfg.loss.perceptual_kind == "dists" else None
    teacher = load_frozen_teacher(cfg.teacher, dev, "online teacher") if cfg.teacher else None

    o = cfg.optim
    opt_g, opt_d = adamw_pair([p for p in model.parameters() if p.requires_grad], heads.parameters(), o)
    model, heads, opt_g, opt_d = acc.prepare(model, heads, opt_g, opt_d)
    unwrapped, heads_raw = acc.unwrap_model(model), acc.unwrap_model(heads)

    # -- resume
    log, metrics = JsonlLog(out / "train_log.jsonl"), JsonlLog(out / METRICS_FILE)
    step, ema = resume_from_latest(acc, out, log, ema, resume)
    end = stop_step(step, o.max_steps, stop_after)

    # -- data
    dl = step_loader(build_dataset(cfg), cfg.data, step, end, shard, collate_with_targets)
    val_pairs, val_teacher_out = [], None
    if acc.is_main_process and cfg.val_every:
        val_pairs = load_val_set(cfg.data.val_dirs, cfg.data.val_crop, cfg.data.val_scale)
        if val_pairs and cfg.val_teacher:
            vt = teacher if cfg.val_teacher == cfg.teacher else load_frozen_teacher(cfg.val_teacher, dev,
                                                                                   "validation teacher")
            with torch.no_grad():
                val_teacher_out = [vt.restore(lr.to(dev), tuple(hr.shape[-2:])).float().cpu() for hr, lr in val_pairs]
            if vt is not teacher:
                del vt
    resolved = json.loads(cfg.to_json())
    if acc.is_main_process:
        write_run_config(out, resolved)
        run = {"kind": "run", "step": step, "perceptual": cfg.loss.perceptual_kind if cfg.loss.perceptual else "off",
               "target_source": cfg.target_source, "disc_depths": list(features.depths),
               "disc_channels": list(features.channels), "randpad_generator": cfg.loss.randpad_generator,
               "disc_backbone_sha256": file_sha256(resolve_model_path(cfg.disc_backbone))}
        old = {r.get("disc_backbone_sha256") for r in log.read() if r.get("kind") == "run"} - {None}
        if old and old != {run["disc_backbone_sha256"]}:
            logger.warning("disc_backbone=%s changed since this run started (sha256 %s, now %s): the discriminator "
                           "now reads a different generator", cfg.disc_backbone, sorted(old), run["disc_backbone_sha256"])
        log.write(run)
        logger.info("Stage II: targets=%s, perceptual=%s, D depths %s (channels %s), RandPad on G input: %s",
                    run["target_source"], run["perceptual"], run["disc_depths"], run["disc_channels"],
                    cfg.loss.randpad_generator)

    scheds = make_schedulers(opt_g, opt_d, o, step, cfg.loss.adv_start_step)
    accum = cfg.gradient_accumulation_steps
    micro = shard.size // accum  # items per forward pass
    pbar = tqdm(total=end, initial=step, disable=not acc.is_main_process, desc="stage2", dynamic_ncols=True)
    t0, seen = time.time(), 0
    for batch in dl:
        hr = batch["hr"].to(dev)
        lr = batch["lr"].to(dev)
        b = hr.shape[0]
        x = resize(lr, tuple(hr.shape[-2:]), "bicubic")  # x_l on the output grid
        with torch.no_grad():  # x_r: teacher targets (shards / online) or HQ
            if "xr" in batch:
                x_r = batch["xr"].to(dev)
            elif teacher is not None:
                x_r = teacher.restore(lr, tuple(hr.shape[-2:])).float()
            else:
                x_r = hr
        if hr.shape[-1] != cfg.data.crop_size or hr.shape[-2] != cfg.data.crop_size:
            raise ConfigError(f"training crops are {tuple(hr.shape[-2:])} but data.crop_size={cfg.data.crop_size}"
                              + (f" (the shards in targets={cfg.targets} were cut at another size)" if cfg.targets else ""))
        if x_r.shape != hr.shape:
            raise ConfigError(f"teacher target of shape {tuple(x_r.shape)} does not match the HR crop "
                              f"{tuple(hr.shape)} (data.crop_size={cfg.data.crop_size}, scale {batch['scale']})")
        gen = step_generator(cfg.seed, step)
        stats: dict[str, float] = {}
        use_adv = cfg.loss.adversarial > 0 and step >= cfg.loss.adv_start_step
        if accum == 1:
            with acc.autocast():
                x_g = model(x, unwrapped.prompt_pos.expand(b, -1, -1))
            x_g = x_g.float()
            # -- D step first (Alg. 1 updates phi, then psi)
            if use_adv:
                d_loss, stats = discriminator_loss(features, heads, hr, x_g, gen, acc.autocast, shard)
                opt_d.zero_grad(set_to_none=True)
                acc.backward(d_loss)
                opt_d.step()
                scheds[1].step()
                opt_d.zero_grad(set_to_none=True)
            # -- G step with the updated, fixed heads
            losses = generator_losses(cfg.loss, x_g, x_r, features, heads_raw, gen, perceptual, use_adv, acc.autocast,
                                      shard, hr)
            if use_adv:
                losses["adv_d"] = d_loss.detach()
            loss = sum(v for k, v in losses.items() if k != "adv_d")
            opt_g.zero_grad(set_to_none=True)
            acc.backward(loss)
        else:  # `accum` passes; each pass draws from the same generator state, slicing the global batch's pads
            passes = [slice(a * micro, (a + 1) * micro) for a in range(accum)]
            parts = [BatchShard(shard.rank * accum + a, shard.world_size * accum, bsz) for a in range(accum)]
            with torch.no_grad(), acc.autocast():  # sg[x_g] for the D step; the G step recomputes it with a graph
                x_g = torch.cat([model(x[sl], unwrapped.prompt_pos.expand(micro, -1, -1)) for sl in passes]).float()
            if use_adv:
                opt_d.zero_grad(set_to_none=True)
                state, d_parts = gen.get_state(), []
                for a, sl in enumerate(passes):
                    gen.set_state(state)
                    with acc.no_sync(heads) if a < accum - 1 else nullcontext():
                        d_a, st_a = discriminator_loss(features, heads, hr[sl], x_g[sl], gen, acc.autocast, parts[a])
                        acc.backward(d_a / accum)
                    d_parts.append((d_a.detach(), st_a))
                opt_d.step()
                scheds[1].step()
                opt_d.zero_grad(set_to_none=True)
                d_loss = sum(d for d, _ in d_parts) / accum
                stats = {k: sum(st[k] for _, st in d_parts) / accum for k in d_parts[0][1]}
            opt_g.zero_grad(set_to_none=True)
            state, g_parts = gen.get_state(), []
            for a, sl in enumerate(passes):
                gen.set_state(state)
                with acc.no_sync(model) if a < accum - 1 else nullcontext():
                    with acc.autocast():
                        x_g_a = model(x[sl], unwrapped.prompt_pos.expand(micro, -1, -1))
                    terms = generator_losses(cfg.loss, x_g_a.float(), x_r[sl], features, heads_raw, gen, perceptual,
                                             use_adv, acc.autocast, parts[a], hr[sl])
                    acc.backward(sum(terms.values()) / accum)
                g_parts.append({k: v.detach() for k, v in terms.items()})
            losses = {k: sum(pt[k] for pt in g_parts) / accum for k in g_parts[0]}
            loss = sum(losses.values())
            if use_adv:
                losses["adv_d"] = d_loss
        if o.grad_clip:
            acc.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt_g.step()
        scheds[0].step()
        ema_update(ema, unwrapped, o.ema_decay)
        step += 1
        seen += b
        pbar.update(1)

        if step % cfg.log_every == 0 or step == end:  # every process: the scalars are mean-reduced over them
            scal = reduce_for_log(acc, {"loss": loss.detach(), "l1_hr": (x_g.detach() - hr).abs().mean(), **stats,
                                        **{f"loss_{n}": v.detach() for n, v in losses.items()}})
            indices = gather_indices(acc, batch["index"])
        if acc.is_main_process and (step % cfg.log_every == 0 or step == end):
            lr_now = scheds[0].get_last_lr()[0]
            rec = {"kind": "train", "step": step, "loss": scal["loss"], "lr": lr_now,
                   "images_per_s": seen * shard.world_size / (time.time() - t0), "scale": int(batch["scale"]),
                   **{k: v for k, v in scal.items() if k != "loss"}}
            log.write(rec)
            metrics.write({"step": step, "loss": scal["loss"], "world_size": shard.world_size,
                           "samples_seen": step * bsz, "lr": lr_now,
                           **{k: v for k, v in scal.items() if k.startswith("loss_")}, "rank_indices": indices})
            pbar.set_postfix(loss=f"{rec['loss']:.4f}")
        if acc.is_main_process and val_pairs and (step % cfg.val_every == 0 or step == end):
            eval_model.load_state_dict({k: v.to(eval_model.prompt_pos.dtype) if v.is_floating_point() else v
                                        for k, v in ema.items()})
            rec = {"kind": "val", "step": step,
                   **validate(eval_model, val_pairs, cfg.data.val_scale, val_teacher_out)}
            log.write(rec)
            logger.info("step %d: val PSNR-Y %.3f dB (bicubic %.3f dB%s)", step, rec["psnr_y"], rec["psnr_y_bicubic"],
                        f", vs teacher {rec['psnr_y_to_teacher']:.3f} dB, L1 to teacher {rec['l1_to_teacher']:.4f}"
                        if "psnr_y_to_teacher" in rec else "")
            plot_curves(log, out / "curves.png")
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(acc, out, step, ema, resolved, cfg.keep_checkpoints)
    pbar.close()
    if acc.is_main_process:
        plot_curves(log, out / "curves.png")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="JSON file parsed into Stage2Config")
    ap.add_argument("--out", "--output-dir", dest="output_dir",
                    help="override output_dir (logs, metrics.jsonl, checkpoints)")
    ap.add_argument("--max-steps", type=int, help="override optim.max_steps")
    ap.add_argument("--stop-after", type=int, help="stop after this many more steps (for time-boxed sessions)")
    ap.add_argument("--vgg16", help="local ImageNet VGG16 weights: the perceptual term becomes DISTS (loss.vgg16)")
    ap.add_argument("--targets", help="override targets (folder of precomputed teacher shards)")
    ap.add_argument("--teacher", help="override teacher (model file run online)")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = ap.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.max_steps:
        overrides["optim.max_steps"] = args.max_steps
    if args.vgg16:
        overrides["loss.vgg16"] = args.vgg16
    if args.targets:
        overrides.update(targets=args.targets, teacher=None)
    if args.teacher:
        overrides.update(teacher=args.teacher, targets=None)
    cfg = load_config(args.config, overrides)
    train(cfg, resume=not args.no_resume, stop_after=args.stop_after)
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
