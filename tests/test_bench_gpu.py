"""bench/gpu_bench.py: the plan, and a CPU dry run of it (tiny model) through gendr_core.bench's runner."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gendr_core.bench import BenchRow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_bench", None)


def test_the_plan_is_the_issue_18_matrix(gpu_bench):
    entries = gpu_bench.plan()
    by_label = {e.label: e.config for e in entries}
    assert len(by_label) == len(entries)
    sd21 = [c for c in by_label.values() if c.model == "random:gendr-pix-sd21" and not c.compare]
    assert {c.sizes for c in sd21 if c.speed.ff_chunk == c.speed.attention_window == 0 and not c.speed.channels_last} \
        == {((1024, 1024), (2048, 2048), (3840, 2160), (7680, 4320))}
    assert all(c.device == "cuda" and c.dtype == "bf16" and c.speed.fused_attention for c in by_label.values())
    modes = {(c.guidance, c.branch_mode, c.speed.compile) for c in sd21 if c.sizes[0] == (1024, 1024)}
    assert modes == {(1.0, "batched", False), (1.8, "sequential", False), (1.0, "batched", True),
                     (1.8, "sequential", True)}  # no-CFG and sequential PadCFG, eager and compiled
    assert by_label["866M no-cfg window 64"].speed.attention_window == 64
    assert by_label["866M no-cfg window 64"].sizes == ((3840, 2160), (7680, 4320))
    assert {c.model for c in by_label.values()} >= {"gendr-pix-s", "gendr-pix-s-detail"}  # the shipped models
    assert by_label["866M vs GenDR latent, no-cfg eager"].compare


def test_dry_run_writes_one_json_and_prints_a_table(gpu_bench, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_bench.main(["--dry-run", "--out", str(out), "--groups", "sd21", "sd21-options", "latent"]) == 0
    doc = json.loads(out.read_text())
    assert doc["dry_run"] is True and "numbers mean nothing" in doc["note"] and doc["skipped"] == []
    labels = [r["label"] for r in doc["runs"]]
    assert labels == ["866M no-cfg eager", "866M padcfg-seq eager", "866M no-cfg ff-chunk 16384",
                      "866M no-cfg channels_last", "866M no-cfg window 64", "866M vs GenDR latent, no-cfg eager"]
    fields = {f.name for f in BenchRow.__dataclass_fields__.values()}
    for run in doc["runs"]:
        rows = run["result"]["rows"]
        assert rows and all(set(r) == fields and r["device"] == "cpu" and r["macs"] > 0 for r in rows)
    seq = doc["runs"][1]["result"]
    assert seq["config"]["branch_mode"] == "sequential" and seq["config"]["guidance"] == 1.8
    assert doc["runs"][2]["result"]["rows"][0]["speed"]["applied"]["ff_chunked"] == 4
    assert doc["runs"][3]["result"]["rows"][0]["speed"]["applied"]["memory_format"] == "channels_last"
    assert doc["runs"][4]["result"]["rows"][0]["attention"] == {"WindowedSelfAttention": 3, "AttnProcessor2_0": 5}
    assert [r["pipeline"] for r in doc["runs"][5]["result"]["rows"]] == ["gendr_pix", "gendr_latent"]
    text = capsys.readouterr().out
    assert "866M padcfg-seq eager" in text and "GMACs" in text and f"wrote {out}" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("866M")]) == 2 + 2 + 3 * 1 + 2


def test_budget_skips_the_rest_and_no_cuda_is_refused(gpu_bench, tmp_path, capsys, monkeypatch):
    out = tmp_path / "g.json"
    assert gpu_bench.main(["--dry-run", "--out", str(out), "--groups", "sd21", "--budget-s", "0"]) == 0
    doc = json.loads(out.read_text())
    assert doc["runs"] == [] and doc["skipped"] == ["866M no-cfg eager", "866M padcfg-seq eager"]
    assert "skipped (budget): 866M no-cfg eager, 866M padcfg-seq eager" in capsys.readouterr().out
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.main(["--out", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
