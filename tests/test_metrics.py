"""Tests of gendr_core.metrics (PSNR / SSIM on Y, NIQE against the published MATLAB values, grid score)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gendr_core import metrics
from gendr_core.errors import ImageInputError, MissingDependencyError
from gendr_core.metrics import (
    NIQE_PARAMS_FILE,
    aggd_fit,
    grid_artifact_score,
    grid_points,
    load_niqe_model,
    matlab_pinv,
    niqe,
    niqe_available,
    niqe_features,
    niqe_luma,
    niqe_mscn,
    psnr,
    psnr_y,
    rgb_to_y,
    ssim_y,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_rgb_to_y_white_black() -> None:
    white, black = torch.ones(3, 4, 4), torch.zeros(1, 3, 4, 4)
    assert rgb_to_y(white).shape == (1, 4, 4)
    assert rgb_to_y(black).shape == (1, 1, 4, 4)
    assert torch.allclose(rgb_to_y(white), torch.full((1, 4, 4), 235 / 255))
    assert torch.allclose(rgb_to_y(black), torch.full((1, 1, 4, 4), 16 / 255))
    red = torch.zeros(3, 1, 1)
    red[0] = 1.0
    assert rgb_to_y(red).item() == pytest.approx((16 + 65.481) / 255)
    with pytest.raises(ImageInputError):
        rgb_to_y(torch.zeros(1, 4, 4, 4))


def test_psnr_identical_is_inf() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert psnr(x, x) == math.inf
    assert psnr_y(x, x) == math.inf


def test_psnr_hand_computed_offset() -> None:
    x = torch.full((2, 3, 16, 16), 0.5)
    y = x + 1 / 255
    # MSE = (1/255)^2 -> 10 log10(255^2) = 20 log10 255
    assert psnr(y, x) == pytest.approx(20 * math.log10(255), abs=1e-6)
    per = psnr(y, x, reduction="none")
    assert per.shape == (2,)
    # Y on [0,255]: dY = (65.481 + 128.553 + 24.966) / 255 = 219/255 -> PSNR = 20 log10(255 * 255 / 219)
    assert psnr_y(y, x) == pytest.approx(20 * math.log10(255 * 255 / 219), abs=1e-6)
    assert psnr_y(y[0], x[0]) == pytest.approx(49.45272, abs=1e-4)


def test_psnr_y_crop_border() -> None:
    x = torch.rand(1, 3, 16, 16)
    y = x.clone()
    y[..., :2, :] = 0.0  # differences only in the top 2 rows
    assert psnr_y(y, x, crop_border=2) == math.inf
    assert psnr_y(y, x, crop_border=1) < 100
    with pytest.raises(ImageInputError):
        psnr_y(y, x, crop_border=8)
    with pytest.raises(ImageInputError):
        psnr(x, x[..., :8])


def test_ssim_identical_and_constant_hand_computed() -> None:
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert ssim_y(x, x) == pytest.approx(1.0, abs=1e-12)
    noisy = (x + 0.1 * torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ssim_y(noisy, x) < 0.95
    # constant images: sigma = 0, SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1) with Y on [0,255]
    a, b = torch.full((3, 16, 16), 0.5), torch.full((3, 16, 16), 0.6)
    ya, yb = 16 + 219 * 0.5, 16 + 219 * 0.6
    c1 = (0.01 * 255) ** 2
    assert ssim_y(a, b) == pytest.approx((2 * ya * yb + c1) / (ya**2 + yb**2 + c1), rel=1e-6)  # float32 0.6
    assert ssim_y(x, noisy, reduction="none").shape == (2,)
    with pytest.raises(ImageInputError):
        ssim_y(a[..., :8, :8], b[..., :8, :8])


def test_matlab_resize_matrix_properties() -> None:
    mat = metrics._matlab_resize_matrix(20, 10)
    assert mat.shape == (10, 20)
    assert np.allclose(mat.sum(axis=1), 1.0)
    ramp = np.arange(20, dtype=np.float64)
    # cubic kernels reproduce linear functions: output j samples the input at 2j + 0.5 (interior)
    assert np.allclose((mat @ ramp)[2:-2], 2 * np.arange(10)[2:-2] + 0.5)


# ----------------------------------------------------------------------------- NIQE


def _load(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).double() / 255.0  # (3,H,W), exact 8-bit levels


@pytest.fixture
def niqe_data(shared_data: Path) -> Path:
    folder = shared_data / "niqe"
    if not (folder / "modelparameters.mat").is_file():
        msg = f"SKIPPED LOUDLY: {folder} (LIVE NIQE model + MATLAB reference images) is missing"
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    return folder


def test_shipped_niqe_model_is_the_live_model(niqe_data: Path) -> None:
    pytest.importorskip("scipy")
    shipped, mat = load_niqe_model(), load_niqe_model(niqe_data / "modelparameters.mat")
    assert shipped.path == NIQE_PARAMS_FILE and niqe_available()
    assert np.array_equal(shipped.mu, mat.mu) and np.array_equal(shipped.cov, mat.cov)  # bit for bit
    assert shipped.mu[:2] == pytest.approx([2.60131368, 0.90570272], abs=1e-8)
    assert (NIQE_PARAMS_FILE.parent / "NOTICE_NIQE.md").is_file()


# Published MATLAB values (../shared/data/niqe/SOURCES.md): BasicSR's R2021a value for baboon on
# rounded BT.601 Y, and the original niqe_release on rgb2gray for the two TID2013 images.
@pytest.mark.parametrize(
    ("name", "convert", "matlab", "tol"),
    [
        ("basicsr_baboon.png", "y", 5.72957338, 1e-4),  # ours: 5.7295739 (5e-7 off)
        ("tid2013_I04.png", "gray", 3.65492152353770, 1e-6),  # ours: 3.6549215235380 (3e-13 off)
        ("tid2013_I19.png", "gray", 8.63519663862637, 0.05),  # ours: 8.6648 (flat areas, see SOURCES.md)
    ],
)
def test_niqe_reproduces_matlab(niqe_data: Path, name: str, convert: str, matlab: float, tol: float) -> None:
    assert niqe(_load(niqe_data / name), convert) == pytest.approx(matlab, abs=tol)


def test_niqe_needs_no_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    img = _load(FIXTURES / "kodim08_crop192.png")  # 192x192: four 96-px blocks
    expected = niqe(img)
    for mod in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "scipy", None)  # any import of scipy now fails
    metrics._cached_model.cache_clear()
    try:
        assert niqe(img) == expected and math.isfinite(expected) and expected > 0
    finally:
        metrics._cached_model.cache_clear()


def test_niqe_luma_matlab_conversions() -> None:
    px = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 0.5]]).view(3, 1, 3)  # red, green, grey
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B)/255 on 8-bit levels: red 81.481 -> 81, green 144.553 -> 145,
    # grey 128 (0.5 rounds to 128): 16 + 128 * 219/255 = 125.93 -> 126
    assert niqe_luma(px, "y").tolist() == [[81.0, 145.0, 126.0]]
    # rgb2gray: 0.298936 * 255 = 76.23 -> 76, 0.587043 * 255 = 149.70 -> 150, grey 128
    assert niqe_luma(px, "gray").tolist() == [[76.0, 150.0, 128.0]]
    assert niqe_luma(torch.full((1, 2, 2), 0.5)).tolist() == [[128.0, 128.0], [128.0, 128.0]]  # luminance as is
    with pytest.raises(ImageInputError, match="convert"):
        niqe_luma(px, "lab")  # type: ignore[arg-type]
    with pytest.raises(ImageInputError, match="NaN"):
        niqe_luma(torch.full((3, 4, 4), float("nan")))


def test_mscn_is_exactly_zero_on_flat_windows() -> None:
    img = np.full((20, 20), 77.0)
    img[:, 14:] = 200.0  # a vertical edge at column 14
    m = niqe_mscn(img)
    assert (m[:, :11] == 0).all() and (m[:, 17:] == 0).all()  # 7x7 windows away from the edge are constant
    assert (m[:, 11:14] < 0).all() and (m[:, 14:17] > 0).all()
    # one pixel of a hand case: the centre of a lone bright pixel, mu = 100 g0^2, sigma from E[I^2] - mu^2
    one = np.zeros((9, 9))
    one[4, 4] = 100.0
    g0 = metrics._gaussian_taps()[3]
    mu = 100.0 * g0**2
    assert niqe_mscn(one)[4, 4] == pytest.approx((100.0 - mu) / (math.sqrt(1e4 * g0**2 - mu**2) + 1.0), rel=1e-12)


def test_aggd_alpha_grid_and_degenerate_rows() -> None:
    alphas, ratio, *_ = metrics._aggd_table()
    assert alphas[0] == 0.2 and alphas[-1] == pytest.approx(10.0) and alphas.size == 9801
    assert np.all(np.diff(ratio) > 0)  # strictly increasing: the nearest value is found by bisection
    # Gaussian: G(1)^2 / (G(1/2) G(3/2)) = 2/pi -> alpha 2; Laplacian: G(2)^2/(G(1) G(3)) = 1/2 -> alpha 1
    idx = metrics._aggd_index(np.array([2 / math.pi, 0.5, np.nan, 5.0, -1.0]))
    assert alphas[idx].tolist() == pytest.approx([2.0, 1.0, 0.2, 10.0, 0.2])
    r = np.random.default_rng(0).uniform(ratio[0] - 0.01, ratio[-1] + 0.01, 2000)
    assert np.array_equal(metrics._aggd_index(r), np.argmin((ratio[None] - r[:, None]) ** 2, axis=1))
    # symmetric +-s data: sigma_l = sigma_r = s, r = 1 -> alpha 10 (the grid end), beta = s sqrt(G(.1)/G(.3))
    a, mean, bl, br = aggd_fit(np.array([[-2.0, 2.0, -2.0, 2.0], [0.0, 0.0, 1.0, 3.0]]))
    assert a[0] == pytest.approx(10.0) and mean[0] == 0.0
    assert bl[0] == br[0] == pytest.approx(2 * math.sqrt(math.gamma(0.1) / math.gamma(0.3)))
    assert a[1] == 0.2 and math.isnan(bl[1]) and math.isnan(mean[1])  # no negative values: MATLAB's NaN fit


def test_matlab_pinv_matches_numpy_on_singular_matrices() -> None:
    a = np.random.default_rng(1).normal(size=(6, 3))
    s = a @ a.T  # rank 3, 6x6
    assert np.allclose(matlab_pinv(s), np.linalg.pinv(s, rcond=1e-10))
    assert np.allclose(matlab_pinv(np.eye(3) * 4), np.eye(3) / 4)


def test_niqe_errors(tmp_path: Path) -> None:
    img = _load(FIXTURES / "kodim08_crop192.png")
    with pytest.raises(FileNotFoundError, match="nothere"):
        niqe(img, model_path=tmp_path / "nothere.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, foo=np.zeros(3))
    with pytest.raises(MissingDependencyError, match="foo"):
        load_niqe_model(bad)
    with pytest.raises(ImageInputError, match="96x96"):
        niqe(img[:, :90, :])
    with pytest.raises(ImageInputError, match="fewer than two"):
        niqe(img[:, :96, :96])  # one block: no covariance
    with pytest.raises(ImageInputError, match="batch"):
        niqe(torch.stack([img, img]))
    assert niqe_features(img).shape == (4, 36)


def test_niqe_accepts_basicsr_npz_layout(tmp_path: Path) -> None:
    m = load_niqe_model()
    npz = tmp_path / "pris.npz"
    np.savez(npz, mu_pris_param=m.mu[None], cov_pris_param=m.cov)
    img = _load(FIXTURES / "kodim08_crop192.png")
    assert niqe(img, model_path=npz) == niqe(img)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    y = F.conv2d(F.pad(x[:, None], (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))[:, 0]


def test_niqe_sharp_lower_than_blurred(shared_data: Path) -> None:
    path = shared_data / "val" / "Kodak24" / "HR" / "kodim13.png"
    if not path.is_file():
        pytest.skip(f"SKIPPED LOUDLY: {path} is missing")
    sharp = _load(path)
    s, b = niqe(sharp), niqe(_gaussian_blur(sharp, 2.0))
    assert 2.0 < s < b, (s, b)


# ----------------------------------------------------------------------------- grid-artifact score


def _pattern(h: int, w: int, amplitude: float, period: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed +-1 ``period`` x ``period`` tile repeated over (h, w), times ``amplitude``."""
    tile = torch.where(torch.rand(period, period, generator=torch.Generator().manual_seed(seed)) < 0.5, -1.0, 1.0)
    return amplitude * tile.repeat(h // period + 1, w // period + 1)[:h, :w].double()


def test_grid_points() -> None:
    pts = grid_points(8)
    assert len(pts) == 33 and (0, 0) not in pts and (0, 1) in pts and (0, 7) not in pts  # (0,7) ~ (0,1)
    assert {(0, 4), (4, 0), (4, 4)} <= set(pts)  # self-conjugate harmonics
    assert len(grid_points(4)) == 9 and len(grid_points(3)) == 4


def test_grid_score_hand_computed() -> None:
    """64x64, constant along y: a cos(2 pi 8x/64) (on the grid harmonic (0,8)) + b cos(2 pi 5x/64) (inside its
    ring).  The Hann window spreads each tone over 3x3 bins (DFT of the window: 32 at 0, -16 at +-1), so the
    (0,8) core holds all of the a-tone and the ring all of the b-tone: core mean / ring mean =
    (a^2/9) / (b^2/72) = 8 a^2/b^2.  The other 32 harmonics see no energy (ratio 1), hence
    score = 10 log10((8 a^2/b^2 + 32) / 33)."""
    x = torch.arange(64, dtype=torch.float64)
    a, b = 0.2, 0.1
    row = 0.5 + a * torch.cos(2 * math.pi * 8 * x / 64) + b * torch.cos(2 * math.pi * 5 * x / 64)
    img = row.expand(1, 1, 64, 64)
    expected = 10 * math.log10((8 * a**2 / b**2 + 32) / 33)
    assert expected == pytest.approx(2.8767, abs=1e-4)
    assert grid_artifact_score(img) == pytest.approx(expected, abs=1e-9)
    assert grid_artifact_score(torch.full((1, 3, 64, 64), 0.3)) == 0.0  # no energy at all


def test_grid_score_clean_photo_near_zero_and_grid_large() -> None:
    photo = _load(FIXTURES / "kodim08_crop192.png")  # (3,192,192)
    clean = grid_artifact_score(photo)
    assert clean == pytest.approx(-0.265, abs=0.01) and abs(clean) < 0.5
    amps = [0.5, 1.0, 2.0, 4.0]
    scores = [grid_artifact_score(photo + _pattern(192, 192, a / 255)) for a in amps]
    assert scores == pytest.approx([0.689, 2.995, 7.328, 12.857], abs=0.01)  # +-2/255 -> 7.3 dB
    assert all(s1 < s2 for s1, s2 in zip([clean] + scores, scores, strict=False))
    batch = torch.stack([photo, photo + _pattern(192, 192, 2 / 255)])
    assert grid_artifact_score(batch, reduction="none").tolist() == pytest.approx([clean, scores[2]], abs=1e-9)


def test_grid_score_period_and_errors() -> None:
    photo = _load(FIXTURES / "kodim08_crop192.png")
    four = photo + _pattern(192, 192, 2 / 255, period=4)
    assert grid_artifact_score(four, period=4) > 6 and grid_artifact_score(four, period=8) > 3  # 4 divides 8
    assert abs(grid_artifact_score(photo, period=4)) < 0.5
    with pytest.raises(ImageInputError, match="at least 64"):
        grid_artifact_score(photo[:, :60, :])
    with pytest.raises(ImageInputError, match="period"):
        grid_artifact_score(photo, period=1)
    with pytest.raises(ImageInputError, match="channels"):
        grid_artifact_score(torch.zeros(1, 2, 64, 64))


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_matches_the_reference_implementation(tmp_path: Path) -> None:
    """Reference numbers from the lpips 0.1.4 package (LPIPS(net="vgg"), normalize=True) run once with the
    same seeded random VGG16 and seeded linear layers; ours gave 0.6061731 / 1.4660172.  With lpips' own
    v0.1 vgg.pth linear layers the same check agreed to 1e-8 (0.11048551)."""
    from safetensors.torch import save_file

    from gendr_core.metrics import LPIPS
    from gendr_core.vgg import VGG16Features

    vgg = VGG16Features()
    vgg.init_random(0)
    save_file(dict(vgg.state_dict()), tmp_path / "vgg.safetensors")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=torch.Generator().manual_seed(10 + k))
           for k, c in enumerate((64, 128, 256, 512, 512))}
    save_file(lin, tmp_path / "lin.safetensors")
    net = LPIPS(tmp_path / "vgg.safetensors", tmp_path / "lin.safetensors")
    x = _load(FIXTURES / "kodim23_crop96.png").float()[None]
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        d = net(torch.cat([x, x]), torch.cat([y, x.flip(-1)]))
        assert d.tolist() == pytest.approx([0.6061731, 1.4660172], abs=2e-6)
        assert net(x, x).item() == 0.0
    bad = tmp_path / "bad.safetensors"
    save_file({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, bad)
    with pytest.raises(Exception, match="lin0.model.1.weight"):
        LPIPS(tmp_path / "vgg.safetensors", bad)
