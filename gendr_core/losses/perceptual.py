"""Perceptual losses: feature matching on a frozen network's features (with ``channel_normalise``),
DISTS (Ding et al. 2020) and EA-DISTS (DFOSD Eq. 5-7, with ``sobel_magnitude``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointFormatError, ConfigError, ImageInputError, MissingDependencyError
from ..vgg import DISTS_CHANNELS, VGG16Features, load_vgg16_state_dict, read_tensor_file, vgg_weights_hint
from ._common import Reduction, _check_pair

logger = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------------------------------
# Feature matching on a frozen generator's features (perceptual term without VGG16)
# --------------------------------------------------------------------------------------------------


def channel_normalise(f: Tensor, eps: float = 1e-6) -> Tensor:
    """``f / sqrt(mean_c f^2 + eps)``: every spatial position's feature vector scaled to unit RMS
    over the channels. (B,C,H,W) -> (B,C,H,W), float32 or wider."""
    if f.dim() != 4:
        raise ImageInputError(f"channel_normalise: expected (B,C,H,W) features, got shape {tuple(f.shape)}")
    if f.dtype not in (torch.float32, torch.float64):
        f = f.float()
    return f * torch.rsqrt(f.pow(2).mean(dim=1, keepdim=True) + eps)


def feature_matching_loss(feats_x: Sequence[Tensor], feats_y: Sequence[Tensor], eps: float = 1e-6) -> Tensor:
    """Perceptual term L_P used when no VGG16 is given (not in the paper, which uses DISTS):

        L_FM(x, y) = 1/K * sum_k mean | N(phi_k(x)) - N(phi_k(y)) |,   N = :func:`channel_normalise`

    over the K feature maps ``phi_k`` of a frozen network (for Stage II: the frozen previous-stage
    generator that the discriminator reads, ``FrozenGeneratorFeatures``), the mean taken over
    B*C_k*H_k*W_k.  Channel normalisation (unit RMS over channels, as LPIPS normalises its VGG
    features but with RMS instead of the L2 norm so that values do not shrink with C_k) makes depths
    of different widths and activation scales weigh alike.  Pass ``feats_y`` computed without grad
    (the target).  Returns a float32 scalar.
    """
    fx, fy = list(feats_x), list(feats_y)
    if len(fx) != len(fy) or not fx:
        raise ImageInputError(f"feature_matching_loss: need the same non-zero number of feature maps, "
                              f"got {len(fx)} and {len(fy)}")
    terms = []
    for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
        if a.shape != b.shape:
            raise ImageInputError(f"feature_matching_loss: depth {k} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        terms.append((channel_normalise(a, eps) - channel_normalise(b, eps)).abs().mean())
    return sum(terms) / len(terms)


# --------------------------------------------------------------------------------------------------
# DISTS (Ding et al. 2020) and EA-DISTS (DFOSD Eq. 5-7)
# --------------------------------------------------------------------------------------------------


def dists_similarity(fx: Tensor, fy: Tensor, c1: float = 1e-6, c2: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-channel DISTS texture/structure terms of one stage (Ding et al. 2020, Eq. 5-6).

    ``fx, fy``: (B,C,H,W).  Spatial statistics (population variance/covariance, i.e. divided by
    H*W):  ``S1 = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)``,
    ``S2 = (2 sigma_xy + c2) / (sigma_x^2 + sigma_y^2 + c2)``.  Returns (S1, S2), each (B,C), float32
    or wider.
    """
    if fx.shape != fy.shape:
        raise ImageInputError(f"dists_similarity: feature shapes differ: {tuple(fx.shape)} vs {tuple(fy.shape)}")
    if fx.dtype not in (torch.float32, torch.float64):
        fx, fy = fx.float(), fy.float()
    mx = fx.mean(dim=(2, 3))  # (B,C)
    my = fy.mean(dim=(2, 3))  # (B,C)
    s1 = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    vx = ((fx - mx[..., None, None]) ** 2).mean(dim=(2, 3))  # (B,C)
    vy = ((fy - my[..., None, None]) ** 2).mean(dim=(2, 3))  # (B,C)
    cxy = (fx * fy).mean(dim=(2, 3)) - mx * my  # (B,C)
    s2 = (2 * cxy + c2) / (vx + vy + c2)
    return s1, s2


#: The official DISTS alpha/beta (DISTS_pytorch==0.1 ``weights.pt``, MIT; see assets/NOTICE_DISTS.md).
DISTS_ALPHA_BETA_PATH = Path(__file__).resolve().parent.parent / "assets" / "dists_alpha_beta.safetensors"


def load_dists_alpha_beta(path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """DISTS alpha/beta, each (1,1475,1,1) float32, from ``path`` (default: the shipped official
    weights, :data:`DISTS_ALPHA_BETA_PATH`).

    ``path`` may be the official ``weights.pt`` (read with ``torch.load(weights_only=True)``) or a
    safetensors file with the same keys ``alpha`` and ``beta`` of 1475 elements each.
    """
    path = DISTS_ALPHA_BETA_PATH if path is None else Path(path).expanduser()
    if not path.is_file() and path == DISTS_ALPHA_BETA_PATH:
        raise FileNotFoundError(
            f"the official DISTS alpha/beta file {path} is missing (the package was installed without its "
            "assets?); reinstall gendr-pix or pass dists_weights= a copy of DISTS_pytorch's weights.pt"
        )
    raw = read_tensor_file(path, "DISTS alpha/beta weights")
    total = sum(DISTS_CHANNELS)
    out: list[Tensor] = []
    for key in ("alpha", "beta"):
        if key not in raw:
            raise CheckpointFormatError(
                f"DISTS weights file '{path}' lacks key '{key}' (found {sorted(raw)[:6]}); expected the "
                "official DISTS weights.pt with keys 'alpha' and 'beta' of shape (1,1475,1,1)."
            )
        t = raw[key]
        if t.numel() != total:
            raise CheckpointFormatError(
                f"DISTS weights file '{path}': key '{key}' has shape {tuple(t.shape)}, expected "
                f"(1,{total},1,1) (channels {list(DISTS_CHANNELS)})."
            )
        out.append(t.detach().reshape(1, total, 1, 1).to(torch.float32))
    return out[0], out[1]


class DISTS(nn.Module):
    """DISTS perceptual distance (Ding et al. 2020), used as L_P in GenDR-Pix Eq. 4 / Algorithm 1.

    ``DISTS(x, y) = 1 - sum_k sum_c (alpha_kc * S1_kc + beta_kc * S2_kc)`` over the six feature sets
    k = raw image (in [0,1], not normalised), relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of a VGG16
    whose max-pools are L2 pools (see :mod:`gendr_core.vgg`); the VGG input is ImageNet mean/std
    normalised.  alpha, beta: (1,1475,1,1), divided by ``sum(alpha) + sum(beta)``.

    Args:
        vgg_weights: local ImageNet VGG16 weights (``.safetensors`` preferred, or torchvision
            ``.pth``).  ``None`` is only allowed with ``allow_random=True`` (tests).
        dists_weights: alpha/beta file; ``None`` (the default, and what DISTS means) loads the
            official weights shipped in ``assets/dists_alpha_beta.safetensors``. Another
            ``weights.pt`` / safetensors with ``alpha``, ``beta`` is an explicit override (a
            re-trained DISTS, or tests); there is no uniform fallback.
        allow_random: build a seeded random VGG when ``vgg_weights`` is None (meaningless as a
            perceptual loss; for tests only).
        seed: seed of the random init.

    The module is frozen (``requires_grad=False``, always in eval mode) but differentiable w.r.t.
    its inputs.  Inputs are never resized (the metric protocol of the DISTS paper resizes to a
    short side of 256; as a loss we compare the crops as they are).  Computation runs in the
    parameters' dtype; statistics are computed in at least float32.

    ``forward(x, y, reduction="mean")``: x, y (B,3,H,W) in [0,1] (or (B,1,H,W), replicated to 3
    channels); returns a scalar (``"mean"``/``"sum"``) or (B,) for ``"none"``.
    """

    def __init__(
        self,
        vgg_weights: str | Path | None,
        dists_weights: str | Path | None = None,
        allow_random: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if vgg_weights is None and not allow_random:
            raise MissingDependencyError(
                "DISTS needs " + vgg_weights_hint() + "; set perceptual_weights in the training "
                "config to that local file (.safetensors or .pth). Nothing is downloaded "
                "automatically."
            )
        self.vgg = VGG16Features()
        if vgg_weights is None:
            logger.warning("DISTS: using randomly initialised VGG16 (seed %d); values are not perceptual", seed)
            self.vgg.init_random(seed)
        else:
            self.vgg.load_weights(load_vgg16_state_dict(vgg_weights))
        alpha, beta = load_dists_alpha_beta(dists_weights)
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> DISTS:
        """Stay in eval mode whatever a parent module requests (the loss network is frozen)."""
        return super().train(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """Six DISTS feature sets of x (B,3,H,W) in [0,1]: [x, relu1_2, ..., relu5_3]."""
        dtype = self.vgg.features[0].weight.dtype
        x = x.to(dtype)
        h = (x - self.mean.to(dtype)) / self.std.to(dtype)  # (B,3,H,W)
        return [x, *self.vgg(h)]

    def forward(self, x: Tensor, y: Tensor, reduction: Reduction = "mean") -> Tensor:
        _check_pair(x, y, "DISTS")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ImageInputError(f"DISTS: expected 3-channel (or 1-channel) images, got shape {tuple(x.shape)}")
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"DISTS: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        b = x.shape[0]
        feats = self.features(torch.cat([x, y], dim=0))  # each (2B,C_k,H_k,W_k)
        alpha, beta = self.alpha.float(), self.beta.float()  # weights in fp32 even for a half VGG
        w_sum = alpha.sum() + beta.sum()
        alphas = torch.split(alpha / w_sum, list(DISTS_CHANNELS), dim=1)
        betas = torch.split(beta / w_sum, list(DISTS_CHANNELS), dim=1)
        sim = x.new_zeros(b, dtype=torch.float32)  # (B,)
        for f, a, bt in zip(feats, alphas, betas, strict=True):
            s1, s2 = dists_similarity(f[:b], f[b:])  # (B,C_k) each
            sim = sim + (s1 * a.flatten()).sum(dim=1) + (s2 * bt.flatten()).sum(dim=1)
        score = 1.0 - sim  # (B,)
        if reduction == "none":
            return score
        return score.sum() if reduction == "sum" else score.mean()


def sobel_magnitude(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Sobel gradient magnitude S(x) of DFOSD Eq. 6-7: ``sqrt((Gx*x)^2 + (Gy*x)^2 + eps)``.

    x: (B,C,H,W) in [0,1] -> (B,1,H,W).  Readings beyond the paper (which applies S to "an image"):
    the operator acts on the channel mean (a luminance proxy); ``eps = 1e-6`` keeps the square root
    differentiable on flat regions (so flat regions map to 1e-3, not 0); borders use replicate
    padding so the image frame does not create spurious edges.  ``F.conv2d`` is a correlation, which
    flips the sign of the Sobel responses relative to a convolution; the magnitude is unchanged.
    Values range in [sqrt(eps), 4*sqrt(2)] for inputs in [0,1] and are not rescaled.
    """
    if x.dim() != 4:
        raise ImageInputError(f"sobel_magnitude: expected (B,C,H,W), got shape {tuple(x.shape)}")
    gray = x.mean(dim=1, keepdim=True)  # (B,1,H,W)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype, device=gray.device)
    k = torch.stack([kx, kx.t()])[:, None]  # (2,1,3,3): Gx, Gy
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)  # (B,2,H,W)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2 + eps)


class EADISTS(nn.Module):
    """Edge-aware DISTS, DFOSD Eq. 5: ``EA-DISTS(x, y) = DISTS(x, y) + DISTS(S(x), S(y))``.

    ``S`` = :func:`sobel_magnitude` (channel mean -> Sobel magnitude with eps 1e-6, a 1-channel map
    replicated to 3 channels before the DISTS ImageNet normalisation; the raw-image DISTS stage sees
    the unnormalised edge map).  Differences from the paper's text: the paper does not say how colour
    is handled nor add an epsilon (Eq. 7 is a plain square root) nor specify border handling; see
    :func:`sobel_magnitude`.  Shares one frozen VGG16 with the wrapped :class:`DISTS`.

    Same constructor as :class:`DISTS` (drop-in replacement: ``EADISTS(vgg_weights, ...)``), or
    wrap an existing instance with ``EADISTS(dists=instance)``.
    """

    def __init__(
        self,
        vgg_weights: str | Path | None = None,
        dists_weights: str | Path | None = None,
        allow_random: bool = False,
        seed: int = 0,
        *,
        dists: DISTS | None = None,
    ) -> None:
        super().__init__()
        if isinstance(vgg_weights, DISTS):  # tolerate EADISTS(existing_dists)
            dists, vgg_weights = vgg_weights, None
        self.dists = dists if dists is not None else DISTS(vgg_weights, dists_weights, allow_random, seed)

    def train(self, mode: bool = True) -> EADISTS:
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor, reduction: Reduction = "mean") -> Tensor:
        _check_pair(x, y, "EADISTS")
        base = self.dists(x, y, reduction=reduction)
        ex = sobel_magnitude(x).expand(-1, 3, -1, -1)  # (B,3,H,W)
        ey = sobel_magnitude(y).expand(-1, 3, -1, -1)
        return base + self.dists(ex, ey, reduction=reduction)
