"""gendr-pix bench: rows, ratios, the fresh-process worker, atomic writes. Numbers, never timings."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from gendr_core.bench import (
    RANDOM_WEIGHTS,
    BenchResult,
    BenchRow,
    add_bench_arguments,
    compare_recipe,
    compare_rows,
    count_macs,
    gendr_pix_s_config,
    latent_counterpart,
    parse_sizes,
    reduced_unet_config,
    reduced_vae_config,
    resolve_model,
    run_bench_command,
    run_benchmark,
)
from gendr_core.config import GenDRConfig, GenDRPixConfig, UNetConfig, tiny_vae_config, vae16_config
from gendr_core.errors import ConfigError, GenDRPixError

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {f.name for f in dataclasses.fields(BenchRow)}


def _row(pipeline: str, size: list[int], seconds: float, peak: int | None, base: int | None) -> BenchRow:
    return BenchRow(pipeline=pipeline, kind="gendr_pix" if pipeline == "gendr_pix" else "gendr",
                    weights=RANDOM_WEIGHTS, output_size=size, input_size=[s // 4 for s in size],
                    output_megapixels=size[0] * size[1] / 1e6, seconds_median=seconds, seconds_min=seconds,
                    seconds=[seconds], peak_bytes=peak, baseline_bytes=base,
                    activation_bytes=None if peak is None or base is None else peak - base,
                    memory_method="cuda_max_memory_allocated", device="cpu", dtype="float32", parameters=1,
                    unet_parameters=1, vae_parameters=0, estimated_bytes=0, output_shape=[1, 3, size[1], size[0]])


def test_ratios_from_hand_numbers():
    pix = _row("gendr_pix", [3840, 2160], 1.0, 4_000, 1_000)
    latent = _row("gendr_latent", [3840, 2160], 2.8, 10_000, 2_500)
    c = compare_rows(pix, latent)
    assert c["speedup"] == pytest.approx(2.8) and c["time_ratio_latent_over_pix"] == pytest.approx(2.8)
    assert c["peak_ratio_pix_over_latent"] == pytest.approx(0.4)
    assert c["memory_reduction"] == pytest.approx(0.6)  # the paper's "-60 %"
    assert c["activation_ratio_pix_over_latent"] == pytest.approx(3_000 / 7_500)
    # dict rows (as read back from JSON) give the same; missing memory gives None, not a number
    assert compare_rows(dataclasses.asdict(pix), dataclasses.asdict(latent)) == c
    none = compare_rows(_row("gendr_pix", [64, 64], 1.0, None, None), _row("gendr_latent", [64, 64], 2.0, None, None))
    assert none["speedup"] == 2.0 and none["peak_ratio_pix_over_latent"] is None and none["memory_reduction"] is None
    with pytest.raises(ValueError, match="output size"):
        compare_rows(pix, _row("gendr_latent", [64, 64], 1.0, 1, 1))


def test_in_process_compare_rows_and_keys():
    sizes = [(64, 64), (96, 64)]
    r = run_benchmark("random:tiny", sizes, compare=True, vae_config=tiny_vae_config(16), repeats=2, warmup=0,
                      fresh_process_on_cpu=False, device="cpu", threads=1)
    assert [(x.pipeline, tuple(x.output_size)) for x in r.rows] == [
        ("gendr_pix", (64, 64)), ("gendr_latent", (64, 64)), ("gendr_pix", (96, 64)), ("gendr_latent", (96, 64))]
    for row in r.rows:
        w, h = row.output_size
        assert row.input_size == [w // 4, h // 4] and row.output_shape == [1, 3, h, w]
        assert len(row.seconds) == 2 and row.seconds_min <= row.seconds_median
        assert row.peak_bytes is None and row.memory_method.startswith("none")  # no fresh process: not measured
        assert row.weights == RANDOM_WEIGHTS and row.threads == 1
    assert r.rows[1].vae_parameters > 0 and r.rows[0].vae_parameters == 0
    data = json.loads(r.to_json())
    assert set(data) == {"config", "rows", "comparisons", "models", "environment", "notes", "created"}
    assert all(set(row) == ROW_KEYS for row in data["rows"])
    assert data["comparisons"] == [compare_rows(data["rows"][0], data["rows"][1]),
                                   compare_rows(data["rows"][2], data["rows"][3])]
    assert data["config"]["sizes"] == [[64, 64], [96, 64]] and data["config"]["vae_config"]["latent_channels"] == 16
    assert data["models"]["gendr_latent"]["config"]["unet"]["block_out_channels"] == \
        data["models"]["gendr_pix"]["config"]["unet"]["block_out_channels"]
    assert any("VAE reduced" in n for n in r.notes) and any("random weights" in n for n in r.notes)
    assert "t_other/t_ours" in r.table() and "gendr_latent" in r.table()


def test_fresh_process_worker_measures_peak_rss():
    r = run_benchmark("random:tiny", [(128, 64)], repeats=1, warmup=0, device="cpu", threads=1)
    (row,) = r.rows
    assert row.output_shape == [1, 3, 64, 128] and row.input_size == [32, 16]
    assert row.peak_bytes > 0 and row.baseline_bytes > 0 and row.memory_method.startswith("fresh_process")
    assert row.activation_bytes == row.peak_bytes - row.baseline_bytes
    assert row.load_peak_bytes >= row.baseline_bytes and row.ru_maxrss_bytes > 0


def _result(tmp_path: Path) -> BenchResult:
    return BenchResult(config={"model": "random:tiny"}, rows=[_row("gendr_pix", [64, 64], 0.5, 2 << 20, 1 << 20),
                                                              _row("gendr_pix", [128, 128], 1.0, 3 << 20, 1 << 20)])


def test_write_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    j, p = _result(tmp_path).write(tmp_path / "out" / "b.json", tmp_path / "out" / "b.png")
    assert json.loads(j.read_text())["rows"][1]["peak_bytes"] == 3 << 20
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["b.json", "b.png"]


def test_failed_writes_leave_old_files_and_no_temp(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    import gendr_core.bench as bench

    j, p = _result(tmp_path).write(tmp_path / "b.json", tmp_path / "b.png")
    old_j, old_p = j.read_bytes(), p.read_bytes()

    def fail_fsync(fd):
        raise OSError("disk full")  # the text is already half on disk when this raises

    monkeypatch.setattr(bench.os, "fsync", fail_fsync)
    with pytest.raises(OSError, match="disk full"):
        _result(tmp_path).write(j)
    monkeypatch.undo()

    def fail_savefig(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG partial")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", fail_savefig)
    with pytest.raises(RuntimeError, match="renderer"):
        _result(tmp_path).write(j, p)
    assert j.read_bytes() == old_j and p.read_bytes() == old_p
    assert sorted(os.listdir(tmp_path)) == ["b.json", "b.png"]


def test_presets_and_overrides():
    s = gendr_pix_s_config()
    recipe = REPO / "trainers" / "configs" / "gendr_pix_s.json"
    if recipe.exists():
        assert s == GenDRPixConfig.from_dict(json.loads(recipe.read_text())["model"])
    assert s.shuffle_factor == 4 and s.unet.block_out_channels == (32, 64, 128, 160)
    assert s.unet.down_block_types[-1] == "CrossAttnDownBlock2D"
    assert GenDRPixConfig.from_json(resolve_model("random:gendr-pix-sd21").config) == GenDRPixConfig()
    red = reduced_unet_config((64, 128, 256, 256))
    assert red.attention_head_dim == (1, 2, 4, 4) and red.down_block_types == UNetConfig().down_block_types
    pix = resolve_model("random:gendr-pix-sd21", red)
    assert GenDRPixConfig.from_json(pix.config).unet == red.replace(in_channels=192, out_channels=192)
    vae = reduced_vae_config((32, 32, 64, 128))
    assert vae == vae16_config().replace(block_out_channels=(32, 32, 64, 128))
    lat = GenDRConfig.from_json(latent_counterpart(pix, vae).config)
    assert lat.unet == red.replace(in_channels=16, out_channels=16) and lat.vae == vae
    assert lat.pad_multiple == GenDRPixConfig.from_json(pix.config).pad_multiple == 64
    with pytest.raises(ConfigError, match="random:gendr-pix-s"):
        resolve_model("random:nope")
    with pytest.raises(ConfigError, match="random:<preset>"):
        resolve_model("some/file.safetensors", red)
    with pytest.raises(ConfigError, match="GenDR-Pix model"):
        latent_counterpart(resolve_model("random:tiny-gendr"))


def test_cli_arguments_sizes_and_run(tmp_path, capsys):
    assert parse_sizes("512x512, 3840x2160,1024") == [(512, 512), (3840, 2160), (1024, 1024)]
    for bad in ("", "12xab", "1x2x3", "0x5"):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    ap = argparse.ArgumentParser()
    add_bench_arguments(ap)
    args = ap.parse_args(["--model", "random:tiny", "--sizes", "64x64", "--repeats", "1", "--warmup", "0",
                          "--device", "cpu", "--threads", "1", "--in-process", "--out", str(tmp_path / "res")])
    assert run_bench_command(args) == 0
    files = sorted(os.listdir(tmp_path / "res"))
    assert files[0].startswith("bench_") and files[0].endswith(".json")
    assert "gendr_pix" in capsys.readouterr().out


# ----------------------------------------------------------------------------- --compare FILE...


class _FakeTeacher(torch.nn.Module):
    """The Teacher interface: frozen, ``restore(lq, size)``; a 3x3 conv then a bicubic resize."""

    name, native_scale = "fake-x4", 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def restore(self, lq, size):
        return torch.nn.functional.interpolate(self.conv(lq), size=size, mode="bicubic", align_corners=False)


@pytest.fixture
def fake_teachers(monkeypatch):
    """gendr_core.teachers.load_teacher replaced by a loader of :class:`_FakeTeacher` (records its calls)."""
    import types

    calls = []

    def load_teacher(path, device="cpu", dtype=torch.float32):
        calls.append((str(path), str(device), dtype))
        if Path(path).read_bytes()[:4] != b"FAKE":
            raise RuntimeError("unsupported model")
        return _FakeTeacher().to(device, dtype)

    module = types.ModuleType("gendr_core.teachers")
    module.load_teacher = load_teacher
    monkeypatch.setitem(sys.modules, "gendr_core.teachers", module)
    return calls


def test_compare_model_files_in_process(tmp_path, tiny_pix, fake_teachers):
    from gendr_core import save_model

    ours = save_model(tiny_pix, tmp_path / "tiny-copy.safetensors")
    teacher = tmp_path / "realesrgan-x4plus.safetensors"
    teacher.write_bytes(b"FAKE teacher")
    assert compare_recipe(str(ours)).kind == "gendr_pix" and compare_recipe(str(teacher)).kind == "teacher"
    r = run_benchmark("random:tiny", [(64, 64), (96, 64)], repeats=2, warmup=1, fresh_process_on_cpu=False,
                      device="cpu", threads=1, compare_models=[str(ours), str(teacher)])
    assert [(x.pipeline, tuple(x.output_size)) for x in r.rows] == [
        ("gendr_pix", (64, 64)), ("tiny-copy", (64, 64)), ("realesrgan-x4plus", (64, 64)),
        ("gendr_pix", (96, 64)), ("tiny-copy", (96, 64)), ("realesrgan-x4plus", (96, 64))]
    t = r.rows[2]
    assert t.kind == "teacher" and t.parameters == 3 * 3 * 9 + 3 and t.estimated_bytes is None
    assert t.output_shape == [1, 3, 64, 64] and t.input_size == [16, 16] and len(t.seconds) == 2
    assert t.macs == (3 * 3 * 9) * 16 * 16  # the 3x3 conv on the 16x16 input; interpolation has no MACs
    assert r.rows[3].macs * 4 == pytest.approx(r.rows[0].macs * 6, rel=0.2)  # ours: ~linear in pixels
    assert r.rows[1].macs == r.rows[0].macs  # the same tiny model as a file
    assert fake_teachers == [(str(teacher), "cpu", torch.float32)] * 2  # loaded once per size, fp32 on CPU
    c = {(x["against"], tuple(x["output_size"])): x for x in r.to_dict()["comparisons"]}
    assert set(c) == {("tiny-copy", (64, 64)), ("tiny-copy", (96, 64)), ("realesrgan-x4plus", (64, 64)),
                      ("realesrgan-x4plus", (96, 64))}
    assert c[("realesrgan-x4plus", (64, 64))]["speedup"] == pytest.approx(r.rows[2].seconds_median
                                                                          / r.rows[0].seconds_median)
    assert all(x["pipeline"] == "gendr_pix" for x in c.values())
    assert r.to_dict()["config"]["compare_models"] == [str(ours), str(teacher)]
    assert r.models["realesrgan-x4plus"]["kind"] == "teacher"
    assert "realesrgan-x4plus" in r.table() and "t_other/t_ours" in r.table()
    json.loads(r.to_json())  # strict JSON (None for the teacher's estimate)


def test_compare_files_fresh_process_cli(tmp_path, tiny_pix, capsys):
    from gendr_core import save_model

    ours = save_model(tiny_pix, tmp_path / "mine.safetensors")
    other = save_model(tiny_pix, tmp_path / "other.safetensors")
    ap = argparse.ArgumentParser()
    add_bench_arguments(ap)
    args = ap.parse_args(["--model", str(ours), "--compare", str(other), "--sizes", "64x64", "--repeats", "1",
                          "--warmup", "0", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "res")])
    assert run_bench_command(args) == 0
    out = capsys.readouterr().out
    assert "other" in out and "t_other/t_ours" in out
    (res,) = [f for f in os.listdir(tmp_path / "res") if f.endswith(".json")]
    data = json.loads((tmp_path / "res" / res).read_text())
    rows = {r["pipeline"]: r for r in data["rows"]}
    assert set(rows) == {"gendr_pix", "other"} and all(r["peak_bytes"] > 0 for r in rows.values())
    assert rows["other"]["memory_method"].startswith("fresh_process")
    (cmp,) = data["comparisons"]
    assert cmp["against"] == "other" and cmp["speedup"] == pytest.approx(
        rows["other"]["seconds_median"] / rows["gendr_pix"]["seconds_median"])


def test_compare_argument_forms_and_errors(tmp_path):
    ap = argparse.ArgumentParser()
    add_bench_arguments(ap)
    assert ap.parse_args([]).compare is None
    assert ap.parse_args(["--compare", "--sizes", "64"]).compare == []  # bare flag: the latent pipeline
    assert ap.parse_args(["--compare", "a.safetensors", "latent"]).compare == ["a.safetensors", "latent"]
    args = ap.parse_args(["--model", "random:tiny", "--compare", str(tmp_path / "nope.safetensors")])
    with pytest.raises(FileNotFoundError, match="--compare model file not found: .*nope.safetensors"):
        run_bench_command(args)
    with pytest.raises(FileNotFoundError, match="nope"):
        compare_recipe(str(tmp_path / "nope.pth"))
    assert compare_recipe(str(REPO / "pyproject.toml"), {"pyproject"}).pipeline == "pyproject'"


def test_unloadable_compare_file_names_it(tmp_path, fake_teachers):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(GenDRPixError, match="junk.pth: cannot load as a model"):
        run_benchmark("random:tiny", [(64, 64)], repeats=1, warmup=0, fresh_process_on_cpu=False, device="cpu",
                      threads=1, compare_models=[str(junk)])


def test_unloadable_compare_file_in_a_fresh_process_is_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(GenDRPixError) as info:
        run_benchmark("random:tiny", [(64, 64)], repeats=1, warmup=0, device="cpu", threads=1,
                      compare_models=[str(junk)])
    assert "junk.pth" in str(info.value) and "\n" not in str(info.value)


def test_count_macs_is_the_flop_counter_on_meta():
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    lin = torch.nn.Linear(12, 5)
    macs = count_macs(lambda d: lin.to(d)(conv.to(d)(torch.empty(2, 8, 10, 12, device=d))))
    assert macs == 2 * 16 * 10 * 12 * (8 * 9) + 2 * 16 * 10 * 12 * 5  # conv + linear over the last dim
    assert conv.weight.device.type == "meta"  # counted without real weights or memory

    def broken(d):
        raise RuntimeError("no meta kernel")

    assert count_macs(broken) is None


def test_tiling_options_reach_upscale_and_are_recorded():
    sizes = [(1600, 96), (128, 128)]
    tiled = run_benchmark("random:tiny", sizes, repeats=1, warmup=0, fresh_process_on_cpu=False, device="cpu",
                          threads=1, tiling="fixed", tile_size=100)
    auto = run_benchmark("random:tiny", sizes, repeats=1, warmup=0, fresh_process_on_cpu=False, device="cpu",
                         threads=1, tiling="auto")
    whole = run_benchmark("random:tiny", sizes[:1], repeats=1, warmup=0, fresh_process_on_cpu=False, device="cpu",
                          threads=1)
    # the tiny preset's pad multiple is 16, so a 100-px tile is 96 px
    assert [r.tiling for r in tiled.rows] == ["fixed 96"] * 2
    # on a CPU, auto takes 768-px tiles for an output longer than 1536 px, the whole image otherwise
    assert [r.tiling for r in auto.rows] == ["auto (tile 768)", "auto (whole image)"]
    assert whole.rows[0].tiling == "off" and whole.config["tiling"] == "off" and tiled.config["tile_size"] == 100
    assert all(r.output_shape == [1, 3, 96, 1600] for r in (tiled.rows[0], auto.rows[0], whole.rows[0]))
    with pytest.raises(ConfigError, match="tiling='tiles' must be 'off', 'auto' or 'fixed'"):
        run_benchmark("random:tiny", sizes, fresh_process_on_cpu=False, device="cpu", tiling="tiles")
    ap = argparse.ArgumentParser()
    add_bench_arguments(ap)
    args = ap.parse_args(["--tiling", "fixed", "--tile-size", "384"])
    assert (args.tiling, args.tile_size) == ("fixed", 384)
