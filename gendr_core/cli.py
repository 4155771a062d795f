"""``gendr-pix``: command-line front end (upscale | inspect | bench | convert | eval).

Errors from bad input print one line and exit with status 2; outputs are written
atomically and never overwrite an existing file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .checkpoint import CONFIG_KEY, DEFAULT_MODEL, FIXMOD_CONFIG_KEY, SHIPPED_MODELS
from .errors import GenDRPixError
from .ops.guidance import ENSEMBLE_SIZES
from .pipeline import FIXMOD_MODES

logger = logging.getLogger("gendr_pix")

EXIT_USAGE = 2


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    from .imageio import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in folder {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return files


def _plan_outputs(files: list[Path], out: str | None, scale: float, fmt: str) -> list[Path]:
    from .imageio import IMAGE_SUFFIXES

    tag = f"x{scale:g}"
    if out and Path(out).suffix.lower() in IMAGE_SUFFIXES and not Path(out).is_dir():
        if len(files) != 1:
            raise GenDRPixError(f"-o {out} is a file name but {len(files)} inputs were given; pass a folder")
        return [Path(out)]
    folder = Path(out) if out else None
    return [(folder or f.parent) / f"{f.stem}_{tag}.{fmt}" for f in files]


def _tile_arg(value: str) -> int | str:
    if value in ("auto", "off"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile must be 'auto', 'off' or a size in pixels, got {value!r}") from None


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .checkpoint import load_model
    from .imageio import load_image, save_image_atomic, tensor_to_pil
    from .pipeline import upscale

    files = _collect_inputs(args.inputs)
    outs = _plan_outputs(files, args.output, args.scale, args.format)
    if not args.overwrite:
        exist = [o for o in outs if o.exists()]
        if exist:
            raise GenDRPixError(f"output exists: {exist[0]}" + (f" (and {len(exist) - 1} more)" if len(exist) > 1 else "")
                                + "; pass --overwrite to replace it")
    if len(set(outs)) != len(outs):
        raise GenDRPixError("two inputs map to the same output name; use separate output folders")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    from .pipeline import resolve_post_fix

    fix, strength = resolve_post_fix(model, args.fixmod, args.color_fix)  # bad choices fail before any image
    logger.info("model %s (%s) on %s; post-fix %s%s", getattr(model, "source_path", args.model), model.kind,
                model.device, fix, f" at strength {strength:g}" if fix != "off" else "")
    bar = tqdm(total=len(files), unit="img", desc="upscale", disable=args.quiet)
    for src, dst in zip(files, outs, strict=True):
        x, alpha, info = load_image(src)
        tiles = tqdm(total=0, unit="pass", leave=False, disable=args.quiet, desc=src.name)

        def progress(done: int, total: int, _t=tiles) -> None:
            _t.total = total
            _t.n = done
            _t.refresh()

        y = upscale(x, model, scale=args.scale, guidance=args.guidance, fixmod=args.fixmod, color_fix=args.color_fix,
                    tile=args.tile, overlap=args.overlap, branch_mode=args.branch_mode, randpad=args.randpad,
                    ensemble=args.ensemble, seed=args.seed, progress=progress)
        tiles.close()
        if alpha is not None:
            from .ops.resize import resize

            alpha = resize(alpha, tuple(y.shape[-2:]), "bicubic")
        save_image_atomic(tensor_to_pil(y, alpha, info), dst)
        bar.update(1)
        if not args.quiet:
            bar.write(f"{src} -> {dst} ({y.shape[-1]}x{y.shape[-2]})")
    bar.close()
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoint import describe, load_model

    model = load_model(args.model, device="cpu", dtype="fp32")
    info = describe(model)
    info["file"] = getattr(model, "source_path", None)
    info["metadata"] = {k: v for k, v in getattr(model, "metadata", {}).items()
                        if k not in (CONFIG_KEY, FIXMOD_CONFIG_KEY)}
    if args.json:
        _out(json.dumps(info, indent=2))
    else:
        _out(f"file:        {info['file']}")
        _out(f"kind:        {info['kind']}")
        _out(f"parameters:  {info['parameters']:,} (UNet {info['unet_parameters']:,})")
        _out(f"pad multiple {info['pad_multiple']}; embeddings {info['prompt_embeddings']}")
        _out("config:      " + json.dumps(info["config"]))
        fm = info["fixmod"]
        _out("fixmod:      " + ("none (the wavelet color fix needs no weights)" if fm is None else
                                f"learned, {fm['parameters']:,} parameters, config {json.dumps(fm['config'])}"))
        for k, v in info["metadata"].items():
            _out(f"meta {k}: {v}")
    return 0


def _optional_command(module: str, add: str, run: str) -> tuple[Callable | None, Callable | None]:
    import importlib

    try:
        mod = importlib.import_module(f".{module}", __package__)
    except ImportError as exc:  # pragma: no cover - only when an optional module is absent
        logger.debug("%s unavailable: %s", module, exc)
        return None, None
    return getattr(mod, add, None), getattr(mod, run, None)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gendr-pix", description="One-step pixel-space restoration and upscaling.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="restore and upscale image files or folders")
    up.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    up.add_argument("-o", "--output", help="output file (one input) or folder; default: beside each input")
    up.add_argument("--model", default=None,
                    help=f"model file or shipped name ({', '.join(SHIPPED_MODELS)}; default {DEFAULT_MODEL})")
    up.add_argument("--scale", type=float, default=4.0, help="output/input size ratio, any value > 0 (default 4)")
    up.add_argument("--guidance", type=float, default=None,
                    help="PadCFG scale w; 1.0 = one pass, no CFG (default: the model's own default)")
    up.add_argument("--tile", type=_tile_arg, default="auto", help="'auto' (default), 'off', or tile size in px")
    up.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (default 64)")
    up.add_argument("--branch-mode", choices=("batched", "sequential"), default="batched",
                    help="run the two PadCFG branches in one batch (faster) or one after the other (less memory)")
    up.add_argument("--randpad", type=int, default=0, help="RandPad self-ensemble passes (Eq. 6); 0 = off")
    up.add_argument("--seed", type=int, default=0, help="seed for --randpad offsets")
    up.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLE_SIZES,
                    help="flip/transpose self-ensemble: average 1 (off), 2, 4 or 8 passes (n x the time)")
    up.add_argument("--fixmod", choices=FIXMOD_MODES, default="auto",
                    help="post-fix after stitching (GenDR-Pix A.1): 'learned' = the model file's FixMod network "
                         "then its wavelet color fix; 'wavelet' = the wavelet color fix alone; 'off'; 'auto' "
                         "(default) = learned when the file has a FixMod, otherwise off unless --color-fix is given")
    up.add_argument("--color-fix", type=float, default=None, metavar="0..1",
                    help="strength of the post-fix, 0 = unchanged .. 1 = full (default 1 when a fix runs; with "
                         "'auto' on a file without FixMod, a value > 0 runs the wavelet fix at that strength)")
    up.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    up.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"), help="compute dtype")
    up.add_argument("--format", default="png", choices=("png", "jpg", "webp"), help="output format for folders")
    up.add_argument("--overwrite", action="store_true", help="replace existing output files")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    up.set_defaults(func=cmd_upscale)

    ins = sub.add_parser("inspect", help="show a model file's kind, config, parameters, embeddings and FixMod")
    ins.add_argument("model", nargs="?", default=None,
                     help=f"model file or shipped name ({', '.join(SHIPPED_MODELS)}; default {DEFAULT_MODEL})")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)

    for name, module, helptext in (("bench", "bench", "time and peak memory per output size (+ GenDR comparison)"),
                                   ("convert", "formats", "convert SD2.1 / diffusers / VGG16 / ncnn Real-ESRGAN weights to .safetensors"),
                                   ("eval", "evaluate", "PSNR/SSIM/NIQE on a folder of HR images vs bicubic")):
        add, run = _optional_command(module, f"add_{name}_arguments", f"run_{name}_command")
        if add is None or run is None:
            continue
        p = sub.add_parser(name, help=helptext)
        add(p)
        p.set_defaults(func=run)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (GenDRPixError, FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"gendr-pix: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("gendr-pix: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
