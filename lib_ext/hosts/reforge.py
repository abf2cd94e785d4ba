"""What only reForge needs. Same names as `a1111.py`: compare the two to see every difference."""
from __future__ import annotations

import time
import uuid

from modules import processing

from lib_ext.merge import MergeTargetError
from lib_ext.merge_patches import PATCH_SET, PatchMerge, widest_dtype, with_wrapped_aliases

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


# --- merge: weight patches on clones of reForge's patchers (lib_ext/merge_patches.py) -----------------------
# reForge resets `sd_model.forge_objects` from `forge_objects_after_applying_lora` at every batch and pass, and
# puts the unpatched weights back itself whenever another patch set is loaded: the merge is undone per run and
# a LoRA's patches stack on top of ours. What is kept between generations is only the differences (one
# PatchMerge, dropped when a generation asks for no merge or the model changes).
# Each patched clone gets a patches_uuid that depends only on (the base patcher's patches, our patches): when
# the next X/Y/Z cell asks for the same ratio, reForge sees the weights already patched and does nothing, so a
# sweep costs one weight update per distinct ratio.

UNET_PREFIX, UNET_PATCH_PREFIX, VAE_PREFIX = "model.diffusion_model.", "diffusion_model.", "first_stage_model."
CLONE_MARK = "uncond_lab_merge_clone"


def _log(line: str) -> None:
    print(line, flush=True)


class _PatchSession:
    """The differences of one merge on one loaded model, their reForge key names, and the patch-set ids."""

    def __init__(self, key: tuple, recipe, sd_model):
        self.key = key
        objects = sd_model.forge_objects
        dtypes = {"unet": widest_dtype(objects.unet.model.parameters())}
        if getattr(objects, "clip", None) is not None:
            dtypes["te"] = widest_dtype(objects.clip.cond_stage_model.parameters())
        if recipe.include_vae and getattr(objects, "vae", None) is not None:
            dtypes["vae"] = widest_dtype(objects.vae.first_stage_model.parameters())
        start = time.perf_counter()
        self.merge = PatchMerge(recipe, dtypes)
        self.merge.prepare()
        self.model_config = objects.unet.model.model_config
        self._converted: dict[tuple, dict] = {}
        self._uuids: dict[tuple, uuid.UUID] = {}
        _log(f"Uncond Lab: merge prepared in {time.perf_counter() - start:.2f} s "
             f"({self.merge.resident_bytes() / 1e9:.2f} GB of differences, groups {', '.join(self.merge.groups)})")

    def converted(self, group: str, kind: str, tensors: dict) -> dict:
        """Checkpoint keys → the keys of reForge's patcher for that part (its own conversion for the text
        encoders: OpenCLIP's fused in_proj becomes q/k/v slices, SDXL's text_projection is transposed)."""
        if (group, kind) not in self._converted:
            if group == "unet":
                out = {UNET_PATCH_PREFIX + k[len(UNET_PREFIX):]: t for k, t in tensors.items()}
            elif group == "vae":
                out = {k[len(VAE_PREFIX):]: t for k, t in tensors.items()}
            else:
                out = self.model_config.process_clip_state_dict(dict(tensors))
            self._converted[(group, kind)] = out
        return self._converted[(group, kind)]

    def patch_set_id(self, base_uuid, group: str, kind: str, ratio: float) -> uuid.UUID:
        key = (base_uuid, group, kind, ratio)
        if key not in self._uuids:
            self._uuids[key] = uuid.uuid4()
            PATCHES.our_uuids.add(self._uuids[key])
        return self._uuids[key]

    def close(self) -> None:
        self.merge.close()
        self._converted.clear()


class _PatchState:
    session: _PatchSession | None = None
    our_uuids: set = set()  # every patch-set id we made (a few per ratio): tells our patches from others'


PATCHES = _PatchState()  # module-level: the differences outlive a generation (a sweep reuses them)


def _patched_clone(session: _PatchSession, base, group: str, ratio: float):
    """A clone of `base` (UnetPatcher, CLIP or VAE) with the merge's patches first in each key's list; None when
    the ratio needs no patch."""
    kind, tensors = session.merge.patches(group, ratio)
    if kind is None:
        return None
    clone = base.clone()
    if hasattr(base, "patcher"):  # CLIP/VAE.clone() miss attributes added after them (VAE.disable_offload)
        for name, value in vars(base).items():
            if not hasattr(clone, name):
                setattr(clone, name, value)
    patcher = getattr(clone, "patcher", clone)
    converted = with_wrapped_aliases(session.converted(group, kind, tensors), patcher.model.state_dict().keys())
    entries = {key: ("set", (t,)) if kind == PATCH_SET else (t,) for key, t in converted.items()}
    accepted = patcher.add_patches(entries, strength_patch=1.0 if kind == PATCH_SET else ratio, strength_model=1.0)
    if group == "unet" and len(accepted) != len(entries):
        missing = sorted(set(entries) - set(accepted))[:3]
        raise MergeTargetError(f"reForge's UNet has no weight for {len(entries) - len(accepted)} merged keys, "
                               f"e.g. {missing}")
    for key in accepted:  # ours first, so that a LoRA's patches apply on top of the merge
        patches = patcher.patches[key]
        patches.insert(0, patches.pop())
    patcher.patches_uuid = session.patch_set_id(getattr(base, "patcher", base).patches_uuid, group, kind, ratio)
    setattr(clone, CLONE_MARK, True)
    return clone


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
    ratios = resolved.recipe.group_ratios() if active else {}
    objects = p.sd_model.forge_objects
    notes = getattr(p, NOTES_ATTR, None)
    for name in names:
        part = getattr(objects, name, None)
        if part is None:
            continue
        group = GROUP_OF_PART[name]
        if active and group in session.merge.groups and not getattr(part, CLONE_MARK, False):
            clone = _patched_clone(session, part, group, ratios[group])
            if clone is not None:
                setattr(objects, name, clone)
                part = clone
        patcher = getattr(part, "patcher", part)
        loaded = patcher.model.current_weight_patches_uuid
        if notes is None or loaded == patcher.patches_uuid:
            continue
        if getattr(part, CLONE_MARK, False):
            notes.setdefault("applied", {})[name] = ratios[group]
        elif loaded in PATCHES.our_uuids:
            notes.setdefault("restored", {})[name] = None


def _log_notes(p) -> None:
    notes = getattr(p, NOTES_ATTR, None)
    if not notes:
        return
    resolved = getattr(p, "uncond_lab_merge", None)
    if notes.get("applied"):
        parts = ", ".join(f"{PART_LABELS[n]} {r:g}" for n, r in notes["applied"].items())
        _log(f"Uncond Lab: merge ratio {resolved.recipe.unet_ratio:g} applied as reForge weight patches ({parts})")
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
    for owner in (p, processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img):
        for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
            cache = getattr(owner, name, None)
            if isinstance(cache, list) and cache:
                cache[0] = None


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
    return {"applied": {}, "resident_bytes": session.merge.resident_bytes(),
            "recipe": session.merge.recipe.to_dict()}
