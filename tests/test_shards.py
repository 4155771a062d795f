"""Streaming HR shards: trainers/make_shards.py packing (resumable, atomic, hashed manifest) and
gendr_core.data.ShardedHRDataset reading (folder-equal items, two-level shuffle, rank/worker
slicing, flat memory)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gendr_core.data import HRFolderDataset, ShardedHRDataset, collate_pairs
from gendr_core.errors import ImageInputError
from trainers import make_shards as ms
from trainers.loop import BatchShard, DataConfig, StepBatchSampler, build_hr_dataset

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, size: int = 16, seed: int = 0) -> list[Path]:
    """``n`` distinct random RGB PNGs (a few of other sizes, one JPEG and one grayscale)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (size, size) if i % 7 else (size + 4, size - 2)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = folder / f"img{i:05d}.png"
        if i == 3:
            p = p.with_suffix(".jpg")
            Image.fromarray(arr).save(p, quality=95)
        elif i == 5:
            Image.fromarray(arr[..., 0], "L").save(p)
        else:
            Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def _members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def test_make_shards_packs_every_file_once_with_counts_and_hashes(tmp_path):
    paths = _images(tmp_path / "src", 25)
    manifest = json.loads(ms.make_shards([tmp_path / "src"], tmp_path / "out", per_shard=10).read_text())
    assert manifest["complete"] is True and manifest["total"] == 25
    assert [e["name"] for e in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [e["count"] for e in manifest["shards"]] == [10, 10, 5]
    packed = []
    for e in manifest["shards"]:
        f = tmp_path / "out" / e["name"]
        assert e["bytes"] == f.stat().st_size and e["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        packed += _members(f)
    assert [name.split(".")[0] for name, _ in packed] == [f"{i:09d}" for i in range(25)]  # serials 0..24
    assert sorted(name.split(".")[1] for name, _ in packed) == ["jpg"] + ["png"] * 24
    assert sorted(data for _, data in packed) == sorted(p.read_bytes() for p in paths)  # source bytes, each once
    # shuffled by the seed (not the sorted order), and the same seed gives the same shards byte for byte
    assert [data for _, data in packed] != [p.read_bytes() for p in paths]
    ms.make_shards([tmp_path / "src"], tmp_path / "again", per_shard=10)
    for e in manifest["shards"]:
        assert (tmp_path / "again" / e["name"]).read_bytes() == (tmp_path / "out" / e["name"]).read_bytes()


def test_make_shards_resumes_after_an_interruption_and_writes_only_the_rest(tmp_path, monkeypatch):
    _images(tmp_path / "src", 25)
    real_write, calls, die_at = ms.write_shard, [], [2]

    class Stopped(Exception):
        pass

    def dying_write(path, shard):
        calls.append(shard.name)
        if len(calls) in die_at:
            raise Stopped  # stopped while writing the second shard
        return real_write(path, shard)

    monkeypatch.setattr(ms, "write_shard", dying_write)
    out = tmp_path / "out"
    with pytest.raises(Stopped):
        ms.make_shards([tmp_path / "src"], out, per_shard=10)
    first = json.loads((out / "manifest.json").read_text())
    assert first["complete"] is False and [e["name"] for e in first["shards"]] == ["shard-000000.tar"]
    with pytest.raises(ImageInputError, match="has not finished"):
        ShardedHRDataset(out, crop_size=8, degradation=None, scales=(2,))
    (out / ".shard-000001.tar.x1y2.tmp").write_bytes(b"torn by a SIGKILL")  # what a kill mid-write leaves
    kept = (out / "shard-000000.tar").stat()
    calls.clear()
    die_at.clear()
    ms.make_shards([tmp_path / "src"], out, per_shard=10)
    assert calls == ["shard-000001.tar", "shard-000002.tar"]  # the finished shard was kept, not rewritten
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept.st_mtime_ns
    assert not list(out.glob(".*.tmp"))
    ms.make_shards([tmp_path / "src"], tmp_path / "fresh", per_shard=10)
    assert (json.loads((out / "manifest.json").read_text())
            == json.loads((tmp_path / "fresh" / "manifest.json").read_text()))
    # a changed source file changes its shard's plan hash: that shard alone is rewritten
    victim = next(p for p in sorted((tmp_path / "src").iterdir()) if p.suffix == ".png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(victim)
    calls.clear()
    ms.make_shards([tmp_path / "src"], out, per_shard=10)
    assert len(calls) == 1, calls


def test_sharded_items_equal_the_folder_items_in_packed_order(tmp_path):
    _images(tmp_path / "src", 9, size=20)
    ms.make_shards([tmp_path / "src"], tmp_path / "out", per_shard=4, order="sorted")
    kw = dict(crop_size=12, scales=(2, 3, 4), degradation=None, seed=3, epoch_length=18, batch_size=2,
              shuffle=False)
    folder = HRFolderDataset(tmp_path / "src", cache=False, **kw)
    shards = ShardedHRDataset(tmp_path / "out", **kw)
    assert len(shards) == len(folder) == 18 and shards.num_images == 9
    for i in range(18):
        a, b = folder[i], shards[i]
        assert a["scale"] == b["scale"] and torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    assert shards[5]["path"] == f"{tmp_path / 'out' / 'shard-000001.tar'}#1"


def test_two_level_shuffle_sees_every_image_once_per_pass_from_seed_and_epoch(tmp_path):
    _images(tmp_path / "src", 25)
    ms.make_shards([tmp_path / "src"], tmp_path / "out", per_shard=10)

    def ds(seed=0):
        return ShardedHRDataset(tmp_path / "out", crop_size=8, scales=(2,), degradation=None, seed=seed,
                                epoch_length=50)

    a = ds()
    order = [a.image_index(i) for i in range(50)]
    assert sorted(order[:25]) == sorted(order[25:]) == list(range(25))  # each image once per pass
    assert order[:25] != order[25:] and order[:25] != list(range(25))
    shard_of = [int(np.searchsorted(a.starts, i, side="right")) - 1 for i in order[:25]]
    runs = [k for j, k in enumerate(shard_of) if j == 0 or k != shard_of[j - 1]]
    assert sorted(runs) == [0, 1, 2]  # a pass reads one shard after another
    assert [ds().image_index(i) for i in range(50)] == order  # a pure function of (seed, epoch, index)
    assert [ds(seed=1).image_index(i) for i in range(25)] != order[:25]
    a.set_epoch(1)
    assert [a.image_index(i) for i in range(25)] != order[:25]


def _tag_worker(items):
    info = torch.utils.data.get_worker_info()
    return {**collate_pairs(items), "worker": -1 if info is None else info.id}


def test_ranks_and_loader_workers_together_see_every_image_once(tmp_path):
    _images(tmp_path / "src", 24)
    ms.make_shards([tmp_path / "src"], tmp_path / "out", per_shard=5)
    ds = ShardedHRDataset(tmp_path / "out", crop_size=8, scales=(2,), degradation=None, seed=0, batch_size=4)
    assert len(ds) == 24
    seen: dict[tuple[int, int], list[int]] = {}
    batches: dict[int, list[torch.Tensor]] = {}
    for rank in (0, 1):
        sampler = StepBatchSampler(4, 0, 6, BatchShard(rank, 2, 4))
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=_tag_worker,
                                             multiprocessing_context="fork")
        batches[rank] = []
        for batch in loader:
            seen.setdefault((rank, batch["worker"]), []).extend(ds.image_index(int(i)) for i in batch["index"])
            batches[rank].append(batch["hr"])
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every rank's two workers got work
    every = [i for ids in seen.values() for i in ids]
    assert sorted(every) == list(range(24))  # the world saw each image exactly once in the pass
    # a resumed rank 1 (from step 3) reads what the uninterrupted one did
    fresh = ShardedHRDataset(tmp_path / "out", crop_size=8, scales=(2,), degradation=None, seed=0, batch_size=4)
    resumed = [collate_pairs([fresh[i] for i in idx])["hr"] for idx in StepBatchSampler(4, 3, 6, BatchShard(1, 2, 4))]
    assert all(torch.equal(x, y) for x, y in zip(resumed, batches[1][3:], strict=True))


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _peak_growth_kib(make_dataset, index_batches) -> int:
    """Peak RSS growth (VmHWM after a reset, Linux) while building a dataset and reading the batches."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _kib("VmRSS")
    ds = make_dataset()
    for batch in torch.utils.data.DataLoader(ds, batch_sampler=index_batches, collate_fn=collate_pairs):
        assert batch["hr"].shape[-1] == 16
    del ds
    return _kib("VmHWM") - base


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_memory_stays_flat_from_1k_to_10k_images(tmp_path):
    rng = np.random.default_rng(0)
    for n in (1000, 10000):  # 16x16 PNGs, written with make_shards' own shard writer
        src = tmp_path / f"src{n}"
        src.mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"{i:05d}.png",
                                                                                     compress_level=0)
        ms.make_shards([src], tmp_path / f"shards{n}", per_shard=100)

    def growth(kind: str, root: Path, n: int) -> int:
        # a fresh interpreter per measurement: in a long pytest process the allocator reuses pages freed by
        # earlier tests, so RSS would not grow at all and both bounds would be meaningless
        code = ("import sys, torch; sys.path.insert(0, %r); import tests.test_shards as t; "
                "from gendr_core.data import HRFolderDataset, ShardedHRDataset; import numpy as np; "
                "kw = dict(crop_size=16, scales=(4,), degradation=None, seed=0, batch_size=8); "
                "pos = np.linspace(0, %d - 1, 800).astype(int).tolist(); b = [pos[k:k + 8] for k in range(0, 800, 8)]; "
                "cls = %s; print(t._peak_growth_kib(lambda: cls(%r, **kw), b))"
                ) % (str(REPO), n, kind, str(root))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
        return int(out.stdout.strip().splitlines()[-1])

    small = growth("ShardedHRDataset", tmp_path / "shards1000", 1000)
    large = growth("ShardedHRDataset", tmp_path / "shards10000", 10000)
    assert large - small < 1024, (small, large)  # KiB: 10x the images, under 1 MiB more peak memory
    cached_small = growth("HRFolderDataset", tmp_path / "src1000", 1000)
    cached_large = growth("HRFolderDataset", tmp_path / "src10000", 10000)
    assert cached_large - cached_small > 6 * 1024, (cached_small, cached_large)


def test_trainer_config_streams_from_data_shards(tmp_path):
    from trainers import train_fixmod, train_pixel, train_stage2

    ms.make_shards([REPO / "tests" / "fixtures"], tmp_path / "shards", per_shard=3)
    data = DataConfig(shards=str(tmp_path / "shards"), crop_size=48, batch_size=2, scales=(4,))
    ds = build_hr_dataset(data, None, seed=0, epoch_length=8)
    assert isinstance(ds, ShardedHRDataset) and ds.num_images == 4 and len(ds) == 8
    assert type(build_hr_dataset(DataConfig(train_dirs=(str(REPO / "tests" / "fixtures"),), crop_size=48,
                                            batch_size=2, scales=(4,)), None, 0, 8)) is HRFolderDataset
    over = {"data.shards": str(tmp_path / "shards"), "data.train_dirs": ["does/not/exist"]}
    stage2 = train_stage2.load_config(REPO / "trainers" / "configs" / "stage2_tiny_cpu.json", over)
    fixmod = train_fixmod.load_config(REPO / "trainers" / "configs" / "fixmod_tiny_cpu.json", over)
    for cfg, build in ((stage2, train_stage2.build_dataset), (fixmod, train_fixmod.build_dataset)):
        got = build(cfg)
        assert isinstance(got, ShardedHRDataset) and got.num_images == 4
    # train_pixel: two real steps from the shards
    cfg = train_pixel.load_config(REPO / "trainers" / "configs" / "tiny_cpu.json",
                                  {**over, "output_dir": str(tmp_path / "run"), "optim.max_steps": 2,
                                   "val_every": 0, "save_every": 100, "threads": 1, "data.val_dirs": []})
    out = train_pixel.train(cfg, resume=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_hr_dataset(DataConfig(shards=str(tmp_path / "nowhere")), None, 0, 8)
