"""Stub of ``comfy_api.latest``: ``io``, ``ui`` and ``ComfyExtension``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 - optional hook, as in ComfyUI
        """Called once when ComfyUI loads the extension."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this extension provides."""


__all__ = ["ComfyExtension", "io", "ui"]
