"""``gendr-pix eval``: our model, other models and bicubic scored in one run on the same degraded images.

Protocol (fixed, documented so numbers are reproducible): each HR image is cropped to a
multiple of the scale, degraded with :func:`gendr_core.degradation.fixed_eval_degradation`
(Gaussian blur, bicubic down-scaling, Gaussian noise, JPEG; sampled with seed = image
index), and restored by every method: bicubic, each ``--compare`` model (loaded with
:func:`gendr_core.teachers.load_teacher`: our model files or any spandrel-loadable SR file,
given the LQ image), and our model at every requested guidance (given the bicubic grid).

Columns, per image and then averaged per folder and over all folders:

* PSNR-Y / SSIM-Y: BT.601 Y with a border crop equal to the scale (the SR convention);
* NIQE: standard NIQE (original LIVE model, MATLAB procedure; :func:`gendr_core.metrics.niqe`)
  of the whole output on rounded BT.601 Y; lower is more natural;
* grid: :func:`gendr_core.metrics.grid_artifact_score` (dB, 8-px grid by default; ~0 = none);
* DISTS (``--vgg16 FILE``): :class:`gendr_core.losses.DISTS` with its official alpha/beta, on
  the whole images without resizing; LPIPS (``--lpips FILE``): LPIPS-VGG (v0.1 linear layers)
  on the whole images, inputs scaled to [-1, 1].

An image too small for NIQE (fewer than two 96x96 blocks) or the grid score (< 64 px) gets
``null`` there and is left out of that mean. ``--sheet`` writes a crop sheet PNG: one row per
image, columns LQ (nearest-upscaled) | bicubic | compared models | ours | HQ, all cut at the
same window (:func:`sheet_crop_box`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import DEFAULT_MODEL
from .errors import CheckpointFormatError, GenDRPixError, ImageInputError
from .fileio import atomic_write
from .imageio import IMAGE_SUFFIXES, load_image
from .models.restorer import OneStepRestorer
from .ops.guidance import ENSEMBLE_SIZES
from .ops.padding import crop_to_multiple
from .ops.resize import resize
from .pipeline import RANDPAD_MAX, restore_grid

logger = logging.getLogger(__name__)

OURS = "gendr-pix"
BICUBIC = "bicubic"


@dataclass(frozen=True)
class EvalRow:
    """Means over ``images`` images of one (dataset, method, guidance); None where not computed."""

    dataset: str
    method: str
    guidance: float | None
    images: int
    psnr_y: float
    ssim_y: float
    niqe: float | None
    ensemble: int = 1  # flip/transpose self-ensemble passes of the model rows (1 = off)
    grid: float | None = None  # grid-artifact score, dB
    dists: float | None = None
    lpips: float | None = None
    source: str | None = None  # model file of the row (None for bicubic)
    passes: int = 0  # RandPad self-ensemble passes (GenDR-Pix Eq. 6) of the model rows (0 = off)


@dataclass(frozen=True)
class EvalMethod:
    """One column of the comparison: ``run(lr, grid)`` -> (1,3,H,W) in [0,1] on the HR grid, where
    ``lr`` is the degraded (1,3,h,w) image and ``grid`` its bicubic upscale (1,3,H,W)."""

    name: str
    run: Callable[[Tensor, Tensor], Tensor]
    guidance: float | None = None
    ensemble: int = 1
    source: str | None = None
    passes: int = 0

    @property
    def key(self) -> tuple[str, float | None, int]:
        return self.name, self.guidance, self.passes


@dataclass
class SheetRow:
    """Crops of one image for the crop sheet: ``cells[label]`` (3,c,c) in [0,1]; ``box`` = (top, left, c)."""

    image: str
    box: tuple[int, int, int]
    cells: dict[str, Tensor]


@dataclass
class EvalResult:
    rows: list[EvalRow]
    images: list[dict[str, Any]] = field(default_factory=list)  # per image and method
    sheet: list[SheetRow] = field(default_factory=list)


def hr_folder(folder: Path) -> Path:
    """``folder/HR`` when ``folder`` is a dataset root holding one (the Set5/Set14 layout, ``HR/`` beside
    ``LR_x4/``): the low-resolution copies must not be scored as ground truth. Else ``folder``."""
    hr = Path(folder) / "HR"
    return hr if hr.is_dir() else Path(folder)


def hr_files(folder: Path, max_images: int | None = None) -> list[Path]:
    """The sorted image files of ``folder`` (recursive; only its ``HR/`` subfolder when it has one, see
    :func:`hr_folder`), the first ``max_images`` if given."""
    folder = hr_folder(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images found in {folder}")
    return files[:max_images] if max_images else files


def degraded_pairs(folder: Path, scale: int, max_images: int | None = None):
    """Yield (name, hr, lr) with the fixed evaluation degradation."""
    from .degradation import degrade_fixed

    for i, p in enumerate(hr_files(folder, max_images)):
        hr, _, _ = load_image(p)
        hr = crop_to_multiple(hr, scale)
        yield p.name, hr, degrade_fixed(hr, scale, seed=i)


def _dataset_name(folder: Path) -> str:
    folder = hr_folder(folder)
    return folder.name if folder.name != "HR" else folder.parent.name


# ----------------------------------------------------------------------------- methods


def model_method(model: OneStepRestorer, guidance: float = 1.0, ensemble: int = 1, name: str = OURS,
                 passes: int = 0) -> EvalMethod:
    """Our one-step model on the bicubic grid (``restore_grid`` tiles by itself when memory is short);
    ``passes`` > 0 averages that many RandPad passes (Eq. 6, seed 0; needs ``guidance`` 1)."""

    def run(lr: Tensor, grid: Tensor) -> Tensor:
        out = restore_grid(grid.to(model.device), model, guidance=guidance, ensemble=ensemble, randpad=passes)
        return out.float().cpu().clamp(0, 1)

    return EvalMethod(name, run, guidance, ensemble, getattr(model, "source_path", None), passes)


def _module_device(m: Any) -> torch.device:
    try:
        return next(m.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def restore_lq_tiled(restore: Callable[[Tensor, tuple[int, int]], Tensor], lr: Tensor, scale: int,
                     tile: int = 0, overlap: int = 32) -> Tensor:
    """``restore(lr, (s*h, s*w))`` of an LQ->HQ restorer, in overlapping tiles of ``tile`` OUTPUT px when
    ``0 < tile < max(s*h, s*w)``; otherwise in one pass.

    The tiles are cut on the HQ grid from the nearest-upscaled LQ image with origins, sizes and
    overlaps that are multiples of ``scale``, so each tile's LQ pixels are exactly a block of ``lr``;
    blending as :func:`gendr_core.ops.tiling.tiled_apply` (a restorer with a one-sided receptive
    field of at most ``overlap // 4`` output px gives its one-pass result).
    """
    from .ops.tiling import tiled_apply

    h, w = lr.shape[-2:]
    size = (h * scale, w * scale)
    if not tile or tile >= max(size):
        return restore(lr, size)
    near = lr.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)  # (B,3,H,W)

    def one(t: Tensor) -> Tensor:
        return restore(t[..., ::scale, ::scale], tuple(t.shape[-2:])).to(t.dtype)

    return tiled_apply(one, near, tile, overlap, align=scale)


def teacher_method(teacher: Any, scale: int, name: str | None = None, tile: int = 0,
                   source: str | None = None) -> EvalMethod:
    """A frozen LQ->HQ restorer (:class:`gendr_core.teachers.Teacher`: ``restore(lq, size)``) on the LQ image."""
    device = _module_device(teacher)

    def restore(lq: Tensor, size: tuple[int, int]) -> Tensor:
        with torch.no_grad():
            return teacher.restore(lq.to(device), size).float().cpu()

    def run(lr: Tensor, grid: Tensor) -> Tensor:
        out = restore_lq_tiled(restore, lr, scale, tile)
        if tuple(out.shape[-2:]) != tuple(grid.shape[-2:]):
            raise ImageInputError(f"{name}: restored to {tuple(out.shape[-2:])}, expected {tuple(grid.shape[-2:])}")
        return out.clamp(0, 1)

    return EvalMethod(name or getattr(teacher, "name", "teacher"), run, None, 1, source)


def _bicubic(lr: Tensor, grid: Tensor) -> Tensor:
    return grid


# ----------------------------------------------------------------------------- crop sheet


def sheet_crop_box(hr: Tensor, crop: int = 128, align: int = 1) -> tuple[int, int, int]:
    """(top, left, size) of the ``size`` x ``size`` window of ``hr`` (B,3,H,W) with the most gradient energy.

    ``size = min(crop, H, W)`` rounded down to a multiple of ``align``; energy = sum over the window of
    ``dY/dx^2 + dY/dy^2`` (forward differences of BT.601 luma); origins on multiples of ``align`` (so
    an LQ image at scale ``align`` maps onto whole pixels); the first maximum in row-major order.
    """
    from .metrics import rgb_to_y

    y = rgb_to_y(hr.detach().double().cpu()[:1])[0, 0]  # (H,W)
    h, w = y.shape
    size = min(crop, h, w) // align * align
    if size < 1:
        raise ImageInputError(f"sheet crop {crop} px at scale {align} does not fit a {h}x{w} image")
    e = torch.zeros(h, w, dtype=torch.float64)
    e[:, :-1] += (y[:, 1:] - y[:, :-1]) ** 2
    e[:-1, :] += (y[1:, :] - y[:-1, :]) ** 2
    ii = torch.zeros(h + 1, w + 1, dtype=torch.float64)
    ii[1:, 1:] = e.cumsum(0).cumsum(1)  # integral image
    tops = torch.arange(0, h - size + 1, align)
    lefts = torch.arange(0, w - size + 1, align)
    t, l_ = tops[:, None], lefts[None, :]
    energy = ii[t + size, l_ + size] - ii[t, l_ + size] - ii[t + size, l_] + ii[t, l_]  # (nt, nl)
    k = int(torch.argmax(energy.flatten()))  # first maximum
    return int(tops[k // len(lefts)]), int(lefts[k % len(lefts)]), size


def sheet_cells(name: str, hr: Tensor, lr: Tensor, outputs: dict[str, Tensor], scale: int,
                crop: int) -> SheetRow:
    """The crops of one image: "LQ" (nearest-upscaled), each of ``outputs`` (in order), "HQ"."""
    top, left, c = sheet_crop_box(hr, crop, scale)
    s = scale
    lq = lr[0, :, top // s : (top + c) // s, left // s : (left + c) // s]
    cells = {"LQ": lq.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)}
    for label, out in outputs.items():
        cells[label] = out[0, :, top : top + c, left : left + c]
    cells["HQ"] = hr[0, :, top : top + c, left : left + c]
    return SheetRow(name, (top, left, c), {k: v.detach().float().cpu().clamp(0, 1) for k, v in cells.items()})


SHEET_GAP = 4
SHEET_HEADER = 18


def compose_sheet(rows: Sequence[SheetRow], gap: int = SHEET_GAP, header: int = SHEET_HEADER):
    """PIL RGB image: a header with the column labels, then one row of crops per image.

    Cell (r, k) of size c occupies x = gap + k (c + gap), y = header + gap + r (c + gap); the sheet
    is ``n_cols c + (n_cols + 1) gap`` wide and ``header + n_rows c + (n_rows + 1) gap`` high. Pixels
    are the crops rounded to 8 bits. All rows must have the same columns and crop size.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    if not rows:
        raise ImageInputError("crop sheet: no images")
    labels = list(rows[0].cells)
    c = rows[0].box[2]
    for r in rows:
        if list(r.cells) != labels or r.box[2] != c:
            raise ImageInputError(f"crop sheet: row {r.image} has columns {list(r.cells)} / size {r.box[2]}, "
                                  f"expected {labels} / {c}")
    width = len(labels) * c + (len(labels) + 1) * gap
    height = header + len(rows) * c + (len(rows) + 1) * gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, label in enumerate(labels):
        x = gap + k * (c + gap)
        text = label
        while text and draw.textlength(text) > c:
            text = text[:-1]
        draw.text((x + 1, 3), text, fill="black")
    for i, r in enumerate(rows):
        y = header + gap + i * (c + gap)
        for k, label in enumerate(labels):
            arr = np.round(r.cells[label].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
            sheet.paste(Image.fromarray(arr, mode="RGB"), (gap + k * (c + gap), y))
    return sheet


def write_sheet(rows: Sequence[SheetRow], path: str | Path) -> Path:
    """Compose the crop sheet and write it atomically as PNG."""
    from .imageio import save_image_atomic

    return save_image_atomic(compose_sheet(rows), Path(path))


# ----------------------------------------------------------------------------- evaluation


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _json_safe(obj: Any) -> Any:
    """Non-finite floats (a perfect output's PSNR) as None, so the JSON stays strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _mean(vals: list[float | None]) -> float | None:
    got = [v for v in vals if v is not None]
    return sum(got) / len(got) if got else None


def run_evaluation(
    methods: Sequence[EvalMethod],
    folders: Sequence[Path],
    scale: int = 4,
    *,
    with_niqe: bool = True,
    grid_period: int = 8,
    dists: Callable[[Tensor, Tensor], Tensor] | None = None,
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_images: int | None = None,
    sheet_images: int = 0,
    sheet_crop: int = 128,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score every method (bicubic is added first if absent) on every image; rows per folder and "all".

    ``dists``/``lpips``: callables ``(pred, target)`` -> (B,) distances (e.g. :class:`~gendr_core.losses.DISTS`
    with ``reduction="none"``). The first ``sheet_images`` images (in run order) also give crop-sheet rows.
    """
    from .metrics import grid_artifact_score, niqe, psnr_y, ssim_y

    methods = list(methods)
    if not any(m.name == BICUBIC for m in methods):
        methods.insert(0, EvalMethod(BICUBIC, _bicubic))
    keys = [m.key for m in methods]
    if len(set(keys)) != len(keys):
        raise GenDRPixError(f"two methods share a name, guidance and passes: {keys}")
    warned: set[str] = set()

    def safe(metric: str, fn: Callable[[], float]) -> float | None:
        try:
            return _finite_or_none(fn())
        except ImageInputError as exc:
            if metric not in warned:
                logger.warning("%s not computed for some images (null): %s", metric, exc)
                warned.add(metric)
            return None

    images: list[dict[str, Any]] = []
    sheet: list[SheetRow] = []
    for folder in folders:
        dataset = _dataset_name(Path(folder))
        for name, hr, lr in degraded_pairs(Path(folder), scale, max_images):
            grid = resize(lr, tuple(hr.shape[-2:]), "bicubic")
            outputs: dict[str, Tensor] = {}
            for m in methods:
                with torch.no_grad():
                    out = m.run(lr, grid).float().cpu().clamp(0, 1)
                label = m.name if m.guidance is None or sum(k[0] == m.name for k in keys) == 1 else \
                    f"{m.name} passes={m.passes}" if m.passes else f"{m.name} w={m.guidance:g}"
                outputs[label] = out
                rec: dict[str, Any] = {
                    "dataset": dataset, "image": name, "method": m.name, "guidance": m.guidance,
                    "ensemble": m.ensemble, "passes": m.passes,
                    "psnr_y": float(psnr_y(out, hr, crop_border=scale)),  # inf for a perfect output
                    "ssim_y": float(ssim_y(out, hr, crop_border=scale)),
                    "niqe": safe("NIQE", lambda o=out: niqe(o)) if with_niqe else None,
                    "grid": safe("grid score", lambda o=out: grid_artifact_score(o, grid_period)),
                }
                with torch.no_grad():
                    if dists is not None:
                        rec["dists"] = float(dists(out, hr)[0])
                    if lpips is not None:
                        rec["lpips"] = float(lpips(out, hr)[0])
                images.append(rec)
            if len(sheet) < sheet_images:
                sheet.append(sheet_cells(name, hr, lr, outputs, scale, sheet_crop))
            if progress:
                progress(name)
    rows: list[EvalRow] = []
    datasets = list(dict.fromkeys(r["dataset"] for r in images))
    for ds in sorted(datasets) + ["all"]:
        for m in methods:
            recs = [r for r in images if (ds == "all" or r["dataset"] == ds)
                    and (r["method"], r["guidance"], r["passes"]) == m.key]
            if not recs:
                continue
            n = len(recs)
            rows.append(EvalRow(
                ds, m.name, m.guidance, n, sum(r["psnr_y"] for r in recs) / n,
                sum(r["ssim_y"] for r in recs) / n, _mean([r["niqe"] for r in recs]), m.ensemble,
                _mean([r["grid"] for r in recs]), _mean([r.get("dists") for r in recs]),
                _mean([r.get("lpips") for r in recs]), m.source, m.passes))
    return EvalResult(rows, images, sheet)


def evaluate(
    model: OneStepRestorer,
    folders: list[Path],
    scale: int = 4,
    guidances: tuple[float, ...] = (1.0,),
    with_niqe: bool = True,
    max_images: int | None = None,
    progress=None,
    ensemble: int = 1,
    *,
    compare: Sequence[EvalMethod] = (),
    grid_period: int = 8,
) -> list[EvalRow]:
    """Rows for bicubic, the ``compare`` methods and the model at each guidance, per folder and over all.

    ``ensemble`` > 1 restores with the flip/transpose self-ensemble (see ``restore_grid``).
    """
    methods = [EvalMethod(BICUBIC, _bicubic), *compare]
    methods += [model_method(model, g, ensemble) for g in guidances]
    return run_evaluation(methods, folders, scale, with_niqe=with_niqe, grid_period=grid_period,
                          max_images=max_images, progress=progress).rows


def format_table(rows: list[EvalRow]) -> str:
    """Markdown table; DISTS / LPIPS columns only when some row has them."""
    extra = [(k, t) for k, t in (("dists", "DISTS"), ("lpips", "LPIPS")) if any(getattr(r, k) is not None for r in rows)]
    head = "| dataset | method | guidance | images | PSNR-Y | SSIM-Y | NIQE | grid dB |"
    head += "".join(f" {t} |" for _, t in extra)
    lines = [head, "|---" * (8 + len(extra)) + "|"]

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for r in rows:
        method = r.method + (f" (RandPad x{r.passes})" if r.passes else "") + \
            (f" (x{r.ensemble} flips)" if r.ensemble != 1 else "")
        line = (f"| {r.dataset} | {method} | {'' if r.guidance is None else f'{r.guidance:g}'} | {r.images} | "
                f"{r.psnr_y:.3f} | {r.ssim_y:.4f} | {fmt(r.niqe, '.3f')} | {fmt(r.grid, '.2f')} |")
        line += "".join(f" {fmt(getattr(r, k), '.4f')} |" for k, _ in extra)
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Degrade HR images with the fixed evaluation degradation, restore them with bicubic, "
                     "the --compare models and our model, and score PSNR-Y, SSIM-Y, NIQE (standard LIVE model), "
                     "the 8-px grid-artifact score (dB, ~0 = none), and DISTS/LPIPS when weights are given.")
    p.add_argument("--model", default=None, help=f"our model: file or built-in name (default: {DEFAULT_MODEL})")
    p.add_argument("--data", nargs="+", required=True, help="folders of HR images (e.g. ../shared/data/val/Set5/HR)")
    p.add_argument("--compare", nargs="+", default=[], metavar="FILE",
                   help="other models scored in the same run, each a file that gendr_core.teachers.load_teacher "
                        "reads (our .safetensors models, or spandrel-loadable SR files such as Real-ESRGAN); "
                        "rows are named by file name")
    p.add_argument("--compare-tile", type=int, default=1024, metavar="PX",
                   help="run --compare models in tiles of this many output px (0 = whole image; default 1024)")
    p.add_argument("--scale", type=int, default=4, help="degradation/upscale factor (default 4)")
    p.add_argument("--guidance", default="1.0", help="comma-separated PadCFG scales of our model, e.g. 1,1.4,1.8")
    p.add_argument("--flips", type=int, default=None, choices=ENSEMBLE_SIZES,
                   help="restore with the flip/transpose self-ensemble of 2, 4 or 8 runs (default 1 = off), "
                        "as 'gendr-pix upscale --flips'")
    p.add_argument("--ensemble", type=int, default=None, choices=ENSEMBLE_SIZES, help="deprecated: use --flips")
    p.add_argument("--passes", default="0", metavar="N[,N...]",
                   help="also score our model with the RandPad self-ensemble (GenDR-Pix Eq. 6, seed 0, guidance 1) "
                        "of N passes, one row per N (default 0 = none), as 'gendr-pix upscale --passes'")
    p.add_argument("--no-niqe", action="store_true", help="skip NIQE")
    p.add_argument("--grid-period", type=int, default=8, help="period in px of the grid-artifact score (default 8)")
    p.add_argument("--vgg16", default=None, metavar="FILE",
                   help="local ImageNet VGG16 weights (.safetensors or .pth): adds a DISTS column")
    p.add_argument("--lpips", default=None, metavar="FILE",
                   help="LPIPS-VGG v0.1 linear-layer weights (lpips' vgg.pth, or .safetensors); needs --vgg16; "
                        "adds an LPIPS column")
    p.add_argument("--max-images", type=int, default=None, help="first N images per folder")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="our model's compute dtype (default auto, as upscale: bf16 on GPUs and on CPUs with native "
                        "bf16, else fp32); --compare models run in fp32")
    p.add_argument("--json", "--out", dest="json", default=None, metavar="OUT",
                   help="write the summary rows and the per-image results as JSON here")
    p.add_argument("--sheet", default=None, metavar="OUT.png",
                   help="write a crop sheet: per image LQ | bicubic | compared models | ours | HQ")
    p.add_argument("--sheet-images", type=int, default=6, metavar="N", help="images (rows) in the sheet (default 6)")
    p.add_argument("--sheet-crop", type=int, default=128, metavar="PX", help="crop size in HQ px (default 128)")


def _require_file(path: str, option: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{option} file not found: {p}")
    return p


def _load_compare(path: Path, device: str | None, scale: int, tile: int, names: set[str]) -> EvalMethod:
    try:
        from .teachers import load_teacher
    except ImportError as exc:  # pragma: no cover - teachers.py is part of the package
        raise GenDRPixError(f"--compare needs gendr_core.teachers ({exc})") from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        teacher = load_teacher(path, device=dev)
    except (GenDRPixError, FileNotFoundError, ValueError) as exc:
        raise CheckpointFormatError(f"--compare {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - third-party loaders raise their own types; report, exit 2
        raise CheckpointFormatError(f"--compare {path}: cannot load as a model ({type(exc).__name__}: {exc})") from None
    native = getattr(teacher, "native_scale", None)
    if native is not None and native != scale:
        logger.warning("--compare %s is a x%d model, evaluated at x%d (its output is resized)", path.name, native, scale)
    name = path.stem
    while name in names:
        name = f"{name}'"
    names.add(name)
    return teacher_method(teacher, scale, name, tile, str(path))


def run_eval_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .checkpoint import load_model

    try:
        guidances = tuple(float(g) for g in args.guidance.split(","))
    except ValueError:
        raise ValueError(f"--guidance must be comma-separated numbers, got {args.guidance!r}") from None
    if args.ensemble is not None:
        if args.flips is not None:
            raise ValueError("give --flips or the deprecated --ensemble, not both")
        sys.stderr.write("gendr-pix: warning: --ensemble is deprecated; use --flips\n")
    flips = args.flips or args.ensemble or 1
    bad_passes = ValueError(f"--passes must be comma-separated whole numbers in 0..{RANDPAD_MAX}, got {args.passes!r}")
    try:
        passes = sorted({int(n) for n in str(args.passes).split(",")} - {0})
    except ValueError:
        raise bad_passes from None
    if any(not 1 <= n <= RANDPAD_MAX for n in passes):
        raise bad_passes
    folders = [Path(d) for d in args.data]
    for f in folders:
        if not f.is_dir():
            raise FileNotFoundError(f"--data folder not found: {f}")
    compare_files = [_require_file(c, "--compare") for c in args.compare]
    vgg = _require_file(args.vgg16, "--vgg16") if args.vgg16 else None
    lp = _require_file(args.lpips, "--lpips") if args.lpips else None
    if lp is not None and vgg is None:
        raise ValueError("--lpips needs the VGG16 backbone weights: pass --vgg16 FILE as well")
    if args.sheet and Path(args.sheet).suffix.lower() != ".png":
        raise ValueError(f"--sheet must name a .png file, got {args.sheet}")
    if args.sheet_images < 1 or args.sheet_crop < args.scale:
        raise ValueError(f"--sheet-images must be >= 1 and --sheet-crop >= the scale ({args.scale})")

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    names = {BICUBIC, OURS}
    methods = [EvalMethod(BICUBIC, _bicubic)]
    methods += [_load_compare(p, args.device, args.scale, args.compare_tile, names) for p in compare_files]
    methods += [model_method(model, g, flips) for g in guidances]
    methods += [model_method(model, 1.0, flips, passes=n) for n in passes]
    dists = lpips = None
    if vgg is not None:
        from .losses import DISTS

        dists_net = DISTS(vgg).to(model.device)
        dists = lambda x, y: dists_net(x.to(model.device), y.to(model.device), reduction="none").cpu()  # noqa: E731
        if lp is not None:
            from .metrics import LPIPS

            lpips_net = LPIPS(vgg, lp).to(model.device)
            lpips = lambda x, y: lpips_net(x.to(model.device), y.to(model.device)).cpu()  # noqa: E731
    total = sum(len(hr_files(f, args.max_images)) for f in folders)
    with tqdm(total=total, unit="img", desc="eval") as bar:
        result = run_evaluation(methods, folders, args.scale, with_niqe=not args.no_niqe,
                                grid_period=args.grid_period, dists=dists, lpips=lpips, max_images=args.max_images,
                                sheet_images=args.sheet_images if args.sheet else 0, sheet_crop=args.sheet_crop,
                                progress=lambda name: (bar.set_postfix_str(name), bar.update()))
    sys.stdout.write(format_table(result.rows) + "\n")
    if args.json:
        payload = {"model": getattr(model, "source_path", None), "scale": args.scale,
                   "dtype": str(model.dtype).replace("torch.", ""),
                   "protocol": "fixed_eval_degradation, seed = image index; PSNR/SSIM on Y, border = scale",
                   "methods": [{"name": m.name, "guidance": m.guidance, "ensemble": m.ensemble, "passes": m.passes,
                                "source": m.source}
                               for m in methods],
                   "grid_period": args.grid_period,
                   "rows": [asdict(r) for r in result.rows], "images": result.images}
        text = json.dumps(_json_safe(payload), indent=2, allow_nan=False)
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
        sys.stdout.write(f"wrote {args.json}\n")
    if args.sheet:
        write_sheet(result.sheet, args.sheet)
        sys.stdout.write(f"wrote {args.sheet} ({len(result.sheet)} images)\n")
    return 0
