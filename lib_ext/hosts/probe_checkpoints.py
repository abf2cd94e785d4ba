"""Probe a shelf of checkpoints in one run (the Probe sub-tab's checkpoint list, `"checkpoints"` in
`POST /uncond-lab/v1/probe`): each checkpoint loaded the WebUI's own way (`host.load_checkpoint`), probed with the
same settings by the ProbeService, and the checkpoint that was loaded before the run loaded again at the end,
also after a failure or an interrupt. The order, the table and the formats are lib_ext/probe_shelf.py's."""
from __future__ import annotations

import gc
import logging
import os
from typing import Any, Callable, Sequence

from modules import shared

from lib_ext.hosts import common, host
from lib_ext.hosts.probe_service import ProbeService, _variant, interrupted
from lib_ext.probe import ProbeCache, ProbeError, ProbeResult, ProbeSettings
from lib_ext.probe_shelf import (CheckpointKey, ShelfEntry, ShelfProbe, checkpoint_names, probe_shelf,
                                 progress_text, resident_mb, shelf_order)

log = logging.getLogger("uncond_lab")


def _loaded_info():
    sd_model = host.selected_model()
    return None if sd_model is None else getattr(sd_model, "sd_checkpoint_info", None)


def _loaded_file() -> str | None:
    info = _loaded_info()
    return None if info is None else info.filename


def loaded_title() -> str:
    info = _loaded_info()
    return "none" if info is None else info.title


def _entry(info) -> ShelfEntry:
    common.checkpoint_title(info)  # hashes the file once if the WebUI has not (A1111 caches it)
    return ShelfEntry(info.title, getattr(info, "shorthash", None))


def _file_identity(info) -> str:
    """The file's content for the cache: its sha256, else (with --no-hashing) path, size and time."""
    sha256 = getattr(info, "sha256", None) or getattr(info, "shorthash", None)
    if sha256:
        return sha256
    stat = os.stat(info.filename)
    return f"{info.filename}:{stat.st_size}:{stat.st_mtime_ns}"


def _options_variant() -> str:
    """What changes a probe besides the file and the settings: the encoding options and the noise schedule."""
    opts = shared.opts
    return (f"{_variant(None)};schedule={getattr(opts, 'sd_noise_schedule', '')};"
            f"quantize={getattr(opts, 'enable_quantization', '')}")


class CheckpointProbe:
    """Runs shelf probes through one ProbeService; remembers results per checkpoint file + settings, so a repeat
    loads nothing (one per WebUI session, beside the service)."""

    def __init__(self, service: ProbeService, cache_size: int = 64):
        self.service = service
        self.cache = ProbeCache(cache_size)

    def resolve(self, names: Any) -> list:
        """The WebUI's CheckpointInfo per name, before anything is loaded; an unknown name is a ProbeError
        naming it."""
        infos = []
        for name in checkpoint_names(names):
            try:
                infos.append(common.find_checkpoint(name, "checkpoints"))
            except common.MergeRequestError as error:
                raise ProbeError(str(error).replace("Uncond Lab:", "Uncond Lab probe:", 1)) from None
        return infos

    def run(self, settings: ProbeSettings, infos: Sequence,
            on_model: Callable[[int, int, ShelfEntry, float | None], None] | None = None
            ) -> tuple[ShelfProbe, dict[str, Any]]:
        """(the rows, memory figures) for the loaded model and `infos`. Call it holding the queue lock (a WebUI
        job); the model loaded before is loaded when it returns."""
        original = _loaded_info()
        if original is None:
            raise ProbeError("Uncond Lab probe: no model is loaded")
        entries = shelf_order(_entry(original), [_entry(info) for info in infos])
        by_title = {info.title: info for info in [original, *infos]}  # after _entry: hashing changes the title
        variant = _options_variant()
        failed_loads: list[str] = []
        rss_before = resident_mb()

        def probe_one(entry: ShelfEntry) -> tuple[ProbeResult, bool]:
            info = by_title[entry.title]
            key = CheckpointKey(_file_identity(info), settings, variant)
            hit = self.cache.get(key)
            if hit is not None:
                return hit, True
            if _loaded_file() != info.filename:
                common.release_merge()  # A1111: a merged generation's weights back before the switch
                try:
                    host.load_checkpoint(info)
                except BaseException:
                    failed_loads.append(info.title)
                    raise
                if _loaded_file() != info.filename:
                    failed_loads.append(info.title)
                    raise RuntimeError(f"Uncond Lab probe: {info.title} did not load (see the console)")
            result, cached = self.service.run(settings)
            if not result.interrupted:  # the levels an Interrupt left are no answer to keep
                self.cache.put(key, result)
            return result, cached

        def progress(index: int, total: int, entry: ShelfEntry, eta: float | None) -> None:
            state = shared.state
            state.job_count, state.job_no = total, index
            state.job = f"Uncond Lab probe: model {index + 1} of {total}"
            state.textinfo = progress_text(index, total, entry.title, eta)
            if on_model is not None:
                on_model(index, total, entry, eta)

        try:
            shelf = probe_shelf(entries, probe_one, interrupted=interrupted, on_model=progress)
        finally:
            self._load_again(original, bool(failed_loads))
        gc.collect()
        memory = {"rss_before_mb": rss_before, "rss_after_mb": resident_mb()}
        log.info("Uncond Lab probe: %d checkpoints, %s loaded again; resident memory %.0f -> %.0f MiB",
                 len(shelf.rows), original.title, rss_before or 0, memory["rss_after_mb"] or 0)
        return shelf, memory

    @staticmethod
    def _load_again(original, after_failure: bool) -> None:
        """The checkpoint of before the run, loaded the WebUI's way. After a failed load the model object may be
        half undone (A1111 undoes its hijack before reading the new file), so the original is then reloaded
        even when it is nominally the loaded one."""
        loaded = _loaded_file()
        if loaded == original.filename and not after_failure:
            return
        host.load_checkpoint(original, forced=loaded == original.filename)
        if _loaded_file() != original.filename:
            raise RuntimeError(f"Uncond Lab probe: could not load {original.title} again (see the console)")
