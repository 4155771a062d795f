"""Socket types of the pack. Their names are stored in saved workflows: never rename them."""

from __future__ import annotations

from comfy_api.latest import io

GenDRPixModel = io.Custom("GENDR_PIX_MODEL")
