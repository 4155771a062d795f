"""LoRA adapters through peft, and GenDR's real/fake score networks on one shared frozen UNet.

GenDR (Sec. 3.3 "Implementation with LoRA", Sec. 4.1): the real score network f_phi and the fake
score network f_psi are LoRA adapters (rank 64, alpha 128) of the pretrained base f_mu, and share
its weights -- here two named peft adapters, ``"real"`` and ``"fake"``, injected into one
``UNet2DConditionModel`` whose own weights stay frozen, switched with ``set_adapter``. The base is
never copied. DFOSD's noise-aware discriminator uses the same helpers with rank 16 / alpha 16 on the
down and mid blocks only (``gendr_core.models.noise_aware``).

peft is a training dependency, imported lazily (``pip install .[train]``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..config import JSONConfig
from ..errors import ConfigError, ImageInputError, MissingDependencyError
from ..ops.diffusion import eps_to_x0, scaled_linear_alphas_cumprod
from .unet_features import encoder_features

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LoRAConfig",
    "frozen_parameters",
    "add_lora_adapter",
    "adapter_parameters",
    "ScoreNetworks",
]

#: Module-name suffixes that get LoRA in a diffusers UNet: attention projections, transformer
#: in/out projections and feed-forward, ResNet convs and the down/up-sampler convs ("conv").
#: ``conv_in``/``conv_out`` and the time embedding are left alone. Not given by GenDR or DFOSD;
#: the set that SD LoRA fine-tunes of one-step SR models commonly adapt (REFERENCE.md 3.1).
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "conv",
)


@dataclass(frozen=True)
class LoRAConfig(JSONConfig):
    """One LoRA adapter: ``W + (alpha / rank) * B A``. Defaults are GenDR's score networks (rank 64,
    alpha 128); DFOSD uses rank 16, alpha 16. ``B`` starts at zero (peft default), so a fresh
    adapter leaves the base output unchanged; ``gaussian_init`` draws ``A`` from a Gaussian instead
    of Kaiming-uniform."""

    rank: int = 64
    alpha: float = 128.0
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    dropout: float = 0.0
    gaussian_init: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"LoRAConfig.rank={self.rank} must be >= 1")
        if self.alpha <= 0:
            raise ConfigError(f"LoRAConfig.alpha={self.alpha} must be > 0")
        if not self.target_modules:
            raise ConfigError("LoRAConfig.target_modules must name at least one module suffix")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRAConfig.dropout={self.dropout} must be in [0, 1)")

    def to_peft(self, scope: Sequence[str] | None = None) -> Any:
        """A ``peft.LoraConfig``; ``scope`` limits it to modules under these top-level names
        (e.g. ``("down_blocks", "mid_block")``)."""
        try:
            from peft import LoraConfig
        except ImportError as exc:
            raise MissingDependencyError(
                f"LoRA adapters need peft ({exc}); install the training extras: pip install .[train]"
            ) from None
        targets: list[str] | str = list(self.target_modules)
        if scope:
            names = "|".join(re.escape(s) for s in scope)
            suffixes = "|".join(re.escape(t) for t in self.target_modules)
            targets = rf"(?:{names})(?:\.[^.]+)*\.(?:{suffixes})"  # re.fullmatch on the module name
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          init_lora_weights="gaussian" if self.gaussian_init else True)


@contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """``sg[.]`` on parameters: inside the block every parameter of ``modules`` has
    ``requires_grad=False`` (outputs stay differentiable w.r.t. inputs); flags restored on exit."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def add_lora_adapter(model: nn.Module, name: str, cfg: LoRAConfig, scope: Sequence[str] | None = None) -> None:
    """Inject a named LoRA adapter into ``model`` in place (diffusers ``add_adapter`` when the model
    has it, else ``peft.inject_adapter_in_model``). The new adapter becomes the active one."""
    if not name or not name.isidentifier():
        raise ConfigError(f"LoRA adapter name {name!r} must be a Python identifier")
    existing = getattr(model, "peft_config", None) or {}
    if name in existing:
        raise ConfigError(f"the model already has a LoRA adapter named {name!r} (adapters: {sorted(existing)})")
    peft_cfg = cfg.to_peft(scope)
    try:
        with warnings.catch_warnings():  # peft warns on every adapter after the first; several are the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            if hasattr(model, "add_adapter"):
                model.add_adapter(peft_cfg, adapter_name=name)
            else:
                from peft import inject_adapter_in_model

                inject_adapter_in_model(peft_cfg, model, adapter_name=name)
    except ValueError as exc:  # peft: no module matched target_modules
        raise ConfigError(f"LoRA adapter {name!r}: {exc} (target_modules={list(cfg.target_modules)}, "
                          f"scope={list(scope) if scope else None})") from None
    n = sum(p.numel() for p in adapter_parameters(model, name))
    logger.info("LoRA adapter %r: rank %d, alpha %g, %d parameters", name, cfg.rank, cfg.alpha, n)


def _is_adapter_param(param_name: str, adapter: str) -> bool:
    parts = param_name.split(".")
    return adapter in parts and any(p.startswith("lora_") for p in parts)


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The LoRA parameters of adapter ``name`` (``...lora_A.<name>.weight``, ``...lora_B.<name>.weight``)."""
    params = [p for n, p in model.named_parameters() if _is_adapter_param(n, name)]
    if not params:
        raise ConfigError(f"the model has no LoRA adapter named {name!r}")
    return params


class ScoreNetworks(nn.Module):
    """GenDR's real (f_phi) and fake (f_psi) score networks as two LoRA adapters on one frozen UNet.

    ``unet`` (an eps-predicting diffusers UNet, normally the SD2.1-VAE16 base f_mu) is taken over,
    not copied: its own weights are frozen and the adapters ``"real"`` and ``"fake"`` are injected
    into it. Every call names its adapter and switches to it with ``set_adapter`` (peft toggles
    ``requires_grad`` on switching; this class restores it, so both adapters stay trainable and a
    loss built from both trains each with its own term). Inside :meth:`frozen` no adapter gets a
    gradient (``sg[phi]``, ``sg[psi]``) while outputs stay differentiable w.r.t. their inputs.

    Predictions are x0 ("score (latent)" ``f`` of GenDR Eq. 7): ``f = (z_t - sqrt(1-abar_t) eps) /
    sqrt(abar_t)`` on SD2.1's schedule (:mod:`gendr_core.ops.diffusion`).
    """

    ADAPTERS: tuple[str, str] = ("real", "fake")

    def __init__(self, unet: UNet2DConditionModel, lora: LoRAConfig | None = None,
                 alphas_cumprod: Tensor | None = None) -> None:
        super().__init__()
        lora = LoRAConfig() if lora is None else lora
        unet.requires_grad_(False)
        for name in self.ADAPTERS:
            add_lora_adapter(unet, name, lora)
        self.unet = unet
        self.lora_config = lora
        # a plain attribute, not a buffer: module.to(bf16) must not round the schedule
        self.alphas_cumprod = (scaled_linear_alphas_cumprod() if alphas_cumprod is None
                               else alphas_cumprod.detach().to(torch.float64))
        self._params = {n: adapter_parameters(unet, n) for n in self.ADAPTERS}
        self._trainable = True
        self._active: str | None = None
        self.use(self.ADAPTERS[0])

    # ---------------------------------------------------------------- adapters and gradients
    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        """The trainable LoRA parameters of ``adapter`` (give each adapter its own optimiser group)."""
        self._check(adapter)
        return list(self._params[adapter])

    def base_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The shared frozen base weights (every UNet parameter that is not LoRA)."""
        return [(n, p) for n, p in self.unet.named_parameters()
                if not any(_is_adapter_param(n, a) for a in self.ADAPTERS)]

    def adapter_state_dict(self, adapter: str) -> dict[str, Tensor]:
        """LoRA tensors of ``adapter`` keyed by parameter name (what a checkpoint of it needs)."""
        self._check(adapter)
        return {n: p.detach() for n, p in self.unet.named_parameters() if _is_adapter_param(n, adapter)}

    @torch.no_grad()
    def load_adapter_state_dict(self, adapter: str, state: dict[str, Tensor]) -> None:
        """Copy tensors saved by :meth:`adapter_state_dict` back into ``adapter`` (same names and shapes;
        every LoRA tensor of the adapter must be present, nothing else may be)."""
        own = dict(self.adapter_state_dict(adapter))
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(f"score adapter {adapter!r}: state has {len(missing)} missing key(s) {missing[:3]} and "
                              f"{len(unexpected)} unexpected key(s) {unexpected[:3]}; was it saved with the same "
                              f"UNet and LoRAConfig (rank {self.lora_config.rank})?")
        params = dict(self.unet.named_parameters())
        for name, value in state.items():
            if value.shape != own[name].shape:
                raise ConfigError(f"score adapter {adapter!r}: {name} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(own[name].shape)}")
            params[name].copy_(value)

    def _check(self, adapter: str) -> None:
        if adapter not in self.ADAPTERS:
            raise ConfigError(f"score adapter {adapter!r} does not exist; choose one of {list(self.ADAPTERS)}")

    def _apply_trainable(self) -> None:
        for params in self._params.values():
            for p in params:
                p.requires_grad_(self._trainable)

    def use(self, adapter: str) -> None:
        """Make ``adapter`` the one the UNet runs with (``set_adapter``)."""
        self._check(adapter)
        if adapter != self._active:
            self.unet.set_adapter(adapter)
            self._active = adapter
        self._apply_trainable()  # undo peft's requires_grad toggles (set_adapter, enable/disable_adapters)

    @property
    def active_adapter(self) -> str | None:
        return self._active

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """No adapter receives gradients inside the block (the base is frozen anyway)."""
        before = self._trainable
        self._trainable = False
        self._apply_trainable()
        try:
            yield
        finally:
            self._trainable = before
            self._apply_trainable()

    # ---------------------------------------------------------------- predictions
    def _cond(self, cond: Tensor, b: int) -> Tensor:
        if cond.dim() != 3:
            raise ImageInputError(f"score networks: conditioning must be (B or 1, L, D), got shape {tuple(cond.shape)}")
        cond = cond.to(self.unet.conv_in.weight.dtype)
        return cond.expand(b, -1, -1) if cond.shape[0] == 1 else cond

    def eps(self, adapter: str, z_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Noise prediction eps(z_t; t, c) with ``adapter``. (B,C,h,w)."""
        self.use(adapter)
        dtype = self.unet.conv_in.weight.dtype
        out = self.unet(z_t.to(dtype), t, encoder_hidden_states=self._cond(cond, z_t.shape[0]), return_dict=False)[0]
        return out.to(z_t.dtype)

    def x0(self, adapter: str, z_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``f(z_t; t, c)`` of GenDR Eq. 7 with ``adapter``: the x0 the noise prediction implies."""
        return eps_to_x0(z_t, self.eps(adapter, z_t, t, cond), t, self.alphas_cumprod)

    def x0_cfg(self, adapter: str, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
        """``f_kappa = f(z_t; t, empty) + kappa (f(z_t; t, c) - f(z_t; t, empty))`` with ``kappa = scale``;
        both branches in one batched forward. Guiding x0 equals guiding eps here, since x0 is affine in
        eps at fixed (z_t, t)."""
        b = z_t.shape[0]
        z2 = torch.cat([z_t, z_t])  # (2B,C,h,w): [uncond | cond]
        t2 = torch.cat([t, t])
        c2 = torch.cat([self._cond(uncond, b), self._cond(cond, b)])  # (2B,L,D)
        f_u, f_c = self.x0(adapter, z2, t2, c2).chunk(2)
        return f_u + scale * (f_c - f_u)

    def features(self, adapter: str, z: Tensor, t: Tensor, cond: Tensor,
                 depths: Sequence[int] | None = None) -> list[Tensor]:
        """Encoder-half features (down blocks + mid block by default) of the UNet with ``adapter``,
        for the CiDA discriminator heads (:func:`gendr_core.models.unet_features.encoder_features`)."""
        self.use(adapter)
        return encoder_features(self.unet, z, t, cond, depths)
