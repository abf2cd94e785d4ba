"""A1111 infotext (a PNG's "parameters" text, the text under a picture) → its fields → a txt2img payload.

Read as A1111 1.10 reads it (modules/infotext_utils.py, parse_generation_parameters): the prompt lines, then
"Negative prompt: ..." lines, then a last line of `key: value` pairs (at least three, else it is prompt text),
values in double quotes being JSON strings, "WxH" values split into key-1 and key-2. Uncond Lab's own keys are read
by lib_ext.settings (Settings.infotext_to_ui), as pasting does.
"""
from __future__ import annotations

import json
import re
from typing import Any

from lib_ext.comfy.names import split_sampler_name
from lib_ext.settings import Settings, SettingsError

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # infotext_utils.re_param_code
_SIZE = re.compile(r"^(\d+)x(\d+)$")
SCRIPT_TITLE = "Uncond Lab"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parse_infotext(text: str) -> dict[str, str]:
    """{key: value} with "Prompt" and "Negative prompt", sizes split into "Size-1" and "Size-2"."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(last):
        value = _unquote(value)
        size = _SIZE.match(value)
        if size:
            params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
        else:
            params[key] = value
    params["Prompt"], params["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    return params


def _number(params: dict[str, str], key: str, kind: type, notes: list[str]) -> Any:
    try:
        return kind(params[key]) if kind is not int else int(float(params[key]))
    except (KeyError, ValueError):
        if key in params:
            notes.append(f"infotext {key} {params[key]!r:.40} is not a number; left out")
        return None


def infotext_to_payload(text: str) -> tuple[dict[str, Any], list[str]]:
    """(a txt2img payload with Uncond Lab's settings, notes on what the infotext holds that was not read)."""
    params, notes = parse_infotext(text), []
    payload: dict[str, Any] = {"prompt": params["Prompt"], "negative_prompt": params["Negative prompt"]}
    for key, field, kind in (("Steps", "steps", int), ("Seed", "seed", int), ("CFG scale", "cfg_scale", float),
                             ("Size-1", "width", int), ("Size-2", "height", int)):
        value = _number(params, key, kind, notes)
        if value is not None:
            payload[field] = value
    sampler, scheduler = split_sampler_name(params.get("Sampler", "Euler"), params.get("Schedule type"))
    payload.update(sampler_name=sampler, scheduler=scheduler or "Automatic", batch_size=1, n_iter=1)
    override: dict[str, Any] = {}
    checkpoint = params.get("Merge model A") or params.get("Model")
    if checkpoint:
        override["sd_model_checkpoint"] = checkpoint
    override["CLIP_stop_at_last_layers"] = _number(params, "Clip skip", int, notes) or 1
    if params.get("VAE"):
        override["sd_vae"] = params["VAE"]
    override["randn_source"] = params.get("RNG", "GPU")  # A1111: a missing RNG key means the GPU default
    override["sgm_noise_multiplier"] = params.get("SGM noise multiplier", "False") == "True"
    payload["override_settings"] = override
    if "Denoising strength" in params and ("Hires upscale" in params or "Hires resize-1" in params):
        payload.update(enable_hr=True, denoising_strength=_number(params, "Denoising strength", float, notes),
                       hr_scale=_number(params, "Hires upscale", float, notes) or 2.0,
                       hr_upscaler=params.get("Hires upscaler", "Latent"))
    try:
        settings = Settings.from_dict(Settings.infotext_to_ui(params))
    except SettingsError as error:
        notes.append(f"{error}; Uncond Lab's settings left at their defaults")
        settings = Settings()
    payload["alwayson_scripts"] = {SCRIPT_TITLE: {"args": [settings.as_dict()]}}
    return payload, notes


def _quoted(value: Any) -> str:
    """A value as A1111 writes it into infotext: JSON-quoted when it holds a separator (infotext_utils.quote)."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(ch in text for ch in ',\n:"') else text


def _checkpoint_name(title: str) -> str:
    """A checkpoint title as A1111's `Model` key holds it: the file stem, without hash or extension."""
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", title).rsplit("/", 1)[-1]
    return re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", name)


def payload_to_infotext(payload: dict[str, Any], model_hash: str | None = None) -> str:
    """The A1111 infotext of a txt2img payload (import_graph's shape): what pasting it (PNG Info → Send to
    txt2img) turns back into the same settings, Uncond Lab's included. The inverse of infotext_to_payload.
    `model_hash`: the checkpoint's short hash where the WebUI knows it (pasting switches checkpoints by it)."""
    override = payload.get("override_settings") or {}
    fields: dict[str, Any] = {"Steps": payload.get("steps", 20), "Sampler": payload.get("sampler_name", "Euler"),
                              "Schedule type": payload.get("scheduler", "Automatic"),
                              "CFG scale": payload.get("cfg_scale", 7.0), "Seed": payload.get("seed", -1),
                              "Size": f"{payload.get('width', 512)}x{payload.get('height', 512)}"}
    if model_hash:
        fields["Model hash"] = model_hash
    if override.get("sd_model_checkpoint"):
        fields["Model"] = _checkpoint_name(override["sd_model_checkpoint"])
    if override.get("sd_vae") and override["sd_vae"] not in ("None", "Automatic"):
        fields["VAE"] = override["sd_vae"]
    if (override.get("CLIP_stop_at_last_layers") or 1) > 1:
        fields["Clip skip"] = override["CLIP_stop_at_last_layers"]
    if override.get("randn_source", "GPU") != "GPU":
        fields["RNG"] = override["randn_source"]
    if override.get("sgm_noise_multiplier"):
        fields["SGM noise multiplier"] = True
    args = ((payload.get("alwayson_scripts") or {}).get(SCRIPT_TITLE) or {}).get("args") or [{}]
    settings = Settings.from_dict(args[0])
    fields.update(settings.infotext(rf_ran=settings.rf is True))
    fields.update(settings.merge_infotext())
    text = ", ".join(f"{key}: {_quoted(value)}" for key, value in fields.items())
    negative = payload.get("negative_prompt") or ""
    return f"{payload.get('prompt', '')}\n" + (f"Negative prompt: {negative}\n" if negative else "") + text
