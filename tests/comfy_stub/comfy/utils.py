"""Stub of ``comfy.utils.ProgressBar`` and its global hook.

The default hook acts like the one ComfyUI's server installs: it first raises if the user
pressed Cancel (``throw_exception_if_processing_interrupted``), then records the update in
``PROGRESS_EVENTS`` as ``(node_id, value, total)``. ``ON_PROGRESS`` (if set) is called after
recording, e.g. to press Cancel after the n-th update in a test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import model_management

PROGRESS_EVENTS: list[tuple[Any, float, float]] = []
ON_PROGRESS: Callable[[int], None] | None = None


def _server_hook(value: float, total: float, preview: Any, node_id: Any = None) -> None:
    model_management.throw_exception_if_processing_interrupted()
    PROGRESS_EVENTS.append((node_id, value, total))
    if ON_PROGRESS is not None:
        ON_PROGRESS(len(PROGRESS_EVENTS))


PROGRESS_BAR_HOOK: Callable[..., None] | None = _server_hook


def set_progress_bar_global_hook(function: Callable[..., None] | None) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total: float, node_id: Any = None) -> None:
        self.total = total
        self.current = 0
        self.node_id = node_id
        self.hook = PROGRESS_BAR_HOOK

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)
