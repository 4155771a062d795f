"""GenDR-Pix Stage II trainer (trainers/train_stage2.py): recipes, gradients, RandPad, resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from gendr_core import load_model  # noqa: E402
from gendr_core.checkpoint import read_header, save_model  # noqa: E402
from gendr_core.config import tiny_gendr_pix_config  # noqa: E402
from gendr_core.errors import ConfigError  # noqa: E402
from gendr_core.losses import feature_matching_loss, generator_adv_loss, l1_loss, masked_fourier_loss  # noqa: E402
from gendr_core.models import GenDRPix  # noqa: E402
from gendr_core.models.discriminators import DiscriminatorHeads, FrozenGeneratorFeatures  # noqa: E402
from trainers import train_stage2 as s2  # noqa: E402
from trainers.export import export  # noqa: E402
from trainers.loop import latest_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainers" / "configs"
TINY = CONFIGS / "stage2_tiny_cpu.json"
FIXTURES = REPO / "tests" / "fixtures"


def _tiny_model(seed: int) -> GenDRPix:
    torch.manual_seed(seed)
    m = GenDRPix(tiny_gendr_pix_config())
    with torch.no_grad():
        m.prompt_pos.normal_(0, 0.5)
        m.prompt_neg.normal_(0, 0.5)
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stage2_models")
    return {"student": save_model(_tiny_model(0), d / "student.safetensors"),
            "teacher": save_model(_tiny_model(1), d / "teacher.safetensors")}


def _cfg(tmp_path: Path, files, name: str = "run", **over) -> s2.Stage2Config:
    base = {"init_from": str(files["student"]), "output_dir": str(tmp_path / name),
            "data.train_dirs": [str(FIXTURES)], "data.val_dirs": [str(FIXTURES)], "val_every": 0}
    base.update(over)
    return s2.load_config(TINY, base)


@pytest.fixture
def teacher_loader(monkeypatch):
    """gendr_core.teachers.load_teacher, recording every teacher it builds (a stand-in with the same
    interface while that module is not there)."""
    built = []
    try:
        from gendr_core import teachers as mod
    except ImportError:
        from gendr_core.ops.resize import resize
        from gendr_core.pipeline import restore_grid

        class _Teacher:
            def __init__(self, path, device, dtype):
                self.model = load_model(path, device=device, dtype=dtype)

            def restore(self, lq, size):
                return restore_grid(resize(lq, tuple(size), "bicubic"), self.model, tile="off").clamp(0, 1)

        mod = types.ModuleType("gendr_core.teachers")
        mod.load_teacher = lambda path, device, dtype: _Teacher(path, device, dtype)
        monkeypatch.setitem(sys.modules, "gendr_core.teachers", mod)
    original = mod.load_teacher

    def recording(path, device, dtype):
        t = original(path, device, dtype)
        built.append(t)
        return t

    monkeypatch.setattr(mod, "load_teacher", recording)
    return built


def _teacher_params(teacher) -> list[torch.nn.Parameter]:
    mods = [m for m in (teacher, getattr(teacher, "model", None)) if isinstance(m, torch.nn.Module)]
    return [p for m in mods for p in m.parameters()]


# ----------------------------------------------------------------------------- configs


def test_recipe_configs_parse_and_resolve():
    tiny = s2.load_config(TINY)
    assert tiny.model == tiny_gendr_pix_config() and tiny.optim.max_steps == 5
    assert (tiny.disc.depths, tiny.disc.head_channels, tiny.target_source) == ((1, 2, 3), 8, "hq")

    detail = s2.load_config(CONFIGS / "gendr_pix_s_detail.json")
    shipped = "gendr_core/assets/gendr-pix-s.safetensors"
    assert detail.init_from == detail.disc_backbone == shipped
    assert (detail.targets, detail.target_source) == ("runs/targets/x4plus_x4_c192", "shards")
    assert (detail.data.crop_size, detail.data.batch_size, detail.data.scales) == (192, 4, (4,))
    o = detail.optim
    assert (o.lr, o.disc_lr, o.schedule, o.warmup_steps, o.ema_decay) == (1e-4, 1e-4, "constant", 50, 0.999)
    assert (detail.save_every, detail.val_every, detail.loss.adv_start_step) == (100, 200, 0)
    lw = detail.loss
    assert (lw.l1, lw.adversarial, lw.perceptual, lw.mfs, lw.randpad_generator) == (1.0, 0.05, 1.0, 0.1, True)
    resolved = s2.resolve_config(detail)
    assert resolved.model == read_header(REPO / shipped)[1]
    assert resolved.model.shuffle_factor == 4 and 192 % resolved.model.pad_multiple == 0
    assert resolved.loss.perceptual_kind == "feature_matching"  # no VGG16 given
    with_vgg = s2.resolve_config(dataclasses.replace(detail, loss=dataclasses.replace(detail.loss, vgg16="v.pt")))
    assert with_vgg.loss.perceptual_kind == "dists"

    # MFS ablation: two short runs that differ only in the MFS weight (and their output folders)
    mfs = s2.load_config(CONFIGS / "gendr_pix_s_detail_ablation_mfs.json")
    nomfs = s2.load_config(CONFIGS / "gendr_pix_s_detail_nomfs.json")
    assert (mfs.optim.max_steps, mfs.optim.ema_decay, mfs.loss.mfs, nomfs.loss.mfs) == (300, 0.99, 0.1, 0.0)
    assert len({mfs.output_dir, nomfs.output_dir, detail.output_dir}) == 3
    assert dataclasses.replace(nomfs, loss=dataclasses.replace(nomfs.loss, mfs=0.1), output_dir=mfs.output_dir) == mfs
    assert dataclasses.replace(mfs, optim=detail.optim, val_every=200, output_dir=detail.output_dir) == detail

    # a later session whose runs/ is gone continues from the shipped export (fresh heads and Adam)
    cont = s2.load_config(CONFIGS / "gendr_pix_s_detail_continue.json")
    assert (cont.init_from, cont.disc_backbone) == ("gendr_core/assets/gendr-pix-s-detail.safetensors", shipped)
    assert dataclasses.replace(cont, init_from=shipped, output_dir=detail.output_dir) == detail


def test_config_errors_name_the_key(tmp_path, files):
    with pytest.raises(ConfigError, match="init_from is required"):
        s2.Stage2Config()
    with pytest.raises(ConfigError, match="either 'teacher'.*or 'targets'"):
        s2.Stage2Config(init_from="a", teacher="t", targets="d")
    with pytest.raises(ConfigError, match="perceptual_kind='dists' needs loss.vgg16"):
        s2.Stage2LossConfig(perceptual_kind="dists")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base": str(TINY), "disc": {"width": 3}}))
    with pytest.raises(ConfigError, match=r"disc: unknown key\(s\) \['width'\]"):
        s2.load_config(bad)
    other = save_model(GenDRPix(tiny_gendr_pix_config(shuffle_factor=4)), tmp_path / "x4.safetensors")
    with pytest.raises(ConfigError, match="differs from the training config's 'model'"):
        s2.resolve_config(_cfg(tmp_path, {"student": other}))


# ----------------------------------------------------------------------------- one step


def _step_parts(seed: int = 0):
    student = _tiny_model(0).train()
    student.prompt_pos.requires_grad_(True)
    features = FrozenGeneratorFeatures(copy.deepcopy(_tiny_model(0)))
    heads = DiscriminatorHeads(features.channels, width=8)
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(2, 3, 48, 48, generator=g)
    x_r = torch.rand(2, 3, 48, 48, generator=g)
    x_g = student(torch.rand(2, 3, 48, 48, generator=g), student.prompt_pos.expand(2, -1, -1))
    return student, features, heads, hr, x_r, x_g


def test_d_step_then_g_step_gradients_land_exactly_where_alg1_says():
    student, features, heads, hr, x_r, x_g = _step_parts()
    backbone = list(features.parameters())
    # D step: heads only (sg on the features and on x_g)
    d_loss, stats = s2.discriminator_loss(features, heads, hr, x_g, s2.step_generator(0, 0))
    d_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in backbone)
    assert set(stats) == {"d_real", "d_fake"}
    heads.zero_grad(set_to_none=True)
    # G step: the generator only; heads held fixed (h_sg[phi]) and restored afterwards
    losses = s2.generator_losses(s2.Stage2LossConfig(), x_g, x_r, features, heads, s2.step_generator(0, 0))
    assert set(losses) == {"l1", "mfs", "perceptual", "adv_g"}
    sum(losses.values()).backward()
    assert student.unet.conv_in.weight.grad.abs().sum() > 0 and student.prompt_pos.grad.abs().sum() > 0
    assert student.prompt_neg.grad is None  # PadCFG negative embedding stays frozen
    assert all(p.grad is None for p in heads.parameters())
    assert all(p.grad is None for p in backbone)
    assert all(p.requires_grad for p in heads.parameters()) and heads.training


def test_generator_terms_are_the_weighted_losses():
    _, features, heads, _, x_r, x_g = _step_parts()
    cfg = s2.Stage2LossConfig(l1=2.0, adversarial=0.5, perceptual=3.0, mfs=0.25, randpad_generator=False)
    with torch.no_grad():
        got = s2.generator_losses(cfg, x_g, x_r, features, heads, s2.step_generator(0, 0))
        assert got["l1"].item() == pytest.approx(2.0 * l1_loss(x_g, x_r).item(), rel=1e-6)
        assert got["mfs"].item() == pytest.approx(0.25 * masked_fourier_loss(x_g, x_r).item(), rel=1e-6)
        fm = feature_matching_loss(features(x_g), features(x_r))
        assert got["perceptual"].item() == pytest.approx(3.0 * fm.item(), rel=1e-6)
        heads.eval()
        adv = generator_adv_loss(heads(features(x_g)))  # no RandPad with randpad_generator=False
        assert got["adv_g"].item() == pytest.approx(0.5 * adv.item(), rel=1e-6)
        none = s2.generator_losses(dataclasses.replace(cfg, perceptual=0.0), x_g, x_r, features, heads,
                                   s2.step_generator(0, 0), use_adv=False)
    assert set(none) == {"l1", "mfs"}


def test_mfs_reference_and_mask_options():
    _, features, heads, hr, x_r, x_g = _step_parts()
    cfg = s2.Stage2LossConfig(l1=0.0, adversarial=0.0, perceptual=0.0, mfs=3.0, mfs_mask="points", mfs_reference="hq")
    with torch.no_grad():
        got = s2.generator_losses(cfg, x_g, x_r, features, heads, s2.step_generator(0, 0), use_adv=False, x_h=hr)
        assert set(got) == {"mfs"}
        assert got["mfs"].item() == pytest.approx(3.0 * masked_fourier_loss(x_g, hr, mask="points").item(), rel=1e-6)
        assert abs(got["mfs"].item() - 3.0 * masked_fourier_loss(x_g, x_r, mask="points").item()) > 1e-4
        target = s2.generator_losses(dataclasses.replace(cfg, mfs_reference="target"), x_g, x_r, features, heads,
                                     s2.step_generator(0, 0), use_adv=False, x_h=hr)
        assert target["mfs"].item() == pytest.approx(3.0 * masked_fourier_loss(x_g, x_r, mask="points").item(),
                                                     rel=1e-6)
        with pytest.raises(ConfigError, match="x_h"):
            s2.generator_losses(cfg, x_g, x_r, features, heads, s2.step_generator(0, 0), use_adv=False)
    with pytest.raises(ConfigError, match="mfs_reference"):
        s2.Stage2LossConfig(mfs_reference="teacher")
    with pytest.raises(ConfigError, match="mfs_mask"):
        s2.Stage2LossConfig(mfs_mask="stripes")


def test_feature_matching_with_randpad_pads_both_images_alike():
    """loss.perceptual_randpad: L_P = FM(d(pad_p(x_g)), d(pad_p(x_r))) with the same Eq. 3 offsets p
    for both images of a sample (drawn from the step generator), so identical images give exactly 0."""
    from gendr_core.ops.padding import pad_fixed

    _, features, heads, _, x_r, x_g = _step_parts()
    cfg = s2.Stage2LossConfig(l1=0.0, mfs=0.0, adversarial=0.0, perceptual=1.0, perceptual_randpad=True)
    with torch.no_grad():
        got = s2.generator_losses(cfg, x_g, x_r, features, heads, s2.step_generator(5, 2), use_adv=False)
        pads = s2.rand_pad_per_sample(x_g, s2.step_generator(5, 2))[1]
        pad = lambda x: torch.cat([pad_fixed(x[i : i + 1], p, "reflect") for i, p in enumerate(pads)])  # noqa: E731
        want = feature_matching_loss(features(pad(x_g)), features(pad(x_r)))
        assert got["perceptual"].item() == pytest.approx(want.item(), rel=1e-6)
        fixed = s2.generator_losses(dataclasses.replace(cfg, perceptual_randpad=False), x_g, x_r, features, heads,
                                    s2.step_generator(5, 2), use_adv=False)
        assert abs(fixed["perceptual"].item() - got["perceptual"].item()) > 1e-6  # a different phase, a different value
        same = s2.generator_losses(cfg, x_r, x_r.clone(), features, heads, s2.step_generator(5, 2), use_adv=False)
        assert same["perceptual"].item() == 0.0


def test_dists_term_when_vgg16_is_given(tmp_path):
    from safetensors.torch import save_file

    from gendr_core.losses import DISTS
    from gendr_core.vgg import VGG16Features

    vgg = VGG16Features()
    vgg.init_random(7)
    save_file(vgg.state_dict(), str(tmp_path / "vgg16.safetensors"))
    dists = DISTS(tmp_path / "vgg16.safetensors")
    _, features, heads, _, x_r, x_g = _step_parts()
    with torch.no_grad():
        got = s2.generator_losses(s2.Stage2LossConfig(vgg16="x", perceptual_kind="dists"), x_g, x_r, features,
                                  heads, s2.step_generator(0, 0), perceptual=dists, use_adv=False)
        assert got["perceptual"].item() == pytest.approx(dists(x_g, x_r).item(), rel=1e-6)


def test_randpad_on_every_discriminator_input(monkeypatch):
    """Eq. 3 on D inputs in both steps: offsets in [0, 8) over many seeded draws, size H+8 x W+8."""
    pads, shapes = [], []
    real_rand_pad = s2.rand_pad_per_sample

    def spy(x, gen):
        y, p = real_rand_pad(x, gen)
        pads.extend(p)
        return y, p

    monkeypatch.setattr(s2, "rand_pad_per_sample", spy)
    _, features, heads, hr, x_r, x_g = _step_parts()
    features.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    cfg = s2.Stage2LossConfig(perceptual=0.0, l1=0.0, mfs=0.0)
    with torch.no_grad():
        for step in range(40):
            s2.discriminator_loss(features, heads, hr, x_g, s2.step_generator(3, step))
            s2.generator_losses(cfg, x_g, x_r, features, heads, s2.step_generator(3, step))
    assert len(pads) == 40 * 3 * 2  # real + fake (D step), fake (G step); per sample
    assert all(0 <= p.left < 8 and 0 <= p.top < 8 and p.left + p.right == 8 == p.top + p.bottom for p in pads)
    assert {p.left for p in pads} == {p.top for p in pads} == set(range(8))
    assert set(shapes) == {(4, 3, 56, 56), (2, 3, 56, 56)}  # D: real+fake in one pass; G: fake
    # the same (seed, step) draws the same pads: resumable
    a = real_rand_pad(hr, s2.step_generator(3, 7))[1]
    assert a == real_rand_pad(hr, s2.step_generator(3, 7))[1] != real_rand_pad(hr, s2.step_generator(3, 8))[1]


# ----------------------------------------------------------------------------- end to end


def _ckpt_tensors(out: Path) -> dict[str, torch.Tensor]:
    ck = latest_checkpoint(out)
    t = {}
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        t.update({f"{name}:{k}": v for k, v in load_file(str(ck / name)).items()})
    return t


def test_resume_after_3_steps_equals_an_uninterrupted_5_step_run(tmp_path, files):
    full = s2.train(_cfg(tmp_path, files, "full"), resume=False)
    part_cfg = _cfg(tmp_path, files, "part")
    s2.train(part_cfg, resume=False, stop_after=3)
    assert latest_checkpoint(tmp_path / "part").name == "step_0000003"
    s2.train(part_cfg, resume=True)
    a, b = _ckpt_tensors(full), _ckpt_tensors(tmp_path / "part")
    assert latest_checkpoint(full).name == "step_0000005" and set(a) == set(b)
    assert any(k.startswith("model_1.safetensors:heads") for k in a)  # D heads only, no frozen backbone
    assert not any(k.startswith("model_1.safetensors:") and "down_blocks" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = load_file(str(files["student"]))
    assert not torch.equal(a["model.safetensors:unet.conv_in.weight"], init["unet.conv_in.weight"])  # it trained
    assert torch.equal(a["model.safetensors:prompt_neg"], init["prompt_neg"])  # PadCFG negative stays frozen
    recs = [json.loads(x) for x in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    runs = [r for r in recs if r["kind"] == "run"]
    assert len(runs) == 2 and runs[0]["perceptual"] == "feature_matching" and runs[0]["target_source"] == "hq"
    assert all("loss_adv_g" in r and "loss_adv_d" in r for r in recs if r["kind"] == "train")
    saved = json.loads((tmp_path / "part" / "config.json").read_text())
    assert saved["loss"]["perceptual_kind"] == "feature_matching" and saved["disc"]["depths"] == [1, 2, 3]


def test_online_teacher_targets_validation_and_export(tmp_path, files, teacher_loader):
    cfg = _cfg(tmp_path, files, teacher=str(files["teacher"]), val_every=3, **{"optim.max_steps": 3})
    out = s2.train(cfg, resume=False)
    assert len(teacher_loader) == 1  # the online teacher also gives the validation targets
    params = _teacher_params(teacher_loader[0])
    assert params and all(not p.requires_grad and p.grad is None for p in params)
    recs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in recs if r["kind"] == "val"]
    assert [r["step"] for r in val] == [3]
    assert {"psnr_y", "psnr_y_bicubic", "psnr_y_teacher", "psnr_y_to_teacher", "l1_to_teacher"} <= set(val[0])
    assert 0 < val[0]["l1_to_teacher"] < 1 and (out / "curves.png").is_file()
    assert recs[0]["target_source"] == "teacher"
    model = load_model(export(out, tmp_path / "stage2.safetensors"), device="cpu")
    assert model.config == tiny_gendr_pix_config() and model.metadata["gendr_pix.train_step"] == "3"
    train_cfg = json.loads(model.metadata["gendr_pix.train_config"])
    assert train_cfg["loss"]["perceptual_kind"] == "feature_matching" and train_cfg["teacher"] == str(files["teacher"])


def test_precomputed_teacher_shards_train_and_resume(tmp_path, files):
    """x_r from TeacherPairShards (written by make_teacher_targets with the tiny teacher): 3 steps +
    resume to 5 == 5 straight; the L1 term is against the stored teacher output, not the HR crop."""
    make_targets = pytest.importorskip("trainers.make_teacher_targets").make_targets

    shards = tmp_path / "shards"
    make_targets(str(files["teacher"]), shards, [str(FIXTURES)], count=6, crop=48, scale=4, shard_size=4, batch=3)
    over = {"targets": str(shards), "loss.adversarial": 0.0, "loss.perceptual": 0.0, "loss.mfs": 0.0}
    full = s2.train(_cfg(tmp_path, files, "full", **over), resume=False)
    part_cfg = _cfg(tmp_path, files, "part", **over)
    s2.train(part_cfg, resume=False, stop_after=3)
    s2.train(part_cfg, resume=True)
    a, b = _ckpt_tensors(full), _ckpt_tensors(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    assert recs[0]["target_source"] == "shards"
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert all(abs(r["loss_l1"] - r["l1_hr"]) > 1e-4 for r in train)  # the target is xr, not hr
    with pytest.raises(ConfigError, match=r"data.scales=\[2\] but the shards .* are x4"):
        s2.train(_cfg(tmp_path, files, "bad", **over, **{"data.scales": [2]}), resume=False)
