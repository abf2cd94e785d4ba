"""What only reForge needs. Same names as `a1111.py`: compare the two to see every difference."""
from __future__ import annotations

import functools
import logging
import time
import uuid

import torch
from ldm_patched.modules import model_management
from ldm_patched.modules import model_sampling as ldm_model_sampling
from ldm_patched.modules.model_patcher import get_key_weight
from ldm_patched.modules.model_sampling import CONST
from ldm_patched.modules.weight_adapter import WeightAdapterBase
from modules import sd_models, sd_samplers_common, sd_samplers_kdiffusion, shared
from modules_forge import main_thread

from lib_ext.flow import (SUBSTITUTE, FlowDenoiser, RfPlan, checked_flow_sigmas, flow_noise_as_ve_noise,
                          rf_sampler_policy, seeded_euler_ancestral_rf)
from lib_ext.hosts.webui_state import drop_cached_conds
from lib_ext.merge import MergeTargetError
from lib_ext.merge.patches import PatchMerge, with_wrapped_aliases
from lib_ext.probe import flow_noising, ve_noising

log = logging.getLogger("uncond_lab")

# reForge drops the uncond at CFG 1 (ldm_patched samplers.sampling_function's cfg1 optimisation).
SKIPS_UNCOND_AT_CFG1 = True


def current_sigma(params) -> float:
    """The noise level of this denoiser call. reForge's callback sees the plain batch, and its DDIM-family
    denoiser has already turned timesteps into sigmas."""
    return float(params.sigma[0])


def percent_to_sigma(denoiser, percent: float) -> float:
    """ComfyUI's own percent → sigma of the model sampling in use (flow patches included)."""
    model_sampling = denoiser.p.sd_model.forge_objects.unet.get_model_object("model_sampling")
    return float(model_sampling.percent_to_sigma(percent))


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
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or []:
        if getattr(script, "name", None) == AMS_NAME:
            return list(p.script_args[script.args_from:script.args_to])
    return None


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
        if rf_sampler_policy(sampler.config.name).action == SUBSTITUTE:
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


# --- merge: weight patches on clones of reForge's patchers (lib_ext/merge/patches.py) -----------------------
# reForge resets `sd_model.forge_objects` from `forge_objects_after_applying_lora` at every batch and pass, and
# puts the unpatched weights back itself whenever another patch set is loaded: the merge is undone per run and
# a LoRA's patches stack on top of ours. What is kept between generations is one _PatchSession: the inputs,
# memory-mapped, and a weight adapter per merged weight that computes the merge when reForge patches it (nothing
# is read before, nothing resident after), dropped when a generation asks for no merge or the model changes.
# Each patched clone gets a patches_uuid that depends only on (the base patcher's patches, the ratios): when the
# next X/Y/Z cell asks for the same ratios, reForge sees the weights already patched and does nothing, so a sweep
# costs one weight update per distinct ratio. A per-block merge adds each UNet block's patches with that block's
# ratio as their strength (no patch where it is 0); when only some blocks' ratios changed, those blocks are
# rewritten in place (_rewrite_changed_blocks) instead of reForge re-patching the whole UNet.

UNET_PREFIX, UNET_PATCH_PREFIX, VAE_PREFIX = "model.diffusion_model.", "diffusion_model.", "first_stage_model."
CLONE_MARK = "uncond_lab_merge_clone"
MERGE_SOURCES_OPTION = None  # no setting: the patches always read the mapped files


def _log(line: str) -> None:
    print(line, flush=True)


class _MergeAdapter(WeightAdapterBase):
    """A patch reForge asks for the patched weight (R ldm_patched/modules/lora.py calculate_weight): ours merges
    its float32 working copy, the patch strength being the merge ratio."""
    name = "uncond_lab_merge"

    def __init__(self, patch):
        self.patch, self.loaded_keys, self.weights = patch, set(), []

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        return self.patch.merge_into(weight, strength)


class _PatchSession:
    """One merge on one loaded model: its mapped inputs, the adapters per part, and the patch-set ids."""

    def __init__(self, key: tuple, recipe, sd_model):
        self.key = key
        start = time.perf_counter()
        self.merge = PatchMerge(recipe)
        self.model_config = sd_model.forge_objects.unet.model.model_config
        self._adapters: dict[str, dict] = {}
        self._uuids: dict[tuple, uuid.UUID] = {}
        self._sets: dict[uuid.UUID, tuple] = {}  # the other way round: (base uuid, group, ratios) of our ids
        _log(f"Uncond Lab: merge prepared in {time.perf_counter() - start:.2f} s (groups "
             f"{', '.join(self.merge.groups)}; read from the memory-mapped files when reForge patches the weights)")

    def adapters(self, group: str, patcher) -> dict[str, dict]:
        """{merge part: {reForge key: adapter}} for a group, made once (the UNet's parts are its block slots):
        its keys are reForge's own (its conversion for the text encoders: OpenCLIP's fused in_proj becomes q/k/v
        slices, SDXL's text_projection is transposed), each weight merged in its own live dtype."""
        if group not in self._adapters:
            live = {key: tensor.dtype for key, tensor in patcher.model.state_dict().items()}
            parts = self.merge.file_patches_by_part(group, live, self._conversion(group))
            self._adapters[group] = {part: with_wrapped_aliases({k: _MergeAdapter(p) for k, p in patches.items()},
                                                                live)
                                     for part, patches in parts.items()}
        return self._adapters[group]

    def _conversion(self, group: str):
        if group == "unet":
            return lambda tensors: {UNET_PATCH_PREFIX + k[len(UNET_PREFIX):]: t for k, t in tensors.items()}
        if group == "vae":
            return lambda tensors: {k[len(VAE_PREFIX):]: t for k, t in tensors.items()}
        return lambda tensors: self.model_config.process_clip_state_dict(dict(tensors))

    def patch_set_id(self, base_uuid, group: str, ratios: tuple) -> uuid.UUID:
        key = (base_uuid, group, ratios)
        if key not in self._uuids:
            self._uuids[key] = uuid.uuid4()
            self._sets[self._uuids[key]] = key
            PATCHES.our_uuids.add(self._uuids[key])
        return self._uuids[key]

    def unet_state(self, patches_uuid) -> tuple | None:
        """(base patch-set id, {block slot: ratio}) of the UNet weights a patch-set id stands for: one of ours,
        or any other id as a base with no merge (all 0); None for no id (weights not patched) or another group."""
        if patches_uuid is None:
            return None
        base, group, ratios = self._sets.get(patches_uuid, (patches_uuid, "unet", ()))
        if group != "unet":
            return None
        ratios = dict(ratios)
        return base, {part: ratios.get(part, 0.0) for part in self.merge.parts_of("unet")}

    def close(self) -> None:
        self.merge.close()
        self._adapters.clear()


class _PatchState:
    session: _PatchSession | None = None
    our_uuids: set = set()  # every patch-set id we made (a few per ratio): tells our patches from others'


PATCHES = _PatchState()  # module-level: the session outlives a generation (a sweep reuses it)


def _patched_clone(session: _PatchSession, base, group: str, ratios: dict):
    """A clone of `base` (UnetPatcher, CLIP or VAE) with the merge's patches first in each key's list, each part's
    with its ratio as the strength ({part: ratio}: the UNet's block slots, or the group); None when no ratio needs
    a patch (0: model A)."""
    if all(ratio == 0.0 for ratio in ratios.values()):
        return None
    session.merge.check_unchanged()
    clone = base.clone()
    if hasattr(base, "patcher"):  # CLIP/VAE.clone() miss attributes added after them (VAE.disable_offload)
        for name, value in vars(base).items():
            if not hasattr(clone, name):
                setattr(clone, name, value)
    patcher = getattr(clone, "patcher", clone)
    for part, entries in session.adapters(group, patcher).items():
        ratio = ratios[part]
        if ratio == 0.0:
            continue
        accepted = patcher.add_patches(entries, strength_patch=ratio, strength_model=1.0)
        if group == "unet" and len(accepted) != len(entries):
            missing = sorted(set(entries) - set(accepted))[:3]
            raise MergeTargetError(f"reForge's UNet has no weight for {len(entries) - len(accepted)} merged keys, "
                                   f"e.g. {missing}")
        for key in accepted:  # ours first, so that a LoRA's patches apply on top of the merge
            patches = patcher.patches[key]
            patches.insert(0, patches.pop())
    patcher.patches_uuid = session.patch_set_id(getattr(base, "patcher", base).patches_uuid, group,
                                                tuple(sorted(ratios.items())))
    setattr(clone, CLONE_MARK, True)
    return clone


def _rewrite_changed_blocks(session: _PatchSession, unet) -> None:
    """Go from the UNet patch set reForge has loaded to the one `unet` carries by rewriting only the blocks whose
    ratio differs (an X/Y/Z cell to the next, over one block), when both are this merge's on the same base (the
    same LoRAs) and the model is fully loaded. reForge itself compares one patch-set id and, when it changed,
    restores and re-patches every patched weight of the UNet. Each rewritten weight is made as reForge makes it:
    A from its backup, then every patch of the key (ours first, a LoRA's after); then reForge is told that this
    set is loaded, so it keeps the weights as they are (its path for a repeated generation)."""
    if not torch.is_inference_mode_enabled():
        return  # a probe or the sweep route: the weights may be a generation's inference tensors, not writable here
    model = unet.model
    loaded, wanted = model.current_weight_patches_uuid, unet.patches_uuid
    if loaded == wanted or getattr(model, "model_lowvram", True) or not getattr(model, "model_loaded_weight_memory", 0):
        return
    before, after = session.unet_state(loaded), session.unet_state(wanted)
    if before is None or after is None or before[0] != after[0]:
        return  # another base (a LoRA changed) or nothing loaded: reForge re-patches everything
    start = time.perf_counter()
    changed = [part for part, ratio in after[1].items() if before[1][part] != ratio]
    adapters = session.adapters("unet", unet)
    count, nbytes = 0, 0
    with torch.no_grad():
        for part in changed:
            for key in adapters.get(part, ()):
                if key not in unet.backup and key not in unet.patches:
                    continue  # never patched, not patched now: A's weight, untouched
                weight = get_key_weight(model, key)[0]
                if key in unet.backup:
                    weight.copy_(unet.backup[key].weight)
                unet.patch_weight_to_device(key, device_to=weight.device)
                count, nbytes = count + 1, nbytes + weight.numel() * weight.element_size()
    model.current_weight_patches_uuid = wanted
    _log(f"Uncond Lab: merge blocks {', '.join(changed) or 'none'} rewritten in place in "
         f"{time.perf_counter() - start:.2f} s ({count} weights, {nbytes / 1e6:.1f} MB written; reForge keeps the "
         "rest of the UNet as patched)")


def _reset_objects(sd_model) -> None:
    """Drop our clones left on `forge_objects` by the last generation (reForge only resets at the next batch)."""
    objects = getattr(sd_model, "forge_objects", None)
    if objects is not None and any(getattr(getattr(objects, name, None), CLONE_MARK, False)
                                   for name in ("unet", "clip", "vae")):
        sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()


GROUP_OF_PART = {"unet": "unet", "clip": "te", "vae": "vae"}
PART_LABELS = {"unet": "UNet", "clip": "text encoders", "vae": "VAE"}
NOTES_ATTR = "uncond_lab_merge_notes"  # what this generation changes in the weights, logged once per pass


def _assign(p, names: tuple[str, ...], resolved=None) -> None:
    """Put the merge's clones of these parts on `p.sd_model.forge_objects` (the ones in place are the bases),
    and note on `p` which parts reForge will (re)patch or unpatch when it next loads them."""
    resolved = resolved or getattr(p, "uncond_lab_merge", None)
    session = PATCHES.session
    active = resolved is not None and session is not None and session.key == resolved.key
    ratios = session.merge.part_ratios(resolved.recipe) if active else {}
    objects = p.sd_model.forge_objects
    notes = getattr(p, NOTES_ATTR, None)
    for name in names:
        part = getattr(objects, name, None)
        if part is None:
            continue
        group = GROUP_OF_PART[name]
        if active and group in session.merge.groups and not getattr(part, CLONE_MARK, False):
            clone = _patched_clone(session, part, group, _parts_of(session, group, ratios))
            if clone is not None:
                setattr(objects, name, clone)
                part = clone
        patcher = getattr(part, "patcher", part)
        loaded = patcher.model.current_weight_patches_uuid
        if notes is None or loaded == patcher.patches_uuid:
            continue
        if getattr(part, CLONE_MARK, False):
            values = set(_parts_of(session, group, ratios).values())
            notes.setdefault("applied", {})[name] = values.pop() if len(values) == 1 else "per block"
        elif loaded in PATCHES.our_uuids:
            notes.setdefault("restored", {})[name] = None


def _parts_of(session: _PatchSession, group: str, ratios: dict) -> dict:
    """{part: ratio} of one group (the UNet's block slots, or the group itself)."""
    return {part: ratios[part] for part in session.merge.parts_of(group)}


def _log_notes(p) -> None:
    notes = getattr(p, NOTES_ATTR, None)
    if not notes:
        return
    resolved = getattr(p, "uncond_lab_merge", None)
    if notes.get("applied"):
        parts = ", ".join(f"{PART_LABELS[n]} {r if isinstance(r, str) else format(r, 'g')}"
                          for n, r in notes["applied"].items())
        blocks = f", blocks {resolved.recipe.blocks}" if resolved.recipe.blocks else ""
        _log(f"Uncond Lab: merge ratio {resolved.recipe.unet_ratio:g}{blocks} applied as reForge weight patches "
             f"({parts})")
    if notes.get("restored"):
        parts = ", ".join(PART_LABELS[n] for n in notes["restored"])
        _log(f"Uncond Lab: merge restored: reForge unpatches the weights ({parts})")
    notes.clear()


_COND_STATE = {"te": None}  # the text-encoder merge the WebUI's cached conds were computed with


def _note_text_encoder_state(p, state) -> None:
    """Drop the WebUI's cached conds (their key ignores weights) when the text encoders' merge changed."""
    if _COND_STATE["te"] == state:
        return
    _COND_STATE["te"] = state
    drop_cached_conds(p)


def sync_merge(p, resolved) -> None:
    """process(): prepare this generation's differences (or drop them); the patches go on in the hooks below."""
    setattr(p, NOTES_ATTR, {})
    _reset_objects(p.sd_model)
    if resolved is None:
        release_merge()
        return
    if PATCHES.session is None or PATCHES.session.key != resolved.key:
        release_merge()
        PATCHES.session = _PatchSession(resolved.key, resolved.recipe, p.sd_model)
    PATCHES.session.merge.part_ratios(resolved.recipe)  # per-block ratios that do not fit: refused here (422)
    _assign(p, ("vae",), resolved)  # img2img encodes its init image in p.init(), before any batch


def merge_batch(p) -> None:
    """process_batch (after the batch's forge_objects reset, before the conds): the text encoders' patches."""
    resolved = getattr(p, "uncond_lab_merge", None)
    te_state = None
    if resolved is not None and PATCHES.session is not None and "te" in PATCHES.session.merge.groups:
        ratio = resolved.recipe.group_ratios()["te"]
        te_state = None if ratio == 0.0 else (resolved.key, ratio)
    _note_text_encoder_state(p, te_state)
    _assign(p, ("clip",))


def merge_sampling(p) -> None:
    """process_before_every_sampling (after reForge's reset for this pass): UNet, VAE, and the text encoders
    again (the hires pass encodes its conds after this reset)."""
    _assign(p, ("unet", "vae", "clip"))
    _log_notes(p)
    if PATCHES.session is not None and getattr(p, "uncond_lab_merge", None) is not None:
        _rewrite_changed_blocks(PATCHES.session, p.sd_model.forge_objects.unet)


def merge_done(p) -> None:
    """postprocess: put reForge's own objects back (skipped after an error: the next process() does it)."""
    _reset_objects(p.sd_model)


def release_merge() -> None:
    session, PATCHES.session = PATCHES.session, None
    if session is not None:
        session.close()
        _log("Uncond Lab: merge released (reForge restores the weights when it next loads the model)")


def merge_model_loaded(sd_model) -> None:
    release_merge()


def merge_status() -> dict:
    session = PATCHES.session
    if session is None:
        return {"applied": {}, "resident_bytes": 0}
    return {"applied": {}, "resident_bytes": 0, "placement": "mapped",
            "recipe": session.merge.recipe.to_dict()}
