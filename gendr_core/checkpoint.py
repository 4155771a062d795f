"""Model files: one ``.safetensors`` per model with its kind and config in the metadata.

Metadata keys: ``format`` = "pt", ``gendr_pix.kind`` (gendr_pix | gendr | dfosd),
``gendr_pix.config`` (the config dataclass as JSON), ``gendr_pix.version``, and, when the file
carries a learned FixMod (GenDR-Pix Sec. A.1), ``gendr_pix.fixmod_config`` (FixModConfig as
JSON) with its tensors under the prefix ``fixmod.``. Saves are atomic (temp file +
``os.replace``); loads validate kind, configs and every tensor name and shape. Pickle files are
never loaded as models; one is read (``weights_only=True``) only to name an SD training base.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import FixModConfig, ModelConfig
from .errors import CheckpointFormatError, ConfigError
from .fileio import atomic_write
from .models.restorer import CONFIG_CLASSES, OneStepRestorer, build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
KIND_KEY = "gendr_pix.kind"
CONFIG_KEY = "gendr_pix.config"
VERSION_KEY = "gendr_pix.version"
FIXMOD_CONFIG_KEY = "gendr_pix.fixmod_config"
FIXMOD_PREFIX = "fixmod."
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The models shipped as gendr_core/assets/<name>.safetensors, in the order the ComfyUI Loader
# lists them. The first is the default of load_model(), `gendr-pix upscale --model` and
# `gendr-pix inspect`. Shipping another model = one entry here + its asset file.
# gendr-pix-s-detail: Stage II distilled from Real-ESRGAN x4plus (texture; MODEL_CARD_gendr-pix-s-detail.md);
# gendr-pix-s: the PSNR-oriented fidelity model (MODEL_CARD.md), its init and discriminator backbone.
SHIPPED_MODELS: tuple[str, ...] = ("gendr-pix-s-detail", "gendr-pix-s")
DEFAULT_MODEL = SHIPPED_MODELS[0]
BUILTIN_MODELS: dict[str, Path] = {name: ASSETS_DIR / f"{name}.safetensors" for name in SHIPPED_MODELS}
DETAIL_MODEL = "gendr-pix-s-detail"  # the generative-detail shipped model (the default)
FIDELITY_MODEL = "gendr-pix-s"  # the PSNR-oriented shipped model (and the Stage II D backbone)
_OWN_KEYS = (KIND_KEY, CONFIG_KEY, VERSION_KEY, FIXMOD_CONFIG_KEY)


def save_model(
    model: OneStepRestorer,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` (with its learned FixMod, if attached) atomically: an interrupted save
    leaves any old file untouched. ``dtype`` casts floating tensors (e.g. torch.float16);
    ``metadata`` adds string entries, but never the kind/config/FixMod keys, which come from the model."""
    path = Path(path)
    own = sorted(set(metadata or {}) & set(_OWN_KEYS))
    if own:
        raise ValueError(f"save_model({path}): metadata keys {own} are written from the model itself; drop them")
    sd = {k: v.detach().to("cpu", dtype=dtype if dtype and v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    meta = {"format": "pt", KIND_KEY: model.kind, CONFIG_KEY: model.config.to_json(), VERSION_KEY: FORMAT_VERSION}
    fixmod = getattr(model, "fixmod", None)
    if fixmod is not None:
        meta[FIXMOD_CONFIG_KEY] = fixmod.config.to_json()
    meta.update(metadata or {})
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    logger.info("saved %s model%s to %s", model.kind, " + FixMod" if fixmod is not None else "", path)
    return path


def read_fixmod_config(path: str | os.PathLike, meta: dict[str, str]) -> FixModConfig | None:
    """The FixModConfig in a model file's metadata (from :func:`read_header`), or None without one."""
    if FIXMOD_CONFIG_KEY not in meta:
        return None
    try:
        return FixModConfig.from_json(meta[FIXMOD_CONFIG_KEY], where=f"{path}: '{FIXMOD_CONFIG_KEY}'")
    except ConfigError as exc:
        raise CheckpointFormatError(str(exc)) from None


SD_LDM_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"  # an SD single file (formats.FORMAT_KEYS)


def read_header(path: str | os.PathLike) -> tuple[str, ModelConfig, dict[str, str]]:
    """(kind, config, metadata) of a GenDR-Pix model file, without loading its tensors."""
    path = Path(path)
    meta = _metadata(path)
    if KIND_KEY not in meta or CONFIG_KEY not in meta:
        with safe_open(str(path), framework="pt") as f:
            is_sd2_base = SD_LDM_UNET_KEY in set(f.keys())
        if is_sd2_base:
            raise _training_base_error(path)
        raise CheckpointFormatError(
            f"{path}: no '{KIND_KEY}'/'{CONFIG_KEY}' in the safetensors metadata; this is not a "
            "GenDR-Pix model file. Re-export it with `python -m trainers.export`, or convert a "
            "Stable Diffusion 2.1 checkpoint with `gendr-pix convert`"
        )
    kind = meta[KIND_KEY]
    if kind not in CONFIG_CLASSES:
        raise CheckpointFormatError(f"{path}: '{KIND_KEY}' is {kind!r}; expected one of {sorted(CONFIG_CLASSES)}")
    try:
        config = CONFIG_CLASSES[kind].from_json(meta[CONFIG_KEY], where=f"{path}: '{CONFIG_KEY}'")
    except ConfigError as exc:
        raise CheckpointFormatError(str(exc)) from None
    return kind, config, meta


def _metadata(path: Path) -> dict[str, str]:
    _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: not a readable .safetensors file ({exc}); the file may be truncated "
                                    "or corrupt, download or export it again") from None


def _training_base_error(path: Path) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"{path}: is a Stable Diffusion single-file checkpoint (LDM keys), a training base, not a "
        "restorer; train restorers from it with `python -m trainers.recipe --config "
        "trainers/configs/recipe_paper.json --out DIR` (sd21_base), see trainers/README.md")


def _is_sd_pickle(path: Path) -> bool:
    """True for a pickle holding an SD single file; read with weights_only=True (memory-mapped)."""
    from .formats import read_state_dict  # lazy: formats imports this module

    try:
        return SD_LDM_UNET_KEY in read_state_dict(path)
    except CheckpointFormatError:
        return False


def _check_path(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if path.is_file() and _is_sd_pickle(path):
            raise _training_base_error(path)
        raise CheckpointFormatError(
            f"{path}: pickle checkpoints ({path.suffix}) are never loaded as models because unpickling can run "
            "arbitrary code. Convert it once with `gendr-pix convert "
            f"{path.name} -o {path.stem}.safetensors` (reads tensors only, weights_only=True)"
        )
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointFormatError(f"{path}: is a folder; pass a .safetensors file (diffusers folders: "
                                    "use `gendr-pix convert`)")


def check_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``, or one ConfigError line when this machine lacks it.

    Checked before any file is read: a device string torch does not know ('gpu'), CUDA on a
    CPU-only build or with no GPU visible, and a CUDA index past the last GPU. ``name`` is how
    the caller's user spells the option (``device`` for the API, ``--device`` for a CLI flag).
    """
    flag = name.startswith("--")
    said = f"{name} {device}" if flag else f"{name}={str(device)!r}"
    cpu = f"{name} cpu" if flag else "'cpu'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{said} is not a device; use " + (f"{name} cpu, {name} cuda or {name} cuda:N" if flag
                                                            else "'cpu', 'cuda' or 'cuda:N'")) from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        build = ("a CPU-only build" if torch.version.cuda is None
                 else f"built for CUDA {torch.version.cuda}, but no GPU is visible")
        raise ConfigError(f"{said}: no CUDA device is available (torch {torch.__version__} is {build}); "
                          f"use {cpu}, or install a CUDA build of PyTorch")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"{said}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return dev


def physical_cores(cpuinfo: str | None = None) -> int | None:
    """Physical cores listed in /proc/cpuinfo (distinct (physical id, core id) pairs), or None
    where that file is absent or names none (other systems, some VMs)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    cores, phys = set(), "0"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def default_threads() -> int:
    """CPU threads for inference: the physical cores this process may run on, i.e. the smaller of
    the physical core count and the CPUs of its affinity mask (a container or ``taskset`` limit);
    hyper-threads only slow the convolutions down. Falls back to the affinity count."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores = physical_cores()
    return max(1, min(allowed, cores) if cores else allowed)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), as PyTorch's own CPU
    probes report it; False where the probes are missing (older torch builds) or fail."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype of ``dtype="auto"``: the measured-fastest one that keeps the output.

    * GPU: bf16 where supported (SD2.x attention is unstable in fp16), else fp16.
    * CPU with native bf16 (:func:`cpu_has_native_bf16`): bf16. On this project's 2-core
      AVX512-BF16 machines it is 2.05x faster than fp32 at 256^2 -> 1024^2 and changes PSNR-Y on the
      43-image dev set by -0.002 dB (gendr-pix-s) and +0.001 dB (gendr-pix-s-detail v7; v4: +0.004),
      far inside the 0.05 dB allowed (``bench/cpu_2026-12-04/``).
    * Any other CPU: fp32 (fp16 and emulated bf16 run many times slower there).
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def warn_slow_dtype(device: torch.device, dtype: torch.dtype) -> str | None:
    """A warning line (also logged) when ``dtype`` is an emulated, slow one on this CPU, else None."""
    if device.type != "cpu" or dtype == torch.float32:
        return None
    if dtype == torch.bfloat16 and cpu_has_native_bf16():
        return None
    name = str(dtype).replace("torch.", "")
    line = (f"dtype {name} on this CPU is emulated and runs many times slower than fp32 "
            f"(measured up to 20x); use dtype 'auto' ({str(default_dtype(device)).replace('torch.', '')} here)")
    logger.warning(line)
    return line


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """A shipped model name (None: :data:`DEFAULT_MODEL`) or a file path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    if str(name_or_path) in BUILTIN_MODELS:
        p = BUILTIN_MODELS[str(name_or_path)]
        if not p.exists():
            raise FileNotFoundError(
                f"built-in model {name_or_path!r} is missing from {p}; reinstall the package or "
                "train/export one with trainers/train_pixel.py and trainers/export.py"
            )
        return p
    return Path(name_or_path).expanduser()


def load_state_dict(path: Path, expected: dict[str, torch.Size],
                    skip_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read tensors and check names/shapes against ``expected`` with actionable messages.

    Tensors whose names start with one of ``skip_prefixes`` are neither read nor reported, e.g.
    ``(FIXMOD_PREFIX,)`` reads the restorer of a file that also carries a learned FixMod.
    """
    with safe_open(str(path), framework="pt") as f:
        keys = {k for k in f.keys() if not k.startswith(skip_prefixes)} if skip_prefixes else set(f.keys())
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        if missing:
            raise CheckpointFormatError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                                        f"({len(missing)} in all) required by its config")
        reads_fixmod = any(k.startswith(FIXMOD_PREFIX) for k in expected)
        if unexpected and not reads_fixmod and all(k.startswith(FIXMOD_PREFIX) for k in unexpected):
            has_cfg = FIXMOD_CONFIG_KEY in (f.metadata() or {})
            raise CheckpointFormatError(
                f"{path}: tensor(s) {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} belong to a learned FixMod "
                + ("that this reader does not build; read the restorer alone with "
                   f"skip_prefixes=('{FIXMOD_PREFIX}',), or load the whole file with load_model()" if has_cfg else
                   f"but the metadata has no '{FIXMOD_CONFIG_KEY}'; re-save the file with save_model()"))
        if unexpected:
            raise CheckpointFormatError(f"{path}: unexpected tensor(s) {unexpected[:5]} not used by its config")
        sd = {}
        for k in expected:
            t = f.get_tensor(k)
            if t.shape != expected[k]:
                raise CheckpointFormatError(
                    f"{path}: tensor '{k}' has shape {tuple(t.shape)}, expected {tuple(expected[k])} from its config"
                )
            sd[k] = t
    return sd


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> OneStepRestorer:
    """Load a GenDR-Pix / GenDR / DFOSD model file (default: :data:`DEFAULT_MODEL`, shipped).

    A file with a learned FixMod (``gendr_pix.fixmod_config`` + ``fixmod.*`` tensors) gets it
    attached as ``model.fixmod``; without one ``model.fixmod`` is None. ``device`` defaults to
    CUDA when available, and a device this machine lacks is refused by :func:`check_device`
    before the file is read; ``dtype`` defaults to :func:`default_dtype`.
    """
    dev = check_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_model_path(name_or_path)
    kind, config, meta = read_header(path)
    fixmod_config = read_fixmod_config(path, meta)
    dt = parse_dtype(dtype) or default_dtype(dev)
    warn_slow_dtype(dev, dt)
    with torch.device("meta"):
        model = build_model(config)
        if fixmod_config is not None:
            model.attach_fixmod(fixmod_config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    sd = load_state_dict(path, expected)
    model.load_state_dict(sd, assign=True)
    model.to(device=dev, dtype=dt).eval().requires_grad_(False)
    model.source_path = str(path)  # type: ignore[attr-defined]
    model.metadata = meta  # type: ignore[attr-defined]
    logger.info("loaded %s model%s from %s (%s, %s)", kind, " + FixMod" if fixmod_config else "", path, dev, dt)
    return model


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """None/'auto' -> None; 'fp16'/'bf16'/'fp32' (or a torch.dtype) -> torch.dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def describe(model: OneStepRestorer) -> dict[str, Any]:
    """Summary used by ``gendr-pix inspect``; ``parameters`` counts the FixMod too, ``fixmod`` is
    None for a model without a learned FixMod (the wavelet color fix needs no weights)."""
    fixmod = getattr(model, "fixmod", None)
    return {
        "kind": model.kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
        "fixmod": None if fixmod is None else {"parameters": sum(p.numel() for p in fixmod.parameters()),
                                               "config": json.loads(fixmod.config.to_json())},
        "dtype": str(model.dtype).replace("torch.", ""),
        "pad_multiple": model.pad_multiple,
        "prompt_embeddings": {"positive": list(model.prompt_pos.shape), "negative": list(model.prompt_neg.shape)},
        "config": json.loads(model.config.to_json()),
    }
