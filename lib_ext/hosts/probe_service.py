"""The uncond-bias probe on the loaded model: shared by the tab and `POST /uncond-lab/v1/probe`."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from modules import devices, prompt_parser, shared

from lib_ext.hosts import common, host
from lib_ext.probe import ProbeCache, ProbeError, ProbeKey, ProbeResult, ProbeSettings, probe

log = logging.getLogger("uncond_lab")

MAX_ROWS_PER_CALL = 8  # latents per UNet call: 12 rows of a 1024² SDXL latent do not fit every GPU


class ProbeInterrupted(RuntimeError):
    pass


def _encode(sd_model, text: str, width: int, height: int):
    """One encoding (batch 1) exactly as the WebUI encodes a prompt; never zeroed (not a negative prompt)."""
    with torch.no_grad(), devices.autocast():
        return sd_model.get_learned_conditioning(prompt_parser.SdConditioning([text], width=width, height=height))


def _variant(sd_model) -> str:
    """What besides the weights changes the encodings: CLIP skip and emphasis."""
    return f"clip_skip={shared.opts.CLIP_stop_at_last_layers};emphasis={getattr(shared.opts, 'emphasis', '')}"


class ProbeService:
    """Runs probes and remembers results per model hash + merge recipe + settings (one per WebUI session)."""

    def __init__(self, cache_size: int = 32):
        self.cache = ProbeCache(cache_size)

    def run(self, settings: ProbeSettings, on_level: Callable[[int, int], None] | None = None
            ) -> tuple[ProbeResult, bool]:
        """(result, whether it came from the cache) for the loaded model. Call it holding the queue lock."""
        sd_model = shared.sd_model
        if sd_model is None:
            raise ProbeError("Uncond Lab probe: no model is loaded")
        if getattr(sd_model, "is_sd3", False) or getattr(sd_model, "is_sdxl_inpaint", False) or \
                getattr(getattr(sd_model, "model", None), "conditioning_key", None) == "hybrid":
            raise ProbeError("Uncond Lab probe: SD3 and inpainting models are not supported")
        denoise, sigma_table, noising = host.probe_model(sd_model)
        key = ProbeKey.for_table(model_identity(sd_model), None, settings, sigma_table.cpu(), _variant(sd_model))
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True

        height, width = settings.latent_shape[-2] * 8, settings.latent_shape[-1] * 8
        cond = _encode(sd_model, settings.prompt, width, height)
        null = _encode(sd_model, "", width, height)
        pooled_width = common.text_pooled_width(sd_model) if common.is_dict_cond_model(sd_model) else 0

        def progress(done: int, total: int) -> None:
            if shared.state.interrupted:
                raise ProbeInterrupted("Uncond Lab probe: interrupted")
            shared.state.sampling_step, shared.state.sampling_steps = done, total
            if on_level is not None:
                on_level(done, total)

        with torch.no_grad():
            result = probe(denoise, cond, null, sigma_table.cpu(), noising, settings, pooled_width,
                           max_rows=MAX_ROWS_PER_CALL, device=devices.device, on_level=progress)
        self.cache.put(key, result)
        log.info("Uncond Lab probe: score %.4f in %d UNet calls (%d rows)", result.score, result.unet_calls,
                 result.unet_rows)
        return result, False


def model_identity(sd_model) -> str:
    """The loaded weights' name for the cache: the short hash, else the file."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(sd_model, "sd_model_hash", None) or getattr(info, "filename", None) or str(id(sd_model))


def result_json(result: ProbeResult, cached: bool) -> dict[str, Any]:
    sd_model = shared.sd_model
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return {"model": {"name": getattr(info, "name_for_extra", None), "hash": getattr(sd_model, "sd_model_hash", None)},
            "recipe": None, "cached": cached, **result.to_dict()}


def register_api(app, service: ProbeService) -> None:
    """`POST /uncond-lab/v1/probe`: probe settings as JSON in, per-sigma values, score and cost out."""
    from fastapi import Body, HTTPException
    from modules.call_queue import queue_lock

    def probe_route(body: dict = Body(default={})):  # noqa: B008 (FastAPI's idiom)
        try:
            settings = ProbeSettings.from_dict(body)
        except (ProbeError, TypeError) as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        with queue_lock:
            shared.state.begin(job="uncond_lab_probe")
            try:
                result, cached = service.run(settings)
            except ProbeError as error:
                raise HTTPException(status_code=409 if "no model" in str(error) else 422, detail=str(error)) \
                    from error
            except ProbeInterrupted as error:
                raise HTTPException(status_code=409, detail=str(error)) from error
            finally:
                shared.state.end()
        return result_json(result, cached)

    app.add_api_route("/uncond-lab/v1/probe", probe_route, methods=["POST"])
