"""The ``gendr_pix`` model folder and the model names the Loader offers.

The folder is ``<ComfyUI>/models/gendr_pix`` plus any ``gendr_pix:`` entries of
``extra_model_paths.yaml`` (ComfyUI reads that file before loading custom nodes, so we
append to the existing entry and widen its extension set in place, never replace it).
The names of ``gendr_core.checkpoint.SHIPPED_MODELS`` (e.g. ``gendr-pix-s``) are the models
shipped in ``gendr_core/assets``; a ``<name>.safetensors`` in the model folder stands in for one
when the package was installed without its asset.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..gendr_core.checkpoint import BUILTIN_MODELS, SHIPPED_MODELS

FOLDER = "gendr_pix"
EXTENSIONS = (".safetensors",)


def register_model_folder() -> None:
    """Add ``models/gendr_pix`` to ComfyUI's registry (idempotent)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)


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
    files = folder_paths.get_filename_list(FOLDER)
    standins = {f"{name}.safetensors" for name in SHIPPED_MODELS if not BUILTIN_MODELS[name].is_file()}
    return shipped_choices(files) + [f for f in files if f not in standins]


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


__all__ = ["FOLDER", "SHIPPED_MODELS", "model_choices", "model_fingerprint",
           "register_model_folder", "resolve_model", "shipped_choices"]
