"""What only reForge needs. Same names as `a1111.py`: compare the two to see every difference."""
from __future__ import annotations

# reForge drops the uncond at CFG 1 (ldm_patched samplers.sampling_function's cfg1 optimisation).
SKIPS_UNCOND_AT_CFG1 = True


def current_sigma(params) -> float:
    """The noise level of this denoiser call. reForge's callback sees the plain batch, and its DDIM-family
    denoiser has already turned timesteps into sigmas."""
    return float(params.sigma[0])


def percent_to_sigma(denoiser, percent: float) -> float:
    """ComfyUI's own percent → sigma of the model sampling in use (flow patches included)."""
    model_sampling = denoiser.p.sd_model.forge_objects.unet.model.model_sampling
    return float(model_sampling.percent_to_sigma(percent))
