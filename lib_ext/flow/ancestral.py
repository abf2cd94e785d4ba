"""Euler ancestral ("Euler a") for rectified flow.

Reference: ComfyUI `comfy/k_diffusion/sampling.py` `sample_euler_ancestral_RF` (reForge's copy:
ldm_patched/k_diffusion/sampling.py:521-547); this module derives the same step and follows its eta convention,
so eta = 1 matches ComfyUI's "euler_ancestral" on a flow model in distribution. It is a separate function on
purpose: reForge's dispatcher `sample_euler_ancestral` reaches the RF branch only when the model has a CONST
`model_sampling` attribute, and that branch reads `eta`/`s_noise` before assigning them (UnboundLocalError).

The step, for one sigma_i > sigma_next > 0 (alpha = 1 - sigma is the data coefficient of the path):
  1. pick sigma_down in [0, sigma_next]: sigma_down = sigma_next · (1 + (sigma_next/sigma_i - 1)·eta)
     (eta = 0 gives sigma_next, a plain Euler step; eta = 1 gives sigma_next²/sigma_i, the same sigma_down as
     k-diffusion's VE ancestral step at eta = 1);
  2. Euler (= DDIM, the flow path is straight) from sigma_i to sigma_down with the denoised x0:
     x_down = (sigma_down/sigma_i)·x + (1 - sigma_down/sigma_i)·x0;
     if x = alpha_i·x0 + sigma_i·n, then x_down = alpha_down·x0 + sigma_down·n;
  3. rescale the data part to alpha_next and top the noise up to sigma_next with fresh noise z:
     x_next = (alpha_next/alpha_down)·x_down + sqrt(sigma_next² - (sigma_down·alpha_next/alpha_down)²)·z,
     which is alpha_next·x0 + (noise of std sigma_next): the flow marginal at sigma_next. The square root is real
     because sigma/(1 - sigma) increases with sigma and sigma_down <= sigma_next.
A VE ancestral step (k-diffusion `get_ancestral_step`) instead adds noise as x + sigma_up·z with
sigma_down² + sigma_up² = sigma_next², which on a flow path leaves the data coefficient at 1 and the noise wrong.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import k_diffusion.sampling as kd_sampling
import torch

from lib_ext.flow.schedule import check_flow_sigmas

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RfAncestralStep(NamedTuple):
    sigma_down: float  # where the deterministic Euler step lands
    data_scale: float  # alpha_next / alpha_down, applied after the Euler step
    renoise: float     # std of the fresh noise added after rescaling


def rf_ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> RfAncestralStep:
    """The coefficients of one RF ancestral step from sigma to sigma_next > 0 (see the module docstring)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"RF ancestral eta must be in [0, 1], got {eta!r}")
    if not 0.0 < sigma_next <= sigma <= 1.0:
        raise ValueError(f"RF ancestral step needs 0 < sigma_next <= sigma <= 1, got sigma={sigma!r}, "
                         f"sigma_next={sigma_next!r}")
    if sigma_next == sigma:
        return RfAncestralStep(sigma_next, 1.0, 0.0)  # a repeated sigma: nothing to do (and 1 - 1 = 0 below)
    sigma_down = sigma_next * (1.0 + (sigma_next / sigma - 1.0) * eta)
    data_scale = (1.0 - sigma_next) / (1.0 - sigma_down)
    renoise = max(sigma_next ** 2 - (sigma_down * data_scale) ** 2, 0.0) ** 0.5  # >= 0 up to rounding
    return RfAncestralStep(sigma_down, data_scale, renoise)


@torch.no_grad()
def sample_euler_ancestral_rf(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                              callback=None, disable=None, eta: float = 1.0, s_noise: float = 1.0,
                              noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler ancestral for rectified flow, with k-diffusion's sampler signature (`sample_euler_ancestral`).

    `model(x, sigma·ones[B], **extra_args)` returns the denoised x0 (a `FlowDenoiser`, or the WebUI's CFG
    denoiser around one). Without a `noise_sampler` the noise comes from k-diffusion's `default_noise_sampler`,
    looked up at call time so that A1111's seeded `torch` hijack of `k_diffusion.sampling` applies.
    """
    check_flow_sigmas(sigmas)
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = kd_sampling.default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in kd_sampling.trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = min(float(sigmas[i]), 1.0), float(sigmas[i + 1])  # 1 + float rounding is still 1
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0.0:
            x = denoised  # the last step lands on the data
            continue
        step = rf_ancestral_step(sigma, sigma_next, eta)
        ratio = step.sigma_down / sigma
        x = step.data_scale * (ratio * x + (1.0 - ratio) * denoised)
        if step.renoise > 0.0:  # eta = 0 draws no noise, so it is plain Euler, noise sampler untouched
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * (s_noise * step.renoise)
    return x


RandnLike = Callable[[torch.Tensor], torch.Tensor]


def seeded_euler_ancestral_rf(randn_like: Callable[[], RandnLike]):
    """`sample_euler_ancestral_rf` as a WebUI sampler function whose noise comes from `randn_like()(x)`.

    The WebUIs seed k-diffusion's noise by replacing the `torch` global of their k-diffusion sampling module
    with a hijack whose `randn_like` draws from the generation's RNG (A1111 `k_diffusion.sampling.torch`,
    reForge `modules.sd_samplers_common.sampling.torch`), set when the sampler initialises. `randn_like` is
    looked up at every draw for that reason. The signature keeps `eta` and `s_noise`, which the WebUIs pass
    by inspecting it, and drops `noise_sampler`, which they would fill with a VE Brownian tree.
    """
    @torch.no_grad()
    def sample_euler_ancestral_rf_seeded(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                         eta: float = 1.0, s_noise: float = 1.0):
        return sample_euler_ancestral_rf(model, x, sigmas, extra_args, callback, disable, eta, s_noise,
                                         noise_sampler=lambda sigma, sigma_next: randn_like()(x))

    return sample_euler_ancestral_rf_seeded
