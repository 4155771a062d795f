"""Accept the weight formats users already have: SD2.x single files, diffusers UNets and folders.

``detect_format`` names the format from explicit keys (one function, an enum result).
``sd21_ldm_to_diffusers`` maps an original-layout (LDM) Stable Diffusion 2.x checkpoint to
diffusers key names with diffusers' own converters (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``), driven by our local SD2.1 configs: nothing is looked up on the
Hub. ``convert_to_model`` writes a GenDR-Pix model file; ``build_converted`` builds it in memory.
Pickle files (``.ckpt``/``.pt``/``.pth``/``.bin``) are read only with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers, never code.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import logging
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import CONFIG_KEY, KIND_KEY, PICKLE_SUFFIXES, SD_LDM_UNET_KEY, parse_dtype, save_model
from .config import (
    DFOSDConfig,
    GenDRConfig,
    GenDRPixConfig,
    ModelConfig,
    UNetConfig,
    VAEConfig,
)
from .errors import CheckpointFormatError, ConfigError, GenDRPixError
from .fileio import atomic_write
from .models.restorer import OneStepRestorer, build_model

logger = logging.getLogger(__name__)

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
KINDS = ("dfosd", "gendr_pix", "gendr")

# The keys each format is recognised by (all must be present).
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "GENDR_PIX": ("prompt_pos", "unet.conv_in.weight"),
    "SD21_LDM": (SD_LDM_UNET_KEY,),
    "DIFFUSERS_UNET": ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"),
}
FOLDER_MARKERS = ("model_index.json", "unet/config.json", "config.json (with _class_name UNet2DConditionModel)")
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


# Keys (exact, or a prefix ending in ".") that only other Stable Diffusion generations carry; a
# single file holding one is named and refused instead of being read as SD2.x.
OTHER_SD_KEYS: dict[str, tuple[str, ...]] = {
    "SDXL": ("conditioner.embedders.", LDM_UNET_PREFIX + "label_emb.0.0.weight"),
    "SD1.x (SD1.5)": ("cond_stage_model.transformer.",),  # CLIP ViT-L (HF layout); SD2.x has OpenCLIP
}
# The first cross-attention key of each UNet layout: its weight is (inner, context dim), and the
# context dim is the text encoder's width. A UNet-only file has no text-encoder key to go by.
CONTEXT_KEYS = (
    LDM_UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",  # SD single file
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",  # LDM UNet alone (ComfyUI models/unet)
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",  # diffusers UNet
)
SD1_CONTEXT_DIM = 768  # CLIP ViT-L/14 (SD1.x)
SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H/14 (SD2.x)
SUPPORTED = "only Stable Diffusion 2.x (SD2.1) single files and diffusers folders are supported"


def reject_other_sd(keys: Iterable[str], where: str, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raise CheckpointFormatError naming the generation when ``keys`` are an SDXL or SD1.x file.

    ``shapes`` (tensor shapes by key) also catches an SD1.x UNet alone by its 768-wide context.
    """
    keys = set(keys)
    for name, marks in OTHER_SD_KEYS.items():
        hit = next((k for k in sorted(keys) if any(k == m or (m.endswith(".") and k.startswith(m)) for m in marks)),
                   None)
        if hit is not None:
            raise CheckpointFormatError(f"{where}: this is an {name} checkpoint (it has {hit!r}); {SUPPORTED}")
    for key in CONTEXT_KEYS:
        shape = (shapes or {}).get(key)
        if shape is not None and len(shape) == 2 and shape[1] == SD1_CONTEXT_DIM:
            raise CheckpointFormatError(
                f"{where}: this is an SD1.x (SD1.5) UNet, not SD2.1: {key!r} has shape {tuple(shape)}, a "
                f"{SD1_CONTEXT_DIM}-wide text context (SD2.1's is {SD2_CONTEXT_DIM}); {SUPPORTED}")


class CheckpointFormat(enum.Enum):
    GENDR_PIX = "gendr_pix"  # our .safetensors model file (kind + config in the metadata)
    SD21_LDM = "sd21_ldm"  # single-file Stable Diffusion 2.x checkpoint (ComfyUI models/checkpoints)
    DIFFUSERS_UNET = "diffusers_unet"  # a diffusers UNet2DConditionModel state dict in one file
    DIFFUSERS_FOLDER = "diffusers_folder"  # a diffusers pipeline folder, or a folder holding one UNet


# ----------------------------------------------------------------------------- detection


def _folder_kind(path: Path) -> bool:
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        return True
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("_class_name") == "UNet2DConditionModel"
        except (json.JSONDecodeError, OSError, AttributeError):
            return False
    return False


def detect_format(
    source: str | os.PathLike | Mapping[str, Any] | Iterable[str], where: str | None = None
) -> CheckpointFormat:
    """The format of a file, folder, state dict or set of state-dict keys.

    Checks, in order: a folder with ``model_index.json`` / ``unet/config.json`` (or a UNet's own
    ``config.json``) -> DIFFUSERS_FOLDER; GenDR-Pix metadata or keys ``prompt_pos`` +
    ``unet.conv_in.weight`` -> GENDR_PIX; ``model.diffusion_model.input_blocks.0.0.weight`` ->
    SD21_LDM; ``conv_in.weight`` + ``down_blocks.0.resnets.0.conv1.weight`` -> DIFFUSERS_UNET.
    SDXL and SD1.x files are refused by name (keys, and for files and state dicts the context
    width of :data:`CONTEXT_KEYS`). ``where`` names the source in errors (default: its path).
    """
    shapes: dict[str, tuple[int, ...]] | None = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        where = where or str(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.is_dir():
            if _folder_kind(path):
                return CheckpointFormat.DIFFUSERS_FOLDER
            raise CheckpointFormatError(
                f"{path}: folder is not a diffusers model; looked for {', '.join(FOLDER_MARKERS)}"
            )
        if path.suffix.lower() == ".safetensors":
            meta, shapes = _safetensors_header(path)
            if KIND_KEY in meta and CONFIG_KEY in meta:
                return CheckpointFormat.GENDR_PIX
        else:
            shapes = {k: tuple(v.shape) for k, v in read_state_dict(path).items()}
        keys = set(shapes)
    elif isinstance(source, Mapping):
        keys = set(source)
        shapes = {k: tuple(v.shape) for k, v in source.items() if isinstance(v, Tensor)}
    else:
        keys = set(source)
    where = where or "state dict"
    reject_other_sd(keys, where, shapes)
    for name, needed in FORMAT_KEYS.items():
        if all(k in keys for k in needed):
            return CheckpointFormat[name]
    looked = "; ".join(f"{name}: {' + '.join(needed)}" for name, needed in FORMAT_KEYS.items())
    sample = sorted(keys)[:5]
    raise CheckpointFormatError(
        f"{where}: unknown checkpoint format. Looked for the keys {looked} (or a diffusers folder with "
        f"{', '.join(FOLDER_MARKERS)}); found {len(keys)} keys such as {sample}"
    )


def _safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, shape of every tensor) from the file's header; no tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: not a readable .safetensors file ({exc})") from None


def read_state_dict(path: str | os.PathLike, prefixes: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a pickle read with ``weights_only=True`` only.

    ``prefixes``: keep only keys that start with one of them (a safetensors file then reads only
    those tensors, e.g. skipping the text encoder of an SD checkpoint). A ``state_dict`` wrapper
    (Lightning ``.ckpt``) is unwrapped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    keep = (lambda k: k.startswith(prefixes)) if prefixes else (lambda k: True)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        _safetensors_header(path)  # readable-file check with a clear message
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        raise CheckpointFormatError(
            f"{path}: unsupported file type {path.suffix!r}; expected .safetensors or one of "
            f"{', '.join(PICKLE_SUFFIXES)}"
        )
    try:
        # zip-format files (torch >= 1.6) are memory-mapped: a key check reads no tensor data
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported with the path
        raise CheckpointFormatError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); only plain tensor state dicts "
            "are accepted from pickle files. Use the model's .safetensors release instead"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor) and keep(k)}


# ----------------------------------------------------------------------------- SD2.x single file (LDM)


def ldm_unet_config(sd: Mapping[str, Tensor], base: UNetConfig | None = None) -> UNetConfig:
    """``base`` (default: SD2.1) with in/out channels read from the LDM ``conv_in``/``out.2`` shapes.

    The rest of the layout (head counts in particular) cannot be deduced from the tensors and
    is taken from ``base``; a wrong base shows up as a shape error on load.
    """
    base = base or UNetConfig()
    try:
        c_in = sd[LDM_UNET_PREFIX + "input_blocks.0.0.weight"].shape[1]
        c_out = sd[LDM_UNET_PREFIX + "out.2.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointFormatError(f"SD2.x checkpoint lacks the UNet tensor {exc}") from None
    return base.replace(in_channels=int(c_in), out_channels=int(c_out))


def sd21_ldm_to_diffusers(
    sd: Mapping[str, Tensor],
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(unet_sd, vae_sd) in diffusers key names from an SD2.x single-file state dict.

    Uses diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` with our
    local configs (default: SD2.1-base UNet with the file's in/out channels, SD2.1 VAE), so no
    config is fetched. ``vae_sd`` is empty when the file holds no ``first_stage_model.*``.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet_config = unet_config or ldm_unet_config(sd)
    vae_config = vae_config or VAEConfig()
    unet_sd = convert_ldm_unet_checkpoint(dict(sd), dict(unet_config.diffusers_kwargs()))
    has_vae = any(k.startswith(LDM_VAE_PREFIXES) for k in sd)
    vae_sd = convert_ldm_vae_checkpoint(dict(sd), dict(vae_config.diffusers_kwargs())) if has_vae else {}
    _warn_if_v_prediction(sd)
    return dict(unet_sd), dict(vae_sd)


def _warn_if_v_prediction(sd: Mapping[str, Tensor]) -> None:
    # ComfyUI's heuristic (comfy/model_detection.py): v-prediction SD2 models (768-v) have a
    # large spread in this norm bias. The one-step formulas here assume epsilon prediction.
    key = LDM_UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if key in sd and float(sd[key].float().std()) > 0.09:
        logger.warning("this SD2.x checkpoint looks v-prediction (e.g. the 768-v model); DFOSD/GenDR assume "
                       "epsilon prediction (SD2.1-base, 512 px), so results need fine-tuning first")


# ----------------------------------------------------------------------------- diffusers folders


@dataclass
class SourceWeights:
    """A UNet (and optionally a VAE) in diffusers key names with our configs."""

    unet_config: UNetConfig
    unet_sd: dict[str, Tensor]
    vae_config: VAEConfig | None = None
    vae_sd: dict[str, Tensor] | None = None


# Config keys diffusers accepts that do not change the weights or the inference maths here.
_HARMLESS_KEYS = {"dropout", "force_upcast"}
_NULLABLE_KEYS = {"mid_block_type", "shift_factor"}


def _config_from_diffusers(
    cls: type[UNetConfig] | type[VAEConfig], data: Mapping[str, Any], diffusers_cls: type, where: str
) -> UNetConfig | VAEConfig:
    """Our config from a diffusers ``config.json``; errors name keys whose values we cannot honour."""
    ours = {f.name for f in fields(cls)}
    # null means "diffusers' default" except where null itself is the setting
    kwargs = {k: data[k] for k in ours if k in data and (data[k] is not None or k in _NULLABLE_KEYS)}
    n = len(data.get("block_out_channels", ()))
    if cls is UNetConfig and isinstance(kwargs.get("attention_head_dim"), int) and n:
        kwargs["attention_head_dim"] = [kwargs["attention_head_dim"]] * n  # one value for every level
    try:
        cfg = cls.from_dict(kwargs, where=where)
    except ConfigError as exc:
        raise CheckpointFormatError(str(exc)) from None
    derived = cfg.diffusers_kwargs()
    defaults = {k: p.default for k, p in inspect.signature(diffusers_cls.__init__).parameters.items()}
    bad = []
    for key, value in data.items():
        if key.startswith("_") or key in ours or key in _HARMLESS_KEYS:
            continue
        norm = tuple(value) if isinstance(value, list) else value
        if key in derived:
            ref = derived[key]
        elif key in defaults:
            ref = defaults[key]
        else:
            logger.debug("%s: ignoring config key %r unknown to diffusers", where, key)
            continue
        ref = tuple(ref) if isinstance(ref, list) else ref
        if norm != ref:
            bad.append(f"{key}={value!r} (supported: {ref!r})")
    if bad:
        raise CheckpointFormatError(f"{where}: unsupported value(s) {'; '.join(bad)}")
    return cfg


def unet_config_from_diffusers(data: Mapping[str, Any], where: str = "unet config") -> UNetConfig:
    """Our UNetConfig from a diffusers ``UNet2DConditionModel`` config dict."""
    from diffusers import UNet2DConditionModel

    return _config_from_diffusers(UNetConfig, data, UNet2DConditionModel, where)  # type: ignore[return-value]


def vae_config_from_diffusers(data: Mapping[str, Any], where: str = "vae config") -> VAEConfig:
    """Our VAEConfig from a diffusers ``AutoencoderKL`` config dict."""
    from diffusers import AutoencoderKL

    return _config_from_diffusers(VAEConfig, data, AutoencoderKL, where)  # type: ignore[return-value]


def _weights_in(folder: Path) -> dict[str, Tensor]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():  # sharded save_pretrained output
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for name in files:
            sd.update(read_state_dict(folder / name))
        return sd
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    raise FileNotFoundError(f"{folder}: no weights file; looked for {', '.join(WEIGHT_NAMES)} "
                            "and diffusion_pytorch_model.safetensors.index.json")


def _load_component(folder: Path, what: str) -> tuple[UNetConfig | VAEConfig, dict[str, Tensor]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json for the {what}")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{cfg_path}: invalid JSON ({exc})") from None
    cls, dcls = (UNetConfig, UNet2DConditionModel) if what == "unet" else (VAEConfig, AutoencoderKL)
    expected_class = dcls.__name__
    if data.get("_class_name", expected_class) != expected_class:
        raise CheckpointFormatError(f"{cfg_path}: _class_name is {data['_class_name']!r}, expected {expected_class!r}")
    return _config_from_diffusers(cls, data, dcls, str(cfg_path)), _weights_in(folder)


def load_diffusers_folder(path: str | os.PathLike, with_vae: bool = True) -> SourceWeights:
    """UNet (``unet/``) and optional VAE (``vae/``) of a diffusers folder, or a bare UNet folder.

    Configs are read from the folder's ``config.json`` files; keys that change the
    architecture away from what we build are errors that name them.
    """
    path = Path(path).expanduser()
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise CheckpointFormatError(f"{path}: no unet/config.json (or UNet config.json) in this diffusers folder")
    unet_cfg, unet_sd = _load_component(unet_dir, "unet")
    vae_cfg = vae_sd = None
    if with_vae and (path / "vae" / "config.json").is_file():
        vae_cfg, vae_sd = _load_component(path / "vae", "vae")
    return SourceWeights(unet_cfg, unet_sd, vae_cfg, vae_sd)  # type: ignore[arg-type]


def diffusers_unet_config(sd: Mapping[str, Tensor], base: UNetConfig | None = None) -> UNetConfig:
    """``base`` (default SD2.1) with in/out channels read from a diffusers UNet's conv shapes."""
    base = base or UNetConfig()
    c_in, c_out = int(sd["conv_in.weight"].shape[1]), int(sd["conv_out.weight"].shape[0])
    return base.replace(in_channels=c_in, out_channels=c_out)


def read_source(
    path: str | os.PathLike, unet_config: UNetConfig | None = None, vae_config: VAEConfig | None = None
) -> tuple[CheckpointFormat, SourceWeights]:
    """Any supported non-GenDR-Pix source as diffusers-named weights plus configs."""
    path = Path(path).expanduser()
    loaded = None
    if path.is_file() and path.suffix.lower() != ".safetensors":
        loaded = read_state_dict(path)  # a pickle is read once (weights_only), then its keys are checked
        fmt = detect_format(loaded, where=str(path))
    else:
        fmt = detect_format(path)
    if fmt is CheckpointFormat.GENDR_PIX:
        raise CheckpointFormatError(f"{path}: is already a GenDR-Pix model file; load it with load_model")
    if fmt is CheckpointFormat.DIFFUSERS_FOLDER:
        src = load_diffusers_folder(path)
        if unet_config is not None:
            src.unet_config = unet_config
        if vae_config is not None and src.vae_sd is not None:
            src.vae_config = vae_config
        return fmt, src
    if fmt is CheckpointFormat.SD21_LDM:
        prefixes = (LDM_UNET_PREFIX, *LDM_VAE_PREFIXES)
        sd = ({k: v for k, v in loaded.items() if k.startswith(prefixes)} if loaded is not None
              else read_state_dict(path, prefixes=prefixes))
        ucfg = ldm_unet_config(sd, unet_config)
        vcfg = vae_config or VAEConfig()
        unet_sd, vae_sd = sd21_ldm_to_diffusers(sd, ucfg, vcfg)
        return fmt, SourceWeights(ucfg, unet_sd, vcfg if vae_sd else None, vae_sd or None)
    sd = loaded if loaded is not None else read_state_dict(path)
    return fmt, SourceWeights(diffusers_unet_config(sd, unet_config), sd)


# ----------------------------------------------------------------------------- building our models


def check_tensors(sd: Mapping[str, Tensor], expected: Mapping[str, torch.Size], where: str, hint: str = "") -> None:
    """Missing, unexpected and wrongly shaped tensors, named in one error."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"'{k}' {tuple(sd[k].shape)} vs {tuple(expected[k])}" for k in expected
             if k in sd and sd[k].shape != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) (file vs config), e.g. {wrong[:3]}")
        if missing:
            parts.append(f"{len(missing)} missing tensor(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
        raise CheckpointFormatError(f"{where}: {'; '.join(parts)}{hint}")


def _build_diffusers(kind: str, cfg: UNetConfig | VAEConfig, sd: dict[str, Tensor], where: str) -> torch.nn.Module:
    from .models.unet import build_unet, build_vae

    with torch.device("meta"):
        module = build_unet(cfg) if kind == "unet" else build_vae(cfg)  # type: ignore[arg-type]
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_tensors(sd, expected, where, " -- is this a Stable Diffusion 2.x (not 1.x / XL) model? Other layouts "
                                       "need a diffusers folder whose config.json describes them")
    module.load_state_dict(sd, assign=True, strict=True)
    return module


def read_prompt_embeds(path: str | os.PathLike, dim: int) -> tuple[Tensor, Tensor | None]:
    """(positive, negative or None) as (1, tokens, dim) from a ``.safetensors`` file.

    Keys: ``prompt_pos``/``prompt_neg`` (our names), ``positive``/``negative``, or one tensor.
    """
    path = Path(path).expanduser()
    sd = read_state_dict(path)
    pos = sd.get("prompt_pos", sd.get("positive"))
    neg = sd.get("prompt_neg", sd.get("negative"))
    if pos is None and len(sd) == 1:
        pos = next(iter(sd.values()))
    if pos is None:
        raise CheckpointFormatError(f"{path}: no prompt embedding; expected keys prompt_pos[/prompt_neg], "
                                    f"positive[/negative] or a single tensor, found {sorted(sd)[:5]}")
    out = []
    for name, t in (("positive", pos), ("negative", neg)):
        if t is None:
            out.append(None)
            continue
        given = tuple(t.shape)
        t = t[None] if t.ndim == 2 else t
        if t.ndim != 3 or t.shape[0] != 1 or t.shape[-1] != dim:
            raise CheckpointFormatError(f"{path}: {name} embedding has shape {given}; expected "
                                        f"(1, tokens, {dim}) or (tokens, {dim}) for this UNet")
        out.append(t)
    if out[1] is not None and out[1].shape != out[0].shape:
        raise CheckpointFormatError(f"{path}: positive {tuple(out[0].shape)} and negative {tuple(out[1].shape)} "
                                    "embeddings differ in shape")
    return out[0], out[1]


def build_converted(
    src_path: str | os.PathLike,
    kind: str = "dfosd",
    *,
    prompt_embeds: str | os.PathLike | None = None,
    vae_path: str | os.PathLike | None = None,
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
) -> OneStepRestorer:
    """A GenDR-Pix / GenDR / DFOSD model on CPU, initialised from an SD2.x or diffusers source.

    kind "dfosd": the source VAE + UNet as they are (DFOSD architecture); "gendr_pix": the
    UNet with conv_in/conv_out widened to 3*8*8 = 192 channels by ``widen_io`` (the GenDR-Pix
    initialisation), no VAE; "gendr": the UNet widened to 16 channels when needed plus a
    16-channel VAE (from the source or ``vae_path``). Prompt embeddings are zeros unless
    ``prompt_embeds`` is given.
    """
    from .models.unet import widen_io

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
    src_path = Path(src_path).expanduser()
    fmt, src = read_source(src_path, unet_config, vae_config)
    unet = _build_diffusers("unet", src.unet_config, src.unet_sd, f"{src_path} (UNet)")
    src_dtype = unet.conv_in.weight.dtype
    ucfg = src.unet_config
    vae = None
    vcfg = src.vae_config
    if vae_path is not None and kind != "gendr_pix":
        vp = Path(vae_path).expanduser()
        vcfg, vsd = _load_component(vp / "vae" if (vp / "vae" / "config.json").is_file() else vp, "vae")
        vae = _build_diffusers("vae", vcfg, vsd, f"{vp} (VAE)")
    elif src.vae_sd and kind != "gendr_pix":
        vae = _build_diffusers("vae", vcfg, src.vae_sd, f"{src_path} (VAE)")  # type: ignore[arg-type]

    if kind == "gendr_pix":
        channels = 3 * 8 * 8
        if ucfg.in_channels != channels or ucfg.out_channels != channels:
            widen_io(unet, channels)
        ucfg = ucfg.replace(in_channels=channels, out_channels=channels)
        config: ModelConfig = GenDRPixConfig(unet=ucfg)
    else:
        if vae is None or vcfg is None:
            need = "a 16-channel VAE (--vae DIR)" if kind == "gendr" else "a VAE (first_stage_model.* or vae/)"
            raise CheckpointFormatError(f"{src_path} ({fmt.value}): kind={kind!r} needs {need}; this source has none")
        if kind == "gendr" and vcfg.latent_channels != 16:
            raise CheckpointFormatError(f"kind='gendr' needs a 16-channel VAE (e.g. ostris/vae-kl-f8-d16 as a "
                                        f"diffusers folder via --vae); this one has {vcfg.latent_channels}")
        lat = vcfg.latent_channels
        if ucfg.in_channels != lat or ucfg.out_channels != lat:
            logger.info("widening UNet conv_in/conv_out %d/%d -> %d channels for the %d-channel VAE (an "
                        "initialisation for training, not a working model)", ucfg.in_channels, ucfg.out_channels,
                        lat, lat)
            widen_io(unet, lat)
            ucfg = ucfg.replace(in_channels=lat, out_channels=lat)
        config = DFOSDConfig(unet=ucfg, vae=vcfg) if kind == "dfosd" else GenDRConfig(unet=ucfg, vae=vcfg)

    pos = neg = None
    if prompt_embeds is not None:
        pos, neg = read_prompt_embeds(prompt_embeds, ucfg.cross_attention_dim)
        config = config.replace(prompt_tokens=int(pos.shape[1]))
    with torch.device("meta"):
        model = build_model(config)
    shape = (1, config.prompt_tokens, ucfg.cross_attention_dim)
    sd = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    if vae is not None and kind != "gendr_pix":
        sd.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    sd["prompt_pos"] = pos if pos is not None else torch.zeros(shape)
    sd["prompt_neg"] = neg if neg is not None else torch.zeros(shape)
    sd = {k: v.to(src_dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, assign=True, strict=True)
    model.eval().requires_grad_(False)
    model.source_format = fmt.value  # type: ignore[attr-defined]
    logger.info("built %s model from %s (%s)", kind, src_path, fmt.value)
    return model


def convert_to_model(
    src_path: str | os.PathLike,
    kind: str = "dfosd",
    out_path: str | os.PathLike | None = None,
    *,
    prompt_embeds: str | os.PathLike | None = None,
    vae_path: str | os.PathLike | None = None,
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an SD2.x single file (``.safetensors``/``.ckpt``) or diffusers UNet/folder as our model file.

    See :func:`build_converted` for ``kind``. ``out_path`` defaults to ``<src stem>_<kind>.safetensors``
    beside the source; ``dtype`` (fp32/fp16/bf16) defaults to the source's. The write is atomic.
    """
    src_path = Path(src_path).expanduser()
    out = Path(out_path) if out_path else src_path.with_name(f"{src_path.stem}_{kind}.safetensors")
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"output {out} must end in .safetensors")
    if out.exists() and not overwrite:
        raise GenDRPixError(f"output exists: {out}; pass --overwrite to replace it")
    model = build_converted(src_path, kind, prompt_embeds=prompt_embeds, vae_path=vae_path,
                            unet_config=unet_config, vae_config=vae_config)
    meta = {"gendr_pix.source": src_path.name, "gendr_pix.source_format": model.source_format}
    if prompt_embeds is None:
        meta["gendr_pix.note"] = "prompt embeddings are zeros (no --prompt-embeds given)"
    return save_model(model, out, dtype=parse_dtype(dtype), metadata=meta)


# ----------------------------------------------------------------------------- VGG16


def convert_vgg16(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A torchvision VGG16 ``.pth`` (``weights_only=True``) -> ``features.*`` tensors in safetensors (atomic)."""
    from safetensors.torch import save_file

    from .vgg import load_vgg16_state_dict

    sd = {k: v.contiguous() for k, v in load_vgg16_state_dict(src).items()}  # keeps features.N.weight|bias
    out = Path(out).expanduser()
    atomic_write(out, lambda tmp: save_file(sd, tmp, metadata={"format": "pt", "model": "vgg16.features"}))
    logger.info("wrote VGG16 feature weights (%d tensors) to %s", len(sd), out)
    return out


# ----------------------------------------------------------------------------- CLI


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gendr-pix convert SRC -o OUT [--kind ...] [--vgg16]``."""
    parser.add_argument("src", help="SD2.x single file (.safetensors/.ckpt), diffusers UNet file or folder, "
                                    "(with --vgg16) a torchvision VGG16 .pth, or an ncnn Real-ESRGAN .param "
                                    "(RRDBNet or SRVGGNetCompact; its .bin beside it) -> a spandrel-loadable .safetensors")
    parser.add_argument("-o", "--output", default=None,
                        help="output .safetensors (default: <src>_<kind>.safetensors beside the source)")
    parser.add_argument("--kind", choices=KINDS, default="dfosd",
                        help="dfosd: SD2.1 VAE + UNet as-is; gendr_pix: UNet with 192-channel conv_in/out (no VAE); "
                             "gendr: UNet on a 16-channel VAE (needs --vae)")
    parser.add_argument("--vgg16", action="store_true", help="convert a torchvision VGG16 .pth for the perceptual loss")
    parser.add_argument("--prompt-embeds", default=None,
                        help=".safetensors with prompt_pos[/prompt_neg] embeddings (default: zeros)")
    parser.add_argument("--vae", default=None, help="diffusers VAE folder to use instead of the source's VAE")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="stored dtype (default: the source's)")
    parser.add_argument("--bin", default=None, help="ncnn .bin weights of a .param source (default: beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run_convert_command(args: argparse.Namespace) -> int:
    """Run ``gendr-pix convert``; returns the exit status."""
    src = Path(args.src).expanduser()
    if src.suffix.lower() == ".param":
        from .ncnn import convert_ncnn

        out = Path(args.output) if args.output else src.with_suffix(".safetensors")
        if out.exists() and not args.overwrite:
            raise GenDRPixError(f"output exists: {out}; pass --overwrite to replace it")
        convert_ncnn(src, out, args.bin)
        logger.info("ncnn Real-ESRGAN %s -> %s (spandrel-loadable; Real-ESRGAN weights are BSD-3-Clause)", src, out)
        return 0
    if args.vgg16:
        out = Path(args.output) if args.output else src.with_suffix(".safetensors")
        if out.exists() and not args.overwrite:
            raise GenDRPixError(f"output exists: {out}; pass --overwrite to replace it")
        convert_vgg16(src, out)
        logger.info("VGG16 features -> %s", out)
        return 0
    out = convert_to_model(src, args.kind, args.output, prompt_embeds=args.prompt_embeds, vae_path=args.vae,
                           dtype=args.dtype, overwrite=args.overwrite)
    logger.info("%s -> %s (kind %s)", src, out, args.kind)
    return 0


__all__ = [
    "CheckpointFormat",
    "SourceWeights",
    "add_convert_arguments",
    "build_converted",
    "convert_to_model",
    "convert_vgg16",
    "detect_format",
    "diffusers_unet_config",
    "ldm_unet_config",
    "load_diffusers_folder",
    "read_source",
    "read_state_dict",
    "run_convert_command",
    "sd21_ldm_to_diffusers",
    "unet_config_from_diffusers",
    "vae_config_from_diffusers",
]
