"""``upscale``: the one inference entry point of gendr_core.

Data flow (STYLE.md): LR -> bicubic resize to the output grid -> [tiles] -> PadCFG or the
RandPad ensemble (each branch: pad -> pad to multiple -> model -> crop) -> stitch ->
optional FixMod post-fix against the resized input (:func:`post_fix`: the learned FixMod of
GenDR-Pix Sec. A.1 or the wavelet color fix alone) -> clamp to [0, 1].
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from .budget import available_memory, estimate_job, padded_side, refuse_if_too_big
from .errors import ConfigError, ImageInputError
from .imageio import pil_to_tensor, tensor_to_pil
from .models.restorer import OneStepRestorer
from .ops.color_fix import wavelet_color_fix
from .ops.guidance import ENSEMBLE_SIZES, dihedral_ensemble, pad_cfg, rand_pad_ensemble
from .ops.padding import Pad, check_image_tensor
from .ops.resize import output_size, resize
from .ops.tiling import tile_count, tiled_apply
from .progress import blocks_per_pass, pass_events
from .validation import check_choice, check_float, check_int, check_pad, check_tile

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MIN_TILE = 128
# Output-pixel tile side at which tiles beat the whole image on a CPU, and the image side above which
# tiling="auto" takes them there (bench/cpu_tiling.json; see plan_tiles).
CPU_SPEED_TILE = 768
CPU_SPEED_TILE_ABOVE = 1536
FIXMOD_MODES = ("auto", "off", "wavelet", "learned")


@dataclass(frozen=True)
class TilePlan:
    """Tile size (0 = whole image) and the memory estimate behind it."""

    tile: int
    overlap: int
    estimated_bytes: int
    budget_bytes: int


def plan_tiles(
    model: OneStepRestorer, h: int, w: int, batch: int, passes: int, overlap: int, budget: int | None = None,
    pad: tuple[int, int] = (8, 8), speed_tile: int | None = None,
) -> TilePlan:
    """The tile of ``tiling="auto"``: the whole image if its estimate fits ``budget`` (and speed
    does not favour tiles), else the largest aligned tile that fits.

    ``pad``: the widest branch pad per axis (top+bottom, left+right), added before rounding up to
    the pad multiple. A planned tile is always larger than ``overlap``.

    ``speed_tile`` (None: :data:`CPU_SPEED_TILE` on a CPU, 0 elsewhere; 0 = memory alone): when
    the whole image fits but its longer side exceeds :data:`CPU_SPEED_TILE_ABOVE`, tiles of this
    side are taken instead, because on a CPU they are faster. Measured on a 2-core AMD EPYC (32 MiB
    L3), gendr-pix-s, 512^2 -> 2048^2 (``bench/cpu_2026-12-04/``): fp32 whole image 5.84 s, tiles
    of 512 / 768 / 1024 px 4.24 / 3.31 / 4.10 s; bf16 2.88 s whole, 3.67 / 2.76 / 2.98 s tiled; at
    1024^2 the whole image beats 512-px tiles (1.2 vs 2.0 s fp32, ``bench/cpu_2026-12-03/``).
    Our reading, not proven: the finest level's tensors ((H/4)(W/4) x 32 channels; 32 MiB each in
    fp32 at 2048^2) fall out of the last-level cache, and halving them (bf16) almost closes the
    gap to tiles; the coarsest level's self-attention also grows with the square of the token
    count. Small tiles pay for their overlaps. On a GPU the whole image stays the choice.
    """
    m = model.pad_multiple
    budget = available_memory(model.device) if budget is None else budget
    if speed_tile is None:
        speed_tile = CPU_SPEED_TILE if torch.device(model.device).type == "cpu" else 0

    def need(th: int, tw: int) -> int:
        return model.estimate_bytes(padded_side(th, pad[0], m), padded_side(tw, pad[1], m), batch * passes)

    full = need(h, w)
    if full <= budget:
        fast = max(m, speed_tile // m * m) if speed_tile else 0
        if fast and max(h, w) > max(CPU_SPEED_TILE_ABOVE, fast) and fast > -(-overlap // m) * m:
            return TilePlan(fast, overlap, need(min(h, fast), min(w, fast)), budget)
        return TilePlan(0, overlap, full, budget)
    smallest = max(MIN_TILE, (-(-overlap // m) + 1) * m)  # the aligned overlap plus one cell
    tile = max(smallest, -(-max(h, w) // m) * m)
    while tile > smallest and need(tile, tile) > budget:
        tile = max(smallest, (tile // 2) // m * m or m)
    return TilePlan(tile, overlap, need(tile, tile), budget)


@dataclass(frozen=True)
class SpeedOptions:
    """Inference-only speed switches (issue 18), applied once to a loaded model by :func:`apply_speed_options`.

    None of them changes the architecture or the weights (so they are not in the model config):

    * ``channels_last``: UNet weights in NHWC memory format (convolutions then run NHWC).
    * ``compile``: ``torch.compile`` of the UNet in place (``nn.Module.compile``: the module and
      its state-dict keys stay) with ``compile_mode`` / ``compile_backend``; every new input
      shape compiles again (``dynamic=False``), so the first run at a size is slow.
    * ``ff_chunk``: tokens per feed-forward slice at the two finest levels (0 = off);
      :func:`~gendr_core.models.unet.set_ff_chunking`. Same values up to summation order.
    * ``attention_window``: level-1 self-attention within windows of at most that many tokens
      per side (0 = full attention; 64 = the 512-px training patch);
      :func:`~gendr_core.models.unet.set_window_attention`. Changes outputs on larger grids.
    * ``fused_attention``: on CUDA, allow only the flash / memory-efficient / cuDNN SDPA kernels
      (:func:`attention_kernels`), so an input that would fall back to the O(N^2)-memory math
      kernel raises instead.
    """

    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    ff_chunk: int = 0
    attention_window: int = 0
    fused_attention: bool = False

    def __post_init__(self) -> None:
        if self.ff_chunk < 0:
            raise ConfigError(f"ff_chunk={self.ff_chunk} must be >= 0 (tokens per slice; 0 = off)")
        if self.attention_window < 0:
            raise ConfigError(f"attention_window={self.attention_window} must be >= 0 (0 = full attention)")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def apply_speed_options(model: OneStepRestorer, speed: SpeedOptions) -> dict[str, int | str]:
    """Apply the switches of ``speed`` that are on to ``model.unet``, in place (switches that are off
    leave the model as it is); returns what changed: the feed-forwards chunked, the attention
    modules windowed, and ``memory_format`` when channels_last was set."""
    from .models.unet import set_ff_chunking, set_window_attention

    unet = model.unet
    done: dict[str, int | str] = {
        "ff_chunked": set_ff_chunking(unet, speed.ff_chunk) if speed.ff_chunk else 0,
        "attention_windowed": set_window_attention(unet, speed.attention_window) if speed.attention_window else 0,
    }
    if speed.channels_last:
        unet.to(memory_format=torch.channels_last)
        done["memory_format"] = "channels_last"
    if speed.compile:
        unet.compile(mode=speed.compile_mode, backend=speed.compile_backend, dynamic=False)
    logger.info("speed options %s -> %s", speed, done)
    return done


def attention_kernels(speed: SpeedOptions, device: torch.device):
    """Context for a pass: with ``speed.fused_attention`` on CUDA, SDPA may use only its fused kernels."""
    import contextlib

    if not speed.fused_attention or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


SEED_MAX = 2**64 - 1
GUIDANCE_RANGE = (0.0, 10.0)
RANDPAD_MAX = 64


def check_options(model: OneStepRestorer, *, guidance: float = 1.0, pos_pad=None, neg_pad=None,
                  branch_mode: str = "batched", randpad: int = 0, ensemble: int = 1, seed: int = 0,
                  tile: int | str = "auto", overlap: int = 64, names: dict[str, str] | None = None) -> dict:
    """Validated restore options (:func:`restore_grid`'s), each error naming its option.

    ``names`` maps an option to the name its user sees (a CLI flag, a node input), for the
    messages. Also returns ``passes`` (images per forward pass) and ``pad`` (the widest branch
    pad per axis, top+bottom and left+right) for the memory estimate."""
    n = {k: k for k in ("guidance", "branch_mode", "randpad", "ensemble", "seed", "overlap", "tile", "pos_pad",
                        "neg_pad")} | (names or {})
    guidance = check_float(n["guidance"], guidance, *GUIDANCE_RANGE)
    check_choice(n["branch_mode"], branch_mode, ("batched", "sequential"))
    randpad = check_int(n["randpad"], randpad, 0, RANDPAD_MAX)
    ensemble = check_int(n["ensemble"], ensemble)
    check_choice(n["ensemble"], ensemble, ENSEMBLE_SIZES)
    seed = check_int(n["seed"], seed, 0, SEED_MAX)
    overlap = check_int(n["overlap"], overlap, 0)
    tile = check_tile(n["tile"], tile, model.pad_multiple, overlap, n["overlap"])
    if randpad and guidance != 1.0:
        raise ConfigError(f"{n['randpad']}={randpad} (Eq. 6 self-ensemble) needs {n['guidance']}=1.0, "
                          f"got {guidance}")
    cfg = model.config
    pads = [check_pad(n[name], cfg_pad if given is None else given, model.max_pad)
            for name, given, cfg_pad in (("pos_pad", pos_pad, cfg.pos_pad), ("neg_pad", neg_pad, cfg.neg_pad))]
    if randpad:
        widest = (8, 8)  # rand_pad_ensemble: (p, 8-p, q, 8-q)
    else:
        used = pads if guidance != 1.0 else pads[:1]
        widest = (max(p[2] + p[3] for p in used), max(p[0] + p[1] for p in used))
    passes = 2 if guidance != 1.0 and branch_mode == "batched" and not randpad else 1
    return {"guidance": guidance, "randpad": randpad, "ensemble": ensemble, "seed": seed, "tile": tile,
            "overlap": overlap, "pos_pad": pads[0], "neg_pad": pads[1], "passes": passes, "pad": widest}


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
    tile_budget: int | None = None,
    interrupt: Callable[[], None] | None = None,
) -> Tensor:
    """Restore ``x`` (B,3,H,W) in [0,1], already on the output grid; returns (B,3,H,W).

    ``tile``: "auto" (:func:`plan_tiles`: the whole image when the memory estimate fits, on a
    CPU 768-px tiles above 1536 px because they run faster, else the largest tile that fits), 0/"off"
    (never tile) or a tile size in pixels. On out-of-memory the tile is halved and the
    image retried, down to 128 px. ``progress(done, total)`` is called after every UNet block of
    every branch / ensemble pass of every tile (:mod:`gendr_core.progress`; a batched PadCFG
    pass counts twice), and ``interrupt()``, which may raise to cancel, after every
    convolution and attention step inside the pass; the hooks are gone when this returns.
    ``ensemble`` (1, 2, 4 or 8): average over that many flips/transposes of each tile
    (:func:`~gendr_core.ops.guidance.dihedral_ensemble`); n times the compute, same memory.
    """
    opts = check_options(model, guidance=guidance, pos_pad=pos_pad, neg_pad=neg_pad, branch_mode=branch_mode,
                         randpad=randpad, ensemble=ensemble, seed=seed, tile=tile, overlap=overlap)
    guidance, randpad, ensemble, seed, tile, overlap = (opts[k] for k in ("guidance", "randpad", "ensemble", "seed",
                                                                           "tile", "overlap"))
    cond_pos, cond_neg = model.resolve_embeddings(positive, negative)
    pos_pad, neg_pad = Pad(*opts["pos_pad"]), Pad(*opts["neg_pad"])
    m = model.pad_multiple
    x = x.to(model.device)
    gen = torch.Generator("cpu").manual_seed(seed)
    # Progress unit: one UNet block of one branch pass (a batched PadCFG forward counts twice).
    blocks = blocks_per_pass(model)
    per_tile = ensemble * (randpad or (1 if guidance == 1.0 else 2)) * blocks
    count = {"units": 0, "weight": 1, "tiles": 1}
    n_images = x.shape[0]

    def report() -> None:
        if progress:
            progress(count["units"], count["tiles"] * per_tile)

    def on_block() -> None:
        count["units"] += count["weight"]
        report()

    def predict(xp: Tensor, cond: Tensor) -> Tensor:
        count["weight"] = max(1, xp.shape[0] // n_images)
        end = count["units"] + count["weight"] * blocks
        y = model.predict(xp, cond)
        if count["units"] != end:  # a model without hooked blocks reports once per pass
            count["units"] = end
            report()
        return y

    def once(t: Tensor) -> Tensor:
        if randpad:
            return rand_pad_ensemble(predict, t, cond_pos, randpad, multiple=m, generator=gen)
        return pad_cfg(predict, t, cond_pos, cond_neg, guidance, multiple=m, pos_pad=pos_pad,
                       neg_pad=neg_pad, batched=branch_mode == "batched")

    def run(t: Tensor) -> Tensor:
        with torch.no_grad(), pass_events(model, on_block if progress else None, interrupt):
            if ensemble > 1:
                return dihedral_ensemble(once, t, ensemble)
            return once(t)

    b, _, h, w = x.shape
    if tile == "auto":
        plan = plan_tiles(model, h, w, b, opts["passes"], overlap, budget=tile_budget, pad=opts["pad"])
        size = plan.tile
        logger.info("memory estimate %.2f GB of %.2f GB budget -> %s", plan.estimated_bytes / 1e9,
                    plan.budget_bytes / 1e9, f"tile {size}" if size else "whole image")
    elif tile == "off":
        size = 0
    else:
        size = tile
    while True:
        try:
            count["units"] = 0
            if not size or size >= max(h, w):
                count["tiles"] = 1
                return run(x)
            count["tiles"] = tile_count(h, w, size, overlap, m)
            return tiled_apply(run, x, size, overlap, align=m)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_oom(exc) or tile == "off":
                raise
            current = size or max(h, w)
            new = (current // 2) // m * m
            if new < MIN_TILE or new <= -(-overlap // m) * m:
                raise
            logger.warning("out of memory at tile %s; retrying with tile %d", size or "full", new)
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            size = new


def auto_tile(model: OneStepRestorer, h: int, w: int, batch: int = 1, guidance: float = 1.0,
              branch_mode: str = "batched", overlap: int = 64, budget: int | None = None) -> int:
    """The tile side (0 = whole image) that ``tiling="auto"`` takes for a ``batch`` of (h, w)
    output-grid images: :func:`plan_tiles` with the options of :func:`check_options`."""
    opts = check_options(model, guidance=guidance, branch_mode=branch_mode, overlap=overlap)
    return plan_tiles(model, h, w, batch, opts["passes"], opts["overlap"], budget=budget, pad=opts["pad"]).tile


TILING = ("auto", "off", "fixed")
# One name per concept: upscale() keyword == node input == CLI flag (with '-'), -> restore_grid's keyword
VOCABULARY = {"tile_overlap": "overlap", "positive_pad": "pos_pad", "negative_pad": "neg_pad", "passes": "randpad",
              "flips": "ensemble", "branch_mode": "branch_mode", "seed": "seed", "positive": "positive",
              "negative": "negative"}
DEPRECATED_NAMES = {"overlap": "tile_overlap", "pos_pad": "positive_pad", "neg_pad": "negative_pad",
                    "randpad": "passes", "ensemble": "flips", "tile": "tiling/tile_size"}
MESSAGE_NAMES = {internal: name for name, internal in VOCABULARY.items()} | {"tile": "tile_size"}


def restore_keywords(kwargs: dict) -> dict:
    """:func:`upscale` keywords (the shared vocabulary, or their deprecated names) -> :func:`restore_grid`'s.

    ``tiling`` 'auto' | 'off' | 'fixed' with ``tile_size`` becomes restore_grid's ``tile``; the
    old ``tile`` ('auto' | 'off' | size) still works, like every name of ``DEPRECATED_NAMES``."""
    kwargs = dict(kwargs)
    for old, new in DEPRECATED_NAMES.items():
        if old not in kwargs:
            continue
        warnings.warn(f"upscale({old}=...) is deprecated; use {new}", DeprecationWarning, stacklevel=3)
        if old == "tile":
            if "tiling" in kwargs or "tile_size" in kwargs:
                raise ConfigError("give tiling/tile_size or the deprecated tile, not both")
            tile = kwargs.pop("tile")
            if tile in ("auto", "off") or tile in (0, None):
                kwargs["tiling"] = "off" if tile in (0, None) else tile
            else:
                kwargs["tiling"], kwargs["tile_size"] = "fixed", tile
            continue
        if new in kwargs:
            raise ConfigError(f"give {new} or its deprecated name {old}, not both")
        kwargs[new] = kwargs.pop(old)
    tiling = check_choice("tiling", kwargs.pop("tiling", "auto"), TILING)
    tile_size = kwargs.pop("tile_size", 512)
    out = {"tile": tile_size if tiling == "fixed" else tiling}
    for name, internal in VOCABULARY.items():
        if name in kwargs:
            out[internal] = kwargs.pop(name)
    for passthrough in ("tile_budget", "output_copies", "interrupt"):
        if passthrough in kwargs:
            out[passthrough] = kwargs.pop(passthrough)
    if kwargs:
        raise TypeError(f"upscale() got unknown keyword(s) {', '.join(sorted(kwargs))}; valid: "
                        f"{', '.join(['tiling', 'tile_size', *VOCABULARY])}")
    return out


def check_upscale_options(model: OneStepRestorer, guidance: float = 1.0, names: dict[str, str] | None = None,
                          **kwargs) -> dict:
    """:func:`check_options` for :func:`upscale`'s keywords, before any work; messages use
    the shared vocabulary (or ``names``: the CLI's flags)."""
    internal = {k: v for k, v in restore_keywords(kwargs).items()
                if k not in ("positive", "negative", "tile_budget", "output_copies", "interrupt")}
    return check_options(model, guidance=guidance, names=MESSAGE_NAMES | (names or {}), **internal)


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

    ``image``: a PIL image (RGB, RGBA, grayscale, 16-bit gray) or a float tensor (B,3,H,W) in
    [0,1]; the result is of the same kind. ``model``: a loaded model, a path or shipped name, or
    None for the default shipped model (``checkpoint.DEFAULT_MODEL``). ``guidance``: PadCFG scale
    w (1.0 = one pass, no CFG; default: the model's ``default_guidance``). ``fixmod`` ("auto" =
    None, "off", "wavelet", "learned") and ``color_fix`` (its strength in [0, 1]) choose the
    post-fix, applied once after stitching; see :func:`post_fix`.

    Other keywords, named as the nodes' inputs and the CLI's flags: ``tiling`` ('auto', 'off',
    'fixed') and ``tile_size``, ``tile_overlap``, ``positive_pad``/``negative_pad`` (left,
    right, top, bottom), ``branch_mode``, ``passes`` (RandPad passes, 0 = off), ``flips``
    (1, 2, 4, 8), ``seed``, ``positive``/``negative`` (prompt embeddings), ``output_copies``
    (float copies of the output the caller makes, counted in the memory check). The names
    before this vocabulary (``tile``, ``overlap``, ``pos_pad``, ``neg_pad``, ``randpad``,
    ``ensemble``) still work and warn (DeprecationWarning).
    """
    kwargs = restore_keywords(kwargs)
    if not isinstance(model, OneStepRestorer):
        from .checkpoint import load_model

        model = load_model(model)
    guidance = model.config.default_guidance if guidance is None else guidance
    if isinstance(image, Image.Image):
        x, alpha, info = pil_to_tensor(image)
        per_px = 3 * 4 + 2 * (1 if info.grayscale else 3) * (2 if info.sixteen_bit else 1)  # float HWC + array + PIL
        y = _upscale_tensor(x, model, scale, guidance, (fixmod, color_fix), progress, kwargs, per_px)
        if alpha is not None:
            alpha = resize(alpha, tuple(y.shape[-2:]), "bicubic")
        return tensor_to_pil(y, alpha, info)
    if isinstance(image, Tensor):
        if image.ndim == 3:
            raise ImageInputError(f"image tensor must be (B,3,H,W), got {tuple(image.shape)}; add a batch dim")
        return _upscale_tensor(image, model, scale, guidance, (fixmod, color_fix), progress, kwargs)
    raise ImageInputError(f"image must be a PIL.Image or a torch.Tensor, got {type(image).__name__}")


def _upscale_tensor(x, model, scale, guidance, fix, progress, kwargs, save_bytes_per_px: int = 0) -> Tensor:
    mode, strength = resolve_post_fix(model, *fix)  # bad choices fail before the long run
    check_image_tensor(x)
    if x.shape[1] != 3:
        raise ImageInputError(f"image tensor must have 3 channels (B,3,H,W), got shape {tuple(x.shape)}")
    scale = check_float("scale", scale, 0.0, None, low_open=True)
    save_bytes_per_px += 3 * 4 * check_int("output_copies", kwargs.pop("output_copies", 0), 0, 8)
    opts = check_options(model, guidance=guidance, names=MESSAGE_NAMES,
                         **{k: v for k, v in kwargs.items() if k not in ("positive", "negative", "tile_budget",
                                                                          "interrupt")})
    tile_budget = check_job_memory(model, tuple(x.shape[-2:]), x.shape[0], scale, opts, mode, save_bytes_per_px)
    out_device = x.device
    x = x.float().clamp(0, 1)
    gray = is_gray(x)  # on the input: resizing keeps equal channels equal
    size = output_size(x.shape[-2], x.shape[-1], scale)
    grid = resize(x.to(model.device), size, "bicubic")  # (B,3,h,w) -> (B,3,H,W)
    kwargs.setdefault("tile_budget", tile_budget)
    y = restore_grid(grid, model, guidance=guidance, progress=progress, **kwargs).float()
    y = post_fix(y, grid, model, mode, strength)
    del grid
    if gray.any():  # gray in, gray out: the channel mean, so no colour speckle appears
        y[gray] = y[gray].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return y.clamp_(0, 1).to(out_device)


def is_gray(x: Tensor) -> Tensor:
    """(B,) bool: images of (B,3,H,W) ``x`` whose three channels are equal everywhere."""
    return ((x[:, 0] == x[:, 1]) & (x[:, 1] == x[:, 2])).flatten(1).all(1)


def check_job_memory(model: OneStepRestorer, in_hw: tuple[int, int], batch: int, scale: float, opts: dict,
                     post: str = "off", save_bytes_per_px: int = 0) -> int | None:
    """Refuse (MemoryBudgetError) a job whose peak cannot fit; returns the activation budget
    left for auto tiling (None when tiling is not automatic).

    The whole job is estimated (:mod:`gendr_core.budget`) with the smallest tile auto tiling
    could use, or the given tile, or the whole image for tile 'off'."""
    tile = opts["tile"]
    device_budget = available_memory(model.device)
    host_budget = device_budget if model.device.type == "cpu" else available_memory(torch.device("cpu"))
    smallest = max(MIN_TILE, (-(-opts["overlap"] // model.pad_multiple) + 1) * model.pad_multiple)

    def estimate(s: float):
        t = {"auto": smallest, "off": 0}.get(tile, tile)  # type: ignore[arg-type]
        return estimate_job(model, in_hw, batch, s, passes=opts["passes"], pad=opts["pad"], tile=t,
                            post_fix=post, save_bytes_per_px=save_bytes_per_px)

    est = estimate(scale)
    if not est.fits(device_budget, host_budget):
        lo, hi = 0.0, scale  # the largest scale that fits, for the message
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if estimate(mid).fits(device_budget, host_budget) else (lo, mid)
        refuse_if_too_big(est, device_budget, host_budget, max_scale=lo or None)
    return None if tile != "auto" else max(0, device_budget - est.grid - est.output)


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
    if strength is not None:
        strength = check_float("color_fix", strength, 0.0, 1.0)
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
