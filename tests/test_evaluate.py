"""gendr-pix eval: the fixed protocol, compared models in the same run, metrics columns, crop sheet, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gendr_core.evaluate import (
    EvalMethod,
    SheetRow,
    compose_sheet,
    degraded_pairs,
    evaluate,
    format_table,
    hr_files,
    model_method,
    restore_lq_tiled,
    run_evaluation,
    sheet_cells,
    sheet_crop_box,
    teacher_method,
)
from gendr_core.metrics import grid_artifact_score, niqe, psnr_y
from gendr_core.models import OneStepRestorer
from gendr_core.ops.resize import resize

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class Bicubic(OneStepRestorer):
    """Returns its input: its scores must equal the bicubic row exactly."""

    kind = "identity"

    def predict(self, x, cond):
        return x

    def estimate_bytes(self, h, w, batch=1):
        return h * w


class ResizeTeacher(nn.Module):
    """The Teacher interface (``name``, ``native_scale``, ``restore(lq, size)``) with a fixed resize."""

    def __init__(self, mode: str, name: str) -> None:
        super().__init__()
        self.mode, self.name, self.native_scale = mode, name, None
        self.calls: list[tuple[int, ...]] = []

    def restore(self, lq, size):
        self.calls.append(tuple(lq.shape))
        if self.mode == "nearest":
            s = size[0] // lq.shape[-2]
            return lq.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
        out = resize(lq, size, "bicubic")
        if self.mode == "grid":  # a fixed +-3/255 pattern repeating every 8 px: the unshuffle artifact
            tile = torch.tensor([[1.0, -1.0] * 4, [-1.0, 1.0] * 4] * 4)[None, None] * torch.linspace(0, 1, 8)[:, None]
            out = out + 3 / 255 * tile.repeat(1, 1, size[0] // 8 + 1, size[1] // 8 + 1)[..., : size[0], : size[1]]
        return out


@pytest.fixture
def identity():
    from gendr_core.config import tiny_gendr_pix_config

    return Bicubic(tiny_gendr_pix_config()).eval()


def test_identity_model_scores_equal_bicubic_and_protocol_is_deterministic(identity):
    rows = evaluate(identity, [FIXTURES], scale=4, guidances=(1.0, 1.8), with_niqe=False)
    by = {(r.dataset, r.method, r.guidance): r for r in rows}
    bic, ident = by[("all", "bicubic", None)], by[("all", "gendr-pix", 1.8)]
    assert bic.images == 4 and abs(bic.psnr_y - ident.psnr_y) < 1e-4 and abs(bic.ssim_y - ident.ssim_y) < 1e-5
    assert 15 < bic.psnr_y < 40
    a = [lr for _, _, lr in degraded_pairs(FIXTURES, 4)]
    b = [lr for _, _, lr in degraded_pairs(FIXTURES, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert [tuple(x.shape[-2:]) for x in a] == [(16, 20), (48, 48), (16, 16), (24, 24)]  # HR / 4, sorted by name
    assert "| all | bicubic |" in format_table(rows)


def test_ensemble_rows_are_labelled_and_exact_for_an_equivariant_model(identity):
    rows = evaluate(identity, [FIXTURES], scale=4, guidances=(1.0,), with_niqe=False, ensemble=8)
    by = {(r.dataset, r.method): r for r in rows}
    bic, ens = by[("all", "bicubic")], by[("all", "gendr-pix")]
    assert (bic.ensemble, ens.ensemble) == (1, 8)
    assert abs(bic.psnr_y - ens.psnr_y) < 1e-4  # flips of an identity model change nothing
    assert "| all | gendr-pix (x8 flips) | 1 |" in format_table(rows)


def test_dataset_root_with_hr_subfolder_scores_only_hr(tmp_path, identity):
    import shutil

    root = tmp_path / "Set2"
    for sub in ("HR", "LR_x4"):
        (root / sub).mkdir(parents=True)
    hr_imgs = sorted(FIXTURES.glob("*.png"))[:2]
    for f in hr_imgs:
        shutil.copy(f, root / "HR" / f.name)
        shutil.copy(f, root / "LR_x4" / ("lr_" + f.name))
    assert [p.name for p in hr_files(root)] == [f.name for f in hr_imgs]
    rows = evaluate(identity, [root], scale=4, with_niqe=False)
    assert {(r.dataset, r.images) for r in rows if r.method == "bicubic"} == {("Set2", 2), ("all", 2)}
    assert [p.name for p in hr_files(FIXTURES)] == sorted(p.name for p in FIXTURES.glob("*.png"))  # no HR/: as is


def test_randpad_rows_are_keyed_by_passes_and_exact_for_an_identity_model(identity):
    methods = [model_method(identity, 1.0), model_method(identity, 1.0, passes=3)]
    result = run_evaluation(methods, [FIXTURES], 4, with_niqe=False, sheet_images=1, sheet_crop=16)
    by = {(r.method, r.passes): r for r in result.rows if r.dataset == "all"}
    assert set(by) == {("bicubic", 0), ("gendr-pix", 0), ("gendr-pix", 3)}
    assert abs(by[("gendr-pix", 3)].psnr_y - by[("bicubic", 0)].psnr_y) < 1e-4  # pads of an identity change nothing
    assert sorted(r["passes"] for r in result.images if r["image"] == result.images[0]["image"]) == [0, 0, 3]
    assert "| all | gendr-pix (RandPad x3) | 1 |" in format_table(result.rows)
    assert list(result.sheet[0].cells) == ["LQ", "bicubic", "gendr-pix w=1", "gendr-pix passes=3", "HQ"]


def test_cli_eval_passes_and_flips_rows(tmp_path, model_file, capsys):
    from gendr_core.cli import main

    out = tmp_path / "eval.json"
    rc = main(["eval", "--data", str(FIXTURES), "--model", str(model_file), "--max-images", "1", "--device", "cpu",
               "--no-niqe", "--passes", "0,2", "--flips", "2", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(m["name"], m["guidance"], m["passes"], m["ensemble"]) for m in data["methods"]] == [
        ("bicubic", None, 0, 1), ("gendr-pix", 1.0, 0, 2), ("gendr-pix", 1.0, 2, 2)]
    assert {(r["method"], r["passes"]) for r in data["rows"] if r["dataset"] == "all"} == {
        ("bicubic", 0), ("gendr-pix", 0), ("gendr-pix", 2)}
    assert "gendr-pix (RandPad x2) (x2 flips)" in capsys.readouterr().out


def test_cli_eval_old_ensemble_flag_warns_and_maps_to_flips(tmp_path, model_file, capsys):
    from gendr_core.cli import main

    args = ["eval", "--data", str(FIXTURES), "--model", str(model_file), "--max-images", "1", "--device", "cpu",
            "--no-niqe", "--json"]
    assert main([*args, str(tmp_path / "old.json"), "--ensemble", "2"]) == 0
    assert "--ensemble is deprecated; use --flips" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "new.json"), "--flips", "2"]) == 0
    old, new = (json.loads((tmp_path / f).read_text()) for f in ("old.json", "new.json"))
    assert old["rows"] == new["rows"] and old["methods"][1]["ensemble"] == 2
    assert main([*args, str(tmp_path / "both.json"), "--flips", "2", "--ensemble", "2"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["65", "-1", "two"])
def test_cli_eval_bad_passes_is_one_line_and_exit_2(model_file, capsys, bad):
    from gendr_core.cli import main

    rc = main(["eval", "--data", str(FIXTURES), "--model", str(model_file), "--device", "cpu", "--passes", bad])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--passes" in err and bad in err


def test_compared_models_scored_in_the_same_run(identity):
    bic_t, near_t = ResizeTeacher("bicubic", "bic-teacher"), ResizeTeacher("nearest", "nearest-teacher")
    compare = [teacher_method(bic_t, 4), teacher_method(near_t, 4), teacher_method(ResizeTeacher("grid", "grid"), 4)]
    result = run_evaluation([*compare, EvalMethod("gendr-pix", lambda lr, grid: grid, 1.0)], [FIXTURES], 4)
    by = {(r.dataset, r.method): r for r in result.rows}
    assert [r.method for r in result.rows if r.dataset == "all"] == ["bicubic", "bic-teacher", "nearest-teacher",
                                                                      "grid", "gendr-pix"]
    bic, same, near = by[("all", "bicubic")], by[("all", "bic-teacher")], by[("all", "nearest-teacher")]
    assert (same.psnr_y, same.ssim_y, same.niqe, same.grid) == (bic.psnr_y, bic.ssim_y, bic.niqe, bic.grid)
    assert near.psnr_y < bic.psnr_y
    assert bic.grid == pytest.approx(1.290, abs=0.01) and near.grid == pytest.approx(-0.777, abs=0.01)
    assert by[("all", "grid")].grid > bic.grid + 6  # the added 8-px pattern shows
    assert len(bic_t.calls) == 4 and bic_t.calls[0] == (1, 3, 16, 20)  # the teacher sees the LQ image
    # per-image records: the grid column is exactly the metric of the output; NIQE only where it fits
    recs = {(r["image"], r["method"]): r for r in result.images}
    assert len(result.images) == 4 * 5
    hr, lr = next((h, low) for n, h, low in degraded_pairs(FIXTURES, 4) if n == "kodim08_crop192.png")
    out = resize(lr, (192, 192), "bicubic")
    assert recs[("kodim08_crop192.png", "bicubic")]["grid"] == pytest.approx(grid_artifact_score(out), abs=1e-12)
    assert recs[("kodim08_crop192.png", "bicubic")]["niqe"] == pytest.approx(niqe(out), abs=1e-12)
    assert recs[("kodim23_crop96.png", "bicubic")]["niqe"] is None  # one 96-px block: no covariance
    assert bic.niqe == pytest.approx(niqe(out), abs=1e-12)  # the mean over the one image NIQE fits
    assert recs[("kodim08_crop192.png", "nearest-teacher")]["psnr_y"] == pytest.approx(
        float(psnr_y(lr.repeat_interleave(4, -2).repeat_interleave(4, -1), hr, crop_border=4)), abs=1e-9)
    table = format_table(result.rows)
    assert "| NIQE | grid dB |" in table and "DISTS" not in table


def test_dists_and_lpips_columns_when_given(identity):
    calls = []

    def fake(x, y):
        calls.append(x.shape)
        return (x - y).abs().mean(dim=(1, 2, 3))

    result = run_evaluation([EvalMethod("gendr-pix", lambda lr, grid: grid, 1.0)], [FIXTURES], 4,
                            with_niqe=False, dists=fake, lpips=fake, max_images=2)
    row = next(r for r in result.rows if r.dataset == "all" and r.method == "bicubic")
    assert row.dists is not None and row.dists == row.lpips and len(calls) == 2 * 2 * 2
    assert "| DISTS | LPIPS |" in format_table(result.rows)


def test_teacher_tiles_match_one_pass():
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 20, 28)
    for mode in ("nearest", "bicubic"):
        t = ResizeTeacher(mode, mode)
        whole = t.restore(lr, (80, 112))
        tiled = restore_lq_tiled(t.restore, lr, 4, tile=48, overlap=32)
        # bicubic reaches 2 LQ = 8 HQ px, within overlap // 4: the blend gives the one-pass result
        assert torch.allclose(tiled, whole, atol=1e-6), mode
        assert len(t.calls) > 2 and all(c[-1] <= 12 for c in t.calls[1:])  # 48 HQ px = 12 LQ px per tile
    assert restore_lq_tiled(ResizeTeacher("nearest", "n").restore, lr, 4, tile=0).shape == (1, 3, 80, 112)


def test_sheet_crop_box_picks_the_textured_window():
    hr = torch.full((1, 3, 64, 96), 0.5)
    g = torch.Generator().manual_seed(0)
    hr[..., 24:56, 48:80] = torch.rand(1, 3, 32, 32, generator=g)  # texture at (24, 48)
    assert sheet_crop_box(hr, 32, align=4) == (24, 48, 32)
    assert sheet_crop_box(hr, 32, align=16)[2] == 32 and sheet_crop_box(hr, 32, align=16)[:2] in ((16, 48), (32, 48))
    assert sheet_crop_box(hr, 500, align=4) == (0, 16, 64)  # larger than the image: the short side, texture inside
    assert sheet_crop_box(torch.zeros(1, 3, 40, 40), 16, align=4) == (0, 0, 16)  # flat: first window


def test_crop_sheet_size_and_cells(tmp_path):
    methods = [teacher_method(ResizeTeacher("nearest", "nearest x4"), 4),
               EvalMethod("gendr-pix", lambda lr, grid: 1.0 - grid, 1.0)]
    result = run_evaluation(methods, [FIXTURES], 4, with_niqe=False, sheet_images=2, sheet_crop=32)
    assert [r.image for r in result.sheet] == ["kodim03_crop80x64.png", "kodim08_crop192.png"]
    row = result.sheet[1]
    assert list(row.cells) == ["LQ", "bicubic", "nearest x4", "gendr-pix", "HQ"]
    hr, lr = next((h, low) for n, h, low in degraded_pairs(FIXTURES, 4) if n == row.image)
    top, left, c = row.box
    assert c == 32 and (top, left) == sheet_crop_box(hr, 32, 4)[:2] and top % 4 == 0 and left % 4 == 0
    sheet = compose_sheet(result.sheet)
    assert sheet.size == (5 * 32 + 6 * 4, 18 + 2 * 32 + 3 * 4)
    arr = np.asarray(sheet)

    def cell(r: int, k: int) -> np.ndarray:
        y, x = 18 + 4 + r * (32 + 4), 4 + k * (32 + 4)
        return arr[y : y + 32, x : x + 32]

    def u8(t: torch.Tensor) -> np.ndarray:
        return np.round(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    assert np.array_equal(cell(1, 4), u8(hr[0, :, top : top + 32, left : left + 32]))  # HQ
    lq = lr[0, :, top // 4 : top // 4 + 8, left // 4 : left // 4 + 8]
    assert np.array_equal(cell(1, 0), u8(lq.repeat_interleave(4, -2).repeat_interleave(4, -1)))  # LQ, nearest
    grid = resize(lr, tuple(hr.shape[-2:]), "bicubic").clamp(0, 1)
    assert np.array_equal(cell(1, 3), u8(1.0 - grid[0, :, top : top + 32, left : left + 32]))  # ours
    assert (arr[:18, :4] == 255).all() and (arr[18:22, :] == 255).all()  # margins stay white
    assert (arr[:18] < 128).any()  # labels are drawn
    with pytest.raises(Exception, match="no images"):
        compose_sheet([])
    with pytest.raises(Exception, match="columns"):
        compose_sheet([row, SheetRow("x", row.box, {"LQ": row.cells["LQ"]})])
    assert sheet_cells("a", hr, lr, {"m": grid}, 4, 32).box == row.box


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def model_file(tmp_path, tiny_pix):
    from gendr_core import save_model

    return save_model(tiny_pix, tmp_path / "tiny.safetensors")


class _ModelTeacher(nn.Module):
    """Our model file behind the Teacher interface (what load_teacher returns for it)."""

    def __init__(self, path, device):
        super().__init__()
        from gendr_core.checkpoint import load_model

        self.model, self.name, self.native_scale = load_model(path, device=device, dtype="fp32"), Path(path).stem, None

    def restore(self, lq, size):
        from gendr_core.pipeline import restore_grid

        return restore_grid(resize(lq, size, "bicubic"), self.model)


@pytest.fixture(params=["fake", "real"])
def teachers(request, monkeypatch):
    """gendr_core.teachers as shipped ("real", skipped when absent), or a stand-in loader ("fake") that
    loads our model files and raises a third-party error type for anything else."""
    if request.param == "real":
        pytest.importorskip("gendr_core.teachers", reason="gendr_core.teachers (load_teacher) is not available")
        return "real"
    import sys
    import types

    def load_teacher(path, device="cpu", dtype=torch.float32):
        if Path(path).read_bytes()[:8] == b"not a mo":
            raise RuntimeError("unsupported model architecture")
        return _ModelTeacher(path, device)

    module = types.ModuleType("gendr_core.teachers")
    module.load_teacher = load_teacher
    monkeypatch.setitem(sys.modules, "gendr_core.teachers", module)
    return "fake"


def test_cli_eval_compare_json_and_sheet(tmp_path, model_file, capsys, teachers):
    from gendr_core.cli import main

    other = tmp_path / "other-model.safetensors"
    other.write_bytes(model_file.read_bytes())
    out, sheet = tmp_path / "res" / "eval.json", tmp_path / "res" / "sheet.png"
    rc = main(["eval", "--data", str(FIXTURES), "--model", str(model_file), "--compare", str(other),
               "--max-images", "2", "--device", "cpu", "--json", str(out), "--sheet", str(sheet),
               "--sheet-images", "2", "--sheet-crop", "32"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["methods"]] == ["bicubic", "other-model", "gendr-pix"]
    assert {(r["dataset"], r["method"]) for r in data["rows"]} >= {("all", "other-model"), ("all", "gendr-pix")}
    assert len(data["images"]) == 2 * 3 and all(math.isfinite(r["psnr_y"]) for r in data["images"])
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.size == (5 * 32 + 6 * 4, 18 + 2 * 32 + 3 * 4)
    printed = capsys.readouterr().out
    assert "| all | other-model |" in printed and f"wrote {sheet}" in printed


@pytest.mark.parametrize("bad", ["--compare", "--vgg16", "--lpips"])
def test_cli_eval_missing_file_is_one_line_and_exit_2(tmp_path, model_file, capsys, bad):
    from gendr_core.cli import main

    extra = [bad, str(tmp_path / "missing.safetensors")]
    if bad == "--lpips":
        extra = ["--vgg16", str(model_file)] + extra
    rc = main(["eval", "--data", str(FIXTURES), "--model", str(model_file), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"{bad} file not found" in err and "missing" in err


def test_cli_eval_wrong_compare_file_is_one_line_and_exit_2(tmp_path, model_file, capsys, teachers):
    from gendr_core.cli import main

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    rc = main(["eval", "--data", str(FIXTURES), "--model", str(model_file), "--device", "cpu",
               "--compare", str(junk), "--no-niqe"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "junk.safetensors" in err


def test_cli_eval_dists_and_lpips_from_local_weights(tmp_path, model_file, capsys):
    from safetensors.torch import save_file

    from gendr_core.cli import main
    from gendr_core.vgg import VGG16Features

    vgg = VGG16Features()
    vgg.init_random(0)
    save_file(dict(vgg.state_dict()), tmp_path / "vgg16.safetensors")
    save_file({f"lin{k}.model.1.weight": torch.full((1, c, 1, 1), 0.1) for k, c in enumerate((64, 128, 256, 512, 512))},
              tmp_path / "lpips_vgg.safetensors")
    out = tmp_path / "e.json"
    rc = main(["eval", "--data", str(FIXTURES), "--model", str(model_file), "--device", "cpu", "--max-images", "2",
               "--no-niqe", "--vgg16", str(tmp_path / "vgg16.safetensors"),
               "--lpips", str(tmp_path / "lpips_vgg.safetensors"), "--json", str(out)])
    assert rc == 0
    assert "| DISTS | LPIPS |" in capsys.readouterr().out
    recs = json.loads(out.read_text())["images"]
    assert all(0 <= r["dists"] <= 1 and r["lpips"] >= 0 and r["niqe"] is None for r in recs) and len(recs) == 4
