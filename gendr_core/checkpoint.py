"""Model files: one ``.safetensors`` per model with its kind and config in the metadata.

Metadata keys: ``format`` = "pt", ``gendr_pix.kind`` (gendr_pix | gendr | dfosd),
``gendr_pix.config`` (the config dataclass as JSON), ``gendr_pix.version``. Saves are atomic
(temp file + ``os.replace``); loads validate kind, config and every tensor shape. Pickle
files are never unpickled here.
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

from .config import ModelConfig
from .errors import CheckpointFormatError, ConfigError
from .fileio import atomic_write
from .models.restorer import CONFIG_CLASSES, OneStepRestorer, build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
KIND_KEY = "gendr_pix.kind"
CONFIG_KEY = "gendr_pix.config"
VERSION_KEY = "gendr_pix.version"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL_NAME = "gendr-pix-s"
BUILTIN_MODELS = {DEFAULT_MODEL_NAME: ASSETS_DIR / "gendr-pix-s.safetensors"}


def save_model(
    model: OneStepRestorer,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` atomically: an interrupted save leaves any old file untouched."""
    path = Path(path)
    sd = {k: v.detach().to("cpu", dtype=dtype if dtype and v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    meta = {"format": "pt", KIND_KEY: model.kind, CONFIG_KEY: model.config.to_json(), VERSION_KEY: FORMAT_VERSION}
    meta.update(metadata or {})
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    logger.info("saved %s model to %s", model.kind, path)
    return path


def read_header(path: str | os.PathLike) -> tuple[str, ModelConfig, dict[str, str]]:
    """(kind, config, metadata) of a GenDR-Pix model file, without loading its tensors."""
    path = Path(path)
    meta = _metadata(path)
    if KIND_KEY not in meta or CONFIG_KEY not in meta:
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


def _check_path(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
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


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on GPUs that support it (SD2.x attention is unstable in fp16)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """A built-in model name (default ``gendr-pix-s``) or a file path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL_NAME
    if str(name_or_path) in BUILTIN_MODELS:
        p = BUILTIN_MODELS[str(name_or_path)]
        if not p.exists():
            raise FileNotFoundError(
                f"built-in model {name_or_path!r} is missing from {p}; reinstall the package or "
                "train/export one with trainers/train_pixel.py and trainers/export.py"
            )
        return p
    return Path(name_or_path).expanduser()


def load_state_dict(path: Path, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Read tensors and check names/shapes against ``expected`` with actionable messages."""
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        if missing:
            raise CheckpointFormatError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                                        f"({len(missing)} in all) required by its config")
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
    """Load a GenDR-Pix / GenDR / DFOSD model file (default: the shipped ``gendr-pix-s``).

    ``device`` defaults to CUDA when available; ``dtype`` to :func:`default_dtype`.
    """
    path = resolve_model_path(name_or_path)
    kind, config, meta = read_header(path)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = parse_dtype(dtype) or default_dtype(dev)
    with torch.device("meta"):
        model = build_model(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    sd = load_state_dict(path, expected)
    model.load_state_dict(sd, assign=True)
    model.to(device=dev, dtype=dt).eval().requires_grad_(False)
    model.source_path = str(path)  # type: ignore[attr-defined]
    model.metadata = meta  # type: ignore[attr-defined]
    logger.info("loaded %s model from %s (%s, %s)", kind, path, dev, dt)
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
    """Summary used by ``gendr-pix inspect``."""
    return {
        "kind": model.kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
        "dtype": str(model.dtype).replace("torch.", ""),
        "pad_multiple": model.pad_multiple,
        "prompt_embeddings": {"positive": list(model.prompt_pos.shape), "negative": list(model.prompt_neg.shape)},
        "config": json.loads(model.config.to_json()),
    }
