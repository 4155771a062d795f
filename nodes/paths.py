"""The ``gendr_pix`` model folder and the model names the Loader offers.

The folder is ``<ComfyUI>/models/gendr_pix`` plus any ``gendr_pix:`` entries of
``extra_model_paths.yaml`` (ComfyUI reads that file before loading custom nodes, so we
append to the existing entry and widen its extension set in place, never replace it).
The names of ``gendr_core.checkpoint.SHIPPED_MODELS`` (e.g. ``gendr-pix-s``) are the models
shipped in ``gendr_core/assets``; a ``<name>.safetensors`` in the model folder stands in for one
when the package was installed without its asset.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import folder_paths

from ..gendr_core.checkpoint import BUILTIN_MODELS, KIND_KEY, SHIPPED_MODELS

logger = logging.getLogger(__name__)

FOLDER = "gendr_pix"
EXTENSIONS = (".safetensors",)
README_NAME = "README.txt"
README_TEXT = f"""\
GenDR-Pix model folder (created by the ComfyUI-GenDR-Pix node pack).

Put GenDR-Pix, GenDR or DFOSD model files (.safetensors) exported by the GenDR-Pix project here;
subfolders are fine. They appear in the "GenDR-Pix Model Loader" node after a refresh (press R in
the browser). The models shipped with the pack ({', '.join(SHIPPED_MODELS)}) need no file here.

Only .safetensors files that carry GenDR-Pix metadata are listed; other .safetensors files
(e.g. Stable Diffusion checkpoints or LoRAs) are skipped. Pickle files (.pt, .pth, .ckpt) are never
loaded; convert them with the gendr-pix command line tool (gendr-pix convert).
"""
MAX_HEADER = 64 << 20  # a safetensors JSON header is far smaller; larger means not safetensors
_HEADER_CACHE: dict[tuple[str, int, int], bool] = {}


def register_model_folder() -> None:
    """Add ``models/gendr_pix`` to ComfyUI's registry (idempotent) and create it, with a README.txt
    saying what goes there, on first start."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, default)
    folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)
    try:
        os.makedirs(default, exist_ok=True)
        readme = os.path.join(default, README_NAME)
        if not os.path.exists(readme):
            with open(readme, "w", encoding="utf-8") as f:
                f.write(README_TEXT)
    except OSError as exc:  # a read-only install still works with the shipped model
        logger.warning("GenDR-Pix: could not create the model folder %s: %s", default, exc)


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether a .safetensors file carries our metadata, read from its JSON header only (cached
    by modification time and size)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _HEADER_CACHE:
        _HEADER_CACHE[key] = _has_kind(path)
    return _HEADER_CACHE[key]


def _has_kind(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return False
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and KIND_KEY in meta


def shipped_choices(files: list[str] | None = None) -> list[str]:
    """The shipped names whose file exists (the asset, or a stand-in in the model folder), in
    ``SHIPPED_MODELS`` order. When none exists, the first shipped name alone, so the Loader keeps
    its default entry and running it says where the file belongs."""
    files = folder_paths.get_filename_list(FOLDER) if files is None else files
    found = [n for n in SHIPPED_MODELS if BUILTIN_MODELS[n].is_file() or f"{n}.safetensors" in files]
    return found or [SHIPPED_MODELS[0]]


def model_choices() -> list[str]:
    """Shipped names first (:func:`shipped_choices`), then every file of the gendr_pix folder(s).

    A ``<shipped name>.safetensors`` file that stands in for a missing asset is listed once, under
    the shipped name (both entries would load the same file)."""
    register_model_folder()
    files = [f for f in folder_paths.get_filename_list(FOLDER) if f.lower().endswith(EXTENSIONS)]
    models = [f for f in files if is_model_file(folder_paths.get_full_path(FOLDER, f) or "")]
    if len(models) < len(files):
        logger.debug("GenDR-Pix: not listing %s (no GenDR-Pix metadata)", sorted(set(files) - set(models)))
    standins = {f"{name}.safetensors" for name in SHIPPED_MODELS if not BUILTIN_MODELS[name].is_file()}
    return shipped_choices(models) + [f for f in models if f not in standins]


def resolve_model(name: str) -> Path:
    """The file behind a Loader choice; raises FileNotFoundError naming where we looked."""
    register_model_folder()
    if name in BUILTIN_MODELS:
        shipped = BUILTIN_MODELS[name]
        if shipped.is_file():
            return shipped
        fallback = folder_paths.get_full_path(FOLDER, f"{name}.safetensors")
        if fallback is not None:
            return Path(fallback)
        where = ", ".join(folder_paths.get_folder_paths(FOLDER))
        raise FileNotFoundError(
            f"built-in model '{name}' is missing: not at {shipped} (reinstall the pack) and no "
            f"'{name}.safetensors' in the gendr_pix model folder(s): {where}"
        )
    return Path(folder_paths.get_full_path_or_raise(FOLDER, name))


def model_fingerprint(name: str) -> str:
    """Changes when the file behind ``name`` changes, so ComfyUI re-runs the Loader."""
    try:
        path = resolve_model(name)
        st = path.stat()
    except OSError as exc:
        return f"missing: {exc}"
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


__all__ = ["FOLDER", "SHIPPED_MODELS", "is_model_file", "model_choices", "model_fingerprint",
           "register_model_folder", "resolve_model", "shipped_choices"]
