"""Uncond Lab's merge settings → ComfyUI's merge nodes (the inverse of lib_ext/comfy/model_chain.py's reading).

A plain merge at B's share r is ModelMergeSimple(ratio = 1 − r) (model 1's share), the text encoders'
CLIPMergeSimple(1 − te), te being BASE, merge_te_ratio or, when that follows, merge_ratio. Block weights become
ModelMergeBlocks when its three arguments give every slot its share (ComfyUI's rule: time_embed and label_emb take
the first argument, `input`; `out` covers the output blocks and `out.`) and the value does not name per-block
ComfyUI arguments, else the family's node with every argument (ModelMergeSDXL: no trailing dots on numbered names;
ModelMergeSD1: with them). ComfyUI's values are kept as written for ComfyUI names; Uncond Lab's slots give
1 − B's share. The VAE: ComfyUI's merge nodes never touch it, Uncond Lab merges the checkpoint's VAE at the UNet
ratio (a full vector: its BASE) unless SD VAE names a file, which is noted.
"""
from __future__ import annotations

import os
import re

from lib_ext.comfy.builder import PromptBuilder
from lib_ext.comfy.model_chain import complement
from lib_ext.comfy.nodes import SD1_MERGE_ARGUMENTS, SDXL_MERGE_ARGUMENTS
from lib_ext.merge.blocks import (COMFY_BLOCKS_NAMES, LABEL, MIDDLE, OUT_FINAL, TIME, BlockLayout, BlocksError,
                                  BlockWeights, comfy_share, parse_blocks, slot_key_prefix)
from lib_ext.settings import Settings

LAYOUTS = {"SDXL": BlockLayout(9, 9, True), "SD1": BlockLayout(12, 12, False)}
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")
_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,}\]$")


def file_name(name: str, what: str, notes: list[str]) -> str:
    """A WebUI checkpoint/VAE/LoRA name → a ComfyUI file name: the "[hash]" dropped, ".safetensors" added (and
    said so) when the name has no model file extension."""
    name = _HASH.sub("", name.strip())
    if os.path.splitext(name)[1].lower() in MODEL_EXTENSIONS:
        return name
    notes.append(f"{what} {name!r} has no file extension; {name}.safetensors assumed")
    return name + ".safetensors"


def model_family(family: str | None, weights: BlockWeights | None) -> str | None:
    """"SDXL", "SD1" (SD1.x/SD2.x: the same blocks) or None, from the argument or the block weights."""
    if family:
        return "SDXL" if "xl" in family.lower() else "SD1"
    if weights is None:
        return None
    if weights.vector is not None:
        return {20: "SDXL", 26: "SD1"}.get(len(weights.vector))
    names = " ".join(name for name, _ in (*weights.items, *weights.comfy))
    if re.search(r"(IN|OUT)(09|1[01])|_blocks\.(9|1[01])\b", names):
        return "SD1"
    return "SDXL" if re.search(r"\bLABEL\b|_blocks\.\d", names) else None  # numbered ComfyUI names: ModelMergeSDXL


def _a_shares(weights: BlockWeights, layout: BlockLayout, unet_ratio: float) -> dict[str, float]:
    """Model 1's (A's) share per slot: ComfyUI's own values for ComfyUI names, else 1 − Uncond Lab's B share."""
    if weights.comfy:
        return {slot: comfy_share(weights.comfy, slot_key_prefix(slot)) for slot in layout.unet_slots}
    ratios = weights.slot_ratios(layout, unet_ratio, 0.0)
    return {slot: complement(ratios[slot]) for slot in layout.unet_slots}


def block_merge_node(weights: BlockWeights, family: str, unet_ratio: float) -> tuple[str, dict[str, float]]:
    """(ModelMergeBlocks or the family's node, {argument: model 1's share}). ModelMergeBlocks when it gives every
    slot its share (time/label as input, out. as out) and the value does not name per-block arguments."""
    layout = LAYOUTS[family]
    shares = _a_shares(weights, layout, unet_ratio)
    inputs = [shares[s] for s in (TIME, *((LABEL,) if layout.label else ()), *layout.group("IN"))]
    outputs = [shares[s] for s in (*layout.group("OUT"), OUT_FINAL)]
    names_fit = all(name in COMFY_BLOCKS_NAMES for name, _ in weights.comfy)
    if names_fit and len(set(inputs)) == 1 and len(set(outputs)) == 1:
        return "ModelMergeBlocks", {"input": inputs[0], "middle": shares[MIDDLE], "out": outputs[0]}
    by_prefix = {slot_key_prefix(slot): share for slot, share in shares.items()}

    def share(name: str) -> float:
        prefix = name if name.endswith(".") else name + "."
        if weights.comfy:  # ComfyUI's own rule, also for arguments no key of this family meets (SD1's label_emb.)
            return comfy_share(weights.comfy, prefix)
        return by_prefix.get(prefix, shares[MIDDLE] if prefix.startswith("middle_block.") else shares[TIME])

    arguments = SDXL_MERGE_ARGUMENTS if family == "SDXL" else SD1_MERGE_ARGUMENTS
    return ("ModelMergeSDXL" if family == "SDXL" else "ModelMergeSD1"), {name: share(name) for name in arguments}


def merge_nodes(builder: PromptBuilder, settings: Settings, family: str | None, model, clip, vae_file: bool,
                notes: list[str]):
    """The merge's nodes after the checkpoint's MODEL and CLIP outputs; returns the new (model, clip) outputs.
    `vae_file`: SD VAE names a file (then the WebUI merges no VAE either)."""
    request = settings.merge_request()
    if request is None:
        return model, clip
    if request.method != "weighted_sum":
        notes.append("an add-difference merge (A + r·(B − C)) is not exported; the graph uses model A alone")
        return model, clip
    partner = builder.add("CheckpointLoaderSimple", ckpt_name=file_name(request.model_b, "merge model B", notes))
    weights = parse_blocks(request.blocks)
    shares: list[float] = []
    if weights is None and request.unet_ratio != 0.0:
        shares.append(complement(request.unet_ratio))
        model = (builder.add("ModelMergeSimple", ratio=shares[-1], model1=model, model2=(partner, 0)), 0)
    elif weights is not None:
        try:
            kind, arguments = block_merge_node(weights, family or "SDXL", request.unet_ratio)
        except BlocksError as error:
            notes.append(f"{error}; the UNet merge is not exported")
        else:
            if family is None and kind != "ModelMergeBlocks":
                notes.append(f"block weights exported as {kind} for SDXL (pass family='SD1' for an SD1.x/SD2.x "
                             "model)")
            shares.extend(arguments.values())
            model = (builder.add(kind, **arguments, model1=model, model2=(partner, 0)), 0)
    te = weights.base if weights is not None and weights.base is not None else (
        request.unet_ratio if request.te_ratio is None else request.te_ratio)
    if te != 0.0:
        shares.append(complement(te))
        clip = (builder.add("CLIPMergeSimple", ratio=shares[-1], clip1=clip, clip2=(partner, 1)), 0)
    if any(not 0.0 <= share <= 1.0 for share in shares):
        notes.append("a merge value outside [0, 1] (extrapolation): ComfyUI's merge nodes refuse it")
    vae_ratio = weights.vector[0] if weights is not None and weights.vector is not None else request.unet_ratio
    if not vae_file and vae_ratio != 0.0:
        notes.append(f"VAE: Uncond Lab merges the checkpoint's VAE at {vae_ratio:g}; ComfyUI's merge nodes leave model "
                     "1's VAE, so the graph decodes with A's VAE")
    return model, clip
