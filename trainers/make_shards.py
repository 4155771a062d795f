"""Pack image folders into tar shards for streaming training (``data.shards`` in a trainer config).

    python -m trainers.make_shards ../shared/data/train_hr --out ../shards/train_hr [--per-shard 1000]

Layout (WebDataset-style, readable by any tar tool): ``OUT/shard-000000.tar`` ... each holding
``--per-shard`` images as members ``<serial>.<ext>`` (the source files' bytes, not re-encoded;
``serial`` counts over the whole set), and ``OUT/manifest.json`` with, per shard, its image count,
size in bytes and SHA-256, plus the format tag :data:`gendr_core.data.HR_SHARDS_FORMAT`. Tar headers
are fixed (mtime 0, uid/gid 0, mode 0644), so the same files and arguments give byte-identical shards.

Images go to shards in an order shuffled by ``--seed`` (``--order sorted`` keeps the sorted file
order): a shard is then a random sample, which the readers' two-level shuffle (shard order, then
order inside a shard; :class:`gendr_core.data.ShardedHRDataset`) relies on.

Resumable and atomic: each shard is written to a temporary file and renamed when complete, and the
manifest (``"complete": false`` until the last shard) is rewritten atomically after each one. A run
that is stopped and started again with the same arguments keeps every finished shard whose planned
file list (paths and sizes, hashed) and size still match and writes the rest; ``--verify`` also
re-hashes the kept shards. Training refuses a folder whose manifest is not complete.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from gendr_core.data import HR_SHARDS_FORMAT, SHARD_MANIFEST, find_images
from gendr_core.errors import ConfigError, ImageInputError
from gendr_core.fileio import atomic_write, file_sha256

logger = logging.getLogger(__name__)

ORDERS = ("shuffled", "sorted")


@dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan: its file name, the source files (in member order) and their first serial."""

    name: str
    files: tuple[Path, ...]
    first_serial: int
    plan_sha256: str  # hash of the files' paths and sizes: a finished shard is kept only if this matches


def plan_shards(files: Sequence[Path], per_shard: int, order: str = "shuffled", seed: int = 0) -> list[PlannedShard]:
    """Split ``files`` into shards of ``per_shard`` (the last may be smaller), after a permutation
    seeded by ``seed`` (``order="shuffled"``) or in the given order (``"sorted"``)."""
    if not isinstance(per_shard, int) or per_shard < 1:
        raise ConfigError(f"--per-shard={per_shard!r} must be a positive integer")
    if order not in ORDERS:
        raise ConfigError(f"--order={order!r} must be one of {ORDERS}")
    files = list(files)
    if order == "shuffled":
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        files = [files[i] for i in perm]
    plan = []
    for k, first in enumerate(range(0, len(files), per_shard)):
        group = tuple(files[first:first + per_shard])
        h = hashlib.sha256()
        for f in group:
            h.update(f"{f}\0{f.stat().st_size}\n".encode())
        plan.append(PlannedShard(f"shard-{k:06d}.tar", group, first, h.hexdigest()))
    return plan



def _check_image(path: Path, data: bytes) -> None:
    """Refuse a file PIL cannot identify (reads the header only), naming it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"cannot read image file {path}: {exc}") from None
    if w == 0 or h == 0:
        raise ImageInputError(f"image file {path} has zero size {(h, w)}")


def write_shard(path: Path, shard: PlannedShard) -> dict[str, object]:
    """Write ``shard`` to ``path`` atomically; returns its manifest entry (name, count, bytes, sha256)."""

    def write(tmp: str) -> None:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for serial, src in enumerate(shard.files, start=shard.first_serial):
                data = src.read_bytes()
                _check_image(src, data)
                info = tarfile.TarInfo(f"{serial:09d}{src.suffix.lower()}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tf.addfile(info, io.BytesIO(data))

    atomic_write(path, write)
    return {"name": shard.name, "count": len(shard.files), "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "plan_sha256": shard.plan_sha256}


def _write_manifest(out: Path, header: dict[str, object], entries: list[dict[str, object]], complete: bool) -> None:
    text = json.dumps({**header, "complete": complete, "total": sum(int(e["count"]) for e in entries),
                       "shards": entries}, indent=1)
    atomic_write(out / SHARD_MANIFEST, lambda tmp: Path(tmp).write_text(text + "\n"))


def _previous_entries(out: Path) -> dict[str, dict[str, object]]:
    """Shard entries of an earlier run's manifest in ``out`` (by name); {} when there is none."""
    manifest = out / SHARD_MANIFEST
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") != HR_SHARDS_FORMAT:
            raise ValueError(f"format={data.get('format')!r}")
        return {str(e["name"]): e for e in data["shards"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{manifest} exists but is not a make_shards manifest ({exc}); pick another --out") from None


def make_shards(sources: Sequence[str | Path], out: str | Path, per_shard: int = 1000, order: str = "shuffled",
                seed: int = 0, verify: bool = False, progress: Callable[[int, int], None] | None = None) -> Path:
    """Pack the images under ``sources`` into ``out`` (see the module docstring); returns the manifest path."""
    out = Path(out).expanduser()
    files = find_images(sources)
    plan = plan_shards(files, per_shard, order, seed)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_entries(out)
    for torn in out.glob(".shard-*.tar.*.tmp"):  # a shard an interrupted run was writing
        torn.unlink()
    header = {"format": HR_SHARDS_FORMAT, "sources": [str(s) for s in sources], "per_shard": per_shard,
              "order": order, "seed": seed}
    entries: list[dict[str, object]] = []
    kept = 0
    for k, shard in enumerate(plan):
        path, old = out / shard.name, previous.get(shard.name)
        if (old is not None and old.get("plan_sha256") == shard.plan_sha256 and path.is_file()
                and path.stat().st_size == old.get("bytes") and (not verify or file_sha256(path) == old.get("sha256"))):
            entries.append(old)
            kept += 1
        else:
            entries.append(write_shard(path, shard))
        _write_manifest(out, header, entries, complete=False)
        if progress is not None:
            progress(k + 1, len(plan))
    planned = {s.name for s in plan}
    for stale in out.glob("shard-*.tar"):  # shards of an earlier, larger plan
        if stale.name not in planned:
            stale.unlink()
    _write_manifest(out, header, entries, complete=True)
    logger.info("%d images in %d shards under %s (%d kept from an earlier run)", len(files), len(plan), out, kept)
    return out / SHARD_MANIFEST


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.make_shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="image folders (searched recursively) and/or image files")
    ap.add_argument("--out", required=True, help="output folder for shard-*.tar and manifest.json")
    ap.add_argument("--per-shard", type=int, default=1000, help="images per shard (default 1000)")
    ap.add_argument("--order", choices=ORDERS, default="shuffled",
                    help="'shuffled' (default): images spread over the shards at random by --seed; 'sorted'")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffled order (default 0)")
    ap.add_argument("--verify", action="store_true", help="re-hash shards kept from an earlier run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bar = tqdm(unit="shard", desc="make_shards")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        make_shards(args.sources, args.out, args.per_shard, args.order, args.seed, args.verify, progress)
    finally:
        bar.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
