"""What a ComfyUI graph does to the model before sampling: the checkpoint, a merge, rectified flow, LoRAs, CLIP
skip and the VAE, read by walking from the sampler and the text encoders back to the checkpoint loader.

ComfyUI facts this follows (v0.8.0):
- ModelMergeSimple(model1, model2, ratio): `m = model1.clone(); m.add_patches(model2's keys, 1 - ratio, ratio)`,
  and comfy/lora.py calculate_weight makes ratio·model1 + (1 − ratio)·model2: ratio is model 1's share, so
  Uncond Lab's merge_ratio (B's share) is 1 − ratio. Only `diffusion_model.` keys are merged: the text encoders stay
  model 1's unless CLIPMergeSimple (same rule) merges them, and no merge node touches the VAE
  (comfy_extras/nodes_model_merging.py). ModelMergeBlocks/SD1/SDXL: lib_ext/merge/blocks.py, ComfyUI names.
- A LoRA before a merge is scaled by the merge ratio (its patch sits on model 1 before the merge patch), and
  model 2's own patches are merged in: only LoRAs after the merge and a plain model 2 have an Uncond Lab equivalent.
- Object patches (ModelSamplingSD3/AuraFlow/Discrete) and clip_layer (CLIPSetLastLayer) are replaced by the node
  nearest the sampler: the first one met walking back wins.
- ModelSamplingSD3(shift): flow with timestep = sigma·1000; ModelSamplingAuraFlow(shift): multiplier 1
  (comfy_extras/nodes_model_advanced.py) = Uncond Lab's rf, shift, multiplier.
- CLIPSetLastLayer(-n) is A1111's "Clip skip" n (SD1.x; on SDXL ComfyUI's default is already the penultimate
  layer and A1111 ignores Clip skip unless its sdxl_clip_l_skip option is on).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from lib_ext.comfy.graph import ComfyGraph
from lib_ext.comfy.nodes import MODEL_MERGE_NODES
from lib_ext.merge.blocks import BlocksError, parse_blocks


@dataclass
class ModelSetup:
    checkpoint: str | None = None
    merge_partner: str | None = None
    merge_ratio: float = 0.0        # B's share of the UNet (plain merges)
    merge_blocks: str = ""          # ComfyUI-named block text (block merges; merge_ratio then 0)
    te_partner: str | None = None
    te_ratio: float = 0.0           # B's share of the text encoders
    rf: tuple[float, float] | None = None  # (shift, multiplier)
    loras: dict[str, dict] = field(default_factory=dict)  # node id → {"name", "unet", "te"}
    clip_skip: int = 1
    vae: str | None = None          # "None" (the checkpoint's own) or a VAE file name
    unsupported: list[str] = field(default_factory=list)


def complement(share: float) -> float:
    """1 − share, rounded to 12 places so that 0.3 ↔ 0.7 survive a round trip as written."""
    return round(1.0 - share, 12)


def number_text(value: float) -> str:
    """A number as infotext and tags write it: 1 for 1.0, 0.35 for 0.35, every digit kept."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def lora_name(file_name: str) -> str:
    """A1111's network name: the file's name without folders and extension."""
    return os.path.splitext(file_name.replace("\\", "/").rsplit("/", 1)[-1])[0]


def _checkpoint_of(graph: ComfyGraph, source: tuple[str, int] | None, slot: int) -> str | None:
    if source is None or graph.class_of(source[0]) != "CheckpointLoaderSimple" or source[1] != slot:
        return None
    name = graph.literal(source[0], "ckpt_name", None)
    return name if isinstance(name, str) else None


def _number(graph: ComfyGraph, node_id: str, name: str) -> float:
    value = graph.literal(node_id, name, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{graph.label(node_id)}'s '{name}' is not a number ({value!r:.60})")
    return float(value)


def _read_merge(graph: ComfyGraph, node_id: str, setup: ModelSetup) -> None:
    kind, label = graph.class_of(node_id), graph.label(node_id)
    partner = _checkpoint_of(graph, graph.link(node_id, "model2"), 0)
    if partner is None:
        setup.unsupported.append(f"{label}: model2 does not come straight from a CheckpointLoaderSimple (its own "
                                 "patches would be merged in); the merge is not carried over")
        return
    if kind == "ModelMergeSimple":
        setup.merge_partner, setup.merge_ratio = partner, complement(_number(graph, node_id, "ratio"))
        return
    names = [name for name in graph.prompt[node_id]["inputs"] if name not in ("model1", "model2")]
    text = ", ".join(f"{name}={_number(graph, node_id, name)!r}" for name in names)
    try:
        setup.merge_blocks = parse_blocks(text).text
    except BlocksError as error:
        setup.unsupported.append(f"{label}: {error}; the merge is not carried over")
        return
    setup.merge_partner = partner


def read_model(graph: ComfyGraph, source: tuple[str, int] | None, setup: ModelSetup) -> None:
    """Walk the sampler's model input back to its checkpoint, filling `setup`."""
    merged, sampling_set, seen = False, False, set()
    while source is not None:
        node_id, kind, label = source[0], graph.class_of(source[0]), graph.label(source[0])
        if node_id in seen:
            setup.unsupported.append(f"{label}: the model's path loops back")
            return
        seen.add(node_id)
        if kind == "CheckpointLoaderSimple":
            setup.checkpoint = _checkpoint_of(graph, source, 0)
            return
        if kind in ("ModelSamplingSD3", "ModelSamplingAuraFlow") and not sampling_set:
            setup.rf = (_number(graph, node_id, "shift"), 1000.0 if kind == "ModelSamplingSD3" else 1.0)
        elif kind == "ModelSamplingDiscrete" and not sampling_set:
            sampling, zsnr = graph.literal(node_id, "sampling", "?"), graph.literal(node_id, "zsnr", False)
            setup.unsupported.append(f"{label} (sampling {sampling}, zsnr {zsnr}): Uncond Lab has no prediction-type "
                                     "switch; the WebUI uses the checkpoint's own")
        elif kind in ("LoraLoader", "LoraLoaderModelOnly"):
            if merged:
                setup.unsupported.append(f"{label} before the merge: ComfyUI scales it by the merge ratio; not "
                                         "carried over (put LoRAs after the merge)")
            else:
                entry = setup.loras.setdefault(node_id, {"name": lora_name(str(graph.literal(node_id, "lora_name"))),
                                                         "unet": 0.0, "te": 0.0})
                entry["unet"] = _number(graph, node_id, "strength_model")
        elif kind in MODEL_MERGE_NODES:
            if merged:
                setup.unsupported.append(f"{label}: a second merge on the model's path is not carried over")
            else:
                _read_merge(graph, node_id, setup)
            merged = True
            source = graph.link(node_id, "model1")
            continue
        elif kind not in ("ModelSamplingSD3", "ModelSamplingAuraFlow", "ModelSamplingDiscrete"):
            setup.unsupported.append(f"{label} on the model's path has no Uncond Lab equivalent; no checkpoint read "
                                     "beyond it")
            return
        sampling_set = sampling_set or kind.startswith("ModelSampling")
        source = graph.link(node_id, "model")


@dataclass(frozen=True)
class ClipSetup:
    checkpoint: str | None
    clip_skip: int
    partner: str | None
    ratio: float
    loras: tuple[tuple[str, float], ...]  # (LoraLoader id, strength_clip), nearest the encoder first
    problem: str | None = None


def read_clip(graph: ComfyGraph, source: tuple[str, int] | None) -> ClipSetup:
    """Walk a CLIPTextEncode's clip input back to its checkpoint."""
    clip_skip, partner, ratio, loras, merged, seen = None, None, 0.0, [], False, set()
    while source is not None:
        node_id, kind, label = source[0], graph.class_of(source[0]), graph.label(source[0])
        if node_id in seen:
            return _clip_problem(f"{label}: the text encoders' path loops back")
        seen.add(node_id)
        if kind == "CheckpointLoaderSimple":
            return ClipSetup(_checkpoint_of(graph, source, 1), clip_skip or 1, partner, ratio, tuple(loras))
        if kind == "CLIPSetLastLayer":
            clip_skip = clip_skip or -int(_number(graph, node_id, "stop_at_clip_layer"))
            source = graph.link(node_id, "clip")
        elif kind == "LoraLoader" and not merged:
            loras.append((node_id, _number(graph, node_id, "strength_clip")))
            source = graph.link(node_id, "clip")
        elif kind == "CLIPMergeSimple" and not merged:
            partner = _checkpoint_of(graph, graph.link(node_id, "clip2"), 1)
            if partner is None:
                return _clip_problem(f"{label}: clip2 does not come straight from a CheckpointLoaderSimple; the "
                                     "text encoders' setup is not carried over")
            ratio, merged = complement(_number(graph, node_id, "ratio")), True
            source = graph.link(node_id, "clip1")
        elif kind in ("LoraLoader", "CLIPMergeSimple"):
            what = "before the CLIP merge (ComfyUI scales it by the merge ratio)" if kind == "LoraLoader" else \
                "a second CLIP merge"
            return _clip_problem(f"{label} {what}; the text encoders' setup is not carried over")
        else:
            return _clip_problem(f"{label} on the text encoders' path has no Uncond Lab equivalent; the text "
                                 "encoders' setup is not carried over")
    return _clip_problem("a text encoder has no clip input")


def _clip_problem(problem: str) -> ClipSetup:
    return ClipSetup(None, 1, None, 0.0, (), problem)


def merge_clip(graph: ComfyGraph, clips: list[ClipSetup], setup: ModelSetup) -> None:
    """Fold the text encoders' setup (one per CLIPTextEncode, all equal) into `setup`."""
    problems = {c.problem for c in clips if c.problem}
    if problems:
        setup.unsupported.extend(sorted(problems))
        return
    if len(set(clips)) > 1:
        setup.unsupported.append("the positive and negative text encoders are set up differently (CLIP skip, LoRA, "
                                 "merge or checkpoint); Uncond Lab has one")
        return
    clip = clips[0]
    if clip.checkpoint != setup.checkpoint:
        setup.unsupported.append(f"the text encoders come from {clip.checkpoint!r}, the UNet from "
                                 f"{setup.checkpoint!r}; the WebUI loads both from one checkpoint")
    setup.clip_skip = clip.clip_skip
    for node_id, strength in clip.loras:
        entry = setup.loras.setdefault(node_id, {"name": lora_name(str(graph.literal(node_id, "lora_name"))),
                                                 "unet": 0.0, "te": 0.0})
        entry["te"] = strength
    setup.te_partner, setup.te_ratio = clip.partner, clip.ratio


def read_vae(graph: ComfyGraph, source: tuple[str, int] | None, setup: ModelSetup) -> None:
    """The VAEDecode's vae: the checkpoint's own ("None" in A1111's SD VAE) or a VAELoader's file."""
    if source is None:
        setup.unsupported.append("no VAEDecode after the sampler; the VAE is left to the WebUI")
        return
    checkpoint = _checkpoint_of(graph, source, 2)
    if checkpoint is not None and checkpoint == setup.checkpoint:
        setup.vae = "None"
    elif graph.class_of(source[0]) == "VAELoader":
        setup.vae = str(graph.literal(source[0], "vae_name"))
    else:
        setup.unsupported.append(f"the VAE comes from {graph.label(source[0])}"
                                 + (f" ({checkpoint})" if checkpoint else "")
                                 + ", not the model's checkpoint or a VAELoader; left to the WebUI")


def lora_tags(setup: ModelSetup) -> str:
    """A1111 tags for the LoRAs, checkpoint side first: <lora:name:w>, or <lora:name:te:unet> when the text-encoder
    and UNet strengths differ (extensions-builtin/Lora/extra_networks_lora.py reads te, then unet)."""
    tags = []
    for entry in reversed(list(setup.loras.values())):
        te, unet = entry["te"], entry["unet"]
        if te == 0.0 and unet == 0.0:
            continue
        values = number_text(te) if te == unet else f"{number_text(te)}:{number_text(unet)}"
        tags.append(f"<lora:{entry['name']}:{values}>")
    return " ".join(tags)
