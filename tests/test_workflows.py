"""The shipped workflows/*.json: UI format, valid for our node schemas, and runnable.

Each file is checked the way ComfyUI's frontend and prompt validation read it: node types,
widgets_values mapped onto the schema's widgets in order (with the seed's "control after
generate" companion), each value's type/range/options and the node's own validate_inputs,
socket names and link types. Then every workflow runs under the stub on a tiny model saved
as the shipped model(s) the workflow names, with core nodes replaced by minimal stand-ins.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stub  # noqa: E402

comfy_stub.install()
import folder_paths  # noqa: E402

WORKFLOWS = sorted((comfy_stub.REPO / "workflows").glob("*.json"))
EXPECTED = {"gendr_pix_4k_restoration", "gendr_pix_guidance_comparison", "gendr_pix_randpad_fixmod",
            "gendr_pix_benchmark"}
VIRTUAL = {"Note", "MarkdownNote"}
ANY_FILE = object()
# Core nodes the workflows use: (socket inputs, outputs, widgets as (name, spec)), as in ComfyUI >= 0.3.47.
CORE = {
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], [("image", ANY_FILE)]),
    "SaveImage": ([("images", "IMAGE")], [], [("filename_prefix", ("STRING", {}))]),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "PreviewAny": ([("source", "*")], [], []),
    "ImageStitch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")], [
        ("direction", ("COMBO", {"options": ["right", "down", "left", "up"]})),
        ("match_image_size", ("BOOLEAN", {})),
        ("spacing_width", ("INT", {"min": 0, "max": 1024})),
        ("spacing_color", ("COMBO", {"options": ["white", "black", "red", "green", "blue"]})),
    ]),
}
OUTPUT_NODES = {"SaveImage", "PreviewImage", "PreviewAny"}


@pytest.fixture(scope="module")
def ours():
    pack = comfy_stub.load_pack()
    return {c.GET_SCHEMA().node_id: c for c in pack.nodes.NODES}


def load(path: Path) -> dict:
    wf = json.loads(path.read_text())
    assert isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list), f"{path.name}: not UI format"
    return wf


def node_spec(ours, ntype):
    """(socket inputs [(name, type, optional)], outputs [(name, type)], widgets [(name, spec, control)])."""
    if ntype in CORE:
        ins, outs, widgets = CORE[ntype]
        return [(n, t, ntype == "ImageStitch" and n == "image2") for n, t in ins], outs, \
            [(n, s, False) for n, s in widgets]
    schema = ours[ntype].GET_SCHEMA()
    sockets = [(i.id, i.io_type, i.optional) for i in schema.inputs if not i.is_widget]
    widgets = [(i.id, (i.io_type, i.as_dict()), bool(getattr(i, "control_after_generate", False)))
               for i in schema.inputs if i.is_widget]
    return sockets, [(o.display_name or o.io_type, o.io_type) for o in schema.outputs], widgets


def map_widgets(node, widgets) -> tuple[dict, list[str]]:
    values, out, errors, i = list(node.get("widgets_values") or []), {}, [], 0
    for name, spec, control in widgets:
        if i >= len(values):
            errors.append(f"no value for widget '{name}'")
            continue
        out[name] = values[i]
        i += 1
        if spec is ANY_FILE:  # LoadImage: file name + the upload button's "image"
            if i < len(values) and values[i] == "image":
                i += 1
            continue
        if control:
            if i >= len(values) or values[i] not in comfy_stub.CONTROL_VALUES:
                errors.append(f"'{name}' needs its control_after_generate value {comfy_stub.CONTROL_VALUES}")
            i += 1
    if i < len(values):
        errors.append(f"{len(values) - i} extra widget value(s): {values[i:]!r}")
    return out, errors


def check_workflow(path: Path, ours) -> list[str]:
    wf, errors = load(path), []
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        if n["type"] in VIRTUAL:
            continue
        if n["type"] not in CORE and n["type"] not in ours:
            errors.append(f"{where}: unknown node type")
            continue
        sockets, outs, widgets = node_spec(ours, n["type"])
        values, problems = map_widgets(n, widgets)
        errors += [f"{where}: {p}" for p in problems]
        for name, spec, _ in widgets:
            if spec is not ANY_FILE and name in values:
                p = comfy_stub.widget_problem(spec, values[name])
                if p:
                    errors.append(f"{where}.{name}: {p}")
        if n["type"] in ours and not problems:
            errors += [f"{where}: {e}" for e in comfy_stub.validate_node_inputs(
                ours[n["type"]], values | {s[0]: object() for s in sockets if _linked(n, s[0])})]
        by_name = {s[0]: s for s in sockets}
        for inp in n.get("inputs") or []:
            if inp["name"] not in by_name:
                errors.append(f"{where}: input '{inp['name']}' is not in the schema")
            elif inp["type"] != by_name[inp["name"]][1]:
                errors.append(f"{where}: input '{inp['name']}' has type {inp['type']}, schema {by_name[inp['name']][1]}")
        for name, _, optional in sockets:
            if not optional and not _linked(n, name):
                errors.append(f"{where}: required input '{name}' is not linked")
        got = [(o["name"], o["type"]) for o in n.get("outputs") or []]
        if got != outs:
            errors.append(f"{where}: outputs {got} differ from the schema {outs}")
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None:
            errors.append(f"link {lid}: missing node")
            continue
        out, inp = s["outputs"][src_slot], d["inputs"][dst_slot]
        if out["type"] != typ or inp["type"] not in (typ, "*"):
            errors.append(f"link {lid}: {s['type']}.{out['name']} ({out['type']}) -> {d['type']}.{inp['name']} "
                          f"({inp['type']}) carries {typ}")
        if lid not in (out.get("links") or []) or inp.get("link") != lid:
            errors.append(f"link {lid}: not recorded on both ends")
    if not any(n["type"] in OUTPUT_NODES or (n["type"] in ours and ours[n["type"]].GET_SCHEMA().is_output_node)
               for n in wf["nodes"]):
        errors.append("no output node: ComfyUI would run nothing")
    return errors


def _linked(node, name) -> bool:
    return any(i["name"] == name and i.get("link") is not None for i in node.get("inputs") or [])


def test_the_four_workflows_ship_with_thumbnails():
    assert {p.stem for p in WORKFLOWS} == EXPECTED
    for p in WORKFLOWS:
        thumb = p.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} missing (ComfyUI's template browser shows <name>.jpg)"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 128


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid_for_our_schemas(path, ours):
    assert check_workflow(path, ours) == []
    from gendr_core.checkpoint import SHIPPED_MODELS

    loaders = [n for n in load(path)["nodes"] if n["type"] == "GenDRPixLoader"]
    assert loaders and all(n["widgets_values"][0] in SHIPPED_MODELS for n in loaders)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_note_names_what_the_workflow_does(path):
    """The Note is the first thing an artist reads: the model it calls the default is the one its
    loader uses, and the benchmark note names the CPU measurement the Benchmark node makes
    (bench.run_loaded with memory="rss": the process's peak resident set, not an estimate)."""
    from gendr_core.checkpoint import SHIPPED_MODELS

    nodes = load(path)["nodes"]
    (note,) = [n["widgets_values"][0] for n in nodes if n["type"] == "Note"]
    loaded = {n["widgets_values"][0] for n in nodes if n["type"] == "GenDRPixLoader"}
    for name in SHIPPED_MODELS:
        if f"default '{name}'" in note or f"'{name}' is the model" in note:
            assert name in loaded, f"{path.name}: the note presents {name!r}, the loader uses {sorted(loaded)}"
    assert "8x8 shuffle grid" not in note  # the shipped models unshuffle by 4; RandPad offsets are 0..7
    assert "Cancel stops after the current tile" not in note  # cancel acts inside the pass
    if any(n["type"] == "GenDRPixBenchmark" for n in nodes):
        assert "resident" in note and "activation estimate on CPU" not in note


def test_checker_catches_bad_values(ours, tmp_path):
    wf = load(comfy_stub.REPO / "workflows" / "gendr_pix_guidance_comparison.json")
    sampler = next(n for n in wf["nodes"] if n["type"] == "GenDRPixPadCFGSampler")
    sampler["widgets_values"][1] = 9.0  # guidance above max
    sampler["widgets_values"][4] = "parallel"  # not a branch mode
    sampler["widgets_values"][2] = "4,4,4"  # bad pad
    wf["links"][0][5] = "MASK"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(wf))
    errors = "\n".join(check_workflow(bad, ours))
    assert "bigger than max" in errors and "'parallel' not in" in errors and "carries MASK" in errors
    sampler["widgets_values"][1], sampler["widgets_values"][4] = 1.0, "batched"
    bad.write_text(json.dumps(wf))
    assert "left,right,top,bottom" in "\n".join(check_workflow(bad, ours))


# ----------------------------------------------------------------------------- run them


def run_workflow(wf: dict, ours) -> dict:
    """Execute a UI workflow in link order; core nodes are minimal stand-ins. Returns the sinks' inputs."""
    nodes = {n["id"]: n for n in wf["nodes"] if n["type"] not in VIRTUAL}
    links = {lid: (src, slot) for lid, src, slot, *_ in wf["links"]}
    results, sinks = {}, {}
    for n in sorted(nodes.values(), key=lambda n: n["order"]):
        sockets, _, widgets = node_spec(ours, n["type"])
        kwargs, _ = map_widgets(n, widgets)
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None:
                src, slot = links[inp["link"]]
                kwargs[inp["name"]] = results[src][slot]
        t = n["type"]
        if t == "LoadImage":
            results[n["id"]] = (torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0)),
                                torch.zeros(1, 64, 64))
        elif t == "ImageStitch":
            assert kwargs["image1"].shape == kwargs["image2"].shape
            results[n["id"]] = (torch.cat([kwargs["image1"], kwargs["image2"]], dim=2),)
        elif t in OUTPUT_NODES:
            sinks[n["id"]] = kwargs
            results[n["id"]] = ()
        else:
            results[n["id"]] = comfy_stub.execute_node(ours[t], **kwargs).args
    return sinks


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_on_a_tiny_builtin_model(path, ours, tmp_path, monkeypatch):
    import gendr_core
    from gendr_core.config import tiny_gendr_pix_config

    pack = comfy_stub.load_pack()
    folder_paths.set_models_dir(tmp_path / "models")
    for name in {n["widgets_values"][0] for n in load(path)["nodes"] if n["type"] == "GenDRPixLoader"}:
        monkeypatch.setitem(pack.nodes.paths.BUILTIN_MODELS, name, tmp_path / "no-asset.safetensors")
        torch.manual_seed(0)  # a tiny stand-in in the model folder
        gendr_core.save_model(gendr_core.build_model(tiny_gendr_pix_config()),
                              tmp_path / "models" / "gendr_pix" / f"{name}.safetensors")
    pack.nodes.memory.clear_cache()
    sinks = run_workflow(load(path), ours)
    assert sinks
    for kw in sinks.values():
        value = kw.get("images", kw.get("source"))
        if isinstance(value, torch.Tensor):
            assert value.ndim == 4 and value.shape[-1] == 3 and 0 <= value.min() and value.max() <= 1
        else:
            assert isinstance(value, str) and "JSON" in value
    if path.stem != "gendr_pix_benchmark":
        shapes = {tuple(kw["images"].shape) for kw in sinks.values() if "images" in kw}
        assert (1, 96, 128, 3) in shapes  # 24x32 input, scale 4


# ----------------------------------------------------------------------------- API format (Workflow -> Export (API))

API_DIR = comfy_stub.REPO / "workflows" / "api"


def ui_to_api(wf: dict, ours) -> dict:
    """The API-format prompt ComfyUI's 'Export (API)' gives for a UI workflow: node id -> class_type and
    inputs (widget values by name, links as [source id, output slot]); notes are dropped."""
    links = {lid: (str(src), slot) for lid, src, slot, *_ in wf["links"]}
    prompt = {}
    for n in sorted(wf["nodes"], key=lambda n: n["id"]):
        if n["type"] in VIRTUAL:
            continue
        _, _, widgets = node_spec(ours, n["type"])
        inputs, _ = map_widgets(n, widgets)
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None:
                inputs[inp["name"]] = list(links[inp["link"]])
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                "_meta": {"title": n.get("title") or n["type"]}}
    return prompt


def check_api_prompt(prompt: dict, ours) -> list[str]:
    """Errors ComfyUI's /prompt validation would report for an API-format prompt of our nodes."""
    errors = []
    for nid, node in prompt.items():
        t, inputs = node["class_type"], node["inputs"]
        if t not in ours and t not in CORE:
            errors.append(f"{nid}: unknown class_type {t}")
            continue
        sockets, _, _ = node_spec(ours, t)
        types = dict((name, typ) for name, typ, _ in sockets)
        for name, value in inputs.items():
            if isinstance(value, list):
                src = prompt.get(value[0])
                if src is None:
                    errors.append(f"{nid}.{name}: links to missing node {value[0]}")
                    continue
                out_type = node_spec(ours, src["class_type"])[1][value[1]][1]
                if types.get(name) not in (out_type, "*"):
                    errors.append(f"{nid}.{name}: gets {out_type}, expects {types.get(name)}")
        if t in ours:
            values = {k: (object() if isinstance(v, list) else v) for k, v in inputs.items()}
            errors += [f"{nid}: {e}" for e in comfy_stub.validate_node_inputs(ours[t], values)]
    return errors


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_format_workflow_ships_beside_each_ui_workflow(path, ours):
    api = API_DIR / path.name
    assert api.is_file(), f"workflows/api/{path.name} missing; regenerate: python tests/test_workflows.py --write-api"
    prompt = json.loads(api.read_text())
    assert prompt == ui_to_api(load(path), ours)  # the two formats never drift apart
    assert check_api_prompt(prompt, ours) == []
    assert "nodes" not in prompt and all("class_type" in v for v in prompt.values())


def test_api_checker_catches_bad_values_and_links(ours):
    prompt = json.loads((API_DIR / "gendr_pix_4k_restoration.json").read_text())
    sampler = next(v for v in prompt.values() if v["class_type"] == "GenDRPixPadCFGSampler")
    sampler["inputs"]["guidance"] = 9.0
    sampler["inputs"]["model"] = [next(k for k, v in prompt.items() if v["class_type"] == "LoadImage"), 0]
    errors = "\n".join(check_api_prompt(prompt, ours))
    assert "guidance: 9.0 bigger than max 4.0" in errors and "model: gets IMAGE, expects GENDR_PIX_MODEL" in errors


if __name__ == "__main__":  # python tests/test_workflows.py --write-api
    if sys.argv[1:] == ["--write-api"]:
        nodes_by_id = {c.GET_SCHEMA().node_id: c for c in comfy_stub.load_pack().nodes.NODES}
        API_DIR.mkdir(exist_ok=True)
        for p in WORKFLOWS:
            (API_DIR / p.name).write_text(json.dumps(ui_to_api(load(p), nodes_by_id), indent=2) + "\n")
            sys.stdout.write(f"wrote {API_DIR / p.name}\n")
