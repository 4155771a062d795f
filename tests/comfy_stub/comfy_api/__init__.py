"""Test stub of ComfyUI's ``comfy_api`` package (only ``latest`` is provided)."""
