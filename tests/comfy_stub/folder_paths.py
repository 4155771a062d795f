"""Stub of ComfyUI's ``folder_paths``: named model folders, file lists and lookups.

``folder_names_and_paths[name] = ([dirs], {extensions})``; an empty extension set lists
every file. ``set_models_dir`` (stub only) points ``models_dir`` at a test folder and resets
the registry to a couple of core entries.
"""

from __future__ import annotations

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = os.path.join(os.path.abspath(os.sep), "nonexistent-comfyui")
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def set_models_dir(path: str | os.PathLike) -> None:
    global models_dir
    models_dir = os.fspath(path)
    folder_names_and_paths.clear()
    for name in ("checkpoints", "upscale_models"):
        folder_names_and_paths[name] = ([os.path.join(models_dir, name)], set(supported_pt_extensions))


set_models_dir(models_dir)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name: str) -> list[str]:
    dirs, exts = folder_names_and_paths[folder_name]
    found: set[str] = set()
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for root, _, files in os.walk(d, followlinks=True):
            for f in files:
                if exts and os.path.splitext(f)[1].lower() not in exts:
                    continue
                found.add(os.path.relpath(os.path.join(root, f), d).replace(os.sep, "/"))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    rel = os.path.relpath(os.path.join("/", filename), "/")
    for d in folder_names_and_paths[folder_name][0]:
        full = os.path.join(d, rel)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full
