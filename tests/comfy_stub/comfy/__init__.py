"""Test stub of ComfyUI's ``comfy`` package: ``utils`` and ``model_management`` only."""
