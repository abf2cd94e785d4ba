"""The ComfyUI nodes Uncond Lab reads and writes: their linked inputs, their widgets in the UI's order, outputs.

From ComfyUI v0.8.0 (commit fc0cb10b): `INPUT_TYPES` and `RETURN_TYPES` of nodes.py (CheckpointLoaderSimple,
VAELoader, CLIPTextEncode, CLIPSetLastLayer, LoraLoader, LoraLoaderModelOnly, EmptyLatentImage, KSampler,
KSamplerAdvanced, VAEDecode, SaveImage, PreviewImage, ConditioningCombine, ConditioningAverage,
ConditioningSetTimestepRange, ConditioningZeroOut), comfy_extras/nodes_model_advanced.py (ModelSamplingSD3,
ModelSamplingAuraFlow, ModelSamplingDiscrete), comfy_extras/nodes_model_merging.py (ModelMergeSimple,
ModelMergeBlocks, CLIPMergeSimple), comfy_extras/nodes_model_merging_model_specific.py (ModelMergeSD1,
ModelMergeSDXL) and comfy_extras/nodes_primitive.py (PrimitiveInt, ...).

A UI workflow (ComfyUI_frontend) stores a node's widget values positionally in `widgets_values`, in INPUT_TYPES
order of the inputs that are widgets (not sockets); an input with `control_after_generate` (KSampler's seed,
KSamplerAdvanced's noise_seed, PrimitiveInt's value) is followed by the frontend's own control value ("fixed",
"randomize", ...; `true`/`false` in old workflows), which the API prompt does not carry.
"""
from __future__ import annotations

from dataclasses import dataclass

CONTROL = "control_after_generate"  # the frontend's extra widget value after a seed; not an API input


@dataclass(frozen=True)
class NodeSpec:
    sockets: tuple[tuple[str, str], ...]  # linked inputs (name, type), in INPUT_TYPES order
    widgets: tuple[str, ...]              # widget inputs in widgets_values order (CONTROL: the frontend's value)
    outputs: tuple[tuple[str, str], ...]  # (name, type), in RETURN_TYPES order

    @property
    def api_widgets(self) -> tuple[str, ...]:
        return tuple(name for name in self.widgets if name != CONTROL)


def _one(kind: str) -> tuple[tuple[str, str], ...]:
    return ((kind, kind),)


MODEL, CLIP, VAE, LATENT, IMAGE, COND = "MODEL", "CLIP", "VAE", "LATENT", "IMAGE", "CONDITIONING"
SAMPLER_SOCKETS = (("model", MODEL), ("positive", COND), ("negative", COND), ("latent_image", LATENT))

# ModelMergeSDXL's arguments without trailing dots on the numbered ones, ModelMergeSD1's with them.
SDXL_MERGE_ARGUMENTS = ("time_embed.", "label_emb.", *(f"input_blocks.{i}" for i in range(9)),
                        *(f"middle_block.{i}" for i in range(3)), *(f"output_blocks.{i}" for i in range(9)), "out.")
SD1_MERGE_ARGUMENTS = ("time_embed.", "label_emb.", *(f"input_blocks.{i}." for i in range(12)),
                       *(f"middle_block.{i}." for i in range(3)), *(f"output_blocks.{i}." for i in range(12)), "out.")
MERGE_SOCKETS = (("model1", MODEL), ("model2", MODEL))

NODES: dict[str, NodeSpec] = {
    "CheckpointLoaderSimple": NodeSpec((), ("ckpt_name",), ((MODEL, MODEL), (CLIP, CLIP), (VAE, VAE))),
    "VAELoader": NodeSpec((), ("vae_name",), _one(VAE)),
    "CLIPTextEncode": NodeSpec((("clip", CLIP),), ("text",), _one(COND)),
    "CLIPSetLastLayer": NodeSpec((("clip", CLIP),), ("stop_at_clip_layer",), _one(CLIP)),
    "LoraLoader": NodeSpec((("model", MODEL), ("clip", CLIP)), ("lora_name", "strength_model", "strength_clip"),
                           ((MODEL, MODEL), (CLIP, CLIP))),
    "LoraLoaderModelOnly": NodeSpec((("model", MODEL),), ("lora_name", "strength_model"), _one(MODEL)),
    "EmptyLatentImage": NodeSpec((), ("width", "height", "batch_size"), _one(LATENT)),
    "KSampler": NodeSpec(SAMPLER_SOCKETS, ("seed", CONTROL, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
                         _one(LATENT)),
    "KSamplerAdvanced": NodeSpec(SAMPLER_SOCKETS, ("add_noise", "noise_seed", CONTROL, "steps", "cfg", "sampler_name",
                                                   "scheduler", "start_at_step", "end_at_step",
                                                   "return_with_leftover_noise"), _one(LATENT)),
    "VAEDecode": NodeSpec((("samples", LATENT), ("vae", VAE)), (), _one(IMAGE)),
    "SaveImage": NodeSpec((("images", IMAGE),), ("filename_prefix",), ()),
    "PreviewImage": NodeSpec((("images", IMAGE),), (), ()),
    "ConditioningCombine": NodeSpec((("conditioning_1", COND), ("conditioning_2", COND)), (), _one(COND)),
    "ConditioningAverage": NodeSpec((("conditioning_to", COND), ("conditioning_from", COND)),
                                    ("conditioning_to_strength",), _one(COND)),
    "ConditioningSetTimestepRange": NodeSpec((("conditioning", COND),), ("start", "end"), _one(COND)),
    "ConditioningZeroOut": NodeSpec((("conditioning", COND),), (), _one(COND)),
    "ModelSamplingSD3": NodeSpec((("model", MODEL),), ("shift",), _one(MODEL)),
    "ModelSamplingAuraFlow": NodeSpec((("model", MODEL),), ("shift",), _one(MODEL)),
    "ModelSamplingDiscrete": NodeSpec((("model", MODEL),), ("sampling", "zsnr"), _one(MODEL)),
    "ModelMergeSimple": NodeSpec(MERGE_SOCKETS, ("ratio",), _one(MODEL)),
    "ModelMergeBlocks": NodeSpec(MERGE_SOCKETS, ("input", "middle", "out"), _one(MODEL)),
    "ModelMergeSDXL": NodeSpec(MERGE_SOCKETS, SDXL_MERGE_ARGUMENTS, _one(MODEL)),
    "ModelMergeSD1": NodeSpec(MERGE_SOCKETS, SD1_MERGE_ARGUMENTS, _one(MODEL)),
    "CLIPMergeSimple": NodeSpec((("clip1", CLIP), ("clip2", CLIP)), ("ratio",), _one(CLIP)),
    "PrimitiveInt": NodeSpec((), ("value", CONTROL), _one("INT")),
    "PrimitiveFloat": NodeSpec((), ("value",), _one("FLOAT")),
    "PrimitiveString": NodeSpec((), ("value",), _one("STRING")),
    "PrimitiveStringMultiline": NodeSpec((), ("value",), _one("STRING")),
    "PrimitiveBoolean": NodeSpec((), ("value",), _one("BOOLEAN")),
}

BLOCK_MERGE_NODES = ("ModelMergeBlocks", "ModelMergeSDXL", "ModelMergeSD1")
MODEL_MERGE_NODES = ("ModelMergeSimple", *BLOCK_MERGE_NODES)
SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
PRIMITIVE_NODES = ("PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline",
                   "PrimitiveBoolean")
# The frontend's virtual nodes: never in an API prompt (Reroute passes a link on, PrimitiveNode holds a widget value).
REROUTE, UI_PRIMITIVE = "Reroute", "PrimitiveNode"
