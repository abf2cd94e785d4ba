"""Sample the way ComfyUI's KSampler does, with the WebUI's own options (for one generation).

Measured against real ComfyUI (v0.8.0, CPU, float32) on A1111 1.10.1: the same seed, sampler and schedule give
ComfyUI's picture within one level of 255 only with three A1111 options set as ComfyUI samples:

    sgm_noise_multiplier   ComfyUI scales the first noise by sqrt(1 + sigma_max²) (comfy/model_sampling.py,
                           EPS/V_PREDICTION noise_scaling with max_denoise), A1111 by sigma_max unless this is on
    enable_quantization    ComfyUI's discrete model sampling feeds the UNet the nearest whole timestep
                           (comfy/model_sampling.py timestep()), A1111's k-diffusion wrapper interpolates unless
                           this is on
    randn_source "CPU"     ComfyUI draws the first noise on the CPU from torch.manual_seed(seed)

Under rectified flow the first noise is already ComfyUI's CONST scaling (sigma·noise + (1 − sigma)·x) and the
flow denoiser takes fractional timesteps as ComfyUI's ModelSamplingSD3 does, so only the RNG is set there (the
SGM multiplier is refused with RF, see lib_ext/flow/preflight.py).
"""
from __future__ import annotations

from typing import Any

RNG_ONLY = {"randn_source": "CPU"}
EPS_SAMPLING = {**RNG_ONLY, "sgm_noise_multiplier": True, "enable_quantization": True}


def comfy_sampling_options(rectified_flow: bool) -> dict[str, Any]:
    """The WebUI options (A1111/reForge names) that make this generation sample as ComfyUI's KSampler."""
    return dict(RNG_ONLY if rectified_flow else EPS_SAMPLING)
