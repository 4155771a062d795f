"""GPU benchmark of issue 18 in one go: ``python bench/gpu_bench.py [--out FILE] [--groups ...]``.

Runs a fixed plan through gendr_core.bench's runner (:func:`gendr_core.bench.run_bench_config`,
the runner behind ``gendr-pix bench``; no timing code here) on CUDA in bf16:

* ``sd21``: the full 866M GenDR-Pix (SD2.1 UNet, x8 unshuffle, random weights: speed only) at
  1K (1024x1024), 2K (2048x2048), 4K (3840x2160) and 8K (7680x4320) output, no-CFG and PadCFG
  (w = 1.8, GenDR-Pix Sec. 5.1) with the two branches run one after the other (sequential: the
  peak of one pass), SDPA restricted to its fused kernels;
* ``sd21-compiled``: the same with ``torch.compile`` (first_run_seconds holds the compile time);
* ``sd21-options``: 4K and 8K no-CFG with feed-forward chunking at the two finest levels, with
  channels_last, and with windowed level-1 attention (64x64 tokens, the training patch);
* ``shipped``: the shipped models (gendr-pix-s-detail, gendr-pix-s), eager and compiled;
* ``latent``: the GenDR latent pipeline (VAE16 + the same UNet) at 4K, no-CFG, for the ratio.

Each entry of the plan is one runner call; the JSON (``--out``, default
bench/gpu_bench_<stamp>.json) is rewritten after every entry, so a run cut short keeps what
finished. ``--budget-s`` skips the
groups that would start after that many seconds. A table is printed at the end.

``--dry-run`` runs the same plan on the CPU with the tiny test model instead of the 866M one,
at two small sizes (compiled entries at one), one repeat, compile through the "eager" backend
(dynamo tracing without code generation), so the script is checked by
the test suite (tests/test_bench_gpu.py) without a GPU. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a clone: import this checkout's gendr_core
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gendr_core.bench import BenchConfig, run_bench_config  # noqa: E402
from gendr_core.checkpoint import SHIPPED_MODELS  # noqa: E402
from gendr_core.fileio import atomic_write  # noqa: E402
from gendr_core.pipeline import SpeedOptions  # noqa: E402

logger = logging.getLogger("gpu_bench")

SIZES = {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (3840, 2160), "8K": (7680, 4320)}
DRY_SIZES = {"1K": (64, 64), "4K": (128, 64)}  # stand-ins for the dry run: two sizes keep it short
PADCFG = 1.8  # GenDR-Pix Sec. 5.1: "we set PadCFG 1.8"
WINDOW = 64  # level-1 tokens of the 512-px training patch at x8 unshuffle
FF_CHUNK = 16384  # tokens per feed-forward slice (4K level 1: 130k tokens -> 8 slices)
GROUPS = ("sd21", "sd21-compiled", "sd21-options", "shipped", "latent")


@dataclass(frozen=True)
class Entry:
    """One runner call of the plan."""

    group: str
    label: str
    config: BenchConfig


def plan(dry_run: bool = False) -> list[Entry]:
    """The benchmark plan; with ``dry_run`` the CPU stand-in (tiny model, small sizes, eager compile backend)."""
    sizes = DRY_SIZES if dry_run else SIZES
    full = "random:tiny" if dry_run else "random:gendr-pix-sd21"
    base = BenchConfig(model=full, sizes=tuple(sizes.values()), device="cpu" if dry_run else "cuda",
                       dtype="fp32" if dry_run else "bf16", repeats=1 if dry_run else 5, warmup=1,
                       fresh_process_on_cpu=False, threads=1 if dry_run else None,
                       speed=SpeedOptions(fused_attention=True))
    compiled = replace(base.speed, compile=True, compile_backend="eager" if dry_run else "inductor")
    big = tuple(sizes[k] for k in ("4K", "8K") if k in sizes)
    one = {"sizes": (sizes["1K"],)} if dry_run else {}  # dry run: compile (a trace per size) at one size
    modes = (("no-cfg", 1.0, "batched"), ("padcfg-seq", PADCFG, "sequential"))
    out = []
    for mode, w, branch in modes:
        out.append(Entry("sd21", f"866M {mode} eager", replace(base, guidance=w, branch_mode=branch)))
    for mode, w, branch in modes:
        out.append(Entry("sd21-compiled", f"866M {mode} compiled",
                         replace(base, guidance=w, branch_mode=branch, speed=compiled, **one)))
    for label, speed in ((f"ff-chunk {FF_CHUNK}", replace(base.speed, ff_chunk=FF_CHUNK)),
                         ("channels_last", replace(base.speed, channels_last=True)),
                         (f"window {WINDOW}", replace(base.speed, attention_window=WINDOW))):
        out.append(Entry("sd21-options", f"866M no-cfg {label}", replace(base, sizes=big, speed=speed)))
    for name in SHIPPED_MODELS:
        out.append(Entry("shipped", f"{name} no-cfg eager", replace(base, model=name)))
        out.append(Entry("shipped", f"{name} padcfg-seq eager",
                         replace(base, model=name, guidance=PADCFG, branch_mode="sequential")))
        out.append(Entry("shipped", f"{name} no-cfg compiled", replace(base, model=name, speed=compiled, **one)))
    latent = {} if not dry_run else {"vae_config": _tiny_vae()}
    out.append(Entry("latent", "866M vs GenDR latent, no-cfg eager",
                     replace(base, sizes=(sizes["4K"],), compare=True, **latent)))
    return out


def _tiny_vae():
    from gendr_core.config import tiny_vae_config

    return tiny_vae_config(16)


def table(runs: list[dict]) -> str:
    """One line per row: label, output, median/first seconds, peak GiB, GMACs."""
    lines = [f"{'run':<44} {'pipeline':<14} {'output':>10} {'median s':>9} {'first s':>8} {'peak GiB':>9} "
             f"{'GMACs':>9}"]
    for run in runs:
        if "error" in run:
            lines.append(f"{run['label']:<44} failed: {run['error']}")
            continue
        for r in run["result"]["rows"]:
            peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"
            macs = "-" if r["macs"] is None else f"{r['macs'] / 1e9:.0f}"
            lines.append(f"{run['label']:<44} {r['pipeline'][:14]:<14} {'x'.join(map(str, r['output_size'])):>10} "
                         f"{r['seconds_median']:>9.3f} {r['first_run_seconds']:>8.2f} {peak:>9} {macs:>9}")
    return "\n".join(lines)


def _write(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=2, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", default=None, help="JSON file (default bench/gpu_bench_<stamp>.json)")
    ap.add_argument("--groups", nargs="*", default=list(GROUPS), choices=GROUPS, help="plan groups to run")
    ap.add_argument("--budget-s", type=float, default=None, help="do not start a group after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small sizes: checks the script only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.stderr.write("gpu_bench: no CUDA device; use --dry-run to check the script on the CPU\n")
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(__file__).resolve().parent / f"gpu_bench_{stamp}.json")
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
           "note": "dry run on the CPU with the tiny model: checks the script, numbers mean nothing" if args.dry_run
           else "random weights for the 866M model: timings and memory only", "runs": [], "skipped": []}
    t0 = time.perf_counter()
    for entry in plan(args.dry_run):
        if entry.group not in args.groups:
            continue
        if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
            doc["skipped"].append(entry.label)
            continue
        logger.info("gpu_bench: %s", entry.label)
        run = {"group": entry.group, "label": entry.label}
        try:
            run["result"] = run_bench_config(entry.config).to_dict()
        except Exception as exc:  # noqa: BLE001 - one failed entry (e.g. out of memory at 8K) must not end the plan
            if args.dry_run:
                raise
            run["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            logger.warning("gpu_bench: %s failed: %s", entry.label, run["error"])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        doc["runs"].append(run)
        _write(out, doc)
    _write(out, doc)
    sys.stdout.write(table(doc["runs"]) + "\n")
    if doc["skipped"]:
        sys.stdout.write(f"skipped (budget): {', '.join(doc['skipped'])}\n")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
