"""A merge as weight patches for reForge's ModelPatcher: computed from the memory-mapped files when reForge applies
them, nothing resident, undone per run by reForge itself, composing with LoRA.

reForge applies a patcher's patches when it loads the model, to a float32 working copy of the unpatched weight,
then casts back to the weight's dtype (R ldm_patched/modules/model_patcher.py patch_weight_to_device,
ldm_patched/modules/lora.py calculate_weight). A patch may be a weight adapter object, asked for the patched
weight with the patch's strength: the host wraps each `FilePatch` in one (lib_ext/hosts/reforge.py), with the
merge ratio as the strength. Per ratio r:

    r = 0     no patch (model A)
    else      FilePatch: weighted sum  lerp(w, B, r)          (r = 1 copies B)
                         add difference  w + r·(B − C)

A per-block merge (recipe.blocks) has one ratio per part (`part_ratios`: each UNet block slot, the text encoders,
the VAE): the host adds each part's patches with that part's ratio as their strength (`file_patches_by_part`).

The patches sit on a clone of the patcher that reForge replaces at the next batch or pass, and reForge puts the
unpatched weights back (its backup) whenever another patch set is loaded. So nothing is restored by hand, and a
LoRA's patches apply on top of ours (the host puts ours first in each key's list).

Exactness: the operands, kernels and dtype are InPlaceMerge's (A1111): A and B in the live dtype (float16 for
float8 storage), D = B − C in float32 rounded to it, torch.lerp / torch.add computed in that dtype and widened
into reForge's working copy, which reForge's cast back returns exactly. So every ratio gives A1111's weights bit
for bit (tested), r = 0 is A and r = 1 (weighted sum) B as reForge would load them.

Memory: none resident but the cast buffers the patches share (at most 4 Mi elements per role and dtype, reused
for every weight: a fresh tensor per weight would stay in glibc's arenas). The patches hold views of the mapped
files (the OS page cache holds their pages while RAM allows); a switch reads B (and C) of each weight as reForge
patches it. reForge itself keeps a backup of each
patched weight while the patches are loaded (one copy of the patched groups; its own business).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch

from lib_ext.merge.blocks import unet_slot
from lib_ext.merge.inplace import compute_dtype_for
from lib_ext.merge.keys import UNET
from lib_ext.merge.ops import CastBuffers, add_difference_into, merge_operand, pieces, weighted_sum_into
from lib_ext.merge.recipe import WEIGHTED_SUM, MergeRecipe
from lib_ext.merge.sources import MergeInputs, MergePlan, plan_merge


class FilePatch:
    """One weight's merge, computed only when the host applies it, from views of the mapped B (and C)."""
    __slots__ = ("method", "b", "c", "live_dtype", "buffers")

    def __init__(self, method: str, b: torch.Tensor, c: torch.Tensor | None, live_dtype: torch.dtype,
                 buffers: CastBuffers | None = None):
        self.method, self.b, self.c, self.live_dtype = method, b, c, live_dtype
        self.buffers = buffers or CastBuffers()  # shared by a merge's patches: no allocation per weight

    def merge_into(self, weight: torch.Tensor, ratio: float) -> torch.Tensor:
        """`weight` (A as loaded, in the live dtype or wider: reForge's float32 working copy) ← the merge at
        `ratio`, computed in the live dtype as InPlaceMerge computes it, a piece at a time; in place, returns
        `weight`."""
        with torch.no_grad():  # the host's working copy may come from a parameter that requires grad
            dtype, device, buffers = compute_dtype_for(self.live_dtype), weight.device, self.buffers
            write = weighted_sum_into if self.method == WEIGHTED_SUM else add_difference_into
            for piece in pieces(weight):
                out = piece(weight)
                a = buffers.cast("a", out, device, dtype)  # exact: the working copy holds A as loaded
                other = merge_operand(self.method, piece(self.b), None if self.c is None else piece(self.c),
                                      device, dtype, None, buffers)
                write(a, a, other, ratio)
                if a is not out:
                    out.copy_(a)  # widening: the host's cast back gives these bits again
        return weight


class PatchMerge:
    """A merge's inputs, mapped and checked, handing out FilePatches per group. Nothing is read into memory."""

    def __init__(self, recipe: MergeRecipe, *, inputs: MergeInputs | None = None):
        self.recipe = recipe
        self._owns_inputs = inputs is None
        self.inputs = MergeInputs.open(recipe) if inputs is None else inputs
        self.buffers = CastBuffers()  # the patches' cast buffers (reForge patches one weight at a time)
        try:
            self.plan: MergePlan = plan_merge(recipe, self.inputs)
        except BaseException:
            self.close()
            raise

    @property
    def groups(self) -> tuple[str, ...]:
        return self.plan.groups

    def part_ratios(self, recipe: MergeRecipe) -> dict[str, float]:
        """{part: ratio} of `recipe` (this merge at some ratios) for these inputs: the UNet per block slot when
        it has that layout; raises RecipeError naming the value when recipe.blocks does not fit."""
        return recipe.part_ratios(self.plan.layout)

    def parts_of(self, group: str) -> tuple[str, ...]:
        """The parts of a group that part_ratios() names: the UNet's block slots, or the group itself."""
        if group == UNET and self.plan.layout is not None:
            return self.plan.layout.unet_slots
        return (group,)

    def file_patches_by_part(self, group: str, live_dtypes: Mapping[str, torch.dtype],
                             convert: Callable[[dict], dict] = dict) -> dict[str, dict[str, FilePatch]]:
        """{part: {host key: FilePatch}}: file_patches() split by the parts part_ratios() names."""
        parts: dict[str, list[str]] = {}
        for key in self.plan.keys_of(group):
            slot = unet_slot(key) if group == UNET and self.plan.layout is not None else None
            parts.setdefault(slot or group, []).append(key)
        return {part: self.file_patches(group, live_dtypes, convert, keys) for part, keys in parts.items()}

    def file_patches(self, group: str, live_dtypes: Mapping[str, torch.dtype],
                     convert: Callable[[dict], dict] = dict, keys: list[str] | None = None) -> dict[str, FilePatch]:
        """{host key: FilePatch} for a group's weights (or these `keys` of it). `convert` maps {checkpoint key:
        tensor} to the host's keys (reForge: its own text-encoder conversion, which slices and transposes views
        without reading them); live_dtypes: {host key: the loaded weight's dtype} (float32 for a key the host
        lacks)."""
        keys = self.plan.keys_of(group) if keys is None else keys
        b = convert({key: self.inputs.b.view(key) for key in keys})
        c = convert({key: self.inputs.c.view(key) for key in keys}) if self.inputs.c is not None else {}
        return {key: FilePatch(self.recipe.method, tensor, c.get(key), live_dtypes.get(key, torch.float32),
                               self.buffers) for key, tensor in b.items()}

    def check_unchanged(self) -> None:
        """Raise if an input was rewritten in place (the patches would read other values)."""
        for source in self.inputs.by_role().values():
            source.check_unchanged()

    def close(self) -> None:
        self.buffers = CastBuffers()
        if self._owns_inputs:
            self.inputs.close()


def with_wrapped_aliases(tensors: Mapping[str, torch.Tensor], live_keys) -> dict[str, torch.Tensor]:
    """Patches for the names a hijack wrapper hides a weight under, too. reForge wraps the text encoders' token
    embedding as EmbeddingsWithFixes(wrapped) with `weight = wrapped.weight` (R modules/sd_hijack.py:165-171):
    the state dict lists it twice, and the patcher, which replaces a parameter by attribute path, would replace
    only the wrapper's reference while the forward reads `wrapped.weight`."""
    out = dict(tensors)
    for key, tensor in tensors.items():
        head, _, leaf = key.rpartition(".")
        hidden = f"{head}.wrapped.{leaf}"
        if hidden in live_keys:
            out[hidden] = tensor
    return out


def reforge_weight(weight: torch.Tensor, patch: FilePatch | None, ratio: float) -> torch.Tensor:
    """What reForge computes for one weight with our patch (a stand-in for tests and documentation): a float32
    working copy, the adapter's result, then the cast back."""
    w = weight.to(torch.float32, copy=True)
    if patch is not None:
        w = patch.merge_into(w, ratio)
    return w.to(weight.dtype)
