"""Pieces shared by the trainer scripts: accelerate set-up, checkpoints, logs, plots.

Checkpoint folder ``<out>/checkpoints/step_XXXXXXX/`` holds accelerate's ``save_state``
(model/optimizer/RNG), ``ema.safetensors`` (EMA generator weights), ``train_state.json``
(step) and ``config.json`` (the resolved training config). A folder is written under a
temporary name and renamed when complete, so an interrupted save never shadows the last
good checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gendr_core.errors import MissingDependencyError

logger = logging.getLogger(__name__)

CKPT_PREFIX = "step_"


def require_accelerate():
    try:
        import accelerate
    except ImportError:
        raise MissingDependencyError("training needs accelerate: pip install '.[train]'") from None
    return accelerate


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{CKPT_PREFIX}{step:07d}"


def latest_checkpoint(out: Path) -> Path | None:
    """Newest complete checkpoint folder under ``out/checkpoints``, or None."""
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(CKPT_PREFIX) and (p / "train_state.json").is_file()]
    return max(done, key=lambda p: int(p.name[len(CKPT_PREFIX):]), default=None)


def save_checkpoint(accelerator, out: Path, step: int, ema_state: dict[str, torch.Tensor], config: dict[str, Any],
                    keep: int = 3) -> Path:
    """accelerate state + EMA + step + config, written atomically (temp folder + rename)."""
    final = checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "train_state.json").write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpts = sorted((p for p in final.parent.iterdir() if p.name.startswith(CKPT_PREFIX) and not p.name.endswith(".tmp")),
                       key=lambda p: int(p.name[len(CKPT_PREFIX):]))
        for old in ckpts[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore accelerate state from ``path``; returns (step, EMA state dict)."""
    accelerator.load_state(str(path))
    step = json.loads((path / "train_state.json").read_text())["step"]
    return step, load_file(str(path / "ema.safetensors"))


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batch ``step`` = dataset items [step*B, (step+1)*B): a pure function of the step.

    The dataset itself shuffles images and draws one scale per batch from (seed, index), so
    resuming at step k replays exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, batch_size: int, start_step: int, max_steps: int) -> None:
        self.b, self.start, self.max = batch_size, start_step, max_steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.max):
            yield list(range(step * self.b, (step + 1) * self.b))

    def __len__(self) -> int:
        return max(0, self.max - self.start)


class JsonlLog:
    """Append-only JSON-lines log, flushed per record (survives a kill)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (after resuming from an older checkpoint)."""
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def loss_axis_scale(train_records: list[dict]) -> str:
    """``"log"`` when every finite ``loss*`` value is positive, else ``"symlog"`` (-PSNR terms are
    negative, and a log axis cannot show them)."""
    positive = all(r[k] > 0 for r in train_records for k in r if k.startswith("loss") and math.isfinite(r[k]))
    return "log" if positive else "symlog"


def plot_curves(log: JsonlLog, png: Path) -> Path | None:
    """Loss and validation PSNR curves as a PNG (needs matplotlib; skipped otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed; no curve plot")
        return None
    recs = log.read()
    train = [r for r in recs if r.get("kind") == "train"]
    val = [r for r in recs if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in train for k in r if k.startswith("loss")}):
        pts = [(r["step"], r[key]) for r in train if key in r and math.isfinite(r[key])]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), label=key)
    axes[0].set(xlabel="step", ylabel="loss", yscale=loss_axis_scale(train), title="training losses")
    axes[0].legend(fontsize=7)
    if val:
        axes[1].plot([r["step"] for r in val], [r["psnr_y"] for r in val], "o-", label="model")
        axes[1].plot([r["step"] for r in val], [r["psnr_y_bicubic"] for r in val], "--", label="bicubic")
        axes[1].legend()
    axes[1].set(xlabel="step", ylabel="PSNR-Y (dB)", title="validation")
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)
    return png
