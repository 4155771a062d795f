#!/usr/bin/env python3
"""Run the pack in a real ComfyUI server and write what happened to one JSON file.

Not collected by pytest (it needs a ComfyUI checkout and a venv with its requirements; see
``../shared/COMFYUI.md``). The workflow and tiling runs go through ``../shared/tools/comfy_e2e.py``,
which starts a fresh server on 127.0.0.1 with ``--cpu``, queues the prompt through ``/prompt``,
follows the websocket and reads ``/history``; the cancel and ``--timing`` runs use its
``Server``, ``Http`` and ``WsListener`` directly and follow the websocket themselves. This script

1. queues every shipped workflow, UI format (``workflows/*.json``) and API format
   (``workflows/api/*.json``), with a photo as the LoadImage input, and records status,
   time, progress updates per node and output sizes;
2. measures cancel latency on the whole-image path: a 512x512 input through the PadCFG
   sampler at scale 8 (512 -> 4096) with ``tiling`` off, in a fresh server. Once the sampler's
   ``executing`` event and at least one of its ``progress`` events have arrived and
   ``--interrupt-after`` seconds have passed since the sampler started, it sends
   ``POST /interrupt``; the latency is the time from sending that request to the arrival of
   the ``execution_interrupted`` event (or of whatever event ended the prompt) on the
   websocket. It also records the node named in that event and checks that no output image
   was saved (neither in ``/history`` nor in the server's output folder);
3. times the sampler at 2048x2048 output with ``tiling`` auto, off (whole image) and fixed
   512, so the auto choice can be compared with the faster of the two (one cold run each, a
   fresh server each: model load and first-call costs included);
4. with ``--timing``: in one server, the shipped default model's sampler at 512 -> 2048 for
   ``tiling`` auto/off x Loader ``dtype`` auto/fp32, one warm-up and ``--timing-runs`` timed runs
   each, the configurations interleaved round by round so a drifting machine load hits all of
   them alike. The sampler time is the span between the server's ``executing`` events for the
   sampler and for the next node (websocket, loopback); the prompt time comes from the history's
   ``execution_start``/``execution_success`` timestamps. Every run loads an input differing
   in one pixel, so LoadImage's file hash changes and no cached sampler output is reused.

Usage::

    python tests/comfy_server_check.py --comfy-dir /path/ComfyUI --python /path/venv/bin/python \\
        --json bench/comfy_server_run.json [--timing]

Run it on a quiet machine: the cancel latency and the timings are wall-clock numbers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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


# (tiling, Loader dtype) of the --timing matrix; the first is the shipped default
TIMING_CONFIGS = (("auto", "auto"), ("off", "auto"), ("auto", "fp32"), ("off", "fp32"))


def load_e2e():
    """comfy_e2e.py as a module, for its Server, Http and WsListener (one server, many prompts)."""
    spec = importlib.util.spec_from_file_location("comfy_e2e", E2E)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one_pixel_variant(base: Path, i: int, out: Path) -> Path:
    """``base`` with pixel (0, 0) set from ``i``: another file hash for LoadImage, the same work."""
    from PIL import Image

    im = Image.open(base).convert("RGB")
    im.putpixel((0, 0), (i % 256, i // 256 % 256, 255 - i % 256))
    im.save(out)
    return out


def timed_prompt(e2e_mod, server, http, ws, prompt: dict, sampler_id: str, out_dir: Path, timeout: float) -> dict:
    """Queue ``prompt`` on a running server, wait for it and read the sampler's time from the
    websocket ``executing`` events and the prompt's from the history timestamps."""
    log_from = len(server.log_text())
    status, resp = http.post_json("/prompt", {"prompt": prompt, "client_id": ws.client_id})
    if status != 200 or not isinstance(resp, dict) or "prompt_id" not in resp:
        return {"ok": False, "errors": [f"/prompt -> HTTP {status}: {str(resp)[:500]}"]}
    pid = resp["prompt_id"]
    entry, deadline, last_poll = None, time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline and server.proc.poll() is None:
        ended = any(ws.find(et, pid) for et in e2e_mod.TERMINAL_EVENTS)
        if ended or time.monotonic() - last_poll >= 2.0:
            last_poll = time.monotonic()
            hist = http.get_json(f"/history/{pid}")
            st = (hist.get(pid) or {}).get("status") or {}
            if pid in hist and (st.get("status_str") in ("success", "error") or st.get("completed")):
                entry = hist[pid]
                break
        with ws.cond:
            ws.cond.wait(timeout=0.5)
    # /history can answer before the websocket has delivered the last events: wait for the end event
    settle = time.monotonic() + 30
    while entry is not None and time.monotonic() < settle and not any(
            ws.find(et, pid) for et in e2e_mod.TERMINAL_EVENTS):
        with ws.cond:
            ws.cond.wait(timeout=0.5)
    rec: dict = {"prompt_id": pid, "errors": []}
    if entry is None:
        rec["errors"].append("no history entry (timeout or server exit); sent /interrupt")
        http.post_json("/interrupt", {})
        rec["ok"] = False
        return rec
    st = entry.get("status") or {}
    msgs = {m[0]: m[1] for m in st.get("messages", []) if isinstance(m, list) and len(m) == 2}
    rec["status"] = st.get("status_str")
    if "execution_error" in msgs:
        e = msgs["execution_error"]
        rec["errors"].append(f"{e.get('node_type')}: {e.get('exception_type')}: {e.get('exception_message')}")
    start, end = msgs.get("execution_start", {}), msgs.get("execution_success", {})
    if "timestamp" in start and "timestamp" in end:
        rec["prompt_s"] = round((end["timestamp"] - start["timestamp"]) / 1000, 3)
    rec["cached_nodes"] = (msgs.get("execution_cached") or {}).get("nodes")
    # per node: from its 'executing' event to the next one (or to the prompt's end)
    events = [(t, et, d) for t, et, d in list(ws.events) if d.get("prompt_id") == pid]
    marks = [(t, d.get("node")) for t, et, d in events if et == "executing"]
    end_t = next((t for t, et, _ in events if et in e2e_mod.TERMINAL_EVENTS), None)
    node_s = {}
    for k, (t, node) in enumerate(marks):
        if node is None:
            continue
        t_next = marks[k + 1][0] if k + 1 < len(marks) else end_t
        if t_next is not None:
            node_s[f"{node} {prompt.get(node, {}).get('class_type')}"] = round(t_next - t, 3)
    rec["node_s"] = node_s
    t0 = events[0][0] if events else 0.0
    rec["timeline"] = [[round(t - t0, 3), et, d.get("node")] for t, et, d in events
                       if et in ("execution_start", "executing", "executed", *e2e_mod.TERMINAL_EVENTS)]
    if end_t is None:
        rec["errors"].append("no end event on the websocket: the last node's time is missing")
    rec["sampler_s"] = node_s.get(f"{sampler_id} GenDRPixPadCFGSampler")
    prog = [t for t, et, d in events if et == "progress" and str(d.get("node")) == sampler_id]
    rec["sampler_progress_updates"] = len(prog)
    # what the pack logged for this prompt: the Loader's dtype, the tile auto chose
    log = server.log_text()[log_from:]
    dt = re.findall(r"loaded \S+ model.* \((\w+), torch\.(\w+)\)", log)
    if dt:
        rec["loaded"] = f"{dt[-1][0]} {dt[-1][1]}"
    tile = re.findall(r"memory estimate .* -> (tile \d+|whole image)", log)
    if tile:
        rec["auto_tile"] = tile[-1]
    sizes = []
    for node_out in (entry.get("outputs") or {}).values():
        for item in node_out.get("images", []):
            path = out_dir / item.get("subfolder", "") / item["filename"]
            if path.is_file():
                from PIL import Image

                with Image.open(path) as im:
                    sizes.append(list(im.size))
                path.unlink()  # 2048^2 PNGs: keep the temp folder small
    rec["output_sizes"] = sizes
    if rec["sampler_s"] is None:
        rec["errors"].append("the sampler did not execute (cached?)")
    if [2048, 2048] not in sizes:
        rec["errors"].append(f"no 2048x2048 output (got {sizes})")
    rec["ok"] = rec["status"] == "success" and not rec["errors"]
    return rec


def open_server(server, port: int, e2e_mod, dest, res: dict):
    """Wait for a started server, record its ComfyUI/PyTorch versions and our pack's import errors
    in ``res``; returns its Http client (the caller's ``finally`` stops the server)."""
    http = e2e_mod.Http(port)
    server.wait_ready(http, 300)
    stats = http.get_json("/system_stats")
    res["server"] = {k: stats.get("system", {}).get(k) for k in ("comfyui_version", "pytorch_version")}
    res["errors"] += e2e_mod.pack_import_report(server.log_text(), dest, "ComfyUI-GenDR-Pix")["errors"]
    return http


def close_server(res: dict, e2e_mod, ws, server, created: bool, dest, mode) -> None:
    """Shared end of the cancel and timing runs: close the websocket, stop the server (keeping its
    log tail in ``res``), remove the pack link if this run made it, record the load average."""
    if ws is not None:
        ws.close()
    if server is not None:
        server.stop()
        res["server_log_tail"] = server.log_text().splitlines()[-8:]
    if created:
        e2e_mod.uninstall_pack(dest, mode)
    res["loadavg_after"] = os.getloadavg()


def cancel_run(args: argparse.Namespace, image: Path, tmp: Path) -> dict:
    """The cancel run: 512 -> 4096 with tiling off in a fresh server, interrupted during the
    sampler pass; the latency is measured here, from the websocket, not read from /history."""
    e2e_mod = load_e2e()
    run_dir = tmp / "cancel"
    run_dir.mkdir()
    out_dir = run_dir / "comfy_output"
    prompt = sampler_prompt(8.0, "off")
    sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "GenDRPixPadCFGSampler")
    res: dict = {"ok": False, "input": "512x512", "output": "4096x4096", "scale": 8.0, "tiling": "off",
                 "interrupt_after_s": args.interrupt_after, "sampler_node": sampler_id,
                 "loadavg_before": os.getloadavg(), "errors": []}
    dest, mode, created = e2e_mod.install_pack(str(ROOT), args.comfy_dir, "ComfyUI-GenDR-Pix", False)
    server = ws = None
    try:
        port = e2e_mod.free_port()
        server = e2e_mod.Server(args.comfy_dir, args.python, port, str(run_dir), [])
        http = open_server(server, port, e2e_mod, dest, res)
        up = http.upload_image(str(image))
        for node in prompt.values():
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = up["name"]
        ws = e2e_mod.WsListener(port, "gendr-cancel-" + uuid.uuid4().hex[:8])
        ws.start()
        status, resp = http.post_json("/prompt", {"prompt": prompt, "client_id": ws.client_id})
        if status != 200 or not isinstance(resp, dict) or "prompt_id" not in resp:
            res["errors"].append(f"/prompt -> HTTP {status}: {str(resp)[:500]}")
            return res
        pid = resp["prompt_id"]
        res["prompt_id"] = pid

        def mine() -> list:
            return [(t, et, d) for t, et, d in list(ws.events) if d.get("prompt_id") in (None, pid)]

        def end_event():
            return next(((t, et, d) for t, et, d in mine() if et in e2e_mod.TERMINAL_EVENTS), None)

        # 1. wait for the sampler to run and report progress, and for --interrupt-after seconds into it
        t_sampler = t_first_prog = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and server.proc.poll() is None and end_event() is None:
            evs = mine()
            if t_sampler is None:
                t_sampler = next((t for t, et, d in evs if et == "executing" and d.get("node") == sampler_id), None)
            if t_sampler is not None and t_first_prog is None:
                t_first_prog = next((t for t, et, d in evs if et == "progress" and t >= t_sampler
                                     and str(d.get("node")) == sampler_id), None)
            if t_first_prog is not None and time.monotonic() - (ws.t0 + t_sampler) >= args.interrupt_after:
                break
            with ws.cond:
                ws.cond.wait(timeout=0.1)
        early = end_event()
        if early is not None or t_first_prog is None:
            res["errors"].append(
                f"the prompt ended ({early[1]}) before the interrupt" if early is not None else
                "no progress event from the sampler (timeout or server exit)" if t_sampler is not None else
                "the sampler never started executing (timeout or server exit)")
            http.post_json("/interrupt", {})
        else:
            # 2. press interrupt (targeted at this prompt, as the UI's cancel does), then wait for the end
            t_press = time.monotonic()
            st_i, _ = http.post_json("/interrupt", {"prompt_id": pid})
            t_ret = time.monotonic()
            prog_before = [d for t, et, d in mine() if et == "progress" and str(d.get("node")) == sampler_id]
            res["interrupt"] = {
                "http_status": st_i, "post_s": round(t_ret - t_press, 3),
                "sent_after_sampler_start_s": round(t_press - (ws.t0 + t_sampler), 3),
                "first_progress_after_sampler_start_s": round(t_first_prog - t_sampler, 3),
                "progress_before": len(prog_before),
                "progress_at_press": f"{prog_before[-1].get('value')}/{prog_before[-1].get('max')}"
                if prog_before else None}
            end_by = time.monotonic() + 300
            while time.monotonic() < end_by and server.proc.poll() is None and end_event() is None:
                with ws.cond:
                    ws.cond.wait(timeout=0.1)
            got = end_event()
            if got is None:
                res["errors"].append("no end event on the websocket within 300 s of the interrupt")
            else:
                t_end, et_end, d_end = got
                res["interrupt"].update({
                    "end_event": et_end,
                    "latency_s": round(ws.t0 + t_end - t_press, 3),
                    "latency_from_post_return_s": round(ws.t0 + t_end - t_ret, 3),
                    "node_id": d_end.get("node_id"), "node_type": d_end.get("node_type"),
                    "executed_before": d_end.get("executed"),
                    "progress_after_press": sum(1 for t, et, d in mine() if et == "progress"
                                                and ws.t0 + t > t_press and str(d.get("node")) == sampler_id)})
                if et_end != "execution_interrupted":
                    res["errors"].append(f"the prompt ended with {et_end}, not execution_interrupted")
                elif d_end.get("node_id") != sampler_id:
                    res["errors"].append(f"interrupted in node {d_end.get('node_id')} ({d_end.get('node_type')}), "
                                         f"not in the sampler {sampler_id}")
        # 3. the history entry and the output folder: nothing may have been saved
        entry, hist_by = None, time.monotonic() + 30
        while time.monotonic() < hist_by and server.proc.poll() is None:
            hist = http.get_json(f"/history/{pid}")
            st = (hist.get(pid) or {}).get("status") or {}
            if pid in hist and (st.get("status_str") in ("success", "error") or st.get("completed")):
                entry = hist[pid]
                break
            time.sleep(0.5)
        if entry is None:
            res["errors"].append("no history entry for the prompt")
        else:
            res["status"] = (entry.get("status") or {}).get("status_str")
        hist_images = [i.get("filename") for o in ((entry or {}).get("outputs") or {}).values()
                       for i in o.get("images", [])]
        files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()) \
            if out_dir.is_dir() else []
        res["saved_images"] = {"history": hist_images, "output_dir": files}
        if hist_images or files:
            res["errors"].append(f"an output was saved: {hist_images or files}")
        evs = mine()
        t0 = evs[0][0] if evs else 0.0
        res["timeline"] = [[round(t - t0, 3), et, d.get("node") or d.get("node_id"),
                            *([f"{d.get('value')}/{d.get('max')}"] if et == "progress" else [])]
                           for t, et, d in evs if et in ("execution_start", "executing", "executed", "progress",
                                                         *e2e_mod.TERMINAL_EVENTS)]
    except Exception as e:  # noqa: BLE001 -- a failed cancel run is a result to record
        res["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        close_server(res, e2e_mod, ws, server, created, dest, mode)
    res["ok"] = not res["errors"] and (res.get("interrupt") or {}).get("latency_s") is not None
    return res


def timing_matrix(args: argparse.Namespace, base_image: Path, tmp: Path) -> dict:
    """--timing: tiling auto/off x Loader dtype auto/fp32 at 512 -> 2048, in one server."""
    e2e_mod = load_e2e()
    run_dir = tmp / "timing"
    run_dir.mkdir()
    dest, mode, created = e2e_mod.install_pack(str(ROOT), args.comfy_dir, "ComfyUI-GenDR-Pix", False)
    server = ws = None
    res: dict = {"model": None, "scale": 4.0, "input": "512x512", "output": "2048x2048",
                 "warmup": 1, "runs": args.timing_runs, "order": "interleaved: round 0 = warm-ups, then "
                 "one timed run of every configuration per round", "loadavg_before": os.getloadavg(),
                 "configs": {}, "errors": []}
    try:
        port = e2e_mod.free_port()
        server = e2e_mod.Server(args.comfy_dir, args.python, port, str(run_dir), [])
        http = open_server(server, port, e2e_mod, dest, res)
        ws = e2e_mod.WsListener(port, "gendr-timing")
        ws.start()
        n = 0
        runs = {f"tiling={t} dtype={d}": [] for t, d in TIMING_CONFIGS}
        for rnd in range(1 + args.timing_runs):
            for tiling, dtype in TIMING_CONFIGS:
                label = f"tiling={tiling} dtype={dtype}"
                prompt = sampler_prompt(4.0, tiling)
                loader = next(n_ for n_ in prompt.values() if n_["class_type"] == "GenDRPixLoader")
                loader["inputs"]["dtype"] = dtype
                res["model"] = loader["inputs"]["model_name"]
                sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "GenDRPixPadCFGSampler")
                n += 1
                img = one_pixel_variant(base_image, n, tmp / f"timing_{n:02d}.png")
                up = http.upload_image(str(img))
                for node in prompt.values():
                    if node["class_type"] == "LoadImage":
                        node["inputs"]["image"] = up["name"]
                print(f"timing {'warm-up' if rnd == 0 else f'run {rnd}'} {label} ...", file=sys.stderr, flush=True)
                rec = timed_prompt(e2e_mod, server, http, ws, prompt, sampler_id, run_dir / "comfy_output",
                                   args.timeout)
                rec["round"] = rnd
                runs[label].append(rec)
        for label, recs in runs.items():
            timed = [r["sampler_s"] for r in recs[1:] if r.get("ok")]
            res["configs"][label] = {
                "ok": all(r.get("ok") for r in recs),
                "sampler_s_warmup": recs[0].get("sampler_s"),
                "sampler_s": timed,
                "sampler_s_mean": round(statistics.mean(timed), 3) if timed else None,
                "sampler_s_min": min(timed) if timed else None,
                "prompt_s": [r.get("prompt_s") for r in recs[1:]],
                "loaded": sorted({r["loaded"] for r in recs if "loaded" in r}),
                "auto_tile": sorted({r["auto_tile"] for r in recs if "auto_tile" in r}),
                "runs": recs,
            }
        mean = {k: v["sampler_s_mean"] for k, v in res["configs"].items()}

        def ratio(a: str, b: str):
            return round(mean[a] / mean[b], 3) if mean.get(a) and mean.get(b) else None

        res["ratios"] = {
            "off / auto tiling (dtype auto)": ratio("tiling=off dtype=auto", "tiling=auto dtype=auto"),
            "off / auto tiling (dtype fp32)": ratio("tiling=off dtype=fp32", "tiling=auto dtype=fp32"),
            "fp32 / auto dtype (tiling auto)": ratio("tiling=auto dtype=fp32", "tiling=auto dtype=auto"),
            "fp32 / auto dtype (tiling off)": ratio("tiling=off dtype=fp32", "tiling=off dtype=auto"),
        }
    except Exception as e:  # noqa: BLE001 -- a failed timing run is a result to record
        res["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        close_server(res, e2e_mod, ws, server, created, dest, mode)
    res["ok"] = not res["errors"] and bool(res["configs"]) and all(c["ok"] for c in res["configs"].values())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-dir", required=True, help="ComfyUI checkout (0.3.47 or newer)")
    ap.add_argument("--python", required=True, help="the interpreter of ComfyUI's venv")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "comfy_server_run.json")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per prompt")
    ap.add_argument("--interrupt-after", type=float, default=5.0,
                    help="seconds into the 512->4096 sampler pass (from its 'executing' event, and not before "
                         "its first progress event) at which the cancel run presses interrupt")
    ap.add_argument("--skip", nargs="*", default=[], choices=["workflows", "cancel", "tiling"])
    ap.add_argument("--timing", action="store_true",
                    help="also time the sampler at 512->2048, tiling auto/off x Loader dtype auto/fp32, in one server")
    ap.add_argument("--timing-runs", type=int, default=2, help="timed runs per --timing configuration "
                                                                   "(after one warm-up)")
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
            print("cancel 512->4096 ...", file=sys.stderr, flush=True)
            result["cancel_512_to_4096"] = cancel_run(args, images["big"], tmp)
        if "tiling" not in args.skip:
            timing = {}
            for label, tiling in (("auto", "auto"), ("whole", "off"), ("tiles_512", "fixed")):
                wf = tmp / f"tiling_{label}.json"
                wf.write_text(json.dumps(sampler_prompt(4.0, tiling)))
                print(f"512->2048 tiling {label} ...", file=sys.stderr, flush=True)
                timing[label] = brief(e2e(args, wf, images["big"], tmp / f"tiling_{label}"))
            result["sampler_512_to_2048"] = timing
        if args.timing:
            result["sampler_timing_512_to_2048"] = timing_matrix(args, images["big"], tmp)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(result, indent=1) + "\n")
    tmp_json.replace(args.json)
    ok = all(r.get("ok") for r in result.get("workflows", {}).values())
    timing_ok = result.get("sampler_timing_512_to_2048", {}).get("ok", True)
    cancel_ok = result.get("cancel_512_to_4096", {}).get("ok", True)
    shown = {k: v for k, v in result.items() if k != "workflows"}
    if "sampler_timing_512_to_2048" in shown:  # the summary only; every run is in the JSON
        shown["sampler_timing_512_to_2048"] = {k: v for k, v in shown["sampler_timing_512_to_2048"].items()
                                               if k != "configs"}
        shown["sampler_timing_512_to_2048"]["sampler_s"] = {
            k: {f: c[f] for f in ("sampler_s_warmup", "sampler_s", "sampler_s_mean", "loaded", "auto_tile")}
            for k, c in result["sampler_timing_512_to_2048"]["configs"].items()}
    print(json.dumps(shown, indent=1))
    print(f"workflows ok: {ok}; cancel ok: {cancel_ok}; timing ok: {timing_ok}; written {args.json}")
    return 0 if ok and timing_ok and cancel_ok else 1


if __name__ == "__main__":
    sys.exit(main())
