"""What only AUTOMATIC1111 1.10 needs. Same names as `reforge.py`: compare the two to see every difference."""
from __future__ import annotations

import torch
from modules import sd_samplers_timesteps

from lib_ext.uncond import discrete_percent_to_sigma

# A1111 evaluates the uncond even at CFG 1 (it just cancels out); reForge skips it.
SKIPS_UNCOND_AT_CFG1 = False


def _sigmas_from_alphas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def current_sigma(params) -> float:
    """The noise level of this denoiser call. A1111's callback sees cond and uncond rows batched, all at the
    same sigma; DDIM/PLMS/UniPC pass the discrete timestep instead of sigma."""
    value = params.sigma[0]
    if isinstance(params.denoiser, sd_samplers_timesteps.CFGDenoiserTimesteps):
        alphas_cumprod = params.denoiser.p.sd_model.alphas_cumprod
        return float(_sigmas_from_alphas(alphas_cumprod[int(value)]))
    return float(value)


def percent_to_sigma(denoiser, percent: float) -> float:
    """ComfyUI's percent → sigma over the schedule this sampler really uses (k-diffusion's `model_wrap`)."""
    model_wrap = denoiser.inner_model
    if hasattr(model_wrap, "percent_to_sigma"):  # our flow denoiser carries ComfyUI's flow semantics
        return float(model_wrap.percent_to_sigma(percent))
    sigmas = getattr(model_wrap, "sigmas", None)
    if sigmas is None:  # DDIM/PLMS/UniPC wrap the model without a sigma table
        sigmas = _sigmas_from_alphas(denoiser.p.sd_model.alphas_cumprod)
    return discrete_percent_to_sigma(percent, sigmas)
