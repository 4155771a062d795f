"""Figures for the README and the model card.

``python -m trainers.figures before-after --lq gendr_core/assets/sample_kodim23_lq.png
--hr ../shared/data/val/Kodak24/HR/kodim23.png -o gendr_core/assets/readme_before_after.png``
writes side-by-side crops (bicubic | model | ground truth when ``--hr`` is given) of an
x``scale`` restoration; ``sample`` makes the bundled low-quality sample from an HR image with
the fixed evaluation degradation; ``curves`` copies a run's ``curves.png`` after re-plotting it;
``icon`` makes the registry icon (``[tool.comfy] Icon``): a square crop of the sample, the LQ
(nearest) above the diagonal and the default model's x4 restoration below it,
``python -m trainers.figures icon --lq gendr_core/assets/sample_kodim23_lq.png -o gendr_core/assets/icon.png``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from gendr_core.checkpoint import DEFAULT_MODEL, load_model
from gendr_core.imageio import load_image, save_image_atomic, tensor_to_pil
from gendr_core.ops.padding import crop_to_multiple
from gendr_core.ops.resize import resize
from gendr_core.pipeline import upscale

from .loop import JsonlLog, plot_curves

logger = logging.getLogger("trainers.figures")


def side_by_side(panels: list[tuple[str, Image.Image]], zoom: int = 2, label_h: int = 20, gap: int = 6) -> Image.Image:
    """Panels of equal size, each enlarged ``zoom`` times (nearest) under its label."""
    w, h = panels[0][1].size
    canvas = Image.new("RGB", (len(panels) * (w * zoom + gap) - gap, h * zoom + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        if img.size != (w, h):
            raise ValueError(f"panel {label!r} is {img.size}, expected {(w, h)}")
        x = i * (w * zoom + gap)
        canvas.paste(img.resize((w * zoom, h * zoom), Image.NEAREST), (x, label_h))
        draw.text((x + 4, 4), label, fill="black")
    return canvas


def before_after(lq: Path, out: Path, model_name: str | None, scale: int, box: tuple[int, int, int, int],
                 hr: Path | None = None, zoom: int = 2) -> Path:
    model = load_model(model_name, dtype="fp32")
    x, _, _ = load_image(lq)
    size = (x.shape[-2] * scale, x.shape[-1] * scale)
    with torch.no_grad():
        restored = upscale(x, model, scale=scale).clamp(0, 1)
    panels = [(f"bicubic x{scale}", tensor_to_pil(resize(x, size, "bicubic").clamp(0, 1))),
              (f"{Path(getattr(model, 'source_path', None) or 'model').stem} x{scale}", tensor_to_pil(restored))]
    if hr is not None:
        h, _, _ = load_image(hr)
        panels.append(("ground truth", tensor_to_pil(h[..., : size[0], : size[1]])))
    fig = side_by_side([(label, img.crop(box)) for label, img in panels], zoom=zoom)
    return save_image_atomic(fig, out, optimize=True)


def icon(lq: Path, out: Path, model_name: str | None = None, scale: int = 4, side: int = 256,
         center: tuple[float, float] = (0.5, 0.5)) -> Path:
    """A ``side``-px square: the LQ crop (nearest, x``scale``) above the anti-diagonal, the model's
    restoration of the same crop below it; ``center`` = the crop centre as fractions of (x, y)."""
    model = load_model(model_name, dtype="fp32")
    x, _, _ = load_image(lq)
    h, w = x.shape[-2] * scale, x.shape[-1] * scale
    if side > min(h, w):
        raise ValueError(f"icon side {side} is larger than the x{scale} output {w}x{h} of {lq}")
    with torch.no_grad():
        restored = tensor_to_pil(upscale(x, model, scale=scale).clamp(0, 1))
    before = tensor_to_pil(x).resize((w, h), Image.NEAREST)
    left = min(max(0, round(center[0] * w - side / 2)), w - side)
    top = min(max(0, round(center[1] * h - side / 2)), h - side)
    box = (left, top, left + side, top + side)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon([(side, 0), (side, side), (0, side)], fill=255)
    canvas = before.crop(box)
    canvas.paste(restored.crop(box), (0, 0), mask)
    return save_image_atomic(canvas, out, optimize=True)


def make_sample(hr: Path, out: Path, scale: int = 4, seed: int = 0) -> Path:
    """The bundled sample: ``hr`` degraded by the fixed evaluation degradation (see gendr_core.evaluate)."""
    from gendr_core.degradation import degrade_fixed

    x, _, _ = load_image(hr)
    x = crop_to_multiple(x, scale)
    return save_image_atomic(tensor_to_pil(degrade_fixed(x, scale, seed)), out, optimize=True)


def curves(run_dir: Path, out: Path) -> Path:
    plot_curves(JsonlLog(run_dir / "train_log.jsonl"), run_dir / "curves.png")
    shutil.copyfile(run_dir / "curves.png", out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ba = sub.add_parser("before-after", help="bicubic | model | ground-truth crops")
    ba.add_argument("--lq", type=Path, required=True)
    ba.add_argument("--hr", type=Path, default=None)
    ba.add_argument("--model", default=None, help=f"model file or built-in name (default {DEFAULT_MODEL})")
    ba.add_argument("--scale", type=int, default=4)
    ba.add_argument("--box", default="260,120,360,220", help="crop of the output grid: left,top,right,bottom")
    ba.add_argument("--zoom", type=int, default=2)
    ba.add_argument("-o", "--out", type=Path, required=True)
    sp = sub.add_parser("sample", help="degrade an HR image with the fixed evaluation degradation")
    sp.add_argument("hr", type=Path)
    sp.add_argument("--scale", type=int, default=4)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("-o", "--out", type=Path, required=True)
    ic = sub.add_parser("icon", help="the registry icon: LQ | restoration split along the diagonal")
    ic.add_argument("--lq", type=Path, required=True)
    ic.add_argument("--model", default=None, help=f"model file or built-in name (default {DEFAULT_MODEL})")
    ic.add_argument("--side", type=int, default=256)
    ic.add_argument("--center", default="0.5,0.5", help="crop centre as fractions of the width,height")
    ic.add_argument("-o", "--out", type=Path, required=True)
    cv = sub.add_parser("curves", help="re-plot a run's curves and copy them")
    cv.add_argument("run_dir", type=Path)
    cv.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "before-after":
        box = tuple(int(v) for v in args.box.split(","))
        if len(box) != 4:
            ap.error(f"--box={args.box!r}: expected left,top,right,bottom")
        path = before_after(args.lq, args.out, args.model, args.scale, box, args.hr, args.zoom)
    elif args.cmd == "sample":
        path = make_sample(args.hr, args.out, args.scale, args.seed)
    elif args.cmd == "icon":
        cx, cy = (float(v) for v in args.center.split(","))
        path = icon(args.lq, args.out, args.model, side=args.side, center=(cx, cy))
    else:
        path = curves(args.run_dir, args.out)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
