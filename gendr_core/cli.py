"""``gendr-pix``: command-line front end (upscale | inspect | bench | convert | eval).

Errors from bad input print one line and exit with status 2; outputs are written
atomically (temporary file + rename) and never overwrite an existing file without ``--overwrite``
(``--skip-existing`` keeps them and does the rest).

``upscale`` under ``torchrun --nproc_per_node N`` / ``accelerate launch`` (RANK, WORLD_SIZE,
LOCAL_RANK in the environment): every process loads the model on its own device and upscales
every N-th file of the sorted input list (:func:`share_of_files`); each output depends only on its
input and the flags, so the files are those of a one-process run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .checkpoint import CONFIG_KEY, DEFAULT_MODEL, FIXMOD_CONFIG_KEY, SHIPPED_MODELS, check_device
from .errors import GenDRPixError
from .ops.guidance import ENSEMBLE_SIZES
from .validation import parse_pad_text
from .pipeline import FIXMOD_MODES, TILING

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


FLAG_NAMES = {"guidance": "--guidance", "branch_mode": "--branch-mode", "randpad": "--passes",
              "ensemble": "--flips", "seed": "--seed", "overlap": "--tile-overlap", "tile": "--tile-size",
              "pos_pad": "--positive-pad", "neg_pad": "--negative-pad"}
DEPRECATED_FLAGS = {"tile": "--tiling/--tile-size", "overlap": "--tile-overlap", "randpad": "--passes",
                    "ensemble": "--flips"}


def restore_options(args: argparse.Namespace) -> dict:
    """The upscale() keywords of the parsed flags; the deprecated flags map onto the new ones."""
    for old, new in DEPRECATED_FLAGS.items():
        if getattr(args, old) is not None:
            sys.stderr.write(f"gendr-pix: warning: --{old} is deprecated; use {new}\n")
    tiling, tile_size = args.tiling, args.tile_size
    if args.tile is not None:
        if tiling is not None or tile_size is not None:
            raise GenDRPixError("give --tiling/--tile-size or the deprecated --tile, not both")
        tiling, tile_size = (args.tile, None) if args.tile in ("auto", "off") else ("fixed", args.tile)
    if tile_size is not None and tiling is None:
        tiling = "fixed"  # --tile-size alone means tiles of that size
    pick = {}
    for new, old, default in (("tile_overlap", "overlap", 64), ("passes", "randpad", 0), ("flips", "ensemble", 1)):
        a, b = getattr(args, new), getattr(args, old)
        if a is not None and b is not None:
            raise GenDRPixError(f"give --{new.replace('_', '-')} or the deprecated --{old}, not both")
        pick[new] = a if a is not None else b if b is not None else default
    return {"tiling": tiling or "auto", "tile_size": 512 if tile_size is None else tile_size,
            "positive_pad": parse_pad_text(args.positive_pad, "--positive-pad"),
            "negative_pad": parse_pad_text(args.negative_pad, "--negative-pad"),
            "branch_mode": args.branch_mode, "seed": args.seed, **pick}


def load_embedding(path: str, flag: str):
    """A prompt embedding (1, tokens, dim) from a .safetensors file (its one tensor, or 'embedding')."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: file not found")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise GenDRPixError(f"{flag} {path}: not a readable .safetensors file ({exc})") from None
    if "embedding" in tensors:
        emb = tensors["embedding"]
    elif len(tensors) == 1:
        emb = next(iter(tensors.values()))
    else:
        raise GenDRPixError(f"{flag} {path}: {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); "
                            "name the embedding 'embedding'")
    if emb.ndim == 2:
        emb = emb[None]
    if emb.ndim != 3 or emb.shape[0] != 1:
        raise GenDRPixError(f"{flag} {path}: the embedding has shape {tuple(emb.shape)}; expected (tokens, dim) "
                            "or (1, tokens, dim)")
    return emb.float()


def launch_share(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process under ``torchrun`` / ``accelerate launch``,
    which set RANK, WORLD_SIZE and LOCAL_RANK for every process; (0, 1, 0) when run alone. No
    process group is needed: each process upscales its own share of the files."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return 0, 1, 0
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "-1"))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise GenDRPixError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, "
                            f"LOCAL_RANK={env.get('LOCAL_RANK')!r} must be integers (set by torchrun / "
                            "accelerate launch)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise GenDRPixError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE "
                            "and LOCAL_RANK >= 0 (as torchrun / accelerate launch set them)")
    return rank, world, local


def process_device(device: str | None, world: int, local_rank: int) -> str | None:
    """One device per process of a multi-process launch: ``--device`` unset or ``cuda`` becomes
    ``cuda:LOCAL_RANK`` when CUDA is available (unset stays the CPU otherwise); an explicit
    ``cuda:N`` or ``cpu`` is kept."""
    import torch

    if world == 1 or device not in (None, "cuda"):
        return device
    if device is None and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank}"


def share_of_files(files: list[Path], outs: list[Path], rank: int, world: int) -> list[tuple[Path, Path]]:
    """This process's (input, output) pairs: every ``world``-th of the full sorted list from ``rank``.
    The split is over the whole list, before finished outputs are skipped, so it never depends on
    what another process has already written."""
    return [pair for k, pair in enumerate(zip(files, outs, strict=True)) if k % world == rank]


def cmd_upscale(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .checkpoint import default_threads, load_model
    from .imageio import load_image, save_image
    from .ops.resize import resize
    from .pipeline import check_upscale_options, resolve_post_fix, upscale
    from .validation import check_float, check_int

    scale = check_float("--scale", args.scale, 0.0, None, low_open=True)
    if args.color_fix is not None:
        check_float("--color-fix", args.color_fix, 0.0, 1.0)
    if args.overwrite and args.skip_existing:
        raise GenDRPixError("give --overwrite (replace existing outputs) or --skip-existing (keep them), not both")
    rank, world, local_rank = launch_share()
    device = process_device(args.device, world, local_rank)
    if device is not None:
        check_device(device, "--device")
    files = _collect_inputs(args.inputs)
    outs = _plan_outputs(files, args.output, scale, args.format)
    if len(set(outs)) != len(outs):
        raise GenDRPixError("two inputs map to the same output name; use separate output folders")
    mine = share_of_files(files, outs, rank, world)
    exist = [o for _, o in mine if o.exists()]
    if exist and not (args.overwrite or args.skip_existing):
        raise GenDRPixError(f"output exists: {exist[0]}" + (f" (and {len(exist) - 1} more)" if len(exist) > 1 else "")
                            + "; pass --overwrite to replace it, or --skip-existing to keep it and do the rest")
    todo = mine if args.overwrite else [(f, o) for f, o in mine if not o.exists()]
    who = f"process {rank}/{world}: " if world > 1 else ""
    if world > 1 or len(todo) < len(mine):
        logger.info("%s%d file(s) to do, %d kept (outputs exist), of %d in this share (%d in all)%s", who,
                    len(todo), len(mine) - len(todo), len(mine), len(files), f"; device {device}" if world > 1 else "")
    if not todo:
        return 0
    restore = restore_options(args)
    # processes launched on one machine (torchrun / accelerate) share its cores
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    threads = max(1, default_threads() // local) if args.threads is None else check_int("--threads", args.threads, 1, 4096)
    torch.set_num_threads(threads)
    model = load_model(args.model, device=device, dtype=args.dtype)
    guidance = model.config.default_guidance if args.guidance is None else args.guidance
    check_upscale_options(model, guidance, names=FLAG_NAMES, **restore)  # bad values fail before any image
    given = {f: load_embedding(getattr(args, f), f"--{f}") for f in ("positive", "negative") if getattr(args, f)}
    if given:  # checked against the model's width before any image
        pos, neg = model.resolve_embeddings(given.get("positive"), given.get("negative"))
        restore |= {k: v for k, v in (("positive", pos), ("negative", neg)) if k in given}
    fix, strength = resolve_post_fix(model, args.fixmod, args.color_fix)
    logger.info("model %s (%s) on %s; post-fix %s%s", getattr(model, "source_path", args.model), model.kind,
                model.device, fix, f" at strength {strength:g}" if fix != "off" else "")
    quiet_bars = args.quiet or rank != 0  # progress bars on the first process only
    bar = tqdm(total=len(todo), unit="img", desc="upscale", disable=quiet_bars)
    for src, dst in todo:
        x, alpha, info = load_image(src)
        tiles = tqdm(total=0, unit="pass", leave=False, disable=quiet_bars, desc=src.name)

        def progress(done: int, total: int, _t=tiles) -> None:
            _t.total = total
            _t.n = done
            _t.refresh()

        try:  # output_copies: the HWC float and integer arrays save_image makes
            y = upscale(x, model, scale=scale, guidance=guidance, fixmod=args.fixmod, color_fix=args.color_fix,
                        progress=progress, output_copies=2, **restore)
        except GenDRPixError as exc:
            raise type(exc)(f"{src}: {exc}") from None
        finally:
            tiles.close()
        if alpha is not None:
            alpha = resize(alpha, tuple(y.shape[-2:]), "bicubic")
        save_image(dst, y, alpha, info)
        bar.update(1)
        if not args.quiet:
            bar.write(f"{who}{src} -> {dst} ({y.shape[-1]}x{y.shape[-2]}{', 16-bit' if info.sixteen_bit else ''})")
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
    up.add_argument("--tiling", choices=TILING, default=None,
                    help="'auto' (default): the whole image when the memory estimate fits (on a CPU, 768-px tiles "
                         "for outputs over 1536 px, which run faster there), else the largest tile that does; "
                         "'off': never tile; 'fixed': tiles of --tile-size")
    up.add_argument("--tile-size", type=int, default=None, metavar="N",
                    help="tile side in output pixels for --tiling fixed (default 512; rounded down to the model's "
                         "pad multiple, see 'gendr-pix inspect')")
    up.add_argument("--tile-overlap", type=int, default=None, metavar="N",
                    help="overlap between tiles in output pixels, smaller than the tile (default 64)")
    up.add_argument("--positive-pad", default="auto", metavar="L,R,T,B",
                    help="PadCFG pad of the positive branch in pixels, or 'auto' (the model's own, e.g. 4,4,4,4)")
    up.add_argument("--negative-pad", default="auto", metavar="L,R,T,B",
                    help="PadCFG pad of the negative branch, or 'auto' (the model's own, e.g. 3,5,3,5)")
    up.add_argument("--positive", default=None, metavar="FILE",
                    help="prompt embedding replacing the model's positive one: a .safetensors file with one tensor "
                         "(or one named 'embedding') of shape (tokens, dim) or (1, tokens, dim)")
    up.add_argument("--negative", default=None, metavar="FILE",
                    help="the same for the negative branch (used when --guidance != 1)")
    up.add_argument("--branch-mode", choices=("batched", "sequential"), default="batched",
                    help="run the two PadCFG branches in one batch (faster) or one after the other (less memory)")
    up.add_argument("--passes", type=int, default=None, metavar="N",
                    help="RandPad ensemble: average N runs with random pad offsets (Eq. 6; needs --guidance 1); "
                         "0 = off (default)")
    up.add_argument("--seed", type=int, default=0, help="seed of the RandPad offsets")
    up.add_argument("--flips", type=int, default=None, choices=ENSEMBLE_SIZES,
                    help="flip/transpose self-ensemble: average 1 (off, default), 2, 4 or 8 runs (n x the time)")
    # the names before the shared vocabulary: still accepted, with a warning
    up.add_argument("--tile", type=_tile_arg, default=None, help="deprecated: use --tiling and --tile-size")
    up.add_argument("--overlap", type=int, default=None, help="deprecated: use --tile-overlap")
    up.add_argument("--randpad", type=int, default=None, help="deprecated: use --passes")
    up.add_argument("--ensemble", type=int, default=None, choices=ENSEMBLE_SIZES, help="deprecated: use --flips")
    up.add_argument("--fixmod", choices=FIXMOD_MODES, default="auto",
                    help="post-fix after stitching (GenDR-Pix A.1): 'learned' = the model file's FixMod network "
                         "then its wavelet color fix; 'wavelet' = the wavelet color fix alone; 'off'; 'auto' "
                         "(default) = learned when the file has a FixMod, otherwise off unless --color-fix is given")
    up.add_argument("--color-fix", type=float, default=None, metavar="0..1",
                    help="strength of the post-fix, 0 = unchanged .. 1 = full (default 1 when a fix runs; with "
                         "'auto' on a file without FixMod, a value > 0 runs the wavelet fix at that strength)")
    up.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    up.add_argument("--threads", type=int, default=None, metavar="N",
                    help="CPU threads (default: the physical cores this process may use, shared out among the "
                         "processes of a torchrun/accelerate launch on one machine)")
    up.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                    help="compute dtype; 'auto' (default): bf16 on GPUs that support it (else fp16), bf16 on CPUs "
                         "with native bf16 (AVX512-BF16/AMX; ~2x faster, same output to 0.01 dB), else fp32")
    up.add_argument("--format", default="png", choices=("png", "jpg", "webp"), help="output format for folders")
    up.add_argument("--overwrite", action="store_true", help="replace existing output files")
    up.add_argument("--skip-existing", action="store_true",
                    help="keep existing output files and upscale only the inputs without one (resume a folder)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    up.set_defaults(func=cmd_upscale)

    ins = sub.add_parser("inspect", help="show a model file's kind, config, parameters, embeddings and FixMod")
    ins.add_argument("model", nargs="?", default=None,
                     help=f"model file or shipped name ({', '.join(SHIPPED_MODELS)}; default {DEFAULT_MODEL})")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)

    for name, module, helptext in (("bench", "bench", "time and peak memory per output size (+ GenDR comparison)"),
                                   ("convert", "formats", "convert SD2.1 / diffusers / VGG16 / ncnn Real-ESRGAN weights to .safetensors"),
                                   ("eval", "evaluate", "score models on HR folders: PSNR/SSIM-Y, NIQE, grid artifacts vs bicubic and --compare models")):
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
