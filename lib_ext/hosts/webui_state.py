"""WebUI state that A1111 1.10 and reForge keep alike, for the host modules and the routes: the cached conds and
the job lock. (Not in common.py: the host modules import this, and common imports them.)"""
from __future__ import annotations

import contextlib

from modules import call_queue, processing, shared

COND_CACHE_NAMES = ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc")


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
