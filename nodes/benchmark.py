"""GenDRPixBenchmark: time and peak memory of the loaded model(s) at given output sizes."""

from __future__ import annotations

import json
import time

import comfy.model_management as mm
import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

from ..gendr_core.bench import PeakMemory
from ..gendr_core.models import OneStepRestorer
from ..gendr_core.pipeline import upscale
from .memory import model_on_device, work_bytes
from .progress import Progress, comfy_progress
from .types import GenDRPixModel
from .upscale import CATEGORY


def parse_sizes(text: str) -> list[int]:
    """'256, 512 1024' -> [256, 512, 1024] (output sides in pixels)."""
    try:
        sizes = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 16 or max(sizes) > 16384:
        raise ValueError(f"sizes={text!r}: expected output sides in pixels between 16 and 16384, e.g. '512, 1024'")
    return sizes


def run_benchmark(models: dict[str, OneStepRestorer], sizes: list[int], scale: float, guidance: float, repeats: int,
                  progress: Progress | None = None) -> list[dict]:
    """One row per (model, size): median seconds of ``repeats`` runs after one warm-up, and the peak
    memory of those runs measured by :class:`gendr_core.bench.PeakMemory` inside the ComfyUI process
    (CUDA: peak allocation; CPU: peak resident set). ``gendr-pix bench`` measures the same in a fresh
    process, which is the number to publish; this node answers "how does it run here, now"."""
    rows, done, total = [], 0, len(models) * len(sizes) * (repeats + 1)
    for name, model in models.items():
        for side in sizes:
            lr = side / scale
            x = torch.rand(1, 3, max(1, round(lr)), max(1, round(lr)), generator=torch.Generator().manual_seed(side))
            passes = 2 if guidance != 1 else 1
            with model_on_device(model, work_bytes(model, x.shape[-2:], 1, scale, passes, "auto")):
                dev = mm.get_torch_device()
                mem = PeakMemory(dev).start()
                times = []
                for _ in range(repeats + 1):
                    t0 = time.perf_counter()
                    upscale(x, model, scale, guidance)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    times.append(time.perf_counter() - t0)
                    done += 1
                    if progress:
                        progress(done, total)
                mem.stop()
            rows.append({"model": name, "kind": model.kind, "output": f"{side}x{side}", "side": side,
                         "seconds": float(np.median(times[1:])), "peak_bytes": mem.peak_bytes,
                         "run_bytes": mem.activation_bytes, "memory_method": mem.method,
                         "estimated_bytes": work_bytes(model, x.shape[-2:], 1, scale, passes, 0),
                         "device": str(dev), "dtype": str(model.dtype).replace("torch.", "")})
    return rows


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def format_report(rows: list[dict]) -> str:
    """Table (peak = whole process or device; run = peak minus the memory in use before), then JSON."""
    lines = [f"{'model':<10} {'output':>11} {'seconds':>9} {'MPix/s':>8} {'peak MiB':>9} {'run MiB':>8} {'est. MiB':>9}"]
    for r in rows:
        lines.append(f"{r['model']:<10} {r['output']:>11} {r['seconds']:>9.3f} {r['side'] ** 2 / 1e6 / r['seconds']:>8.2f} "
                     f"{_mib(r['peak_bytes']):>9} {_mib(r['run_bytes']):>8} {_mib(r['estimated_bytes']):>9}")
    return "\n".join(lines) + "\n\nJSON: " + json.dumps(rows)


def plot_rows(rows: list[dict], width: int = 640, height: int = 400) -> torch.Tensor:
    """A seconds-vs-output-size line chart as an IMAGE (1,H,W,3)."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 60, 20, width - 20, height - 50
    d.rectangle((x0, y0, x1, y1), outline="black")
    sides = sorted({r["side"] for r in rows})
    tmax = max(r["seconds"] for r in rows) or 1.0
    d.text((5, y0), f"{tmax:.2f}s", fill="black")
    d.text((5, y1 - 10), "0s", fill="black")
    px = {s: x0 + (x1 - x0) * (i + 0.5) / len(sides) for i, s in enumerate(sides)}
    for s in sides:
        d.text((px[s] - 20, y1 + 8), f"{s}px", fill="black")
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for i, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        pts = [(px[r["side"]], y1 - (y1 - y0) * r["seconds"] / tmax) for r in rows if r["model"] == name]
        if len(pts) > 1:
            d.line(pts, fill=colors[i % 4], width=3)
        for p in pts:
            d.ellipse((p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4), fill=colors[i % 4])
        d.text((x0 + 10, y0 + 10 + 14 * i), name, fill=colors[i % 4])
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]  # (1,H,W,3)


class GenDRPixBenchmark(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GenDRPixBenchmark",
            display_name="GenDR-Pix Benchmark",
            category=CATEGORY,
            description="Times the model on random images at the given output sizes (median of repeats after one "
                        "warm-up) and the peak memory of those runs (GPU allocation, or the process's resident set on "
                        "CPU) next to the model's own activation estimate, optionally "
                        "next to a second model such as GenDR.",
            is_output_node=True,
            inputs=[
                GenDRPixModel.Input("model", tooltip="Model to time, from 'GenDR-Pix Model Loader'."),
                io.String.Input("sizes", default="256, 512",
                                tooltip="Output sides in pixels, separated by commas: each size runs a square "
                                        "image of side/scale pixels through the model."),
                io.Float.Input("scale", default=4.0, min=1.0, max=16.0, step=0.5,
                               tooltip="Upscaling factor of the timed runs."),
                io.Float.Input("guidance", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="PadCFG scale of the timed runs (1.0 = one pass, >1 = two branches)."),
                io.Int.Input("repeats", default=2, min=1, max=50,
                             tooltip="Timed runs per size after one warm-up run; the median is reported."),
                GenDRPixModel.Input("compare_model", optional=True,
                                    tooltip="Optional second model (e.g. a GenDR latent model from another loader) "
                                            "timed on the same sizes for comparison."),
            ],
            outputs=[
                io.String.Output("report", display_name="STRING", tooltip="Table of the results, then their JSON."),
                io.Image.Output("plot", display_name="IMAGE", tooltip="Seconds per output size, one line per model."),
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
        rows = run_benchmark(models, parse_sizes(sizes), scale, guidance, repeats, comfy_progress())
        report = format_report(rows)
        return io.NodeOutput(report, plot_rows(rows).to(mm.intermediate_device()), ui=ui.PreviewText(report))
