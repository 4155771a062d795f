"""Training losses of GenDR-Pix: L1, masked Fourier-space (MFS) loss, softplus adversarial losses,
DISTS and EA-DISTS perceptual losses.

Images are float tensors (B,3,H,W) in [0,1].  Stage II generator objective (GenDR-Pix Eq. 4 /
Algorithm 1)::

    L_psi = l1_loss(x_g, x_r) + 0.05 * generator_adv_loss(D(x_g)) + 1.0 * DISTS(x_g, x_r)
            + 0.1 * masked_fourier_loss(x_g, x_r)

RandPad (GenDR-Pix Eq. 3) lives in ``gendr_core.ops.padding`` and is applied to the discriminator
inputs by the trainer; none of the losses here need it.  Without VGG16 weights the Stage II trainer
uses :func:`feature_matching_loss` on the frozen discriminator backbone's features as L_P.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointFormatError, ConfigError, ImageInputError, MissingDependencyError
from .metrics import rgb_to_y
from .vgg import DISTS_CHANNELS, VGG16Features, load_vgg16_state_dict, read_tensor_file, vgg_weights_hint

logger = logging.getLogger(__name__)

__all__ = [
    "l1_loss",
    "neg_psnr_loss",
    "neg_psnr_y_loss",
    "artifact_mask",
    "masked_fourier_loss",
    "generator_adv_loss",
    "discriminator_adv_loss",
    "channel_normalise",
    "feature_matching_loss",
    "dists_similarity",
    "load_dists_alpha_beta",
    "DISTS_ALPHA_BETA_PATH",
    "sobel_magnitude",
    "DISTS",
    "EADISTS",
]

Reduction = Literal["mean", "sum", "none"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ImageInputError(
            f"{name}: pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dim() != 4:
        raise ImageInputError(f"{name}: expected (B,C,H,W) tensors, got shape {tuple(pred.shape)}")


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error ``mean |pred - target|`` over all elements (the ``||.||_1`` terms of
    GenDR-Pix Eq. 1 and Eq. 4, read as a mean, as is usual for image losses)."""
    if pred.shape != target.shape:
        raise ImageInputError(f"l1_loss: shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred - target).abs().mean()


def neg_psnr_loss(pred: Tensor, target: Tensor, eps: float = 1e-10) -> Tensor:
    """Mean over the batch of ``10 * log10(MSE_i + eps)`` = minus the per-sample PSNR (peak 1), dB.

    Not in the papers: a PSNR-oriented objective. Minimising the per-sample MSE averaged over a
    batch lets the hardest samples (strong blur, heavy noise: large errors) dominate the gradient;
    ``d log(MSE_i) = d MSE_i / MSE_i`` weights every sample equally in dB instead, the way an SR
    benchmark's mean PSNR does. Values are negative (e.g. -30 for a 30 dB restoration).
    Unlike ``metrics.psnr`` (float64, ``inf`` for identical images, a report) this keeps the input
    dtype and the graph, and ``eps`` caps it at -100 dB so a perfect sample cannot give -inf.
    """
    _check_pair(pred, target, "neg_psnr_loss")
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(mse + eps)).mean()


def neg_psnr_y_loss(pred: Tensor, target: Tensor, eps: float = 1e-10) -> Tensor:
    """:func:`neg_psnr_loss` on the BT.601 luma (``metrics.rgb_to_y``): minus the per-sample PSNR-Y, dB.

    Not in the papers: the training-side twin of the benchmark metric ``metrics.psnr_y`` (without its
    border crop and 8-bit rounding). Luma on the [0,1] scale with peak 1 gives the same dB as
    MATLAB's [0,255] luma with peak 255, and the 16/255 offset cancels in the difference, so
    ``-neg_psnr_y_loss`` equals ``metrics.psnr_y(pred, target)`` up to ``eps``. Errors along the
    chroma axes cost nothing here, so pair it with a small RGB term (``neg_psnr_loss``) in training.
    pred, target: (B,3,H,W) RGB.
    """
    _check_pair(pred, target, "neg_psnr_y_loss")
    if pred.shape[1] != 3:
        raise ImageInputError(f"neg_psnr_y_loss: expected RGB (B,3,H,W), got shape {tuple(pred.shape)}")
    return neg_psnr_loss(rgb_to_y(pred), rgb_to_y(target), eps)


# --------------------------------------------------------------------------------------------------
# Masked Fourier-space loss (GenDR-Pix Eq. 2)
# --------------------------------------------------------------------------------------------------


def _band_indices(n: int, period: int, half_width: int) -> list[int]:
    """Indices covered by the bands ``c-s .. c+s-1`` (mod n) for centres ``c = floor(k*n/period)``."""
    idx: set[int] = set()
    for k in range(period + 1):
        c = (k * n) // period
        for off in range(-half_width, half_width):
            idx.add((c + off) % n)
    return sorted(idx)


def artifact_mask(
    h: int,
    w: int,
    period: int = 8,
    half_width: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Band mask M of the masked Fourier-space loss, GenDR-Pix Eq. 2.  Returns (h, w).

    Paper: "M is initialised from zero and satisfies M[:, i-s : i+s] = 1 and M[j-s : j+s, :] = 1
    where i in {0, floor(h/8), ..., h} and j in {0, floor(w/8), ..., w}, 2s is band width".

    Our reading (the paper pairs the column slice with h and the row slice with w, which only
    agrees for square images):

    * The mask lives on the *unshifted* ``torch.fft.fft2`` grid (DC at [0, 0]).  A pattern that
      repeats every ``period`` pixels (the x8 pixel-shuffle artifact) has energy only at row
      frequencies ``k*h/period`` and column frequencies ``l*w/period``.
    * Column bands are centred at ``c = floor(k*w/period)``, ``k = 0..period`` (the multiples of
      ``w/period``, equal to ``k*floor(w/8)`` whenever ``w`` is divisible by 8, which every x8
      pixel-shuffle output is); row bands likewise at ``floor(k*h/period)``.
    * A band is the Python slice ``c-s : c+s``, i.e. indices ``c-s .. c+s-1`` (2s bins), taken
      modulo the axis length because the frequency axis is periodic (index -1 == w-1, index w == 0).
      For s=1 the band is {c-1, c}.  This looks one-sided, but the amplitude spectrum of a real image
      is point-symmetric (|F[k]| = |F[-k]|) and the mask contains the mirrored band {-c-1, -c} as
      well, so in effect the amplitudes at c-1, c and c+1 are all penalised.
    * ``half_width = 0`` gives an empty mask.
    """
    if h <= 0 or w <= 0:
        raise ConfigError(f"artifact_mask: h and w must be positive, got h={h}, w={w}")
    if period <= 0:
        raise ConfigError(f"artifact_mask: period must be a positive integer, got {period}")
    if half_width < 0:
        raise ConfigError(f"artifact_mask: half_width (s) must be >= 0, got {half_width}")
    mask = torch.zeros(h, w, dtype=dtype, device=device)  # (h, w)
    if half_width == 0:
        return mask
    cols = torch.tensor(_band_indices(w, period, half_width), device=device, dtype=torch.long)
    rows = torch.tensor(_band_indices(h, period, half_width), device=device, dtype=torch.long)
    mask[:, cols] = 1
    mask[rows, :] = 1
    return mask


def masked_fourier_loss(
    pred: Tensor,
    target: Tensor,
    period: int = 8,
    half_width: int = 1,
    reduction: Reduction = "mean",
    norm: Literal["backward", "ortho", "forward"] = "backward",
) -> Tensor:
    """Masked Fourier-space (MFS) loss, GenDR-Pix Eq. 2:
    ``L_F = || M * (|F{y_stu}| - |F{y_tea}|) ||_1``.

    ``pred`` = y_stu (student output), ``target`` = y_tea (teacher / reference), both (B,C,H,W).
    Equivalent to ``F.l1_loss(M * |fft2(pred)|, M * |fft2(target)|)`` with PyTorch defaults.

    Decisions (the paper states none of them):

    * FFT: ``torch.fft.fft2`` over the last two dims, unshifted (see :func:`artifact_mask`),
      computed in float32 (bf16/fp16 inputs are upcast), ``norm="backward"`` (unnormalised, the
      PyTorch default and the most likely setting of the authors' unreleased code, for which
      lambda_3 = 0.1 of Algorithm 1 was tuned).
    * ``reduction="mean"``: mean over *all* B*C*H*W elements, masked-out bins included (the
      ``F.l1_loss`` convention).  With ``"backward"`` the two 1/(H*W) and H*W factors cancel: the
      loss equals the sum over masked bins of the amplitude error of the mean-normalised spectrum
      (``fft2(x)/(H*W)``), averaged over B*C.  Hence (i) an 8-periodic artifact of fixed per-pixel
      strength gives the same loss at any resolution (its spectrum is the 8x8 tile's DFT / 64
      placed on the masked grid), and (ii) a constant offset ``c`` between the images gives exactly
      ``L_F = |c|`` (only the DC bin differs, by ``|c| * H * W``), i.e. the same value as the pixel
      L1 loss.  ``norm="ortho"`` would make the loss 1/sqrt(H*W) times smaller (resolution
      dependent); the ortho / mean-over-masked-bins alternative is resolution independent too but
      about 32*s times smaller for square crops, which would silently weaken lambda_3.
      ``"sum"`` sums over all elements; ``"none"`` returns per-image (B,) means over C*H*W.
    * The mask contains the zero-frequency row and column bands (``i = 0``), so axis-aligned
      low-frequency differences (global brightness, pure horizontal/vertical gradients) are
      penalised as well, not only the pixel-shuffle grid; oblique low/mid-frequency content is not.
    * Gradient of ``|z|`` at ``z = 0`` is taken as 0 (PyTorch's convention).
    """
    _check_pair(pred, target, "masked_fourier_loss")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"masked_fourier_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if norm not in ("backward", "ortho", "forward"):
        raise ConfigError(f"masked_fourier_loss: norm must be 'backward', 'ortho' or 'forward', got {norm!r}")
    h, w = pred.shape[-2:]
    mask = artifact_mask(h, w, period, half_width, device=pred.device, dtype=torch.float32)  # (H,W)
    amp_p = torch.fft.fft2(pred.float(), norm=norm).abs()  # (B,C,H,W)
    amp_t = torch.fft.fft2(target.float(), norm=norm).abs()  # (B,C,H,W)
    diff = (mask * (amp_p - amp_t)).abs()  # (B,C,H,W)
    if reduction == "sum":
        return diff.sum()
    if reduction == "none":
        return diff.mean(dim=(1, 2, 3))  # (B,)
    return diff.mean()


# --------------------------------------------------------------------------------------------------
# Adversarial losses (GenDR-Pix Eq. 1 / Eq. 4, Algorithm 1)
# --------------------------------------------------------------------------------------------------


Logits = Tensor | Sequence[Tensor]


def _mean_over_maps(logits: Logits, fn, name: str) -> Tensor:
    """``fn`` applied elementwise, averaged per logit map, then over the maps (one map per
    discriminator head/depth, maps of different sizes weigh the same)."""
    if isinstance(logits, Tensor):
        return fn(logits).mean()
    maps = list(logits)
    if not maps:
        raise ImageInputError(f"{name}: got an empty list of logit maps")
    return sum(fn(m).mean() for m in maps) / len(maps)


def generator_adv_loss(fake_logits: Logits) -> Tensor:
    """Non-saturating generator loss ``mean softplus(-D(fake))`` (GenDR-Pix Eq. 4, the
    ``lambda_1 * sp[-h(x_g)]`` term of Algorithm 1; the discriminator must not be updated by it).

    ``fake_logits``: one logit tensor, or a list of logit maps (one per discriminator head); a list
    gives the mean over heads of each head's mean."""
    return _mean_over_maps(fake_logits, lambda t: F.softplus(-t), "generator_adv_loss")


def discriminator_adv_loss(real_logits: Logits, fake_logits: Logits) -> Tensor:
    """Discriminator loss ``mean softplus(-D(real)) + mean softplus(D(fake))`` (GenDR-Pix Eq. 1/4,
    Algorithm 1 ``L_phi``).  ``fake_logits`` must come from detached generator outputs.  The two
    means are taken separately, so real and fake batches may differ in size/shape.  Lists of logit
    maps (one per head) are averaged over heads as in :func:`generator_adv_loss`."""
    return (_mean_over_maps(real_logits, lambda t: F.softplus(-t), "discriminator_adv_loss")
            + _mean_over_maps(fake_logits, F.softplus, "discriminator_adv_loss"))


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
DISTS_ALPHA_BETA_PATH = Path(__file__).resolve().parent / "assets" / "dists_alpha_beta.safetensors"


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
