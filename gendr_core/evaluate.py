"""``gendr-pix eval``: PSNR-Y / SSIM-Y / NIQE of a model against bicubic upscaling.

Protocol (fixed, documented so numbers are reproducible): each HR image is cropped to a
multiple of the scale, degraded with :func:`gendr_core.degradation.fixed_eval_degradation`
(Gaussian blur, bicubic down-scaling, Gaussian noise, JPEG; sampled with seed = image
index), and restored at every requested guidance. PSNR/SSIM are on the BT.601 Y channel
with a border crop equal to the scale (the common SR convention).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .fileio import atomic_write
from .imageio import IMAGE_SUFFIXES, load_image
from .models.restorer import OneStepRestorer
from .ops.guidance import ENSEMBLE_SIZES
from .ops.padding import crop_to_multiple
from .ops.resize import resize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRow:
    dataset: str
    method: str
    guidance: float | None
    images: int
    psnr_y: float
    ssim_y: float
    niqe: float | None
    ensemble: int = 1  # flip/transpose self-ensemble passes of the model rows (1 = off)


def hr_files(folder: Path, max_images: int | None = None) -> list[Path]:
    """The sorted image files of ``folder`` (recursive), the first ``max_images`` if given."""
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


def evaluate(
    model: OneStepRestorer,
    folders: list[Path],
    scale: int = 4,
    guidances: tuple[float, ...] = (1.0,),
    with_niqe: bool = True,
    max_images: int | None = None,
    progress=None,
    ensemble: int = 1,
) -> list[EvalRow]:
    """Rows for bicubic and for the model at each guidance, per folder and over all folders.

    ``ensemble`` > 1 restores with the flip/transpose self-ensemble (see ``restore_grid``).
    """
    from .metrics import niqe, niqe_available, psnr_y, ssim_y
    from .pipeline import restore_grid

    use_niqe = with_niqe and niqe_available()
    if with_niqe and not use_niqe:
        logger.warning("NIQE unavailable (pristine parameters not installed); reported as null")
    methods = [("bicubic", None)] + [("gendr-pix", g) for g in guidances]
    acc: dict[tuple[str, str, float | None], list[tuple[float, float, float | None]]] = {}
    for folder in folders:
        for name, hr, lr in degraded_pairs(folder, scale, max_images):
            grid = resize(lr, tuple(hr.shape[-2:]), "bicubic")
            for method, g in methods:
                if g is None:
                    out = grid
                else:
                    out = restore_grid(grid.to(model.device), model, guidance=g, ensemble=ensemble).float().cpu().clamp(0, 1)
                row = (float(psnr_y(out, hr, crop_border=scale)), float(ssim_y(out, hr, crop_border=scale)),
                       float(niqe(out)) if use_niqe else None)
                acc.setdefault((folder.name if folder.name != "HR" else folder.parent.name, method, g), []).append(row)
            if progress:
                progress(name)
    rows = []
    groups = sorted({k[0] for k in acc}) + ["all"]
    for ds in groups:
        for method, g in methods:
            vals = [v for k, vs in acc.items() if (ds == "all" or k[0] == ds) and k[1:] == (method, g) for v in vs]
            if not vals:
                continue
            n = len(vals)
            nq = [v[2] for v in vals if v[2] is not None]
            rows.append(EvalRow(ds, method, g, n, sum(v[0] for v in vals) / n, sum(v[1] for v in vals) / n,
                                sum(nq) / len(nq) if nq else None, 1 if g is None else ensemble))
    return rows


def format_table(rows: list[EvalRow]) -> str:
    lines = ["| dataset | method | guidance | images | PSNR-Y | SSIM-Y | NIQE |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        method = r.method if r.ensemble == 1 else f"{r.method} (x{r.ensemble} ens.)"
        lines.append(f"| {r.dataset} | {method} | {'' if r.guidance is None else f'{r.guidance:g}'} | {r.images} | "
                     f"{r.psnr_y:.3f} | {r.ssim_y:.4f} | {'n/a' if r.niqe is None else f'{r.niqe:.3f}'} |")
    return "\n".join(lines)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model file or built-in name (default: gendr-pix-s)")
    p.add_argument("--data", nargs="+", required=True, help="folders of HR images (e.g. ../shared/data/val/Set5/HR)")
    p.add_argument("--scale", type=int, default=4, help="degradation/upscale factor (default 4)")
    p.add_argument("--guidance", default="1.0", help="comma-separated PadCFG scales, e.g. 1,1.4,1.8,2.2")
    p.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLE_SIZES,
                   help="restore with the flip/transpose self-ensemble of 2, 4 or 8 passes (default 1 = off)")
    p.add_argument("--no-niqe", action="store_true", help="skip NIQE")
    p.add_argument("--max-images", type=int, default=None, help="first N images per folder")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="write rows as JSON here")


def run_eval_command(args: argparse.Namespace) -> int:
    from .checkpoint import load_model

    try:
        guidances = tuple(float(g) for g in args.guidance.split(","))
    except ValueError:
        raise ValueError(f"--guidance must be comma-separated numbers, got {args.guidance!r}") from None
    from tqdm.auto import tqdm

    model = load_model(args.model, device=args.device)
    folders = [Path(d) for d in args.data]
    for f in folders:
        if not f.is_dir():
            raise FileNotFoundError(f"--data folder not found: {f}")
    total = sum(len(hr_files(f, args.max_images)) for f in folders)
    with tqdm(total=total, unit="img", desc="eval") as bar:
        rows = evaluate(model, folders, args.scale, guidances, not args.no_niqe, args.max_images,
                        progress=lambda name: (bar.set_postfix_str(name), bar.update()), ensemble=args.ensemble)
    table = format_table(rows)
    import sys

    sys.stdout.write(table + "\n")
    if args.out:
        out = Path(args.out)
        payload = json.dumps({"model": getattr(model, "source_path", None), "scale": args.scale,
                              "rows": [asdict(r) for r in rows]}, indent=2)
        atomic_write(out, lambda tmp: Path(tmp).write_text(payload))
    return 0
