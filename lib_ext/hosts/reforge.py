"""What only reForge needs. Same names as `a1111.py`: compare the two to see every difference."""
from __future__ import annotations

import torch
from ldm_patched.modules import model_management
from ldm_patched.modules.model_sampling import CONST

from lib_ext.probe import flow_noising, ve_noising

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


# --- probe -----------------------------------------------------------------------------------------------

def probe_model(sd_model):
    """The loaded model as the probe sees it: x0 = denoise(x, sigma, cond), its sigma table, its noising.

    ComfyUI's `BaseModel.apply_model` takes sigma and returns x0 through the model's own `model_sampling`
    (eps, v or flow alike); the patcher is loaded first so LoRA patches are on the weights.
    """
    unet = sd_model.forge_objects.unet
    model_management.load_models_gpu([unet])
    model = unet.model
    model_sampling = model.model_sampling
    noising = flow_noising if isinstance(model_sampling, CONST) else ve_noising
    device = model_management.get_torch_device()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        if isinstance(cond, dict):
            kwargs = {"c_crossattn": cond["crossattn"].to(device), "y": cond["vector"].to(device)}
        else:
            kwargs = {"c_crossattn": cond.to(device)}
        return model.apply_model(x.to(device), sigma.to(device), **kwargs).float()

    return denoise, model_sampling.sigmas, noising
