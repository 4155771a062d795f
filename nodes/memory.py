"""Model cache and device placement through ComfyUI's memory management.

We use the light scheme of ComfyUI's own ``ImageUpscaleWithModel`` rather than a
ModelPatcher: models live on ``unet_offload_device()`` (the CPU unless --highvram) in a
module-level cache that outlives prompts, and a node moves one to ``get_torch_device()``
only for its run, after asking ComfyUI to ``free_memory(weights + activation estimate)``
(which evicts other models if needed), then moves it straight back. Between runs our
model therefore holds no GPU memory, and ComfyUI never has to ask us to offload it.

The cache key is (resolved path, mtime, size, dtype, offload device): re-exporting a file
or picking another dtype loads again; the same choice in a later prompt does not touch the
disk. At most ``MAX_CACHED`` models are kept (least recently used dropped first), and an
older version of the same file is dropped as soon as a newer one loads.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import comfy.model_management as mm
from torch import nn

from ..gendr_core.checkpoint import default_dtype, load_model, parse_dtype
from ..gendr_core.models import OneStepRestorer
from ..gendr_core.ops.resize import output_size

logger = logging.getLogger(__name__)

MAX_CACHED = 2
_CACHE: OrderedDict[tuple, OneStepRestorer] = OrderedDict()
stats = {"disk_loads": 0, "cache_hits": 0}


def load_cached(path: Path, dtype: str) -> OneStepRestorer:
    """The model file at ``path`` in ``dtype`` ('auto', 'fp32', 'fp16', 'bf16') on the offload device."""
    offload = mm.unet_offload_device()
    dt = parse_dtype(dtype) or default_dtype(mm.get_torch_device())
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, str(dt), str(offload))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        stats["cache_hits"] += 1
        logger.info("GenDR-Pix: reusing cached model %s (%s)", path.name, dt)
        return _CACHE[key]
    for old in [k for k in _CACHE if k[0] == key[0]]:
        del _CACHE[old]
    mm.free_memory(st.st_size, offload)  # the file size approximates the weights
    t0 = time.perf_counter()
    model = load_model(path, device=offload, dtype=dt)
    stats["disk_loads"] += 1
    # gendr_core's loader already logs the load at INFO; one line per load, not two
    logger.debug("GenDR-Pix: loaded %s model %s from disk in %.2fs (%s)", model.kind, path.name,
                time.perf_counter() - t0, dt)
    _CACHE[key] = model
    while len(_CACHE) > MAX_CACHED:
        _CACHE.popitem(last=False)
    return model


def clear_cache() -> None:
    _CACHE.clear()


def work_bytes(model: OneStepRestorer, image_hw: tuple[int, int], batch: int, scale: float, passes: int,
               tile: int | str) -> int:
    """Activation estimate of one run: the whole output grid, or one tile when the tile is fixed;
    at least that of the model's learned FixMod, which runs once on the whole stitched output."""
    full_h, full_w = h, w = output_size(image_hw[0], image_hw[1], scale)
    if isinstance(tile, int) and tile > 0:
        h, w = min(h, tile), min(w, tile)
    m = model.pad_multiple
    need = model.estimate_bytes(-(-(h + 8) // m) * m, -(-(w + 8) // m) * m, batch * passes)
    fixmod = getattr(model, "fixmod", None)
    return need if fixmod is None else max(need, fixmod.estimate_bytes(full_h, full_w, batch))


@contextmanager
def model_on_device(model: nn.Module, work: int) -> Iterator[nn.Module]:
    """Free memory for the weights + ``work`` bytes, run on the torch device, offload after.
    ``model`` is a restorer, or only its ``fixmod`` for the FixMod node."""
    device = mm.get_torch_device()
    mm.free_memory(mm.module_size(model) + work, device)
    model.to(device)
    try:
        yield model
    finally:
        model.to(mm.unet_offload_device())
        mm.soft_empty_cache()
