"""The whole distillation recipe as one command: GenDR teacher (SD2.1-VAE16 base -> regression -> CiDA),
the DFOSD branch, GenDR-Pix Stage I -> Stage II -> FixMod, and the export.

    python -m trainers.recipe --config trainers/configs/recipe_tiny.json --out DIR

Stages, in order (each runs its own trainer script, in ``DIR/<stage>/``)::

    vae16_base  trainers.train_gendr  phase vae16_base   sd21_base + vae + dinov2      -> gendr.safetensors (base)
    regression  trainers.train_gendr  phase regression   init_from = vae16_base         -> gendr.safetensors
    cida        trainers.train_gendr  phase cida         init_from = regression, score_base = vae16_base
                                                                                         -> gendr.safetensors (G_mu)
    dfosd       trainers.train_dfosd                      sd21_base (its own 4-channel VAE) -> dfosd.safetensors
    stage1      trainers.train_stage1                     teacher = cida               -> stage2_init.safetensors
    stage2      trainers.train_stage2                     init_from = disc_backbone = stage1's hand-off,
                                                          teacher = cida online (x_r = decode(G_mu(z_l)))
                                                                                         -> gendr-pix.safetensors
    fixmod      trainers.train_fixmod                     restorer = stage2            -> model_fixmod.safetensors
    export      DIR/export/gendr-teacher.safetensors, dfosd.safetensors, gendr-pix.safetensors

Every stage writes ``DIR/<stage>/metrics.jsonl`` and checkpoints; a stage whose output file exists is
skipped, an unfinished one resumes from its newest checkpoint, so re-running the command continues
the recipe. The recipe config names one training config per stage (paths relative to the recipe
file; ``null`` skips dfosd or fixmod) and the weights the stages share; the recipe sets every path
that links two stages, so the stage configs need none.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from gendr_core.config import JSONConfig
from gendr_core.errors import ConfigError
from trainers.loop import read_config_json

logger = logging.getLogger("trainers.recipe")

STAGES = ("vae16_base", "regression", "cida", "dfosd", "stage1", "stage2", "fixmod")
EXPORTS = {"teacher": "gendr-teacher.safetensors", "dfosd": "dfosd.safetensors", "gendr_pix": "gendr-pix.safetensors"}


@dataclass(frozen=True)
class RecipeConfig(JSONConfig):
    vae16_base: str = "gendr_base_tiny_cpu.json"  # stage training configs, relative to the recipe file
    regression: str = "gendr_regression_tiny_cpu.json"
    cida: str = "gendr_cida_tiny_cpu.json"
    dfosd: str | None = "dfosd_tiny_cpu.json"  # None: no DFOSD branch
    stage1: str = "stage1_tiny_cpu.json"
    stage2: str = "stage2_tiny_cpu.json"
    fixmod: str | None = "fixmod_tiny_cpu.json"  # None: export the Stage II model without FixMod
    sd21_base: str | None = None  # SD2.1 single file or diffusers folder (vae16_base, dfosd)
    vae: str | None = None  # the 16-channel VAE diffusers folder (vae16_base)
    dinov2: str | None = None  # DINOv2 ViT-B/14 safetensors (vae16_base, cida)
    vgg16: str | None = None  # VGG16 weights for DISTS / EA-DISTS (regression, dfosd, stage2)
    train_dirs: tuple[str, ...] | None = None  # data.train_dirs of every stage (None: each stage config's)
    val_dirs: tuple[str, ...] | None = None  # data.val_dirs of stage2 / fixmod
    max_steps: int | None = None  # optim.max_steps of every stage (None: each stage config's)
    save_every: int | None = None  # checkpoint interval of every stage
    threads: int | None = None
    mixed_precision: str | None = None  # every stage ("bf16" at paper scale)

    def __post_init__(self) -> None:
        for name in ("vae16_base", "regression", "cida", "stage1", "stage2"):
            if not getattr(self, name):
                raise ConfigError(f"recipe: '{name}' must name that stage's training config")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"recipe: max_steps={self.max_steps} must be >= 1")


def _stage_paths(path: Path) -> dict[str, str]:
    """Stage config paths of a recipe file and its ``base`` chain, each made relative to the file that
    names it (so a recipe that only overrides a few fields can live anywhere)."""
    data = json.loads(path.read_text())
    under = _stage_paths(path.parent / data["base"]) if isinstance(data.get("base"), str) else {}
    return {**under, **{k: str(path.parent / data[k]) for k in STAGES if isinstance(data.get(k), str) and data[k]}}


def load_recipe(path: str | Path) -> RecipeConfig:
    """A recipe JSON (with its ``base`` chain) with every stage config path resolved."""
    path = Path(path)
    data = read_config_json(path)
    data.update(_stage_paths(path))
    return RecipeConfig.from_dict(data, where=str(path))


def stage_outputs(out: Path) -> dict[str, Path]:
    """The file that marks each stage as finished."""
    return {"vae16_base": out / "vae16_base" / "gendr.safetensors", "regression": out / "regression" / "gendr.safetensors",
            "cida": out / "cida" / "gendr.safetensors", "dfosd": out / "dfosd" / "dfosd.safetensors",
            "stage1": out / "stage1" / "stage2_init.safetensors", "stage2": out / "stage2" / "gendr-pix.safetensors",
            "fixmod": out / "fixmod" / "model_fixmod.safetensors"}


def stage_overrides(rc: RecipeConfig, stage: str, out: Path) -> dict[str, object]:
    """Dotted overrides that wire ``stage`` into the recipe (paths of the previous stages, shared weights)."""
    done = stage_outputs(out)
    ov: dict[str, object] = {"output_dir": str(out / stage)}
    if rc.train_dirs is not None:
        ov["data.train_dirs"] = list(rc.train_dirs)
    if rc.max_steps is not None:
        ov["optim.max_steps"] = rc.max_steps
    if rc.save_every is not None:
        ov["save_every"] = rc.save_every
    if rc.threads is not None:
        ov["threads"] = rc.threads
    if rc.mixed_precision is not None:
        ov["mixed_precision"] = rc.mixed_precision
    if stage == "vae16_base":
        ov.update({k: v for k, v in (("sd21_base", rc.sd21_base), ("vae", rc.vae), ("dinov2", rc.dinov2)) if v})
    elif stage == "regression":
        ov["init_from"] = str(done["vae16_base"])
        if rc.vgg16:
            ov["regression.vgg16"] = rc.vgg16
    elif stage == "cida":
        ov.update(init_from=str(done["regression"]), score_base=str(done["vae16_base"]))
        if rc.dinov2:
            ov["dinov2"] = rc.dinov2
    elif stage == "dfosd":
        if rc.sd21_base:
            ov["sd21_base"] = rc.sd21_base
        if rc.vgg16:
            ov["loss.vgg16"] = rc.vgg16
    elif stage == "stage1":
        ov["teacher"] = str(done["cida"])
    elif stage == "stage2":
        ov.update(init_from=str(done["stage1"]), disc_backbone=str(done["stage1"]), teacher=str(done["cida"]),
                  targets=None)
        if rc.vgg16:
            ov["loss.vgg16"] = rc.vgg16
    elif stage == "fixmod":
        ov.update(restorer=str(done["stage2"]), output_model=str(done["fixmod"]), targets=None)
    if stage in ("stage2", "fixmod") and rc.val_dirs is not None:
        ov["data.val_dirs"] = list(rc.val_dirs)
    return ov


def run_stage(rc: RecipeConfig, stage: str, out: Path) -> Path:
    """Train one stage (resuming) unless its output exists; returns the output file."""
    target = stage_outputs(out)[stage]
    if target.is_file():
        logger.info("recipe: %s done (%s)", stage, target)
        return target
    cfg_file = Path(getattr(rc, stage))
    ov = stage_overrides(rc, stage, out)
    logger.info("recipe: %s <- %s %s", stage, cfg_file, json.dumps(ov, sort_keys=True))
    if stage in ("vae16_base", "regression", "cida"):
        from trainers import train_gendr as mod

        mod.train(mod.load_config(cfg_file, {"phase": stage, **ov}))
    elif stage == "dfosd":
        from trainers import train_dfosd as mod

        mod.train(mod.load_config(cfg_file, ov))
    elif stage == "stage1":
        from trainers import train_stage1 as mod

        mod.train(mod.load_config(cfg_file, ov))
    elif stage == "stage2":
        from trainers import train_stage2 as mod
        from trainers.export import export

        run = mod.train(mod.load_config(cfg_file, ov))
        export(run, target)
    else:
        from trainers import train_fixmod as mod

        mod.train(mod.load_config(cfg_file, ov))
    if not target.is_file():
        raise ConfigError(f"recipe: stage {stage} finished without writing {target} (was it stopped early?)")
    return target


def run_recipe(config: str | Path, out: str | Path, stages: tuple[str, ...] = STAGES) -> dict[str, Path]:
    """Run (or continue) every stage in ``stages`` and export; returns {export kind: file}."""
    rc = load_recipe(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps({"config": str(config), **rc.to_dict()}, indent=2, sort_keys=True))
    wanted = [s for s in STAGES if s in stages and not (s == "dfosd" and rc.dfosd is None)
              and not (s == "fixmod" and rc.fixmod is None)]
    files = {s: run_stage(rc, s, out) for s in wanted}
    exports: dict[str, Path] = {}
    dest = out / "export"
    dest.mkdir(exist_ok=True)
    pix = files.get("fixmod") or files.get("stage2")
    for kind, src in (("teacher", files.get("cida")), ("dfosd", files.get("dfosd")), ("gendr_pix", pix)):
        if src is not None:
            exports[kind] = Path(shutil.copyfile(src, dest / EXPORTS[kind]))
    logger.info("recipe: exported %s", {k: str(v) for k, v in exports.items()})
    return exports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="recipe JSON (trainers/configs/recipe_tiny.json)")
    ap.add_argument("--out", required=True, help="recipe folder: one subfolder per stage, export/ at the end")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="run only these stages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_recipe(args.config, args.out, tuple(args.stages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
