"""What only AUTOMATIC1111 1.10 needs. Same names as `reforge.py`: compare the two to see every difference."""
from __future__ import annotations

import torch
from k_diffusion.external import CompVisDenoiser, CompVisVDenoiser
from modules import devices, sd_samplers_timesteps, shared

from lib_ext.probe import ve_noising
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


# --- probe -----------------------------------------------------------------------------------------------

def probe_model(sd_model):
    """The loaded model as the probe sees it: x0 = denoise(x, sigma, cond), its sigma table, its noising.

    The same k-diffusion wrapper A1111's samplers use (eps or v), called the way its CFG denoiser calls it.
    """
    wrapper = CompVisVDenoiser if sd_model.parameterization == "v" else CompVisDenoiser
    denoiser = wrapper(sd_model, quantize=shared.opts.enable_quantization)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        image_cond = x.new_zeros(x.shape[0], 5, 1, 1)  # txt2img's, ignored by non-inpainting models
        condition = {**cond, "c_concat": [image_cond]} if isinstance(cond, dict) else \
            {"c_crossattn": [cond], "c_concat": [image_cond]}
        with devices.autocast():
            return denoiser(x, sigma, cond=condition).float()

    return denoise, denoiser.sigmas, ve_noising
