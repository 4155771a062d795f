"""``gendr-pix bench``: seconds and peak memory of one-step upscaling per output size.

Each row times ``upscale(x, model, scale, guidance, tiling="off")`` on a random input of
output/scale pixels (model load excluded, warm-up runs first) and records the peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (set after the
  model is loaded, so the peak includes the weights; ``baseline_bytes`` is what the loaded
  model holds, ``activation_bytes`` the difference).
* CPU: the peak resident set of a fresh process per configuration (``python -m
  gendr_core.bench --worker JSON``). On Linux the peak is ``VmHWM`` of /proc/self/status,
  reset through /proc/self/clear_refs after the model is loaded: ``ru_maxrss`` of a child
  started by ``subprocess`` (vfork + exec) already holds the parent's peak, so it is only
  reported as ``ru_maxrss_bytes`` for reference (and used where /proc is absent).

``compare=True`` adds, per size, the GenDR latent pipeline (16-channel f8 VAE + a UNet with
the same block layout and 16 in/out channels) and the ratios time_latent/time_pix and
peak_pix/peak_latent (GenDR-Pix's headline: 2.8x faster, -60 % memory at 4K on a GPU).

``compare_models`` adds other model files measured the same way in the same run, each in its
own fresh process: our model files run through ``upscale`` like the main model; any other file
(a spandrel-loadable SR model such as Real-ESRGAN x4plus, or a converted ncnn teacher) is loaded
with :func:`gendr_core.teachers.load_teacher` and timed as ``teacher.restore(lq, output_size)``
on the same random input. Their ratios are against the main model: ``speedup`` =
time_other/time_ours (> 1: ours is faster), ``peak_ratio_pix_over_latent`` = peak_ours/peak_other.

This is the one benchmark runner: the ComfyUI Benchmark node calls :func:`run_loaded` on its
already-loaded models (same :func:`measure_model`, same :class:`BenchRow`, in the ComfyUI
process) and ``bench/gpu_bench.py`` runs a plan of :class:`BenchConfig` s through
:func:`run_bench_config`. ``speed`` (:class:`~gendr_core.pipeline.SpeedOptions`) applies the
inference-only switches (channels_last, torch.compile, feed-forward chunking, windowed level-1
attention, fused SDPA kernels only) to every model of a run; ``first_run_seconds`` keeps the
first (warm-up) run, which holds torch.compile's compile time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .config import (
    DFOSDConfig,
    GenDRConfig,
    GenDRPixConfig,
    ModelConfig,
    UNetConfig,
    VAEConfig,
    tiny_gendr_config,
    tiny_gendr_pix_config,
    vae16_config,
)
from .errors import ConfigError, GenDRPixError
from .fileio import atomic_write
from .pipeline import SpeedOptions

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
RANDOM_WEIGHTS = "random (timing only)"
RESULT_PREFIX = "GENDR_BENCH_RESULT "
ERROR_PREFIX = "GENDR_BENCH_ERROR "  # a worker's one-line GenDRPixError (bad model file), re-raised by the parent
PIPELINE_NAMES = {"gendr_pix": "gendr_pix", "gendr": "gendr_latent", "dfosd": "dfosd_latent"}
TEACHER_KIND = "teacher"  # a recipe measured through gendr_core.teachers.load_teacher


# ----------------------------------------------------------------------------- model presets


def gendr_pix_s_config() -> GenDRPixConfig:
    """Architecture of the shipped gendr-pix-s: the config in its asset file when present, else
    the recipe of trainers/configs/gendr_pix_s.json (x4 unshuffle, block_out (32,64,128,160),
    2 layers per block, attention only at the coarsest level)."""
    from .checkpoint import BUILTIN_MODELS, FIDELITY_MODEL, read_header

    asset = BUILTIN_MODELS[FIDELITY_MODEL]
    if asset.exists():
        _, config, _ = read_header(asset)
        if isinstance(config, GenDRPixConfig):
            return config
    unet = UNetConfig(
        in_channels=48,
        out_channels=48,
        block_out_channels=(32, 64, 128, 160),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=2,
        attention_head_dim=(1, 1, 2, 2),
        cross_attention_dim=64,
        norm_num_groups=32,
        sample_size=32,
    )
    return GenDRPixConfig(unet=unet, shuffle_factor=4, alpha=1.0, beta=1.0, prompt_tokens=8)


RANDOM_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "gendr-pix-sd21": GenDRPixConfig,  # paper size: SD2.1 UNet with 192-channel I/O (866M)
    "gendr-pix-s": gendr_pix_s_config,
    "tiny": tiny_gendr_pix_config,
    "gendr-sd21": GenDRConfig,  # the latent GenDR teacher at paper size (UNet 866M + VAE16 57M)
    "dfosd-sd21": DFOSDConfig,
    "tiny-gendr": tiny_gendr_config,
}


def reduced_unet_config(channels: Sequence[int], base: UNetConfig | None = None) -> UNetConfig:
    """SD2.1 UNet layout (``base``) with other ``block_out_channels``; heads keep SD2.1's 64 channels."""
    base = base or UNetConfig()
    channels = tuple(int(c) for c in channels)
    if len(channels) != len(base.block_out_channels):
        raise ConfigError(f"unet channels {channels} must have {len(base.block_out_channels)} entries like "
                          f"{base.block_out_channels}")
    return base.replace(block_out_channels=channels, attention_head_dim=tuple(max(1, c // 64) for c in channels))


def reduced_vae_config(channels: Sequence[int]) -> VAEConfig:
    """GenDR's VAE16 layout (ostris/vae-kl-f8-d16) with other ``block_out_channels``."""
    channels = tuple(int(c) for c in channels)
    return vae16_config().replace(block_out_channels=channels)


@dataclass(frozen=True)
class ModelRecipe:
    """What a worker builds: a model file, or a config with seeded random weights."""

    pipeline: str
    kind: str
    config: str  # the config as JSON
    path: str | None = None
    weights: str = RANDOM_WEIGHTS


def resolve_model(spec: str, unet_config: UNetConfig | None = None) -> ModelRecipe:
    """``random:<preset>`` (presets: see ``RANDOM_PRESETS``), a model file or a built-in name.

    ``unet_config`` replaces the UNet block layout of a random preset (its in/out channels
    are kept); it cannot change a model file.
    """
    from .checkpoint import read_header, resolve_model_path

    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        if name not in RANDOM_PRESETS:
            raise ConfigError(f"model {spec!r}: unknown preset {name!r}; use one of "
                              f"{', '.join('random:' + k for k in RANDOM_PRESETS)}, a model file or a built-in name")
        config = RANDOM_PRESETS[name]()
        if unet_config is not None:
            config = config.replace(unet=unet_config.replace(in_channels=config.unet.in_channels,
                                                             out_channels=config.unet.out_channels))
        kind = {GenDRPixConfig: "gendr_pix", GenDRConfig: "gendr", DFOSDConfig: "dfosd"}[type(config)]
        return ModelRecipe(PIPELINE_NAMES[kind], kind, config.to_json())
    if unet_config is not None:
        raise ConfigError(f"a UNet override (--unet-channels) needs a random:<preset> model, not {spec!r}")
    path = resolve_model_path(spec)
    kind, config, _ = read_header(path)
    return ModelRecipe(PIPELINE_NAMES[kind], kind, config.to_json(), str(path), str(path))


def compare_recipe(spec: str, taken: set[str] | None = None) -> ModelRecipe:
    """The recipe of one ``--compare`` model file, named by its file stem (made unique against ``taken``).

    Our own model files (a GenDR-Pix / GenDR / DFOSD header) run through ``upscale`` like the main
    model; any other existing file is measured through ``load_teacher`` (spandrel SR files,
    converted teachers). Errors name the file.
    """
    from .checkpoint import read_header

    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--compare model file not found: {path}")
    name = path.stem
    while taken is not None and name in taken:
        name += "'"
    if taken is not None:
        taken.add(name)
    try:
        kind, config, _ = read_header(path)
    except (GenDRPixError, ValueError, OSError):  # not one of ours: a teacher file (checked in its worker)
        return ModelRecipe(name, TEACHER_KIND, "{}", str(path), str(path))
    return ModelRecipe(name, kind, config.to_json(), str(path), str(path))


def latent_counterpart(pix: ModelRecipe, vae_config: VAEConfig | None = None) -> ModelRecipe:
    """The GenDR latent pipeline with the same UNet blocks: VAE (default VAE16) + 16-channel UNet I/O."""
    if pix.kind != "gendr_pix":
        raise ConfigError(f"compare needs a GenDR-Pix model to compare against GenDR, got a {pix.kind} model")
    cfg = GenDRPixConfig.from_json(pix.config)
    vae = vae_config or vae16_config()
    lat = vae.latent_channels
    latent = GenDRConfig(unet=cfg.unet.replace(in_channels=lat, out_channels=lat), vae=vae,
                         timestep=cfg.timestep, alpha=cfg.alpha, beta=cfg.beta, prompt_tokens=cfg.prompt_tokens,
                         pos_pad=cfg.pos_pad, neg_pad=cfg.neg_pad)
    return ModelRecipe("gendr_latent", "gendr", latent.to_json())


# ----------------------------------------------------------------------------- config and results


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. ``sizes`` are OUTPUT sizes as (width, height) in pixels."""

    model: str = "random:gendr-pix-s"
    sizes: tuple[tuple[int, int], ...] = ((512, 512), (1024, 1024))
    scale: float = 4.0
    guidance: float = 1.0
    branch_mode: str = "batched"
    device: str | None = None
    dtype: str | None = None
    repeats: int = 3
    warmup: int = 1
    compare: bool = False
    compare_models: tuple[str, ...] = ()
    unet_config: UNetConfig | None = None
    vae_config: VAEConfig | None = None
    fresh_process_on_cpu: bool = True
    threads: int | None = None
    seed: int = 0
    speed: SpeedOptions = SpeedOptions()
    tiling: str = "off"  # "off" (whole image, the default), "auto" (the library's choice) or "fixed"
    tile_size: int = 512  # output pixels per tile side when tiling is "fixed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple((int(w), int(h)) for w, h in self.sizes))
        object.__setattr__(self, "compare_models", tuple(str(m) for m in self.compare_models))
        if not self.sizes:
            raise ConfigError("BenchConfig.sizes must name at least one output size")
        for w, h in self.sizes:
            if min(w, h) < 1 or round(w / self.scale) < 1 or round(h / self.scale) < 1:
                raise ConfigError(f"output size {w}x{h} at scale {self.scale} gives an empty input")
        if not self.scale > 0:
            raise ConfigError(f"scale={self.scale} must be > 0")
        if self.branch_mode not in ("batched", "sequential"):
            raise ConfigError(f"branch_mode={self.branch_mode!r} must be 'batched' or 'sequential'")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads} must be >= 1")
        if self.tiling not in ("off", "auto", "fixed"):
            raise ConfigError(f"tiling={self.tiling!r} must be 'off', 'auto' or 'fixed'")
        if self.tile_size < 1:
            raise ConfigError(f"tile_size={self.tile_size} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["sizes"] = [list(s) for s in self.sizes]
        d["compare_models"] = list(self.compare_models)
        for k in ("unet_config", "vae_config"):
            d[k] = d[k].to_dict() if d[k] is not None else None
        d["speed"] = self.speed.to_dict()
        return d


@dataclass
class BenchRow:
    """One (pipeline, output size) measurement. Sizes are [width, height]; bytes may be None."""

    pipeline: str
    kind: str
    weights: str
    output_size: list[int]
    input_size: list[int]
    output_megapixels: float
    seconds_median: float
    seconds_min: float
    seconds: list[float]
    peak_bytes: int | None
    baseline_bytes: int | None
    activation_bytes: int | None
    memory_method: str
    device: str
    dtype: str
    parameters: int
    unet_parameters: int
    vae_parameters: int
    estimated_bytes: int | None  # our activation estimate; None for teachers (no estimate)
    output_shape: list[int]
    load_peak_bytes: int | None = None
    ru_maxrss_bytes: int | None = None
    threads: int | None = None
    macs: int | None = None  # multiply-accumulates of one run, torch.utils.flop_counter on the meta device
    first_run_seconds: float | None = None  # the first run (a warm-up when warmup > 0): holds compile time
    speed: dict[str, Any] | None = None  # SpeedOptions of the run and what they changed
    attention: dict[str, int] | None = None  # attention modules per processor class (SDPA: AttnProcessor2_0)
    tiling: str = "off"  # how the run was tiled: "off", "auto (tile N)" / "auto (whole image)", "fixed N"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compare_rows(pix: BenchRow | dict[str, Any], latent: BenchRow | dict[str, Any]) -> dict[str, Any]:
    """Ratios for one output size: time_latent/time_pix (> 1: GenDR-Pix is faster) and
    peak_pix/peak_latent (< 1: GenDR-Pix needs less; ``memory_reduction`` = 1 - ratio).

    ``latent`` may be any other row (a ``--compare`` model): the ratios are then other/ours and
    ours/other under the same keys; ``pipeline`` and ``against`` name the two rows."""
    p = dataclasses.asdict(pix) if isinstance(pix, BenchRow) else pix
    q = dataclasses.asdict(latent) if isinstance(latent, BenchRow) else latent
    if p["output_size"] != q["output_size"]:
        raise ValueError(f"rows differ in output size: {p['output_size']} vs {q['output_size']}")
    mem = _ratio(p["peak_bytes"], q["peak_bytes"])
    return {
        "output_size": p["output_size"],
        "pipeline": p["pipeline"],
        "against": q["pipeline"],
        "speedup": _ratio(q["seconds_median"], p["seconds_median"]),  # time_latent / time_pix
        "time_ratio_latent_over_pix": _ratio(q["seconds_median"], p["seconds_median"]),
        "peak_ratio_pix_over_latent": mem,
        "memory_reduction": None if mem is None else 1.0 - mem,
        "activation_ratio_pix_over_latent": _ratio(p["activation_bytes"], q["activation_bytes"]),
        "macs_ratio_other_over_ours": _ratio(q.get("macs"), p.get("macs")),
    }


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _write_text(tmp: str, text: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class BenchResult:
    config: dict[str, Any]
    rows: list[BenchRow]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = [dataclasses.asdict(r) for r in self.rows]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def table(self) -> str:
        """The rows, then the comparisons (each other pipeline against the first), as fixed-width text."""
        width = max([13] + [len(r.pipeline) for r in self.rows])
        lines = [f"{'pipeline':<{width}} {'output':>10} {'input':>9} {'median s':>9} {'min s':>8} "
                 f"{'peak MiB':>9} {'base MiB':>9} {'act MiB':>8} {'GMACs':>9}"]
        for r in self.rows:
            lines.append(f"{r.pipeline:<{width}} {'x'.join(map(str, r.output_size)):>10} "
                         f"{'x'.join(map(str, r.input_size)):>9} {r.seconds_median:>9.3f} {r.seconds_min:>8.3f} "
                         f"{_mib(r.peak_bytes):>9} {_mib(r.baseline_bytes):>9} {_mib(r.activation_bytes):>8} "
                         f"{'-' if r.macs is None else f'{r.macs / 1e9:.1f}':>9}")
        if self.comparisons:
            lines += ["", f"{'against':<{width}} {'output':>10} {'t_other/t_ours':>15} {'peak ours/other':>16} "
                          f"{'memory':>8} {'act ours/other':>15} {'MACs other/ours':>16}"]
            for c in self.comparisons:
                red = c["memory_reduction"]
                lines.append(f"{c.get('against', ''):<{width}} {'x'.join(map(str, c['output_size'])):>10} "
                             f"{_fmt(c['speedup'], 'x'):>15} {_fmt(c['peak_ratio_pix_over_latent']):>16} "
                             f"{'-' if red is None else f'{-100 * red:+.0f}%':>8} "
                             f"{_fmt(c['activation_ratio_pix_over_latent']):>15} "
                             f"{_fmt(c.get('macs_ratio_other_over_ours'), 'x'):>16}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def write(
        self, path_json: str | os.PathLike, path_png: str | os.PathLike | None = None
    ) -> tuple[Path, Path | None]:
        """Atomic JSON write, then the plot (skipped with an info log without matplotlib)."""
        text = self.to_json()
        out_json = atomic_write(Path(path_json), lambda tmp: _write_text(tmp, text))
        out_png = None
        if path_png is not None:
            out_png = plot_result(self, Path(path_png))
        return out_json, out_png


def _fmt(v: float | None, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{suffix}"


def plot_result(result: BenchResult, path: Path) -> Path | None:
    """:func:`plot_figure` written as a PNG (atomic write); None without matplotlib."""
    fig = plot_figure(result)
    if fig is None:
        logger.info("matplotlib is not installed; skipping the plot %s (pip install matplotlib)", path)
        return None
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_array(result: BenchResult):
    """:func:`plot_figure` as a (H, W, 3) uint8 numpy array (the ComfyUI node's IMAGE); None without matplotlib."""
    import numpy as np

    fig = plot_figure(result)
    if fig is None:
        return None
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def plot_figure(result: BenchResult):
    """Seconds, peak memory and GMACs vs output megapixels, one line per pipeline: the three
    panels of GenDR-Pix Fig. 8 (a matplotlib Figure; None when matplotlib is not installed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(14, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_t, ax_m, ax_c = fig.subplots(1, 3)
    for name in dict.fromkeys(r.pipeline for r in result.rows):
        rows = sorted((r for r in result.rows if r.pipeline == name), key=lambda r: r.output_megapixels)
        mp = [r.output_megapixels for r in rows]
        ax_t.plot(mp, [r.seconds_median for r in rows], marker="o", label=name)
        mem = [(r.output_megapixels, r.peak_bytes / 2**30) for r in rows if r.peak_bytes is not None]
        if mem:
            ax_m.plot(*zip(*mem, strict=True), marker="o", label=name)
        macs = [(r.output_megapixels, r.macs / 1e9) for r in rows if r.macs is not None]
        if macs:
            ax_c.plot(*zip(*macs, strict=True), marker="o", label=name)
    ax_t.set(xlabel="output megapixels", ylabel="seconds (median)", title="time")
    method = result.rows[0].memory_method if result.rows else ""
    ax_m.set(xlabel="output megapixels", ylabel="peak memory (GiB)", title=f"peak memory ({method})")
    if not any(r.peak_bytes is not None for r in result.rows):
        ax_m.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax_m.transAxes)
    ax_c.set(xlabel="output megapixels", ylabel="GMACs", title="multiply-accumulates (flop_counter)")
    for ax in (ax_t, ax_m, ax_c):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    weights = {r.weights for r in result.rows}
    title = result.config.get("model") or ", ".join(result.config.get("models", []))
    fig.suptitle(f"{title} on {result.rows[0].device if result.rows else '?'}"
                 + (" - random weights" if RANDOM_WEIGHTS in weights else ""))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- measuring


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # bytes on macOS, kB on Linux


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(recipe: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int):
    from .checkpoint import load_model
    from .models.restorer import CONFIG_CLASSES, build_model

    if recipe["path"]:
        return load_model(recipe["path"], device=device, dtype=dtype)
    config = CONFIG_CLASSES[recipe["kind"]].from_json(recipe["config"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = build_model(config)
    return model.to(dtype=dtype).eval().requires_grad_(False)


@dataclass
class PeakMemory:
    """Peak memory of the work done between :meth:`start` and :meth:`stop`.

    CUDA: ``max_memory_allocated`` after a reset. CPU: the process's peak resident set
    (``VmHWM``), reset to the current RSS at start where Linux allows it; without a reset the
    peak can include earlier work (``method`` then says so). ``baseline_bytes`` is the
    allocation (CUDA) or RSS (CPU) at start, so ``peak - baseline`` is the run's own memory.
    """

    device: torch.device
    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    before_bytes: int | None = None  # CPU: the peak RSS before the reset (e.g. model loading)
    method: str = "none"

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda_max_memory_allocated"
        elif self.device.type == "cpu":
            gc.collect()
            self.before_bytes = _proc_status_bytes("VmHWM") or _ru_maxrss_bytes()
            self.baseline_bytes = _proc_status_bytes("VmRSS")
            if _reset_peak_rss():
                self.method = "vmhwm"
            else:
                logger.warning("cannot reset the peak RSS here; the CPU peak includes earlier work")
                self.method = "vmhwm_unreset" if _proc_status_bytes("VmHWM") else "ru_maxrss_unreset"
        return self

    def stop(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.device.type == "cpu":
            self.peak_bytes = _proc_status_bytes("VmHWM") or _ru_maxrss_bytes()
        return self

    @property
    def activation_bytes(self) -> int | None:
        if self.peak_bytes is None or self.baseline_bytes is None:
            return None
        return max(0, self.peak_bytes - self.baseline_bytes)


def count_macs(run: Callable[[torch.device], Any]) -> int | None:
    """Multiply-accumulates of ``run(torch.device("meta"))``, counted by ``torch.utils.flop_counter``
    (FLOPs / 2 of the matmuls and convolutions it dispatches) on the meta device: no weights are
    read and nothing is computed, so a 4K count costs milliseconds. ``run`` must move its model
    and input to the device it is given. None when an op cannot run on meta (logged)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run(torch.device("meta"))
    except Exception as exc:  # noqa: BLE001 - a count is a bonus; the timing stands without it
        logger.info("MACs not counted (%s: %s)", type(exc).__name__, exc)
        return None
    return int(counter.get_total_flops()) // 2


MEMORY_KINDS = ("none", "rss", "fresh_rss")


def _timed_runs(run: Callable[[], Any], warmup: int, repeats: int, device: torch.device,
                on_run: Callable[[], None] | None = None) -> tuple[list[float], float, Any]:
    """``warmup`` untimed then ``repeats`` timed calls of ``run`` (CUDA synchronised before each clock
    read); returns (timed seconds, seconds of the very first call, the last output)."""
    times, first, y = [], None, None
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        y = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        first = dt if first is None else first
        if i >= warmup:
            times.append(dt)
        if on_run:
            on_run()
    return times, first, y


def _tracker(device: torch.device, memory: str) -> PeakMemory | None:
    if memory not in MEMORY_KINDS:
        raise ValueError(f"memory={memory!r} must be one of {MEMORY_KINDS}")
    return PeakMemory(device).start() if device.type == "cuda" or memory != "none" else None


def _memory_fields(tracker: PeakMemory | None, memory: str) -> dict[str, Any]:
    """peak/baseline/activation bytes and the method, named for what it measured."""
    if tracker is None:
        return {"peak_bytes": None, "baseline_bytes": None, "activation_bytes": None,
                "memory_method": "none (in-process CPU run)", "load_peak_bytes": None, "ru_maxrss_bytes": None}
    tracker.stop()
    cuda = tracker.device.type == "cuda"
    prefix = "" if cuda else {"fresh_rss": "fresh_process_", "rss": "in_process_"}[memory]
    return {"peak_bytes": tracker.peak_bytes, "baseline_bytes": tracker.baseline_bytes,
            "activation_bytes": tracker.activation_bytes, "memory_method": prefix + tracker.method,
            "load_peak_bytes": tracker.before_bytes,
            "ru_maxrss_bytes": _ru_maxrss_bytes() if memory == "fresh_rss" else None}


def _input(size: Sequence[int], scale: float, seed: int) -> torch.Tensor:
    w_out, h_out = size
    w_in, h_in = max(1, round(w_out / scale)), max(1, round(h_out / scale))
    return torch.rand(1, 3, h_in, w_in, generator=torch.Generator().manual_seed(seed))


def model_macs(model, grid: tuple[int, int], guidance: float = 1.0, branch_mode: str = "batched",
               speed: SpeedOptions | None = None) -> int | None:
    """MACs of ``restore_grid`` on a (1,3,*grid) image (tiling off) by :func:`count_macs`, on a copy of
    ``model``'s architecture built on the meta device (the model itself is not touched; the
    windowed attention of ``speed`` is applied to the copy, as it changes the count)."""
    from .models.restorer import build_model
    from .models.unet import set_window_attention
    from .pipeline import restore_grid

    def run(meta: torch.device) -> None:
        with meta:
            copy = build_model(model.config).to(model.dtype).eval()
        if speed is not None and speed.attention_window:
            set_window_attention(copy.unet, speed.attention_window)
        restore_grid(torch.empty((1, 3) + tuple(grid), device=meta), copy, guidance=guidance, branch_mode=branch_mode,
                     tile="off")

    return count_macs(run)


def measure_model(model, size: Sequence[int], *, scale: float = 4.0, guidance: float = 1.0,
                  branch_mode: str = "batched", warmup: int = 1, repeats: int = 3, seed: int = 0,
                  memory: str = "none", pipeline: str | None = None, weights: str | None = None,
                  speed: dict[str, Any] | None = None, on_run: Callable[[], None] | None = None,
                  tiling: str = "off", tile_size: int = 512) -> BenchRow:
    """One :class:`BenchRow`: time ``upscale(x, model, scale, guidance, tiling=tiling)`` on a seeded random
    input of ``size`` (output width, height) / ``scale`` pixels on the model's device, after
    ``warmup`` runs; peak memory per ``memory`` ("none", "rss": this process's peak RSS, "fresh_rss":
    the same in a fresh worker process; CUDA always ``max_memory_allocated``); MACs by
    :func:`model_macs`. ``speed``: the applied SpeedOptions (and what they changed), recorded in
    the row; ``on_run()`` is called after every run (progress). ``tiling`` "off" (default: the whole
    image), "auto" or "fixed" (tiles of ``tile_size`` output pixels), as ``upscale``'s; MACs are
    always those of the whole-image pass."""
    from .models.unet import attention_processors
    from .pipeline import attention_kernels, auto_tile, upscale

    device = model.device
    opts = SpeedOptions(**{k: v for k, v in (speed or {}).items() if k in SpeedOptions.__dataclass_fields__})
    x = _input(size, scale, seed).to(device)
    tracker = _tracker(device, memory)

    def run() -> torch.Tensor:
        with attention_kernels(opts, device):
            return upscale(x, model, scale, guidance, tiling=tiling, tile_size=tile_size, branch_mode=branch_mode)

    times, first, y = _timed_runs(run, warmup, repeats, device, on_run)
    mem = _memory_fields(tracker, memory)
    m = model.pad_multiple
    ph, pw = -(-y.shape[-2] // m) * m, -(-y.shape[-1] // m) * m
    vae = getattr(model, "vae", None)
    return BenchRow(
        pipeline=pipeline or model.kind, kind=model.kind, weights=weights or getattr(model, "source_path", None)
        or RANDOM_WEIGHTS, output_size=[int(y.shape[-1]), int(y.shape[-2])],
        input_size=[int(x.shape[-1]), int(x.shape[-2])], output_megapixels=y.shape[-1] * y.shape[-2] / 1e6,
        seconds_median=statistics.median(times), seconds_min=min(times), seconds=times,
        device=str(device), dtype=str(model.dtype).replace("torch.", ""),
        parameters=sum(p.numel() for p in model.parameters()),
        unet_parameters=sum(p.numel() for p in model.unet.parameters()),
        vae_parameters=sum(p.numel() for p in vae.parameters()) if vae is not None else 0,
        estimated_bytes=int(model.estimate_bytes(ph, pw, 2 if guidance != 1.0 and branch_mode == "batched" else 1)),
        output_shape=list(y.shape), threads=torch.get_num_threads(),
        macs=model_macs(model, tuple(y.shape[-2:]), guidance, branch_mode, opts),  # bicubic has no MACs
        first_run_seconds=first, speed=speed, attention=attention_processors(model.unet),
        tiling=_tiling_label(model, tiling, tile_size, y.shape, guidance, branch_mode, auto_tile), **mem)


def _tiling_label(model, tiling: str, tile_size: int, shape, guidance: float, branch_mode: str, auto_tile) -> str:
    """What the row's runs did: "off", "fixed N" (N aligned as upscale aligns it), or "auto (...)"
    with the tile :func:`~gendr_core.pipeline.auto_tile` chose."""
    m = model.pad_multiple
    if tiling == "fixed":
        return f"fixed {max(m, tile_size // m * m)}"
    if tiling == "auto":
        t = auto_tile(model, int(shape[-2]), int(shape[-1]), int(shape[0]), guidance, branch_mode)
        return f"auto (tile {t})" if t else "auto (whole image)"
    return "off"


def build_for_job(job: dict[str, Any]):
    """The model of a job (a file, or seeded random weights), on its device and dtype, with the
    job's SpeedOptions applied; returns (model, the speed dict recorded in rows)."""
    from .checkpoint import default_dtype, parse_dtype
    from .pipeline import apply_speed_options

    device = torch.device(job["device"])
    dtype = parse_dtype(job["dtype"]) or default_dtype(device)
    model = _build(job["recipe"], device, dtype, job["seed"])
    speed = SpeedOptions(**job.get("speed", {}))
    changed = apply_speed_options(model, speed)
    return model, speed.to_dict() | {"applied": changed}


def measure(job: dict[str, Any], memory: str, built: tuple | None = None) -> dict[str, Any]:
    """One job as a row dict: build its model (or use ``built``, the (model, speed dict) of
    :func:`build_for_job`), time and measure it (``memory``: see
    :func:`measure_model`); a teacher recipe goes through ``teacher.restore``."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    if job["recipe"]["kind"] == TEACHER_KIND:
        from .checkpoint import default_dtype, parse_dtype

        device = torch.device(job["device"])
        # a teacher (e.g. RRDBNet through spandrel) runs as ComfyUI's upscaler runs it: fp32 on a CPU
        teacher_dtype = torch.float32 if device.type == "cpu" else default_dtype(device)
        return _measure_teacher(job, memory, device, parse_dtype(job["dtype"]) or teacher_dtype)
    model, speed = built if built is not None else build_for_job(job)
    row = measure_model(model, job["size"], scale=job["scale"], guidance=job["guidance"],
                        branch_mode=job["branch_mode"], warmup=job["warmup"], repeats=job["repeats"],
                        seed=job["seed"], memory=memory, pipeline=job["recipe"]["pipeline"],
                        weights=job["recipe"]["weights"], speed=speed, tiling=job.get("tiling", "off"),
                        tile_size=job.get("tile_size", 512))
    return dataclasses.asdict(row)


def _load_teacher(path: str, device: torch.device, dtype: torch.dtype):
    try:
        from .teachers import load_teacher
    except ImportError as exc:  # pragma: no cover - teachers.py is part of the package
        raise GenDRPixError(f"--compare {path}: other model files need gendr_core.teachers ({exc})") from None

    try:
        teacher = load_teacher(path, device=device, dtype=dtype)
    except (GenDRPixError, FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # noqa: BLE001 - third-party loaders raise their own types; name the file
        raise GenDRPixError(f"--compare {path}: cannot load as a model ({type(exc).__name__}: {exc})") from None
    return teacher.eval().requires_grad_(False)


def _measure_teacher(job: dict[str, Any], memory: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """:func:`measure` for a teacher recipe: time ``teacher.restore(x, output_size)``."""
    teacher = _load_teacher(job["recipe"]["path"], device, dtype)
    tracker = _tracker(device, memory)
    w_out, h_out = job["size"]
    x = _input(job["size"], job["scale"], job["seed"]).to(device, dtype)
    times, first, y = _timed_runs(lambda: teacher.restore(x, (h_out, w_out)), job["warmup"], job["repeats"], device)
    mem = _memory_fields(tracker, memory)
    if tuple(y.shape[-2:]) != (h_out, w_out):
        raise GenDRPixError(f"--compare {job['recipe']['path']}: restored to {tuple(y.shape[-2:])}, "
                            f"expected {(h_out, w_out)}")
    params = sum(p.numel() for p in teacher.parameters())
    macs = count_macs(lambda meta: teacher.to(meta).restore(x.to(meta), (h_out, w_out)))  # last use
    row = BenchRow(
        pipeline=job["recipe"]["pipeline"], kind=TEACHER_KIND, weights=job["recipe"]["weights"],
        output_size=[int(y.shape[-1]), int(y.shape[-2])], input_size=[int(x.shape[-1]), int(x.shape[-2])],
        output_megapixels=y.shape[-1] * y.shape[-2] / 1e6, seconds_median=statistics.median(times),
        seconds_min=min(times), seconds=times, device=str(device), dtype=str(dtype).replace("torch.", ""),
        parameters=params, unet_parameters=0, vae_parameters=0, estimated_bytes=None, output_shape=list(y.shape),
        threads=torch.get_num_threads(), macs=macs, first_run_seconds=first, **mem)
    return dataclasses.asdict(row)


def _worker_main(spec: str) -> int:
    """``python -m gendr_core.bench --worker JSON``: one configuration, result as JSON on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    job = json.loads(spec)
    try:
        with torch.no_grad():
            result = measure(job, "fresh_rss")
    except (GenDRPixError, FileNotFoundError) as exc:
        sys.stdout.write(ERROR_PREFIX + " ".join(str(exc).split()) + "\n")
        sys.stdout.flush()
        return 2
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def run_worker(job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one job in a fresh Python process and return its result dict."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # so `-m gendr_core.bench` imports this copy
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "gendr_core.bench", "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.stderr:
        logger.debug("bench worker stderr:\n%s", proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    errors = [ln[len(ERROR_PREFIX):] for ln in proc.stdout.splitlines() if ln.startswith(ERROR_PREFIX)]
    if errors:
        raise GenDRPixError(errors[-1])
    if proc.returncode != 0 or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit status {proc.returncode}"
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise GenDRPixError(f"bench worker for {job['recipe']['pipeline']} {job['size'][0]}x{job['size'][1]} "
                            f"failed ({why}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# ----------------------------------------------------------------------------- the benchmark


def _environment(device: torch.device) -> dict[str, Any]:
    import diffusers

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "cpu_count": os.cpu_count(),
           "torch_threads_default": torch.get_num_threads()}  # the rows record each run's own threads
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _describe_model(recipe: ModelRecipe, spec: str) -> dict[str, Any]:
    return {"source": spec, "kind": recipe.kind, "weights": recipe.weights, "config": json.loads(recipe.config)}


def run_bench_config(cfg: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Run the benchmark that ``cfg`` describes; see :func:`run_benchmark`."""
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pix = resolve_model(cfg.model, cfg.unet_config)
    recipes = [pix]
    notes: list[str] = []
    models = {pix.pipeline: _describe_model(pix, cfg.model)}
    if cfg.compare:
        latent = latent_counterpart(pix, cfg.vae_config)
        recipes.append(latent)
        models[latent.pipeline] = _describe_model(latent, "GenDR latent pipeline with the same UNet blocks")
        vae = cfg.vae_config or vae16_config()
        if vae != vae16_config():
            notes.append(f"latent pipeline VAE reduced to block_out_channels {vae.block_out_channels} "
                         f"(GenDR's VAE16: {vae16_config().block_out_channels}, latent {vae.latent_channels} "
                         f"channels, f{vae.downsample_factor}); ratios are for this reduced pair, not the paper models")
    taken = {r.pipeline for r in recipes}
    for spec in cfg.compare_models:
        other = compare_recipe(spec, taken)
        recipes.append(other)
        models[other.pipeline] = _describe_model(other, spec)
    if cfg.unet_config is not None:
        notes.append(f"UNet block_out_channels reduced to {cfg.unet_config.block_out_channels} (SD2.1: "
                     f"{UNetConfig().block_out_channels}) in every pipeline")
    if any(r.weights == RANDOM_WEIGHTS for r in recipes):
        notes.append("random weights: timings and memory only, outputs are meaningless")
    fresh = device.type == "cpu" and cfg.fresh_process_on_cpu
    jobs = [{"recipe": dataclasses.asdict(r), "size": list(size), "scale": cfg.scale, "guidance": cfg.guidance,
             "branch_mode": cfg.branch_mode, "device": str(device), "dtype": cfg.dtype, "repeats": cfg.repeats,
             "warmup": cfg.warmup, "threads": cfg.threads, "seed": cfg.seed, "speed": cfg.speed.to_dict(),
             "tiling": cfg.tiling, "tile_size": cfg.tile_size}
            for size in cfg.sizes for r in recipes]
    rows: list[BenchRow] = []
    by_job: dict[tuple[str, tuple[int, int]], BenchRow] = {}
    built: dict[str, tuple] = {}  # in-process: each model is built (and compiled) once for all its sizes
    for i, job in enumerate(jobs):
        logger.info("bench %s at %dx%d (%d/%d)%s", job["recipe"]["pipeline"], *job["size"], i + 1, len(jobs),
                    " in a fresh process" if fresh else "")
        if fresh:
            out = run_worker(job)
        else:
            name = job["recipe"]["pipeline"]
            with torch.no_grad():
                if job["recipe"]["kind"] != TEACHER_KIND and name not in built:
                    built[name] = build_for_job(job)
                out = measure(job, "none", built.get(name))
            if all(j["recipe"]["pipeline"] != name for j in jobs[i + 1:]):
                built.pop(name, None)  # its last size: free it before the next model is built
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(BenchRow(**out))
        by_job[(job["recipe"]["pipeline"], tuple(job["size"]))] = rows[-1]
        if progress:
            progress(i + 1, len(jobs))
    comparisons = [compare_rows(by_job[(pix.pipeline, size)], by_job[(other.pipeline, size)])
                   for other in recipes[1:] for size in dict.fromkeys(cfg.sizes)]
    return BenchResult(config=cfg.to_dict(), rows=rows, comparisons=comparisons, models=models,
                       environment=_environment(device), notes=notes,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def run_loaded(
    models: dict[str, Any],
    sizes: Sequence[tuple[int, int]],
    scale: float = 4.0,
    guidance: float = 1.0,
    *,
    branch_mode: str = "batched",
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    memory: str = "rss",
    placement: Callable[[Any, tuple[int, int]], Any] | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """The benchmark of already-loaded models (name -> restorer) in this process: one
    :func:`measure_model` row per (model, output size (width, height)), model by model, and the
    ratios of every other model against the first. ``memory`` as in :func:`measure_model` ("rss":
    this process's peak RSS on CPU). ``placement(model, size)`` is entered around each row (the
    ComfyUI node moves the model onto its device there); ``progress(done, total)`` after every
    run. What the ComfyUI Benchmark node runs; ``gendr-pix bench`` measures the same in fresh
    processes."""
    import contextlib

    sizes = [(int(w), int(h)) for w, h in sizes]
    cfg = {"models": list(models), "sizes": [list(s) for s in sizes], "scale": scale, "guidance": guidance,
           "branch_mode": branch_mode, "repeats": repeats, "warmup": warmup, "seed": seed, "memory": memory}
    total, done = len(models) * len(sizes) * (warmup + repeats), [0]

    def on_run() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    rows: list[BenchRow] = []
    for name, model in models.items():
        for size in sizes:
            with (placement(model, size) if placement else contextlib.nullcontext()), torch.no_grad():
                rows.append(measure_model(model, size, scale=scale, guidance=guidance, branch_mode=branch_mode,
                                          warmup=warmup, repeats=repeats, seed=seed, memory=memory, pipeline=name,
                                          on_run=on_run))
    first = rows[:len(sizes)]
    comparisons = [compare_rows(a, b) for i in range(1, len(models))
                   for a, b in zip(first, rows[i * len(sizes):(i + 1) * len(sizes)], strict=True)]
    device = rows[0].device if rows else "cpu"
    return BenchResult(config=cfg, rows=rows, comparisons=comparisons,
                       models={n: {"kind": m.kind, "weights": getattr(m, "source_path", None) or RANDOM_WEIGHTS,
                                   "config": m.config.to_dict()} for n, m in models.items()},
                       environment=_environment(torch.device(device)),
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def run_benchmark(
    model_spec: str = "random:gendr-pix-s",
    sizes: Sequence[tuple[int, int]] = ((512, 512), (1024, 1024)),
    scale: float = 4.0,
    guidance: float = 1.0,
    branch_mode: str = "batched",
    device: str | None = None,
    dtype: str | None = None,
    repeats: int = 3,
    warmup: int = 1,
    compare: bool = False,
    unet_config: UNetConfig | None = None,
    fresh_process_on_cpu: bool = True,
    progress: Progress | None = None,
    *,
    vae_config: VAEConfig | None = None,
    threads: int | None = None,
    seed: int = 0,
    compare_models: Sequence[str] = (),
    speed: SpeedOptions | None = None,
    tiling: str = "off",
    tile_size: int = 512,
) -> BenchResult:
    """Median/min seconds and peak memory of ``upscale(..., tiling=tiling)`` per OUTPUT size (width, height).

    ``model_spec``: a model file, a built-in name, or ``random:<preset>`` (gendr-pix-sd21,
    gendr-pix-s, tiny, gendr-sd21, dfosd-sd21, tiny-gendr). ``unet_config`` replaces the UNet
    block layout of a random preset (e.g. :func:`reduced_unet_config` for CPU runs);
    ``compare`` adds the GenDR latent pipeline (VAE ``vae_config``, default VAE16) and ratios;
    ``compare_models`` other model files (ours, or teachers through ``load_teacher``), each measured
    the same way, with ratios against the main model.
    ``speed`` (:class:`~gendr_core.pipeline.SpeedOptions`) is applied to every model of the run.
    ``tiling`` / ``tile_size``: as ``upscale``'s (default "off": the whole image); teachers ignore them.
    ``progress(done, total)`` is called after every configuration.
    """
    cfg = BenchConfig(model=model_spec, sizes=tuple(sizes), scale=scale, guidance=guidance, branch_mode=branch_mode,
                      device=device, dtype=dtype, repeats=repeats, warmup=warmup, compare=compare,
                      compare_models=tuple(compare_models),
                      unet_config=unet_config, vae_config=vae_config, fresh_process_on_cpu=fresh_process_on_cpu,
                      threads=threads, seed=seed, speed=speed or SpeedOptions(), tiling=tiling, tile_size=tile_size)
    return run_bench_config(cfg, progress)


# ----------------------------------------------------------------------------- CLI


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'512x512,3840x2160' (or '1024' for a square) -> [(512, 512), (3840, 2160)] as (width, height)."""
    sizes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        parts = item.lower().split("x")
        try:
            w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except (ValueError, IndexError):
            raise ValueError(f"--sizes item {item!r}: expected WIDTHxHEIGHT such as 3840x2160, or one side") from None
        if len(parts) > 2 or min(w, h) < 1:
            raise ValueError(f"--sizes item {item!r}: expected WIDTHxHEIGHT with positive sides")
        sizes.append((w, h))
    if not sizes:
        raise ValueError(f"--sizes {text!r}: no sizes given")
    return sizes


def _channels(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise ValueError(f"channel list {text!r}: expected comma-separated integers such as 64,128,256,256") from None


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gendr-pix bench``."""
    parser.add_argument("--model", default="random:gendr-pix-s",
                        help="model file, built-in name, or random:<preset> (" + ", ".join(RANDOM_PRESETS)
                             + "); default random:gendr-pix-s")
    parser.add_argument("--sizes", default="512x512,1024x1024",
                        help="OUTPUT sizes WIDTHxHEIGHT, comma-separated (default 512x512,1024x1024)")
    parser.add_argument("--scale", type=float, default=4.0, help="upscaling factor; input = output/scale")
    parser.add_argument("--guidance", type=float, default=1.0, help="PadCFG scale (1.0 = one pass)")
    parser.add_argument("--branch-mode", choices=("batched", "sequential"), default="batched")
    parser.add_argument("--compare", nargs="*", default=None, metavar="FILE",
                        help="with no value: also run the GenDR latent pipeline (VAE16 + same UNet blocks); with "
                             "model files: also measure each (our .safetensors models, or spandrel-loadable SR files "
                             "such as realesrgan-x4plus.safetensors, through load_teacher; 'latent' adds the latent "
                             "pipeline too); prints time and peak-memory ratios against --model")
    parser.add_argument("--unet-channels", default=None,
                        help="UNet block_out_channels for random presets, e.g. 64,128,256,256 (SD2.1 layout)")
    parser.add_argument("--vae-channels", default=None,
                        help="VAE block_out_channels of the latent pipeline (VAE16 layout), e.g. 32,32,64,128; "
                             "default: VAE16's 128,128,256,512")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true",
                        help="on CPU, run in this process (no fresh process: peak memory is not measured)")
    parser.add_argument("--out", default="bench_results", help="folder for bench_<timestamp>.json/.png")
    parser.add_argument("--tiling", default="off", choices=("off", "auto", "fixed"),
                        help="off (default): the whole image; auto: what upscale's tiling=auto picks (the row "
                             "says which); fixed: tiles of --tile-size")
    parser.add_argument("--tile-size", type=int, default=512, help="tile side in output pixels for --tiling fixed")
    speed = parser.add_argument_group("speed options (inference only; applied to every model of the run)")
    speed.add_argument("--channels-last", action="store_true", help="UNet weights in channels_last (NHWC) format")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet (the first, warm-up run at each size holds the compile time: "
                            "first_run_seconds in the JSON)")
    speed.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    speed.add_argument("--ff-chunk", type=int, default=0,
                       help="tokens per feed-forward slice at the two finest UNet levels (0 = off)")
    speed.add_argument("--attention-window", type=int, default=0,
                       help="level-1 self-attention within windows of at most N x N tokens (64 = the 512-px "
                            "training patch; 0 = full attention; changes outputs on larger images)")
    speed.add_argument("--fused-attention", action="store_true",
                       help="on CUDA, allow only flash / memory-efficient / cuDNN SDPA kernels (error instead of "
                            "the O(N^2)-memory math kernel)")


def speed_from_args(args: argparse.Namespace) -> SpeedOptions:
    """The :class:`~gendr_core.pipeline.SpeedOptions` of parsed ``gendr-pix bench`` arguments."""
    return SpeedOptions(channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
                        ff_chunk=args.ff_chunk, attention_window=args.attention_window,
                        fused_attention=args.fused_attention)


def run_bench_command(args: argparse.Namespace) -> int:
    """Run ``gendr-pix bench``: print the table, write ``<out>/bench_<timestamp>.json`` and ``.png``."""
    from tqdm.auto import tqdm

    unet_ch, vae_ch = _channels(args.unet_channels), _channels(args.vae_channels)
    compare = args.compare
    files = [c for c in (compare or []) if c != "latent"]
    latent = compare is not None and (not compare or "latent" in compare)
    for f in files:
        if not Path(f).expanduser().is_file():
            raise FileNotFoundError(f"--compare model file not found: {f}")
    bar = tqdm(total=0, unit="config", desc="bench")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    result = run_benchmark(
        args.model, parse_sizes(args.sizes), args.scale, args.guidance, args.branch_mode, args.device,
        None if args.dtype == "auto" else args.dtype, args.repeats, args.warmup, latent,
        reduced_unet_config(unet_ch) if unet_ch else None, not args.in_process, progress,
        vae_config=reduced_vae_config(vae_ch) if vae_ch else None, threads=args.threads, compare_models=files,
        speed=speed_from_args(args), tiling=args.tiling, tile_size=args.tile_size)
    bar.close()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    path_json, path_png = result.write(out / f"bench_{stamp}.json", out / f"bench_{stamp}.png")
    sys.stdout.write(result.table() + "\n")
    sys.stdout.write(f"wrote {path_json}" + (f" and {path_png}" if path_png else "") + "\n")
    return 0


def main_bench(argv: Sequence[str] | None = None) -> int:
    """Stand-alone ``python -m gendr_core.bench [args]`` (the same arguments as ``gendr-pix bench``)."""
    ap = argparse.ArgumentParser(prog="gendr-pix bench", description=__doc__.split("\n", 1)[0])
    add_bench_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return run_bench_command(args)
    except (GenDRPixError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"gendr-pix bench: error: {exc}\n")
        return 2


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        raise SystemExit(_worker_main(sys.argv[2]))
    raise SystemExit(main_bench())
