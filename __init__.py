"""ComfyUI entry point of the GenDR-Pix pack.

ComfyUI imports this file as a package (``__package__`` set) after it has imported its own
``folder_paths``; only then do we import the node layer. pytest also imports this file as
a package while collecting ``tests/`` (pytest 9 treats the repository root as a package),
and plain ``import`` outside ComfyUI must not fail either, so both conditions are checked
(STYLE.md gotcha 1, refined: ``__package__`` alone is set under pytest too).
"""

import sys

if __package__ and "folder_paths" in sys.modules:
    from .nodes import comfy_entrypoint  # noqa: F401
