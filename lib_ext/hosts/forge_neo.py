"""What only Forge Neo 2.x needs. Same names as `a1111.py` and `reforge.py`: compare them to see every difference.

Neo runs Forge's backend (`backend/`): its UNet patcher is ComfyUI's ModelPatcher like reForge's (the merge is
shared: forge_patches.py), but a model predicts through `KModel.predictor` (backend/modules/k_prediction.py)
instead of ComfyUI's `model_sampling`, its k-diffusion samplers schedule through a `ForgeScheduleLinker` over that
predictor, and noising (txt2img, img2img, hires) is the predictor's own `noise_scaling`, flow-aware.
"""
from __future__ import annotations

import functools
import types

import torch
from backend import memory_management
from backend.modules.k_prediction import PredictionDiscreteFlow
from backend.patcher.base import get_key_weight
from backend.patcher.lora import weight_adapter
from k_diffusion.external import ForgeScheduleLinker
from modules import processing, sd_models, sd_samplers_kdiffusion, shared
from modules_forge import main_entry

from lib_ext.flow import RfPlan, checked_flow_sigmas
from lib_ext.hosts.forge_patches import ForgePatchMerge
from lib_ext.hosts.webui_state import drop_cached_conds
from lib_ext.probe import flow_noising, ve_noising

# Neo drops the uncond at CFG 1 (backend/sampling/sampling_function.py, cfg1 optimisation), like reForge.
SKIPS_UNCOND_AT_CFG1 = True
WEBUI_NAME = "Forge Neo"


def current_sigma(params) -> float:
    """The noise level of this denoiser call: Neo's callback sees the plain batch, in sigma."""
    return float(params.sigma[0])


def percent_to_sigma(denoiser, percent: float) -> float:
    """The predictor's own percent → sigma (ComfyUI's), the flow one while RF is installed."""
    return float(denoiser.p.sd_model.forge_objects.unet.model.predictor.percent_to_sigma(percent))


def webui_uncond() -> str:
    """What Neo feeds SDXL for an empty negative: te("") by default, zeros with `sdxl_zero_neg` on."""
    return "zero" if getattr(shared.opts, "sdxl_zero_neg", False) else "text"


def is_dict_cond_model(sd_model) -> bool:
    """SDXL-family models take {"crossattn", "vector"} conds (Neo builds no sgm conditioner)."""
    return bool(getattr(sd_model, "is_sdxl", False))


def text_pooled_width(sd_model) -> int:
    """Width of the pooled text part at the start of SDXL's `vector`: clip_g's projection (1280)."""
    clip_g = getattr(sd_model.forge_objects.clip.cond_stage_model, "clip_g", None)
    projection = getattr(getattr(clip_g, "transformer", None), "text_projection", None)
    return int(projection.weight.shape[0]) if projection is not None else 0


def before_text_encoding(sd_model) -> None:
    """Neo sets CLIP skip on its text engines only where it encodes the prompts (get_conds_with_caching)."""
    sd_model.set_clip_skip(int(shared.opts.CLIP_stop_at_last_layers))


_ZERO_NEG_CACHE = "uncond_lab_sdxl_zero_neg"  # on the processing class, beside the cond caches it guards


def sync_webui_caches(p) -> None:
    """Neo's cond cache is not keyed on `sdxl_zero_neg`: after the option flips, the next generation with the
    same prompts would get the old uncond. Drop the caches when it changed since the last generation."""
    value = bool(getattr(shared.opts, "sdxl_zero_neg", False))
    last = getattr(processing.StableDiffusionProcessing, _ZERO_NEG_CACHE, None)
    setattr(processing.StableDiffusionProcessing, _ZERO_NEG_CACHE, value)
    if last is not None and last != value:
        drop_cached_conds(p)


# --- probe -----------------------------------------------------------------------------------------------

def _unet_conds(cond, device) -> dict:
    """The probe's cond as Neo's KModel.apply_model takes it (backend/sampling/condition.py compile_conditions)."""
    if isinstance(cond, dict):
        return {"c_crossattn": cond["crossattn"].to(device), "y": cond["vector"].to(device)}
    return {"c_crossattn": cond.to(device)}


def _loaded_kmodel(sd_model):
    unet = sd_model.forge_objects.unet
    memory_management.load_models_gpu([unet])
    return unet.model


def probe_model(sd_model):
    """The loaded model as the probe sees it: x0 = denoise(x, sigma, cond) through `KModel.apply_model` (its
    predictor: eps, v or flow), its sigma table, its noising. The patcher is loaded first (LoRA patches)."""
    model = _loaded_kmodel(sd_model)
    predictor = model.predictor
    noising = flow_noising if predictor.prediction_type == "const" else ve_noising
    device = memory_management.get_torch_device()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        return model.apply_model(x.to(device), sigma.to(device), **_unet_conds(cond, device)).float()

    return denoise, predictor.sigmas, noising


def probe_flow_model(sd_model, shift: float, multiplier: float):
    """The loaded model probed as rectified flow: the predictor RF sampling installs, set on the model for each
    call only and put back after it, its table, flow noising."""
    model = _loaded_kmodel(sd_model)
    flow = FlowPrediction(shift, multiplier)
    device = memory_management.get_torch_device()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        own = model.predictor
        model.predictor = flow
        try:
            return model.apply_model(x.to(device), sigma.to(device), **_unet_conds(cond, device)).float()
        finally:
            model.predictor = own

    return denoise, flow.sigmas, flow_noising


# --- checkpoints -----------------------------------------------------------------------------------------

def load_checkpoint(info, forced: bool = False):
    """Load a checkpoint the way Neo's checkpoint selector does: the `sd_model_checkpoint` option (in memory, not
    saved), `main_entry.refresh_model_loading_parameters` (its modules and UNet dtype settings), then
    `sd_models.forge_model_reload` (unloads the old model, runs the on_model_loaded callbacks). `forced` reloads
    a checkpoint that is already loaded. Returns the loaded model; a failure is raised here."""
    shared.opts.data["sd_model_checkpoint"] = info.title
    main_entry.refresh_model_loading_parameters()
    if forced:
        sd_models.model_data.forge_hash = ""
    return sd_models.forge_model_reload()[0]


def selected_model():
    """The model the next generation uses. Neo loads the checkpoint its setting names only when a generation
    starts (processing.manage_model_and_prompt_cache → forge_model_reload), so a route outside a generation (the
    probe, Save this merge) loads it the same way first; when none can be loaded, whatever is loaded (or None)."""
    try:
        return sd_models.forge_model_reload()[0]
    except ValueError:  # "Failed to find available model..."
        return shared.sd_model


# --- rectified flow --------------------------------------------------------------------------------------
# Through Neo's own flow prediction, the one it uses for a checkpoint whose path says "rectified": per sampler
# run, the model's predictor becomes a PredictionDiscreteFlow with this generation's shift (ComfyUI's
# ModelSamplingSD3: flow table, timestep = sigma·multiplier, x - sigma·v), and the sampler schedules through a
# ForgeScheduleLinker over it. Neo's samplers and noising read the predictor, so Euler a runs as RF Euler a
# (Neo's own), and img2img/hires noise the flow way, with nothing else replaced. The model's own predictor is
# put back when the run ends (also after an error or an interrupt), and at the next generation's start should a
# run never have begun.

FLOW_MARK = "uncond_lab_flow_plan"  # on the sampler: the plan installed there (img2img reuses one per batch)


class FlowPrediction(PredictionDiscreteFlow):
    """Neo's flow predictor, as a class of our own so that ours is recognisable on the model; `replaced` is the
    model's own predictor, put back after the run."""

    def __init__(self, shift: float, multiplier: float):
        super().__init__(types.SimpleNamespace(sampling_settings={"shift": shift, "multiplier": multiplier}))
        self.replaced = None


class FlowScheduleLinker(ForgeScheduleLinker):
    """Neo's schedule linker over the flow predictor, with the `shift` the RF schedule type reads."""

    @property
    def shift(self) -> float:
        return float(self.predictor.shift)


def zero_terminal_snr(p) -> bool:
    return getattr(shared.opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR"


def sigma_churn(p, sampler_name: str) -> float:
    """The churn a k-diffusion sampler gets: the option wins over p, as in A1111."""
    return float(getattr(shared.opts, "s_churn", getattr(p, "s_churn", 0.0)) or 0.0)


def uses_uncond_at_cfg1(p, sampler_name: str) -> bool:
    """The cfg1 optimisation is off for the CFG++ samplers (Neo lists none today; they step along the uncond prediction) and for any
    patch that sets `disable_cfg1_optimization` on the UNet (SAG, PAG, APG: read once they patched)."""
    unet = p.sd_model.forge_objects.unet
    return "CFG++" in sampler_name or bool(unet.model_options.get("disable_cfg1_optimization"))


def competing_model_sampling(p) -> str | None:
    """Neo has no script that replaces the model's sampling (its own flow for "rectified" checkpoints is the
    model's, and RF replaces it for the run like any other predictor)."""
    return None


def _put_back_predictor(model) -> None:
    predictor = getattr(model, "predictor", None)
    if isinstance(predictor, FlowPrediction) and predictor.replaced is not None:
        model.predictor = predictor.replaced


def clean_leftovers(p) -> None:
    """A flow predictor still on the model (a sampler run that was installed and never started): put back."""
    _put_back_predictor(p.sd_model.forge_objects.unet.model)


def install_flow(p, plan: RfPlan, x: torch.Tensor | None, noise: torch.Tensor | None) -> None:
    sampler = p.sampler
    if not isinstance(sampler, sd_samplers_kdiffusion.KDiffusionSampler):
        raise TypeError(f"{type(sampler).__name__} does not sample through a k-diffusion model wrapper")
    sd_model = p.sd_model
    model = sd_model.forge_objects.unet.model
    flow = getattr(sampler, FLOW_MARK, None)
    if flow is None or flow[0] is not plan:
        predictor = FlowPrediction(plan.shift, plan.multiplier)
        linker = FlowScheduleLinker(predictor)
        linker.inner_model = sd_model
        sample, sample_img2img = _restoring_predictor(sampler.sample), _restoring_predictor(sampler.sample_img2img)
        get_sigmas = checked_flow_sigmas(sampler.get_sigmas)
        # Nothing below can fail: a half-installed flow is not possible.
        sampler.model_wrap = sampler.model_wrap_cfg.model_wrap = linker
        sampler.get_sigmas, sampler.sample, sampler.sample_img2img = get_sigmas, sample, sample_img2img
        setattr(sampler, FLOW_MARK, (plan, predictor))
    else:
        predictor = flow[1]
    if model.predictor is not predictor:
        _put_back_predictor(model)
        predictor.replaced = model.predictor
        model.predictor = predictor.to(device=model.predictor.sigmas.device)


def _restoring_predictor(run):
    """Run the sampler, then put the model's own predictor back, also after an error or an interrupt."""
    @functools.wraps(run)
    def run_then_restore(p, *args, **kwargs):
        try:
            return run(p, *args, **kwargs)
        finally:
            _put_back_predictor(p.sd_model.forge_objects.unet.model)
    return run_then_restore


# --- merge: weight patches on clones of Neo's patchers (lib_ext/hosts/forge_patches.py, shared with reForge) --

MERGE_SOURCES_OPTION = None  # no setting: the patches always read the mapped files
MERGE = ForgePatchMerge(WEBUI_NAME, weight_adapter.WeightAdapterBase, get_key_weight,
                        model_config_of=lambda unet: unet.model.config)
sync_merge, merge_batch, merge_sampling, merge_done = (MERGE.sync_merge, MERGE.merge_batch, MERGE.merge_sampling,
                                                       MERGE.merge_done)
release_merge, merge_model_loaded, merge_status = MERGE.release_merge, MERGE.merge_model_loaded, MERGE.merge_status
merge_live_dtypes = MERGE.live_dtypes
