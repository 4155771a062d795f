"""``upscale``: the one inference entry point of gendr_core.

Data flow (STYLE.md): LR -> bicubic resize to the output grid -> [tiles] -> PadCFG or the
RandPad ensemble (each branch: pad -> pad to multiple -> model -> crop) -> stitch ->
optional FixMod post-fix against the resized input (:func:`post_fix`: the learned FixMod of
GenDR-Pix Sec. A.1 or the wavelet color fix alone) -> clamp to [0, 1].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from .errors import ConfigError, ImageInputError
from .imageio import pil_to_tensor, tensor_to_pil
from .models.restorer import OneStepRestorer
from .ops.color_fix import wavelet_color_fix
from .ops.guidance import ENSEMBLE_SIZES, dihedral_ensemble, pad_cfg, rand_pad_ensemble
from .ops.padding import Pad, check_image_tensor
from .ops.resize import output_size, resize
from .ops.tiling import tile_count, tiled_apply

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MIN_TILE = 128
FIXMOD_MODES = ("auto", "off", "wavelet", "learned")


@dataclass(frozen=True)
class TilePlan:
    """Tile size (0 = whole image) and the memory estimate behind it."""

    tile: int
    overlap: int
    estimated_bytes: int
    budget_bytes: int


def available_memory(device: torch.device) -> int:
    """Bytes we may use for activations: free CUDA memory, or 70 % of MemAvailable on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * 0.7)
    except OSError:
        pass
    return 8 << 30


def plan_tiles(
    model: OneStepRestorer, h: int, w: int, batch: int, passes: int, overlap: int, budget: int | None = None
) -> TilePlan:
    """Whole image if the estimate fits ``budget``, else the largest aligned tile that does."""
    m = model.pad_multiple
    budget = available_memory(model.device) if budget is None else budget

    def need(th: int, tw: int) -> int:
        ph, pw = -(-(th + 8) // m) * m, -(-(tw + 8) // m) * m
        return model.estimate_bytes(ph, pw, batch * passes)

    full = need(h, w)
    if full <= budget:
        return TilePlan(0, overlap, full, budget)
    tile = max(MIN_TILE, -(-max(h, w) // m) * m)
    while tile > MIN_TILE and need(tile, tile) > budget:
        tile = max(MIN_TILE, (tile // 2) // m * m or m)
    return TilePlan(tile, overlap, need(tile, tile), budget)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def restore_grid(
    x: Tensor,
    model: OneStepRestorer,
    *,
    guidance: float = 1.0,
    positive: Tensor | None = None,
    negative: Tensor | None = None,
    pos_pad: tuple[int, int, int, int] | None = None,
    neg_pad: tuple[int, int, int, int] | None = None,
    branch_mode: str = "batched",
    randpad: int = 0,
    ensemble: int = 1,
    seed: int = 0,
    tile: int | str = "auto",
    overlap: int = 64,
    progress: Progress | None = None,
) -> Tensor:
    """Restore ``x`` (B,3,H,W) in [0,1], already on the output grid; returns (B,3,H,W).

    ``tile``: "auto" (whole image when the memory estimate fits, else tiles), 0/"off"
    (never tile) or a tile size in pixels. On out-of-memory the tile is halved and the
    image retried, down to 128 px. ``progress(done, total)`` is called after every branch
    (sequential PadCFG) or ensemble pass of every tile, so a caller can interrupt per tile.
    ``ensemble`` (1, 2, 4 or 8): average over that many flips/transposes of each tile
    (:func:`~gendr_core.ops.guidance.dihedral_ensemble`); n times the compute, same memory.
    """
    if branch_mode not in ("batched", "sequential"):
        raise ValueError(f"branch_mode={branch_mode!r} must be 'batched' or 'sequential'")
    if randpad and guidance != 1.0:
        raise ValueError(f"randpad={randpad} (Eq. 6 self-ensemble) needs guidance=1.0, got {guidance}")
    cfg = model.config
    cond_pos, cond_neg = model.resolve_embeddings(positive, negative)
    pos_pad = Pad(*(pos_pad or cfg.pos_pad))
    neg_pad = Pad(*(neg_pad or cfg.neg_pad))
    m = model.pad_multiple
    x = x.to(model.device)
    gen = torch.Generator("cpu").manual_seed(seed)
    tiles = {"done": 0, "total": 1}  # set before tiling so each branch/pass can report within its tile

    def step(i: int, n: int) -> None:  # branch or ensemble pass i of n, in the current tile
        if progress:
            progress(tiles["done"] * n + i, tiles["total"] * n)

    def tile_done(done: int, total: int) -> None:
        tiles["done"] = done

    if ensemble not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble={ensemble} must be one of {ENSEMBLE_SIZES}")

    def once(t: Tensor, report: Progress | None) -> Tensor:
        if randpad:
            return rand_pad_ensemble(model.predict, t, cond_pos, randpad, multiple=m, generator=gen,
                                     progress=report)
        return pad_cfg(model.predict, t, cond_pos, cond_neg, guidance, multiple=m, pos_pad=pos_pad,
                       neg_pad=neg_pad, batched=branch_mode == "batched", progress=report)

    def run(t: Tensor) -> Tensor:
        with torch.no_grad():
            if ensemble > 1:
                return dihedral_ensemble(lambda u: once(u, None), t, ensemble, progress=step)
            return once(t, step)

    b, _, h, w = x.shape
    if tile == "auto":
        plan = plan_tiles(model, h, w, b, 2 if guidance != 1.0 and branch_mode == "batched" else 1, overlap)
        size = plan.tile
        logger.info("memory estimate %.2f GB of %.2f GB budget -> %s", plan.estimated_bytes / 1e9,
                    plan.budget_bytes / 1e9, f"tile {size}" if size else "whole image")
    elif tile in ("off", 0, None):
        size = 0
    else:
        size = int(tile)
        if size < m:
            raise ValueError(f"tile={size} must be 0 (off), 'auto', or >= the model's pad multiple {m}")
    while True:
        try:
            tiles["done"] = 0
            if not size or size >= max(h, w):
                tiles["total"] = 1
                return run(x)
            tiles["total"] = tile_count(h, w, size, overlap, m)
            return tiled_apply(run, x, size, overlap, align=m, progress=tile_done)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_oom(exc) or tile == "off" or tile == 0:
                raise
            current = size or max(h, w)
            new = (current // 2) // m * m
            if new < MIN_TILE:
                raise
            logger.warning("out of memory at tile %s; retrying with tile %d", size or "full", new)
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            size = new


def upscale(
    image: Image.Image | Tensor,
    model: OneStepRestorer | str | os.PathLike | None = None,
    scale: float = 4.0,
    guidance: float | None = None,
    *,
    fixmod: str | None = None,
    color_fix: float | None = None,
    progress: Progress | None = None,
    **kwargs,
) -> Image.Image | Tensor:
    """Restore and upscale ``image`` by ``scale`` (any float > 0) with one model step.

    ``image``: a PIL image (RGB, RGBA, grayscale, 16-bit) or a float tensor (B,3,H,W) in
    [0,1]; the result is of the same kind. ``model``: a loaded model, a path or shipped name, or
    None for the default shipped model (``checkpoint.DEFAULT_MODEL``). ``guidance``: PadCFG scale w (1.0 = one pass, no CFG; default:
    the model's ``default_guidance``). ``fixmod`` ("auto" = None, "off", "wavelet", "learned")
    and ``color_fix`` (its strength in [0, 1]) choose the post-fix, applied once after
    stitching; see :func:`post_fix` (default: the learned FixMod when the model file has one,
    otherwise nothing, as before). Other keywords go to :func:`restore_grid`.
    """
    if not isinstance(model, OneStepRestorer):
        from .checkpoint import load_model

        model = load_model(model)
    guidance = model.config.default_guidance if guidance is None else float(guidance)
    if isinstance(image, Image.Image):
        x, alpha, info = pil_to_tensor(image)
        y = _upscale_tensor(x, model, scale, guidance, (fixmod, color_fix), progress, kwargs)
        if alpha is not None:
            alpha = resize(alpha, tuple(y.shape[-2:]), "bicubic")
        return tensor_to_pil(y, alpha, info)
    if isinstance(image, Tensor):
        if image.ndim == 3:
            raise ImageInputError(f"image tensor must be (B,3,H,W), got {tuple(image.shape)}; add a batch dim")
        return _upscale_tensor(image, model, scale, guidance, (fixmod, color_fix), progress, kwargs)
    raise ImageInputError(f"image must be a PIL.Image or a torch.Tensor, got {type(image).__name__}")


def _upscale_tensor(x, model, scale, guidance, fix, progress, kwargs) -> Tensor:
    mode, strength = resolve_post_fix(model, *fix)  # bad choices fail before the long run
    check_image_tensor(x)
    if x.shape[1] != 3:
        raise ImageInputError(f"image tensor must have 3 channels (B,3,H,W), got shape {tuple(x.shape)}")
    out_device = x.device
    x = x.float().clamp(0, 1)
    size = output_size(x.shape[-2], x.shape[-1], scale)
    grid = resize(x.to(model.device), size, "bicubic")  # (B,3,h,w) -> (B,3,H,W)
    y = restore_grid(grid, model, guidance=guidance, progress=progress, **kwargs).float()
    y = post_fix(y, grid, model, mode, strength)
    return y.clamp(0, 1).to(out_device)


def resolve_post_fix(model: OneStepRestorer | None, fixmod: str | None = None,
                     strength: float | None = None) -> tuple[str, float]:
    """(mode, strength) that :func:`post_fix` runs: mode "off", "wavelet" or "learned".

    * ``fixmod`` None or "auto": "learned" when ``model`` has a learned FixMod, else "wavelet";
      "off", "wavelet", "learned" as named ("learned" needs a model file with a FixMod).
    * ``strength`` (the ``color_fix`` of :func:`upscale`) blends from the restored image (0) to
      the fixed one (1). None = 1, except for "auto" on a model without FixMod, where it is 0:
      ``upscale()`` defaults therefore leave outputs of files without FixMod as they always were
      and run the learned FixMod of files that have one. Strength 0 gives "off".
    """
    mode = "auto" if fixmod is None else fixmod
    if mode not in FIXMOD_MODES:
        raise ValueError(f"fixmod={fixmod!r} must be one of {', '.join(FIXMOD_MODES)}")
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise ValueError(f"color_fix={strength} (the FixMod strength) must be in [0, 1]")
    has_net = getattr(model, "fixmod", None) is not None
    if mode == "off":
        if strength:
            raise ValueError(f"color_fix={strength} has no effect with fixmod='off'; drop it or pick a FixMod mode")
        return "off", 0.0
    if mode == "learned" and not has_net:
        if model is None:
            raise ConfigError("fixmod='learned' needs the model whose file holds the learned FixMod; none was given")
        where = getattr(model, "source_path", None) or f"this {model.kind} model"
        raise ConfigError(f"fixmod='learned': {where} has no learned FixMod (no 'gendr_pix.fixmod_config' in "
                          "the file); train one with trainers/train_fixmod.py, or use fixmod='wavelet'")
    if mode == "auto":
        mode = "learned" if has_net else "wavelet"
        if strength is None:
            strength = 1.0 if has_net else 0.0
    strength = 1.0 if strength is None else float(strength)
    return (mode, strength) if strength > 0 else ("off", 0.0)


def post_fix(y: Tensor, reference: Tensor, model: OneStepRestorer | None = None, fixmod: str | None = None,
             strength: float | None = None) -> Tensor:
    """FixMod post-fix (GenDR-Pix Sec. A.1) of a restored image against the LQ on its grid.

    ``y`` and ``reference`` are (B,3,H,W) (``reference``: the bicubic-resized input); the result
    is float32 on ``y``'s device, unclamped: ``y + strength * (fixed - y)`` with ``fixed`` the
    model's learned FixMod (wavelet_color_fix(y + r(y, ref), ref)) or the wavelet color fix
    high(y) + low(ref). ``fixmod``/``strength``: see :func:`resolve_post_fix`. A pure function of
    its inputs, applied once to the whole stitched image.
    """
    mode, strength = resolve_post_fix(model, fixmod, strength)
    y = y.float()
    if mode == "off":
        return y
    ref = reference.to(y.device).float()
    if mode == "wavelet":
        return wavelet_color_fix(y, ref, strength)
    net = model.fixmod  # type: ignore[union-attr]
    with torch.no_grad():
        fixed = net(y, ref).to(y.device)
    return fixed if strength == 1.0 else y + strength * (fixed - y)
