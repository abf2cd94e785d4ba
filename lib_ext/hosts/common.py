"""Glue that A1111 1.10 and reForge share: settings from script args, te(""), the per-call hook, X/Y/Z axes."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence

import torch
from modules import devices, prompt_parser, scripts, shared

from lib_ext.hosts import host
from lib_ext.settings import INFOTEXT_KEYS, Settings, SettingsError
from lib_ext.uncond import Cond, UncondRun

log = logging.getLogger("uncond_lab")

RUN_ATTR = "uncond_lab_run"              # the UncondRun of the generation that `p` is
OVERRIDES_ATTR = "uncond_lab_overrides"  # settings an X/Y/Z axis (or the tab) put on `p`
STATS_OPTION = "uncond_lab_stats"        # a WebUI setting: write what a generation cost us to its infotext
STATS_KEY = "Uncond Lab stats"
NOTE_KEY = "Uncond Lab note"             # infotext: where this generation's uncond choice has no effect


# --- settings --------------------------------------------------------------------------------------------

def settings_for(p, script_args: Sequence[Any]) -> Settings:
    """The validated settings of this generation: the UI/API args, then any X/Y/Z overrides on `p`."""
    settings = Settings.from_script_args(script_args)
    overrides = getattr(p, OVERRIDES_ATTR, None)
    return settings.with_overrides(overrides) if overrides else settings


def fail_generation(p, error: Exception) -> None:
    """Stop this generation with `error` shown to the user (HTTP 422 for API callers).

    Both WebUIs catch and only log exceptions raised in script hooks and callbacks, and the generation goes on.
    So the error is raised where processing does not catch it: when the first batch builds its conds, before
    any sampling.
    """
    if getattr(p, "is_api", False):
        from fastapi import HTTPException
        error = HTTPException(status_code=422, detail=str(error))

    def raise_error(*args, **kwargs):
        raise error

    p.setup_conds = raise_error


def add_overrides(p, **values: Any) -> None:
    """Record settings for `p` only. A new dict each time: X/Y/Z cells are shallow copies sharing attributes."""
    setattr(p, OVERRIDES_ATTR, {**(getattr(p, OVERRIDES_ATTR, None) or {}), **values})


# --- te("") and the SDXL vector layout -------------------------------------------------------------------

def is_dict_cond_model(sd_model) -> bool:
    """SDXL-family models take {"crossattn", "vector"} conds; the WebUIs zero their empty negatives."""
    return getattr(sd_model, "conditioner", None) is not None


def text_pooled_width(sd_model) -> int:
    """Width of the pooled text part at the start of SDXL's `vector` (1280 for SDXL base and refiner).

    The conditioner concatenates its embedders' 2-D outputs in order; the text embedders come first and only
    those with a text projection contribute (their pooled output). A1111 wraps the OpenCLIP embedder as
    `.wrapped.model.text_projection`, reForge as `.wrapped.text_projection`.
    """
    width = 0
    for embedder in getattr(sd_model.conditioner, "embedders", []):
        if getattr(embedder, "input_key", None) != "txt":
            continue
        wrapped = getattr(embedder, "wrapped", embedder)
        projection = getattr(wrapped, "text_projection", None)
        if projection is None:
            projection = getattr(getattr(wrapped, "model", None), "text_projection", None)
        if projection is not None:
            width += int(projection.shape[-1])
    return width


def encode_null_uncond(p) -> Cond:
    """te(""): the loaded model's own encoding of the empty prompt, with the text encoder as this batch has
    it (LoRA, TI, CLIP skip, emphasis). `is_negative_prompt` stays False, so the WebUI does not zero it."""
    text = prompt_parser.SdConditioning([""], width=p.width, height=p.height)
    with torch.no_grad(), devices.autocast():
        return p.sd_model.get_learned_conditioning(text)


# --- the generation --------------------------------------------------------------------------------------

def start_run(p, script_args: Sequence[Any]) -> UncondRun | None:
    """Attach a fresh UncondRun to `p` (dropping any copied from another `p`), or none when disabled."""
    setattr(p, RUN_ATTR, None)
    for key in (*INFOTEXT_KEYS, STATS_KEY, NOTE_KEY):
        p.extra_generation_params.pop(key, None)  # X/Y/Z cells and compare variants share this dict
    try:
        settings = settings_for(p, script_args)
    except SettingsError as error:
        fail_generation(p, error)
        return None
    if not settings.enabled:
        return None
    pooled_width = text_pooled_width(p.sd_model) if is_dict_cond_model(p.sd_model) else 0
    run = UncondRun(settings, pooled_width)
    setattr(p, RUN_ATTR, run)
    p.extra_generation_params.update(settings.infotext(has_hires=bool(getattr(p, "enable_hr", False))))
    notes = skipped_uncond_notes(p)
    if notes:
        log.warning("Uncond Lab: %s", "; ".join(notes))
        p.extra_generation_params[NOTE_KEY] = "; ".join(notes)
    return run


def current_run(p) -> UncondRun | None:
    return getattr(p, RUN_ATTR, None) if p is not None else None


def begin_batch(p) -> None:
    """Once per batch, after LoRA/TI activation and before the WebUI encodes its conds."""
    run = current_run(p)
    if run is None:
        return
    if not is_dict_cond_model(p.sd_model):  # SD1/SD2: the WebUIs never zero, te("") is never needed
        run.begin_batch(None)
        return
    started = time.perf_counter()
    null_uncond = encode_null_uncond(p)
    run.begin_batch(null_uncond, time.perf_counter() - started)


def begin_pass(p) -> None:
    run = current_run(p)
    if run is not None:
        run.begin_pass(hires=bool(getattr(p, "is_hr_pass", False)))


def end_run(p) -> None:
    setattr(p, RUN_ATTR, None)


def add_options() -> None:
    shared.opts.add_option(STATS_OPTION, shared.OptionInfo(
        False, "Write Uncond Lab's cost to the infotext (text-encoder calls, hook time per call)",
        section=("uncond_lab", "Uncond Lab")).info("for bench/uncond_hook.py"))


def write_stats(p) -> None:
    """After each batch's sampling, before its infotext is written."""
    run = current_run(p)
    if run is not None and getattr(shared.opts, STATS_OPTION, False):
        p.extra_generation_params[STATS_KEY] = run.stats()


def on_cfg_denoiser(params) -> None:
    """Every denoiser call: swap in the scheduled uncond. A no-op unless this `p` has an UncondRun."""
    denoiser = getattr(params, "denoiser", None)
    run = current_run(getattr(denoiser, "p", None))
    if run is None:
        return
    params.text_uncond = run.uncond_for_call(
        params.text_uncond, host.current_sigma(params), lambda percent: host.percent_to_sigma(denoiser, percent))


def skipped_uncond_notes(p) -> list[str]:
    """Settings under which the WebUI computes no uncond on some steps, so the choice does nothing there."""
    notes = []
    if getattr(p, "cfg_scale", None) == 1:
        notes.append("CFG scale is 1: " + ("reForge computes no uncond at all" if host.SKIPS_UNCOND_AT_CFG1
                                           else "the uncond does not change the result"))
    if getattr(shared.opts, "s_min_uncond", 0) > 0:
        notes.append("negative guidance minimum sigma (NGMS) skips the uncond on low-sigma steps")
    if getattr(shared.opts, "skip_early_cond", 0) > 0:
        notes.append("'Skip early CFG' skips the uncond on the first steps")
    if getattr(p, "enable_hr", False) and getattr(p, "hr_cfg", None) == 1 and host.SKIPS_UNCOND_AT_CFG1:
        notes.append("the hires pass runs at CFG 1 (reForge's hires CFG), so it computes no uncond")
    return notes


# --- X/Y/Z plot ------------------------------------------------------------------------------------------

def xyz_module():
    """The loaded built-in X/Y/Z script module (it is not importable by name)."""
    for data in scripts.scripts_data:
        if data.script_class.__module__ == "xyz_grid.py" and hasattr(data.module, "axis_options"):
            return data.module
    return None


def register_xyz_axes(make_axes: Callable[[Any], Iterable[Any]]) -> None:
    """Append our axes to the X/Y/Z plot, once per (re)loaded module: API users pick axes by index, so
    built-ins must keep theirs, and `on_before_ui` runs again after every UI reload."""
    xyz = xyz_module()
    if xyz is None:
        log.warning("Uncond Lab: the X/Y/Z plot script was not found; no axes added")
        return
    known = {option.label for option in xyz.axis_options}
    xyz.axis_options.extend(axis for axis in make_axes(xyz) if axis.label not in known)


def fraction_axis(xyz, label: str, setting: str):
    """A float axis in [0, 1] that enables Uncond Lab for its cells and sets `setting`."""
    def apply(p, value, values):
        add_overrides(p, enabled=True, **{setting: value})

    def confirm(p, values):
        for value in values:
            if not 0.0 <= value <= 1.0:
                raise RuntimeError(f"Uncond Lab: {label} values must be in [0, 1], got {value}")

    return xyz.AxisOption(label, float, apply, confirm=confirm)


def uncond_axes(xyz) -> list:
    return [
        fraction_axis(xyz, "[Uncond Lab] Zero weight", "zero_weight"),
        fraction_axis(xyz, "[Uncond Lab] Start", "start"),
        fraction_axis(xyz, "[Uncond Lab] End", "end"),
    ]
