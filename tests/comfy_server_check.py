#!/usr/bin/env python3
"""Run the pack in a real ComfyUI server and write what happened to one JSON file.

Not collected by pytest (it needs a ComfyUI checkout and a venv with its requirements; see
``../shared/COMFYUI.md``). Each run goes through ``../shared/tools/comfy_e2e.py``, which
starts a fresh server on 127.0.0.1 with ``--cpu``, queues the prompt through ``/prompt``,
follows the websocket and reads ``/history``. This script

1. queues every shipped workflow, UI format (``workflows/*.json``) and API format
   (``workflows/api/*.json``), with a photo as the LoadImage input, and records status,
   time, progress updates per node and output sizes;
2. measures cancel latency on the whole-image path: a 512x512 input through the PadCFG
   sampler at scale 8 (512 -> 4096) with ``tiling`` off, interrupted a few seconds into the
   pass; the latency is the time from ``POST /interrupt`` to the ``execution_interrupted``
   event;
3. times the sampler at 2048x2048 output with ``tiling`` auto, off (whole image) and fixed
   512, so the auto choice can be compared with the faster of the two.

Usage::

    python tests/comfy_server_check.py --comfy-dir /path/ComfyUI --python /path/venv/bin/python \\
        --json bench/comfy_server_run.json

Run it on a quiet machine: the cancel latency and the timings are wall-clock numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT.parent / "shared" / "tools" / "comfy_e2e.py"
PHOTO = ROOT.parent / "shared" / "data" / "val" / "Kodak24" / "HR"


def make_inputs(tmp: Path) -> dict[str, Path]:
    """A 240x160 photo crop for the workflows (the 4K workflow's x4 stays quick on a CPU) and
    a 512x512 crop for the cancel run."""
    from PIL import Image

    files = sorted(p for p in PHOTO.iterdir() if p.suffix.lower() == ".png") if PHOTO.is_dir() else []
    if not files:
        raise SystemExit(f"no photo found in {PHOTO}: this check needs ../shared/data/val")
    im = Image.open(files[0]).convert("RGB")
    small, big = tmp / "photo_240x160.png", tmp / "photo_512.png"
    im.crop((0, 0, 240, 160)).save(small)
    im.crop((0, 0, 512, 512)).save(big)
    return {"small": small, "big": big}


def e2e(args: argparse.Namespace, workflow: Path | None, image: Path | None, out: Path, *extra: str) -> dict:
    """One comfy_e2e.py run (a fresh server); ``workflow`` None: import check and node listing only."""
    cmd = [sys.executable, str(E2E), "--pack", str(ROOT), "--name", "ComfyUI-GenDR-Pix", "--comfy-dir",
           args.comfy_dir, "--python", args.python, "--out", str(out), "--timeout", str(args.timeout), *extra]
    if workflow is not None:
        cmd += ["--workflow", str(workflow)]
    if image is not None:
        cmd += ["--input-image", str(image)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        summary = {"ok": False, "errors": [f"comfy_e2e printed no JSON (exit {proc.returncode})",
                                           proc.stderr[-2000:]]}
    summary["wall_s"] = round(time.monotonic() - t0, 2)
    return summary


def brief(s: dict) -> dict:
    """The parts of a comfy_e2e summary worth keeping."""
    return {
        "ok": s.get("ok"),
        "status": s.get("status"),
        "execution_s": (s.get("elapsed_s") or {}).get("execution"),
        "wall_s": s.get("wall_s"),
        # per node: progress updates and seconds from the first to the last update
        "progress": {node: {"updates": p.get("updates"), "span_s": round(p.get("last_s", 0) - p.get("first_s", 0), 2)}
                     for node, p in (s.get("progress") or {}).items()},
        "outputs": [{k: o.get(k) for k in ("class_type", "kind", "width", "height", "value") if k in o}
                    for o in s.get("outputs", [])],
        "interrupt": s.get("interrupt"),
        "errors": s.get("errors", [])[:3],
        "warnings": s.get("warnings", [])[:3],
    }


def sampler_prompt(scale: float, tiling: str, tile_size: int = 512) -> dict:
    """The API 4K workflow with another scale and tiling (no SaveImage change)."""
    prompt = json.loads((ROOT / "workflows" / "api" / "gendr_pix_4k_restoration.json").read_text())
    node = next(n for n in prompt.values() if n["class_type"] == "GenDRPixPadCFGSampler")
    node["inputs"].update(scale=scale, tiling=tiling, tile_size=tile_size)
    return prompt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-dir", required=True, help="ComfyUI checkout (0.3.47 or newer)")
    ap.add_argument("--python", required=True, help="the interpreter of ComfyUI's venv")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "comfy_server_run.json")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per prompt")
    ap.add_argument("--interrupt-after", type=float, default=5.0,
                    help="seconds into the 512->4096 pass at which the cancel run presses interrupt")
    ap.add_argument("--skip", nargs="*", default=[], choices=["workflows", "cancel", "tiling"])
    args = ap.parse_args(argv)
    if not E2E.is_file():
        raise SystemExit(f"{E2E} not found")
    result: dict = {"comfy_dir": args.comfy_dir, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        images = make_inputs(tmp)
        # import check and the template browser's view of the pack (GET /workflow_templates)
        listing = e2e(args, None, None, tmp / "import")
        result["import"] = {"ok": listing.get("ok"), "nodes": sorted(listing.get("nodes") or []),
                            "workflow_templates": (listing.get("pack") or {}).get("example_workflows"),
                            "errors": listing.get("errors", [])[:3], "warnings": listing.get("warnings", [])[:3]}
        if "workflows" not in args.skip:
            runs = {}
            for wf in sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "workflows" / "api").glob("*.json")):
                name = str(wf.relative_to(ROOT))
                print(f"workflow {name} ...", file=sys.stderr, flush=True)
                runs[name] = brief(e2e(args, wf, images["small"], tmp / wf.stem))
            result["workflows"] = runs
        if "cancel" not in args.skip:
            wf = tmp / "cancel_512_to_4096.json"
            wf.write_text(json.dumps(sampler_prompt(8.0, "off")))
            print("cancel 512->4096 ...", file=sys.stderr, flush=True)
            result["cancel_512_to_4096"] = brief(e2e(args, wf, images["big"], tmp / "cancel",
                                                     "--interrupt-after", str(args.interrupt_after)))
        if "tiling" not in args.skip:
            timing = {}
            for label, tiling in (("auto", "auto"), ("whole", "off"), ("tiles_512", "fixed")):
                wf = tmp / f"tiling_{label}.json"
                wf.write_text(json.dumps(sampler_prompt(4.0, tiling)))
                print(f"512->2048 tiling {label} ...", file=sys.stderr, flush=True)
                timing[label] = brief(e2e(args, wf, images["big"], tmp / f"tiling_{label}"))
            result["sampler_512_to_2048"] = timing
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(result, indent=1) + "\n")
    tmp_json.replace(args.json)
    ok = all(r.get("ok") for r in result.get("workflows", {}).values())
    print(json.dumps({k: v for k, v in result.items() if k != "workflows"}, indent=1))
    print(f"workflows ok: {ok}; written {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
