"""GenDR score distillation: CiD / CiDA (GenDR Sec. 3.2-3.3, Eq. 7-11, Algorithm 2) and REPA (Eq. 3,
Algorithm 1).

Pure tensor losses first (``classifier_free_guidance``, ``cid_weight``, ``cid_generator_loss``,
``denoising_loss``, ``repa_loss``, ``base_repa_loss``), then three step functions that apply them to the real/fake score
networks (``gendr_core.models.lora.ScoreNetworks``) with the stop-gradients of Algorithm 2:

* :func:`score_network_losses` -- ``L_phi`` (real score on ``z_h``) and ``L_psi`` (fake score on
  ``sg[z_g]``); gradients reach only the two LoRA adapters.
* :func:`cid_generator_term` -- the CiD part of ``L_theta^(cida)``; gradients reach the generator
  through ``z_t = sqrt(abar_t) z_g + sqrt(1 - abar_t) eps`` and the *frozen* score networks
  (``sg[phi]``, ``sg[psi]``: parameters stopped, inputs differentiable), never the adapters.
* :func:`score_discriminator_losses` -- ``L_h`` and the generator's adversarial term (Eq. 10) on
  features of the real-score network ``f_sg[phi]`` read by the heads ``h``.

One CiDA iteration with these pieces (Algorithm 2, phase 2; ``cfg`` a :class:`CiDAConfig`)::

    t_g = full(B, cfg.generator_timestep)                        # 499 = GenDR's t_s = 500
    with capture_output(gen_unet.down_blocks[0]) as got:          # REPA features h_t
        z_g = one_step(gen_unet, z_l, t_g, c)                     # G_theta, x0 of Eq. 2
    # 1) heads h:       score_discriminator_losses(scores, heads, z_h, z_g, t, c, noise)["adv_d"]
    # 2) adapters phi, psi:  sum(score_network_losses(scores, z_h, z_g, t, noise, c).values())
    #    (t ~ sample_timesteps(B, cfg.t_min, cfg.t_max), one eps for steps 1-2)
    # 3) generator theta (fresh t, eps):
    #    cfg.lambda_cid_at(step) * cid_generator_term(scores, z_g, z_h, t, eps, c, empty, cfg.kappa,
    #                                                 cfg.xi, cfg.weight_c)["cid"]
    #    + cfg.lambda_adv * score_discriminator_losses(..., generator_step=True)["adv_g"]
    #    + cfg.lambda_repa * repa_loss(projector(got[-1]), dino(x_h))

Steps 1-2 detach ``z_g`` themselves; run them before step 3 re-uses ``z_g`` (or recompute it),
and give the heads, each adapter (``scores.adapter_parameters(name)``) and the generator (+ REPA
projector) their own optimisers. Step 3 back-propagates through the frozen score UNets: enable
gradient checkpointing on the shared base at SD2.1 scale.

Latents are (B,C,h,w). Notation: ``f`` = x0 ("score (latent)") prediction of a score network,
``f_kappa`` its CFG combination, ``z_h`` the HR latent, ``z_g`` the generator output.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import JSONConfig
from ..errors import ConfigError, ImageInputError
from ..models.lora import frozen_parameters
from ..ops.diffusion import forward_diffuse
from .adversarial import discriminator_adv_loss, generator_adv_loss

logger = logging.getLogger(__name__)

__all__ = [
    "CiDAConfig",
    "classifier_free_guidance",
    "cid_weight",
    "cid_generator_loss",
    "denoising_loss",
    "repa_loss",
    "base_repa_loss",
    "score_network_losses",
    "cid_generator_term",
    "score_discriminator_losses",
]


@dataclass(frozen=True)
class CiDAConfig(JSONConfig):
    """Loss constants of GenDR's CiDA (Algorithm 2, Sec. 4.1).

    ``generator_timestep`` is GenDR's t_s = 500 as a 0-indexed DDPM step (499, as ``GenDRConfig``);
    score timesteps are drawn from ``{t_min, ..., t_max}`` = {20, ..., 979}. ``lambda_cid`` is 10 for
    the first ``lambda_cid_warmup_steps`` = 10k steps, then ``lambda_cid_after`` = 1
    (:meth:`lambda_cid_at`). ``weight_c`` is the constant C of omega(t) (not given by the paper; 1).
    """

    kappa: float = 7.5
    xi: float = 1.2
    weight_c: float = 1.0
    lambda_cid: float = 10.0
    lambda_cid_after: float = 1.0
    lambda_cid_warmup_steps: int = 10_000
    lambda_adv: float = 0.01
    lambda_repa: float = 0.1
    generator_timestep: int = 499
    t_min: int = 20
    t_max: int = 979

    def __post_init__(self) -> None:
        if not 0 <= self.t_min <= self.t_max < 1000:
            raise ConfigError(f"CiDAConfig: need 0 <= t_min={self.t_min} <= t_max={self.t_max} < 1000")
        if not 0 <= self.generator_timestep < 1000:
            raise ConfigError(f"CiDAConfig.generator_timestep={self.generator_timestep} must be in [0, 1000)")
        if self.weight_c <= 0:
            raise ConfigError(f"CiDAConfig.weight_c={self.weight_c} must be > 0")
        if self.lambda_cid_warmup_steps < 0:
            raise ConfigError(f"CiDAConfig.lambda_cid_warmup_steps={self.lambda_cid_warmup_steps} must be >= 0")

    def lambda_cid_at(self, step: int) -> float:
        """lambda_1 of Eq. 11 at optimiser step ``step`` (0-indexed): 10 for the first 10k, then 1."""
        return self.lambda_cid if step < self.lambda_cid_warmup_steps else self.lambda_cid_after


# ----------------------------------------------------------------------------------------------------
# Pure tensor losses
# ----------------------------------------------------------------------------------------------------


def _check_same(a: Tensor, b: Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ImageInputError(f"{name}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def classifier_free_guidance(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """``f_kappa = f(z_t; t, empty) + kappa * (f(z_t; t, c) - f(z_t; t, empty))`` (GenDR, below Eq. 7),
    applied to the score networks' x0 predictions. ``scale`` = kappa (7.5 in Algorithm 2); 1 gives
    ``cond``, 0 gives ``uncond``."""
    _check_same(uncond, cond, "classifier_free_guidance")
    return uncond + scale * (cond - uncond)


def cid_weight(z_h: Tensor, f_real: Tensor, c: float = 1.0, eps: float = 1e-5) -> Tensor:
    """``omega(t) = C / sg[||z_h - f_phi,kappa||]`` per sample (GenDR Sec. 4.1, Algorithm 2). (B,).

    Our readings: ``||.||`` is the per-sample *mean* absolute difference (the normalisation SiD and
    DMD use, which GenDR follows), so ``omega * mean|z_h - f| = C`` at any latent size; the
    prediction is the CFG real score at the same noisy ``z_t`` as the loss (Sec. 4.1 writes
    ``f(z_t; t, c)``; Algorithm 2's ``f(z_l; t, c)`` would make the weight independent of the sampled
    t and noise). The denominator is clamped at ``eps`` and the result is detached (``sg``).
    """
    _check_same(z_h, f_real, "cid_weight")
    if c <= 0:
        raise ConfigError(f"cid_weight: C={c} must be > 0")
    dist = (z_h.detach().float() - f_real.detach().float()).abs().flatten(1).mean(dim=1)  # (B,)
    return (c / dist.clamp_min(eps)).detach()


def cid_generator_loss(f_real: Tensor, f_fake: Tensor, z_h: Tensor, omega: Tensor, xi: float = 1.2) -> Tensor:
    """CiD generator loss, Eq. 9 in Algorithm 2's final form (the lambda_1 term of L_theta^(cida))::

        L = omega * (f_r - f_f)^T ((1 - xi) f_r - z_h + xi f_f)
          = L^(3) - xi L^(1),   L^(3) = omega <f_r - f_f, f_r - z_h>  (Eq. 8),
                                L^(1) = omega ||f_r - f_f||^2          (Eq. 5, on x0 predictions)

    with ``f_r = f_sg[phi],kappa(z_t)``, ``f_f = f_sg[psi],kappa(z_t)`` (CFG x0 predictions at
    ``z_t = sqrt(abar_t) z_g + sqrt(1 - abar_t) eps``). The inner product is taken per sample as a
    mean over C*h*w (so lambda_1 does not depend on the latent size), weighted by ``omega`` (B,)
    and averaged over the batch. Float32 result. Nothing is detached here: the caller computes
    ``f_r``, ``f_f`` with frozen score parameters (:func:`cid_generator_term`).
    """
    _check_same(f_real, f_fake, "cid_generator_loss")
    _check_same(f_real, z_h, "cid_generator_loss")
    if omega.shape != (f_real.shape[0],):
        raise ImageInputError(f"cid_generator_loss: omega must have shape ({f_real.shape[0]},), got {tuple(omega.shape)}")
    fr, ff, zh = f_real.float(), f_fake.float(), z_h.float()
    inner = ((fr - ff) * ((1.0 - xi) * fr - zh + xi * ff)).flatten(1).mean(dim=1)  # (B,)
    return (omega.float() * inner).mean()


def denoising_loss(pred_x0: Tensor, target: Tensor) -> Tensor:
    """``||f(z_t; t, c) - sg[target]||^2`` as a mean over all elements: ``L_phi`` (target ``z_h``) and
    ``L_psi`` (target ``sg[z_g]``) of Eq. 7 / Algorithm 2. The target is always detached."""
    _check_same(pred_x0, target, "denoising_loss")
    return F.mse_loss(pred_x0.float(), target.detach().float())


def _tokens(x: Tensor, name: str) -> Tensor:
    """(B,D,h,w) feature map or (B,N,D) tokens -> (B,N,D)."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)  # (B,D,h,w) -> (B,h*w,D)
    if x.dim() == 3:
        return x
    raise ImageInputError(f"{name}: expected (B,D,h,w) features or (B,N,D) tokens, got shape {tuple(x.shape)}")


def repa_loss(projected: Tensor, target: Tensor, target_grid: tuple[int, int] | None = None) -> Tensor:
    """REPA term, GenDR Eq. 3: ``-1/N sum_n sim(h_E[n], h(h_t[n]))`` with ``sim`` = cosine similarity,
    averaged over the batch (so the CiDA / Algorithm 1 objectives add ``+ lambda * repa_loss``).

    ``projected`` = h(h_t), the MLP projection of the UNet's early features, (B,D,h,w); ``target`` =
    h_E, the frozen encoder's patch features, (B,D,h',w') or (B,N,D) tokens (detached here). When the
    grids differ, ``projected`` is resized to the encoder grid by bilinear interpolation (our reading:
    the paper pairs "token n" of both without saying how a UNet map meets a ViT patch grid; resizing
    the trainable side keeps the encoder features untouched). For (B,N,D) targets pass
    ``target_grid=(h', w')`` with h' * w' = N unless N equals h * w. Range [-1, 1]; float32.
    """
    if projected.dim() != 4:
        raise ImageInputError(f"repa_loss: projected features must be (B,D,h,w), got shape {tuple(projected.shape)}")
    b, d, h, w = projected.shape
    if target.dim() == 4:
        grid = tuple(target.shape[-2:])
    elif target_grid is not None:
        grid = tuple(target_grid)
    else:
        grid = (h, w)
    tgt = _tokens(target.detach(), "repa_loss")
    if tgt.shape[0] != b or tgt.shape[2] != d or tgt.shape[1] != grid[0] * grid[1]:
        raise ImageInputError(f"repa_loss: target {tuple(target.shape)} does not match projected {tuple(projected.shape)} "
                              f"on grid {grid} (need batch {b}, dim {d}, {grid[0]}x{grid[1]} tokens)")
    proj = projected.float()
    if (h, w) != grid:
        proj = F.interpolate(proj, size=grid, mode="bilinear", align_corners=False)  # (B,D,h',w')
    sim = F.cosine_similarity(_tokens(proj, "repa_loss"), tgt.float(), dim=-1)  # (B,N)
    return -sim.mean()


def base_repa_loss(eps_pred: Tensor, eps: Tensor, projected: Tensor, target: Tensor, lam: float = 0.1,
                   target_grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """SD2.1-VAE16 training objective, GenDR Algorithm 1:
    ``L = ||eps_theta - eps_t||^2 - lambda * cos(h_E, h(h_t))`` with lambda = 0.1, i.e.
    ``mse + lam * repa_loss`` (the cosine averaged over tokens as in Eq. 3). Returns
    ``{"eps": mse, "repa": repa_loss, "total": ...}``."""
    _check_same(eps_pred, eps, "base_repa_loss")
    mse = F.mse_loss(eps_pred.float(), eps.float())
    rep = repa_loss(projected, target, target_grid)
    return {"eps": mse, "repa": rep, "total": mse + lam * rep}


# ----------------------------------------------------------------------------------------------------
# Step functions on the score networks (Algorithm 2)
# ----------------------------------------------------------------------------------------------------


class ScoreModel(Protocol):
    """What the step functions need (``gendr_core.models.lora.ScoreNetworks`` implements it)."""

    alphas_cumprod: Tensor

    def x0(self, adapter: str, z_t: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...

    def x0_cfg(self, adapter: str, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float) -> Tensor: ...

    def features(self, adapter: str, z: Tensor, t: Tensor, cond: Tensor) -> list[Tensor]: ...

    def frozen(self) -> AbstractContextManager[None]: ...


def score_network_losses(scores: ScoreModel, z_h: Tensor, z_g: Tensor, t: Tensor, noise: Tensor,
                         cond: Tensor) -> dict[str, Tensor]:
    """``L_phi`` and ``L_psi`` of Algorithm 2 (Eq. 7, first two lines)::

        z_h,t = sqrt(abar_t) z_h + sqrt(1 - abar_t) eps,   L_phi = ||f_phi(z_h,t; t, c) - z_h||^2
        z_g,t = sqrt(abar_t) sg[z_g] + sqrt(1 - abar_t) eps,  L_psi = ||f_psi(z_g,t; t, c) - sg[z_g]||^2

    One ``eps`` and one ``t`` per sample for both, as the algorithm writes; ``t`` from
    {t_min..t_max}. The generator output is detached, so ``(L_phi + L_psi).backward()`` updates the
    real adapter with L_phi and the fake adapter with L_psi only. Returns
    ``{"score_real": L_phi, "score_fake": L_psi}``.
    """
    z_g = z_g.detach()
    z_ht = forward_diffuse(z_h, t, noise, scores.alphas_cumprod)
    z_gt = forward_diffuse(z_g, t, noise, scores.alphas_cumprod)
    f_real = scores.x0("real", z_ht, t, cond)
    f_fake = scores.x0("fake", z_gt, t, cond)
    return {"score_real": denoising_loss(f_real, z_h), "score_fake": denoising_loss(f_fake, z_g)}


def cid_generator_term(scores: ScoreModel, z_g: Tensor, z_h: Tensor, t: Tensor, noise: Tensor, cond: Tensor,
                       uncond: Tensor, kappa: float = 7.5, xi: float = 1.2, c: float = 1.0) -> dict[str, Tensor]:
    """The CiD term of Algorithm 2's generator update (before lambda_1).

    ``z_t = sqrt(abar_t) z_g + sqrt(1 - abar_t) eps`` keeps the graph to the generator (Algorithm 2
    stops z_g only for the score/head updates). Both score networks run under ``scores.frozen()``
    (``sg[phi]``, ``sg[psi]``): no adapter receives a gradient, but the loss is differentiable w.r.t.
    ``z_t`` through them -- the only path to theta, since Algorithm 2's final expression contains
    ``z_h`` where Eq. 7 had ``z_g``. So the generator step back-propagates through four UNet
    evaluations (real/fake x cond/uncond, batched per adapter). ``omega`` is :func:`cid_weight` on
    the CFG real prediction (detached). Returns ``{"cid": L, "omega": omega.mean()}``.
    """
    z_t = forward_diffuse(z_g, t, noise, scores.alphas_cumprod)
    with scores.frozen():
        f_real = scores.x0_cfg("real", z_t, t, cond, uncond, kappa)
        f_fake = scores.x0_cfg("fake", z_t, t, cond, uncond, kappa)
    omega = cid_weight(z_h, f_real, c)
    return {"cid": cid_generator_loss(f_real, f_fake, z_h, omega, xi), "omega": omega.mean()}


def score_discriminator_losses(scores: ScoreModel, heads: nn.Module, z_h: Tensor, z_g: Tensor, t: Tensor, cond: Tensor,
                               noise: Tensor | None = None, generator_step: bool = False) -> dict[str, Tensor]:
    """Adversarial terms of CiDA on the real-score network's features (Eq. 10, Algorithm 2 ``L_h``).

    ``features = f^_sg[phi](z; t, c)`` (encoder half of the base UNet with the real adapter, frozen),
    ``h`` = trainable heads (``gendr_core.models.discriminators.DiscriminatorHeads``). The paper
    writes the losses as log-likelihoods of Eq. 1 to be maximised; minimised with logits they are the
    softplus pair of :mod:`.adversarial`.

    * ``generator_step=False`` (the ``h`` update): ``{"adv_d": softplus(-h(f(z_h))) +
      softplus(h(f(sg[z_g])))}``; features without a graph, gradients reach the heads only.
    * ``generator_step=True`` (the lambda_2 term of the generator update): ``{"adv_g":
      softplus(-h(f(z_g)))}`` with the adapters and the heads frozen (``sg[phi]``, ``sg[h]``) and the
      graph kept to ``z_g``.

    Our reading of what the features see: the clean latent is forward-diffused to the score step
    ``t`` with ``noise`` when given (DMD2's diffusion GAN, which GenDR follows); ``noise=None``
    feeds the clean latent at step ``t``. ``t`` must be the same for both calls of one training step.
    """
    def prep(z: Tensor) -> Tensor:
        return z if noise is None else forward_diffuse(z, t, noise, scores.alphas_cumprod)

    if generator_step:
        with scores.frozen(), frozen_parameters(heads):
            logits = heads(scores.features("real", prep(z_g), t, cond))
        return {"adv_g": generator_adv_loss(logits)}
    with torch.no_grad():
        f_real = scores.features("real", prep(z_h), t, cond)
        f_fake = scores.features("real", prep(z_g.detach()), t, cond)
    return {"adv_d": discriminator_adv_loss(heads(f_real), heads(f_fake))}
