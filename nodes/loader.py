"""GenDRPixLoader: a GenDR-Pix, GenDR or DFOSD model file -> GENDR_PIX_MODEL."""

from __future__ import annotations

from comfy_api.latest import io

from .memory import load_cached
from .paths import DEFAULT_MODEL_NAME, model_choices, model_fingerprint, resolve_model
from .types import GenDRPixModel

CATEGORY = "image/upscaling/GenDR-Pix"
DTYPES = ["auto", "fp32", "fp16", "bf16"]


class GenDRPixLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GenDRPixLoader",
            display_name="GenDR-Pix Model Loader",
            category=CATEGORY,
            description="Loads a one-step restoration model (GenDR-Pix, GenDR or DFOSD .safetensors). The model "
                        "stays cached between prompts and is only on the GPU while a GenDR-Pix node runs.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(), default=DEFAULT_MODEL_NAME,
                               tooltip="'gendr-pix-s' is the model shipped with the pack; other entries are the "
                                       ".safetensors files in ComfyUI/models/gendr_pix (and any gendr_pix folder "
                                       "set in extra_model_paths.yaml)."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs that support it (else fp16), fp32 on "
                                       "CPU. fp16/bf16 halve memory; fp32 is the slowest but exact."),
            ],
            outputs=[GenDRPixModel.Output("model", display_name="model",
                                          tooltip="The loaded model, for the sampler and post-process nodes.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str, dtype: str) -> str:
        return f"{model_fingerprint(model_name)}|{dtype}"

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(load_cached(resolve_model(model_name), dtype))
