"""Import: a ComfyUI graph → a complete A1111 /sdapi/v1/txt2img request with Uncond Lab's settings.

    import_graph(source) → {"txt2img": payload, "unsupported": [sentence naming a node or feature, ...]}

Only exact equivalents are carried over; anything else is left out of the payload and named in "unsupported" (a
pair that is the same recipe but not the same pixels, e.g. an ancestral sampler, is carried over and named too).
The payload asks the WebUI to sample like ComfyUI: Uncond Lab's `comfy_sampling` on, and the same A1111 options
(lib_ext/comfy_sampling.py: `sgm_noise_multiplier`, `enable_quantization`, `randn_source` CPU; the RNG only under
rectified flow) in `override_settings`, so they hold even where the script is not run; under rectified flow
`sgm_noise_multiplier` is set off (Uncond Lab refuses it there).
Without ModelSamplingSD3 the payload says rf false: ComfyUI samples a checkpoint with its own parameterisation
whatever its metadata declares, and Uncond Lab's "Model default" would follow the metadata.
"""
from __future__ import annotations

import re
from typing import Any

from lib_ext.comfy.conditioning import NoEquivalent, positive_text, read_pieces, uncond_of
from lib_ext.comfy.errors import ComfyGraphError
from lib_ext.comfy.graph import ComfyGraph, load_graph
from lib_ext.comfy.model_chain import ModelSetup, lora_tags, merge_clip, read_clip, read_model, read_vae
from lib_ext.comfy.names import import_sampler, import_scheduler
from lib_ext.comfy.nodes import SAMPLER_NODES
from lib_ext.comfy_sampling import comfy_sampling_options
from lib_ext.settings import Settings, SettingsError

SCRIPT_TITLE = "Uncond Lab"
OUTPUT_NODES = ("SaveImage", "PreviewImage")
MAX_LATENT_HOPS = 20  # latent nodes between two samplers (upscales); more is not a hires pass
EMPHASIS_NOTE = ("prompt weights ('(word:1.2)', brackets) are applied differently: ComfyUI moves the weighted tokens "
                 "toward the empty prompt's encoding, A1111 scales them and restores the mean")


def _does_nothing(graph: ComfyGraph, node_id: str) -> bool:
    """A KSamplerAdvanced starting at or after its last step returns its latent untouched (comfy/samplers.py
    KSampler.sample: start_step ≥ len(sigmas) − 1), like the refiner pass of ComfyUI's default SDXL graph."""
    if graph.class_of(node_id) != "KSamplerAdvanced":
        return False
    start, steps = graph.literal(node_id, "start_at_step", 0), graph.literal(node_id, "steps", 0)
    return isinstance(start, int) and isinstance(steps, int) and start >= steps


def _decoder(graph: ComfyGraph, sampler: str) -> str | None:
    return next((node for node, name in graph.consumers(sampler)
                 if graph.class_of(node) == "VAEDecode" and name == "samples"), None)


def _saves_image(graph: ComfyGraph, sampler: str) -> bool:
    decoder = _decoder(graph, sampler)
    return decoder is not None and any(graph.class_of(n) in OUTPUT_NODES for n, _ in graph.consumers(decoder))


def _earlier_sampler(graph: ComfyGraph, source: tuple[str, int] | None) -> str | None:
    """The sampler a latent comes from, through latent nodes that take `samples` (LatentUpscale, LatentUpscaleBy:
    a hires pass), or None."""
    for _ in range(MAX_LATENT_HOPS):
        if source is None or graph.class_of(source[0]) in SAMPLER_NODES:
            break
        source = graph.link(source[0], "samples")
    return source[0] if source is not None and graph.class_of(source[0]) in SAMPLER_NODES else None


def pick_sampler(graph: ComfyGraph, unsupported: list[str]) -> tuple[str, str]:
    """(the sampler to import, the last sampler of its chain). The chain ending in a saved image wins; passes
    that do nothing are skipped; of several real passes the first (the txt2img one) is imported."""
    samplers = graph.nodes_of(*SAMPLER_NODES)
    feeding = {earlier for s in samplers if (earlier := _earlier_sampler(graph, graph.link(s, "latent_image")))}
    finals = [s for s in samplers if s not in feeding] or samplers
    final = next((s for s in finals if _saves_image(graph, s)), finals[0])
    if len(finals) > 1:
        unsupported.append(f"the graph has {len(finals)} final samplers ({', '.join(map(graph.label, finals))}); "
                           f"imported the chain of {graph.label(final)}")
    passes, current, seen = [], final, set()
    while current is not None and current not in seen:
        seen.add(current)
        if not _does_nothing(graph, current):
            passes.append(current)
        current = _earlier_sampler(graph, graph.link(current, "latent_image"))
    if not passes:
        raise ComfyGraphError(f"no sampler in this graph does anything ({graph.label(final)} starts at or after its "
                              "last step)")
    if len(passes) > 1:
        unsupported.append(f"{len(passes)} sampler passes ({', '.join(map(graph.label, reversed(passes)))}): only the "
                           f"first, {graph.label(passes[-1])}, is imported (a refiner or second pass has no exact "
                           "txt2img equivalent)")
    return passes[-1], final


def _sampler_fields(graph: ComfyGraph, node_id: str, unsupported: list[str]) -> dict[str, Any]:
    label, advanced = graph.label(node_id), graph.class_of(node_id) == "KSamplerAdvanced"
    fields: dict[str, Any] = {}
    for key, name, kind in (("seed", "noise_seed" if advanced else "seed", int), ("steps", "steps", int),
                            ("cfg_scale", "cfg", float)):
        value = graph.literal(node_id, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fields[key] = kind(value)
        else:
            unsupported.append(f"{label}: '{name}' comes from a node Uncond Lab does not read; left to the WebUI")
    for key, name, convert in (("sampler_name", "sampler_name", import_sampler),
                               ("scheduler", "scheduler", import_scheduler)):
        webui, note = convert(str(graph.literal(node_id, name, "")))
        if webui is not None:
            fields[key] = webui
        if note is not None:
            unsupported.append(note)
    if advanced:
        steps = fields.get("steps", 0)
        if graph.literal(node_id, "add_noise", "enable") != "enable":
            unsupported.append(f"{label}: add_noise disabled has no txt2img equivalent; imported with noise")
        start, end = graph.literal(node_id, "start_at_step", 0), graph.literal(node_id, "end_at_step", 10000)
        if start != 0 or (isinstance(end, int) and end < steps):
            unsupported.append(f"{label}: steps {start} to {end} of {steps} (a partial pass) imported as all steps")
    elif graph.literal(node_id, "denoise", 1.0) != 1.0:
        unsupported.append(f"{label}: denoise {graph.literal(node_id, 'denoise')} < 1 has no txt2img equivalent "
                           "(A1111's txt2img denoises fully); imported as 1")
    return fields


def _latent_fields(graph: ComfyGraph, sampler: str, unsupported: list[str]) -> dict[str, Any]:
    source = graph.link(sampler, "latent_image")
    if source is None or graph.class_of(source[0]) != "EmptyLatentImage":
        where = graph.label(source[0]) if source else "nothing"
        unsupported.append(f"the latent comes from {where}: only an EmptyLatentImage (txt2img) is imported; "
                           "size left to the WebUI")
        return {}
    fields = {}
    for key in ("width", "height", "batch_size"):
        value = graph.literal(source[0], key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fields[key] = int(value)
        else:
            unsupported.append(f"{graph.label(source[0])}: '{key}' comes from a node Uncond Lab does not read; "
                               "left to the WebUI")
    if fields.get("batch_size", 1) > 1:
        unsupported.append(f"batch of {fields['batch_size']}: ComfyUI draws the batch's noise from one generator, "
                           "A1111 seeds image i with seed + i, so only the first image matches")
    return fields


def _after_decode(graph: ComfyGraph, final: str, unsupported: list[str]) -> tuple[str, int] | None:
    """The VAEDecode's vae input; nodes between the decode and the saved image are named."""
    decoder = _decoder(graph, final)
    if decoder is None:
        return None
    for node, _ in graph.consumers(decoder):
        if graph.class_of(node) not in OUTPUT_NODES:
            unsupported.append(f"{graph.label(node)} after the VAE decode is not carried over")
    return graph.link(decoder, "vae")


def _conditioning(graph: ComfyGraph, sampler: str, unsupported: list[str]) -> tuple[str, dict, list[str]]:
    """(prompt, negative + uncond settings, text encoder ids)."""
    encoders: list[str] = []
    prompt, negative = "", {"negative_prompt": "", "enabled": False, "zero_weight": None}
    for name in ("positive", "negative"):
        source = graph.link(sampler, name)
        try:
            if source is None:
                raise NoEquivalent(f"{graph.label(sampler)} has no {name} input")
            pieces = read_pieces(graph, source[0], encoders)
            if name == "positive":
                prompt = positive_text(pieces)
            else:
                uncond = uncond_of(pieces)
                negative = {"negative_prompt": uncond.text, "enabled": True, "zero_weight": uncond.zero_weight,
                            "start": uncond.start, "end": uncond.end}
        except (NoEquivalent, ComfyGraphError) as error:
            what = "prompt left empty" if name == "positive" else "Uncond Lab left off (the WebUI's own uncond)"
            unsupported.append(f"{name}: {error}; {what}")
    if re.search(r"[()\[\]]", prompt + negative["negative_prompt"]):
        unsupported.append(EMPHASIS_NOTE)
    return prompt, negative, list(dict.fromkeys(encoders))


def _read_setup(graph: ComfyGraph, sampler: str, final: str, encoders: list[str],
                unsupported: list[str]) -> ModelSetup:
    setup = ModelSetup()
    try:
        read_model(graph, graph.link(sampler, "model"), setup)
        if encoders:
            merge_clip(graph, [read_clip(graph, graph.link(e, "clip")) for e in encoders], setup)
        read_vae(graph, _after_decode(graph, final, unsupported), setup)
    except (ValueError, ComfyGraphError) as error:
        setup.unsupported.append(f"{error}; the rest of the model setup is not read")
    unsupported.extend(setup.unsupported)
    return setup


def _merge_settings(setup: ModelSetup, unsupported: list[str]) -> dict[str, Any]:
    partner = setup.merge_partner or setup.te_partner
    if partner is None:
        return {}
    te_ratio = setup.te_ratio
    if setup.te_partner not in (None, partner):
        unsupported.append(f"the UNet is merged with {partner!r} and the text encoders with {setup.te_partner!r}; "
                           "Uncond Lab merges one partner: the text encoders' merge is not carried over")
        te_ratio = 0.0
    ratio = setup.merge_ratio if setup.merge_partner else 0.0
    if ratio != 0.0 and setup.vae == "None":
        unsupported.append(f"VAE: ComfyUI's merge leaves model 1's VAE as it is, Uncond Lab merges the checkpoint's "
                           f"VAE at the UNet ratio ({ratio:g}) unless SD VAE names a file: the decode differs slightly")
    return {"merge_model": partner, "merge_ratio": ratio, "merge_te_ratio": te_ratio,
            "merge_blocks": setup.merge_blocks}


def _settings(uncond: dict, setup: ModelSetup, unsupported: list[str]) -> Settings:
    values = {key: uncond[key] for key in ("enabled", "zero_weight", "start", "end") if key in uncond}
    values["comfy_sampling"] = True
    values["rf"] = setup.rf is not None
    if setup.rf is not None:
        values["shift"], values["multiplier"] = setup.rf
    values.update(_merge_settings(setup, unsupported))
    try:
        return Settings.from_dict(values)
    except SettingsError as error:
        unsupported.append(f"{error}; Uncond Lab's RF and merge settings left out")
        return Settings.from_dict({key: values[key] for key in ("enabled", "zero_weight", "start", "end",
                                                                "comfy_sampling") if key in values})


def _override_settings(setup: ModelSetup, settings: Settings, unsupported: list[str]) -> dict[str, Any]:
    override: dict[str, Any] = {}
    if setup.checkpoint is not None:
        override["sd_model_checkpoint"] = setup.checkpoint
    else:
        unsupported.append("no CheckpointLoaderSimple found for the model; the checkpoint is left to the WebUI")
    if setup.vae is not None:
        override["sd_vae"] = setup.vae
    if setup.clip_skip > 12:
        unsupported.append(f"CLIP skip {setup.clip_skip}: A1111 allows at most 12")
    override["CLIP_stop_at_last_layers"] = min(max(setup.clip_skip, 1), 12)
    override.update(comfy_sampling_options(rectified_flow=bool(settings.rf)))
    if settings.rf:
        override["sgm_noise_multiplier"] = False
    return override


def import_graph(source: bytes | str | dict) -> dict[str, Any]:
    """A ComfyUI graph (PNG bytes, JSON text, an API prompt or a UI workflow dict) → {"txt2img": an A1111
    /sdapi/v1/txt2img payload, "unsupported": [what is not carried over or not the same]}. Raises
    ComfyGraphError when the input is not a graph or has no sampler."""
    graph = load_graph(source)
    unsupported = list(graph.notes)
    sampler, final = pick_sampler(graph, unsupported)
    fields = _sampler_fields(graph, sampler, unsupported)
    fields.update(_latent_fields(graph, sampler, unsupported))
    prompt, uncond, encoders = _conditioning(graph, sampler, unsupported)
    setup = _read_setup(graph, sampler, final, encoders, unsupported)
    settings = _settings(uncond, setup, unsupported)
    tags = lora_tags(setup)
    payload = {"prompt": f"{prompt} {tags}".strip() if tags else prompt,
               "negative_prompt": uncond["negative_prompt"], **fields, "n_iter": 1,
               "override_settings": _override_settings(setup, settings, unsupported),
               "override_settings_restore_afterwards": True,
               "alwayson_scripts": {SCRIPT_TITLE: {"args": [settings.as_dict()]}}}
    return {"txt2img": payload, "unsupported": list(dict.fromkeys(unsupported))}
