"""Forward diffusion of SD2.1's DDPM schedule, and the x0 <-> eps conversions.

Schedule (SD2.1-base ``scheduler_config.json``, REFERENCE.md 3.6): ``scaled_linear`` betas,
``beta_t = (sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) * t / 999)^2`` for t = 0..999, and
``abar_t = prod_{s<=t} (1 - beta_s)``, so ``abar_999 = 0.004660`` (the value the one-step SR
models use at t = 999). Notation: GenDR writes ``alpha_bar_t`` for ``sqrt(abar_t)`` and
``beta_bar_t`` for ``sqrt(1 - abar_t)`` (GenDR Sec. 2.1); here ``abar`` is always the cumulative
product itself and the square roots are spelled out.

Timesteps are 0-indexed integers in ``[0, num_steps)``: GenDR's "t in {20, ..., 979}" is
``sample_timesteps(b, 20, 979)``; DFOSD's "t in [0, T]" with T = 1000 is ``(0, 999)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, ImageInputError

__all__ = [
    "SD21_BETA_START",
    "SD21_BETA_END",
    "SD21_NUM_STEPS",
    "scaled_linear_alphas_cumprod",
    "forward_diffuse",
    "eps_to_x0",
    "x0_to_eps",
    "sample_timesteps",
]

SD21_BETA_START = 0.00085
SD21_BETA_END = 0.012
SD21_NUM_STEPS = 1000


def scaled_linear_alphas_cumprod(
    num_steps: int = SD21_NUM_STEPS, beta_start: float = SD21_BETA_START, beta_end: float = SD21_BETA_END
) -> Tensor:
    """``abar_t`` for t = 0..num_steps-1 of the scaled-linear DDPM schedule, float64 (num_steps,)."""
    if num_steps < 2:
        raise ConfigError(f"scaled_linear_alphas_cumprod: num_steps={num_steps} must be >= 2")
    if not 0 < beta_start < beta_end < 1:
        raise ConfigError(f"scaled_linear_alphas_cumprod: need 0 < beta_start={beta_start} < beta_end={beta_end} < 1")
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _coefficients(t: Tensor, alphas_cumprod: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) gathered per sample and shaped (B,1,...,1) like ``like``."""
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ImageInputError(f"timesteps must be a (B,) tensor with B={like.shape[0]}, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point:
        raise ImageInputError(f"timesteps must be integers (0-indexed DDPM steps), got dtype {t.dtype}")
    n = alphas_cumprod.shape[0]
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ImageInputError(f"timesteps must lie in [0, {n}), got min {int(t.min())}, max {int(t.max())}")
    abar = alphas_cumprod.to(like.device)[t.to(like.device)]  # (B,) float64
    shape = (-1,) + (1,) * (like.dim() - 1)
    return abar.sqrt().to(like.dtype).view(shape), (1.0 - abar).sqrt().to(like.dtype).view(shape)


def forward_diffuse(z: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` (GenDR Sec. 2.1; DFOSD Eq. 4 ``F(z, t)``).

    z, noise: (B,C,H,W); t: (B,) integer steps. Differentiable in ``z`` (and ``noise``): a caller that
    needs ``sg[z]`` passes ``z.detach()``.
    """
    if noise.shape != z.shape:
        raise ImageInputError(f"forward_diffuse: noise shape {tuple(noise.shape)} != latent shape {tuple(z.shape)}")
    a, s = _coefficients(t, alphas_cumprod, z)
    return a * z + s * noise


def eps_to_x0(z_t: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """``x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (GenDR Eq. 2; DFOSD Eq. 1): the latent a
    noise-predicting UNet implies; GenDR's ``f(z_t; t, c)`` of Eq. 7 for an eps-prediction base."""
    a, s = _coefficients(t, alphas_cumprod, z_t)
    return (z_t - s * eps) / a


def x0_to_eps(z_t: Tensor, x0: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Inverse of :func:`eps_to_x0`: ``eps = (z_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``."""
    a, s = _coefficients(t, alphas_cumprod, z_t)
    return (z_t - a * x0) / s


def sample_timesteps(
    batch: int,
    t_min: int,
    t_max: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``batch`` integer steps uniform in ``{t_min, ..., t_max}`` (both ends included), (B,) int64."""
    if batch < 1:
        raise ConfigError(f"sample_timesteps: batch={batch} must be >= 1")
    if not 0 <= t_min <= t_max:
        raise ConfigError(f"sample_timesteps: need 0 <= t_min={t_min} <= t_max={t_max}")
    t = torch.randint(t_min, t_max + 1, (batch,), generator=generator, dtype=torch.long)
    return t if device is None else t.to(device)
