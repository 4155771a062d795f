"""GenDRPixPadCFGSampler: the main node, one ``gendr_core.upscale`` call (PadCFG, Eq. 7)."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io
from torch import Tensor

from ..gendr_core.models import OneStepRestorer
from ..gendr_core.pipeline import FIXMOD_MODES, check_upscale_options, upscale
from .memory import model_on_device, work_bytes
from .messages import node_errors
from .progress import comfy_progress
from .tensors import bchw_to_bhwc, bhwc_to_bchw, conditioning_embedding, parse_pad, split_alpha, upscale_mask
from .types import GenDRPixModel

CATEGORY = "image/upscaling/GenDR-Pix"
TILING = ["auto", "off", "fixed"]


def tiling_inputs() -> list[io.Input]:
    """The tiling widgets shared by the sampler and RandPad."""
    return [
        io.Combo.Input("tiling", options=TILING, default="auto",
                       tooltip="auto: the whole image when the memory estimate fits (on a CPU: 768-px tiles above 1536 px, "
                               "which run faster there), else the largest tile that "
                               "does (halved again on out-of-memory). off: never tile. fixed: tiles of tile_size."),
        io.Int.Input("tile_size", default=512, min=64, max=8192, step=64,
                     tooltip="Tile side in output pixels when tiling is 'fixed', rounded down to the model's pad "
                             "multiple (its unshuffle factor x the UNet's downsampling: 32 for gendr-pix-s, 64 for "
                             "an x8 GenDR-Pix; 'gendr-pix inspect' prints it)."),
        io.Int.Input("tile_overlap", default=64, min=0, max=1024, step=8,
                     tooltip="Overlap between tiles in output pixels, blended with a smooth ramp. Rounded up to "
                             "the pad multiple, it must stay smaller than the tile. Used by 'auto' and 'fixed'."),
    ]


def fixmod_input() -> io.Input:
    """The post-fix widget of the sampler and RandPad; added last so older workflows keep their values."""
    return io.Combo.Input(
        "fixmod", options=list(FIXMOD_MODES), default="auto",
        tooltip="Post-fix of the output (GenDR-Pix A.1), as 'gendr-pix upscale --fixmod'. auto: the model "
                "file's learned FixMod if it has one, else none. learned: that network + its wavelet color "
                "fix (error if the file has none). wavelet: the wavelet color fix alone. off: none. Set 'off' "
                "when a FixMod node follows, so the fix does not run twice.")


def tile_arg(tiling: str, tile_size: int) -> int | str:
    return tile_size if tiling == "fixed" else tiling


class GenDRPixPadCFGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GenDRPixPadCFGSampler",
            display_name="GenDR-Pix PadCFG Sampler",
            category=CATEGORY,
            description="Restores and upscales images in one model step. Guidance > 1 runs PadCFG (GenDR-Pix Eq. 7): "
                        "two passes with different pads, extrapolated for more detail. Images of a batch run together.",
            inputs=[
                io.Image.Input("image", tooltip="Low-quality input image(s); an RGBA image's alpha comes out as the MASK."),
                GenDRPixModel.Input("model", tooltip="Model from 'GenDR-Pix Model Loader'."),
                io.Float.Input("scale", default=4.0, min=0.25, max=16.0, step=0.05,
                               tooltip="Output size / input size (any factor; the model restores on the bicubic-"
                                       "resized grid). 4 turns 960x540 into 3840x2160."),
                io.Float.Input("guidance", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="PadCFG scale w: w*G(pos pad, c+) + (1-w)*G(neg pad, c-). 1.0 = one pass, "
                                       "highest fidelity and fastest; 1.2-1.8 adds detail and sharpness at some "
                                       "fidelity cost and twice the compute."),
                io.String.Input("positive_pad", default="auto",
                                tooltip="Pad of the positive branch, 'left,right,top,bottom' in pixels, or 'auto' "
                                        "for the model's own (4,4,4,4 for GenDR-Pix)."),
                io.String.Input("negative_pad", default="auto",
                                tooltip="Pad of the negative branch, 'left,right,top,bottom', or 'auto' for the "
                                        "model's own (3,5,3,5 for GenDR-Pix: one pixel off the positive pad's "
                                        "shuffle phase)."),
                io.Combo.Input("branch_mode", options=["batched", "sequential"], default="batched",
                               tooltip="With guidance != 1: 'batched' runs both branches in one forward pass "
                                       "(faster), 'sequential' one after the other (half the activation memory)."),
                *tiling_inputs(),
                fixmod_input(),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional text conditioning replacing the model's built-in positive "
                                              "embedding. Its width must match the model's (1024 = SD2.1's "
                                              "CLIP-H for an SD2.1-size model; the shipped gendr-pix-s models "
                                              "are 64 wide and have no text encoder: leave it empty for them)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Optional text conditioning replacing the model's built-in negative "
                                              "embedding (used only when guidance != 1)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional MASK (e.g. LoadImage's alpha mask), upscaled bicubically to the "
                                      "output size and returned as the MASK output."),
            ],
            outputs=[
                io.Image.Output("restored", display_name="IMAGE", tooltip="Restored image(s), scale x the input."),
                io.Mask.Output("restored_mask", display_name="MASK",
                               tooltip="The input mask (or the RGBA alpha as 1 - alpha) at the output size; zeros "
                                       "when there is none."),
            ],
        )

    @classmethod
    def validate_inputs(cls, positive_pad: str, negative_pad: str) -> bool | str:
        # Only the pads: ComfyUI skips its own min/max/options checks for inputs named here.
        try:
            parse_pad(positive_pad, "positive_pad"), parse_pad(negative_pad, "negative_pad")
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, image: Tensor, model: OneStepRestorer, scale: float, guidance: float, positive_pad: str,
                negative_pad: str, branch_mode: str, tiling: str, tile_size: int, tile_overlap: int,
                fixmod: str = "auto", positive: list | None = None, negative: list | None = None,
                mask: Tensor | None = None) -> io.NodeOutput:
        with node_errors("GenDR-Pix PadCFG Sampler"):
            rgb, alpha_mask = split_alpha(image)
            x = bhwc_to_bchw(rgb)  # (B,H,W,3) -> (B,3,H,W)
            cond = {"positive": conditioning_embedding(positive, "positive", x.shape[0]),
                    "negative": conditioning_embedding(negative, "negative", x.shape[0])}
            tile = tile_arg(tiling, tile_size)
            opts = dict(positive_pad=parse_pad(positive_pad, "positive_pad"), branch_mode=branch_mode, tiling=tiling,
                        negative_pad=parse_pad(negative_pad, "negative_pad"), tile_size=tile_size,
                        tile_overlap=tile_overlap)
            checked = check_upscale_options(model, guidance, **opts)  # every value, before any work
            with model_on_device(model, work_bytes(model, x.shape[-2:], x.shape[0], scale, checked["passes"], tile)):
                y = upscale(x, model, scale, guidance, fixmod=fixmod, progress=comfy_progress(), output_copies=1,
                            interrupt=mm.throw_exception_if_processing_interrupted,
                            **opts, **cond)
        out = bchw_to_bhwc(y).to(mm.intermediate_device())  # (B,3,H,W) -> (B,H,W,3)
        out_mask = upscale_mask(mask if mask is not None else alpha_mask, out.shape[1:3], out.shape[0])
        return io.NodeOutput(out, out_mask.to(out.device))
