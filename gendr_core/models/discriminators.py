"""Discriminators for pixel-space adversarial training.

* :class:`GeneratorFeatureDiscriminator` -- GenDR-Pix Stage II's discriminator (Algorithm 1):
  adversarial features ``d = G_theta(x; t, c)`` of the frozen previous-stage generator
  (:class:`FrozenGeneratorFeatures`) read by small trainable heads ``h_phi``
  (:class:`DiscriminatorHeads`). Used by ``trainers/train_stage2.py``.
* :class:`PixelUnshuffleDiscriminator` -- a light conv net on unshuffled pixels for runs that have
  no previous-stage generator. Used by ``trainers/train_pixel.py``.

RandPad (GenDR-Pix Eq. 3) is applied by the caller to every discriminator input:
:func:`rand_pad_per_sample`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ..errors import ConfigError, ImageInputError
from ..ops.padding import Pad, pad_fixed, sample_rand_pad
from ..ops.shuffle import unshuffle
from .restorer import GenDRPix
from .unet_features import embed_timestep, run_encoder_blocks

__all__ = [
    "rand_pad_per_sample",
    "FrozenGeneratorFeatures",
    "DiscriminatorHeads",
    "GeneratorFeatureDiscriminator",
    "PixelUnshuffleDiscriminator",
]


def rand_pad_per_sample(x: Tensor, generator: torch.Generator | None = None,
                        period: int = 8) -> tuple[Tensor, list[Pad]]:
    """RandPad (GenDR-Pix Eq. 3) with its own offsets for every sample of the batch.

    ``randpad(y) = pad(y, [p_h, 8 - p_h, p_w, 8 - p_w])`` (left, right, top, bottom), reflect mode
    (A.1), with ``p_h, p_w`` uniform in ``{0, ..., 7}`` as the text of Sec. 4.1 says. Fig. 10's
    pseudocode draws ``random.randint(0, 8)``, which includes 8; we follow Eq. 3 (p = 8 is the same
    8x8 phase as p = 0 anyway). (B,C,H,W) -> (B,C,H+8,W+8), plus the B pads used.
    """
    pads = [sample_rand_pad(generator, period) for _ in range(x.shape[0])]
    return torch.cat([pad_fixed(x[i : i + 1], p, "reflect") for i, p in enumerate(pads)]), pads


class FrozenGeneratorFeatures(nn.Module):
    """Adversarial features ``d = G_theta(x; t, c)`` of GenDR-Pix Algorithm 1, Stage II.

    The encoder half of a frozen GenDR-Pix generator, run exactly as the generator runs it:
    ``x`` (B,3,H,W) in [0,1] -> ``2x - 1`` -> ``unshuffle(., f)`` -> ``conv_in`` -> down blocks ->
    mid block, with the UNet's time embedding at the model's own timestep and its own positive prompt
    embedding as ``c``. Feature *depths* are numbered ``0`` = ``conv_in`` output, ``i`` = output of
    down block ``i`` (1..n, after its down-sampler), ``n + 1`` = mid block output; ``depths=None``
    takes every down block and the mid block (``1..n+1``; the paper's "half of the teacher", Fig. 4).
    Only the modules up to the deepest requested depth are kept (the decoder half is dropped).

    Frozen: every parameter has ``requires_grad=False`` and the module stays in eval mode, but the
    output is differentiable w.r.t. ``x`` (the generator's adversarial term back-propagates through
    it). ``backbone`` is taken over, not copied: pass a model loaded for this purpose.
    """

    def __init__(self, backbone: GenDRPix, depths: Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, GenDRPix):
            raise ConfigError(f"FrozenGeneratorFeatures needs a GenDR-Pix model (pixel-unshuffle input), "
                              f"got {type(backbone).__name__}")
        unet = backbone.unet
        for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
            if getattr(unet.config, key, None) is not None:
                raise ConfigError(f"FrozenGeneratorFeatures: UNet config {key}={getattr(unet.config, key)!r} "
                                  "is not supported (GenDR-Pix UNets have none)")
        n = len(unet.down_blocks)
        deepest = n + 1 if unet.mid_block is not None else n
        depths = tuple(range(1, deepest + 1)) if depths is None or len(depths) == 0 else tuple(int(d) for d in depths)
        if list(depths) != sorted(set(depths)) or depths[0] < 0 or depths[-1] > deepest:
            raise ConfigError(f"discriminator depths {list(depths)} must be increasing and unique in [0, {deepest}] "
                              f"(0 = conv_in, 1..{n} = down blocks, {n + 1} = mid block)")
        self.depths = depths
        self.f = backbone.config.shuffle_factor
        self.timestep = backbone.config.timestep
        self.time_proj, self.time_embedding, self.time_embed_act = unet.time_proj, unet.time_embedding, unet.time_embed_act
        self.conv_in = unet.conv_in
        self.down_blocks = nn.ModuleList(list(unet.down_blocks)[: min(n, depths[-1])])
        self.mid_block = unet.mid_block if depths[-1] == n + 1 else None
        self.register_buffer("prompt", backbone.prompt_pos.detach().clone(), persistent=False)  # c: (1,L,D)
        widths = [unet.conv_in.out_channels, *unet.config.block_out_channels, unet.config.block_out_channels[-1]]
        self.channels = tuple(widths[d] for d in depths)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenGeneratorFeatures:
        """Stay in eval mode whatever a parent module requests (the backbone is frozen)."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        h, w = x.shape[-2:]
        if x.dim() != 4 or x.shape[1] != 3 or h % self.f or w % self.f:
            raise ImageInputError(f"discriminator input must be (B,3,H,W) with H, W multiples of the shuffle factor "
                                  f"{self.f}, got {tuple(x.shape)}")
        dtype = self.conv_in.weight.dtype
        z = unshuffle(x.to(dtype) * 2 - 1, self.f)  # (B,3,H,W) -> (B,3f^2,H/f,W/f)
        b = z.shape[0]
        t = torch.full((b,), self.timestep, device=z.device, dtype=torch.long)
        emb = embed_timestep(self.time_proj, self.time_embedding, self.time_embed_act, t, dtype)  # (B,T)
        cond = self.prompt.to(dtype).expand(b, -1, -1)  # (B,L,D)
        return run_encoder_blocks(self.conv_in(z), emb, cond, self.down_blocks, self.mid_block, self.depths)


def _groups(width: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if width % g == 0)


class DiscriminatorHeads(nn.Module):
    """Trainable heads ``h_phi``, one per feature depth (LADD / DMD2 style):
    ``Conv 4x4 stride 2 -> GroupNorm -> SiLU -> Conv 1x1 -> 1 logit map``.

    ``forward(feats)`` maps K feature maps (B,C_k,H_k,W_k) to K logit maps
    (B,1,floor(H_k/2),floor(W_k/2)); every map needs H_k, W_k >= 2. ``spectral_norm`` wraps both
    convolutions (off by default: the heads are shallow and GroupNorm already bounds them).
    """

    def __init__(self, channels: Sequence[int], width: int = 64, spectral_norm: bool = False) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"discriminator head width must be >= 1, got {width}")
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        self.heads = nn.ModuleList(
            nn.Sequential(sn(nn.Conv2d(c, width, 4, stride=2, padding=1)), nn.GroupNorm(_groups(width), width),
                          nn.SiLU(), sn(nn.Conv2d(width, 1, 1)))
            for c in channels
        )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.heads):
            raise ImageInputError(f"DiscriminatorHeads: {len(self.heads)} heads, got {len(feats)} feature maps")
        out = []
        for k, (head, f) in enumerate(zip(self.heads, feats, strict=True)):
            if min(f.shape[-2:]) < 2:
                raise ImageInputError(f"discriminator feature map {k} is {tuple(f.shape[-2:])}; the 4x4/s2 head "
                                      "needs >= 2x2: use larger crops or shallower depths")
            out.append(head(f.to(head[0].weight.dtype)))
        return out


class GeneratorFeatureDiscriminator(nn.Module):
    """GenDR-Pix Stage II discriminator ``h_phi(G_theta(x; t, c))`` (Algorithm 1): frozen
    previous-stage generator features (:class:`FrozenGeneratorFeatures`) + trainable
    :class:`DiscriminatorHeads`.

    ``forward(x, detach_features=False)`` -> list of K logit maps. ``detach_features=True`` computes
    the features without a graph (the ``sg[d]`` of Alg. 1's ``L_phi``, cheaper in the D step); the
    heads still get gradients. With ``detach_features=False`` gradients reach ``x`` but never the
    backbone. ``mean_logits(x)`` gives the (B, K) spatial means. Under accelerate, prepare
    ``.heads`` (the only trainable part) and call ``heads(disc.features(x))`` so a distributed
    wrapper is in the call path; checkpoints then hold only the heads.
    """

    def __init__(self, backbone: GenDRPix, depths: Sequence[int] | None = None, head_channels: int = 64,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.features = FrozenGeneratorFeatures(backbone, depths)
        self.heads = DiscriminatorHeads(self.features.channels, head_channels, spectral_norm)

    @property
    def depths(self) -> tuple[int, ...]:
        return self.features.depths

    def forward(self, x: Tensor, detach_features: bool = False) -> list[Tensor]:
        if detach_features:
            with torch.no_grad():
                feats = self.features(x)
        else:
            feats = self.features(x)
        return self.heads(feats)

    def mean_logits(self, x: Tensor) -> Tensor:
        return torch.cat([m.mean(dim=(2, 3)) for m in self(x)], dim=1)  # (B,K)


class PixelUnshuffleDiscriminator(nn.Module):
    """Light patch discriminator that reads images the way GenDR-Pix does: x8 unshuffled.

    For runs without a previous-stage generator (``trainers/train_pixel.py``); Stage II uses
    :class:`GeneratorFeatureDiscriminator`. A small spectral-normalised conv net:
    (B,3,H,W) in [0,1] -> (B,1,H/f/2^k,W/f/2^k) logits. RandPad is applied by the caller.
    """

    def __init__(self, shuffle_factor: int = 8, channels: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        self.f = shuffle_factor
        c_in = 3 * shuffle_factor**2
        layers: list[nn.Module] = [_spectral_norm(nn.Conv2d(c_in, channels[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [_spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers += [_spectral_norm(nn.Conv2d(channels[-1], channels[-1], 3, padding=1)), nn.LeakyReLU(0.2),
                   nn.Conv2d(channels[-1], 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        h, w = y.shape[-2:]
        y = y[..., : h - h % self.f, : w - w % self.f]
        return self.net(unshuffle(y * 2 - 1, self.f))  # (B,3,H,W) -> (B,3f^2,H/f,W/f) -> logits
