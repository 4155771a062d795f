"""ComfyUI node layer of GenDR-Pix (V3 schema, ComfyUI >= 0.3.47).

Node ids are public API (saved workflows store them): never rename one; retire it with
``is_deprecated=True``. Every node is a thin adapter over one ``gendr_core`` call.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .benchmark import GenDRPixBenchmark
from .loader import GenDRPixLoader
from .paths import register_model_folder
from .postprocess import GenDRPixFixMod, GenDRPixRandPad
from .upscale import GenDRPixPadCFGSampler

NODES: list[type[io.ComfyNode]] = [
    GenDRPixLoader,
    GenDRPixPadCFGSampler,
    GenDRPixRandPad,
    GenDRPixFixMod,
    GenDRPixBenchmark,
]


class GenDRPixExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> GenDRPixExtension:
    register_model_folder()
    return GenDRPixExtension()
