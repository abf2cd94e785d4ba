"""The uncond-bias probe on the loaded model: shared by the tab and `POST /uncond-lab/v1/probe`."""
from __future__ import annotations

import dataclasses
import logging
import types
from typing import Any, Callable, Mapping, Sequence

import torch
from modules import devices, prompt_parser, shared

from lib_ext.flow import DEFAULT_MULTIPLIER, resolve_rf
from lib_ext.hosts import common, host
from lib_ext.hosts.webui_state import webui_job
from lib_ext.merge.sweep import SweepError, parse_ratios
from lib_ext.probe import (NonFiniteEncodingError, ProbeCache, ProbeError, ProbeKey, ProbeResult, ProbeSettings,
                           RatioSweep, probe, sweep_blocks, sweep_ratios)
from lib_ext.settings import MergeRequest, Settings, SettingsError

log = logging.getLogger("uncond_lab")

MAX_ROWS_PER_CALL = 8  # latents per UNet call: 12 rows of a 1024² SDXL latent do not fit every GPU


def _encode(sd_model, text: str, width: int, height: int):
    """One encoding (batch 1) exactly as the WebUI encodes a prompt; never zeroed (not a negative prompt)."""
    host.before_text_encoding(sd_model)
    with torch.no_grad(), devices.autocast():
        return sd_model.get_learned_conditioning(prompt_parser.SdConditioning([text], width=width, height=height))


def _variant(sd_model) -> str:
    """What besides the weights changes the encodings: CLIP skip and emphasis."""
    return f"clip_skip={shared.opts.CLIP_stop_at_last_layers};emphasis={getattr(shared.opts, 'emphasis', '')}"


class ProbeService:
    """Runs probes and remembers results per model hash + merge recipe + settings (one per WebUI session)."""

    def __init__(self, cache_size: int = 32):
        self.cache = ProbeCache(cache_size)

    def run(self, settings: ProbeSettings, merge: MergeRequest | None = None,
            on_level: Callable[[int, int], None] | None = None) -> tuple[ProbeResult, bool]:
        """(result, whether it came from the cache) for the loaded model, merged as `merge` asks. Call it holding
        the queue lock; the model's own weights are back when it returns."""
        try:
            return self._run(settings, merge, on_level)
        finally:
            if merge is not None:
                common.release_merge()

    def sweep(self, settings: ProbeSettings, merge: MergeRequest, ratios: Sequence[float],
              on_ratio: Callable[[int, int], None] | None = None,
              blocks: Sequence[str | None] | None = None) -> tuple[RatioSweep, list[bool]]:
        """The probe at each merge ratio (the text encoders follow unless `merge` fixes their ratio), or with
        `blocks` at each block-weights setting at merge's ratio; the merge's inputs are prepared once for all
        cells (a block change rewrites only that block), the weights restored at the end."""
        cached: list[bool] = []
        count = len(ratios) if blocks is None else len(blocks)

        def probe_with(request: MergeRequest) -> ProbeResult:
            if on_ratio is not None:
                on_ratio(len(cached), count)
            result, hit = self._run(settings, request, None)
            cached.append(hit)
            return result

        try:
            if blocks is not None:
                return sweep_blocks(merge.unet_ratio, blocks,
                                    lambda b: probe_with(dataclasses.replace(merge, blocks=b))), cached
            return sweep_ratios(ratios, lambda r: probe_with(dataclasses.replace(merge, unet_ratio=r))), cached
        finally:
            common.release_merge()

    def _run(self, settings: ProbeSettings, merge: MergeRequest | None,
             on_level: Callable[[int, int], None] | None) -> tuple[ProbeResult, bool]:
        sd_model = host.selected_model()
        if sd_model is None:
            raise ProbeError("Uncond Lab probe: no model is loaded")
        if getattr(sd_model, "is_sd3", False) or getattr(sd_model, "is_sdxl_inpaint", False) or \
                getattr(getattr(sd_model, "model", None), "conditioning_key", None) == "hybrid":
            raise ProbeError("Uncond Lab probe: SD3 and inpainting models are not supported")
        try:
            with common.merge_outside_generation(sd_model, merge) as resolved:
                return self._probe(sd_model, settings, common.merge_identity(resolved), on_level)
        except common.MergeRequestError as error:
            raise ProbeError(str(error)) from None

    def _probe(self, sd_model, settings: ProbeSettings, recipe: str | None,
               on_level: Callable[[int, int], None] | None) -> tuple[ProbeResult, bool]:
        with torch.no_grad():  # reForge loads the UNet here, computing a merge's weight patches
            denoise, sigma_table, noising, flow = _probed_model(sd_model, settings)
        key = ProbeKey.for_table(model_identity(sd_model), recipe, settings, sigma_table.cpu(),
                                 _variant(sd_model) + flow)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True

        height, width = settings.latent_shape[-2] * 8, settings.latent_shape[-1] * 8
        cond = _encode(sd_model, settings.prompt, width, height)
        null = _encode(sd_model, "", width, height)
        pooled_width = host.text_pooled_width(sd_model) if host.is_dict_cond_model(sd_model) else 0

        def progress(done: int, total: int) -> None:
            shared.state.sampling_step, shared.state.sampling_steps = done, total
            if on_level is not None:
                on_level(done, total)

        with torch.no_grad():
            try:
                result = probe(denoise, cond, null, sigma_table.cpu(), noising, settings, pooled_width,
                               max_rows=MAX_ROWS_PER_CALL, device=devices.device, on_level=progress,
                               should_stop=interrupted)
            except NonFiniteEncodingError as error:
                raise ProbeError(f"{error}{_emphasis_hint()}") from None
        if result.interrupted:
            log.warning("Uncond Lab probe: interrupted after %d of %d noise levels (%d UNet calls)",
                        len(result.sigmas), settings.levels, result.unet_calls)
            return result, False
        self.cache.put(key, result)
        non_finite = result.non_finite_text()
        if non_finite:
            log.warning("%s", non_finite)
        log.info("Uncond Lab probe: score %.4f in %d UNet calls (%d rows)", result.score, result.unet_calls,
                 result.unet_rows)
        return result, False


def _emphasis_hint() -> str:
    """A1111 and reForge's default emphasis "Original" rescales a cond by its old mean / new mean: 0 / 0 for text
    encoders that output exactly zero, so such a checkpoint's te("") is NaN there (generations fail too)."""
    if getattr(shared.opts, "emphasis", None) == "Original":
        return (". The emphasis setting 'Original' divides by the encoding's mean, NaN for text encoders that "
                "output zeros: set Settings > Stable Diffusion > Emphasis mode to 'No norm'")
    return ""


def _probed_model(sd_model, settings: ProbeSettings):
    """(denoise, sigma table, noising, variant) of the loaded model as a generation with Uncond Lab samples it:
    rectified flow when `settings.rf` asks for it or, left at Model default (None), when the checkpoint
    declares a flow objective (lib_ext.flow.resolve_rf), else the model's own parameterisation."""
    metadata = common.checkpoint_metadata(types.SimpleNamespace(sd_model=sd_model))
    rf_on, _ = resolve_rf(settings.rf, metadata, is_sd3=bool(getattr(sd_model, "is_sd3", False)))
    if rf_on:
        return (*host.probe_flow_model(sd_model, settings.shift, DEFAULT_MULTIPLIER),
                f";flow shift={settings.shift};multiplier={DEFAULT_MULTIPLIER}")
    return (*host.probe_model(sd_model), "")


def interrupted() -> bool:
    """The WebUI's Interrupt (its buttons, the tab's, POST /sdapi/v1/interrupt) or Skip/stop for this job."""
    state = shared.state
    return bool(state.interrupted or getattr(state, "stopping_generation", False))


def model_identity(sd_model) -> str:
    """The loaded weights' name for the cache: the short hash, else the file."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(sd_model, "sd_model_hash", None) or getattr(info, "filename", None) or str(id(sd_model))


def _model_json() -> dict[str, Any]:
    sd_model = shared.sd_model
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return {"name": getattr(info, "name_for_extra", None), "hash": getattr(sd_model, "sd_model_hash", None)}


def result_json(result: ProbeResult, cached: bool, merge: MergeRequest | None = None) -> dict[str, Any]:
    return {"model": _model_json(), "merge": None if merge is None else merge_json(merge), "cached": cached,
            **result.to_dict()}


def sweep_json(sweep: RatioSweep, cached: Sequence[bool], merge: MergeRequest) -> dict[str, Any]:
    """A ratio sweep: `columns` holds the score (and more) per ratio, `results` every full probe (a block sweep:
    per block-weights setting, `merge_blocks` lists them)."""
    swept = {"merge_ratio": list(sweep.ratios)} if sweep.blocks is None else {
        "merge_ratio": merge.unet_ratio, "merge_blocks": [b or "" for b in sweep.blocks]}
    return {"model": _model_json(), "merge": {**merge_json(merge), **swept}, "cached": list(cached),
            **sweep.to_dict()}


def merge_json(merge: MergeRequest) -> dict[str, Any]:
    return {"merge_model": merge.model_b, "merge_method": merge.method, "merge_model_c": merge.model_c,
            "merge_ratio": merge.unet_ratio, "merge_te_ratio": merge.te_ratio, "merge_blocks": merge.blocks or ""}


MERGE_KEYS = ("merge_model", "merge_method", "merge_model_c", "merge_ratio", "merge_te_ratio", "merge_blocks")


def merge_sweep_request(values: Any) -> tuple[MergeRequest | None, list[float] | None, list[str | None] | None]:
    """merge_request(), where `merge_blocks` may also be a list of block-weights settings (text; a list of numbers
    is one supermerger vector) for a sweep of them at one merge ratio. (request, ratios or None, blocks or None)."""
    if isinstance(values, Mapping) and isinstance(values.get("merge_blocks"), list) and \
            any(isinstance(v, str) or v is None for v in values["merge_blocks"]):
        settings = dict(values)
        items = settings.pop("merge_blocks")
        try:
            blocks = [Settings.from_dict({"merge_blocks": item}).merge_blocks or None for item in items]
        except SettingsError as error:
            raise ProbeError(str(error)) from None
        if not blocks:
            raise ProbeError("Uncond Lab probe: 'merge_blocks' as a list must name at least one setting")
        request, ratios = merge_request({**settings, "merge_blocks": blocks[0] or ""})
        if ratios is not None and len(ratios) > 1:
            raise ProbeError("Uncond Lab probe: sweep either 'merge_ratio' or 'merge_blocks', not both")
        return request, None, blocks
    request, ratios = merge_request(values)
    return request, ratios, None


def merge_request(values: Any) -> tuple[MergeRequest | None, list[float] | None]:
    """The probe's optional `merge` object: Uncond Lab's merge settings (as in `alwayson_scripts`), where
    `merge_ratio` may also be a list or an X/Y/Z range ("0-1 [5]") for a sweep. (request, sweep ratios or None)."""
    if values is None:
        return None, None
    if not isinstance(values, Mapping):
        raise ProbeError(f"Uncond Lab probe: 'merge' must be a JSON object of {', '.join(MERGE_KEYS)}, "
                         f"got {type(values).__name__}")
    unknown = [key for key in values if key not in MERGE_KEYS]
    if unknown:
        raise ProbeError(f"Uncond Lab probe: unknown 'merge' key(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(MERGE_KEYS)}")
    values, ratios = dict(values), None
    ratio = values.get("merge_ratio")
    try:
        if isinstance(ratio, (list, str)):
            ratios = parse_ratios(ratio if isinstance(ratio, str) else ", ".join(map(str, ratio)))
            values["merge_ratio"] = ratios[0]
        request = Settings.from_dict(values).merge_request()
    except (SettingsError, SweepError) as error:
        raise ProbeError(str(error)) from None
    if request is None:
        raise ProbeError("Uncond Lab probe: 'merge' needs 'merge_model', the checkpoint to merge with")
    return request, ratios


def register_api(app, service: ProbeService, checkpoints=None) -> None:
    """`POST /uncond-lab/v1/probe`: probe settings as JSON in, per-sigma values, score and cost out.
    With `"checkpoints": [names]`, `checkpoints` (a probe_checkpoints.CheckpointProbe) probes each of them."""
    from fastapi import Body, HTTPException

    def probe_route(body: dict = Body(default={})):  # noqa: B008 (FastAPI's idiom)
        try:
            values = dict(body)
            names = values.pop("checkpoints", None)
            merge, ratios, blocks = merge_sweep_request(values.pop("merge", None))
            settings = ProbeSettings.from_dict(values)
            shelf = None if names is None else checkpoints.resolve(names)
            if shelf is not None and merge is not None:
                raise ProbeError("Uncond Lab probe: 'checkpoints' and 'merge' cannot be combined; probe the merge "
                                 "of one model, or several checkpoints as they are")
        except (ProbeError, TypeError) as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        try:
            with webui_job("uncond_lab_probe"):
                if shelf is not None:
                    rows, memory = checkpoints.run(settings, shelf)
                    return {"model": _model_json(), **rows.to_dict(), "memory": memory}
                if ratios is not None or blocks is not None:
                    sweep, cached = service.sweep(settings, merge, ratios, blocks=blocks)
                    return sweep_json(sweep, cached, merge)
                result, cached = service.run(settings, merge)
        except ProbeError as error:
            raise HTTPException(status_code=409 if "no model" in str(error) else 422, detail=str(error)) from error
        return result_json(result, cached, merge)

    app.add_api_route("/uncond-lab/v1/probe", probe_route, methods=["POST"])
