"""Tests of gendr_core.data: image discovery, decoding, crops, determinism, scale batching."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gendr_core.data import (
    HRFolderDataset,
    _decode_rgb_uint8,
    _reflect_index,
    apply_dihedral,
    collate_pairs,
    dihedral_flags,
    find_images,
    make_loader,
    random_crop,
)
from gendr_core.degradation import DegradationConfig, DegradationParams
from gendr_core.errors import ConfigError, ImageInputError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CFG = (DegradationConfig() if importlib.util.find_spec("av") is not None
       else DegradationConfig.realesrgan(apisr_codecs=False))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """3 tiny PNGs: RGB 40x50, grayscale 36x36 (nested, upper-case suffix), RGB 10x12 < crop."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8), "L").save(tmp_path / "sub" / "b.PNG")
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def make(folder: Path, **kw) -> HRFolderDataset:
    args = dict(crop_size=24, scales=(2, 3, 4), degradation=CFG, seed=0, epoch_length=6, batch_size=2)
    args.update(kw)
    return HRFolderDataset(folder, **args)


def test_find_images_and_decode(folder: Path):
    files = find_images(folder)
    assert [f.name for f in files] == ["a.png", "c.png", "b.PNG"]
    gray = _decode_rgb_uint8(folder / "sub" / "b.PNG")
    assert gray.shape == (3, 36, 36) and gray.dtype == torch.uint8
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    deep = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    Image.fromarray(deep).save(folder / "d16.png")  # 16-bit grayscale PNG
    d16 = _decode_rgb_uint8(folder / "d16.png")
    assert d16[0].tolist() == [[0, 100], [255, 7]]


def test_items_shapes_dtypes_ranges(folder: Path):
    ds = make(folder)
    assert len(ds) == 6
    for i in range(len(ds)):
        it = ds[i]
        s = it["scale"]
        assert s in (2, 3, 4) and it["hr"].shape == (3, 24, 24) and it["lr"].shape == (3, 24 // s, 24 // s)
        assert it["hr"].dtype == it["lr"].dtype == torch.float32
        assert 0 <= float(it["lr"].min()) and float(it["lr"].max()) <= 1 and float(it["hr"].max()) <= 1
        p = DegradationParams.from_json(it["params"])
        assert p.scale == s and p.lr_size == (24 // s, 24 // s) and p.hr_size == (24, 24)
    with pytest.raises(IndexError):
        ds[6]


def test_items_are_reproducible(folder: Path):
    a, b = make(folder), make(folder, cache=False)
    for i in (0, 3, 5):
        x, y = a[i], b[i]
        assert torch.equal(x["hr"], y["hr"]) and torch.equal(x["lr"], y["lr"]) and x["params"] == y["params"]
    c = make(folder, seed=1)
    assert not torch.equal(a[0]["hr"], c[0]["hr"])
    before = a[0]
    a.set_epoch(1)
    assert before["params"] != a[0]["params"]


def test_loader_batches_have_one_scale(folder: Path):
    ds = make(folder, epoch_length=8)
    batches = list(make_loader(ds, num_workers=0))
    assert len(batches) == 4
    for batch in batches:
        s = batch["scale"]
        assert isinstance(s, int) and batch["hr"].shape == (2, 3, 24, 24)
        assert batch["lr"].shape == (2, 3, 24 // s, 24 // s) and len(batch["params"]) == 2
    assert {b["scale"] for b in batches} == {ds.scale_for_index(2 * k) for k in range(4)}
    worker = next(iter(make_loader(ds, num_workers=1)))  # same items in a forked worker
    assert torch.equal(worker["lr"], batches[0]["lr"]) and worker["params"] == batches[0]["params"]
    # One epoch visits every image (the dataset shuffles itself).
    assert {p for b in batches for p in b["path"]} == {str(f) for f in ds.files}
    mixed = [{"hr": torch.zeros(3, 4, 4), "lr": torch.zeros(3, 2, 2), "scale": 2, "params": "",
              "path": "", "index": 0}, {"hr": torch.zeros(3, 4, 4), "lr": torch.zeros(3, 1, 1),
                                        "scale": 4, "params": "", "path": "", "index": 1}]
    with pytest.raises(ConfigError, match="mixes scales"):
        collate_pairs(mixed)


def test_small_image_is_reflect_padded():
    assert _reflect_index(4, 10, 3).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    img = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    crop = random_crop(img, 6, torch.Generator().manual_seed(0))
    assert crop.shape == (1, 6, 6)
    assert crop[0, :, 1].tolist() == [4, 0, 4, 8, 4, 0]  # rows reflected around the centred copy


def test_clean_bicubic_when_degradation_is_none(folder: Path):
    ds = make(folder, degradation=None, scales=(2,), augment=False)
    it = ds[0]
    ref = torch.nn.functional.interpolate(it["hr"][None], size=(12, 12), mode="bicubic", antialias=True)[0]
    assert float((it["lr"] - ref.clamp(0, 1)).abs().max()) <= 0.5 / 255 + 1e-6


def test_errors_name_folder_and_file(tmp_path: Path, folder: Path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ImageInputError, match="empty_dir"):
        HRFolderDataset(empty, crop_size=24)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        HRFolderDataset(tmp_path / "missing_dir", crop_size=24)
    with pytest.raises(ConfigError, match="not divisible"):
        make(folder, crop_size=20)
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageInputError, match="broken.jpg"):
        make(folder)


def test_real_training_folder():
    root = SHARED_DATA / "train_hr"
    if not root.is_dir():
        pytest.skip(f"SKIPPED LOUDLY: real training images not found at {root} "
                    "(../shared/data not found next to the repository)")
    ds = HRFolderDataset(root, crop_size=192, scales=(4,), degradation=CFG, seed=0, batch_size=2,
                         cache=False)
    assert len(ds.files) > 100
    batch = collate_pairs([ds[0], ds[1]])
    assert batch["hr"].shape == (2, 3, 192, 192) and batch["lr"].shape == (2, 3, 48, 48)
    assert batch["scale"] == 4 and json.loads(batch["params"][0])["lr_size"] == [48, 48]


# ----------------------------------------------------------------------------- teacher-target shards


def _write_shard(path: Path, n: int = 3, crop: int = 16, scale: int = 4, sha: str = "a" * 64,
                 dtype: torch.dtype = torch.uint8) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(n + crop)
    t = {k: torch.randint(0, 256, (n, 3, s, s), generator=g).to(dtype)
         for k, s in (("hr", crop), ("lr", crop // scale), ("xr", crop))}
    save_file(t, str(path), metadata={"scale": str(scale), "teacher_sha256": sha})
    return path


def test_teacher_pair_shards_reads_lazily_and_flips_jointly(tmp_path: Path):
    from safetensors.torch import load_file

    from gendr_core.data import TeacherPairShards

    a = _write_shard(tmp_path / "shard_00000.safetensors", n=3)
    b = _write_shard(tmp_path / "shard_00001.safetensors", n=2)
    ds = TeacherPairShards(tmp_path, seed=5)
    assert len(ds) == 5 and ds.scale == 4 and ds.locate(4) == (b, 1)
    raw = load_file(str(b))
    item = ds[4]
    assert set(item) >= {"hr", "lr", "xr", "scale", "params", "path", "index"} and item["path"] == "shard_00001.safetensors#1"
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([5, 4]).generate_state(1)[0]))
    flags = dihedral_flags(gen)
    for k in ("hr", "lr", "xr"):
        assert torch.equal(item[k], apply_dihedral(raw[k][1], flags).float() / 255)
    batch = collate_pairs([ds[0], ds[1]])
    assert batch["hr"].shape == (2, 3, 16, 16) and batch["lr"].shape == (2, 3, 4, 4) and batch["scale"] == 4
    assert a.exists()


def test_teacher_pair_shards_errors_name_the_file(tmp_path: Path):
    from gendr_core.data import TeacherPairShards

    with pytest.raises(FileNotFoundError, match="no teacher-target shards"):
        TeacherPairShards(tmp_path)
    _write_shard(tmp_path / "shard_00000.safetensors")
    _write_shard(tmp_path / "shard_00001.safetensors", crop=32)
    with pytest.raises(ImageInputError, match=r"shard_00001\.safetensors does not match shard_00000"):
        TeacherPairShards(tmp_path)
    _write_shard(tmp_path / "shard_00001.safetensors", sha="b" * 64)
    with pytest.raises(ImageInputError, match=r"shard_00001\.safetensors does not match.*teacher sha256"):
        TeacherPairShards(tmp_path)
    _write_shard(tmp_path / "shard_00001.safetensors", dtype=torch.float32)
    with pytest.raises(ImageInputError, match=r"shard_00001\.safetensors: expected uint8.*F32"):
        TeacherPairShards(tmp_path)
    _write_shard(tmp_path / "shard_00001.safetensors", crop=32, scale=2)
    with pytest.raises(ImageInputError, match=r"shard_00001\.safetensors has scale 2, the others 4"):
        TeacherPairShards(tmp_path)
    (tmp_path / "shard_00001.safetensors").write_bytes(b"broken")
    with pytest.raises(ImageInputError, match=r"cannot read teacher-target shard .*shard_00001"):
        TeacherPairShards(tmp_path)


def test_teacher_pair_shards_follow_the_manifest(tmp_path: Path, caplog):
    from gendr_core.data import TeacherPairShards

    for k in range(3):
        _write_shard(tmp_path / f"shard_{k:05d}.safetensors", n=2)
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["shard_00000.safetensors",
                                                                   "shard_00001.safetensors"]}))
    with caplog.at_level("WARNING", logger="gendr_core.data"):
        ds = TeacherPairShards(tmp_path)
    assert len(ds) == 4 and [f.name for f in ds.files] == ["shard_00000.safetensors", "shard_00001.safetensors"]
    assert "1 shard(s) not in manifest.json" in caplog.text
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": ["shard_00000.safetensors",
                                                                   "shard_00007.safetensors"]}))
    with pytest.raises(ImageInputError, match=r"manifest\.json lists shards that are missing: shard_00007"):
        TeacherPairShards(tmp_path)
