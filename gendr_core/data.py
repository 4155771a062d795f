"""Training pairs from folders of HR images: random crop + flips, synthetic LR degradation.

Every random choice derives from ``seed`` (never from global RNG state), so an item is a pure
function of ``(seed, epoch, index)`` and identical with any ``num_workers``:

* image order: the dataset shuffles itself, permutation seeded by (seed, epoch, index // n);
* scale: one per batch, drawn from ``scales`` with a generator seeded by
  (seed, epoch, index // batch_size); so iterate with ``shuffle=False`` and the dataset's
  ``batch_size`` -- :func:`make_loader` builds that ``DataLoader`` and :func:`collate_pairs`
  checks a batch has one scale;
* crop, flips/transposition and :class:`~gendr_core.degradation.DegradationParams`: a
  per-item ``torch.Generator`` seeded by (seed, epoch, index).

:class:`ShardedHRDataset` gives the same items from tar shards packed by
``trainers/make_shards.py``, read lazily one image at a time (memory flat in the number of
images), with a two-level (shard, then image) shuffle per pass.

Images smaller than the crop are reflect-padded (not upscaled: an upscaled HR target is soft
and would teach the model to blur).

Throughput (real data ../shared/data/train_hr, 479 images, crop 192, batch 8, x4, default
Real-ESRGAN + APISR degradation, decoded-uint8 cache of 349 MiB filled in 4-12 s, 2 CPU cores
shared with other jobs): ``num_workers=0`` with ``torch.set_num_threads(1)``: ~42 items/s;
``num_workers=1`` (workers use one thread): 28-50 items/s; ``num_workers=0`` with torch's
default 2 threads: 46 items/s on an idle machine but only 10-13 items/s when the cores are
contended -- hence :func:`make_loader` defaults to one worker.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import sys
import tarfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .degradation import DegradationConfig, degrade, sample_degradation
from .errors import ConfigError, ImageInputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
# Stream tags mixed into the seeds so permutation, scale and item draws are independent.
_TAG_PERMUTATION, _TAG_SCALE, _TAG_ITEM, _TAG_SHARD_ROWS = 1, 2, 3, 4

DEFAULT_DEGRADATION = DegradationConfig()


def find_images(roots: str | Path | Sequence[str | Path]) -> list[Path]:
    """Sorted image files (IMAGE_EXTENSIONS, any case, recursive, no dot-files) under each root."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    if not roots:
        raise ConfigError("no image folder given (root=[])")
    files: list[Path] = []
    for root in roots:
        folder = Path(root).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        if folder.is_file():
            found = [folder] if folder.suffix.lower() in IMAGE_EXTENSIONS else []
        else:
            found = sorted(
                p for p in folder.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
            )
        if not found:
            raise ImageInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}, any case) found under "
                                  f"{folder}")
        files.extend(found)
    return files


def _decode_rgb_uint8(path: Path | str, data: bytes | None = None) -> Tensor:
    """Decode one file (or its bytes ``data``, ``path`` then only names it in errors) to (3,H,W)
    uint8 RGB (grayscale replicated, alpha dropped, EXIF-rotated)."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in _SIXTEEN_BIT_MODES:  # 16-bit grayscale: scale 0..65535 -> 0..255
                gray = np.asarray(im, dtype=np.float64)
                arr8 = np.clip(np.round(gray / 257.0), 0, 255).astype(np.uint8)
                arr = np.repeat(arr8[:, :, None], 3, axis=2)  # (H, W, 3)
            else:
                arr = np.array(im.convert("RGB"))  # (H, W, 3), writable copy
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"cannot decode image file {path}: {exc}") from exc
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageInputError(f"image file {path} has zero size {arr.shape[:2]}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _reflect_index(n: int, total: int, before: int) -> Tensor:
    """Indices reflect-padding an axis of length n to ``total`` (any pad width, no edge repeat)."""
    i = torch.arange(total) - before
    if n == 1:
        return torch.zeros(total, dtype=torch.long)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def random_crop(img: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Random size x size crop of a (C,H,W) image; sides < size are reflect-padded (centred)."""
    _, h, w = img.shape
    if h < size:
        img = img[:, _reflect_index(h, size, (size - h) // 2)]
        h = size
    if w < size:
        img = img[:, :, _reflect_index(w, size, (size - w) // 2)]
        w = size
    top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    return img[:, top:top + size, left:left + size]


def random_dihedral(img: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flip, vertical flip and transposition (all 8 square symmetries)."""
    return apply_dihedral(img, dihedral_flags(gen))


def dihedral_flags(gen: torch.Generator) -> tuple[bool, bool, bool]:
    """(hflip, vflip, transpose), each with probability 1/2: one of the 8 square symmetries."""
    hflip, vflip, transpose = (torch.rand(3, generator=gen) < 0.5).tolist()
    return hflip, vflip, transpose


def apply_dihedral(img: Tensor, flags: tuple[bool, bool, bool]) -> Tensor:
    """Apply :func:`dihedral_flags` to a (..., H, W) image (the same flags on several images keep them aligned)."""
    hflip, vflip, transpose = flags
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    if transpose:
        img = img.transpose(-1, -2)  # a 90-degree rotation combined with the flips
    return img.contiguous()


class HRFolderDataset(Dataset):
    """(HR crop, degraded LR) pairs from image folders; item = f(seed, epoch, index).

    ``scales`` defaults to ``degradation.scales``; ``degradation=None`` gives clean LR
    (antialiased bicubic, :meth:`DegradationConfig.bicubic`). ``crop_size`` must be divisible
    by every scale, so ``hr`` is always crop_size^2 and ``lr`` is (crop_size/s)^2.
    ``epoch_length`` (default: number of images) items per epoch, images repeat with fresh
    crops when it is larger. ``cache=True`` decodes every image once in ``__init__`` and keeps
    uint8 tensors (shared copy-on-write with forked DataLoader workers).
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        crop_size: int = 192,
        scales: Sequence[int] | None = None,
        degradation: DegradationConfig | None = DEFAULT_DEGRADATION,
        seed: int = 0,
        epoch_length: int | None = None,
        batch_size: int = 1,
        cache: bool = True,
        augment: bool = True,
        shuffle: bool = True,
    ) -> None:
        self._configure(crop_size, scales, degradation, seed, epoch_length, batch_size, augment, shuffle)
        self.files = find_images(root)
        self._perm: dict[tuple[int, int], Tensor] = {}
        self._cache: list[Tensor] | None = None
        if cache:
            t0 = time.perf_counter()
            self._cache = [_decode_rgb_uint8(p) for p in self.files]
            mb = sum(t.numel() for t in self._cache) / 2**20
            logger.info("decoded %d images (%.0f MiB uint8) in %.1f s", len(self.files), mb,
                        time.perf_counter() - t0)

    def _configure(self, crop_size: int, scales: Sequence[int] | None, degradation: DegradationConfig | None,
                   seed: int, epoch_length: int | None, batch_size: int, augment: bool, shuffle: bool) -> None:
        """Check and set the crop/scale/degradation/seed settings shared with :class:`ShardedHRDataset`."""
        if not isinstance(crop_size, int) or crop_size < 1:
            raise ConfigError(f"crop_size={crop_size!r} must be a positive integer")
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be an integer >= 0")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        if epoch_length is not None and (not isinstance(epoch_length, int) or epoch_length < 1):
            raise ConfigError(f"epoch_length={epoch_length!r} must be None or a positive integer")
        if scales is None:
            scales = degradation.scales if degradation is not None else (4,)
        scales = tuple(scales)
        if not scales or any(not isinstance(s, int) or s < 1 for s in scales):
            raise ConfigError(f"scales={scales!r} must be a non-empty list of integers >= 1")
        bad = [s for s in scales if crop_size % s]
        if bad:
            raise ConfigError(f"crop_size={crop_size} is not divisible by scale(s) {bad}; "
                              f"use a multiple of {int(np.lcm.reduce(scales))}")
        if degradation is None:
            degradation = DegradationConfig.bicubic(scales)
        degradation.check_dependencies()
        self.crop_size = crop_size
        self.scales = scales
        self.degradation = degradation
        self.seed = seed
        self.epoch_length = epoch_length
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def num_images(self) -> int:
        """How many distinct images the dataset crops from."""
        return len(self.files)

    def __len__(self) -> int:
        return self.epoch_length if self.epoch_length is not None else self.num_images

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (new order, scales, crops); call before creating the loader iterator."""
        self.epoch = int(epoch)

    def _seed(self, tag: int, key: int) -> int:
        """63-bit seed mixing (seed, epoch, tag, key) through numpy's SeedSequence."""
        lo, hi = np.random.SeedSequence([self.seed, self.epoch, tag, key]).generate_state(2, np.uint32)
        return (int(hi) << 31) ^ int(lo)

    def scale_for_index(self, index: int) -> int:
        """The scale of ``index``: shared by all items of batch ``index // batch_size``."""
        if len(self.scales) == 1:
            return self.scales[0]
        gen = torch.Generator().manual_seed(self._seed(_TAG_SCALE, index // self.batch_size))
        return self.scales[int(torch.randint(0, len(self.scales), (1,), generator=gen))]

    def image_index(self, index: int) -> int:
        """Which file item ``index`` crops (a fresh permutation per pass over the files)."""
        n = len(self.files)
        cycle, pos = divmod(index, n)
        if not self.shuffle:
            return pos
        key = (self.epoch, cycle)
        if key not in self._perm:
            if len(self._perm) > 8:
                self._perm.clear()
            gen = torch.Generator().manual_seed(self._seed(_TAG_PERMUTATION, cycle))
            self._perm[key] = torch.randperm(n, generator=gen)
        return int(self._perm[key][pos])

    def image(self, i: int) -> Tensor:
        """File ``i`` as (3,H,W) uint8 (from the cache when enabled)."""
        return self._cache[i] if self._cache is not None else _decode_rgb_uint8(self.files[i])

    def image_name(self, i: int) -> str:
        """Where image ``i`` comes from (the ``path`` of its items)."""
        return str(self.files[i])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        scale = self.scale_for_index(index)
        i = self.image_index(index)
        gen = torch.Generator().manual_seed(self._seed(_TAG_ITEM, index))
        crop = random_crop(self.image(i), self.crop_size, gen)
        if self.augment:
            crop = random_dihedral(crop, gen)
        hr = crop.float().div_(255)  # (3, crop, crop)
        params = sample_degradation(self.degradation, gen, (self.crop_size, self.crop_size), scale=scale)
        lr = degrade(hr, params)  # (3, crop/s, crop/s)
        return {"hr": hr, "lr": lr, "scale": scale, "params": params.to_json(),
                "path": self.image_name(i), "index": index}


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items: hr (B,3,H,W), lr (B,3,H/s,W/s), scale int, params/path lists, index (B,)."""
    scales = sorted({it["scale"] for it in items})
    if len(scales) != 1:
        raise ConfigError(
            f"batch mixes scales {scales}: iterate with shuffle=False and the dataset's batch_size "
            "(the dataset shuffles itself and draws one scale per batch); use make_loader(dataset)")
    return {
        "hr": torch.stack([it["hr"] for it in items]),
        "lr": torch.stack([it["lr"] for it in items]),
        "scale": scales[0],
        "params": [it["params"] for it in items],
        "path": [it["path"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }


def make_loader(dataset: HRFolderDataset, num_workers: int = 1, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader with one scale per batch: batch_size=dataset.batch_size, shuffle=False.

    Workers are forked where possible (Linux) so they share the decoded-image cache; they are
    not persistent, so ``dataset.set_epoch(e)`` before ``iter(loader)`` reaches them.
    """
    context = None
    if num_workers > 0 and sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        context = mp.get_context("fork")
    return DataLoader(dataset, batch_size=dataset.batch_size, shuffle=False, collate_fn=collate_pairs,
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                      multiprocessing_context=context)


# ----------------------------------------------------------------------------- HR image shards

HR_SHARDS_FORMAT = "gendr-pix-hr-shards/1"
SHARD_MANIFEST = "manifest.json"


def read_shard_manifest(path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """``(manifest file, shard entries)`` of a folder written by ``trainers/make_shards.py`` (or of
    its ``manifest.json`` itself). Every entry has ``name``, ``count`` (images) and ``bytes``; the
    files must exist with those sizes, and the manifest must say the packing finished."""
    path = Path(path).expanduser()
    manifest = path / SHARD_MANIFEST if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"no shard manifest {manifest}; pack a folder with "
                                "`python -m trainers.make_shards SRC --out DIR` and set data.shards=DIR")
    try:
        data = json.loads(manifest.read_text())
        fmt, shards, complete = data.get("format"), data["shards"], data.get("complete")
        entries = [{"name": str(e["name"]), "count": int(e["count"]), "bytes": int(e["bytes"])} for e in shards]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageInputError(f"cannot read the shard manifest {manifest}: {exc!r}") from None
    if fmt != HR_SHARDS_FORMAT:
        raise ImageInputError(f"{manifest}: format={fmt!r}, expected {HR_SHARDS_FORMAT!r} (a folder packed by "
                              "trainers/make_shards.py)")
    if complete is not True:
        raise ImageInputError(f"{manifest}: packing has not finished ({len(entries)} shard(s) so far); run "
                              "trainers/make_shards.py again with the same arguments to complete it")
    if not entries or any(e["count"] < 1 for e in entries):
        raise ImageInputError(f"{manifest}: every shard must hold at least one image, got counts "
                              f"{[e['count'] for e in entries][:8]}")
    for e in entries:
        f = manifest.parent / e["name"]
        size = f.stat().st_size if f.is_file() else None
        if size != e["bytes"]:
            raise ImageInputError(f"{f}: " + ("missing" if size is None else f"{size} bytes") + f", but {manifest.name} "
                                  f"records {e['bytes']}; re-run trainers/make_shards.py to rewrite it")
    return manifest, entries


def shard_members(path: Path) -> np.ndarray:
    """(N, 2) int64 (data offset, size) of the image members of a tar shard, in tar order.

    Only the 512-byte headers are read. WebDataset layout: a sample is the members sharing a key
    (``000000042.png``, ``000000042.json``, ...); each sample here has one image member
    (IMAGE_EXTENSIONS) and other members are ignored."""
    rows = []
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS:
                    rows.append((m.offset_data, m.size))
    except (OSError, tarfile.TarError) as exc:
        raise ImageInputError(f"cannot read tar shard {path}: {exc}") from None
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


class ShardedHRDataset(HRFolderDataset):
    """:class:`HRFolderDataset` items read lazily from tar shards (``trainers/make_shards.py``).

    Memory stays flat as the dataset grows: only the manifest's per-shard counts (O(shards)) and
    the member tables of the last few shards a process touched are held, and one image is read
    (one seek + read in its shard) and decoded per item. Crops, flips, scales and degradations are
    the folder dataset's, drawn from the same (seed, epoch, index) generators.

    Order (``shuffle``): pass ``c = index // n`` over the ``n`` images visits the shards in a
    permutation seeded by (seed, epoch, c) and each shard's images in a permutation seeded by
    (seed, epoch, c, shard) -- a two-level shuffle (shards should be packed in shuffled order, as
    make_shards does by default, so that a shard is a random sample). Every image is seen once per
    pass, and an item is a pure function of (seed, epoch, index); the trainers'
    :class:`~trainers.loop.StepBatchSampler` gives each process its slice of every global batch and
    the DataLoader hands each batch to one worker, so the world sees every image once per pass and a
    resumed run reads what an uninterrupted one does. ``shuffle=False`` reads images in packed order.
    """

    _KEEP_SHARDS = 4  # member tables and row permutations kept per process

    def __init__(
        self,
        shards: str | Path,
        crop_size: int = 192,
        scales: Sequence[int] | None = None,
        degradation: DegradationConfig | None = DEFAULT_DEGRADATION,
        seed: int = 0,
        epoch_length: int | None = None,
        batch_size: int = 1,
        augment: bool = True,
        shuffle: bool = True,
    ) -> None:
        self._configure(crop_size, scales, degradation, seed, epoch_length, batch_size, augment, shuffle)
        self.manifest, entries = read_shard_manifest(shards)
        self.shard_files = [self.manifest.parent / e["name"] for e in entries]
        self.counts = np.asarray([e["count"] for e in entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])  # first image id of each shard
        self._orders: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._rows: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._members: OrderedDict[int, np.ndarray] = OrderedDict()
        logger.info("%d images in %d shards (%s)", self.num_images, len(self.shard_files), self.manifest)

    @property
    def num_images(self) -> int:
        return int(self.counts.sum())

    def _shard_order(self, cycle: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, first position of each shard in that order) of pass ``cycle``."""
        key = (self.epoch, cycle)
        if key not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            gen = torch.Generator().manual_seed(self._seed(_TAG_PERMUTATION, cycle))
            order = torch.randperm(len(self.counts), generator=gen).numpy()
            self._orders[key] = order, np.concatenate([[0], np.cumsum(self.counts[order])[:-1]])
        return self._orders[key]

    def _shard_rows(self, cycle: int, shard: int) -> np.ndarray:
        """The order in which pass ``cycle`` visits the images of ``shard``."""
        key = (self.epoch, cycle, shard)
        if key not in self._rows:
            gen = torch.Generator().manual_seed(self._seed(_TAG_SHARD_ROWS, cycle * len(self.counts) + shard))
            self._rows[key] = torch.randperm(int(self.counts[shard]), generator=gen).numpy()
            while len(self._rows) > self._KEEP_SHARDS:
                self._rows.popitem(last=False)
        return self._rows[key]

    def image_index(self, index: int) -> int:
        """The image id (packed order, 0..n-1) that item ``index`` crops."""
        cycle, pos = divmod(index, self.num_images)
        if not self.shuffle:
            return pos
        order, first = self._shard_order(cycle)
        k = int(np.searchsorted(first, pos, side="right")) - 1
        shard = int(order[k])
        return int(self.starts[shard]) + int(self._shard_rows(cycle, shard)[pos - first[k]])

    def _locate(self, i: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return shard, i - int(self.starts[shard])

    def _member_table(self, shard: int) -> np.ndarray:
        if shard in self._members:
            self._members.move_to_end(shard)
            return self._members[shard]
        table = shard_members(self.shard_files[shard])
        if len(table) != self.counts[shard]:
            raise ImageInputError(f"{self.shard_files[shard]}: {len(table)} images, but {self.manifest} records "
                                  f"{int(self.counts[shard])}; re-run trainers/make_shards.py to rewrite it")
        self._members[shard] = table
        while len(self._members) > self._KEEP_SHARDS:
            self._members.popitem(last=False)
        return table

    def image(self, i: int) -> Tensor:
        """Image ``i`` (packed order) as (3,H,W) uint8, read from its shard."""
        shard, row = self._locate(i)
        offset, size = (int(v) for v in self._member_table(shard)[row])
        path = self.shard_files[shard]
        with path.open("rb") as f:  # opened per read: safe in forked DataLoader workers
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise ImageInputError(f"{path}: image {row} is cut off ({len(data)} of {size} bytes)")
        return _decode_rgb_uint8(self.image_name(i), data)

    def image_name(self, i: int) -> str:
        shard, row = self._locate(i)
        return f"{self.shard_files[shard]}#{row}"


__all__ = [
    "IMAGE_EXTENSIONS",
    "HRFolderDataset",
    "ShardedHRDataset",
    "collate_pairs",
    "find_images",
    "make_loader",
    "random_crop",
    "random_dihedral",
    "read_shard_manifest",
]


# ----------------------------------------------------------------------------- teacher targets

SHARD_GLOB = "shard_*.safetensors"


class TeacherPairShards(Dataset):
    """Precomputed (hr, lr, xr) triples from ``trainers/make_teacher_targets.py`` shards.

    Each shard is a ``.safetensors`` file with uint8 tensors ``hr`` (N,3,H,W), ``lr`` (N,3,h,w)
    and ``xr`` (N,3,H,W) = teacher(lr), and JSON metadata (``scale`` among it). Items are read
    lazily, one at a time (memory stays flat however many shards there are). With ``augment``,
    item ``index`` gets one random flip/transpose (from ``seed`` and ``index``) applied to hr, lr
    and xr alike, so the three stay pixel-aligned. ``len`` is ``epoch_length`` when given (items
    repeat with fresh augmentations), else the number of stored triples. Items are compatible
    with :func:`collate_pairs` and carry the teacher output as ``xr`` (float in [0,1]).
    With a ``manifest.json`` (written when a make_teacher_targets run finishes) only the shards
    it lists are read, so a folder that a later run is still extending serves the finished set.
    """

    def __init__(self, root: str | Path, seed: int = 0, augment: bool = True,
                 epoch_length: int | None = None) -> None:
        from safetensors import safe_open

        self.root = Path(root).expanduser()
        files = sorted(self.root.glob(SHARD_GLOB))
        if not files:
            raise FileNotFoundError(f"no teacher-target shards ({SHARD_GLOB}) in {self.root}; "
                                    "make them with `python -m trainers.make_teacher_targets`")
        manifest = self.root / "manifest.json"
        if manifest.is_file():  # the shards of the last finished make_teacher_targets run
            try:
                listed = [self.root / name for name in json.loads(manifest.read_text())["shards"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ImageInputError(f"cannot read the shard list of {manifest}: {exc}") from None
            missing = [p.name for p in listed if not p.is_file()]
            if missing:
                raise ImageInputError(f"{manifest} lists shards that are missing: {', '.join(missing[:3])}")
            unlisted = sorted(set(files) - set(listed))
            if unlisted:
                logger.warning("%s: %d shard(s) not in manifest.json (a make_teacher_targets run still going or "
                               "stopped early?) are not used: %s ...", self.root, len(unlisted), unlisted[0].name)
            files = listed
        self.files, self.offsets, self.scale = files, [], None
        total, first = 0, None  # first: (file, item shapes, teacher sha256) of the first shard
        for f in files:
            try:
                with safe_open(str(f), "pt") as sf:
                    keys, meta = set(sf.keys()), sf.metadata() or {}
                    shapes = {k: tuple(sf.get_slice(k).get_shape()) for k in ("hr", "lr", "xr") if k in keys}
                    dtypes = {sf.get_slice(k).get_dtype() for k in shapes}
            except Exception as exc:
                raise ImageInputError(f"cannot read teacher-target shard {f}: {exc}") from None
            if (set(shapes) != {"hr", "lr", "xr"} or dtypes != {"U8"} or shapes["hr"] != shapes["xr"]
                    or shapes["hr"][0] != shapes["lr"][0] or len(shapes["hr"]) != 4 or len(shapes["lr"]) != 4):
                raise ImageInputError(f"teacher-target shard {f}: expected uint8 'hr', 'lr', 'xr' (N,3,H,W) with "
                                      f"matching shapes, found {shapes} ({', '.join(sorted(dtypes))})")
            scale = int(meta.get("scale", shapes["hr"][-1] // shapes["lr"][-1]))
            if self.scale is None:
                self.scale = scale
            elif scale != self.scale:
                raise ImageInputError(f"teacher-target shard {f} has scale {scale}, the others {self.scale}")
            item = (shapes["hr"][1:], shapes["lr"][1:], meta.get("teacher_sha256"))
            if first is None:
                first = (f, item)
            elif item != first[1]:
                raise ImageInputError(f"teacher-target shard {f} does not match {first[0].name} (hr, lr item shapes, "
                                      f"teacher sha256): {item} vs {first[1]}; keep one run per folder")
            self.offsets.append(total)
            total += shapes["hr"][0]
        self.n, self.seed, self.augment, self.epoch_length = total, int(seed), augment, epoch_length

    def __len__(self) -> int:
        return self.epoch_length if self.epoch_length is not None else self.n

    def locate(self, index: int) -> tuple[Path, int]:
        """(shard file, row) of stored triple ``index % n``."""
        i = index % self.n
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.files[k], i - self.offsets[k]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from safetensors import safe_open

        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        path, row = self.locate(index)
        with safe_open(str(path), "pt") as sf:
            hr, lr, xr = (sf.get_slice(k)[row : row + 1][0] for k in ("hr", "lr", "xr"))
        if self.augment:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
            flags = dihedral_flags(gen)
            hr, lr, xr = (apply_dihedral(t, flags) for t in (hr, lr, xr))
        return {"hr": hr.float().div_(255), "lr": lr.float().div_(255), "xr": xr.float().div_(255),
                "scale": self.scale, "params": "", "path": f"{path.name}#{row}", "index": index}
