"""GenDRPixLoader: a GenDR-Pix, GenDR or DFOSD model file -> GENDR_PIX_MODEL."""

from __future__ import annotations

from comfy_api.latest import io

from .memory import load_cached
from .messages import node_errors
from .paths import SHIPPED_MODELS, model_choices, model_fingerprint, resolve_model
from .types import GenDRPixModel

CATEGORY = "image/upscaling/GenDR-Pix"
DTYPES = ["auto", "fp32", "fp16", "bf16"]


class GenDRPixLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = model_choices()  # shipped models that exist first; the first one is the default
        return io.Schema(
            node_id="GenDRPixLoader",
            display_name="GenDR-Pix Model Loader",
            category=CATEGORY,
            description="Loads a one-step restoration model (GenDR-Pix, GenDR or DFOSD .safetensors). The model "
                        "stays cached between prompts and is only on the GPU while a GenDR-Pix node runs.",
            inputs=[
                io.Combo.Input("model_name", options=choices, default=choices[0],
                               tooltip=f"{', '.join(repr(n) for n in SHIPPED_MODELS)}: the model(s) shipped with "
                                       "the pack, listed first (the first is the default); other entries are the "
                                       ".safetensors files in ComfyUI/models/gendr_pix (and any gendr_pix folder "
                                       "set in extra_model_paths.yaml). A file with a learned FixMod carries it "
                                       "along for the FixMod option of the other nodes."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weight precision. auto picks the fastest for the device: bf16 on CUDA GPUs "
                                       "that support it, else fp16; on a CPU bf16 where it computes bf16 natively "
                                       "(AVX512-BF16/AMX: ~2x faster, output within 0.01 dB), else fp32 (other "
                                       "CPUs run fp16/bf16 many times slower). fp16/bf16 halve the memory."),
            ],
            outputs=[GenDRPixModel.Output("model", display_name="model",
                                          tooltip="The loaded model, for the sampler and post-process nodes.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str, dtype: str) -> str:
        return f"{model_fingerprint(model_name)}|{dtype}"

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        with node_errors("GenDR-Pix Model Loader"):
            return io.NodeOutput(load_cached(resolve_model(model_name), dtype))
