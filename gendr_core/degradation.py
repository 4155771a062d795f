"""Synthetic LR degradation: Real-ESRGAN second-order model plus APISR-style codecs.

Our own implementation (no basicsr) of the x4plus degradation of Real-ESRGAN (Wang et al.,
ICCVW 2021, ``train_realesrnet_x4plus.yml``) with the video/WebP compression of APISR (Wang
et al., CVPR 2024)::

    HR -> stage 1: blur -> resize (x [0.15, 1.5] of the current size) -> noise -> JPEG
       -> stage 2: blur (p=0.8) -> resize (x [0.3, 1.2] of the LR size) -> noise
       -> 50/50: [resize to LR + sinc (p=0.8) -> codec]  or  [codec -> resize to LR + sinc]
       -> clamp to [0, 1], round to 8-bit levels k/255.

Reproducibility: :func:`sample_degradation` draws *every* random number (kernels, sizes,
noise levels, codec settings and the seed of the noise itself) from an explicit
``torch.Generator`` into a :class:`DegradationParams` of plain numbers/strings (JSON
loggable); :func:`degrade` then applies them deterministically, so an (HR, LR) pair is
reproduced from the seed or from the logged JSON.

Sizes: the LR output is exactly ``(H // s, W // s)`` (floor; the data pipeline uses HR crops
divisible by ``s``, so LR = HR / s exactly).

Timing (2 shared, busy CPU cores, torch 2.13, ``torch.set_num_threads(1)``, batch of 8 HR
crops 256x256 through :func:`degrade_random`, median of 10 batches): default config (Real-ESRGAN
+ jpeg/webp/h264/h265 final mix) x4: 0.18-0.30 s per batch = 22-37 ms per crop (x3: ~27 ms,
x2: ~40 ms per crop, larger LR for the codecs); JPEG-only ``realesrgan(apisr_codecs=False)``
x4: ~27 ms per crop; :func:`fixed_eval_degradation` x4: ~6 ms per crop. Blur dominates
(rank-1 kernels such as the isotropic Gaussian run as two 1-D passes), then Poisson noise
and codecs. With two intra-op threads on a contended machine everything is ~3x slower: run
it in DataLoader workers (1 thread each) or set ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .config import JSONConfig
from .errors import ConfigError, GenDRPixError, ImageInputError, MissingDependencyError

logger = logging.getLogger(__name__)

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_KINDS = KERNEL_TYPES + ("sinc",)
RESIZE_MODES = ("area", "bilinear", "bicubic")
CODECS = ("none", "jpeg", "webp", "h264", "h265")
VIDEO_CODECS = ("h264", "h265")
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")
NOISE_KINDS = ("none", "gaussian", "poisson")
RESIZE_REFERENCES = ("current", "target")

# Real-ESRGAN x4plus: kernel_range = [2*v+1 for v in range(3, 11)] -> 7, 9, ..., 21.
REALESRGAN_KERNEL_SIZES: tuple[int, ...] = tuple(range(7, 22, 2))
# Real-ESRGAN x4plus kernel_prob for KERNEL_TYPES.
REALESRGAN_KERNEL_PROBS: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
_THIRD = (1 / 3, 1 / 3, 1 / 3)
# Sinc kernels smaller than this use the narrower cutoff range (Real-ESRGAN: k < 13).
SINC_SMALL_KERNEL_LIMIT = 13
# Smallest side of an intermediate image (stage resizes of tiny inputs never reach 0 px).
_MIN_SIDE = 2
# Video encoders get frames padded to at least this size (x265 rejects tiny pictures).
_MIN_VIDEO_SIDE = 16
_PROB_TOL = 1e-6


# --------------------------------------------------------------------------- validation


def _check_prob(where: str, p: float) -> None:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"{where}={p!r} must be a probability in [0, 1]")


def _check_probs(where: str, probs: Sequence[float], n: int) -> None:
    if len(probs) != n:
        raise ConfigError(f"{where}={tuple(probs)} must have {n} entries (one per choice)")
    for p in probs:
        _check_prob(where, p)
    if n and abs(sum(probs) - 1.0) > _PROB_TOL:
        raise ConfigError(f"{where}={tuple(probs)} must sum to 1 (sums to {sum(probs):.6g})")


def _check_range(where: str, r: Sequence[float], lo: float | None = None, hi: float | None = None,
                 integer: bool = False) -> None:
    ok = len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
    if ok and integer:
        ok = all(isinstance(v, int) for v in r)
    if ok:
        ok = all(math.isfinite(v) for v in r) and r[0] <= r[1]
    if ok and lo is not None:
        ok = r[0] >= lo
    if ok and hi is not None:
        ok = r[1] <= hi
    if not ok:
        kind = "integers" if integer else "numbers"
        bounds = f" within [{lo}, {hi}]" if lo is not None or hi is not None else ""
        raise ConfigError(f"{where}={tuple(r)!r} must be (low, high) {kind} with low <= high{bounds}")


def _check_choices(where: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{where}={tuple(values)!r} has unknown entries {bad}; valid: {list(allowed)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}={tuple(values)!r} has duplicate entries")


def _check_kernel_sizes(where: str, sizes: Sequence[int]) -> None:
    if not sizes or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0
                        for k in sizes):
        raise ConfigError(f"{where}={tuple(sizes)!r} must be a non-empty list of odd sizes >= 1")


# ------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class CodecConfig(JSONConfig):
    """Codec choice and settings: JPEG q [30,95] (Real-ESRGAN); WebP/H.264/H.265 ranges of APISR."""

    names: tuple[str, ...] = ("jpeg",)  # any of CODECS; empty or ("none",) = no compression
    probs: tuple[float, ...] = (1.0,)
    jpeg_quality: tuple[int, int] = (30, 95)
    webp_quality: tuple[int, int] = (20, 95)
    webp_method: tuple[int, int] = (0, 6)
    h264_crf: tuple[int, int] = (23, 38)
    h265_crf: tuple[int, int] = (28, 42)
    video_presets: tuple[str, ...] = ("slow", "medium", "fast", "faster", "superfast")
    video_preset_probs: tuple[float, ...] = (0.05, 0.35, 0.3, 0.2, 0.1)

    def __post_init__(self) -> None:
        _check_choices("CodecConfig.names", self.names, CODECS)
        _check_probs("CodecConfig.probs", self.probs, len(self.names))
        _check_range("CodecConfig.jpeg_quality", self.jpeg_quality, 1, 100, integer=True)
        _check_range("CodecConfig.webp_quality", self.webp_quality, 0, 100, integer=True)
        _check_range("CodecConfig.webp_method", self.webp_method, 0, 6, integer=True)
        _check_range("CodecConfig.h264_crf", self.h264_crf, 0, 51, integer=True)
        _check_range("CodecConfig.h265_crf", self.h265_crf, 0, 51, integer=True)
        _check_choices("CodecConfig.video_presets", self.video_presets, X26X_PRESETS)
        _check_probs("CodecConfig.video_preset_probs", self.video_preset_probs, len(self.video_presets))
        if not self.video_presets and self.uses_video:
            raise ConfigError("CodecConfig.video_presets is empty but a video codec is enabled")

    @property
    def uses_video(self) -> bool:
        """True when H.264/H.265 (PyAV) can be drawn."""
        return any(n in VIDEO_CODECS and p > 0 for n, p in zip(self.names, self.probs, strict=True))


NO_CODEC = CodecConfig(names=(), probs=())
# Final-stage mix (our choice, after APISR's image+video codec mix): 40% JPEG, 20% each of
# WebP, H.264, H.265.
APISR_FINAL_CODEC = CodecConfig(names=("jpeg", "webp", "h264", "h265"), probs=(0.4, 0.2, 0.2, 0.2))


@dataclass(frozen=True)
class DegradationStage(JSONConfig):
    """One blur -> resize -> noise -> codec stage; defaults = Real-ESRGAN x4plus first stage."""

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = REALESRGAN_KERNEL_SIZES
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = REALESRGAN_KERNEL_PROBS
    sinc_prob: float = 0.1
    sinc_omega_small: tuple[float, float] = (math.pi / 3, math.pi)  # kernel size < 13
    sinc_omega_large: tuple[float, float] = (math.pi / 5, math.pi)  # kernel size >= 13
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape
    betap: tuple[float, float] = (1.0, 2.0)  # plateau shape
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    # "current": factor of the incoming size (Real-ESRGAN stage 1); "target": of the LR size
    # H//s (Real-ESRGAN stage 2).
    resize_relative_to: str = "current"
    resize_modes: tuple[str, ...] = RESIZE_MODES
    resize_mode_probs: tuple[float, ...] = _THIRD
    antialias: bool = False  # Real-ESRGAN resizes without antialiasing
    noise_prob: float = 1.0
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # Gaussian sigma in 8-bit levels (/255)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    codec: CodecConfig = CodecConfig()

    def __post_init__(self) -> None:
        w = "DegradationStage"
        _check_prob(f"{w}.blur_prob", self.blur_prob)
        _check_kernel_sizes(f"{w}.kernel_sizes", self.kernel_sizes)
        _check_choices(f"{w}.kernel_types", self.kernel_types, KERNEL_TYPES)
        _check_probs(f"{w}.kernel_probs", self.kernel_probs, len(self.kernel_types))
        _check_prob(f"{w}.sinc_prob", self.sinc_prob)
        _check_range(f"{w}.sinc_omega_small", self.sinc_omega_small, 1e-6, math.pi + 1e-9)
        _check_range(f"{w}.sinc_omega_large", self.sinc_omega_large, 1e-6, math.pi + 1e-9)
        _check_range(f"{w}.blur_sigma", self.blur_sigma, 1e-3)
        _check_range(f"{w}.betag", self.betag, 1e-3)
        _check_range(f"{w}.betap", self.betap, 1e-3)
        _check_probs(f"{w}.resize_probs", self.resize_probs, 3)
        _check_range(f"{w}.resize_range", self.resize_range, 1e-3)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ConfigError(f"{w}.resize_range={self.resize_range} must contain 1 "
                              "(down factors are drawn from [low, 1], up factors from [1, high])")
        if self.resize_relative_to not in RESIZE_REFERENCES:
            raise ConfigError(f"{w}.resize_relative_to={self.resize_relative_to!r}; "
                              f"valid: {list(RESIZE_REFERENCES)}")
        _check_choices(f"{w}.resize_modes", self.resize_modes, RESIZE_MODES)
        if not self.resize_modes:
            raise ConfigError(f"{w}.resize_modes is empty; valid: {list(RESIZE_MODES)}")
        _check_probs(f"{w}.resize_mode_probs", self.resize_mode_probs, len(self.resize_modes))
        if not isinstance(self.antialias, bool):
            raise ConfigError(f"{w}.antialias={self.antialias!r} must be true/false")
        _check_prob(f"{w}.noise_prob", self.noise_prob)
        _check_prob(f"{w}.gaussian_noise_prob", self.gaussian_noise_prob)
        _check_range(f"{w}.noise_sigma", self.noise_sigma, 0.0)
        _check_range(f"{w}.poisson_scale", self.poisson_scale, 0.0)
        _check_prob(f"{w}.gray_noise_prob", self.gray_noise_prob)
        if not isinstance(self.codec, CodecConfig):
            raise ConfigError(f"{w}.codec={self.codec!r} must be a CodecConfig")


# Real-ESRGAN x4plus first and second order stages.
REALESRGAN_STAGE1 = DegradationStage()
REALESRGAN_STAGE2 = DegradationStage(
    blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
    resize_relative_to="target", noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5),
    codec=NO_CODEC,
)


def _stages_from_json(owner: str, stages: Any, cls: type) -> tuple:
    """Accept stage entries given as dicts (from JSON) and turn them into ``cls`` instances."""
    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"{owner}.stages={stages!r} must be a list")
    out = []
    for i, s in enumerate(stages):
        if isinstance(s, dict):
            s = cls.from_dict(s, f"{owner}.stages[{i}]")
        if not isinstance(s, cls):
            raise ConfigError(f"{owner}.stages[{i}]={s!r} must be a {cls.__name__}")
        out.append(s)
    return tuple(out)


@dataclass(frozen=True)
class DegradationConfig(JSONConfig):
    """Whole degradation model; defaults = Real-ESRGAN x4plus + APISR final codec mix, x2/x3/x4."""

    stages: tuple[DegradationStage, ...] = (REALESRGAN_STAGE1, REALESRGAN_STAGE2)
    scales: tuple[int, ...] = (2, 3, 4)  # drawn uniformly unless a scale is passed in
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = REALESRGAN_KERNEL_SIZES
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    final_resize_modes: tuple[str, ...] = RESIZE_MODES
    final_resize_mode_probs: tuple[float, ...] = _THIRD
    final_antialias: bool = False
    final_codec_first_prob: float = 0.5  # codec before (vs after) the final resize + sinc
    final_codec: CodecConfig = APISR_FINAL_CODEC

    def __post_init__(self) -> None:
        w = "DegradationConfig"
        object.__setattr__(self, "stages", _stages_from_json(w, self.stages, DegradationStage))
        if not self.scales or any(not isinstance(s, int) or isinstance(s, bool) or s < 1
                                  for s in self.scales):
            raise ConfigError(f"{w}.scales={self.scales!r} must be a non-empty list of integers >= 1")
        _check_prob(f"{w}.final_sinc_prob", self.final_sinc_prob)
        _check_kernel_sizes(f"{w}.final_sinc_sizes", self.final_sinc_sizes)
        _check_range(f"{w}.final_sinc_omega", self.final_sinc_omega, 1e-6, math.pi + 1e-9)
        _check_choices(f"{w}.final_resize_modes", self.final_resize_modes, RESIZE_MODES)
        if not self.final_resize_modes:
            raise ConfigError(f"{w}.final_resize_modes is empty; valid: {list(RESIZE_MODES)}")
        _check_probs(f"{w}.final_resize_mode_probs", self.final_resize_mode_probs,
                     len(self.final_resize_modes))
        if not isinstance(self.final_antialias, bool):
            raise ConfigError(f"{w}.final_antialias={self.final_antialias!r} must be true/false")
        _check_prob(f"{w}.final_codec_first_prob", self.final_codec_first_prob)
        if not isinstance(self.final_codec, CodecConfig):
            raise ConfigError(f"{w}.final_codec={self.final_codec!r} must be a CodecConfig")

    @classmethod
    def realesrgan(cls, apisr_codecs: bool = True, scales: tuple[int, ...] = (2, 3, 4)) -> DegradationConfig:
        """Real-ESRGAN x4plus; final codec = APISR mix, or JPEG [30,95] only with apisr_codecs=False."""
        return cls(scales=tuple(scales), final_codec=APISR_FINAL_CODEC if apisr_codecs else CodecConfig())

    @classmethod
    def fixed_eval(cls, scale: int = 4) -> DegradationConfig:
        """Eval preset: iso Gaussian blur sigma=1.2 (k=21), bicubic /s, noise 5/255 (color), JPEG q=75."""
        blur = DegradationStage(
            blur_prob=1.0, kernel_sizes=(21,), kernel_types=("iso",), kernel_probs=(1.0,),
            sinc_prob=0.0, blur_sigma=(1.2, 1.2), resize_probs=(0.0, 0.0, 1.0), resize_modes=("bicubic",),
            resize_mode_probs=(1.0,), noise_prob=0.0, codec=NO_CODEC,
        )
        down_noise = DegradationStage(
            blur_prob=0.0, resize_probs=(0.0, 0.0, 1.0), resize_relative_to="target",
            resize_modes=("bicubic",), resize_mode_probs=(1.0,), antialias=True, noise_prob=1.0,
            gaussian_noise_prob=1.0, noise_sigma=(5.0, 5.0), gray_noise_prob=0.0, codec=NO_CODEC,
        )
        return cls(
            stages=(blur, down_noise), scales=(scale,), final_sinc_prob=0.0,
            final_resize_modes=("bicubic",), final_resize_mode_probs=(1.0,), final_antialias=True,
            final_codec_first_prob=0.0, final_codec=CodecConfig(jpeg_quality=(75, 75)),
        )

    @classmethod
    def bicubic(cls, scales: tuple[int, ...] = (4,)) -> DegradationConfig:
        """Clean LR: antialiased bicubic /s only (then 8-bit rounding)."""
        return cls(stages=(), scales=tuple(scales), final_sinc_prob=0.0, final_resize_modes=("bicubic",),
                   final_resize_mode_probs=(1.0,), final_antialias=True, final_codec=NO_CODEC)

    @property
    def uses_video(self) -> bool:
        """True when any stage can draw H.264/H.265 (needs PyAV)."""
        return self.final_codec.uses_video or any(s.codec.uses_video for s in self.stages)

    def check_dependencies(self) -> None:
        """Raise MissingDependencyError now (not mid-training) when a video codec lacks PyAV."""
        if self.uses_video:
            _require_pyav("h264/h265")


def fixed_eval_degradation(scale: int = 4) -> DegradationConfig:
    """The deterministic evaluation degradation (see :meth:`DegradationConfig.fixed_eval`)."""
    return DegradationConfig.fixed_eval(scale)


# ------------------------------------------------------------------------ sampled params


@dataclass(frozen=True)
class KernelParams(JSONConfig):
    """One blur kernel: Gaussian family (sigma_x/y, theta, beta) or sinc (omega_c)."""

    kind: str  # one of KERNEL_KINDS
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    theta: float = 0.0
    beta: float = 1.0
    omega_c: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KERNEL_KINDS:
            raise ConfigError(f"KernelParams.kind={self.kind!r}; valid: {list(KERNEL_KINDS)}")
        _check_kernel_sizes("KernelParams.size", (self.size,))
        if self.kind == "sinc":
            if not 0.0 < self.omega_c <= math.pi + 1e-9:
                raise ConfigError(f"KernelParams.omega_c={self.omega_c!r} must be in (0, pi]")
        elif not (self.sigma_x > 0 and self.sigma_y > 0 and self.beta > 0):
            raise ConfigError(f"KernelParams sigma_x={self.sigma_x!r}, sigma_y={self.sigma_y!r}, "
                              f"beta={self.beta!r} must all be > 0")


@dataclass(frozen=True)
class CodecParams(JSONConfig):
    """One compression pass; quality is JPEG/WebP quality or the x264/x265 CRF."""

    codec: str
    quality: int
    method: int = 4  # WebP effort 0..6
    preset: str = "medium"  # x264/x265 preset

    def __post_init__(self) -> None:
        if self.codec not in CODECS or self.codec == "none":
            raise ConfigError(f"CodecParams.codec={self.codec!r}; valid: {list(CODECS[1:])}")
        if not isinstance(self.quality, int) or not 0 <= self.quality <= 100:
            raise ConfigError(f"CodecParams.quality={self.quality!r} must be an integer in [0, 100]")
        if self.preset not in X26X_PRESETS:
            raise ConfigError(f"CodecParams.preset={self.preset!r}; valid: {list(X26X_PRESETS)}")


@dataclass(frozen=True)
class StageParams(JSONConfig):
    """Sampled values of one stage; resize_size None = no resize."""

    blur: KernelParams | None = None
    resize_size: tuple[int, int] | None = None  # (h, w) after the resize
    resize_mode: str = "bilinear"
    resize_antialias: bool = False
    resize_factor: float = 1.0  # drawn factor, for logging
    noise: str = "none"  # one of NOISE_KINDS
    noise_level: float = 0.0  # Gaussian sigma in [0,1] units, or Poisson scale
    noise_gray: bool = False
    codec: CodecParams | None = None

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"StageParams.resize_mode={self.resize_mode!r}; valid: {list(RESIZE_MODES)}")
        if self.noise not in NOISE_KINDS:
            raise ConfigError(f"StageParams.noise={self.noise!r}; valid: {list(NOISE_KINDS)}")
        if self.resize_size is not None and (len(self.resize_size) != 2 or min(self.resize_size) < 1):
            raise ConfigError(f"StageParams.resize_size={self.resize_size!r} must be (h, w) >= 1")


@dataclass(frozen=True)
class DegradationParams(JSONConfig):
    """Everything :func:`degrade` needs, as plain numbers/strings (log it with ``to_json()``)."""

    scale: int
    hr_size: tuple[int, int]
    lr_size: tuple[int, int]
    stages: tuple[StageParams, ...] = ()
    final_resize_mode: str = "bicubic"
    final_antialias: bool = False
    final_sinc: KernelParams | None = None
    final_codec: CodecParams | None = None
    final_codec_first: bool = False
    noise_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", _stages_from_json("DegradationParams", self.stages, StageParams))
        if self.final_resize_mode not in RESIZE_MODES:
            raise ConfigError(f"DegradationParams.final_resize_mode={self.final_resize_mode!r}; "
                              f"valid: {list(RESIZE_MODES)}")
        if (not isinstance(self.scale, int) or self.scale < 1 or len(self.hr_size) != 2
                or len(self.lr_size) != 2 or min(self.lr_size) < 1):
            raise ConfigError(f"DegradationParams scale={self.scale!r}, hr_size={self.hr_size!r}, "
                              f"lr_size={self.lr_size!r} are inconsistent")


# ------------------------------------------------------------------------------ kernels


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Centred float64 (y, x) coordinates of a size x size kernel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")  # (k, k) each
    return yy, xx


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                    beta: float = 1.0, family: str = "gaussian") -> Tensor:
    """Rotated (generalized/plateau) Gaussian, normalized to sum 1 (Real-ESRGAN eqs. 1-2)."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    yy, xx = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # x^T Sigma^-1 x with Sigma = R diag(sx^2, sy^2) R^T: rotate the grid into the kernel frame.
    u = c * xx + s * yy
    v = -s * xx + c * yy
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    if family == "gaussian":
        k = torch.exp(-0.5 * q)
    elif family == "generalized":
        k = torch.exp(-0.5 * q.pow(beta))
    elif family == "plateau":
        k = 1.0 / (1.0 + q.pow(beta))
    else:
        raise ConfigError(f"kernel family={family!r}; valid: ['gaussian', 'generalized', 'plateau']")
    return (k / k.sum()).float()


def sinc_kernel(size: int, omega_c: float) -> Tensor:
    """Circular low-pass omega_c*J1(omega_c*r)/(2*pi*r), centre omega_c^2/(4*pi); sums to 1."""
    yy, xx = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)
    r_safe = torch.where(r == 0, torch.ones_like(r), r)
    k = omega_c * torch.special.bessel_j1(omega_c * r_safe) / (2 * math.pi * r_safe)
    k = torch.where(r == 0, torch.full_like(r, omega_c**2 / (4 * math.pi)), k)
    return (k / k.sum()).float()


def make_kernel(p: KernelParams) -> Tensor:
    """The (size, size) float32 kernel described by ``p``."""
    if p.kind == "sinc":
        return sinc_kernel(p.size, p.omega_c)
    family = "generalized" if p.kind.startswith("generalized") else (
        "plateau" if p.kind.startswith("plateau") else "gaussian")
    return gaussian_kernel(p.size, p.sigma_x, p.sigma_y, p.theta, p.beta, family)


def _separable(kernel: Tensor) -> tuple[Tensor, Tensor] | None:
    """(column, row) 1-D factors when a (k,k) kernel has rank 1 (k >= 9 only), else None."""
    if kernel.shape[-1] < 9:
        return None
    u, sv, vh = torch.linalg.svd(kernel.double())
    if sv[1] > 1e-7 * sv[0]:
        return None
    root = sv[0].sqrt()
    return u[:, 0] * root, vh[0] * root


def filter2d(x: Tensor, kernel: Tensor) -> Tensor:
    """Filter (B,C,H,W) with one (k,k) or per-sample (B,k,k) kernel; reflect padding."""
    b, c, h, w = x.shape
    shared = kernel.dim() == 2 or (kernel.shape[0] == 1 and b == 1)
    if kernel.dim() == 2:
        kernel = kernel.expand(b, *kernel.shape)
    k = kernel.shape[-1]
    if kernel.shape != (b, k, k) or k % 2 == 0:
        raise ConfigError(f"filter2d: kernel shape {tuple(kernel.shape)} must be (k,k) or ({b},k,k), k odd")
    p = k // 2
    # Reflect needs pad < side; images smaller than the kernel fall back to edge replication.
    mode = "reflect" if p < h and p < w else "replicate"
    xp = F.pad(x, (p, p, p, p), mode=mode)  # (B, C, H+2p, W+2p)
    sep = _separable(kernel[0]) if shared else None
    if sep is not None:  # rank-1 kernel (e.g. isotropic Gaussian): two 1-D passes, ~4x faster at k=21
        col, row = (v.to(x) for v in sep)
        out = F.conv2d(xp, col.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)  # (B, C, H, W+2p)
        return F.conv2d(out, row.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)  # (B, C, H, W)
    weight = kernel.to(x).repeat_interleave(c, dim=0).unsqueeze(1)  # (B*C, 1, k, k)
    # Symmetric kernels: correlation == convolution. One group per (sample, channel).
    out = F.conv2d(xp.reshape(1, b * c, h + 2 * p, w + 2 * p), weight, groups=b * c)  # (1, B*C, H, W)
    return out.view(b, c, h, w)


def resize(x: Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> Tensor:
    """F.interpolate to exactly ``size``; antialias applies to bilinear/bicubic downscaling."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=tuple(size), mode="area")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False, antialias=antialias)


# -------------------------------------------------------------------------------- noise


def _luma(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma (B,1,H,W), as torchvision rgb_to_grayscale."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def add_gaussian_noise(x: Tensor, sigma: float, gray: bool, gen: torch.Generator) -> Tensor:
    """x + N(0, sigma^2) (one channel repeated if gray), clamped to [0,1] (Real-ESRGAN)."""
    b, c, h, w = x.shape
    noise = torch.randn((b, 1 if gray else c, h, w), generator=gen, dtype=torch.float32)
    return (x + noise.to(x) * sigma).clamp(0, 1)


def add_poisson_noise(x: Tensor, scale: float, gray: bool, gen: torch.Generator) -> Tensor:
    """Real-ESRGAN Poisson noise: vals = 2^ceil(log2(#distinct 8-bit levels)), noise*scale."""
    x = x.clamp(0, 1)
    img = _luma(x) if gray else x
    q8 = (img * 255).round()  # (B, 1|3, H, W) in 0..255
    q = (q8 / 255).cpu()
    levels = [int((torch.bincount(q8[i].flatten().to(torch.int64).cpu(), minlength=256) > 0).sum())
              for i in range(q8.shape[0])]
    vals = torch.tensor([2.0 ** math.ceil(math.log2(max(n, 1))) for n in levels],
                        dtype=q.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    noise = torch.poisson(q * vals, generator=gen) / vals - q
    return (x + noise.to(x) * scale).clamp(0, 1)


# ------------------------------------------------------------------------------- codecs


def _to_uint8_hwc(x: Tensor) -> np.ndarray:
    """(3,H,W) float [0,1] -> (H,W,3) uint8 with rounding."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def _pillow_roundtrip(arr: np.ndarray, fmt: str, **kwargs: Any) -> np.ndarray:
    """Encode/decode an (H,W,3) uint8 array in memory with Pillow."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kwargs)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _require_pyav(codec: str) -> Any:
    """Import PyAV or raise MissingDependencyError naming the install command."""
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            f"codec {codec!r} needs PyAV for H.264/H.265 encoding: `pip install av` (or drop "
            "'h264'/'h265' from the codec names of the DegradationConfig)") from exc
    return av


def _video_roundtrip(arr: np.ndarray, codec: str, crf: int, preset: str) -> np.ndarray:
    """Single-frame H.264/H.265 (yuv420p) encode + decode in memory via PyAV."""
    av = _require_pyav(codec)
    h, w = arr.shape[:2]
    # yuv420p needs even sides; x265 also rejects tiny frames. Pad by edge copy, crop back.
    ph, pw = max(_MIN_VIDEO_SIDE, h + h % 2), max(_MIN_VIDEO_SIDE, w + w % 2)
    if (ph, pw) != (h, w):
        arr = np.pad(arr, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    enc = av.CodecContext.create("libx264" if codec == "h264" else "libx265", "w")
    enc.width, enc.height, enc.pix_fmt = pw, ph, "yuv420p"
    enc.time_base = Fraction(1, 25)
    opts = {"crf": str(crf), "preset": preset}
    if codec == "h264":
        opts["threads"] = "1"
    else:
        opts["x265-params"] = "log-level=none:pools=none:frame-threads=1"
    enc.options = opts
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24").reformat(format="yuv420p")
    packets = [*enc.encode(frame), *enc.encode(None)]
    dec = av.CodecContext.create("h264" if codec == "h264" else "hevc", "r")
    frames = [f for p in packets for f in dec.decode(p)]
    frames += list(dec.decode(None))
    if not frames:
        raise GenDRPixError(f"{codec} round trip of a {w}x{h} frame produced no frame (crf={crf}, {preset})")
    return np.ascontiguousarray(frames[0].to_ndarray(format="rgb24")[:h, :w])


def apply_codec(x: Tensor, p: CodecParams) -> Tensor:
    """Compress + decompress a (3,H,W) or (1,3,H,W) image; output on 8-bit levels."""
    squeeze = x.dim() == 3
    img = x if squeeze else x[0]
    arr = _to_uint8_hwc(img)
    if p.codec == "jpeg":
        out = _pillow_roundtrip(arr, "JPEG", quality=p.quality)
    elif p.codec == "webp":
        out = _pillow_roundtrip(arr, "WEBP", quality=p.quality, method=p.method)
    else:
        out = _video_roundtrip(arr, p.codec, p.quality, p.preset)
    y = torch.from_numpy(out.copy()).permute(2, 0, 1).to(device=x.device, dtype=x.dtype) / 255
    return y if squeeze else y.unsqueeze(0)


# ----------------------------------------------------------------------------- sampling


def _rand(gen: torch.Generator) -> float:
    return float(torch.rand(1, generator=gen, dtype=torch.float64))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo) + (float(hi) - float(lo)) * _rand(gen)


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] inclusive."""
    return int(torch.randint(int(lo), int(hi) + 1, (1,), generator=gen))


def _choice(gen: torch.Generator, items: Sequence[Any], probs: Sequence[float] | None = None) -> Any:
    u = _rand(gen)
    if probs is None:
        return items[min(int(u * len(items)), len(items) - 1)]
    cum = 0.0
    for item, p in zip(items, probs, strict=True):
        cum += p
        if u < cum:
            return item
    return [i for i, p in zip(items, probs, strict=True) if p > 0][-1]  # rounding: sum(probs) slightly < 1


def _bernoulli(gen: torch.Generator, p: float) -> bool:
    return _rand(gen) < p  # always consumes one draw, so p=0/1 keep the stream aligned


def _sample_beta(gen: torch.Generator, r: tuple[float, float]) -> float:
    """Real-ESRGAN: beta ~ U(low, 1) or U(1, high) with probability 1/2 each."""
    if _rand(gen) < 0.5:
        return _uniform(gen, r[0], min(1.0, r[1]))
    return _uniform(gen, max(1.0, r[0]), r[1])


def _sample_kernel(st: DegradationStage, gen: torch.Generator) -> KernelParams:
    size = _choice(gen, st.kernel_sizes)
    if _bernoulli(gen, st.sinc_prob):
        lo, hi = st.sinc_omega_small if size < SINC_SMALL_KERNEL_LIMIT else st.sinc_omega_large
        return KernelParams("sinc", size, omega_c=_uniform(gen, lo, hi))
    kind = _choice(gen, st.kernel_types, st.kernel_probs)
    sx = _uniform(gen, *st.blur_sigma)
    sy, theta = sx, 0.0
    if kind.endswith("aniso"):
        sy = _uniform(gen, *st.blur_sigma)
        theta = _uniform(gen, -math.pi, math.pi)
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _sample_beta(gen, st.betag)
    elif kind.startswith("plateau"):
        beta = _sample_beta(gen, st.betap)
    return KernelParams(kind, size, sx, sy, theta, beta)


def _sample_codec(cc: CodecConfig, gen: torch.Generator) -> CodecParams | None:
    if not cc.names:
        return None
    name = _choice(gen, cc.names, cc.probs)
    if name == "jpeg":
        return CodecParams("jpeg", _randint(gen, *cc.jpeg_quality))
    if name == "webp":
        q = _randint(gen, *cc.webp_quality)
        return CodecParams("webp", q, method=_randint(gen, *cc.webp_method))
    if name in VIDEO_CODECS:
        crf = _randint(gen, *(cc.h264_crf if name == "h264" else cc.h265_crf))
        return CodecParams(name, crf, preset=_choice(gen, cc.video_presets, cc.video_preset_probs))
    return None  # "none"


def _sample_stage(st: DegradationStage, gen: torch.Generator, cur: tuple[int, int],
                  lr: tuple[int, int]) -> tuple[StageParams, tuple[int, int]]:
    blur = _sample_kernel(st, gen) if _bernoulli(gen, st.blur_prob) else None
    updown = _choice(gen, ("up", "down", "keep"), st.resize_probs)
    factor = (_uniform(gen, 1.0, st.resize_range[1]) if updown == "up"
              else _uniform(gen, st.resize_range[0], 1.0) if updown == "down" else 1.0)
    mode = _choice(gen, st.resize_modes, st.resize_mode_probs)
    ref = cur if st.resize_relative_to == "current" else lr
    size = (max(_MIN_SIDE, int(ref[0] * factor)), max(_MIN_SIDE, int(ref[1] * factor)))
    noise, level, gray = "none", 0.0, False
    if _bernoulli(gen, st.noise_prob):
        if _bernoulli(gen, st.gaussian_noise_prob):
            noise, level = "gaussian", _uniform(gen, *st.noise_sigma) / 255.0
        else:
            noise, level = "poisson", _uniform(gen, *st.poisson_scale)
        gray = _bernoulli(gen, st.gray_noise_prob)
    codec = _sample_codec(st.codec, gen)
    params = StageParams(
        blur=blur, resize_size=None if size == cur else size, resize_mode=mode,
        resize_antialias=st.antialias, resize_factor=factor, noise=noise, noise_level=level,
        noise_gray=gray, codec=codec,
    )
    return params, size


def sample_degradation(cfg: DegradationConfig, gen: torch.Generator, hr_size: tuple[int, int],
                       scale: int | None = None) -> DegradationParams:
    """Draw all random values (incl. the noise seed) from ``gen``; LR size = (H // s, W // s)."""
    h, w = (int(v) for v in hr_size)
    s = int(scale) if scale is not None else _choice(gen, cfg.scales)
    if s < 1:
        raise ConfigError(f"scale={scale!r} must be >= 1")
    lr = (h // s, w // s)
    if min(lr) < 1:
        raise ImageInputError(f"HR size {h}x{w} is smaller than the scale x{s}; no LR pixel is left")
    cur = (h, w)
    stages = []
    for st in cfg.stages:
        sp, cur = _sample_stage(st, gen, cur, lr)
        stages.append(sp)
    codec_first = _bernoulli(gen, cfg.final_codec_first_prob)
    mode = _choice(gen, cfg.final_resize_modes, cfg.final_resize_mode_probs)
    sinc = None
    if _bernoulli(gen, cfg.final_sinc_prob):
        size = _choice(gen, cfg.final_sinc_sizes)
        sinc = KernelParams("sinc", size, omega_c=_uniform(gen, *cfg.final_sinc_omega))
    codec = _sample_codec(cfg.final_codec, gen)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return DegradationParams(
        scale=s, hr_size=(h, w), lr_size=lr, stages=tuple(stages), final_resize_mode=mode,
        final_antialias=cfg.final_antialias, final_sinc=sinc, final_codec=codec,
        final_codec_first=codec_first, noise_seed=noise_seed,
    )


# ---------------------------------------------------------------------------- applying


def _apply_stage(x: Tensor, sp: StageParams, noise_gen: torch.Generator) -> Tensor:
    if sp.blur is not None:
        x = filter2d(x, make_kernel(sp.blur))
    if sp.resize_size is not None:
        x = resize(x, sp.resize_size, sp.resize_mode, sp.resize_antialias)
    if sp.noise == "gaussian":
        x = add_gaussian_noise(x, sp.noise_level, sp.noise_gray, noise_gen)
    elif sp.noise == "poisson":
        x = add_poisson_noise(x, sp.noise_level, sp.noise_gray, noise_gen)
    if sp.codec is not None:
        x = apply_codec(x.clamp(0, 1), sp.codec)
    return x


def _final_resize_sinc(x: Tensor, p: DegradationParams) -> Tensor:
    x = resize(x, p.lr_size, p.final_resize_mode, p.final_antialias)
    return filter2d(x, make_kernel(p.final_sinc)) if p.final_sinc is not None else x


def _as_single(hr: Tensor) -> Tensor:
    """Validate an image tensor and return it as (1,3,H,W) float32."""
    if not isinstance(hr, Tensor) or hr.dim() not in (3, 4) or hr.shape[-3] != 3 or (
            hr.dim() == 4 and hr.shape[0] != 1):
        shape = tuple(hr.shape) if isinstance(hr, Tensor) else type(hr).__name__
        raise ImageInputError(f"degrade expects one image (3,H,W) or (1,3,H,W), got {shape}; "
                              "use degrade_batch for batches")
    x = (hr if hr.dim() == 4 else hr.unsqueeze(0)).float()
    if not torch.isfinite(x).all():
        raise ImageInputError("degrade: HR image contains NaN/inf values")
    return x


def degrade(hr: Tensor, params: DegradationParams) -> Tensor:
    """Apply sampled params deterministically to one HR image in [0,1]; LR on 8-bit levels."""
    x = _as_single(hr)
    if tuple(x.shape[-2:]) != tuple(params.hr_size):
        raise ImageInputError(f"HR image is {tuple(x.shape[-2:])} but the params were sampled for "
                              f"hr_size={tuple(params.hr_size)}")
    noise_gen = torch.Generator(device="cpu").manual_seed(params.noise_seed)
    for sp in params.stages:
        x = _apply_stage(x, sp, noise_gen)
    if params.final_codec_first:
        if params.final_codec is not None:
            x = apply_codec(x.clamp(0, 1), params.final_codec)
        x = _final_resize_sinc(x, params)
    else:
        x = _final_resize_sinc(x, params)
        if params.final_codec is not None:
            x = apply_codec(x.clamp(0, 1), params.final_codec)
    x = (x.clamp(0, 1) * 255).round() / 255
    return x if hr.dim() == 4 else x[0]


def degrade_batch(hr: Tensor, params: Sequence[DegradationParams]) -> Tensor:
    """(B,3,H,W) + B params (same lr_size) -> (B,3,h,w); a per-sample loop (codecs are per image)."""
    if hr.dim() != 4 or hr.shape[0] != len(params):
        raise ImageInputError(f"degrade_batch: HR shape {tuple(hr.shape)} needs (B,3,H,W) with "
                              f"B == len(params) == {len(params)}")
    sizes = {tuple(p.lr_size) for p in params}
    if len(sizes) > 1:
        raise ImageInputError(f"degrade_batch: params have different LR sizes {sorted(sizes)}; "
                              "sample them with one scale (sample_degradation(..., scale=s))")
    return torch.cat([degrade(hr[i:i + 1], p) for i, p in enumerate(params)], dim=0)


def degrade_random(hr: Tensor, cfg: DegradationConfig, gen: torch.Generator,
                   scale: int | None = None) -> tuple[Tensor, list[DegradationParams]]:
    """Sample one scale for the batch, per-sample params from ``gen``, and degrade (B,3,H,W)."""
    if hr.dim() != 4:
        raise ImageInputError(f"degrade_random expects (B,3,H,W), got {tuple(hr.shape)}")
    s = int(scale) if scale is not None else _choice(gen, cfg.scales)
    params = [sample_degradation(cfg, gen, tuple(hr.shape[-2:]), scale=s) for _ in range(hr.shape[0])]
    return degrade_batch(hr, params), params


def degrade_fixed(hr: Tensor, scale: int = 4, seed: int = 0) -> Tensor:
    """Evaluation LR of one image: :func:`fixed_eval_degradation` with noise seeded by ``seed``."""
    x = _as_single(hr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = sample_degradation(fixed_eval_degradation(scale), gen, tuple(x.shape[-2:]))
    out = degrade(x, params)
    return out if hr.dim() == 4 else out[0]


__all__ = [
    "APISR_FINAL_CODEC",
    "CodecConfig",
    "CodecParams",
    "DegradationConfig",
    "DegradationParams",
    "DegradationStage",
    "KernelParams",
    "StageParams",
    "add_gaussian_noise",
    "add_poisson_noise",
    "apply_codec",
    "degrade",
    "degrade_batch",
    "degrade_fixed",
    "degrade_random",
    "filter2d",
    "fixed_eval_degradation",
    "gaussian_kernel",
    "make_kernel",
    "resize",
    "sample_degradation",
    "sinc_kernel",
]
