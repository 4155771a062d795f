"""Pixel losses: L1, per-sample -PSNR (RGB and luma), and the masked Fourier-space (MFS) loss of
GenDR-Pix Eq. 2 with its artifact band mask.  Images are float (B,C,H,W), normally in [0,1]."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..errors import ConfigError, ImageInputError
from ..metrics import rgb_to_y
from ._common import Reduction, _check_pair

MaskKind = Literal["bands", "points"]
MASK_KINDS: tuple[str, ...] = ("bands", "points")


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
    kind: MaskKind = "bands",
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

    ``kind="bands"`` (default) is that literal reading: the *union* of the row and column bands, whole
    stripes of the spectrum.  ``kind="points"`` keeps only their *intersections*, the (2s x 2s) bins
    around each harmonic ``(k*h/period, l*w/period)``.  Why it exists: Sec. 4.2 describes the artifact
    as "highlight points [that] appear periodically" and a pattern repeating every ``period`` px in
    both directions, even one modulated by the image, has its spectrum concentrated around exactly
    those points; the stripes between them hold ordinary image content.  With the union mask the
    harmonic bins are ~1% of the masked bins at 192 px, so raising the loss weight mostly pulls the
    stripes towards the reference (which fights generated texture) and barely the peaks; the
    intersection mask puts the whole weight on the peaks.
    """
    if h <= 0 or w <= 0:
        raise ConfigError(f"artifact_mask: h and w must be positive, got h={h}, w={w}")
    if period <= 0:
        raise ConfigError(f"artifact_mask: period must be a positive integer, got {period}")
    if half_width < 0:
        raise ConfigError(f"artifact_mask: half_width (s) must be >= 0, got {half_width}")
    if kind not in MASK_KINDS:
        raise ConfigError(f"artifact_mask: kind must be one of {list(MASK_KINDS)}, got {kind!r}")
    mask = torch.zeros(h, w, dtype=dtype, device=device)  # (h, w)
    if half_width == 0:
        return mask
    cols = torch.tensor(_band_indices(w, period, half_width), device=device, dtype=torch.long)
    rows = torch.tensor(_band_indices(h, period, half_width), device=device, dtype=torch.long)
    if kind == "points":
        mask[rows[:, None], cols[None, :]] = 1
        return mask
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
    mask: MaskKind = "bands",
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
    * ``mask``: ``"bands"`` (Eq. 2 as written) or ``"points"`` (only the harmonic bins), see
      :func:`artifact_mask`.  The mean still runs over all bins, so at equal weight a points mask
      pushes each harmonic bin exactly as hard as the bands mask does.
    """
    _check_pair(pred, target, "masked_fourier_loss")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"masked_fourier_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if norm not in ("backward", "ortho", "forward"):
        raise ConfigError(f"masked_fourier_loss: norm must be 'backward', 'ortho' or 'forward', got {norm!r}")
    h, w = pred.shape[-2:]
    m = artifact_mask(h, w, period, half_width, device=pred.device, dtype=torch.float32, kind=mask)  # (H,W)
    amp_p = torch.fft.fft2(pred.float(), norm=norm).abs()  # (B,C,H,W)
    amp_t = torch.fft.fft2(target.float(), norm=norm).abs()  # (B,C,H,W)
    diff = (m * (amp_p - amp_t)).abs()  # (B,C,H,W)
    if reduction == "sum":
        return diff.sum()
    if reduction == "none":
        return diff.mean(dim=(1, 2, 3))  # (B,)
    return diff.mean()


