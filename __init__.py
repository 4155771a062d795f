"""ComfyUI entry point of the GenDR-Pix pack.

ComfyUI imports this file as a package (``__package__`` is set), so the relative import
runs there. pytest and plain ``import`` of the repository root see no package and skip
it (STYLE.md gotcha 1).
"""

if __package__:
    from .nodes import comfy_entrypoint  # noqa: F401
