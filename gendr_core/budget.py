"""Peak-memory estimate of a whole ``upscale`` job, checked before any work starts.

A job holds, besides the model weights (already resident when it starts):

* ``grid``: the input resized onto the output grid, float32 (B,3,H,W), alive to the end;
* ``output``: the stitched result, float32 (B,3,H,W) (tiles are blended into it in place);
* ``work``: the model's activations for the whole padded image or one padded tile
  (``model.estimate_bytes``, pads included);
* ``post_fix``: the wavelet color fix's temporaries (or the learned FixMod's) on the whole image;
* ``save``: what the caller makes of the output afterwards: for PIL/file output the float
  HWC array, the 8/16-bit array and the PIL copy; for ComfyUI one float (B,H,W,3) copy.

The peak is ``grid + output + max(work, post_fix)`` on the model's device, and, on the host,
``output + save`` (the larger of the two when the device is the CPU). A job whose peak does not
fit the free memory is refused with :class:`~gendr_core.errors.MemoryBudgetError` before it
allocates anything, so a request such as a 1000x upscale never reaches the kernel's OOM killer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import MemoryBudgetError
from .ops.resize import output_size

WAVELET_COPIES = 8  # full-size float32 temporaries of wavelet_color_fix (both decompositions)
GiB = float(1 << 30)


def available_memory(device: torch.device) -> int:
    """Bytes a job may use: 90 % of free CUDA memory, or 70 % of MemAvailable on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * 0.7)
    except OSError:
        pass
    return 8 << 30


def padded_side(side: int, pad: int, multiple: int) -> int:
    """A tile or image side after a branch pad of ``pad`` pixels and rounding up to ``multiple``."""
    return -(-(side + pad) // multiple) * multiple


@dataclass(frozen=True)
class JobEstimate:
    """Bytes of each part of one job (see the module docstring) and where it runs."""

    output_hw: tuple[int, int]
    batch: int
    tile: int  # 0 = whole image
    grid: int
    output: int
    work: int
    post_fix: int
    save: int
    device: str

    @property
    def device_peak(self) -> int:
        return self.grid + self.output + max(self.work, self.post_fix)

    @property
    def host_peak(self) -> int:
        """The output and the caller's conversion of it (after the device part is freed)."""
        return self.output + self.save

    def fits(self, device_budget: int, host_budget: int) -> bool:
        if self.device == "cpu":
            return max(self.device_peak, self.host_peak) <= device_budget
        return self.device_peak <= device_budget and self.host_peak <= host_budget

    def summary(self) -> str:
        parts = [f"input on the output grid {self.grid / GiB:.2f}", f"output {self.output / GiB:.2f}",
                 f"model work {self.work / GiB:.2f}" + (f" (tiles of {self.tile} px)" if self.tile else ""),
                 f"post-fix {self.post_fix / GiB:.2f}", f"saving {self.save / GiB:.2f}"]
        return ", ".join(parts) + " GiB"


def image_bytes(batch: int, h: int, w: int, channels: int = 3, bytes_per_value: int = 4) -> int:
    return batch * channels * h * w * bytes_per_value


def estimate_job(model, in_hw: tuple[int, int], batch: int, scale: float, *, passes: int = 1, pad: tuple[int, int] = (8, 8),
                 tile: int = 0, post_fix: str = "off", save_bytes_per_px: int = 0) -> JobEstimate:
    """The parts of one job on ``model``: ``in_hw`` input size, ``passes`` images per forward
    (2 for batched PadCFG), ``pad`` the widest branch pad per axis (top+bottom, left+right),
    ``tile`` the tile side (0: whole image), ``post_fix`` 'off' | 'wavelet' | 'learned',
    ``save_bytes_per_px`` what the caller's conversion of the result costs per output pixel."""
    h, w = output_size(in_hw[0], in_hw[1], scale)
    m = model.pad_multiple
    th, tw = (min(h, tile), min(w, tile)) if tile else (h, w)
    work = model.estimate_bytes(padded_side(th, pad[0], m), padded_side(tw, pad[1], m), batch * passes)
    out = image_bytes(batch, h, w)
    fix = 0
    if post_fix != "off":
        fix = WAVELET_COPIES * out
        net = getattr(model, "fixmod", None)
        if post_fix == "learned" and net is not None:
            fix += net.estimate_bytes(h, w, batch)
    return JobEstimate((h, w), batch, tile, image_bytes(batch, h, w), out, work, fix,
                       batch * h * w * save_bytes_per_px, model.device.type)


def refuse_if_too_big(est: JobEstimate, device_budget: int, host_budget: int, max_scale: float | None = None,
                      what: str = "scale") -> None:
    """Raise MemoryBudgetError naming the size, the memory needed and what to do."""
    if est.fits(device_budget, host_budget):
        return
    if est.device == "cpu":
        need, have, where = max(est.device_peak, est.host_peak), device_budget, "CPU"
    elif est.device_peak > device_budget:
        need, have, where = est.device_peak, device_budget, est.device.upper()
    else:
        need, have, where = est.host_peak, host_budget, "CPU"
    h, w = est.output_hw
    hint = f"use a smaller {what}" + (f" (at most {max_scale:.3g} fits)" if max_scale else "")
    raise MemoryBudgetError(
        f"a {w}x{h} output (batch {est.batch}) needs about {need / GiB:.1f} GiB of {where} memory "
        f"({est.summary()}), but only {have / GiB:.1f} GiB is free; {hint}, process fewer images at once, "
        "or free memory / use a machine with more")
