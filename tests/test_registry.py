"""What the ComfyUI registry gets: [tool.comfy] in pyproject.toml and .comfyignore."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def ignored(path: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p.endswith("/") and (path.startswith(p) or f"/{p}" in f"/{path}"):
            return True
        if fnmatch.fnmatch(path, p):
            return True
    return False


def test_tool_comfy_has_the_registry_fields():
    comfy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"].startswith(">=")
    assert isinstance(comfy["includes"], list)


def test_registry_icon_url_is_a_square_png_of_this_repository():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    repo_url = meta["project"]["urls"]["Repository"]
    prefix = repo_url.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    icon = meta["tool"]["comfy"]["Icon"]
    assert icon.startswith(prefix), icon
    path = REPO / icon[len(prefix):]
    files = subprocess.run(["git", "ls-files", icon[len(prefix):]], cwd=REPO, capture_output=True, text=True).stdout
    assert path.is_file() and files.strip(), f"{path} must be a tracked file"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] and 64 <= im.size[0] <= 400, (im.format, im.size)


def test_comfyignore_drops_development_files_and_keeps_everything_run_time_needs():
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    shipped = [f for f in files if not ignored(f, patterns)]
    assert not any(f.startswith(("tests/", "trainers/", ".ci/")) for f in shipped)
    needed = ["__init__.py", "requirements.txt", "pyproject.toml", "LICENSE", "gendr_core/assets/gendr-pix-s.safetensors",
              "gendr_core/assets/MODEL_CARD.md"]
    needed += [f for f in files if f.startswith(("nodes/", "workflows/")) or
               (f.startswith("gendr_core/") and f.endswith(".py"))]
    assert [f for f in needed if f in files and f not in shipped] == []
