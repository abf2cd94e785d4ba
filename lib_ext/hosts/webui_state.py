"""WebUI state that A1111 1.10 and reForge keep alike, for the host modules and the routes: the cached conds, the
job lock, other scripts' arguments. (Not in common.py: the host modules import this, and common imports them.)"""
from __future__ import annotations

import contextlib

from modules import call_queue, processing, shared

# The WebUI's own caches, and ours of te("") beside them: [key, cond] lists on the processing class, so that
# dropping them (the text encoders' weights changed, which their key ignores) drops ours too.
NULL_CACHE_NAME = "uncond_lab_cached_null"
COND_CACHE_NAMES = ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc", NULL_CACHE_NAME)


def drop_cached_conds(p=None) -> None:
    """Drop the WebUI's cached conds (their key ignores weights, A processing.py:440-458) after the text encoders
    changed. The caches are class-level lists shared by every `p`; a `p` may hold an older list."""
    owners = [processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img]
    if p is not None:
        owners.append(p)
    for owner in owners:
        for name in COND_CACHE_NAMES:
            cache = getattr(owner, name, None)
            if isinstance(cache, list) and cache:
                cache[0] = None


def cached_null_uncond(p, encode):
    """(te(""), whether it was encoded now): the last batch's te("") when its key is this batch's, as the WebUI
    reuses its conds (A processing.py:440-458: checkpoint, CLIP skip, LoRAs and other extra networks, size,
    emphasis); else encode(p), kept for the next batch. On real-size SDXL text encoders on a CPU, encoding ""
    costs about a second per generation."""
    cache = getattr(processing.StableDiffusionProcessing, NULL_CACHE_NAME, None)
    if cache is None:
        cache = [None, None]
        setattr(processing.StableDiffusionProcessing, NULL_CACHE_NAME, cache)
    key = p.cached_params([""], 0, getattr(p, "extra_network_data", None), None)  # Neo's hires_steps has no default
    if cache[0] is not None and cache[0] == key:
        return cache[1], False
    cache[0], cache[1] = None, encode(p)  # no key until the cond is there: a failed encoding leaves no entry
    cache[0] = key
    return cache[1], True


@contextlib.contextmanager
def webui_job(job: str):
    """Work on the model as a WebUI job: never beside a generation (the queue lock), with shared.state's
    progress and interrupt."""
    with call_queue.queue_lock:
        shared.state.begin(job=job)
        try:
            yield
        finally:
            shared.state.end()


def other_script_args(p, name: str) -> list | None:
    """This generation's arguments of another AlwaysOn script, by its `name` (the WebUIs set it to the lower-cased
    title, the API's key); None when that script is not loaded."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ():
        if getattr(script, "name", None) == name:
            return list(p.script_args[script.args_from:script.args_to])
    return None
