"""Stub of ``comfy_api.latest.ui``: UI outputs a node can attach to its NodeOutput."""

from __future__ import annotations

from typing import Any


class PreviewText:
    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}


class PreviewImage:
    """ComfyUI saves the images to its temp folder; the stub only keeps them."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        self.image = image
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": [f"preview_{i}.png" for i in range(len(self.image))], "animated": (self.animated,)}
