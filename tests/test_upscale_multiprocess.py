"""``gendr-pix upscale`` under torchrun: files split over the processes, finished outputs kept,
outputs byte-identical to a one-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gendr_core import save_model
from gendr_core.cli import launch_share, main, process_device, share_of_files
from gendr_core.errors import GenDRPixError

REPO = Path(__file__).resolve().parents[1]


def test_launch_share_reads_torchrun_variables_and_names_bad_ones():
    assert launch_share({}) == (0, 1, 0)
    assert launch_share({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(GenDRPixError, match="RANK=4"):
        launch_share({"WORLD_SIZE": "4", "RANK": "4", "LOCAL_RANK": "0"})
    with pytest.raises(GenDRPixError, match="WORLD_SIZE='two'"):
        launch_share({"WORLD_SIZE": "two", "RANK": "0"})
    assert process_device("cpu", 2, 1) == "cpu" and process_device("cuda:0", 2, 1) == "cuda:0"
    assert process_device("cuda", 2, 1) == "cuda:1" and process_device(None, 1, 0) is None


def test_share_of_files_splits_the_whole_list_round_robin():
    files = [Path(f"{i}.png") for i in range(5)]
    outs = [Path(f"out/{i}.png") for i in range(5)]
    shares = [share_of_files(files, outs, r, 2) for r in (0, 1)]
    assert [[f.name for f, _ in s] for s in shares] == [["0.png", "2.png", "4.png"], ["1.png", "3.png"]]
    assert sorted(o for s in shares for _, o in s) == sorted(outs)  # every file in exactly one share


@pytest.fixture
def inputs(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (h, w) in enumerate([(20, 24), (16, 16), (24, 18), (12, 20)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_existing_output_of_this_share_is_refused_or_kept(tmp_path, inputs, tiny_pix, monkeypatch, capsys):
    model = str(save_model(tiny_pix, tmp_path / "tiny.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "im1_x2.png").write_bytes(b"done by rank 1")  # im1 is rank 1's (every 2nd file from index 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")
    args = ["upscale", str(inputs), "-o", str(out), "--model", model, "--scale", "2", "-q", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "im1_x2.png" in err and "--skip-existing" in err and err.count("\n") == 1
    assert main(args + ["--skip-existing"]) == 0
    assert (out / "im1_x2.png").read_bytes() == b"done by rank 1"
    assert sorted(p.name for p in out.iterdir()) == ["im1_x2.png", "im3_x2.png"]  # rank 1's share only
    assert main(args + ["--skip-existing", "--overwrite"]) == 2


def test_two_processes_under_torchrun_match_one_process_byte_for_byte(tmp_path, inputs, tiny_pix):
    model = str(save_model(tiny_pix, tmp_path / "tiny.safetensors"))
    common = ["--model", model, "--scale", "2", "--guidance", "1.5", "-q", "--device", "cpu"]
    ref = tmp_path / "ref"
    assert main(["upscale", str(inputs), "-o", str(ref), *common]) == 0
    names = sorted(p.name for p in ref.iterdir())
    assert names == ["im0_x2.png", "im1_x2.png", "im2_x2.png", "im3_x2.png"]
    # half done: rank 0's im2 already exists (a copy of the one-process output) and must not be redone
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy2(ref / "im2_x2.png", out / "im2_x2.png")
    before = (out / "im2_x2.png").stat()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gendr_core.cli", "upscale", str(inputs), "-o", str(out), "--skip-existing", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "process 0/2: 1 file(s) to do, 1 kept" in log and "process 1/2: 2 file(s) to do, 0 kept" in log
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    after = (out / "im2_x2.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # kept, not rewritten
