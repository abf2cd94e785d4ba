"""A merge as weight patches on clones of a Forge-family WebUI's model patchers: what reForge and Forge Neo share.

Both carry ComfyUI's ModelPatcher (reForge in `ldm_patched`, Neo in `backend/patcher`): patches per key with a
strength, a weight adapter object asked for the patched weight, a `patches_uuid` per patch set, the model's
`current_weight_patches_uuid`, a `backup` of each patched weight and `patch_weight_to_device`. The host module
makes one `ForgePatchMerge` with its own adapter base class, key lookup and name, and exposes its methods under
the names every host has (`sync_merge`, `merge_batch`, ...). The merge itself is lib_ext/merge/patches.py.

The WebUI resets `sd_model.forge_objects` from `forge_objects_after_applying_lora` at every batch and pass, and
puts the unpatched weights back itself whenever another patch set is loaded: the merge is undone per run and a
LoRA's patches stack on top of ours. What is kept between generations is one _PatchSession: the inputs,
memory-mapped, and a weight adapter per merged weight that computes the merge when the WebUI patches it (nothing
is read before, nothing resident after), dropped when a generation asks for no merge or the model changes.
Each patched clone gets a patches_uuid that depends only on (the base patcher's patches, the ratios): when the
next X/Y/Z cell asks for the same ratios, the WebUI sees the weights already patched and does nothing, so a
sweep costs one weight update per distinct ratio. A per-block merge adds each UNet block's patches with that
block's ratio as their strength (no patch where it is 0); when only some blocks' ratios changed, those blocks
are rewritten in place (_rewrite_changed_blocks) instead of the WebUI re-patching the whole UNet.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable

import torch

from lib_ext.hosts.webui_state import drop_cached_conds
from lib_ext.merge import MergeTargetError
from lib_ext.merge.live import loaded_dtype
from lib_ext.merge.patches import PatchMerge, with_wrapped_aliases

UNET_PREFIX, UNET_PATCH_PREFIX, VAE_PREFIX = "model.diffusion_model.", "diffusion_model.", "first_stage_model."
CLONE_MARK = "uncond_lab_merge_clone"
GROUP_OF_PART = {"unet": "unet", "clip": "te", "vae": "vae"}
PART_LABELS = {"unet": "UNet", "clip": "text encoders", "vae": "VAE"}
NOTES_ATTR = "uncond_lab_merge_notes"  # what this generation changes in the weights, logged once per pass


def _log(line: str) -> None:
    print(line, flush=True)


def _held_by_a_parent_module(model: torch.nn.Module, key: str) -> bool:
    """Whether the parameter `key` belongs directly to a module that has child modules with parameters."""
    owner_name, _, _ = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        return False
    return any(True for child in owner.children() for _ in child.parameters())


class _PatchSession:
    """One merge on one loaded model: its mapped inputs, the adapters per part, and the patch-set ids."""

    def __init__(self, owner: "ForgePatchMerge", key: tuple, recipe, sd_model):
        self.owner = owner
        self.key = key
        start = time.perf_counter()
        self.merge = PatchMerge(recipe)
        self.model_config = owner.model_config_of(sd_model.forge_objects.unet)
        self._adapters: dict[str, dict] = {}
        self._uuids: dict[tuple, uuid.UUID] = {}
        self._sets: dict[uuid.UUID, tuple] = {}  # the other way round: (base uuid, group, ratios) of our ids
        _log(f"Uncond Lab: merge prepared in {time.perf_counter() - start:.2f} s (groups "
             f"{', '.join(self.merge.groups)}; read from the memory-mapped files when {owner.webui} patches the "
             "weights)")

    def adapters(self, group: str, patcher) -> dict[str, dict]:
        """{merge part: {WebUI key: adapter}} for a group, made once (the UNet's parts are its block slots): its
        keys are the WebUI's own (its conversion for the text encoders: OpenCLIP's fused in_proj becomes q/k/v
        slices, SDXL's text_projection is transposed), each weight merged in its own live dtype."""
        if group not in self._adapters:
            live = {key: tensor.dtype for key, tensor in patcher.model.state_dict().items()}
            parts = self.merge.file_patches_by_part(group, live, self._conversion(group))
            adapter = self.owner.adapter_class
            self._adapters[group] = {part: with_wrapped_aliases({k: adapter(p) for k, p in patches.items()}, live)
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
            self.owner.our_uuids.add(self._uuids[key])
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

    def parts_of(self, group: str, ratios: dict) -> dict:
        """{part: ratio} of one group (the UNet's block slots, or the group itself)."""
        return {part: ratios[part] for part in self.merge.parts_of(group)}

    def close(self) -> None:
        self.merge.close()
        self._adapters.clear()


class ForgePatchMerge:
    """The merge glue of one Forge-family WebUI. `weight_adapter_base`: its WeightAdapterBase (the patcher asks
    instances of it for the patched weight); `get_key_weight(model, key)`: its lookup of a live weight;
    `model_config_of(unet_patcher)`: the object whose `process_clip_state_dict` converts checkpoint text-encoder
    keys to the WebUI's; `on_load_event`: the patcher's callback type run after it loads (patches) the weights,
    where the WebUI has callbacks (reForge), to patch the weights its loader skips (_patch_stranded_weights)."""

    def __init__(self, webui: str, weight_adapter_base: type, get_key_weight: Callable,
                 model_config_of: Callable, on_load_event: str | None = None):
        self.webui = webui
        self.get_key_weight = get_key_weight
        self.model_config_of = model_config_of
        self.on_load_event = on_load_event
        self.session: _PatchSession | None = None  # outlives a generation: a sweep reuses it
        self.our_uuids: set = set()  # every patch-set id we made (a few per ratio): tells our patches from others'
        self.te_state = None  # the text-encoder merge the WebUI's cached conds were computed with

        class MergeAdapter(weight_adapter_base):
            """A patch the WebUI asks for the patched weight (its calculate_weight): ours merges its float32
            working copy, the patch strength being the merge ratio."""
            name = "uncond_lab_merge"

            def __init__(self, patch):
                self.patch, self.loaded_keys, self.weights = patch, set(), []

            def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                                 intermediate_dtype=torch.float32, original_weight=None):
                return self.patch.merge_into(weight, strength)

        self.adapter_class = MergeAdapter

    # --- the patched clones ----------------------------------------------------------------------------------

    def _patched_clone(self, base, group: str, ratios: dict):
        """A clone of `base` (UnetPatcher, CLIP or VAE) with the merge's patches first in each key's list, each
        part's with its ratio as the strength ({part: ratio}: the UNet's block slots, or the group); None when
        no ratio needs a patch (0: model A)."""
        if all(ratio == 0.0 for ratio in ratios.values()):
            return None
        session = self.session
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
                raise MergeTargetError(f"{self.webui}'s UNet has no weight for {len(entries) - len(accepted)} "
                                       f"merged keys, e.g. {missing}")
            for key in accepted:  # ours first, so that a LoRA's patches apply on top of the merge
                patches = patcher.patches[key]
                patches.insert(0, patches.pop())
            self._patch_stranded_weights(patcher, accepted)
        patcher.patches_uuid = session.patch_set_id(getattr(base, "patcher", base).patches_uuid, group,
                                                    tuple(sorted(ratios.items())))
        setattr(clone, CLONE_MARK, True)
        return clone

    def _patch_stranded_weights(self, patcher, keys) -> None:
        """Have the patcher patch, when it loads, the weights its loader skips: the direct parameters of a module
        that has children ("skip random weights in non leaf modules" in the ComfyUI-family `_load_list`), such as
        SDXL's pooled projection `clip_g.text_projection` on reForge. They are patched in place, through the
        patcher's own patch_weight_to_device, so its backup holds A's value and its unpatch puts it back exactly
        like every other weight; in place because the WebUI's SDXL embedder holds that parameter object itself
        (reForge forge_loader.py: `embedder.text_projection = ...clip_g.text_projection`)."""
        stranded = [key for key in keys if _held_by_a_parent_module(patcher.model, key)]
        if not stranded or self.on_load_event is None:
            return

        def patch_in_place(loaded_patcher, device_to, *args):
            for key in stranded:
                loaded_patcher.patch_weight_to_device(key, device_to=device_to, inplace_update=True)

        patcher.add_callback(self.on_load_event, patch_in_place)

    def _rewrite_changed_blocks(self, unet) -> None:
        """Go from the UNet patch set the WebUI has loaded to the one `unet` carries by rewriting only the blocks
        whose ratio differs (an X/Y/Z cell to the next, over one block), when both are this merge's on the same
        base (the same LoRAs) and the model is fully loaded. The WebUI itself compares one patch-set id and,
        when it changed, restores and re-patches every patched weight of the UNet. Each rewritten weight is made
        as the WebUI makes it: A from its backup, then every patch of the key (ours first, a LoRA's after); then
        the WebUI is told that this set is loaded, so it keeps the weights as they are (its path for a repeated
        generation)."""
        if not torch.is_inference_mode_enabled():
            return  # a probe or the sweep route: the weights may be a generation's inference tensors, not writable
        session, model = self.session, unet.model
        loaded, wanted = model.current_weight_patches_uuid, unet.patches_uuid
        if loaded == wanted or getattr(model, "model_lowvram", True) or not getattr(model,
                                                                                     "model_loaded_weight_memory", 0):
            return
        before, after = session.unet_state(loaded), session.unet_state(wanted)
        if before is None or after is None or before[0] != after[0]:
            return  # another base (a LoRA changed) or nothing loaded: the WebUI re-patches everything
        start = time.perf_counter()
        changed = [part for part, ratio in after[1].items() if before[1][part] != ratio]
        adapters = session.adapters("unet", unet)
        count, nbytes = 0, 0
        with torch.no_grad():
            for part in changed:
                for key in adapters.get(part, ()):
                    if key not in unet.backup and key not in unet.patches:
                        continue  # never patched, not patched now: A's weight, untouched
                    weight = self.get_key_weight(model, key)[0]
                    if key in unet.backup:
                        weight.copy_(unet.backup[key].weight)
                    unet.patch_weight_to_device(key, device_to=weight.device)
                    count, nbytes = count + 1, nbytes + weight.numel() * weight.element_size()
        model.current_weight_patches_uuid = wanted
        _log(f"Uncond Lab: merge blocks {', '.join(changed) or 'none'} rewritten in place in "
             f"{time.perf_counter() - start:.2f} s ({count} weights, {nbytes / 1e6:.1f} MB written; {self.webui} "
             "keeps the rest of the UNet as patched)")

    @staticmethod
    def live_dtypes(sd_model) -> dict:
        """{merge group: the dtype its weights are loaded in}, read where the patches read it (the patcher's
        model): what the in-memory merge computes each group in."""
        objects, dtypes = getattr(sd_model, "forge_objects", None), {}
        for name, group in GROUP_OF_PART.items():
            part = getattr(objects, name, None)
            model = getattr(getattr(part, "patcher", part), "model", None)
            dtype = loaded_dtype([model]) if model is not None else None
            if dtype is not None:
                dtypes[group] = dtype
        return dtypes

    @staticmethod
    def _reset_objects(sd_model) -> None:
        """Drop our clones left on `forge_objects` by the last generation (the WebUI only resets at the next
        batch)."""
        objects = getattr(sd_model, "forge_objects", None)
        if objects is not None and any(getattr(getattr(objects, name, None), CLONE_MARK, False)
                                       for name in ("unet", "clip", "vae")):
            sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()

    def _assign(self, p, names: tuple[str, ...], resolved=None) -> None:
        """Put the merge's clones of these parts on `p.sd_model.forge_objects` (the ones in place are the
        bases), and note on `p` which parts the WebUI will (re)patch or unpatch when it next loads them."""
        resolved = resolved or getattr(p, "uncond_lab_merge", None)
        session = self.session
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
                clone = self._patched_clone(part, group, session.parts_of(group, ratios))
                if clone is not None:
                    setattr(objects, name, clone)
                    part = clone
            patcher = getattr(part, "patcher", part)
            loaded = patcher.model.current_weight_patches_uuid
            if notes is None or loaded == patcher.patches_uuid:
                continue
            if getattr(part, CLONE_MARK, False):
                values = set(session.parts_of(group, ratios).values())
                notes.setdefault("applied", {})[name] = values.pop() if len(values) == 1 else "per block"
            elif loaded in self.our_uuids:
                notes.setdefault("restored", {})[name] = None

    def _log_notes(self, p) -> None:
        notes = getattr(p, NOTES_ATTR, None)
        if not notes:
            return
        resolved = getattr(p, "uncond_lab_merge", None)
        if notes.get("applied"):
            parts = ", ".join(f"{PART_LABELS[n]} {r if isinstance(r, str) else format(r, 'g')}"
                              for n, r in notes["applied"].items())
            blocks = f", blocks {resolved.recipe.blocks}" if resolved.recipe.blocks else ""
            _log(f"Uncond Lab: merge ratio {resolved.recipe.unet_ratio:g}{blocks} applied as {self.webui} weight "
                 f"patches ({parts})")
        if notes.get("restored"):
            parts = ", ".join(PART_LABELS[n] for n in notes["restored"])
            _log(f"Uncond Lab: merge restored: {self.webui} unpatches the weights ({parts})")
        notes.clear()

    def _note_text_encoder_state(self, p, state) -> None:
        """Drop the WebUI's cached conds (their key ignores weights) when the text encoders' merge changed."""
        if self.te_state == state:
            return
        self.te_state = state
        drop_cached_conds(p)

    # --- the host interface (lib_ext/hosts/common.py calls these through the host module) -----------------

    def sync_merge(self, p, resolved) -> None:
        """process(): prepare this generation's differences (or drop them); the patches go on in the hooks
        below."""
        setattr(p, NOTES_ATTR, {})
        self._reset_objects(p.sd_model)
        if resolved is None:
            self.release_merge()
            return
        if self.session is None or self.session.key != resolved.key:
            self.release_merge()
            self.session = _PatchSession(self, resolved.key, resolved.recipe, p.sd_model)
        self.session.merge.part_ratios(resolved.recipe)  # per-block ratios that do not fit: refused here (422)
        self._assign(p, ("vae",), resolved)  # img2img encodes its init image in p.init(), before any batch

    def merge_batch(self, p) -> None:
        """process_batch (after the batch's forge_objects reset, before the conds): the text encoders'
        patches."""
        resolved = getattr(p, "uncond_lab_merge", None)
        te_state = None
        if resolved is not None and self.session is not None and "te" in self.session.merge.groups:
            ratio = resolved.recipe.group_ratios()["te"]
            te_state = None if ratio == 0.0 else (resolved.key, ratio)
        self._note_text_encoder_state(p, te_state)
        self._assign(p, ("clip",))

    def merge_sampling(self, p) -> None:
        """process_before_every_sampling (after the WebUI's reset for this pass): UNet, VAE, and the text
        encoders again (the hires pass encodes its conds after this reset)."""
        self._assign(p, ("unet", "vae", "clip"))
        self._log_notes(p)
        if self.session is not None and getattr(p, "uncond_lab_merge", None) is not None:
            self._rewrite_changed_blocks(p.sd_model.forge_objects.unet)

    def merge_done(self, p) -> None:
        """postprocess: put the WebUI's own objects back (skipped after an error: the next process() does it)."""
        self._reset_objects(p.sd_model)

    def release_merge(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()
            _log(f"Uncond Lab: merge released ({self.webui} restores the weights when it next loads the model)")

    def merge_model_loaded(self, sd_model) -> None:
        self.release_merge()

    def merge_status(self) -> dict:
        session = self.session
        if session is None:
            return {"applied": {}, "resident_bytes": 0}
        return {"applied": {}, "resident_bytes": 0, "placement": "mapped",
                "recipe": session.merge.recipe.to_dict()}
