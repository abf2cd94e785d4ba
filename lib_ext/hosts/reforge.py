"""What only reForge needs. Same names as `a1111.py`: compare the two to see every difference."""
from __future__ import annotations

import functools
import logging

import torch
from ldm_patched.modules import model_management
from ldm_patched.modules import model_sampling as ldm_model_sampling
from ldm_patched.modules.model_patcher import get_key_weight
from ldm_patched.modules.model_sampling import CONST
from ldm_patched.modules.patcher_extension import CallbacksMP
from ldm_patched.modules.weight_adapter import WeightAdapterBase
from modules import sd_models, sd_samplers_common, sd_samplers_kdiffusion, shared
from modules_forge import main_thread

from lib_ext.flow import (SUBSTITUTE, FlowDenoiser, RfPlan, checked_flow_sigmas, flow_noise_as_ve_noise,
                          rf_sampler_policy, seeded_euler_ancestral_rf)
from lib_ext.hosts.conditioner import is_dict_cond_model, text_pooled_width  # noqa: F401  (host API)
from lib_ext.hosts.forge_patches import ForgePatchMerge
from lib_ext.hosts.webui_state import other_script_args
from lib_ext.probe import flow_noising, ve_noising

log = logging.getLogger("uncond_lab")

# reForge drops the uncond at CFG 1 (ldm_patched samplers.sampling_function's cfg1 optimisation).
SKIPS_UNCOND_AT_CFG1 = True
WEBUI_NAME = "reForge"


def current_sigma(params) -> float:
    """The noise level of this denoiser call. reForge's callback sees the plain batch, and its DDIM-family
    denoiser has already turned timesteps into sigmas."""
    return float(params.sigma[0])


def percent_to_sigma(denoiser, percent: float) -> float:
    """ComfyUI's own percent → sigma of the model sampling in use (flow patches included)."""
    model_sampling = denoiser.p.sd_model.forge_objects.unet.get_model_object("model_sampling")
    return float(model_sampling.percent_to_sigma(percent))



# --- the uncond --------------------------------------------------------------------------------------------

def webui_uncond() -> str:
    """What reForge feeds SDXL for an empty negative: zeros (its `force_zero_negative_prompt`)."""
    return "zero"


def before_text_encoding(sd_model) -> None:
    """Nothing: reForge sets CLIP skip inside its text encoder call."""


def sync_webui_caches(p) -> None:
    """Nothing: reForge's cond cache key holds everything that changes its conds."""

# --- probe -----------------------------------------------------------------------------------------------

def _unet_conds(cond, device) -> dict:
    """The probe's cond as ComfyUI's BaseModel.apply_model takes it."""
    if isinstance(cond, dict):
        return {"c_crossattn": cond["crossattn"].to(device), "y": cond["vector"].to(device)}
    return {"c_crossattn": cond.to(device)}


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
        return model.apply_model(x.to(device), sigma.to(device), **_unet_conds(cond, device)).float()

    return denoise, model_sampling.sigmas, noising


def probe_flow_model(sd_model, shift: float, multiplier: float):
    """The loaded model probed as rectified flow: the flow model sampling RF sampling patches in (ComfyUI's
    ModelSamplingSD3), set on the model for each call only and put back after it, its table, flow noising."""
    unet = sd_model.forge_objects.unet
    model_management.load_models_gpu([unet])
    model = unet.model
    flow_sampling = FlowModelSampling(model.model_config)
    flow_sampling.set_parameters(shift=shift, multiplier=multiplier)
    device = model_management.get_torch_device()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        own = model.model_sampling
        model.model_sampling = flow_sampling
        try:
            return model.apply_model(x.to(device), sigma.to(device), **_unet_conds(cond, device)).float()
        finally:
            model.model_sampling = own

    return denoise, flow_sampling.sigmas, flow_noising


# --- checkpoints -----------------------------------------------------------------------------------------

def load_checkpoint(info, forced: bool = False):
    """Load a checkpoint the way the WebUI's checkpoint setting does: sd_models.reload_model_weights (reForge's
    load_model: its loaded-model list and sd_checkpoints_limit, its memory cleanup, its VAE rules, the
    on_model_loaded callbacks), on reForge's main thread, which its setting uses too. `forced` tears down and
    reloads a checkpoint that is already loaded. Returns the loaded model; a failure is raised here."""
    outcome: dict = {}

    def load():
        try:
            outcome["model"] = sd_models.reload_model_weights(info=info, forced_reload=forced)
        except BaseException as error:  # noqa: BLE001  (main_thread only prints it; raised below, in our thread)
            outcome["error"] = error

    main_thread.run_and_wait_result(load)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("model")


def selected_model():
    """The model the next generation uses: the loaded one (the checkpoint setting loads it when it changes)."""
    return shared.sd_model


# --- rectified flow --------------------------------------------------------------------------------------
# reForge predicts through its UNet patcher (CFGDenoiser -> sampling_function -> BaseModel with its
# `model_sampling`), and rebuilds `forge_objects` before every sampler run. So, per sampler run:
# - a clone of that run's UNet patcher gets a flow `model_sampling` object patch (ComfyUI's ModelSamplingSD3:
#   flow table, timestep = sigma·multiplier, CONST prediction x - sigma·v) and is assigned back; the next run
#   starts again from reForge's own patcher, so nothing has to be removed;
# - the sampler's `model_wrap` becomes a flow denoiser with the SAME table (only sigma bookkeeping here: the
#   schedules, sigma_min/max) and a live `model_patcher` (the Comfy samplers read model_sampling through it);
# - img2img/hires noising via `p.modified_noise = noise - x`, reForge's own hook;
# - Euler a runs as RF Euler a. (The Comfy "AlterSamplers" compute their schedule from the patched model
#   sampling by their own name table; reForge turns any other schedule name, ours included, into "Normal" for
#   them before any script runs. Their "Simple" is the RF schedule value for value when the steps divide 1000.)
# - after the run the model's own `model_sampling` attribute is put back (object patches otherwise stay on the
#   shared model until the next UNet load, and reForge's Zero-Terminal-SNR code reads that attribute between
#   generations).

FLOW_MARK = "uncond_lab_flow_plan"  # on the sampler: the plan installed there (img2img reuses one per batch)
AMS_NAME = "advanced model sampling for reforge"  # the built-in script's lower-cased title (its API key)
AMS_FLOW_MODES = ("SD3", "Aura Flow", "Flux")


class FlowModelSampling(ldm_model_sampling.ModelSamplingDiscreteFlow, ldm_model_sampling.CONST):
    """ComfyUI's flow model sampling, the object `ModelSamplingSD3.patch` builds (reForge's copy:
    extensions-builtin/reForge-advanced_model_sampling/.../nodes_model_advanced.py), as a class of our own so
    that our patch is recognisable on the model."""


class ForgeFlowDenoiser(FlowDenoiser):
    """The flow table for reForge's sigma bookkeeping. `model_patcher` is the UNet of the current run, read when
    used: the sampler (and the WebUI's CompVisDenoiser) is built before this run's patcher exists."""

    @property
    def model_patcher(self):
        return self.inner_model.forge_objects.unet


def _predicts_through_the_unet_patcher(*args, **kwargs):
    raise RuntimeError("Uncond Lab RF: reForge predicts through forge_objects.unet; this denoiser only carries the "
                       "flow sigma table")


def _ams_args(p) -> list | None:
    """This generation's args of reForge's built-in Advanced Model Sampling script, or None if it is absent."""
    return other_script_args(p, AMS_NAME)


def zero_terminal_snr(p) -> bool:
    """The option, or a checkpoint with the `ztsnr` key (reForge processing applies both to model_sampling)."""
    return (getattr(shared.opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR"
            or bool(getattr(p.sd_model, "ztsnr", False)))


# Samplers that run ldm_patched's Euler/Heun, which read their churn from their own options, not s_churn
# (ldm_patched/k_diffusion/sampling.py sample_euler, sample_heun, sample_heunpp2).
_COMFY_CHURN_OPTIONS = {"Euler Comfy": "euler_og_s_churn", "Heun Comfy": "heun_og_s_churn",
                        "HeunPP2": "heunpp2_s_churn"}
_COMFY_BACKEND_CHURN_OPTIONS = {"Euler": "euler_og_s_churn", "Heun": "heun_og_s_churn"}  # sd_sampling = Comfy


def sigma_churn(p, sampler_name: str) -> float:
    """The churn the sampler will use: the Comfy-side option of its function, else s_churn (option over p)."""
    option = _COMFY_CHURN_OPTIONS.get(sampler_name)
    if option is None and getattr(shared.opts, "sd_sampling", "A1111") == "ldm patched (Comfy)":
        option = _COMFY_BACKEND_CHURN_OPTIONS.get(sampler_name)
    if option is not None:
        return float(getattr(shared.opts, option, 0.0) or 0.0)
    return float(getattr(shared.opts, "s_churn", getattr(p, "s_churn", 0.0)) or 0.0)


def uses_uncond_at_cfg1(p, sampler_name: str) -> bool:
    """The cfg1 optimisation is off for the CFG++ samplers (they step along the uncond prediction) and for any
    patch that sets `disable_cfg1_optimization` on the UNet (SAG, PAG, APG: read once they patched)."""
    unet = p.sd_model.forge_objects.unet
    return "CFG++" in sampler_name or bool(unet.model_options.get("disable_cfg1_optimization"))


def competing_model_sampling(p) -> str | None:
    """Advanced Model Sampling, when enabled for this generation: it patches model_sampling and the sampler's
    model_wrap in its own process_before_every_sampling, whatever its mode."""
    args = _ams_args(p)
    if args and len(args) >= 2 and args[0]:
        return f"Advanced Model Sampling ({args[1]} mode)"
    return None


def clean_leftovers(p) -> None:
    """Remove the flow denoiser Advanced Model Sampling leaves on the model.

    In its flow modes that script sets `sd_model.create_denoiser` to a closure over that run's UNet patcher and
    (through its FlowMatchingDenoiser) `sd_model.model_sampling`, and never removes them; every later generation
    on that model object, with the script off, then gets a flow sigma table under an eps prediction. Removed
    here when the script is not in a flow mode for this generation (in a flow mode it installs them again
    itself). Only these two attributes, only when they are that script's: the WebUI never sets either on an
    SD1/SDXL model (SD3 models define create_denoiser on their class, which `vars()` does not see).
    """
    args = _ams_args(p)
    if args and len(args) >= 2 and args[0] and args[1] in AMS_FLOW_MODES:
        return
    sd_model = p.sd_model
    left = vars(sd_model).get("create_denoiser")
    if left is not None and "AdvancedModelSamplingScript" in getattr(left, "__qualname__", ""):
        del sd_model.create_denoiser
        log.warning("Uncond Lab: removed the flow denoiser that Advanced Model Sampling left on the model "
                    "(sd_model.create_denoiser); generations without it sample with the model's own schedule again")
    modules = vars(sd_model).get("_modules") or {}
    left = modules.get("model_sampling")
    if left is not None and "nodes_model_advanced" in type(left).__module__:
        del sd_model.model_sampling


def install_flow(p, plan: RfPlan, x: torch.Tensor | None, noise: torch.Tensor | None) -> None:
    sampler = p.sampler
    if not isinstance(sampler, sd_samplers_kdiffusion.KDiffusionSampler):
        raise TypeError(f"{type(sampler).__name__} does not sample through a k-diffusion model wrapper")
    sd_model = p.sd_model
    unet = sd_model.forge_objects.unet.clone()
    flow_sampling = FlowModelSampling(unet.model.model_config)
    flow_sampling.set_parameters(shift=plan.shift, multiplier=plan.multiplier)
    unet.add_object_patch("model_sampling", flow_sampling)

    modified_noise = None
    if x is not None and noise is not None and x is not noise:  # img2img or hires (txt2img passes x as noise)
        noise = p.modified_noise if getattr(p, "modified_noise", None) is not None else noise
        modified_noise = flow_noise_as_ve_noise(x.to(noise), noise)

    install_sampler = getattr(sampler, FLOW_MARK, None) is not plan
    if install_sampler:
        denoiser = ForgeFlowDenoiser(_predicts_through_the_unet_patcher, plan.shift, multiplier=plan.multiplier,
                                     inner_model=sd_model)
        denoiser.sigmas = flow_sampling.sigmas.float()  # the model sampling's own table, value for value
        denoiser.log_sigmas = denoiser.sigmas.log()
        func = sampler.func
        if rf_sampler_policy(sampler.config.name, sampler.config.aliases).action == SUBSTITUTE:
            func = seeded_euler_ancestral_rf(lambda: sd_samplers_common.sampling.torch.randn_like)
        get_sigmas = checked_flow_sigmas(sampler.get_sigmas)
        sample, sample_img2img = _restoring_model_sampling(sampler.sample), _restoring_model_sampling(
            sampler.sample_img2img)

    # Nothing below can fail: a half-installed flow is not possible.
    sd_model.forge_objects.unet = unet
    if modified_noise is not None:
        p.modified_noise = modified_noise
    if install_sampler:
        sampler.model_wrap = sampler.model_wrap_cfg.model_wrap = denoiser
        sampler.func, sampler.get_sigmas = func, get_sigmas
        sampler.sample, sampler.sample_img2img = sample, sample_img2img
        setattr(sampler, FLOW_MARK, plan)


def _restoring_model_sampling(run):
    """Run the sampler, then put the model's own model_sampling back, also after an error or an interrupt."""
    @functools.wraps(run)
    def run_then_restore(p, *args, **kwargs):
        try:
            return run(p, *args, **kwargs)
        finally:
            unet = p.sd_model.forge_objects.unet
            if isinstance(getattr(unet.model, "model_sampling", None), FlowModelSampling):
                unet.unpatch_model(unpatch_weights=False)  # restores the object patches' backups only
    return run_then_restore


# --- merge: weight patches on clones of reForge's patchers (lib_ext/hosts/forge_patches.py, shared with Neo) -----

MERGE_SOURCES_OPTION = None  # no setting: the patches always read the mapped files
# reForge's ModelPatcher never patches the direct parameters of a module with children (model_patcher.py
# _load_list, "skip random weights in non leaf modules"), SDXL's pooled projection clip_g.text_projection among
# them: an on-load callback patches those through the patcher itself (ForgePatchMerge._patch_stranded_weights).
MERGE = ForgePatchMerge(WEBUI_NAME, WeightAdapterBase, get_key_weight,
                        model_config_of=lambda unet: unet.model.model_config, on_load_event=CallbacksMP.ON_LOAD)
sync_merge, merge_batch, merge_sampling, merge_done = (MERGE.sync_merge, MERGE.merge_batch, MERGE.merge_sampling,
                                                       MERGE.merge_done)
release_merge, merge_model_loaded, merge_status = MERGE.release_merge, MERGE.merge_model_loaded, MERGE.merge_status
merge_live_dtypes = MERGE.live_dtypes
