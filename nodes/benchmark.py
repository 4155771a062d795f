"""GenDRPixBenchmark: gendr_core.bench's runner on the loaded model(s), inside ComfyUI.

All measuring is :func:`gendr_core.bench.run_loaded` (the runner behind ``gendr-pix bench``):
same timing, peak memory, MACs and row schema. This module only turns the node inputs into its
arguments, places each model on ComfyUI's device, and turns the result into text and an IMAGE.
"""

from __future__ import annotations

import json

import comfy.model_management as mm
import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

from ..gendr_core.bench import parse_sizes as parse_bench_sizes
from ..gendr_core.bench import plot_array, run_loaded
from ..gendr_core.models import OneStepRestorer
from .memory import model_on_device, work_bytes
from .progress import comfy_progress
from .types import GenDRPixModel
from .upscale import CATEGORY

SIDE_RANGE = (16, 16384)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'256, 512 1024x768' -> [(256, 256), (512, 512), (1024, 768)] (output width, height in pixels)."""
    try:
        sizes = parse_bench_sizes(",".join(text.replace(",", " ").split()))
    except ValueError:
        sizes = []
    if not sizes or min(min(s) for s in sizes) < SIDE_RANGE[0] or max(max(s) for s in sizes) > SIDE_RANGE[1]:
        raise ValueError(f"sizes={text!r}: expected output sides in pixels between {SIDE_RANGE[0]} and "
                         f"{SIDE_RANGE[1]}, e.g. '512, 1024' or '3840x2160'")
    return sizes


def _on_device(model: OneStepRestorer, size: tuple[int, int], scale: float, passes: int):
    """ComfyUI placement of one row: memory freed for the weights and the run's estimate, model on the device."""
    lr_hw = (max(1, round(size[1] / scale)), max(1, round(size[0] / scale)))  # (w, h) output -> (h, w) input
    return model_on_device(model, work_bytes(model, lr_hw, 1, scale, passes, "auto"))


def plot_image(result) -> torch.Tensor:
    """The runner's time / memory / MACs plot as an IMAGE (1,H,W,3); without matplotlib, a card saying so."""
    rgb = plot_array(result)
    if rgb is None:
        card = Image.new("RGB", (640, 120), "white")
        ImageDraw.Draw(card).text((10, 50), "plot needs matplotlib (pip install matplotlib)", fill="black")
        rgb = np.asarray(card)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]  # (H,W,3) uint8 -> (1,H,W,3) float


class GenDRPixBenchmark(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GenDRPixBenchmark",
            display_name="GenDR-Pix Benchmark",
            category=CATEGORY,
            description="Times the model on random images at the given output sizes (median of repeats after one "
                        "warm-up), with the peak memory of those runs (GPU: max_memory_allocated; CPU: this "
                        "process's peak resident set), the model's own memory estimate and the multiply-accumulates "
                        "(MACs) of one run, optionally next to a second model such as GenDR. The same measurement "
                        "as 'gendr-pix bench', which runs each size in a fresh process: the numbers to publish.",
            is_output_node=True,
            inputs=[
                GenDRPixModel.Input("model", tooltip="Model to time, from 'GenDR-Pix Model Loader'."),
                io.String.Input("sizes", default="256, 512",
                                tooltip="Output sizes in pixels, separated by commas: a side (square) or WIDTHxHEIGHT; "
                                        "each runs a random image of size/scale pixels through the model."),
                io.Float.Input("scale", default=4.0, min=1.0, max=16.0, step=0.5,
                               tooltip="Upscaling factor of the timed runs."),
                io.Float.Input("guidance", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="PadCFG scale of the timed runs (1.0 = one pass, >1 = two branches)."),
                io.Int.Input("repeats", default=2, min=1, max=50,
                             tooltip="Timed runs per size after one warm-up run; the median is reported."),
                GenDRPixModel.Input("compare_model", optional=True,
                                    tooltip="Optional second model (e.g. a GenDR latent model from another loader) "
                                            "timed on the same sizes; the report gives its time, memory and MACs "
                                            "ratios to the first."),
            ],
            outputs=[
                io.String.Output("report", display_name="STRING", tooltip="Table of the results, then their JSON."),
                io.Image.Output("plot", display_name="IMAGE",
                                tooltip="Seconds, peak memory and GMACs against output megapixels, one line per model."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sizes: str) -> bool | str:
        try:
            parse_sizes(sizes)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, model: OneStepRestorer, sizes: str, scale: float, guidance: float, repeats: int,
                compare_model: OneStepRestorer | None = None) -> io.NodeOutput:
        models = {model.kind: model} | ({f"{compare_model.kind} (cmp)": compare_model} if compare_model else {})
        passes = 2 if guidance != 1 else 1
        result = run_loaded(models, parse_sizes(sizes), scale, guidance, repeats=repeats, warmup=1, memory="rss",
                            placement=lambda m, s: _on_device(m, s, scale, passes), progress=comfy_progress())
        report = result.table() + "\n\nJSON: " + json.dumps(result.to_dict(), allow_nan=False)
        return io.NodeOutput(report, plot_image(result).to(mm.intermediate_device()), ui=ui.PreviewText(report))
