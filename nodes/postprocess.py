"""GenDRPixRandPad (Eq. 6 self-ensemble) and GenDRPixFixMod (color fix / learned FixMod)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.latest import io
from torch import Tensor

from ..gendr_core.models import OneStepRestorer
from ..gendr_core.ops.guidance import ENSEMBLE_SIZES
from ..gendr_core.pipeline import FIXMOD_MODES, check_upscale_options, post_fix, resolve_post_fix, upscale
from .memory import model_on_device, work_bytes
from .messages import node_errors
from .progress import comfy_progress
from .tensors import bchw_to_bhwc, bhwc_to_bchw, match_reference, split_alpha, upscale_mask
from .types import GenDRPixModel
from .upscale import CATEGORY, fixmod_input, tile_arg, tiling_inputs

logger = logging.getLogger(__name__)
FLIP_OPTIONS = tuple(str(n) for n in ENSEMBLE_SIZES)


class GenDRPixRandPad(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GenDRPixRandPad",
            display_name="GenDR-Pix RandPad Ensemble",
            category=CATEGORY,
            description="Restores like the sampler (guidance 1) but averages n passes, each with a random pad offset "
                        "in 0..7 of the pixel-shuffle grid (GenDR-Pix Eq. 6): fewer grid artifacts but softer "
                        "detail; n times the compute. Seeded: the same seed gives the same result.",
            inputs=[
                io.Image.Input("image", tooltip="Low-quality input image(s), as for the PadCFG sampler."),
                GenDRPixModel.Input("model", tooltip="Model from 'GenDR-Pix Model Loader'."),
                io.Float.Input("scale", default=4.0, min=0.25, max=16.0, step=0.05,
                               tooltip="Output size / input size. Use 1.0 to re-run on an already upscaled image."),
                io.Int.Input("passes", default=4, min=1, max=64,
                             tooltip="Number of random pad offsets averaged (n in Eq. 6). 1 = one random offset."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the random pad offsets."),
                *tiling_inputs(),
                # last widget, so workflows saved before it existed keep their values (it gets its default)
                io.Combo.Input("flips", options=list(FLIP_OPTIONS), default="1",
                               tooltip="Geometric self-ensemble: 1 = off, 2 = + horizontal flip, 4 = + vertical "
                                       "flips, 8 = + transposes. Multiplies the time; memory stays the same."),
                fixmod_input(),  # after flips, for the same reason
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional MASK, upscaled bicubically to the output size (as in the sampler)."),
            ],
            outputs=[
                io.Image.Output("restored", display_name="IMAGE", tooltip="Ensemble-restored image(s)."),
                io.Mask.Output("restored_mask", display_name="MASK", tooltip="The mask at the output size."),
            ],
        )

    @classmethod
    def execute(cls, image: Tensor, model: OneStepRestorer, scale: float, passes: int, seed: int, tiling: str,
                tile_size: int, tile_overlap: int, flips: str = "1", fixmod: str = "auto",
                mask: Tensor | None = None) -> io.NodeOutput:
        with node_errors("GenDR-Pix RandPad Ensemble"):
            rgb, alpha_mask = split_alpha(image)
            x = bhwc_to_bchw(rgb)  # (B,H,W,3) -> (B,3,H,W)
            opts = dict(passes=passes, flips=int(flips), seed=seed, tiling=tiling, tile_size=tile_size,
                        tile_overlap=tile_overlap)
            check_upscale_options(model, **opts)  # every value, before any work
            tile = tile_arg(tiling, tile_size)
            with model_on_device(model, work_bytes(model, x.shape[-2:], x.shape[0], scale, 1, tile)):
                y = upscale(x, model, scale, 1.0, fixmod=fixmod, progress=comfy_progress(), output_copies=1,
                            interrupt=mm.throw_exception_if_processing_interrupted, **opts)
        out = bchw_to_bhwc(y).to(mm.intermediate_device())  # (B,3,H,W) -> (B,H,W,3)
        out_mask = upscale_mask(mask if mask is not None else alpha_mask, out.shape[1:3], out.shape[0])
        return io.NodeOutput(out, out_mask.to(out.device))


def fixmod(content: Tensor, reference: Tensor, strength: float, model: OneStepRestorer | None = None,
           mode: str = "auto") -> Tensor:
    """``gendr_core.pipeline.post_fix`` (GenDR-Pix Sec. A.1) with the learned network, if it runs, moved
    to the GPU for the call. ``mode`` auto: the model's learned FixMod when its file has one, else the
    wavelet color fix high(content) + low(reference); ``strength`` blends from content (0) to fixed (1)."""
    strength = None if mode == "off" else strength  # the strength widget has no meaning for 'off'
    kind, _ = resolve_post_fix(model, mode, strength)
    if mode == "auto" and kind == "wavelet" and model is not None:
        logger.info("GenDR-Pix FixMod: the %s model file has no learned FixMod; using the wavelet color fix",
                    model.kind)
    if kind != "learned":
        return post_fix(content, reference, model, mode, strength)
    net = model.fixmod  # type: ignore[union-attr]  # "learned" implies a model with a FixMod
    with model_on_device(net, net.estimate_bytes(*content.shape[-2:], content.shape[0])):
        return post_fix(content, reference, model, mode, strength)


class GenDRPixFixMod(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GenDRPixFixMod",
            display_name="GenDR-Pix FixMod (Color Fix)",
            category=CATEGORY,
            description="FixMod (GenDR-Pix A.1): corrects color shifts and artifacts of a restored image against "
                        "its input. The wavelet color fix keeps the restored high frequencies and takes the low "
                        "frequencies (colors, tones) from the input; the learned FixMod of a model file first "
                        "adds its small network's correction, then applies the same wavelet fix.",
            inputs=[
                io.Image.Input("image", tooltip="Restored image(s) to correct (output of the sampler or RandPad)."),
                io.Image.Input("reference", tooltip="The original low-quality input; resized bicubically to the "
                                                    "restored size. One reference or one per batch image."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = unchanged, 1 = full correction; values in between blend."),
                # last widget, so workflows saved before it existed keep their values (it gets its default)
                io.Combo.Input("mode", options=list(FIXMOD_MODES), default="auto",
                               tooltip="auto: the connected model's learned FixMod if its file has one, else the "
                                       "wavelet color fix. learned: the learned FixMod (error without one). "
                                       "wavelet: the wavelet color fix alone. off: pass the image through."),
                GenDRPixModel.Input("model", optional=True,
                                    tooltip="Optional model whose file holds a learned FixMod (needed for 'learned'; "
                                            "'auto' without it, or without a network in the file, runs the "
                                            "wavelet color fix)."),
            ],
            outputs=[io.Image.Output("fixed", display_name="IMAGE", tooltip="Color-corrected image(s).")],
        )

    @classmethod
    def execute(cls, image: Tensor, reference: Tensor, strength: float, mode: str = "auto",
                model: OneStepRestorer | None = None) -> io.NodeOutput:
        with node_errors("GenDR-Pix FixMod"):
            y = bhwc_to_bchw(split_alpha(image)[0])  # (B,H,W,3) -> (B,3,H,W)
            ref = match_reference(bhwc_to_bchw(split_alpha(reference)[0]), y)
            out = fixmod(y, ref, strength, model, mode).clamp(0.0, 1.0)
        return io.NodeOutput(bchw_to_bhwc(out).to(mm.intermediate_device()))
