"""Glue that A1111 1.10 and reForge share: settings from script args, te(""), the per-call hook, X/Y/Z axes,
the rectified-flow decision and preflight (the installation itself differs per host), the merge's checkpoint
names and infotext."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import gradio as gr
import torch
from modules import devices, prompt_parser, scripts, sd_models, sd_samplers, sd_schedulers, sd_vae, shared

from lib_ext import adetailer
from lib_ext.comfy_sampling import comfy_sampling_options
from lib_ext.flow import (RF_SCHEDULER_LABEL, RF_SCHEDULER_NAME, GenerationFacts, RfPlan, flow_scheduler, pass_value,
                          resolve_rf, rf_problems, rf_schedule_without_rf)
from lib_ext.hosts import host
from lib_ext.hosts.webui_state import cached_null_uncond, other_script_args
from lib_ext.merge import MergeRecipe
from lib_ext.merge.keys import VAE, classify_key
from lib_ext.merge.recipe import RATIO_RANGE
from lib_ext.merge.save import default_merge_name
from lib_ext.merge.session import SOURCES_AUTO, SOURCES_CHOICES
from lib_ext.settings import INFOTEXT_KEYS, SHIFT_RANGE, MergeRequest, Settings, SettingsError
from lib_ext.uncond import Cond, UncondRun

log = logging.getLogger("uncond_lab")

RUN_ATTR = "uncond_lab_run"              # the UncondRun of the generation that `p` is
FLOW_ATTR = "uncond_lab_flow"            # the RfPlan of that generation, None when it does not sample as RF
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

def encode_null_uncond(p) -> Cond:
    """te(""): the loaded model's own encoding of the empty prompt, with the text encoder as this batch has
    it (LoRA, TI, CLIP skip, emphasis). `is_negative_prompt` stays False, so the WebUI does not zero it."""
    text = prompt_parser.SdConditioning([""], width=p.width, height=p.height)
    host.before_text_encoding(p.sd_model)
    with torch.no_grad(), devices.autocast():
        return p.sd_model.get_learned_conditioning(text)


# --- the generation --------------------------------------------------------------------------------------

def before_generation(p, script_args: Sequence[Any]) -> None:
    """before_process (before the WebUI applies `p.override_settings`): the options that make this generation
    sample as ComfyUI does, as overrides the WebUI restores afterwards; every override made restorable."""
    try:
        settings = settings_for(p, script_args)
    except SettingsError:
        settings = None  # process() refuses the generation with the message
    if settings is not None and settings.comfy_sampling:
        rf_on, _ = resolve_rf(settings.rf, checkpoint_metadata(p),
                              is_sd3=bool(getattr(p.sd_model, "is_sd3", False)))
        for key, value in comfy_sampling_options(rectified_flow=rf_on).items():
            if key in shared.opts.data_labels:  # else not an option of this WebUI (Neo has no quantization switch)
                p.override_settings[key] = value
    _make_overrides_restorable(p.override_settings)


def _make_overrides_restorable(override_settings: dict) -> None:
    """The WebUIs restore after a generation only the overridden options that are in opts.data (process_images,
    A1111 and Neo alike): one never changed from its default would keep the override's value (an imported
    ComfyUI payload's CLIP skip 1 on Neo, whose default is 2). Its default value goes there first."""
    opts = shared.opts
    for key in override_settings:
        if key in opts.data_labels:
            opts.data.setdefault(key, opts.get_default(key))


def start_run(p, script_args: Sequence[Any]) -> UncondRun | None:
    """Bring the weights to this generation's merge (or back to the originals), decide its rectified flow, and
    attach a fresh UncondRun (and RfPlan) to `p`, dropping any copied from another `p`. The three are
    independent: no UncondRun when the uncond control is off, whatever the merge and RF do."""
    setattr(p, RUN_ATTR, None)
    setattr(p, FLOW_ATTR, None)
    host.sync_webui_caches(p)
    for key in (*INFOTEXT_KEYS, STATS_KEY, NOTE_KEY):
        p.extra_generation_params.pop(key, None)  # X/Y/Z cells and compare variants share this dict
    try:
        settings = settings_for(p, script_args)
    except SettingsError as error:
        fail_generation(p, error)
        return None
    if not start_merge(p, settings):
        return None
    ok, plan = start_flow(p, settings)
    if not ok:
        return None
    has_hires = bool(getattr(p, "enable_hr", False))
    p.extra_generation_params.update(settings.infotext(has_hires=has_hires, rf_ran=plan is not None))
    notes = flow_threshold_notes(p) if plan is not None else []
    if plan is not None or settings.enabled:
        note = adetailer.missing_passes_note(other_script_args(p, adetailer.NAME), shared.opts.data)
        notes += [note] if note else []
    run = None
    if settings.enabled:
        pooled_width = host.text_pooled_width(p.sd_model) if host.is_dict_cond_model(p.sd_model) else 0
        run = UncondRun(settings, pooled_width)
        setattr(p, RUN_ATTR, run)
        if settings.controls_uncond(has_hires):
            notes += skipped_uncond_notes(p)
    if notes:
        log.warning("Uncond Lab: %s", "; ".join(notes))
        p.extra_generation_params[NOTE_KEY] = "; ".join(notes)
    return run


def current_run(p) -> UncondRun | None:
    return getattr(p, RUN_ATTR, None) if p is not None else None


def begin_batch(p) -> None:
    """Once per batch, after LoRA/TI activation and before the WebUI encodes its conds."""
    host.merge_batch(p)  # first: te("") below must see the merged text encoders
    run = current_run(p)
    if run is None:
        return
    if not host.is_dict_cond_model(p.sd_model):  # SD1/SD2: the WebUIs never zero, te("") is never needed
        run.begin_batch(None)
        return
    started = time.perf_counter()
    null_uncond, encoded = cached_null_uncond(p, encode_null_uncond)
    run.begin_batch(null_uncond, time.perf_counter() - started, encoded=encoded)


def begin_pass(p, x: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> None:
    """Before each sampler run (first pass, hires pass, each img2img batch), with that run's latent and noise."""
    host.merge_sampling(p)
    run = current_run(p)
    if run is not None:
        run.begin_pass(hires=bool(getattr(p, "is_hr_pass", False)))
    plan = getattr(p, FLOW_ATTR, None)
    if plan is not None:
        install_flow(p, plan, x, noise)


def end_run(p) -> None:
    setattr(p, RUN_ATTR, None)
    setattr(p, FLOW_ATTR, None)
    host.merge_done(p)


# --- merge: checkpoint names, the recipe of this generation, infotext ------------------------------------

MERGE_ATTR = "uncond_lab_merge"  # the ResolvedMerge of the generation that `p` is (None: no merge)
MERGE_INFOTEXT_KEYS = ("Merge model A", "Merge model B", "Merge method", "Merge model C", "Merge ratio",
                       "Merge TE ratio", "Merge blocks")
MERGE_AXIS_SETTINGS = frozenset({"merge_model", "merge_ratio", "merge_te_ratio", "merge_blocks"})  # axes override


class MergeRequestError(ValueError):
    """A merge cannot be done with these checkpoints; the message names the checkpoint and says why."""


@dataclass(frozen=True)
class ResolvedMerge:
    """A generation's merge bound to the loaded model: the recipe (A = the loaded checkpoint's file, this
    generation's ratios), what identifies the merge's inputs, and the checkpoints' titles for infotext."""
    recipe: MergeRecipe
    key: tuple
    titles: dict


def find_checkpoint(name: str, field: str):
    """The WebUI's CheckpointInfo for a name as it lists checkpoints (title, file name, name without the
    [hash]); exact matches only: a near miss must not merge the wrong model."""
    info = sd_models.checkpoint_aliases.get(name)
    if info is None:
        bare = sd_models.re_strip_checksum.sub("", name)
        info = sd_models.checkpoint_aliases.get(bare) or next(
            (i for i in sd_models.checkpoints_list.values() if sd_models.re_strip_checksum.sub("", i.title) == bare),
            None)
    if info is None:
        known = ", ".join(list(sd_models.checkpoints_list)[:5])
        raise MergeRequestError(f"Uncond Lab: '{field}' names no known checkpoint: {name!r:.200}; "
                                f"use a name from the checkpoint list (e.g. {known})")
    return info


def checkpoint_title(info) -> str:
    """The title with the short hash ("name.safetensors [0123456789]"); hashing once if the WebUI has not yet
    (A1111 caches it; None with --no-hashing)."""
    if getattr(info, "shorthash", None) is None and not getattr(shared.cmd_opts, "no_hashing", False):
        try:
            info.calculate_shorthash()
        except Exception as error:  # a hash is only for infotext: never fail a generation over it
            log.warning("Uncond Lab: could not hash %s: %s", info.filename, error)
    return info.title


_VAE_CACHE: dict[tuple, bool] = {}


def has_vae(path: str) -> bool:
    """Whether a checkpoint file has VAE (first_stage_model.*) weights (header only, cached per file version)."""
    from safetensors import safe_open
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _VAE_CACHE:
        with safe_open(path, framework="pt", device="cpu") as file:
            _VAE_CACHE[key] = any(classify_key(k) == VAE for k in file.keys())
    return _VAE_CACHE[key]


def resolve_merge(request: MergeRequest, sd_model) -> ResolvedMerge:
    """This generation's recipe. The VAE follows the UNet ratio when the checkpoint's own VAE is in use (then
    ratio 1 is model B as the WebUI loads it, VAE included); a VAE the user picked (Settings → SD VAE) stays."""
    info_a = sd_model.sd_checkpoint_info
    info_b = find_checkpoint(request.model_b, "merge_model")
    info_c = find_checkpoint(request.model_c, "merge_model_c") if request.model_c else None
    paths = [i.filename for i in (info_a, info_b, info_c) if i is not None]
    include_vae = sd_vae.loaded_vae_file is None and all(has_vae(path) for path in paths
                                                         if path.lower().endswith(".safetensors"))
    recipe = MergeRecipe(request.method, info_a.filename, info_b.filename,
                         info_c.filename if info_c else None, unet_ratio=request.unet_ratio,
                         te_ratio=request.te_ratio, include_vae=include_vae, blocks=request.blocks)
    key = (id(sd_model), info_a.filename, recipe.method, recipe.model_b, recipe.model_c, include_vae)
    titles = {"A": checkpoint_title(info_a), "B": checkpoint_title(info_b)}
    if info_c is not None:
        titles["C"] = checkpoint_title(info_c)
    return ResolvedMerge(recipe, key, titles)


def start_merge(p, settings: Settings) -> bool:
    """Make the weights hold this generation's merge, or the originals (see lib_ext/merge/session.py for why
    that happens here, lazily); record the recipe in infotext. False when the generation has been failed."""
    setattr(p, MERGE_ATTR, None)
    for key in MERGE_INFOTEXT_KEYS:  # X/Y/Z cells share one extra_generation_params dict
        p.extra_generation_params.pop(key, None)
    request = settings.merge_request()
    if request is None and MERGE_AXIS_SETTINGS & set(getattr(p, OVERRIDES_ATTR, None) or {}):
        # An X/Y/Z cell of a merge grid without a partner (the "None" column, or no partner in the accordion):
        # model A as the grid's reference, its infotext saying that no merge was applied (and pasting it too).
        p.extra_generation_params["Merge model B"] = "None"
    try:
        resolved = None if request is None else resolve_merge(request, p.sd_model)
        host.sync_merge(p, resolved)
    except Exception as error:  # anything: a swallowed error would pass model A's picture off as the merge
        message = str(error) if str(error).startswith("Uncond Lab") else f"Uncond Lab: merge failed: {error}"
        log.error("%s", message)
        fail_generation(p, MergeRequestError(message))
        return False
    if resolved is None:
        return True
    setattr(p, MERGE_ATTR, resolved)
    recipe = resolved.recipe
    text = {"Merge model A": resolved.titles["A"]}
    text.update(Settings.from_dict({**settings.as_dict(), "merge_model": resolved.titles["B"],
                                    "merge_model_c": resolved.titles.get("C", "")}).merge_infotext())
    p.extra_generation_params.update(text)
    # "Model hash" stays A's (pasting loads the base); the name says what made the picture.
    p.sd_model_name = default_merge_name(recipe)
    return True


def release_merge() -> None:
    """Restore the weights and free the merge's copies now (end of a sweep, UI reload)."""
    host.release_merge()


class _OutsideGeneration:
    """The attributes of a `p` that the merge glue reads, for work on the model between generations (the probe)."""

    def __init__(self, sd_model):
        self.sd_model = sd_model
        self.extra_generation_params: dict[str, Any] = {}


@contextlib.contextmanager
def merge_outside_generation(sd_model, request: MergeRequest | None):
    """The loaded model holding `request`'s merge, or its own weights (None; a merged generation on A1111 leaves
    its merge in place until the next one), as a generation's sampling would see it. Yields the ResolvedMerge.
    The copies stay for the next call (a ratio sweep reuses them): call release_merge() when done."""
    p = _OutsideGeneration(sd_model)
    try:
        resolved = None if request is None else resolve_merge(request, sd_model)
        host.sync_merge(p, resolved)
        setattr(p, MERGE_ATTR, resolved)
        host.merge_batch(p)
        host.merge_sampling(p)
    except Exception as error:  # incompatible models, an unreadable file: the caller reports it as bad input
        host.merge_done(p)
        raise MergeRequestError(str(error) if str(error).startswith("Uncond Lab")
                                else f"Uncond Lab: merge failed: {error}") from error
    try:
        yield resolved
    finally:
        host.merge_done(p)


def merge_identity(resolved: ResolvedMerge | None) -> str | None:
    """What names a merge for a cache: the inputs by their titles (short hashes), the method and the ratios."""
    if resolved is None:
        return None
    recipe = resolved.recipe
    return json.dumps({"models": resolved.titles, "method": recipe.method, "ratios": recipe.group_ratios(),
                       "vae": recipe.include_vae, "blocks": recipe.blocks}, sort_keys=True)


def merge_model_loaded(sd_model) -> None:
    """on_model_loaded: weights were loaded (a checkpoint, a VAE); the merge's copies describe the old ones."""
    host.merge_model_loaded(sd_model)


def add_options() -> None:
    shared.opts.add_option(STATS_OPTION, shared.OptionInfo(
        False, "Write Uncond Lab's cost to the infotext (text-encoder calls, hook time per call)",
        section=("uncond_lab", "Uncond Lab")).info("for bench/uncond_hook.py"))
    if host.MERGE_SOURCES_OPTION:
        shared.opts.add_option(host.MERGE_SOURCES_OPTION, shared.OptionInfo(
            SOURCES_AUTO, "Merges: where models A and B are read from when the merge ratio changes", gr.Radio,
            {"choices": SOURCES_CHOICES}, section=("uncond_lab", "Uncond Lab")).info(
            "Automatic = resident copies on the GPU when it has room for them, else the memory-mapped checkpoint "
            "files (no copies in RAM; the OS caches the files while memory allows)"))


def write_stats(p) -> None:
    """After each batch's sampling, before its infotext is written."""
    run = current_run(p)
    if run is not None and getattr(shared.opts, STATS_OPTION, False):
        p.extra_generation_params[STATS_KEY] = run.stats()


def on_cfg_denoiser(params) -> None:
    """Every denoiser call: swap in the scheduled uncond. A no-op unless this `p` has an UncondRun."""
    denoiser = getattr(params, "denoiser", None)
    run = current_run(getattr(denoiser, "p", None))
    if run is None or params.text_uncond is None:  # Neo passes no uncond at all at CFG 1
        return
    params.text_uncond = run.uncond_for_call(
        params.text_uncond, host.current_sigma(params), lambda percent: host.percent_to_sigma(denoiser, percent))


def skipped_uncond_notes(p) -> list[str]:
    """Settings under which the WebUI computes no uncond on some steps, so the choice does nothing there."""
    notes = []
    if getattr(p, "cfg_scale", None) == 1 and not host.uses_uncond_at_cfg1(p, p.sampler_name):
        notes.append("CFG scale is 1: " + (f"{host.WEBUI_NAME} computes no uncond at all"
                                           if host.SKIPS_UNCOND_AT_CFG1 else "the uncond does not change the result"))
    if getattr(shared.opts, "s_min_uncond", 0) > 0:
        notes.append("negative guidance minimum sigma (NGMS) skips the uncond on low-sigma steps")
    if getattr(shared.opts, "skip_early_cond", 0) > 0:
        notes.append("'Skip early CFG' skips the uncond on the first steps")
    hires_sampler = pass_value(getattr(p, "hr_sampler_name", None)) or p.sampler_name
    if (getattr(p, "enable_hr", False) and getattr(p, "hr_cfg", None) == 1 and host.SKIPS_UNCOND_AT_CFG1
            and not host.uses_uncond_at_cfg1(p, hires_sampler)):
        notes.append(f"the hires pass runs at CFG 1 ({host.WEBUI_NAME}'s hires CFG), so it computes no uncond")
    return notes


# --- rectified flow ----------------------------------------------------------------------------------------

def ngms_threshold(p) -> float:
    """The negative guidance minimum sigma of this generation (p's, which A1111 and Neo use; else the option)."""
    value = getattr(p, "s_min_uncond", None)
    return float(value if value is not None else getattr(shared.opts, "s_min_uncond", 0.0) or 0.0)


def flow_threshold_notes(p) -> list[str]:
    """WebUI thresholds in eps sigma units that RF's sigmas (1 down to 0) meet differently, said, not changed."""
    ngms = ngms_threshold(p)
    if ngms <= 0:
        return []
    every = "every step" if getattr(shared.opts, "s_min_uncond_all", False) else "every other step"
    where = f"on {every}" if ngms >= 1 else f"on {every} below sigma {ngms:g}"
    # The eps sigma s is a noise-to-signal ratio; the flow sigma with that ratio is t = s / (1 + s).
    return [f"NGMS {ngms:g} is compared with RF's sigmas (1 down to 0), so it skips the uncond {where}; the "
            f"flow sigma matching eps sigma {ngms:g} is {ngms / (1 + ngms):.3g}"]

# Decided once per generation in process() (the last hook that can stop it with a message); installed per
# sampler run in process_before_every_sampling on per-run objects only (host.install_flow), so nothing global
# is left to undo after an error or an interrupt.

def checkpoint_metadata(p) -> dict | None:
    """The loaded checkpoint's safetensors `__metadata__`, read from the file's header (a few KB).

    Not `CheckpointInfo.metadata`: reForge's memory cleanup on every checkpoint switch strips that cache to
    'ss_sd_model_name' for every checkpoint (modules/sd_models.py force_memory_deallocation)."""
    info = getattr(p.sd_model, "sd_checkpoint_info", None)
    if info is None or not getattr(info, "is_safetensors", False):
        return None
    try:
        return sd_models.read_metadata_from_safetensors(info.filename)
    except Exception as error:  # noqa: BLE001  (an unreadable header declares nothing; say so)
        log.warning("Uncond Lab: could not read the metadata of %s: %s", info.filename, error)
        return None


def pass_schedulers(p) -> list[str | None]:
    """The schedule types of the first pass and, when a hires pass runs, of that pass (None = the first's)."""
    names = [getattr(p, "scheduler", None)]
    if getattr(p, "enable_hr", False):
        names.append(pass_value(getattr(p, "hr_scheduler", None)))
    return names


def refuse_rf_schedule_without_rf(p) -> bool:
    message = rf_schedule_without_rf(pass_schedulers(p))
    if message:
        fail_generation(p, ValueError(message))
    return message is not None


def generation_facts(p) -> GenerationFacts:
    """What RF needs to know about this generation, read from `p` and the options (hosts add their own)."""
    opts = shared.opts
    hires = bool(getattr(p, "enable_hr", False))
    first, second = pass_schedulers(p) + ([None] if not hires else [])
    hires_checkpoint = pass_value(getattr(p, "hr_checkpoint_name", None)) if hires else None
    current = getattr(p.sd_model, "sd_checkpoint_info", None)
    if hires_checkpoint and current is not None and hires_checkpoint in (current.title, current.name,
                                                                         current.model_name, current.short_title):
        hires_checkpoint = None
    refiner = getattr(p, "refiner_checkpoint_info", None)
    switch_at = getattr(p, "refiner_switch_at", None)
    hires_sampler = (pass_value(getattr(p, "hr_sampler_name", None)) or p.sampler_name) if hires else None
    samplers = [p.sampler_name] + ([hires_sampler] if hires_sampler else [])
    return GenerationFacts(
        sampler=p.sampler_name,
        scheduler=first,
        hires_sampler=hires_sampler,
        hires_scheduler=second,
        noises_a_latent=hires or hasattr(p, "init_images"),
        available_samplers=tuple(s.name for s in sd_samplers.all_samplers),
        sgm_noise_multiplier=bool(getattr(opts, "sgm_noise_multiplier", False)),
        zero_terminal_snr=host.zero_terminal_snr(p),
        img2img_extra_noise=float(getattr(opts, "img2img_extra_noise", 0.0) or 0.0),
        sigma_churn={name: host.sigma_churn(p, name) for name in samplers},
        is_sd3=bool(getattr(p.sd_model, "is_sd3", False)),
        refiner=refiner.short_title if refiner is not None and (switch_at is None or switch_at < 1) else None,
        hires_checkpoint=hires_checkpoint,
        competing_model_sampling=host.competing_model_sampling(p),
    )


def start_flow(p, settings: Settings) -> tuple[bool, RfPlan | None]:
    """(may the generation go on?, its RfPlan or None). Refuses with a message where RF cannot be right.

    Independent of the uncond switch: RF runs when asked for (`rf` true) or, under "Model default", when the
    checkpoint declares a flow objective. Advanced Model Sampling's leftovers are cleaned up only when Uncond Lab
    is in use for this generation (uncond switch on, or RF running)."""
    rf_on, source = resolve_rf(settings.rf, checkpoint_metadata(p), is_sd3=bool(getattr(p.sd_model, "is_sd3", False)))
    competing = host.competing_model_sampling(p)
    if rf_on and source == "metadata" and competing:
        # An implicit default gives way to what the user switched on for this generation.
        log.warning("Uncond Lab: %s is enabled, so it decides the model sampling; the checkpoint's declared "
                    "flow objective (Prediction: Model default) is not applied", competing)
        rf_on = False
    if settings.enabled or rf_on:
        host.clean_leftovers(p)
    if not rf_on:
        return not refuse_rf_schedule_without_rf(p), None
    problems = rf_problems(generation_facts(p))
    if problems:
        fail_generation(p, ValueError(" ".join(problems)))
        return False, None
    plan = RfPlan(settings.shift, settings.multiplier, source)
    setattr(p, FLOW_ATTR, plan)
    return True, plan


def install_flow(p, plan: RfPlan, x: torch.Tensor | None, noise: torch.Tensor | None) -> None:
    """The host's installation for this sampler run. Hook exceptions are only logged by the WebUIs, and a half
    installed flow would sample garbage quietly; so a failure makes the sampler itself fail, with the reason."""
    try:
        host.install_flow(p, plan, x, noise)
    except Exception as error:  # noqa: BLE001  (re-raised by the sampler, where the WebUI does not swallow it)
        log.exception("Uncond Lab: rectified flow could not be installed")
        message = f"Uncond Lab RF: rectified flow could not be installed for this sampler run: {error!r}"

        def refuse_to_sample(*args, **kwargs):
            raise RuntimeError(message)

        p.sampler.func = refuse_to_sample


def register_rf_scheduler() -> None:
    """Put the RF schedule into the WebUI's 'Schedule type' list (A1111 and reForge share `sd_schedulers`).

    At script import, before the UI builds its dropdowns; scripts are imported again on every UI reload, so an
    entry already there is replaced, not duplicated."""
    unregister_rf_scheduler()
    scheduler = sd_schedulers.Scheduler(RF_SCHEDULER_NAME, RF_SCHEDULER_LABEL, flow_scheduler, need_inner_model=True)
    sd_schedulers.schedulers.append(scheduler)
    sd_schedulers.schedulers_map[scheduler.name] = sd_schedulers.schedulers_map[scheduler.label] = scheduler


def unregister_rf_scheduler() -> None:
    sd_schedulers.schedulers[:] = [s for s in sd_schedulers.schedulers if s.name != RF_SCHEDULER_NAME]
    for key in (RF_SCHEDULER_NAME, RF_SCHEDULER_LABEL):
        sd_schedulers.schedulers_map.pop(key, None)


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


def xyz_axes_at_import() -> bool:
    """Whether to register the axes when our script is imported rather than in `on_before_ui`.

    A server started with --nowebui builds the X/Y/Z script's axis list for the API (its Api object builds the
    UI's scripts) before it calls `on_before_ui`, so only axes registered by then exist; our script is imported
    after the WebUI's own scripts/ (xyz_grid.py), so the module is there. With the UI, `on_before_ui` keeps the
    order of earlier versions: after the axes other extensions (reForge's built-in ones) add there."""
    return bool(getattr(shared.cmd_opts, "nowebui", False))


def fraction_axis(xyz, label: str, setting: str):
    """A float axis in [0, 1] that enables Uncond Lab for its cells and sets `setting`."""
    def apply(p, value, values):
        add_overrides(p, enabled=True, **{setting: value})

    def confirm(p, values):
        for value in values:
            if not 0.0 <= value <= 1.0:
                raise RuntimeError(f"Uncond Lab: {label} values must be in [0, 1], got {value}")

    return xyz.AxisOption(label, float, apply, confirm=confirm)


def rf_shift_axis(xyz):
    """A float axis that switches rectified flow on for its cells with the given shift (the uncond stays as the
    accordion has it)."""
    low, high = SHIFT_RANGE

    def apply(p, value, values):
        add_overrides(p, rf=True, shift=value)

    def confirm(p, values):
        for value in values:
            if not low < value <= high:
                raise RuntimeError(f"Uncond Lab: RF shift values must be in ({low:g}, {high:g}], got {value}")

    return xyz.AxisOption("[Uncond Lab] RF shift", float, apply, confirm=confirm)


def comfy_sampling_axis(xyz):
    """true/false: the cells sample as ComfyUI's KSampler or as the WebUI does (the options it sets are
    overrides of that cell's generation only)."""
    def apply(p, value, values):
        add_overrides(p, comfy_sampling=value)

    def parse(text):
        try:
            return Settings.from_dict({"comfy_sampling": text.strip()}).comfy_sampling
        except SettingsError as error:
            raise RuntimeError(str(error)) from None

    return xyz.AxisOption("[Uncond Lab] ComfyUI sampling", parse, apply, choices=lambda: ["true", "false"])


def uncond_axes(xyz) -> list:
    return [
        fraction_axis(xyz, "[Uncond Lab] Zero weight", "zero_weight"),
        fraction_axis(xyz, "[Uncond Lab] Start", "start"),
        fraction_axis(xyz, "[Uncond Lab] End", "end"),
        rf_shift_axis(xyz),
        comfy_sampling_axis(xyz),
    ]


# Costs: the X/Y/Z plot runs its costliest axis outermost ("Checkpoint name" is 1.0, "VAE" 0.7). A partner
# change reads a checkpoint, a ratio change is one pass over the weights: so partner, then ratio, outermost.
# A block change rewrites the blocks it names (often one): cheaper than a ratio change.
MERGE_PARTNER_COST, MERGE_RATIO_COST, MERGE_BLOCKS_COST, MERGE_TE_RATIO_COST = 0.95, 0.9, 0.87, 0.85


def merge_ratio_axis(xyz, label: str, setting: str, cost: float):
    def apply(p, value, values):
        add_overrides(p, **{setting: value})

    def confirm(p, values):
        low, high = RATIO_RANGE
        for value in values:
            if not low <= value <= high:
                raise RuntimeError(f"Uncond Lab: {label} values must be in [{low:g}, {high:g}], got {value}")

    return xyz.AxisOption(label, float, apply, confirm=confirm, cost=cost)


def merge_partner_axis(xyz):
    label = "[Uncond Lab] Merge partner"

    def apply(p, value, values):
        add_overrides(p, merge_model="" if value in ("None", "none", "") else value)

    def confirm(p, values):
        for value in values:
            if value not in ("None", "none", ""):
                find_checkpoint(value, "merge_model")

    def format_value(p, option, value):
        return f"Merge partner: {sd_models.re_strip_checksum.sub('', str(value))}"

    return xyz.AxisOption(label, str, apply, format_value=format_value, confirm=confirm, cost=MERGE_PARTNER_COST,
                          choices=lambda: ["None", *sd_models.checkpoint_tiles()])


def merge_blocks_axis(xyz):
    """Values: presets or assignment strings, quoted where they contain commas ("IN04=0", "IN04=1" sweeps one
    block; the plot splits its text as CSV); "flat" or "none" = the plain ratio."""
    label = "[Uncond Lab] Merge blocks"

    def apply(p, value, values):
        add_overrides(p, merge_blocks=value)

    def confirm(p, values):
        for value in values:
            try:
                Settings.from_dict({"merge_blocks": value})
            except SettingsError as error:
                raise RuntimeError(f"Uncond Lab: {label} value {value!r:.200}: {error}") from None

    def format_value(p, option, value):
        return f"Merge blocks: {value}"

    # No `choices`: a dropdown would hold the presets only, and assignments are the point (presets: README).
    return xyz.AxisOption(label, str, apply, format_value=format_value, confirm=confirm, cost=MERGE_BLOCKS_COST)


def merge_axes(xyz) -> list:
    return [
        merge_ratio_axis(xyz, "[Uncond Lab] Merge ratio", "merge_ratio", MERGE_RATIO_COST),
        merge_ratio_axis(xyz, "[Uncond Lab] Merge TE ratio", "merge_te_ratio", MERGE_TE_RATIO_COST),
        merge_partner_axis(xyz),
        merge_blocks_axis(xyz),
    ]


def all_axes(xyz) -> list:
    return [*uncond_axes(xyz), *merge_axes(xyz)]
