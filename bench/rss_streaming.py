#!/usr/bin/env python3
"""Peak RSS of a 200-step streaming training run on 1,000 vs 10,000 images (issue 16).

    python bench/rss_streaming.py [--steps 200] [--sizes 1000,10000] [--json bench/rss_streaming.json]

For each size: writes that many seeded random 96x96 PNGs, packs them with
``trainers.make_shards`` (100 per shard), and runs ``python -m trainers.train_pixel`` on the tiny
CPU config (``trainers/configs/tiny_cpu.json``) reading ``data.shards``, for ``--steps`` steps, in
a child process whose peak resident set (``ru_maxrss`` from ``os.wait4``) is recorded. The
streaming reader keeps only the manifest and one shard's index in memory, so the two peaks should
differ by far less than 10 %. Results (and the ratio) go to one JSON file, written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png",
                                                                                compress_level=1)


def peak_rss_of(cmd: list[str], log: Path) -> tuple[int, int, float]:
    """(exit status, peak RSS in bytes, seconds) of ``cmd`` run as a child, its output to ``log``."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, time.monotonic() - t0  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "rss_streaming.json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for n in (int(s) for s in args.sizes.split(",")):
            src, shards, out = tmp / f"img{n}", tmp / f"shards{n}", tmp / f"run{n}"
            write_images(src, n)
            code, _, _ = peak_rss_of([sys.executable, "-m", "trainers.make_shards", str(src), "--out", str(shards),
                                      "--per-shard", "100"], tmp / f"shards{n}.log")
            if code:
                raise SystemExit(f"make_shards failed for {n} images: {(tmp / f'shards{n}.log').read_text()[-2000:]}")
            cfg = tmp / f"cfg{n}.json"
            cfg.write_text(json.dumps({"base": str(ROOT / "trainers" / "configs" / "tiny_cpu.json"),
                                       "data": {"shards": str(shards), "val_dirs": []},
                                       "val_every": 0, "save_every": 100000, "log_every": 10, "threads": 2}))
            code, peak, secs = peak_rss_of([sys.executable, "-m", "trainers.train_pixel", "--config", str(cfg),
                                            "--out", str(out), "--max-steps", str(args.steps), "--no-resume"],
                                           tmp / f"train{n}.log")
            if code:
                raise SystemExit(f"training failed for {n} images: {(tmp / f'train{n}.log').read_text()[-3000:]}")
            steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            rows.append({"images": n, "steps": steps[-1], "peak_rss_bytes": peak, "seconds": round(secs, 1)})
            print(f"{n} images: {steps[-1]} steps, peak RSS {peak / 2**20:.1f} MiB, {secs:.0f} s", flush=True)
    result = {"command": "python bench/rss_streaming.py " + " ".join(argv or sys.argv[1:]), "rows": rows,
              "ratio_last_to_first": rows[-1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"],
              "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(result, indent=1) + "\n")
    tmp_json.replace(args.json)
    print(f"peak RSS ratio {result['ratio_last_to_first']:.3f}; written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
