"""What only AUTOMATIC1111 1.10 needs. Same names as `reforge.py`: compare the two to see every difference."""
from __future__ import annotations

import functools

import k_diffusion.sampling
import torch
from k_diffusion.external import CompVisDenoiser, CompVisVDenoiser
from modules import devices, sd_samplers_kdiffusion, sd_samplers_timesteps, shared

from lib_ext.flow import (SUBSTITUTE, FlowDenoiser, RfPlan, check_flow_sigmas, flow_noise_as_ve_noise,
                          rf_sampler_policy, seeded_euler_ancestral_rf)
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


# --- rectified flow --------------------------------------------------------------------------------------
# Everything is installed on the sampler object of one sampler run (`p.sampler`: a new one for txt2img, for the
# hires pass, and per img2img job), never on the model or a module: the flow denoiser replaces the sampler's
# `model_wrap` (the CFG denoiser predicts through it, the schedules read its sigma table), Euler a runs as RF
# Euler a, and img2img/hires noising is corrected in that sampler's `sample_img2img`. When the run ends the
# sampler is dropped, so an error or an interrupt leaves nothing behind.

FLOW_MARK = "uncond_lab_flow_plan"  # on the sampler: the plan installed there (img2img reuses one per batch)


def zero_terminal_snr(p) -> bool:
    return getattr(shared.opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR"


def sigma_churn(p, sampler_name: str) -> float:
    """The churn a k-diffusion sampler gets: the option wins over p (sd_samplers_common.Sampler.initialize)."""
    return float(getattr(shared.opts, "s_churn", getattr(p, "s_churn", 0.0)) or 0.0)


def competing_model_sampling(p) -> str | None:
    """A1111 has no other feature that replaces the model's sampling."""
    return None


def clean_leftovers(p) -> None:
    """Nothing to clean: Uncond Lab never writes to the model, and A1111 has no feature that leaves a denoiser."""


def install_flow(p, plan: RfPlan, x: torch.Tensor | None, noise: torch.Tensor | None) -> None:
    sampler = p.sampler
    if getattr(sampler, FLOW_MARK, None) is plan:
        return  # the same img2img sampler for the next batch: already installed
    if not isinstance(sampler, sd_samplers_kdiffusion.KDiffusionSampler):
        raise TypeError(f"{type(sampler).__name__} does not sample through a k-diffusion model wrapper")
    sd_model = p.sd_model
    # The flow denoiser predicts through sd_model.apply_model(x, sigma·multiplier, cond), which keeps the WebUI's
    # model hooks (medvram, LoRA, hijacks); its table moves with x like the WebUI's own denoiser would.
    denoiser = FlowDenoiser(sd_model.apply_model, plan.shift, multiplier=plan.multiplier, inner_model=sd_model)
    if x is not None:
        denoiser = denoiser.to(x.device)
    func = sampler.func
    if rf_sampler_policy(sampler.config.name).action == SUBSTITUTE:
        func = seeded_euler_ancestral_rf(lambda: k_diffusion.sampling.torch.randn_like)
    get_sigmas, sample_img2img = _checked_sigmas(sampler.get_sigmas), _flow_noised(sampler.sample_img2img)
    # Nothing below can fail: a half-installed flow is not possible.
    sampler.model_wrap = sampler.model_wrap_cfg.model_wrap = denoiser
    sampler.func, sampler.get_sigmas, sampler.sample_img2img = func, get_sigmas, sample_img2img
    setattr(sampler, FLOW_MARK, plan)


def _checked_sigmas(get_sigmas):
    """The sampler's schedule, refused if it leaves the flow range (e.g. the 'Schedule max sigma' option)."""
    @functools.wraps(get_sigmas)
    def get_flow_sigmas(p, steps):
        sigmas = get_sigmas(p, steps)
        check_flow_sigmas(sigmas)
        return sigmas
    return get_flow_sigmas


def _flow_noised(sample_img2img):
    """img2img/hires: A1111 noises x + noise·sigma; handing it noise - x gives (1 - sigma)·x + sigma·noise, the flow
    noising, for any sigma (lib_ext.flow.flow_noise_as_ve_noise). A new tensor: the caller's noise is untouched."""
    @functools.wraps(sample_img2img)
    def sample_img2img_flow(p, x, noise, *args, **kwargs):
        return sample_img2img(p, x, flow_noise_as_ve_noise(x.to(noise), noise), *args, **kwargs)
    return sample_img2img_flow
