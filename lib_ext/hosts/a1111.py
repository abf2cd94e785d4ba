"""What only AUTOMATIC1111 1.10 needs. Same names as `reforge.py`: compare the two to see every difference."""
from __future__ import annotations

import functools
import os
import weakref

import k_diffusion.sampling
import torch
from k_diffusion.external import CompVisDenoiser, CompVisVDenoiser
from modules import devices, sd_models, sd_samplers, sd_samplers_kdiffusion, sd_samplers_timesteps, shared

from lib_ext.flow import (SUBSTITUTE, FlowDenoiser, RfPlan, checked_flow_sigmas, flow_noise_as_ve_noise,
                          rf_sampler_policy, seeded_euler_ancestral_rf)
from lib_ext.hosts.conditioner import is_dict_cond_model, text_pooled_width  # noqa: F401  (host API)
from lib_ext.hosts.webui_state import drop_cached_conds
from lib_ext.merge import MergeTargetError
from lib_ext.merge import live as merge_live
from lib_ext.merge.keys import MERGEABLE_GROUPS
from lib_ext.merge.session import SOURCES_AUTO, MergeSessions, placement_for
from lib_ext.probe import flow_noising, ve_noising
from lib_ext.uncond import discrete_percent_to_sigma

# A1111 evaluates the uncond even at CFG 1 (it just cancels out); reForge skips it.
SKIPS_UNCOND_AT_CFG1 = False
WEBUI_NAME = "A1111"


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



# --- the uncond --------------------------------------------------------------------------------------------

def webui_uncond() -> str:
    """What A1111 feeds SDXL for an empty negative: zeros (its `force_zero_negative_prompt`)."""
    return "zero"


def before_text_encoding(sd_model) -> None:
    """Nothing: A1111 sets CLIP skip inside its text encoder call."""


def sync_webui_caches(p) -> None:
    """Nothing: A1111's cond cache key holds everything that changes its conds."""

# --- probe -----------------------------------------------------------------------------------------------

def _conditioning(x: torch.Tensor, cond) -> dict:
    """The probe's cond as A1111's CFG denoiser hands it to the model, with txt2img's image cond (ignored by
    non-inpainting models)."""
    image_cond = x.new_zeros(x.shape[0], 5, 1, 1)
    if isinstance(cond, dict):
        return {**cond, "c_concat": [image_cond]}
    return {"c_crossattn": [cond], "c_concat": [image_cond]}


def probe_model(sd_model):
    """The loaded model as the probe sees it: x0 = denoise(x, sigma, cond), its sigma table, its noising.

    The same k-diffusion wrapper A1111's samplers use (eps or v), called the way its CFG denoiser calls it.
    """
    wrapper = CompVisVDenoiser if sd_model.parameterization == "v" else CompVisDenoiser
    denoiser = wrapper(sd_model, quantize=shared.opts.enable_quantization)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        with devices.autocast():
            return denoiser(x, sigma, cond=_conditioning(x, cond)).float()

    return denoise, denoiser.sigmas, ve_noising


def probe_flow_model(sd_model, shift: float, multiplier: float):
    """The loaded model probed as rectified flow: the flow denoiser RF sampling installs (lib_ext.flow), predicting
    through sd_model.apply_model, its shifted flow table, flow noising."""
    denoiser = FlowDenoiser(sd_model.apply_model, shift, multiplier=multiplier, inner_model=sd_model)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        with devices.autocast():
            return denoiser.to(x.device)(x, sigma, cond=_conditioning(x, cond)).float()

    return denoise, denoiser.sigmas, flow_noising


# --- checkpoints -----------------------------------------------------------------------------------------

def load_checkpoint(info, forced: bool = False):
    """Load a checkpoint the way the WebUI's checkpoint setting does (sd_models.reload_model_weights: its VAE
    rules, its checkpoint cache and sd_checkpoints_limit, the on_model_loaded callbacks). `forced` reloads a
    checkpoint that is already loaded (after a failed load left it half undone). Returns the loaded model."""
    return sd_models.reload_model_weights(info=info, forced_reload=forced)


def selected_model():
    """The model the next generation uses: the loaded one (the checkpoint setting loads it when it changes)."""
    return shared.sd_model


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


def uses_uncond_at_cfg1(p, sampler_name: str) -> bool:
    """DDIM CFG++ scales the CFG scale by 1/12.5 and steps along the uncond's noise, so at CFG 1 the uncond
    decides the picture; every other sampler gets uncond + 1·(cond - uncond) = cond."""
    config = sd_samplers.find_sampler_config(sampler_name)
    return config is not None and "ddim_cfgpp" in config.aliases


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
    if rf_sampler_policy(sampler.config.name, sampler.config.aliases).action == SUBSTITUTE:
        func = seeded_euler_ancestral_rf(lambda: k_diffusion.sampling.torch.randn_like)
    get_sigmas, sample_img2img = checked_flow_sigmas(sampler.get_sigmas), _flow_noised(sampler.sample_img2img)
    # Nothing below can fail: a half-installed flow is not possible.
    sampler.model_wrap = sampler.model_wrap_cfg.model_wrap = denoiser
    sampler.func, sampler.get_sigmas, sampler.sample_img2img = func, get_sigmas, sample_img2img
    setattr(sampler, FLOW_MARK, plan)


def _flow_noised(sample_img2img):
    """img2img/hires: A1111 noises x + noise·sigma; handing it noise - x gives (1 - sigma)·x + sigma·noise, the flow
    noising, for any sigma (lib_ext.flow.flow_noise_as_ve_noise). A new tensor: the caller's noise is untouched."""
    @functools.wraps(sample_img2img)
    def sample_img2img_flow(p, x, noise, *args, **kwargs):
        return sample_img2img(p, x, flow_noise_as_ve_noise(x.to(noise), noise), *args, **kwargs)
    return sample_img2img_flow


# --- merge: A1111 has no patch system, so the merge is written into the loaded weights ---------------------
# One MergeSessions keeps the resident copies between generations (lib_ext/merge/session.py says why and when
# they are restored); _ModelHost is what A1111 needs around each write (lib_ext/merge/live.py).

MERGE_SESSIONS = MergeSessions(log=lambda line: print(line, flush=True))
# A WebUI setting: where A and B are read from at a ratio change (resident copies or the mapped files).
MERGE_SOURCES_OPTION = "uncond_lab_merge_sources"


def _checkpoint_keys(path: str) -> frozenset[str]:
    """The tensor names of a checkpoint (header only)."""
    from safetensors import safe_open
    with safe_open(path, framework="pt", device="cpu") as file:
        return frozenset(file.keys())


class _ModelHost:
    """lib_ext.merge.session.SessionHost for A1111's loaded model. Holds the model weakly: a session must not keep
    an unloaded model alive. Live tensors are looked up again at every call (--medvram/--lowvram move modules)."""

    def __init__(self, sd_model, model_a: str):
        self._model = weakref.ref(sd_model)
        self._model_a = model_a
        self._keys = _checkpoint_keys(model_a)
        self._fp16 = merge_live.Fp16Caches()

    def _sd_model(self):
        model = self._model()
        if model is None:
            raise MergeTargetError("the model this merge was prepared for has been unloaded")
        return model

    def targets(self):
        return merge_live.write_targets(merge_live.live_tensors(self._sd_model(), self._keys))

    def clean_values(self, keys):
        live = merge_live.live_tensors(self._sd_model(), frozenset(keys))
        return {key: merge_live.clean_value(live[key]) for key in keys}

    def before_write(self, groups):
        modules = merge_live.modules_by_group(self._sd_model(), groups)
        merge_live.unbake_lora(m for group in modules.values() for m in group)

    def after_write(self, ratios):
        modules = merge_live.modules_by_group(self._sd_model(), ratios)
        for group, ratio in ratios.items():
            merge_live.reset_lora_caches(modules[group])  # Lora bakes again, on top of what is there now
            if ratio is None:
                self._fp16.put_back(modules[group])
            else:
                self._fp16.set_aside(modules[group])
        if "te" in ratios:
            drop_cached_conds()

    def alive(self) -> bool:
        model = self._model()
        return model is not None and any(m is model for m in sd_models.model_data.loaded_sd_models)

    def close(self) -> None:
        if self._model() is not None:
            self._fp16.put_back()

    def reload(self) -> bool:
        """A forced load of the model's checkpoint file: A1111's "Unload/Reload" would move the same (merged)
        tensors. Nothing when the model is gone or holds another checkpoint since (a real load replaced them)."""
        model = self._model()
        if model is None or not self.alive():
            return False
        info = model.sd_checkpoint_info
        if info is None or os.path.abspath(info.filename) != os.path.abspath(self._model_a):
            return False
        load_checkpoint(info, forced=True)
        return True


def merge_live_dtypes(sd_model) -> dict:
    """{merge group: the dtype its weights are loaded in}: what the in-memory merge computes each group in."""
    by_group = merge_live.modules_by_group(sd_model, MERGEABLE_GROUPS)
    dtypes = {group: merge_live.loaded_dtype(modules) for group, modules in by_group.items()}
    return {group: dtype for group, dtype in dtypes.items() if dtype is not None}


def sync_merge(p, resolved) -> None:
    """process(): the weights hold this generation's merge (resolved), or the originals (None)."""
    sd_model = p.sd_model
    if resolved is None:
        MERGE_SESSIONS.sync(None, None, lambda: None)
        return
    recipe = resolved.recipe
    placement = placement_for(getattr(shared.opts, MERGE_SOURCES_OPTION, SOURCES_AUTO),
                              low_vram=getattr(sd_model, "lowvram", False))  # --medvram/--lowvram: keep VRAM free
    updates = MERGE_SESSIONS.sync(resolved.key, recipe,
                                  lambda: _ModelHost(sd_model, recipe.model_a), placement=placement)
    if any(update.kind != "prepared" and "te" in update.ratios for update in updates):
        drop_cached_conds(p)


def merge_batch(p) -> None:
    """process_batch: nothing; the weights were written in process()."""


def merge_sampling(p) -> None:
    """process_before_every_sampling: nothing; the weights were written in process()."""


def merge_done(p) -> None:
    """postprocess: nothing; the next generation restores lazily (postprocess is skipped after errors)."""


def release_merge() -> None:
    MERGE_SESSIONS.close()


def merge_model_loaded(sd_model) -> None:
    """on_model_loaded (a checkpoint or VAE loaded, possibly into the same object): restore what is still ours
    (the session's fingerprints tell), free the copies."""
    MERGE_SESSIONS.close()


def merge_status() -> dict:
    session = MERGE_SESSIONS.current
    if session is None:
        return {"applied": {}, "resident_bytes": 0}
    return {"applied": session.merge.applied, "applied_parts": session.merge.applied_parts,
            "last_write": {"tensors": session.merge.last_write.tensors, "bytes": session.merge.last_write.bytes},
            "resident_bytes": session.merge.resident_bytes(),
            "placement": session.merge.placement_used, "placement_note": session.merge.placement_note,
            "recipe": session.merge.recipe.to_dict()}
