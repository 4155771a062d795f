"""Typed, frozen configuration for every model in gendr_core.

Each config round-trips through JSON (``to_json``/``from_json``), rejects unknown keys
(listing the valid ones) and is stored inside the model's ``.safetensors`` metadata, so a
model file is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# Positive/negative prompt embeddings of the SD2.1 text encoder: 77 tokens x 1024.
SD21_PROMPT_TOKENS = 77
SD21_CONTEXT_DIM = 1024


def _tuple(v: Any) -> Any:
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from a plain dict, recursing into nested config fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = _nested_dataclass(hints.get(key))
        if sub is not None and value is not None:
            kwargs[key] = _from_dict(sub, value, f"{where}.{key}")
        else:
            kwargs[key] = _tuple(value)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required fields
        raise ConfigError(f"{where}: {exc}") from None


def _nested_dataclass(hint: Any) -> type | None:
    """The dataclass inside a field's type hint (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


class JSONConfig:
    """Mixin for frozen config dataclasses: JSON round trip that rejects unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
        return _from_dict(cls, data, where or cls.__name__)

    @classmethod
    def from_json(cls: type[T], text: str, where: str | None = None) -> T:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where or cls.__name__}: invalid JSON ({exc})") from None
        return _from_dict(cls, data, where or cls.__name__)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class UNetConfig(JSONConfig):
    """Keyword arguments of diffusers ``UNet2DConditionModel``; defaults are SD2.1-base."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    layers_per_block: int = 2
    attention_head_dim: tuple[int, ...] = (5, 10, 20, 20)  # SD2.x: these are head counts
    cross_attention_dim: int = SD21_CONTEXT_DIM
    use_linear_projection: bool = True
    norm_num_groups: int = 32
    sample_size: int = 64
    upcast_attention: bool = False

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"UNetConfig.{name} has {len(getattr(self, name))} entries but "
                    f"block_out_channels={self.block_out_channels} has {n}"
                )
        if len(self.attention_head_dim) != n:
            raise ConfigError(
                f"UNetConfig.attention_head_dim={self.attention_head_dim} must have {n} entries"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(
                    f"UNetConfig.block_out_channels entry {c} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
        if self.in_channels < 1 or self.out_channels < 1:
            raise ConfigError(f"UNetConfig in/out channels must be >= 1, got "
                              f"{self.in_channels}/{self.out_channels}")

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction of the UNet: one x2 downsample between consecutive levels."""
        return 2 ** (len(self.block_out_channels) - 1)

    def diffusers_kwargs(self) -> dict[str, Any]:
        kw = self.to_dict()
        for k, v in kw.items():
            if isinstance(v, list):
                kw[k] = tuple(v)
        return kw


@dataclass(frozen=True)
class VAEConfig(JSONConfig):
    """Keyword arguments of diffusers ``AutoencoderKL``; defaults are the SD2.1 4-channel VAE."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    mid_block_add_attention: bool = True
    sample_size: int = 512

    def __post_init__(self) -> None:
        if not self.block_out_channels:
            raise ConfigError("VAEConfig.block_out_channels must not be empty")
        if self.scaling_factor <= 0:
            raise ConfigError(f"VAEConfig.scaling_factor={self.scaling_factor} must be > 0")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def diffusers_kwargs(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scaling_factor,
            shift_factor=self.shift_factor,
            mid_block_add_attention=self.mid_block_add_attention,
            sample_size=self.sample_size,
        )


def _check_one_step(name: str, timestep: int, alpha: float, beta: float) -> None:
    if not 0 <= timestep < 1000:
        raise ConfigError(f"{name}.timestep={timestep} must be in [0, 1000)")
    if alpha == 0:
        raise ConfigError(f"{name}.alpha must be non-zero (x0 = (x_t - beta*eps)/alpha)")


@dataclass(frozen=True)
class GenDRPixConfig(JSONConfig):
    """GenDR-Pix: x``shuffle_factor`` pixel-unshuffle -> UNet -> pixel-shuffle, one step.

    The UNet sees ``unshuffle(2*x - 1)`` (pixels mapped to [-1, 1]) at the fixed ``timestep``
    and its output eps gives x0 = (x_t - beta*eps)/alpha (GenDR Eq. 2 with GenDR's
    alpha = beta = 0.5; Algorithm 1 of GenDR-Pix uses t = 499, the 0-indexed t_s = 500).
    """

    unet: UNetConfig = field(default_factory=lambda: sd21_unet_config(192, 192))
    shuffle_factor: int = 8
    timestep: int = 499
    alpha: float = 0.5
    beta: float = 0.5
    prompt_tokens: int = SD21_PROMPT_TOKENS
    pos_pad: tuple[int, int, int, int] = (4, 4, 4, 4)  # (left, right, top, bottom), Eq. 7
    neg_pad: tuple[int, int, int, int] = (3, 5, 3, 5)
    default_guidance: float = 1.0

    def __post_init__(self) -> None:
        f = self.shuffle_factor
        if f < 1:
            raise ConfigError(f"GenDRPixConfig.shuffle_factor={f} must be >= 1")
        if self.unet.in_channels != 3 * f * f or self.unet.out_channels != 3 * f * f:
            raise ConfigError(
                f"GenDRPixConfig: unet in/out channels must be 3*shuffle_factor^2={3 * f * f}, "
                f"got {self.unet.in_channels}/{self.unet.out_channels}"
            )
        _check_one_step("GenDRPixConfig", self.timestep, self.alpha, self.beta)
        for name in ("pos_pad", "neg_pad"):
            pad = getattr(self, name)
            if len(pad) != 4 or min(pad) < 0:
                raise ConfigError(f"GenDRPixConfig.{name}={pad} must be 4 non-negative ints")

    @property
    def pad_multiple(self) -> int:
        """Input sides must be a multiple of this: shuffle factor x UNet downsampling."""
        return self.shuffle_factor * self.unet.downsample_factor


@dataclass(frozen=True)
class GenDRConfig(JSONConfig):
    """GenDR latent teacher: 16-channel f8 VAE + UNet, one step (GenDR Sec. 3.4, Fig. 4)."""

    unet: UNetConfig = field(default_factory=lambda: sd21_unet_config(16, 16))
    vae: VAEConfig = field(default_factory=lambda: vae16_config())
    timestep: int = 499
    alpha: float = 0.5
    beta: float = 0.5
    prompt_tokens: int = SD21_PROMPT_TOKENS
    pos_pad: tuple[int, int, int, int] = (4, 4, 4, 4)
    neg_pad: tuple[int, int, int, int] = (3, 5, 3, 5)
    default_guidance: float = 1.0
    vae_tile: int = 0  # pixels; 0 = encode/decode whole image

    def __post_init__(self) -> None:
        if self.unet.in_channels != self.vae.latent_channels:
            raise ConfigError(
                f"GenDRConfig: unet.in_channels={self.unet.in_channels} must equal "
                f"vae.latent_channels={self.vae.latent_channels}"
            )
        _check_one_step("GenDRConfig", self.timestep, self.alpha, self.beta)

    @property
    def pad_multiple(self) -> int:
        return self.vae.downsample_factor * self.unet.downsample_factor


def sd_alphas(timestep: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> tuple[float, float]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) of SD2.1's scaled_linear 1000-step schedule
    (:func:`gendr_core.ops.diffusion.scaled_linear_alphas_cumprod`, the one definition)."""
    from .ops.diffusion import scaled_linear_alphas_cumprod  # lazy: config stays import-light

    abar = float(scaled_linear_alphas_cumprod(1000, beta_start, beta_end)[timestep])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


@dataclass(frozen=True)
class DFOSDConfig(JSONConfig):
    """DFOSD: SD2.1 4-channel VAE + UNet + learned text embedding, one step at ``timestep``.

    alpha/beta default to the SD2.1 schedule at ``timestep`` (sqrt(abar), sqrt(1-abar)).
    """

    unet: UNetConfig = field(default_factory=lambda: sd21_unet_config(4, 4))
    vae: VAEConfig = field(default_factory=VAEConfig)
    timestep: int = 999
    alpha: float = field(default_factory=lambda: sd_alphas(999)[0])
    beta: float = field(default_factory=lambda: sd_alphas(999)[1])
    prompt_tokens: int = SD21_PROMPT_TOKENS
    pos_pad: tuple[int, int, int, int] = (4, 4, 4, 4)
    neg_pad: tuple[int, int, int, int] = (3, 5, 3, 5)
    default_guidance: float = 1.0
    vae_tile: int = 0

    def __post_init__(self) -> None:
        if self.unet.in_channels != self.vae.latent_channels:
            raise ConfigError(
                f"DFOSDConfig: unet.in_channels={self.unet.in_channels} must equal "
                f"vae.latent_channels={self.vae.latent_channels}"
            )
        _check_one_step("DFOSDConfig", self.timestep, self.alpha, self.beta)

    @property
    def pad_multiple(self) -> int:
        return self.vae.downsample_factor * self.unet.downsample_factor



@dataclass(frozen=True)
class FixModConfig(JSONConfig):
    """FixMod (GenDR-Pix Sec. A.1): "the wavelet color fix and a small pretrained UNet".

    The UNet sees the restored image and the bicubic LQ on the output grid (6 channels),
    pixel-unshuffled by ``unshuffle`` (the GenDR-Pix stem, so its cost stays small next to the
    restorer's), and predicts a residual. ``channels`` are its level widths (one stride-2 conv
    between levels), ``layers_per_level`` the 3x3 convs per level and side, ``wavelet_levels``
    the levels of the wavelet color fix applied after the residual (5: a 31-px-radius low band).
    """

    # 384,176 parameters; at 512^2 on one CPU thread the residual costs 0.06 s, 18 % of gendr-pix-s
    channels: tuple[int, ...] = (32, 64, 128)
    layers_per_level: int = 1
    unshuffle: int = 4  # divides the restorer's x4/x8 shuffle grid, so the net sees each pixel's phase
    wavelet_levels: int = 5

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"FixModConfig.channels={self.channels} must be a non-empty list of ints >= 1")
        if self.layers_per_level < 1:
            raise ConfigError(f"FixModConfig.layers_per_level={self.layers_per_level} must be >= 1")
        if self.unshuffle < 1:
            raise ConfigError(f"FixModConfig.unshuffle={self.unshuffle} must be >= 1")
        if not 1 <= self.wavelet_levels <= 10:
            raise ConfigError(f"FixModConfig.wavelet_levels={self.wavelet_levels} must be in 1..10")

    @property
    def pad_multiple(self) -> int:
        """Input sides are padded to a multiple of this: unshuffle x one x2 per extra level."""
        return self.unshuffle * 2 ** (len(self.channels) - 1)


# ----------------------------------------------------------------------------- presets


def sd21_unet_config(in_channels: int, out_channels: int) -> UNetConfig:
    """SD2.1-base UNet layout with the given I/O channels (192 for x8 pixel-unshuffle)."""
    return UNetConfig(in_channels=in_channels, out_channels=out_channels)


def vae16_config() -> VAEConfig:
    """ostris/vae-kl-f8-d16 layout (57,266,643 parameters, GenDR's 57.27M)."""
    return VAEConfig(block_out_channels=(128, 128, 256, 512), latent_channels=16, scaling_factor=0.2614)


def tiny_unet_config(in_channels: int, out_channels: int, attention: bool = True) -> UNetConfig:
    """A few-thousand-parameter UNet for tests (diffusers' own tiny test sizes)."""
    down = ("CrossAttnDownBlock2D" if attention else "DownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D" if attention else "UpBlock2D")
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if attention else None,
        layers_per_block=1,
        attention_head_dim=(2, 2),
        cross_attention_dim=8,
        norm_num_groups=4,
        sample_size=8,
    )


def tiny_gendr_pix_config(shuffle_factor: int = 8, attention: bool = True) -> GenDRPixConfig:
    c = 3 * shuffle_factor**2
    return GenDRPixConfig(unet=tiny_unet_config(c, c, attention), shuffle_factor=shuffle_factor, prompt_tokens=4)


def tiny_vae_config(latent_channels: int = 4) -> VAEConfig:
    return VAEConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=latent_channels,
                     norm_num_groups=4, sample_size=32)


def tiny_gendr_config() -> GenDRConfig:
    return GenDRConfig(unet=tiny_unet_config(16, 16), vae=tiny_vae_config(16), prompt_tokens=4)


def tiny_gendr_f8_config() -> GenDRConfig:
    """A tiny GenDR teacher whose 16-channel VAE downsamples x8 like SD's (Stage I's unshuffle factor)."""
    vae = VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=16, norm_num_groups=4,
                    sample_size=32)
    return GenDRConfig(unet=tiny_unet_config(16, 16), vae=vae, prompt_tokens=4)


def tiny_dfosd_config() -> DFOSDConfig:
    return DFOSDConfig(unet=tiny_unet_config(4, 4), vae=tiny_vae_config(4), prompt_tokens=4)


def tiny_fixmod_config() -> FixModConfig:
    """A 2,524-parameter FixMod for tests (two levels, x2 unshuffle stem, 3 wavelet levels)."""
    return FixModConfig(channels=(4, 8), layers_per_level=1, unshuffle=2, wavelet_levels=3)


ModelConfig = GenDRPixConfig | GenDRConfig | DFOSDConfig
