"""Turn a training run (or one checkpoint folder) into a shipped ``.safetensors`` model.

    python -m trainers.export runs/gendr_pix_s -o gendr_core/assets/gendr-pix-s.safetensors --fp16

Takes the EMA weights of the newest checkpoint (or the folder given), the model config
saved beside them, and writes one model file with the config in its metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from gendr_core.checkpoint import save_model
from gendr_core.config import GenDRPixConfig
from gendr_core.errors import CheckpointFormatError
from gendr_core.models import GenDRPix
from trainers.loop import latest_checkpoint

logger = logging.getLogger("trainers.export")


def export(run_or_ckpt: str | Path, out: str | Path, fp16: bool = False, extra: dict[str, str] | None = None) -> Path:
    """EMA weights + config of a checkpoint -> model file (atomic write)."""
    src = Path(run_or_ckpt)
    ckpt = src if (src / "train_state.json").is_file() else latest_checkpoint(src)
    if ckpt is None:
        raise FileNotFoundError(f"{src}: no checkpoint folder with train_state.json (looked in {src / 'checkpoints'})")
    cfg_path = ckpt / "config.json"
    if not cfg_path.is_file():
        raise CheckpointFormatError(f"{ckpt}: config.json missing; cannot rebuild the model")
    train_cfg = json.loads(cfg_path.read_text())
    model_cfg = GenDRPixConfig.from_dict(train_cfg["model"], where=f"{cfg_path}: 'model'")
    model = GenDRPix(model_cfg)
    ema = load_file(str(ckpt / "ema.safetensors"))
    model.load_state_dict({k: v.to(torch.float32) for k, v in ema.items()})
    step = json.loads((ckpt / "train_state.json").read_text())["step"]
    meta = {"gendr_pix.train_step": str(step), "gendr_pix.train_config": json.dumps(train_cfg, sort_keys=True)}
    meta.update(extra or {})
    path = save_model(model, out, dtype=torch.float16 if fp16 else None, metadata=meta)
    logger.info("exported step %d of %s to %s", step, ckpt, path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="training output_dir or one checkpoint folder")
    ap.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    ap.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    export(args.run, args.output, args.fp16)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
