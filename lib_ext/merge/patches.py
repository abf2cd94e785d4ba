"""A merge as weight patches for reForge's ModelPatcher (ComfyUI semantics): exact at both endpoints, undone per
run by reForge itself, composing with LoRA.

reForge applies a patcher's patches when it loads the model, in float32 from the unpatched weight `w`, then
casts back to the weight's dtype (R ldm_patched/modules/model_patcher.py patch_weight_to_device,
ldm_patched/modules/lora.py calculate_weight):

    ("diff", D) at strength s     w ← w + s·D
    ("set", T)                    w ← T

The patches sit on a clone of the patcher that reForge replaces at the next batch or pass, and reForge puts the
unpatched weights back (its backup) whenever another patch set is loaded. So nothing is restored by hand, and a
LoRA's patches apply on top of ours (the host puts ours first in each key's list). Per ratio r:

    weighted sum     r = 0: no patch (model A)    r = 1: ("set", B)    otherwise ("diff", B − A) at r
    add difference   r = 0: no patch (model A)                         otherwise ("diff", B − C) at r

Exactness: r = 0 is A and r = 1 (weighted sum) is B, bit for bit, as reForge would load them (B's file cast to
the live dtype). In between, w + r·D (D rounded once to the difference dtype, then one multiply and one add)
follows the same formula as torch.lerp, which save_merge and the A1111 engine use, but lerp fuses the
multiply-add: at r = 0.5 the two agree bit for bit wherever B − A is exact in the difference dtype (by
Sterbenz's lemma wherever A and B have the same sign and are within a factor of 2, which is most weights of two
fine-tunes; for float16 values and a float32 difference, wherever neither is over 2^12 times the other);
elsewhere they may differ by one unit in the last place.

Memory: D for every merged key in the difference dtype (the live dtype, float16 for float8 storage; float32 for
an exact r = 0.5 with float16 models, at twice the memory), plus B's tensors once ratio 1 is asked for (weighted
sum). reForge itself keeps a backup of each patched weight while the patches are loaded (one more copy).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from lib_ext.merge.inplace import compute_dtype_for
from lib_ext.merge.recipe import WEIGHTED_SUM, MergeRecipe
from lib_ext.merge.sources import MergeInputs, MergePlan, SafetensorsSource, TensorSource, plan_merge

PATCH_SET, PATCH_DIFF = "set", "diff"


def patch_kind(method: str, ratio: float) -> str | None:
    """The patch that puts a group at `ratio`: None (nothing, model A), "set" (weighted sum at 1) or "diff"."""
    if ratio == 0.0:
        return None
    if method == WEIGHTED_SUM and ratio == 1.0:
        return PATCH_SET
    return PATCH_DIFF


class PatchMerge:
    """The tensors a merge's patches need, read once from the files: D per merged key, B on demand.

    group_dtypes: {group: live dtype} for the groups to patch (others are ignored); D is kept in that dtype (or
    float8's compute dtype) unless `difference_dtype` is given.
    """

    def __init__(self, recipe: MergeRecipe, group_dtypes: Mapping[str, torch.dtype], *,
                 inputs: MergeInputs | None = None, difference_dtype: torch.dtype | None = None):
        self.recipe = recipe
        self._owns_inputs = inputs is None
        self.inputs = MergeInputs.open(recipe) if inputs is None else inputs
        try:
            self.plan: MergePlan = plan_merge(recipe, self.inputs)
        except BaseException:
            self.close()
            raise
        self.group_dtypes = {g: compute_dtype_for(d) for g, d in group_dtypes.items() if g in self.plan.groups}
        self.difference_dtype = difference_dtype
        self._differences: dict[str, dict[str, torch.Tensor]] = {}
        self._endpoints: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.group_dtypes)

    @property
    def prepared(self) -> bool:
        return bool(self._differences)

    def prepare(self) -> None:
        """Compute D = B − A (weighted sum) or B − C (add difference) for every merged key, key by key."""
        if self.prepared:
            return
        other = self.inputs.a if self.recipe.method == WEIGHTED_SUM else self.inputs.c
        differences: dict[str, dict[str, torch.Tensor]] = {}
        with torch.no_grad():
            for group, dtype in self.group_dtypes.items():
                stored = self.difference_dtype or dtype
                differences[group] = {key: self._difference(key, other, dtype).to(stored)
                                      for key in self.plan.keys_of(group)}
        self._differences = differences
        if self._owns_inputs:
            self.inputs.close()  # B is reopened if ratio 1 is asked for

    def _difference(self, key: str, other: TensorSource, dtype: torch.dtype) -> torch.Tensor:
        """B − other in float32, each side first cast to the live dtype (the values reForge would load)."""
        b = self.inputs.b.tensor(key).to(dtype).float()
        return b.sub_(other.tensor(key).to(dtype).float())

    def differences(self, group: str) -> dict[str, torch.Tensor]:
        self.prepare()
        return self._differences[group]

    def endpoint(self, group: str) -> dict[str, torch.Tensor]:
        """B's tensors of a group in the live dtype (the "set" patch of a weighted sum at ratio 1)."""
        if group not in self._endpoints:
            dtype = self.group_dtypes[group]
            source, opened = self.inputs.b, None
            if self._owns_inputs:
                source = opened = SafetensorsSource(self.recipe.model_b)
            try:
                self._endpoints[group] = {key: source.tensor(key).to(dtype) for key in self.plan.keys_of(group)}
            finally:
                if opened is not None:
                    opened.close()
        return self._endpoints[group]

    def patches(self, group: str, ratio: float) -> tuple[str | None, dict[str, torch.Tensor]]:
        """(kind, {checkpoint key: tensor}) for a group at `ratio`; kind None means no patch."""
        kind = patch_kind(self.recipe.method, ratio)
        if kind is None:
            return None, {}
        return kind, self.endpoint(group) if kind == PATCH_SET else self.differences(group)

    def resident_bytes(self) -> int:
        return sum(t.nbytes for held in (self._differences, self._endpoints)
                   for tensors in held.values() for t in tensors.values())

    def close(self) -> None:
        self._differences, self._endpoints = {}, {}
        if self._owns_inputs:
            self.inputs.close()


def widest_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """The widest floating dtype among a model's weights (reForge keeps e.g. the token embedding in float32 beside
    float16 text-encoder layers): D and B are kept in it, so that every weight gets its exact value."""
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    return max(dtypes, key=lambda d: d.itemsize) if dtypes else torch.float32


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


def reforge_weight(weight: torch.Tensor, patches: Iterable[tuple[float, str, torch.Tensor]]) -> torch.Tensor:
    """What reForge computes for one weight from (strength, kind, tensor) patches: float32, then cast back
    (calculate_weight's "diff" and "set" branches; a stand-in for tests and documentation)."""
    w = weight.to(torch.float32, copy=True)
    for strength, kind, tensor in patches:
        if kind == PATCH_SET:
            w.copy_(tensor)
        else:
            w += strength * tensor.to(w.dtype)
    return w.to(weight.dtype)
