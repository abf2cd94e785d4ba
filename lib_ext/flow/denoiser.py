"""The flow denoiser for k-diffusion samplers, and flow noising for img2img / hires fix.

A rectified-flow UNet predicts the velocity v = noise - x0 at x = (1 - sigma)·x0 + sigma·noise, so
x0 = x - sigma·v (ComfyUI `CONST.calculate_denoised`). k-diffusion integrates dx/dsigma = (x - D(x, sigma))/sigma,
which for this D is exactly v: the k-diffusion ODE *is* the flow ODE, so every pure ODE solver samples RF models.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

try:
    from k_diffusion.external import DiscreteSchedule
except ImportError:  # Forge Neo bundles a k-diffusion without it: Neo schedules flow through its own predictor
    class DiscreteSchedule(torch.nn.Module):  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            raise RuntimeError("FlowDenoiser needs k-diffusion's DiscreteSchedule, which this k-diffusion lacks")

from lib_ext.flow.schedule import DEFAULT_TIMESTEPS, flow_percent_to_sigma, flow_sigmas

DEFAULT_MULTIPLIER = 1000.0  # ComfyUI `ModelSamplingSD3` / A1111 SD3: timestep = sigma · 1000

ApplyModel = Callable[..., torch.Tensor]  # apply_model(x, timestep, **kwargs) -> velocity


def _per_sample(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """sigma (a number, a 0-d or a [B] tensor) as a [B, 1, 1, ...] tensor on x's device and dtype."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def denoised_from_velocity(x: torch.Tensor, velocity: torch.Tensor, sigma: Any) -> torch.Tensor:
    """x0 = x - sigma·v (ComfyUI `CONST.calculate_denoised`)."""
    return x - _per_sample(sigma, x) * velocity.to(x.dtype)


def velocity_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: Any) -> torch.Tensor:
    """v = (x - x0) / sigma, k-diffusion's `to_d`: the derivative every k-diffusion ODE solver integrates."""
    return (x - denoised) / _per_sample(sigma, x)


def flow_noise(x: torch.Tensor, noise: torch.Tensor, sigma: Any) -> torch.Tensor:
    """sigma·noise + (1 - sigma)·x: a clean latent moved to noise level sigma (ComfyUI `CONST.noise_scaling`).

    This is what A1111's `sd_model.add_noise_to_latent(x, noise, sigma)` must return for img2img and hires fix.
    """
    sigma = _per_sample(sigma, x)
    return sigma * noise + (1 - sigma) * x


def flow_noise_as_ve_noise(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """noise - x: the noise to hand a WebUI that noises as x + noise'·sigma, so that it gets `flow_noise`.

    x + (noise - x)·sigma = sigma·noise + (1 - sigma)·x for every sigma, so this works without knowing the
    schedule (reForge/Forge `p.modified_noise`, set in `process_before_every_sampling` with that pass's x).
    """
    return noise - x


class FlowDenoiser(DiscreteSchedule):
    """k-diffusion denoiser for a velocity-predicting model: D(x, sigma) = x - sigma·v(x, sigma·multiplier).

    Built like A1111 1.10's `SD3Denoiser` (a `DiscreteSchedule` over the flow table), so the WebUIs' sigma
    bookkeeping works unchanged: `sigmas`/`log_sigmas` buffers (assignable, reForge moves them per run),
    `sigma_min`/`sigma_max`, `get_sigmas(n)` (uniform in the table index), `sigma_to_t`, `t_to_sigma`. Every
    WebUI schedule that reads the model's table (Uniform, SGM Uniform, Simple, Normal, DDIM, and sigma_min/max
    for Karras/Exponential/...) therefore follows the shift.

    `apply_model(x, timestep, **kwargs)` returns the velocity; `forward` passes its keyword arguments through
    (A1111's CFG denoiser calls `inner_model(x, sigma, cond=...)`, sgm's `apply_model(x, t, cond)` takes them).
    `inner_model` is the WebUI model object (A1111 reads `model_wrap.inner_model.is_sdxl_inpaint`, reForge
    `.inner_model.forge_objects`); it is kept as a plain reference, not a submodule, so moving or casting the
    denoiser never touches the model's weights. A host that needs more (reForge's `model_patcher`) subclasses
    and adds a property.
    """

    def __init__(self, apply_model: ApplyModel, shift: float, *, multiplier: float = DEFAULT_MULTIPLIER,
                 timesteps: int = DEFAULT_TIMESTEPS, inner_model: Any | None = None, quantize: bool = False):
        super().__init__(flow_sigmas(shift, timesteps), quantize)
        if not multiplier > 0:
            raise ValueError(f"flow timestep multiplier must be > 0, got {multiplier!r}")
        self.apply_model = apply_model
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        object.__setattr__(self, "inner_model", inner_model)  # not registered: see the class docstring

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep for sigma (ComfyUI `ModelSamplingDiscreteFlow.timestep`)."""
        return sigma * self.multiplier

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's percent → sigma for this model (`ModelSamplingDiscreteFlow.percent_to_sigma`)."""
        return flow_percent_to_sigma(percent, self.shift)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        velocity = self.apply_model(x, self.timestep(sigma), **kwargs)
        return denoised_from_velocity(x, velocity, sigma)
