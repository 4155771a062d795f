"""Precompute teacher targets x_r = teacher(LQ) once, into resumable shards (GenDR-Pix Alg. 1, Stage II).

Teachers are slow on a CPU (Real-ESRGAN x4plus: 1.1-1.3 s per 48² -> 192² crop on 2 cores,
so ~4.9 s per batch of 4, see trainers/README.md "Teachers"), while a Stage II step of the small
student takes ~1 s. Training reuses each pair over several epochs, so the teacher is run once
per pair here instead of once per step online.

Pairs (hr, lr) come from :class:`gendr_core.data.HRFolderDataset` (random crops + the training
degradation of ``--config``) at one ``--scale``; the teacher restores lr to the hr size. Shard
``k`` holds items ``[k*S, (k+1)*S)`` as uint8 ``hr``, ``lr``, ``xr``, with the teacher name and
sha256, scale, crop, seed, first index and the degradation config in its metadata. Shards are
written atomically and a complete shard is never recomputed, so a killed run continues where
it stopped; shards made with other settings are refused, not mixed in. Read them with :class:`gendr_core.data.TeacherPairShards`.

Run:  python -m trainers.make_teacher_targets --teacher runs/teachers/realesrgan-x4plus.safetensors \\
          --out runs/targets/x4plus_x4_c192 --count 1536
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from gendr_core.data import HRFolderDataset
from gendr_core.degradation import DegradationConfig
from gendr_core.errors import ConfigError
from gendr_core.fileio import atomic_write, file_sha256
from gendr_core.teachers import load_teacher
from trainers.loop import read_config_json

logger = logging.getLogger("trainers.make_teacher_targets")

DEFAULT_CONFIG = "trainers/configs/gendr_pix_s_stage8.json"  # the shipped fidelity model's last recipe



def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


# Metadata that must agree between an existing shard and this run (the teacher file may be renamed).
_RESUME_KEYS = ("teacher_sha256", "scale", "crop", "seed", "degradation", "train_dirs")


def _shard_is_complete(path: Path, meta_common: dict[str, str], first: int, n: int) -> bool:
    """True if ``path`` holds items [first, first+n) of this run; False if missing or made with a
    different --count (recomputed: items depend only on seed and index); ConfigError if it was
    made with other settings."""
    if not path.exists():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ConfigError(f"cannot read existing shard {path} ({exc}); delete it to recompute it") from None
    diff = [k for k in _RESUME_KEYS + ("first_index",) if meta.get(k) != (str(first) if k == "first_index"
                                                                          else meta_common[k])]
    if diff:
        k = diff[0]
        raise ConfigError(f"existing shard {path} was made with other settings ({k}: {str(meta.get(k))[:80]!r}, "
                          f"now {str(str(first) if k == 'first_index' else meta_common[k])[:80]!r}); "
                          "use another --out or delete the folder")
    if meta.get("count") != str(n):
        logger.info("%s holds %s pairs, this run wants %d: recomputing it", path.name, meta.get("count"), n)
        return False
    return True


def make_targets(teacher_path: str, out: str | Path, train_dirs: list[str], count: int, crop: int = 192,
                 scale: int = 4, shard_size: int = 64, seed: int = 0, degradation: DegradationConfig | None = None,
                 batch: int = 8, threads: int = 0) -> list[Path]:
    """Write the shards of items [0, count); returns every shard path (old and new)."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(teacher_path)
    digest = file_sha256(Path(teacher_path))
    ds = HRFolderDataset(train_dirs, crop_size=crop, scales=(scale,), degradation=degradation or DegradationConfig(),
                         seed=seed, epoch_length=count, batch_size=1)
    meta_common = {"teacher": teacher.name, "teacher_file": Path(teacher_path).name, "teacher_sha256": digest,
                   "scale": str(scale), "crop": str(crop), "seed": str(seed),
                   "degradation": ds.degradation.to_json(), "train_dirs": json.dumps(list(train_dirs))}
    n_shards = (count + shard_size - 1) // shard_size
    paths = [out / f"shard_{k:05d}.safetensors" for k in range(n_shards)]
    extra = sorted(p.name for p in out.glob("shard_*.safetensors") if p not in paths)
    if extra:
        raise ConfigError(f"{out} holds shards beyond --count {count} ({', '.join(extra[:3])}...); "
                          "TeacherPairShards would read them too: delete them or pass a larger --count")
    todo = [k for k, p in enumerate(paths)
            if not _shard_is_complete(p, meta_common, k * shard_size, min(shard_size, count - k * shard_size))]
    logger.info("%d of %d shards to compute in %s (teacher %s)", len(todo), n_shards, out, teacher.name)
    t0, done_items = time.perf_counter(), 0
    bar = tqdm(total=sum(min(shard_size, count - k * shard_size) for k in todo), desc="teacher targets",
               unit="pair", dynamic_ncols=True)
    for k in todo:
        first, last = k * shard_size, min(count, (k + 1) * shard_size)
        hrs, lrs, xrs = [], [], []
        for b0 in range(first, last, batch):
            items = [ds[i] for i in range(b0, min(last, b0 + batch))]
            hr = torch.stack([it["hr"] for it in items])
            lr = torch.stack([it["lr"] for it in items])
            xr = teacher.restore(lr, tuple(hr.shape[-2:]))
            hrs.append(_to_uint8(hr))
            lrs.append(_to_uint8(lr))
            xrs.append(_to_uint8(xr))
            bar.update(len(items))
            done_items += len(items)
        tensors = {"hr": torch.cat(hrs), "lr": torch.cat(lrs), "xr": torch.cat(xrs)}
        meta = {**meta_common, "first_index": str(first), "count": str(last - first)}
        atomic_write(paths[k], lambda tmp, t=tensors, m=meta: save_file(t, tmp, metadata=m))
        rate = done_items / (time.perf_counter() - t0)
        logger.info("wrote %s (%d pairs; %.2f pairs/s)", paths[k].name, last - first, rate)
    bar.close()
    manifest = {**meta_common, "count": count, "shard_size": shard_size, "shards": [p.name for p in paths]}
    atomic_write(out / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher model file (ours, or any spandrel SR file)")
    ap.add_argument("--out", required=True, help="output folder of shards")
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="training config whose 'degradation' (and data.train_dirs) are used (default: %(default)s)")
    ap.add_argument("--degradation", help="JSON file with a degradation config (or a training config with a "
                    "'degradation' section) to use instead of --config's")
    ap.add_argument("--train-dirs", nargs="+", help="override the config's data.train_dirs")
    ap.add_argument("--count", type=int, default=1536, help="number of pairs (default: %(default)s)")
    ap.add_argument("--crop", type=int, default=192, help="HR crop size (default: %(default)s)")
    ap.add_argument("--scale", type=int, default=4, help="SR scale (default: %(default)s)")
    ap.add_argument("--shard-size", type=int, default=64, help="pairs per shard (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="teacher batch size (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = read_config_json(Path(args.config))
    deg = data.get("degradation")
    if args.degradation:
        given = read_config_json(Path(args.degradation))
        deg = given.get("degradation", given)
    degradation = DegradationConfig.from_dict(deg, where=f"{args.degradation or args.config}: degradation") if deg else None
    train_dirs = args.train_dirs or data.get("data", {}).get("train_dirs") or ["../shared/data/train_hr"]
    make_targets(args.teacher, args.out, list(train_dirs), args.count, args.crop, args.scale, args.shard_size,
                 args.seed, degradation, args.batch, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
