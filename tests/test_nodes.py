"""The ComfyUI node layer under our stub of the ComfyUI API (tests/comfy_stub).

Every node is defined, validated and executed as ComfyUI would (``comfy_stub.execute_node``)
on tiny random models saved to a temporary ``models/gendr_pix`` folder.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stub  # noqa: E402

comfy_stub.install()
import comfy.model_management as mm  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

REPO = comfy_stub.REPO
NODE_IDS = ["GenDRPixLoader", "GenDRPixPadCFGSampler", "GenDRPixRandPad", "GenDRPixFixMod", "GenDRPixBenchmark"]


@pytest.fixture(scope="module")
def pack():
    return comfy_stub.load_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    return {cls.GET_SCHEMA().node_id: cls for cls in pack.nodes.NODES}


@pytest.fixture(scope="module")
def core(pack):
    """The pack's own copy of gendr_core (relative imports give it a package-qualified name)."""
    return pack.gendr_core


@pytest.fixture(autouse=True)
def comfy_state(tmp_path, pack):
    """A fresh ComfyUI: empty model folders, no interrupt, no recorded progress, empty model cache."""
    folder_paths.set_models_dir(tmp_path / "models")
    pack.nodes.memory.clear_cache()
    for k in pack.nodes.memory.stats:
        pack.nodes.memory.stats[k] = 0
    mm.interrupt_current_processing(False)
    mm.FREE_MEMORY_CALLS.clear()
    comfy.utils.PROGRESS_EVENTS.clear()
    comfy.utils.ON_PROGRESS = None
    yield
    comfy.utils.ON_PROGRESS = None
    mm.interrupt_current_processing(False)


def save_tiny(core, path: Path, kind: str = "gendr_pix", seed: int = 0, fixmod: bool = False) -> Path:
    from gendr_core import config as cfgs  # the top-level copy writes files; the pack's copy reads them

    make = {"gendr_pix": cfgs.tiny_gendr_pix_config, "gendr": cfgs.tiny_gendr_config, "dfosd": cfgs.tiny_dfosd_config}
    import gendr_core

    torch.manual_seed(seed)
    model = gendr_core.build_model(make[kind]())
    with torch.no_grad():  # non-zero embeddings so conditioning overrides are visible
        model.prompt_pos.normal_()
        model.prompt_neg.normal_()
        if fixmod:  # a learned FixMod with non-zero weights everywhere, its last layer included
            for p in model.attach_fixmod(cfgs.tiny_fixmod_config()).parameters():
                p.normal_(0, 0.2)
    return gendr_core.save_model(model, path)


@pytest.fixture
def model_file(core) -> Path:
    return save_tiny(core, Path(folder_paths.models_dir) / "gendr_pix" / "tiny.safetensors")


@pytest.fixture
def model(nodes, model_file):
    return comfy_stub.execute_node(nodes["GenDRPixLoader"], model_name="tiny.safetensors", dtype="fp32").args[0]


def sampler_inputs(image, model, **over):
    kw = dict(image=image, model=model, scale=2.0, guidance=1.0, positive_pad="auto", negative_pad="auto",
              branch_mode="batched", tiling="off", tile_size=512, tile_overlap=64, fixmod="auto")
    kw.update(over)
    return kw


def rand_image(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- registration and schemas


def test_entrypoint_registers_five_v3_nodes(pack):
    ext = asyncio.run(pack.comfy_entrypoint())
    classes = asyncio.run(ext.get_node_list())
    assert [c.GET_SCHEMA().node_id for c in classes] == NODE_IDS
    assert "gendr_pix" in folder_paths.folder_names_and_paths


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_schema_conventions(nodes, node_id):
    schema = nodes[node_id].GET_SCHEMA()
    info = comfy_stub.object_info(nodes[node_id])
    assert schema.node_id.startswith("GenDRPix") and nodes[node_id].__name__ == node_id
    assert schema.category == "image/upscaling/GenDR-Pix"
    assert schema.display_name and len(schema.description) > 40
    for inp in schema.inputs:
        assert inp.tooltip and len(inp.tooltip) > 15, f"{node_id}.{inp.id} has no useful tooltip"
        if inp.is_widget:
            assert inp.default is not None, f"{node_id}.{inp.id} has no default"
            assert comfy_stub.widget_problem((inp.io_type, inp.as_dict()), inp.default) is None
    for out in schema.outputs:
        assert out.tooltip
    # ComfyUI skips its min/max/options checks for every input that validate_inputs names: name strings only
    from comfy_api.latest import io

    if io.overrides(nodes[node_id], "validate_inputs"):
        named = set(inspect.signature(nodes[node_id].validate_inputs).parameters)
        assert named and all(i.io_type == "STRING" for i in schema.inputs if i.id in named)
    # widgets first, optional sockets last: widgets_values order is the same in every frontend version
    order = info["input_order"]["required"] + info["input_order"]["optional"]
    assert order == [i.id for i in schema.inputs]
    assert not any(i.is_widget for i in schema.inputs if i.optional)


def test_node_layer_uses_relative_imports_and_no_print():
    for path in sorted((REPO / "nodes").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) gendr_core\b", text, re.M), f"{path.name}: absolute gendr_core import"
        assert not re.search(r"^\s*print\(", text, re.M), f"{path.name}: print()"
    tensors = (REPO / "nodes" / "tensors.py").read_text()
    assert "comfy" not in re.sub(r'""".*?"""', "", tensors, flags=re.S).replace("ComfyUI", "")


def test_requirements_never_list_torch():
    names = []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert not line.startswith("-"), f"requirements.txt: option line {line!r} (ComfyUI-Manager installs per line)"
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    assert names and not {"torch", "torchvision", "torchaudio"} & set(names)


# ----------------------------------------------------------------------------- model folder, loader, cache


def test_model_folder_keeps_yaml_paths_and_lists_safetensors(pack, core, tmp_path):
    extra = tmp_path / "elsewhere"
    folder_paths.add_model_folder_path("gendr_pix", str(extra))  # as extra_model_paths.yaml does, before us
    pack.nodes.paths.register_model_folder()
    dirs, exts = folder_paths.folder_names_and_paths["gendr_pix"]
    assert dirs == [str(extra), os.path.join(folder_paths.models_dir, "gendr_pix")] and ".safetensors" in exts
    save_tiny(core, extra / "sub" / "a.safetensors")
    save_tiny(core, Path(dirs[1]) / "b.safetensors")
    (Path(dirs[1]) / "notes.txt").write_text("not a model")
    choices = pack.nodes.paths.model_choices()
    assert choices == pack.nodes.paths.shipped_choices() + ["b.safetensors", "sub/a.safetensors"]
    assert pack.nodes.paths.resolve_model("sub/a.safetensors") == extra / "sub" / "a.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        pack.nodes.paths.resolve_model("nope.safetensors")


def test_builtin_name_falls_back_to_model_folder(pack, core, monkeypatch, tmp_path):
    paths = pack.nodes.paths
    monkeypatch.setitem(paths.BUILTIN_MODELS, "gendr-pix-s", tmp_path / "assets" / "gendr-pix-s.safetensors")
    with pytest.raises(FileNotFoundError, match="gendr-pix-s.safetensors' in the gendr_pix model folder"):
        paths.resolve_model("gendr-pix-s")
    local = save_tiny(core, Path(folder_paths.models_dir) / "gendr_pix" / "gendr-pix-s.safetensors")
    assert paths.resolve_model("gendr-pix-s") == local
    assert paths.model_choices().count("gendr-pix-s") == 1 and "gendr-pix-s.safetensors" not in paths.model_choices()
    shipped = save_tiny(core, tmp_path / "assets" / "gendr-pix-s.safetensors")
    assert paths.resolve_model("gendr-pix-s") == shipped  # the shipped asset wins when present
    # listed among the shipped names (whichever shipped model is the default), the stand-in as a file again
    assert "gendr-pix-s" in paths.shipped_choices() and "gendr-pix-s.safetensors" in paths.model_choices()


def test_loader_lists_the_shipped_models_that_exist_in_tuple_order(pack, core, monkeypatch, tmp_path):
    paths = pack.nodes.paths
    assert paths.SHIPPED_MODELS is core.checkpoint.SHIPPED_MODELS  # one tuple, in gendr_core.checkpoint
    assert core.checkpoint.DEFAULT_MODEL == core.checkpoint.SHIPPED_MODELS[0]
    assert set(core.checkpoint.BUILTIN_MODELS) == set(core.checkpoint.SHIPPED_MODELS)
    monkeypatch.setattr(paths, "SHIPPED_MODELS", ("new-first", "old-second", "never-shipped"))
    for name in paths.SHIPPED_MODELS:
        monkeypatch.setitem(paths.BUILTIN_MODELS, name, tmp_path / "assets" / f"{name}.safetensors")
    assert paths.model_choices() == ["new-first"]  # nothing exists: the default entry alone
    save_tiny(core, tmp_path / "assets" / "old-second.safetensors")  # a shipped asset
    assert paths.model_choices() == ["old-second"]
    save_tiny(core, Path(folder_paths.models_dir) / "gendr_pix" / "new-first.safetensors")  # a stand-in
    save_tiny(core, Path(folder_paths.models_dir) / "gendr_pix" / "mine.safetensors")
    assert paths.model_choices() == ["new-first", "old-second", "mine.safetensors"]
    schema = pack.nodes.loader.GenDRPixLoader.GET_SCHEMA()
    combo = next(i for i in schema.inputs if i.id == "model_name")
    assert combo.options == paths.model_choices() and combo.default == "new-first"


def test_loader_caches_across_prompts_and_reloads_changed_files(pack, nodes, model_file):
    loader, stats = nodes["GenDRPixLoader"], pack.nodes.memory.stats
    a = comfy_stub.execute_node(loader, model_name="tiny.safetensors", dtype="auto").args[0]
    assert stats == {"disk_loads": 1, "cache_hits": 0} and mm.FREE_MEMORY_CALLS  # memory freed before loading
    b = comfy_stub.execute_node(loader, model_name="tiny.safetensors", dtype="auto").args[0]
    assert b is a and stats == {"disk_loads": 1, "cache_hits": 1}
    cpu_auto = pack.nodes.memory.default_dtype(torch.device("cpu"))  # bf16 on CPUs with native bf16, else fp32
    assert a.dtype == cpu_auto and a.device == torch.device("cpu")  # the offload device
    fp16 = comfy_stub.execute_node(loader, model_name="tiny.safetensors", dtype="fp16").args[0]
    assert fp16 is not a and fp16.dtype == torch.float16 and stats["disk_loads"] == 2
    fp1 = loader.fingerprint_inputs(model_name="tiny.safetensors", dtype="auto")
    st = model_file.stat()
    os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was re-exported
    assert loader.fingerprint_inputs(model_name="tiny.safetensors", dtype="auto") != fp1
    c = comfy_stub.execute_node(loader, model_name="tiny.safetensors", dtype="auto").args[0]
    assert c is not a and stats["disk_loads"] == 3
    assert len(pack.nodes.memory._CACHE) <= pack.nodes.memory.MAX_CACHED


@pytest.mark.parametrize("kind", ["gendr", "dfosd"])
def test_loader_reads_latent_models(nodes, core, kind):
    save_tiny(core, Path(folder_paths.models_dir) / "gendr_pix" / f"{kind}.safetensors", kind)
    m = comfy_stub.execute_node(nodes["GenDRPixLoader"], model_name=f"{kind}.safetensors", dtype="fp32").args[0]
    assert m.kind == kind
    out = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rand_image(1, 16, 16, 3), m))
    assert out.args[0].shape == (1, 32, 32, 3)


def test_loader_rejects_unknown_choice(nodes):
    with pytest.raises(ValueError, match="not in"):
        comfy_stub.execute_node(nodes["GenDRPixLoader"], model_name="missing.safetensors", dtype="auto")


# ----------------------------------------------------------------------------- PadCFG sampler


def test_sampler_is_gendr_core_upscale_on_a_batch(nodes, core, model):
    image = rand_image(2, 20, 24, 3)
    calls = []
    real = model.predict
    model.predict = lambda x, c: (calls.append(x.shape[0]), real(x, c))[1]
    try:
        out, mask = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model)).args
    finally:
        del model.predict
    assert calls == [2]  # the batch runs through the model together
    assert out.shape == (2, 40, 48, 3) and out.dtype == torch.float32 and out.device == mm.intermediate_device()
    assert 0 <= out.min() and out.max() <= 1 and out.is_contiguous()
    assert mask.shape == (2, 40, 48) and not mask.any()
    ref = core.upscale(image.movedim(-1, 1), model, 2.0, 1.0, tile="off").movedim(1, -1)
    assert torch.equal(out, ref)
    single = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image[1:], model)).args[0]
    torch.testing.assert_close(single[0], out[1], atol=1e-5, rtol=0)


def test_sampler_guidance_branch_modes_and_pads(nodes, core, model):
    image = rand_image(1, 16, 20, 3)
    run = lambda **kw: comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"],  # noqa: E731
                                               **sampler_inputs(image, model, **kw)).args[0]
    one, batched, seq = run(), run(guidance=1.8), run(guidance=1.8, branch_mode="sequential")
    torch.testing.assert_close(batched, seq, atol=1e-5, rtol=0)
    assert (batched - one).abs().max() > 1e-4
    x = image.movedim(-1, 1)
    ref = core.upscale(x, model, 2.0, 1.8, tile="off", pos_pad=(2, 6, 2, 6), neg_pad=(1, 7, 0, 8)).movedim(1, -1)
    assert torch.equal(run(guidance=1.8, positive_pad="2,6,2,6", negative_pad="1 7 0 8"), ref)
    assert torch.equal(run(guidance=1.8, positive_pad="4,4,4,4", negative_pad="3,5,3,5"), batched)


@pytest.mark.parametrize("pad", ["1,2,3", "a,b,c,d", "-1,0,0,0", "1,2,3,4,5"])
def test_sampler_rejects_bad_pads_at_validation(nodes, model, pad):
    cls = nodes["GenDRPixPadCFGSampler"]
    msg = cls.validate_inputs(positive_pad=pad, negative_pad="auto")
    assert isinstance(msg, str) and "left,right,top,bottom" in msg
    with pytest.raises(ValueError, match="custom validation failed"):
        comfy_stub.execute_node(cls, **sampler_inputs(rand_image(1, 8, 8, 3), model, negative_pad=pad))


def test_sampler_rejects_overlap_not_below_fixed_tile(nodes, model):
    with pytest.raises(ValueError, match=r"^GenDR-Pix PadCFG Sampler: tile_overlap=64 must be smaller than "
                                         r"tile_size=64 .*; allowed tile_overlap: 0\.\.48$"):
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(
            rand_image(1, 48, 48, 3), model, tiling="fixed", tile_size=64, tile_overlap=64))
    with pytest.raises(ValueError, match="tile_size: 32 smaller than min 64"):
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(
            rand_image(1, 48, 48, 3), model, tiling="fixed", tile_size=32))


def test_sampler_tiling_matches_whole_image(nodes, model):
    image = rand_image(1, 48, 48, 3)
    whole = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model)).args[0]
    tiled = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(
        image, model, tiling="fixed", tile_size=64, tile_overlap=32)).args[0]
    assert tiled.shape == whole.shape == (1, 96, 96, 3)
    assert (tiled - whole).abs().mean() < 0.05  # blended seams; exactness is tested in gendr_core
    auto = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model, tiling="auto"))
    assert torch.equal(auto.args[0], whole)  # the estimate fits: no tiling


def test_sampler_rgba_alpha_and_mask(nodes, model):
    rgba = rand_image(1, 16, 16, 4)
    out, mask = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rgba, model)).args
    assert out.shape == (1, 32, 32, 3) and mask.shape == (1, 32, 32)
    alpha_mask = 1 - rgba[..., 3]
    up = torch.nn.functional.interpolate(alpha_mask[:, None], size=(32, 32), mode="bicubic", align_corners=False)
    torch.testing.assert_close(mask, up[:, 0].clamp(0, 1))
    given = torch.zeros(16, 16)
    given[:8] = 1.0  # (H,W) mask: top half
    _, m2 = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"],
                                    **sampler_inputs(rand_image(2, 16, 16, 3), model, mask=given)).args
    assert m2.shape == (2, 32, 32) and 0 <= m2.min() and m2.max() <= 1
    assert m2[:, :14].min() > 0.99 and m2[:, 18:].max() < 0.01
    gray = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rand_image(1, 16, 16, 1), model))
    assert gray.args[0].shape == (1, 32, 32, 3)


def test_sampler_conditioning_overrides_embeddings(nodes, model):
    image = rand_image(1, 16, 16, 3)
    d = model.config.unet.cross_attention_dim
    base = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model)).args[0]
    own = [[model.prompt_pos.detach().clone(), {"pooled_output": None}]]
    same = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model, positive=own))
    torch.testing.assert_close(same.args[0], base, atol=1e-5, rtol=0)
    other = [[torch.randn(1, 7, d, generator=torch.Generator().manual_seed(1)), {}]]
    changed = comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"],
                                      **sampler_inputs(image, model, guidance=1.5, positive=other, negative=other))
    assert (changed.args[0] - base).abs().max() > 1e-4
    wrong = [[torch.randn(1, 77, 1024), {}]]  # SD2.1 CLIP-H text into an 8-dim tiny model
    with pytest.raises(ValueError, match=r"cross_attention_dim is 8"):
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model, positive=wrong))
    with pytest.raises(ValueError, match="expected a CONDITIONING"):
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(image, model, negative=[1, 2]))
    with pytest.raises(ValueError, match="match the image batch"):
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(
            rand_image(2, 16, 16, 3), model, positive=[[torch.randn(3, 7, d), {}]]))


def test_sampler_uses_comfy_memory_management(nodes, model):
    mm.FREE_MEMORY_CALLS.clear()
    comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rand_image(1, 16, 16, 3), model))
    (need, device), = mm.FREE_MEMORY_CALLS
    assert device == mm.get_torch_device() and need > mm.module_size(model)
    assert model.device == mm.unet_offload_device()


# ----------------------------------------------------------------------------- progress and interrupt


def test_tiled_run_reports_every_tile_and_stops_within_one(nodes, model):
    image = rand_image(1, 64, 64, 3)  # -> 128x128, tile 64 / overlap 16 -> 3x3 tiles
    kw = sampler_inputs(image, model, tiling="fixed", tile_size=64, tile_overlap=16)
    comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **kw)
    blocks = 5  # the tiny UNet: 2 down, mid, 2 up; one progress step per block of every tile
    assert [(v, t) for _, v, t in comfy.utils.PROGRESS_EVENTS] == [(i, 9 * blocks) for i in range(1, 9 * blocks + 1)]

    comfy.utils.PROGRESS_EVENTS.clear()
    tiles_run = []
    real = model.predict
    model.predict = lambda x, c: (tiles_run.append(1), real(x, c))[1]
    # Cancel pressed after the first block of tile 4: the next convolution stops the run
    comfy.utils.ON_PROGRESS = lambda n: mm.interrupt_current_processing() if n == 3 * blocks + 1 else None
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **kw)
    finally:
        del model.predict
    assert len(tiles_run) == 4 and len(comfy.utils.PROGRESS_EVENTS) == 3 * blocks + 1
    assert not mm.processing_interrupted()
    assert model.device == mm.unet_offload_device()  # offloaded even when interrupted
    assert all(not m._forward_hooks for m in model.modules())  # no hook left behind


def test_sequential_branches_report_progress_and_interrupt(nodes, model):
    kw = sampler_inputs(rand_image(1, 16, 16, 3), model, guidance=1.8, branch_mode="sequential")
    comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **kw)
    assert [(v, t) for _, v, t in comfy.utils.PROGRESS_EVENTS] == [(i, 10) for i in range(1, 11)]  # 2 x 5 blocks
    calls = []
    real = model.predict
    model.predict = lambda x, c: (calls.append(1), real(x, c))[1]
    comfy.utils.ON_PROGRESS = lambda n: mm.interrupt_current_processing()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **kw)
    finally:
        del model.predict
    assert len(calls) == 1  # the negative branch never ran


def test_interrupt_before_node_runs(nodes, model):
    mm.interrupt_current_processing()
    with pytest.raises(mm.InterruptProcessingException):
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rand_image(1, 8, 8, 3), model))


# ----------------------------------------------------------------------------- RandPad, FixMod


def randpad_inputs(image, model, **over):
    kw = dict(image=image, model=model, scale=2.0, passes=3, seed=7, flips="1", tiling="off", tile_size=512,
              tile_overlap=64, fixmod="auto")
    kw.update(over)
    return kw


def test_randpad_is_seeded_eq6_ensemble_with_progress(nodes, core, model):
    image = rand_image(2, 16, 16, 3)
    cls = nodes["GenDRPixRandPad"]
    out, mask = comfy_stub.execute_node(cls, **randpad_inputs(image, model)).args
    assert out.shape == (2, 32, 32, 3) and 0 <= out.min() and out.max() <= 1 and mask.shape == (2, 32, 32)
    assert [(v, t) for _, v, t in comfy.utils.PROGRESS_EVENTS] == [(i, 15) for i in range(1, 16)]  # 3 x 5 blocks
    ref = core.upscale(image.movedim(-1, 1), model, 2.0, 1.0, passes=3, seed=7, tiling="off").movedim(1, -1)
    assert torch.equal(out, ref)
    assert torch.equal(comfy_stub.execute_node(cls, **randpad_inputs(image, model)).args[0], out)
    other = comfy_stub.execute_node(cls, **randpad_inputs(image, model, seed=8)).args[0]
    assert not torch.equal(other, out)
    info = comfy_stub.object_info(cls)["input"]["required"]["seed"][1]
    assert info["control_after_generate"] is True


def test_randpad_node_flips_run_the_geometric_ensemble(nodes, core, model):
    image = rand_image(1, 16, 24, 3)
    out = comfy_stub.execute_node(nodes["GenDRPixRandPad"], **randpad_inputs(image, model, passes=2, flips="4")).args[0]
    assert [(v, t) for _, v, t in comfy.utils.PROGRESS_EVENTS] == [(i, 40) for i in range(1, 41)]  # 4 x 2 x 5
    ref = core.upscale(image.movedim(-1, 1), model, 2.0, 1.0, passes=2, flips=4, seed=7, tiling="off")
    assert out.shape == (1, 32, 48, 3) and torch.equal(out, ref.movedim(1, -1))
    flips = comfy_stub.object_info(nodes["GenDRPixRandPad"])["input"]["required"]["flips"]
    assert flips[0] == "COMBO" and flips[1]["options"] == ["1", "2", "4", "8"]
    # new widgets go last: a workflow saved before one existed keeps its values in place
    widgets = [i.id for i in nodes["GenDRPixRandPad"].GET_SCHEMA().inputs if i.is_widget]
    assert widgets == ["scale", "passes", "seed", "tiling", "tile_size", "tile_overlap", "flips", "fixmod"]


def test_randpad_interrupts_between_passes(nodes, model):
    comfy.utils.ON_PROGRESS = lambda n: mm.interrupt_current_processing() if n == 2 else None
    with pytest.raises(mm.InterruptProcessingException):
        comfy_stub.execute_node(nodes["GenDRPixRandPad"], **randpad_inputs(rand_image(1, 16, 16, 3), model, passes=5))
    assert len(comfy.utils.PROGRESS_EVENTS) == 2


def fixmod_inputs(image, reference, **over):
    kw = dict(image=image, reference=reference, strength=1.0, mode="auto")
    kw.update(over)
    return kw


def test_fixmod_wavelet_strength_and_reference_batch(nodes, core, model):
    cls = nodes["GenDRPixFixMod"]
    restored, lr = rand_image(2, 32, 32, 3, seed=1), rand_image(1, 16, 16, 3, seed=2)
    none = comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, strength=0.0)).args[0]
    assert torch.equal(none, restored)
    full = comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr)).args[0]
    assert full.shape == (2, 32, 32, 3) and 0 <= full.min() and full.max() <= 1
    ref = core.ops.resize.resize(lr.movedim(-1, 1), (32, 32), "bicubic").expand(2, -1, -1, -1)
    fixed = core.ops.color_fix.wavelet_color_fix(restored.movedim(-1, 1), ref, 1.0).movedim(1, -1)
    assert torch.equal(full, fixed.clamp(0, 1))
    # low frequencies now follow the reference: the mean color moves to the reference's
    assert (full.mean((1, 2)) - lr.mean((1, 2))).abs().max() < (restored.mean((1, 2)) - lr.mean((1, 2))).abs().max()
    half = comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, strength=0.5), model=model).args[0]
    torch.testing.assert_close(half, (restored + 0.5 * (fixed - restored)).clamp(0, 1), atol=1e-6, rtol=0)
    # a model without a learned FixMod: 'wavelet' and 'auto' agree, 'off' passes through, 'learned' says why not
    assert torch.equal(comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, mode="wavelet"), model=model).args[0],
                       full)
    assert torch.equal(comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, mode="off")).args[0], restored)
    with pytest.raises(ValueError, match=r"^GenDR-Pix FixMod: fixmod='learned': .*tiny\.safetensors has no learned "
                                         r"FixMod; choose 'wavelet' or 'auto', or load a model file that has a "
                                         r"learned FixMod$"):
        comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, mode="learned"), model=model)
    with pytest.raises(ValueError, match="none was given"):
        comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, mode="learned"))
    with pytest.raises(ValueError, match="max"):
        comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, strength=1.5))
    with pytest.raises(ValueError, match="reference batch 3"):
        comfy_stub.execute_node(cls, **fixmod_inputs(restored, rand_image(3, 8, 8, 3)))
    # 'mode' is the last widget: a workflow saved before it existed keeps its strength
    assert [i.id for i in cls.GET_SCHEMA().inputs if i.is_widget] == ["strength", "mode"]


def test_learned_fixmod_round_trip_through_loader_and_nodes(nodes, core):
    """A model file with a learned (non-zero) FixMod, saved by gendr_core and read by the Loader node:
    the FixMod node, the sampler and RandPad give exactly the library's output for that file."""
    path = save_tiny(core, Path(folder_paths.models_dir) / "gendr_pix" / "with_fixmod.safetensors", fixmod=True)
    loaded = comfy_stub.execute_node(nodes["GenDRPixLoader"], model_name="with_fixmod.safetensors", dtype="fp32").args[0]
    lib = core.load_model(path, device="cpu", dtype="fp32")
    assert isinstance(loaded.fixmod, core.models.FixMod) and loaded.fixmod.config == lib.fixmod.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.fixmod.state_dict().values(), lib.fixmod.state_dict().values(),
                                                 strict=True))
    cls = nodes["GenDRPixFixMod"]
    restored, lr = rand_image(2, 32, 40, 3, seed=1), rand_image(2, 16, 20, 3, seed=2)
    y = restored.movedim(-1, 1)
    ref = core.ops.resize.resize(lr.movedim(-1, 1), (32, 40), "bicubic")
    for mode in ("auto", "learned"):
        for strength in (1.0, 0.5):
            out = comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, strength=strength, mode=mode),
                                          model=loaded).args[0]
            expect = core.post_fix(y, ref, lib, "learned", strength).clamp(0, 1).movedim(1, -1)
            assert torch.equal(out, expect), (mode, strength)
    learned = comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr), model=loaded).args[0]
    wavelet = comfy_stub.execute_node(cls, **fixmod_inputs(restored, lr, mode="wavelet"), model=loaded).args[0]
    assert (learned - wavelet).abs().max() > 1e-3  # the network changes the image
    assert loaded.fixmod.head.weight.device == mm.unet_offload_device()  # moved back after the run
    # the sampler and RandPad run the same post-fix after stitching, once; 'off' leaves it out
    image = rand_image(1, 16, 20, 3, seed=3)
    x = image.movedim(-1, 1)
    run = lambda cls, kw: comfy_stub.execute_node(nodes[cls], **kw).args[0]  # noqa: E731
    auto = run("GenDRPixPadCFGSampler", sampler_inputs(image, loaded))
    assert torch.equal(auto, core.upscale(x, lib, 2.0, 1.0, tile="off").movedim(1, -1))
    off = run("GenDRPixPadCFGSampler", sampler_inputs(image, loaded, fixmod="off"))
    assert torch.equal(off, core.upscale(x, lib, 2.0, 1.0, tile="off", fixmod="off").movedim(1, -1))
    assert (auto - off).abs().max() > 1e-3
    rp = run("GenDRPixRandPad", randpad_inputs(image, loaded, fixmod="learned"))
    assert torch.equal(rp, core.upscale(x, lib, 2.0, 1.0, randpad=3, seed=7, tile="off").movedim(1, -1))
    widgets = [i.id for i in nodes["GenDRPixPadCFGSampler"].GET_SCHEMA().inputs if i.is_widget]
    assert widgets[-1] == "fixmod"


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_node_is_the_bench_runner(nodes, model, core):
    import dataclasses

    cls = nodes["GenDRPixBenchmark"]
    assert cls.GET_SCHEMA().is_output_node
    out = comfy_stub.execute_node(cls, model=model, sizes="32, 64x48", scale=4.0, guidance=1.0, repeats=1,
                                  compare_model=model)
    report, plot = out.args
    assert "gendr_pix" in report and "64x48" in report and "GMACs" in report and "JSON" in report
    data = json.loads(report.split("JSON: ", 1)[1])
    rows = data["rows"]
    assert [(r["pipeline"], r["output_size"]) for r in rows] == [
        ("gendr_pix", [32, 32]), ("gendr_pix", [64, 48]), ("gendr_pix (cmp)", [32, 32]), ("gendr_pix (cmp)", [64, 48])]
    assert all(set(r) == {f.name for f in dataclasses.fields(core.bench.BenchRow)} for r in rows)  # one schema
    for r in rows:  # measured in-process: the stub runs on the CPU, Linux resets VmHWM
        assert r["memory_method"] == "in_process_vmhwm" and r["peak_bytes"] >= r["activation_bytes"] >= 0
        assert r["estimated_bytes"] > 0 and len(r["seconds"]) == 1 and r["input_size"] == [r["output_size"][0] // 4,
                                                                                          r["output_size"][1] // 4]
    # MACs from the runner's meta-device count of this model's architecture, and the model is left on its device
    assert rows[1]["macs"] == core.bench.model_macs(model, (48, 64)) > rows[0]["macs"] > 0
    assert rows[2]["macs"] == rows[0]["macs"] and model.prompt_pos.device.type == "cpu"
    assert [c["macs_ratio_other_over_ours"] for c in data["comparisons"]] == [1.0, 1.0]
    assert [c["against"] for c in data["comparisons"]] == ["gendr_pix (cmp)"] * 2
    assert out.ui.as_dict() == {"text": (report,)}
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= plot.min() and plot.max() <= 1
    assert plot.shape[1:3] == (400, 1400) and plot.min() < 0.5  # the runner's 3-panel Fig. 8 plot, drawn
    events = comfy.utils.PROGRESS_EVENTS
    assert events[-1][1] == events[-1][2] == 2 * 2 * (1 + 1)  # models x sizes x (warm-up + repeats)
    assert "expected output sides" in cls.validate_inputs(sizes="big")
    assert "expected output sides" in cls.validate_inputs(sizes="8")
    assert cls.validate_inputs(sizes="512, 3840x2160") is True


# ----------------------------------------------------------------------------- gendr_core additions for the nodes


def test_tile_count_matches_tiled_apply_and_rejects_wide_overlap(core):
    from gendr_core.ops.tiling import tile_count, tiled_apply

    for h, w, tile, overlap, align in ((100, 100, 64, 16, 8), (128, 96, 64, 16, 16), (50, 300, 48, 0, 16)):
        calls: list[int] = []
        tiled_apply(lambda t: t, torch.zeros(1, 1, h, w), tile, overlap, align, progress=lambda d, t, c=calls: c.append(t))
        assert tile_count(h, w, tile, overlap, align) == len(calls) == calls[-1]
    with pytest.raises(ValueError, match="overlap=64 must be smaller than tile=64"):
        tile_count(1000, 1000, 64, 64, 16)  # would otherwise never finish


# ----------------------------------------------------------------------------- messages for the artist


def test_pad_beyond_the_model_period_is_refused_naming_only_that_input(nodes, model):
    cls = nodes["GenDRPixPadCFGSampler"]
    calls = []
    real = model.predict
    model.predict = lambda x, c: (calls.append(1), real(x, c))[1]
    try:
        with pytest.raises(ValueError) as info:
            comfy_stub.execute_node(cls, **sampler_inputs(rand_image(1, 8, 8, 3), model, guidance=1.5,
                                                          negative_pad="9999,0,0,0"))
    finally:
        del model.predict
    assert type(info.value) is ValueError and calls == []  # refused before the model ran
    assert str(info.value) == ("GenDR-Pix PadCFG Sampler: negative_pad=(9999, 0, 0, 0): negative_pad left=9999 is "
                               "out of range: it must be in [0, 8]; a pad side never needs more than the model's "
                               "period 8 (see README, PadCFG)")
    msg = cls.validate_inputs(positive_pad="auto", negative_pad="1,2")
    assert msg.startswith("negative_pad='1,2'") and "positive_pad" not in msg


@pytest.mark.parametrize("over, needle", [
    ({"scale": float("nan")}, "GenDR-Pix PadCFG Sampler: scale=nan must be a finite number > 0"),
    ({"guidance": float("nan")}, "GenDR-Pix PadCFG Sampler: guidance=nan must be a finite number in [0, 10]"),
])
def test_nan_and_inf_widget_values_are_refused_by_name(nodes, model, over, needle):
    # ComfyUI's own min/max check lets NaN through (every comparison with NaN is False)
    with pytest.raises(ValueError) as info:
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rand_image(1, 8, 8, 3), model, **over))
    assert str(info.value) == needle and type(info.value) is ValueError


def test_errors_shown_in_comfyui_carry_no_module_path_and_no_developer_hint(nodes, core, pack):
    folder = Path(folder_paths.models_dir) / "gendr_pix"
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "lora.safetensors"))  # a safetensors file without our metadata
    with pytest.raises(ValueError) as info:  # e.g. queued through the API with a name the list does not offer
        pack.nodes.loader.GenDRPixLoader.execute(model_name="lora.safetensors", dtype="fp32")
    text = str(info.value)
    assert type(info.value) is ValueError and text.startswith("GenDR-Pix Model Loader: ")
    assert "this file is not a GenDR-Pix model" in text and "trainers" not in text and "python -m" not in text
    assert isinstance(info.value.__cause__, core.errors.CheckpointFormatError)  # the detail stays in the log


def test_model_folder_is_created_with_a_readme_and_lists_only_model_files(pack, core):
    folder = Path(folder_paths.models_dir) / "gendr_pix"
    assert not folder.exists()
    asyncio.run(pack.comfy_entrypoint())
    assert (folder / "README.txt").read_text().startswith("GenDR-Pix model folder")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "sd_lora.safetensors"))
    (folder / "broken.safetensors").write_bytes(b"\xff" * 20)
    save_tiny(core, folder / "mine.safetensors")
    choices = pack.nodes.paths.model_choices()
    assert choices == pack.nodes.paths.shipped_choices() + ["mine.safetensors"]
    assert pack.nodes.paths.is_model_file(folder / "mine.safetensors")
    assert not pack.nodes.paths.is_model_file(folder / "sd_lora.safetensors")
    (folder / "README.txt").write_text("my own notes")
    pack.nodes.paths.register_model_folder()
    assert (folder / "README.txt").read_text() == "my own notes"  # never overwritten


def test_a_load_is_logged_once(nodes, model_file, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        comfy_stub.execute_node(nodes["GenDRPixLoader"], model_name="tiny.safetensors", dtype="fp32")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "tiny.safetensors" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("loaded gendr_pix model from ")


def test_a_job_bigger_than_the_machine_is_refused_in_the_node(nodes, pack, model, monkeypatch):
    monkeypatch.setattr(pack.gendr_core.pipeline, "available_memory", lambda device: 16 << 20)
    with pytest.raises(ValueError) as info:
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **sampler_inputs(rand_image(1, 64, 64, 3), model,
                                                                                 scale=16.0))
    text = str(info.value)
    assert text.startswith("GenDR-Pix PadCFG Sampler: a 1024x1024 output (batch 1) needs about ")
    assert "use a smaller scale (at most" in text and model.device == mm.unet_offload_device()


def test_fixmod_refuses_a_reference_of_another_aspect_ratio(nodes):
    cls = nodes["GenDRPixFixMod"]
    restored = rand_image(1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"^GenDR-Pix FixMod: reference is 32x16 but image is 64x64, another aspect"):
        comfy_stub.execute_node(cls, **fixmod_inputs(restored, rand_image(1, 16, 32, 3)))
    ok = comfy_stub.execute_node(cls, **fixmod_inputs(rand_image(1, 76, 101, 3), rand_image(1, 19, 25, 3))).args[0]
    assert ok.shape == (1, 76, 101, 3)  # 19x25 -> 76x101: one scale in [4.02, 4.026] up to whole-pixel rounding
    with pytest.raises(ValueError, match="another aspect ratio"):  # 78x100: rows need >= 4.08, columns <= 4.02
        comfy_stub.execute_node(cls, **fixmod_inputs(rand_image(1, 78, 100, 3), rand_image(1, 19, 25, 3)))



def test_a_whole_image_pass_reports_per_block_and_cancel_stops_inside_it(nodes, model):
    convs = [m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    ran = []
    hooks = [c.register_forward_hook(lambda m, a, o: ran.append(1)) for c in convs]
    try:
        kw = sampler_inputs(rand_image(1, 32, 32, 3), model)  # one whole-image pass
        comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **kw)
        full = len(ran)
        assert [(v, t) for _, v, t in comfy.utils.PROGRESS_EVENTS] == [(i, 5) for i in range(1, 6)]
        ran.clear()
        comfy.utils.PROGRESS_EVENTS.clear()
        comfy.utils.ON_PROGRESS = lambda n: mm.interrupt_current_processing()  # Cancel after the first block
        with pytest.raises(mm.InterruptProcessingException):
            comfy_stub.execute_node(nodes["GenDRPixPadCFGSampler"], **kw)
    finally:
        for h in hooks:
            h.remove()
    assert len(comfy.utils.PROGRESS_EVENTS) == 1 and 0 < len(ran) < full  # stopped inside the pass
    assert all(not m._forward_hooks for m in model.modules()) and model.device == mm.unet_offload_device()
