"""Evaluation metrics: PSNR / SSIM on the BT.601 Y channel (the SR-paper convention), plain PSNR,
standard NIQE (Mittal et al. 2013, the original LIVE model, shipped) and a grid-artifact score.

Inputs are float tensors (B,3,H,W) or (3,H,W) in [0,1] (pred and target of the same shape).  Each
full-reference metric is computed per image; ``reduction="mean"`` (default) returns a Python float,
the mean of the per-image values (as SR tables average per-image PSNR), ``reduction="none"`` returns
a float64 tensor (B,).  NIQE and the grid score are metrics only, never training losses.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ImageInputError, MissingDependencyError

logger = logging.getLogger(__name__)

__all__ = [
    "rgb_to_y",
    "psnr",
    "psnr_y",
    "ssim_y",
    "niqe",
    "niqe_available",
    "niqe_features",
    "niqe_luma",
    "niqe_mscn",
    "niqe_distance",
    "niqe_model_path",
    "load_niqe_model",
    "convert_niqe_mat",
    "aggd_fit",
    "NiqeModel",
    "NIQE_PARAMS_FILE",
    "grid_artifact_score",
    "grid_points",
    "LPIPS",
]

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
        raise ImageInputError(f"{name}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
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

NIQE_PARAMS_FILE = Path(__file__).resolve().parent / "assets" / "niqe_pris_params.safetensors"
_NIQE_BLOCK = 96  # block size of the LIVE release (blocksizerow = blocksizecol = 96)
_NIQE_KEYS = (("mu_prisparam", "cov_prisparam"), ("mu_pris_param", "cov_pris_param"))
# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703])
_RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)
NiqeConvert = Literal["y", "gray"]


@dataclass(frozen=True)
class NiqeModel:
    """A NIQE pristine multivariate Gaussian: ``mu`` (36,), ``cov`` (36,36), float64."""

    mu: np.ndarray
    cov: np.ndarray
    path: Path


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise MissingDependencyError(
            f"NIQE model '{path}' is a MATLAB file, which needs scipy (pip install scipy); the shipped "
            f"model {NIQE_PARAMS_FILE.name} needs nothing"
        ) from None
    return loadmat(str(path))


def load_niqe_model(path: str | Path | None = None) -> NiqeModel:
    """Read a NIQE pristine model; ``None`` is the shipped LIVE model (``assets/niqe_pris_params.safetensors``).

    Accepted: our ``.safetensors`` (keys ``mu_prisparam``, ``cov_prisparam``), BasicSR's
    ``niqe_pris_params.npz`` (``mu_pris_param``, ``cov_pris_param``) and the LIVE release's
    ``modelparameters.mat`` (needs scipy).  Raises FileNotFoundError (path named) or
    MissingDependencyError (no recognised model in the file).
    """
    path = NIQE_PARAMS_FILE if path is None else Path(path).expanduser()
    if not path.is_file():
        where = " (the shipped NIQE model is missing: reinstall gendr-pix)" if path == NIQE_PARAMS_FILE else ""
        raise FileNotFoundError(f"NIQE model file not found: '{path}'{where}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        data = load_file(str(path))
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    elif suffix == ".mat":
        data = _read_mat(path)
    else:
        raise MissingDependencyError(f"NIQE model '{path}': expected .safetensors, .npz or .mat, got {suffix!r}")
    for mu_key, cov_key in _NIQE_KEYS:
        if mu_key in data and cov_key in data:
            mu = np.asarray(data[mu_key], dtype=np.float64).ravel()
            cov = np.asarray(data[cov_key], dtype=np.float64)
            if mu.shape != (36,) or cov.shape != (36, 36):
                raise MissingDependencyError(
                    f"NIQE model '{path}': {mu_key} {mu.shape} / {cov_key} {cov.shape}, expected (36,) / (36,36)"
                )
            return NiqeModel(mu=mu, cov=cov, path=path)
    keys = sorted(k for k in data if not k.startswith("__"))
    raise MissingDependencyError(
        f"NIQE model '{path}' has neither mu_prisparam/cov_prisparam nor mu_pris_param/cov_pris_param (found {keys})"
    )


def convert_niqe_mat(src: str | Path, dst: str | Path) -> Path:
    """Write the LIVE ``modelparameters.mat`` (``src``) as the ``.safetensors`` that :func:`niqe` ships
    (float64 ``mu_prisparam`` (36,), ``cov_prisparam`` (36,36), values unchanged; atomic write)."""
    import hashlib

    from safetensors.numpy import save_file

    from .fileio import atomic_write

    src = Path(src)
    model = load_niqe_model(src)
    meta = {"source": "LIVE niqe_release modelparameters.mat (see NOTICE_NIQE.md)",
            "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    tensors = {"mu_prisparam": np.ascontiguousarray(model.mu), "cov_prisparam": np.ascontiguousarray(model.cov)}
    return atomic_write(Path(dst), lambda tmp: save_file(tensors, tmp, metadata=meta))


@functools.lru_cache(maxsize=8)
def _cached_model(path: str | None) -> NiqeModel:
    return load_niqe_model(path)


def niqe_model_path() -> Path:
    """Path of the pristine model :func:`niqe` uses by default (the shipped LIVE model)."""
    return NIQE_PARAMS_FILE


def niqe_available() -> bool:
    """True when the shipped NIQE model file is installed (it is part of the package)."""
    return NIQE_PARAMS_FILE.is_file()


def _matlab_round(a: np.ndarray) -> np.ndarray:
    return np.floor(a + 0.5)  # MATLAB round / uint8(): halves away from zero (values here are >= 0)


def niqe_luma(img: Tensor, convert: NiqeConvert = "y") -> np.ndarray:
    """The (H,W) float64 luminance on 8-bit levels that NIQE scores.

    RGB in [0,1] is first rounded to 8-bit levels (as a saved PNG), then ``convert="y"``: BT.601 Y
    ``16 + (65.481 R + 128.553 G + 24.966 B)/255`` rounded (BasicSR/pyiqa, :func:`rgb_to_y`), or
    ``"gray"``: MATLAB ``rgb2gray`` (0.298936 R + 0.587043 G + 0.114021 B) rounded, what the LIVE
    release does.  One-channel input is used as is (times 255, rounded).
    """
    if not isinstance(img, Tensor):
        raise ImageInputError(f"niqe: expected a torch.Tensor in [0,1], got {type(img).__name__}")
    x = img.detach().to("cpu", torch.float64)
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ImageInputError(f"niqe: takes one image, got a batch of {x.shape[0]}; call it per image")
        x = x[0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ImageInputError(f"niqe: expected (3,H,W), (1,3,H,W), (1,H,W) or (H,W), got shape {tuple(img.shape)}")
    if not torch.isfinite(x).all():
        raise ImageInputError("niqe: the image contains NaN or inf")
    levels = _matlab_round(x.clamp(0.0, 1.0).numpy() * 255.0)  # (C,H,W)
    if levels.shape[0] == 1:
        return levels[0]
    r, g, b = levels
    if convert == "y":
        return _matlab_round(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0)
    if convert == "gray":
        return _matlab_round(_RGB2GRAY[0] * r + _RGB2GRAY[1] * g + _RGB2GRAY[2] * b)
    raise ImageInputError(f"niqe: convert must be 'y' or 'gray', got {convert!r}")


@functools.lru_cache(maxsize=1)
def _gaussian_taps() -> np.ndarray:
    """1-D taps of MATLAB ``fspecial('gaussian', 7, 7/6)`` normalised to sum 1 (the 2-D window is
    their outer product)."""
    t = np.exp(-0.5 * np.arange(-3.0, 4.0) ** 2 / (7.0 / 6.0) ** 2)
    return t / t.sum()


def _blur7(a: np.ndarray) -> np.ndarray:
    """Separable 7x7 Gaussian filter with replicated borders (``imfilter(.., 'replicate')``)."""
    taps = _gaussian_taps()
    h, w = a.shape
    p = np.pad(a, 3, mode="edge")
    rows = sum(taps[k] * p[:, k : k + w] for k in range(7))  # (h+6, w)
    return sum(taps[k] * rows[k : k + h, :] for k in range(7))  # (h, w)


def _flat_7x7(a: np.ndarray) -> np.ndarray:
    """True where the 7x7 window (replicated borders) holds a single value."""
    from numpy.lib.stride_tricks import sliding_window_view

    p = np.pad(a, 3, mode="edge")
    hi = sliding_window_view(sliding_window_view(p, 7, axis=0).max(-1), 7, axis=1).max(-1)
    lo = sliding_window_view(sliding_window_view(p, 7, axis=0).min(-1), 7, axis=1).min(-1)
    return hi == lo


def niqe_mscn(img: np.ndarray) -> np.ndarray:
    """MSCN coefficients ``(I - mu) / (sigma + 1)`` of a (H,W) float64 image (LIVE ``computequality.m``).

    ``mu`` is the 7x7 Gaussian mean (sigma 7/6, replicated borders), ``sigma = sqrt(|G*(I^2) - mu^2|)``.
    Where the whole window is constant the coefficient is set to exactly 0, its mathematical value:
    filtering leaves +-1e-16 residues there whose signs would decide which side of the AGGD fit
    they land on (that is what moves published NIQE values on images with flat areas).
    """
    mu = _blur7(img)
    sigma = np.sqrt(np.abs(_blur7(img * img) - mu * mu))
    out = (img - mu) / (sigma + 1.0)
    out[_flat_7x7(img)] = 0.0
    return out


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _matlab_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of MATLAB ``imresize(.., n_out/n_in, 'bicubic')`` along one axis:
    Keys cubic (a = -0.5) widened by 1/scale when shrinking (antialiasing), rows normalised to sum 1,
    out-of-range taps mirrored symmetrically (``[1..n, n..1]``)."""
    scale = n_out / n_in
    kscale = min(scale, 1.0)
    width = 4.0 / kscale
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based
    w = kscale * _cubic(kscale * (u[:, None] - idx))
    w /= w.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    idx0 = aux[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.repeat(np.arange(n_out), taps), idx0.ravel()), w.ravel())
    return mat


def matlab_half_size(img: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize(img, 0.5)`` of a (H,W) float64 image (bicubic with antialiasing, no rounding)."""
    h, w = img.shape
    return _matlab_resize_matrix(h, (h + 1) // 2) @ img @ _matlab_resize_matrix(w, (w + 1) // 2).T


@functools.lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """alpha grid 0.2:0.001:10 and, per alpha, r(alpha) = G(2/a)^2 / (G(1/a) G(3/a)), G(1/a), G(2/a), G(3/a)."""
    alphas = 0.2 + 0.001 * np.arange(9801)
    g1, g2, g3 = (np.array([math.gamma(k / a) for a in alphas]) for k in (1.0, 2.0, 3.0))
    return alphas, g2**2 / (g1 * g3), g1, g2, g3


def _aggd_index(r_norm: np.ndarray) -> np.ndarray:
    """Index of ``min((r(alpha) - r_norm)^2)`` on the alpha grid (first one on ties, as MATLAB ``min``);
    r(alpha) increases strictly, so the nearest grid value is a neighbour of the insertion point.
    NaN gives index 0 (MATLAB's ``min`` of an all-NaN vector)."""
    _, ratio, *_ = _aggd_table()
    n = ratio.size
    pos = np.searchsorted(ratio, np.nan_to_num(r_norm, nan=0.0))
    lo, hi = np.clip(pos - 1, 0, n - 1), np.clip(pos, 0, n - 1)
    pick = np.where((ratio[hi] - r_norm) ** 2 < (ratio[lo] - r_norm) ** 2, hi, lo)
    return np.where(np.isnan(r_norm), 0, pick)


def aggd_fit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching fit of an asymmetric generalised Gaussian (LIVE ``estimateaggdparam.m``) to each
    row of ``v`` (N, K).  Returns (alpha, mean, beta_l, beta_r), each (N,).

    ``sigma_l``/``sigma_r``: RMS of the negative / positive values (zeros count in neither);
    ``r = mean(|v|)^2 / mean(v^2)``, normalised by ``(g^3+1)(g+1)/(g^2+1)^2`` with ``g = sigma_l/sigma_r``;
    alpha = the grid value 0.2:0.001:10 whose ``G(2/a)^2/(G(1/a)G(3/a))`` is nearest;
    ``beta = sigma sqrt(G(1/a)/G(3/a))`` per side; ``mean = (beta_r - beta_l) G(2/a)/G(1/a)``.
    Degenerate rows (no negative or no positive values) give NaN betas and alpha 0.2, as MATLAB does.
    """
    v = np.asarray(v, dtype=np.float64)
    sq = v * v
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma_l = np.sqrt(np.where(v < 0, sq, 0.0).sum(1) / (v < 0).sum(1))
        sigma_r = np.sqrt(np.where(v > 0, sq, 0.0).sum(1) / (v > 0).sum(1))
        g = sigma_l / sigma_r
        r_hat = np.abs(v).mean(1) ** 2 / sq.mean(1)
        r_norm = r_hat * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
    alphas, _, g1, g2, g3 = _aggd_table()
    i = _aggd_index(r_norm)
    scale = np.sqrt(g1[i] / g3[i])
    beta_l, beta_r = sigma_l * scale, sigma_r * scale
    return alphas[i], (beta_r - beta_l) * g2[i] / g1[i], beta_l, beta_r


def _block_features(mscn: np.ndarray, block: int) -> np.ndarray:
    """18 features of every ``block`` x ``block`` block of an MSCN map (LIVE ``computefeature.m``):
    AGGD (alpha, (beta_l+beta_r)/2) of the coefficients, then for the products with the neighbour
    shifted by (0,1), (1,0), (1,1), (1,-1) (``circshift`` inside the block) AGGD (alpha, mean,
    beta_l, beta_r).  Blocks in row-major order; returns (n_blocks, 18)."""
    h, w = mscn.shape
    b = mscn.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)  # (nr, nc, block, block)
    flat = b.reshape(-1, block * block)
    a, _, bl, br = aggd_fit(flat)
    cols = [a, (bl + br) / 2.0]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = (b * np.roll(b, shift, axis=(2, 3))).reshape(-1, block * block)
        cols += list(aggd_fit(pair))
    return np.stack(cols, axis=1)


def niqe_features(img: Tensor, convert: NiqeConvert = "y") -> np.ndarray:
    """Per-block NIQE features (n_blocks, 36) of one image (see :func:`niqe`): 18 on the full scale
    (96 px blocks), 18 on the half scale (48 px blocks).  Rows may hold NaN (degenerate blocks)."""
    y = niqe_luma(img, convert)
    p = _NIQE_BLOCK
    h, w = (y.shape[0] // p) * p, (y.shape[1] // p) * p
    if h == 0 or w == 0:
        raise ImageInputError(f"niqe: image of {y.shape[0]}x{y.shape[1]} px is smaller than one 96x96 block")
    y = y[:h, :w]
    full = _block_features(niqe_mscn(y), p)
    half = _block_features(niqe_mscn(matlab_half_size(y)), p // 2)
    return np.concatenate([full, half], axis=1)


def matlab_pinv(a: np.ndarray) -> np.ndarray:
    """Moore-Penrose pseudo-inverse with MATLAB ``pinv``'s tolerance ``max(size(A)) * eps(max(s))``."""
    u, s, vt = np.linalg.svd(a)
    keep = s > max(a.shape) * np.spacing(s.max())
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def niqe_distance(feats: np.ndarray, model: NiqeModel) -> float:
    """``sqrt((mu_p - mu)^T pinv((Sigma_p + Sigma)/2) (mu_p - mu))`` with ``mu = nanmean`` (per column)
    and ``Sigma = nancov`` (rows with any NaN dropped, unbiased) of the block features (n, 36)."""
    complete = feats[np.isfinite(feats).all(axis=1)]
    if complete.shape[0] < 2:
        raise ImageInputError(
            f"niqe: fewer than two 96x96 blocks with usable statistics ({complete.shape[0]} of {feats.shape[0]}); "
            "the image is too small or too flat"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(feats, axis=0)  # (36,)
    cov = np.cov(complete, rowvar=False)  # (36, 36)
    d = model.mu - mu
    return float(np.sqrt(max(float(d @ matlab_pinv((model.cov + cov) / 2.0) @ d), 0.0)))


def niqe(img: Tensor, convert: NiqeConvert = "y", model_path: str | Path | None = None) -> float:
    """NIQE (Mittal et al. 2013) of one image, lower is better; the standard LIVE/MATLAB procedure and model.

    ``img``: (3,H,W)/(1,3,H,W) RGB or (1,H,W)/(H,W) luminance, float in [0,1].  Procedure of the
    LIVE ``niqe_release`` (``computequality.m``), whose published values it reproduces:

    1. luminance on 8-bit levels (:func:`niqe_luma`; ``convert="y"`` BT.601 Y, the SR-paper/BasicSR
       convention, or ``"gray"`` MATLAB ``rgb2gray`` as the LIVE release);
    2. crop to the largest multiple of 96 (top-left part; no border crop);
    3. at two scales, the image and its MATLAB ``imresize(.., 0.5)`` (bicubic, antialiased): MSCN
       coefficients (:func:`niqe_mscn`) cut into non-overlapping 96 (resp. 48) px blocks, 18 AGGD
       features per block and scale (:func:`aggd_fit`), 36 in all;
    4. distance of the blocks' Gaussian to the pristine one (:func:`niqe_distance`).

    Model: ``model_path`` (see :func:`load_niqe_model`), else the shipped original LIVE model
    (125 pristine images, 96 px blocks, sharpness threshold 0.75 -- that threshold selects the
    training blocks only and plays no part in scoring).  Needs at least two 96x96 blocks.

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        ImageInputError: wrong shape, image too small or too flat.
    """
    model = _cached_model(None if model_path is None else str(Path(model_path).expanduser()))
    return niqe_distance(niqe_features(img, convert), model)


# --------------------------------------------------------------------------------------------------
# Grid-artifact score (periodic peaks of a pixel-unshuffle grid)
# --------------------------------------------------------------------------------------------------

_GRID_CORE = 1  # core: Chebyshev distance <= 1 from the grid bin (3x3)
_GRID_RING = (2, 4)  # background ring: Chebyshev distance 2..4 (72 bins)


def grid_points(period: int = 8) -> list[tuple[int, int]]:
    """The 2-D harmonics (i, j), 0 <= i, j < period, of a ``period``-periodic pattern, DC excluded and one
    of each conjugate pair (i, j) ~ (-i, -j) kept (the amplitude spectrum of a real image is symmetric):
    ``(period^2 - 4)/2 + 3`` points for even periods (33 for 8)."""
    pts = []
    for i in range(period):
        for j in range(period):
            mirror = ((period - i) % period, (period - j) % period)
            if (i, j) != (0, 0) and (i, j) <= mirror:
                pts.append((i, j))
    return pts


def _ring_offsets(lo: int, hi: int) -> tuple[Tensor, Tensor]:
    d = torch.arange(-hi, hi + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    keep = torch.maximum(dy.abs(), dx.abs()) >= lo
    return dy[keep], dx[keep]


def grid_artifact_score(img: Tensor, period: int = 8, reduction: MetricReduction = "mean") -> float | Tensor:
    """Energy at the harmonics of a ``period``-px grid relative to their neighbourhood, in dB (a metric,
    never a loss).  About 0 dB for an image without a grid; a visible 8-px pattern gives several dB.

    Definition, per image (float64):

    1. ``Y``: BT.601 luma (:func:`rgb_to_y`) of (B,3,H,W)/(3,H,W) RGB, or the single channel of
       (B,1,H,W) input; its mean is subtracted and it is multiplied by the separable periodic Hann
       window ``w[n] = 0.5 - 0.5 cos(2 pi n / N)`` (suppresses the leakage of the image borders).
    2. ``E = |FFT2(Y)|^2``, the power spectrum on the unshifted ``H x W`` grid.
    3. For every harmonic (i, j) of :func:`grid_points` (``period^2 - 1`` nonzero harmonics, one per
       conjugate pair: 33 for period 8) the bin ``c = (floor(i H/period + 1/2), floor(j W/period + 1/2))``
       (indices modulo H, W): ``peak`` = mean of ``E`` over the 3x3 bins around ``c`` (which hold all of a
       Hann-windowed tone on the bin), ``background`` = mean of ``E`` over the 72 bins at Chebyshev
       distance 2..4 from ``c``.
    4. ``score = 10 log10(mean over harmonics of (peak + t) / (background + t))`` in dB, where
       ``t = 1e-12 * mean(E)`` only keeps empty regions of synthetic spectra finite (0/0 counts as a
       ratio of 1).  Averaging the ratios (not their logarithms) keeps the score of a grid-free image
       near 0 dB and lets one strong harmonic show.  An image with no energy at all scores 0.

    H and W must be at least ``8 * period`` so that rings stay apart from the other harmonics and DC.

    Typical values: HR photos (Kodak, 500 px) -1.1 .. +0.5 dB; a fixed +-2/255 8-px pattern added to
    them 12 .. 21 dB.  Interpolation is not grid-free at its scale's period: x4 nearest upscaling
    leaves dips (negative scores, the sinc zeros), x4 bicubic (a = -0.75) a weak period-4 ripple on
    smooth gradients (-1.8 .. +2.3 dB on the same images), so compare outputs of the same scale.
    ``reduction="mean"`` returns the batch mean as a float, ``"none"`` the (B,) float64 scores.
    """
    if not isinstance(period, int) or period < 2:
        raise ImageInputError(f"grid_artifact_score: period must be an integer >= 2, got {period!r}")
    x = _as_batch(img, "grid_artifact_score").detach().double()
    if x.shape[1] == 3:
        y = rgb_to_y(x)[:, 0]
    elif x.shape[1] == 1:
        y = x[:, 0]
    else:
        raise ImageInputError(f"grid_artifact_score: expected 1 or 3 channels, got shape {tuple(img.shape)}")
    b, h, w = y.shape
    if min(h, w) < 8 * period:
        raise ImageInputError(f"grid_artifact_score: image of {h}x{w} px is too small for period {period} "
                              f"(needs at least {8 * period} px per side)")
    if not torch.isfinite(y).all():
        raise ImageInputError("grid_artifact_score: the image contains NaN or inf")

    def hann(n: int) -> Tensor:
        return 0.5 - 0.5 * torch.cos(2.0 * math.pi * torch.arange(n, dtype=torch.float64, device=y.device) / n)

    y = (y - y.mean(dim=(-2, -1), keepdim=True)) * hann(h)[:, None] * hann(w)[None, :]
    energy = torch.fft.fft2(y).abs() ** 2  # (B, H, W)
    pts = torch.tensor(grid_points(period), dtype=torch.float64)
    cy = torch.floor(pts[:, 0] * h / period + 0.5).long()  # (P,)
    cx = torch.floor(pts[:, 1] * w / period + 0.5).long()
    core_dy, core_dx = _ring_offsets(0, _GRID_CORE)
    ring_dy, ring_dx = _ring_offsets(*_GRID_RING)

    def mean_at(dy: Tensor, dx: Tensor) -> Tensor:  # (B, P)
        rows = (cy[:, None] + dy[None, :]) % h  # (P, K)
        cols = (cx[:, None] + dx[None, :]) % w
        return energy[:, rows.to(y.device), cols.to(y.device)].mean(dim=-1)

    total = energy.mean(dim=(-2, -1))  # (B,)
    t = (1e-12 * total)[:, None]
    ratio = (mean_at(core_dy, core_dx) + t) / (mean_at(ring_dy, ring_dx) + t)  # (B, P)
    score = 10.0 * torch.log10(ratio.mean(dim=-1))
    score = torch.where(total > 0, score, torch.zeros_like(score)).cpu()
    return _reduce(score, reduction)


# --------------------------------------------------------------------------------------------------
# LPIPS (Zhang et al. 2018), VGG variant, v0.1, from local weights
# --------------------------------------------------------------------------------------------------

LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(torch.nn.Module):
    """LPIPS-VGG v0.1 distance (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
    Perceptual Metric", CVPR 2018) from local files; nothing is downloaded.

    ``d(x, y) = sum_k mean_hw( w_k . (n(f_k(x)) - n(f_k(y)))^2 )`` over relu1_2, relu2_2, relu3_3,
    relu4_3, relu5_3 of an ImageNet VGG16 with max pooling (``vgg_weights``: torchvision layout,
    .safetensors or .pth, see :func:`gendr_core.vgg.load_vgg16_state_dict`); ``n`` divides each
    feature vector by its channel L2 norm (+1e-10); ``w_k`` (1,C_k,1,1) are the learned linear
    layers (``lin_weights``: lpips' ``weights/v0.1/vgg.pth``, keys ``lin{k}.model.1.weight``, or a
    .safetensors with the same keys or ``lin{k}.weight``).  Inputs (B,3,H,W) in [0,1] are mapped to
    [-1,1] and then to ``(x - shift)/scale`` with shift (-0.030, -0.088, -0.188), scale (0.458,
    0.448, 0.450).  ``forward(x, y)`` returns (B,) float32.  Frozen, always in eval mode.
    """

    def __init__(self, vgg_weights: str | Path, lin_weights: str | Path) -> None:
        super().__init__()
        from .errors import CheckpointFormatError
        from .vgg import VGG16Features, load_vgg16_state_dict, read_tensor_file

        vgg = VGG16Features()
        vgg.load_weights(load_vgg16_state_dict(vgg_weights))
        for idx in (4, 9, 16, 23):  # LPIPS keeps torchvision's max pools (DISTS swaps them for L2 pools)
            vgg.features[idx] = torch.nn.MaxPool2d(kernel_size=2, stride=2)
        self.vgg = vgg
        sd = read_tensor_file(Path(lin_weights), "LPIPS linear-layer weights")
        for k, c in enumerate(LPIPS_CHANNELS):
            w = sd.get(f"lin{k}.model.1.weight", sd.get(f"lin{k}.weight"))
            if w is None or tuple(w.shape) != (1, c, 1, 1):
                raise CheckpointFormatError(
                    f"LPIPS weights '{lin_weights}': lin{k}.model.1.weight of shape (1,{c},1,1) expected, got "
                    f"{None if w is None else tuple(w.shape)} (keys: {sorted(sd)[:8]})")
            self.register_buffer(f"lin{k}", w.float().clone())
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = _as_batch(x, "LPIPS"), _as_batch(y, "LPIPS")
        if x.shape != y.shape or x.shape[1] != 3:
            raise ImageInputError(f"LPIPS: expected two (B,3,H,W) images of one shape, got {tuple(x.shape)} and "
                                  f"{tuple(y.shape)}")
        b = x.shape[0]
        h = (torch.cat([x, y]).float() * 2.0 - 1.0 - self.shift) / self.scale  # (2B,3,H,W)
        dist = x.new_zeros(b, dtype=torch.float32)
        for k, f in enumerate(self.vgg(h)):
            f = f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + 1e-10)
            d = ((f[:b] - f[b:]) ** 2 * getattr(self, f"lin{k}")).sum(dim=1)  # (B,h_k,w_k)
            dist = dist + d.mean(dim=(1, 2))
        return dist
