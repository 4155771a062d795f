"""gendr_core ``progress(done, total)`` callbacks that drive ComfyUI's progress bar.

Each call updates a ``comfy.utils.ProgressBar`` (the UI bar of the running node) and then
checks the Cancel button. ComfyUI's own progress hook already raises on Cancel; the explicit
check keeps long loops interruptible when no hook is installed (e.g. a headless runner).
gendr_core reports after every UNet block of every pass (``gendr_core.progress``), so the
bar moves during a single whole-image pass; the nodes also pass ComfyUI's interrupt check as
``interrupt=``, which gendr_core calls after every convolution and between query slices of
large self-attentions inside the pass, so Cancel stops a run within one such step.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management
import comfy.utils

Progress = Callable[[int, int], None]


def comfy_progress(node_id: str | None = None) -> Progress:
    """A callback for gendr_core's ``progress=`` argument."""
    bar = comfy.utils.ProgressBar(1, node_id=node_id)

    def update(done: int, total: int) -> None:
        bar.update_absolute(done, total)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return update
