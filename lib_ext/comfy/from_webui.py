"""Export: an A1111 txt2img payload, an infotext, or an A1111 PNG → a ComfyUI graph, as an API prompt and as a
UI workflow that ComfyUI's Load opens.

    export_payload(payload, family=None) → {"prompt": API prompt, "workflow": UI workflow, "notes": [...]}
    export_infotext(text, family=None), export_png(data, family=None): the same, read from A1111's text

The payload has the shape import_graph writes (lib_ext/comfy/to_webui.py), Uncond Lab's settings under
alwayson_scripts["Uncond Lab"]["args"] (a dict or the UI's positional list). The mapping is the import's inverse:
the uncond per README's "ComfyUI equivalents" (lib_ext/comfy/conditioning.py), RF as ModelSamplingSD3(shift)
(ModelSamplingAuraFlow for multiplier 1), a merge as ModelMergeSimple / ModelMergeBlocks / ModelMergeSDXL /
ModelMergeSD1 and CLIPMergeSimple with model 1's share 1 − r, LoRA tags as a LoraLoader chain after the merge, Clip
skip n as CLIPSetLastLayer(−n), SD VAE as a VAELoader. What ComfyUI has no node for is named in "notes": the VAE
merge, hires and refiner passes, Uncond Lab's hires uncond, WebUI-only samplers and schedules, add-difference
merges. `family` ("SDXL" or "SD1") says which model the settings are for where that matters (the per-block node,
the WebUI's own uncond for an empty negative); without it, it is read from the block weights, else SDXL is assumed
and said so.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from lib_ext.comfy.builder import PromptBuilder
from lib_ext.comfy.conditioning import Uncond, uncond_nodes
from lib_ext.comfy.errors import ComfyGraphError
from lib_ext.comfy.infotext import infotext_to_payload
from lib_ext.comfy.layout import prompt_to_workflow
from lib_ext.comfy.merge_nodes import file_name, merge_nodes, model_family
from lib_ext.comfy.names import export_sampler, export_scheduler
from lib_ext.comfy.png import png_text_chunks
from lib_ext.comfy_sampling import comfy_sampling_options
from lib_ext.merge.blocks import parse_blocks
from lib_ext.settings import Settings

_EXTRA_NETWORK = re.compile(r"\s*<(\w+):([^>]+)>")
API_DEFAULTS = {"steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512, "seed": -1, "sampler_name": "Euler"}
# The WebUI options the export reads from override_settings (the host fills in the ones a payload leaves to the
# WebUI's settings).
READ_OPTIONS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "sgm_noise_multiplier",
                "enable_quantization", "randn_source")


def split_loras(prompt: str, notes: list[str]) -> tuple[str, list[tuple[str, float, float]]]:
    """The prompt without extra-network tags, and its LoRAs as (name, te, unet): A1111's <lora:name:te:unet> with
    unet defaulting to te and te to 1, te=/unet= named (extensions-builtin/Lora/extra_networks_lora.py)."""
    loras = []

    def take(match: re.Match) -> str:
        kind, items = match.group(1), match.group(2).split(":")
        if kind != "lora":
            notes.append(f"extra network <{kind}:{match.group(2)}> has no ComfyUI node here; dropped")
            return ""
        positional = [i for i in items[1:] if "=" not in i]
        named = dict(i.split("=", 1) for i in items[1:] if "=" in i)
        try:
            te = float(named.get("te", positional[0] if positional else 1.0))
            unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
        except ValueError:
            notes.append(f"LoRA tag <lora:{match.group(2)}> has a strength that is not a number; dropped")
            return ""
        loras.append((items[0], te, unet))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt).strip(), loras


def _lora_nodes(builder: PromptBuilder, loras, model, clip, notes: list[str]):
    for name, te, unet in loras:
        lora_file = file_name(name, "LoRA", notes)
        if te == 0.0:
            model = (builder.add("LoraLoaderModelOnly", lora_name=lora_file, strength_model=unet, model=model), 0)
        else:
            node = builder.add("LoraLoader", lora_name=lora_file, strength_model=unet, strength_clip=te, model=model,
                               clip=clip)
            model, clip = (node, 0), (node, 1)
    return model, clip


def _uncond(settings: Settings, negative: str, family: str | None, notes: list[str]) -> Uncond:
    schedule = settings.schedule(hires=False)
    if schedule is None:  # the WebUI's own: A1111/reForge zero an empty SDXL negative (sd_models_xl.py)
        if negative or family == "SD1":
            return Uncond(negative, 0.0)
        if family is None:
            notes.append("the WebUI's own uncond for an empty negative is exported as SDXL's zero uncond (an SD1.x "
                         "model gets te(\"\"): pass family='SD1')")
        return Uncond(negative, 1.0)
    if schedule.zero_weight != 0.0 and schedule.start == schedule.end:
        notes.append(f"the uncond window [{schedule.start:g}, {schedule.end:g}] is empty (at most one step); "
                     "exported without it")
        return Uncond(negative, 0.0)
    return Uncond(negative, schedule.zero_weight, schedule.start, schedule.end)


def _settings_of(payload: Mapping) -> Settings:
    scripts = payload.get("alwayson_scripts") or {}
    args = next((entry.get("args") or [] for title, entry in scripts.items()
                 if title.lower() == "uncond lab" and isinstance(entry, Mapping)), [])
    return Settings.from_script_args(args) if args else Settings()


def _payload_notes(payload: Mapping, settings: Settings, rf: bool, notes: list[str]) -> None:
    """What the payload asks for that the graph does not do."""
    override = payload.get("override_settings") or {}
    if payload.get("enable_hr"):
        notes.append("the hires pass (hires fix) is not exported: in ComfyUI it is a LatentUpscale and a second "
                     "KSampler" + ("; Uncond Lab's own hires uncond settings neither" if settings.hr_mode == "own"
                                   else ""))
    for key, what in (("refiner_checkpoint", "the refiner pass"), ("init_images", "img2img's init images"),
                      ("restore_faces", "face restoration"), ("tiling", "tiling"), ("styles", "prompt styles")):
        if payload.get(key):
            notes.append(f"{what} ({key}) is not exported")
    if payload.get("subseed_strength"):
        notes.append("the variation seed (subseed_strength) is not exported")
    if int(payload.get("n_iter", 1) or 1) > 1:
        notes.append(f"n_iter {payload['n_iter']}: queue the graph that many times with other seeds")
    if int(payload.get("batch_size", 1) or 1) > 1:
        notes.append("a batch: A1111 seeds image i with seed + i, ComfyUI draws the batch from one generator; only "
                     "the first image matches")
    others = [title for title in (payload.get("alwayson_scripts") or {}) if title.lower() != "uncond lab"]
    if others:
        notes.append(f"other scripts ({', '.join(others)}) are not exported")
    if settings.compare:
        notes.append("Compare zero vs null is WebUI-only; not exported")
    unread = sorted(set(override) - set(READ_OPTIONS))
    if unread:
        notes.append(f"override_settings {', '.join(unread)} are not exported")
    wanted = comfy_sampling_options(rectified_flow=rf)
    if not settings.comfy_sampling and any(override.get(key) != value for key, value in wanted.items()):
        notes.append("the WebUI did not sample as ComfyUI does (Uncond Lab's ComfyUI sampling off, and not all of "
                     + ", ".join(f"{k}={v}" for k, v in wanted.items())
                     + " in override_settings): the graph gives ComfyUI's picture, not the WebUI's")


def _generation_values(payload: Mapping, notes: list[str]) -> dict[str, Any]:
    missing = [key for key in API_DEFAULTS if payload.get(key) is None]
    if missing:
        notes.append(f"not in the payload, A1111's API defaults used: {', '.join(missing)}")
    values = {key: API_DEFAULTS[key] if payload.get(key) is None else payload[key] for key in API_DEFAULTS}
    if not 0 <= int(values["seed"]) < 2 ** 64:
        notes.append(f"seed {values['seed']} (random in the WebUI) exported as 0")
        values["seed"] = 0
    return values


def _model_nodes(builder: PromptBuilder, payload: Mapping, settings: Settings, family: str | None, loras,
                 notes: list[str]):
    """Checkpoint → merge → LoRAs → RF on the model; → CLIP skip on the text encoders. Returns (model, clip, vae)."""
    override = payload.get("override_settings") or {}
    name = override.get("sd_model_checkpoint")
    if not name:
        notes.append("no sd_model_checkpoint in override_settings; set the checkpoint in CheckpointLoaderSimple")
    checkpoint = builder.add("CheckpointLoaderSimple", ckpt_name=file_name(name or "model", "checkpoint", notes))
    model, clip, vae = (checkpoint, 0), (checkpoint, 1), (checkpoint, 2)
    vae_name = override.get("sd_vae")
    vae_file = bool(vae_name) and vae_name not in ("None", "Automatic")
    model, clip = merge_nodes(builder, settings, family, model, clip, vae_file, notes)
    model, clip = _lora_nodes(builder, loras, model, clip, notes)
    if settings.rf:
        kind = "ModelSamplingAuraFlow" if settings.multiplier == 1.0 else "ModelSamplingSD3"
        if settings.multiplier not in (1.0, 1000.0):
            notes.append(f"RF multiplier {settings.multiplier:g}: ComfyUI's nodes have 1000 (SD3) or 1 (AuraFlow); "
                         "ModelSamplingSD3 used")
        model = (builder.add(kind, shift=settings.shift, model=model), 0)
    clip_skip = int(override.get("CLIP_stop_at_last_layers") or 1)
    if clip_skip > 1:
        clip = (builder.add("CLIPSetLastLayer", stop_at_clip_layer=-clip_skip, clip=clip), 0)
    if vae_file:
        vae = (builder.add("VAELoader", vae_name=file_name(vae_name, "VAE", notes)), 0)
    return model, clip, vae


def export_payload(payload: Mapping, family: str | None = None) -> dict[str, Any]:
    """A txt2img payload → {"prompt", "workflow", "notes"}. Raises SettingsError (a ValueError) for bad Uncond Lab
    settings in it."""
    notes: list[str] = []
    settings = _settings_of(payload)
    family = model_family(family, parse_blocks(settings.merge_blocks))
    values = _generation_values(payload, notes)
    prompt, loras = split_loras(str(payload.get("prompt") or ""), notes)
    negative, negative_loras = split_loras(str(payload.get("negative_prompt") or ""), notes)
    if negative_loras:
        notes.append("LoRA tags in the negative prompt are not exported")
    if re.search(r"[()\[\]]", prompt + negative):
        notes.append("prompt weights ('(word:1.2)', brackets) are applied differently in ComfyUI: not the same "
                     "encoding")
    builder = PromptBuilder()
    model, clip, vae = _model_nodes(builder, payload, settings, family, loras, notes)
    positive = (builder.add("CLIPTextEncode", text=prompt, clip=clip), 0)
    negative_out = uncond_nodes(builder.add, clip, _uncond(settings, negative, family, notes))
    latent = builder.add("EmptyLatentImage", width=int(values["width"]), height=int(values["height"]),
                         batch_size=int(payload.get("batch_size") or 1))
    sampler, sampler_note = export_sampler(str(values["sampler_name"]))
    scheduler, scheduler_note = export_scheduler(payload.get("scheduler"), str(values["sampler_name"]),
                                                 int(values["steps"]))
    notes.extend(note for note in (sampler_note, scheduler_note) if note)
    samples = builder.add("KSampler", seed=int(values["seed"]), steps=int(values["steps"]),
                          cfg=float(values["cfg_scale"]), sampler_name=sampler, scheduler=scheduler, denoise=1.0,
                          model=model, positive=positive, negative=negative_out, latent_image=(latent, 0))
    decoded = builder.add("VAEDecode", samples=(samples, 0), vae=vae)
    builder.add("SaveImage", filename_prefix="UncondLab", images=(decoded, 0))
    _payload_notes(payload, settings, bool(settings.rf), notes)
    return {"prompt": builder.prompt, "workflow": prompt_to_workflow(builder.prompt),
            "notes": list(dict.fromkeys(notes))}


def export_infotext(text: str, family: str | None = None) -> dict[str, Any]:
    """An A1111 infotext → {"prompt", "workflow", "notes"} (the infotext's unread parts in the notes too)."""
    payload, notes = infotext_to_payload(text)
    exported = export_payload(payload, family)
    exported["notes"] = list(dict.fromkeys(notes + exported["notes"]))
    return exported


def export_png(data: bytes, family: str | None = None) -> dict[str, Any]:
    """An A1111 PNG (its "parameters" text) → {"prompt", "workflow", "notes"}."""
    texts = png_text_chunks(data)
    if "parameters" not in texts:
        what = "a ComfyUI graph already" if {"prompt", "workflow"} & set(texts) else "no A1111 parameters"
        raise ComfyGraphError(f"the PNG has {what}; nothing to export")
    return export_infotext(texts["parameters"], family)
