"""A merge applied in place to a loaded model: a ratio change is one fused pass over its parameters.

The host hands over the live tensors as {checkpoint key → tensor} (or a callable returning that mapping each
time, for hosts that move modules between devices, e.g. A1111 --medvram); the engine never imports a WebUI.

    merge = InPlaceMerge(recipe, targets)          # checks the inputs (headers only)
    with merge:                                    # prepare(): the resident copies, read once
        for ratio in (0.0, 0.5, 1.0):
            changed = merge.apply(ratio)           # one pass per changed part; {'unet', 'te'} ⊇ changed
        merge.apply(0.5, blocks="IN04=1")          # per-block ratios: rewrites IN04 only (parts: the UNet's
                                                   # block slots, the text encoders, the VAE)
            ...generate...                         # the host drops its text-encoder caches if 'te' in changed
                                                   # exit (also on an exception or Ctrl-C): restore() + free

Where A and B come from at a switch (`placement`):
    "device"  resident copies beside each live tensor (the fast path: a GPU ratio change in milliseconds)
    "cpu"     resident copies in RAM, computed there and copied to the device through a staging buffer
    "mapped"  no copies: A, B (and C) are read at every switch from their memory-mapped .safetensors files,
              cast to the live dtype as the host loaded them, and the result written into the live tensor.
              The OS page cache holds the files while RAM allows and drops them when it does not (no swap, no
              out-of-memory). Restore reads A's file too; prepare() checks once, tensor by tensor, that the
              live value is A's file value after that cast, and keeps a copy (in RAM) only of the weights where
              it is not (a baked-in LoRA, an override): `resident_bytes()` says how much that was.
    "auto"    "device" when the live tensors are on a GPU with room for the copies, else "mapped".
"device" or "cpu" whose copies would not fit (RAM: MemAvailable less RAM_RESERVE; GPU: free less the device
reserve) falls back to "mapped" and says why in `placement_note`: the same weights, instead of the process being
killed for memory.
The values written are the same whatever the placement, bit for bit (same operands, same kernels, same device).

Resident copies, per merged parameter, in the compute dtype (the live dtype; float16 for float8 storage):
    weighted sum      A and B                 ratio r: lerp(A, B, r) → param; r = 0 copies A, r = 1 copies B
    add difference    A and D = B - C         ratio r: A + r·D → param;       r = 0 copies A
D is computed in float32 from the files, then stored in the compute dtype (default: same memory as B; the
result is within about one unit in the last place of the float32 merge) or in float32 (`difference_dtype=
torch.float32`: the float32 merge rounded once, bit-identical to save_merge's file; fp16 models pay one more
copy for it).
"A" is by default the live weights as found at prepare() (`base="live"`: the restore copy doubles as A, nothing
of A is read from disk). `base="file"` reads A from its file instead, for a host whose live weights may carry
something else (a baked-in LoRA); the live values are then kept too, where they differ, for restore().

Memory, SDXL (UNet 2,567,463,684 parameters, 5.13 GB per fp16 copy; text encoders ≈ 0.82 B, 1.64 GB per copy):
    weighted sum or add difference, UNet only          2 copies = 10.3 GB   (+1.6 GB ×2 with the text encoders)
    add difference, difference_dtype=float32           A + 2·A  = 15.4 GB
    base="file" and the live weights differ from A's   +1 copy (at most)
    placement "cpu" with the model on a GPU            the copies in RAM, plus one staging buffer of the largest
                                                       tensor (SDXL: 59 MB UNet, 126 MB CLIP-G); each switch moves
                                                       one fp16 copy (5.13 GB) host → device
    a switch itself (same device and dtype)            no extra memory: torch.lerp / torch.add write into the
                                                       parameter (`out=`)
`estimate_memory` computes these figures for any set of tensors; `InPlaceMerge.estimate()` for the targets.

See README.md in this folder for the host's side (medvram, float8, inference mode, Lora backups).

Restore is bit-exact: it copies back the saved originals (or A when A is their bit copy). The engine tracks
each group's applied ratio and marks a group dirty while it writes, so restore() after an error or a
KeyboardInterrupt in the middle of a pass rewrites every group not known to hold the originals; restore() is
idempotent and may be called again if it was itself interrupted. Writes run under torch.no_grad().
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import torch

from lib_ext.merge.blocks import unet_slot
from lib_ext.merge.keys import GROUP_LABELS, UNET, classify_key
from lib_ext.merge.ops import (CastBuffers, add_difference_into, bits_equal, merge_operand, pieces,
                               weighted_sum_into)
from lib_ext.merge.recipe import ADD_DIFFERENCE, WEIGHTED_SUM, MergeRecipe
from lib_ext.merge.sources import MergeInputs, MergePlan, plan_merge

Targets = Union[Mapping[str, torch.Tensor], Callable[[], Mapping[str, torch.Tensor]]]

PLACEMENTS = ("auto", "device", "cpu", "mapped")
BASES = ("live", "file")
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEFAULT_DEVICE_RESERVE = 2 * 1024 ** 3  # what placement="auto" leaves free on the device for inference
RAM_RESERVE = 2 * 1024 ** 3  # what resident copies in RAM leave free for generating
_DIRTY = object()  # a group's state while a pass writes it: neither the originals nor a known ratio


class MergeTargetError(ValueError):
    """The host's live tensors do not match the merge (a key, a shape); the message names the key."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an in-place merge holds (resident, between switches) and needs during a switch (staging)."""
    base_bytes: int      # A, one copy in the compute dtype
    other_bytes: int     # B (weighted sum) or D = B - C (add difference)
    original_bytes: int  # base="file": a copy of the live weights, at most (only where they differ from A)
    staging_bytes: int   # one buffer of the largest tensor, when compute cannot write into the parameter

    @property
    def resident_bytes(self) -> int:
        return self.base_bytes + self.other_bytes + self.original_bytes

    @property
    def total_bytes(self) -> int:
        return self.resident_bytes + self.staging_bytes


def available_ram_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """RAM the process may still take (the kernel's MemAvailable) less RAM_RESERVE for generating; None where the
    system does not say (not Linux)."""
    try:
        with open(meminfo, encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 - RAM_RESERVE
    except (OSError, ValueError, IndexError):
        pass
    return None


def compute_dtype_for(live_dtype: torch.dtype) -> torch.dtype:
    """The dtype resident copies are kept in: the live one, or float16 for float8 storage (exact superset)."""
    return live_dtype if live_dtype in COMPUTE_DTYPES else torch.float16


def estimate_memory(tensors: Iterable[Any], method: str, *, difference_dtype: torch.dtype | None = None,
                    base: str = "live", staged: bool = False) -> MemoryEstimate:
    """Bytes for an in-place merge of `tensors` (anything with .shape and .dtype: live tensors, TensorSpecs)."""
    base_bytes = other_bytes = original_bytes = largest = 0
    for t in tensors:
        numel, dtype = math.prod(t.shape), compute_dtype_for(t.dtype)
        base_bytes += numel * dtype.itemsize
        other_dtype = difference_dtype if (method == ADD_DIFFERENCE and difference_dtype is not None) else dtype
        other_bytes += numel * other_dtype.itemsize
        if base == "file":
            original_bytes += numel * t.dtype.itemsize
        largest = max(largest, numel * dtype.itemsize)
    return MemoryEstimate(base_bytes, other_bytes, original_bytes, largest if staged else 0)


@dataclass
class WriteStats:
    """How many live tensors, and bytes of them, one apply() or restore() wrote (for the console line)."""
    tensors: int = 0
    bytes: int = 0

    def add(self, tensor: torch.Tensor) -> None:
        self.tensors += 1
        self.bytes += tensor.numel() * tensor.element_size()


@dataclass
class _Slot:
    """The resident tensors of one parameter (placement "mapped": None where the files provide them)."""
    key: str
    shape: torch.Size
    live_dtype: torch.dtype
    base: torch.Tensor | None        # A: what ratio 0 writes
    other: torch.Tensor | None       # B or D
    original: torch.Tensor | None    # the live values at prepare(), where `base` is not their bit copy

    def resident_bytes(self) -> int:
        return sum(t.nbytes for t in (self.base, self.other, self.original) if t is not None)


class InPlaceMerge:
    """One merge recipe bound to a loaded model's live tensors: prepare once, apply ratios, restore exactly.

    targets: {checkpoint key → live tensor}, or a callable returning it (resolved at every call; use it when
      the host may move or replace the tensors, e.g. A1111 --medvram/--lowvram). Keys of groups the recipe
      does not merge (an unmerged VAE, other keys) are ignored; a group is controlled when at least one of its
      keys is given, and then all its keys must be. Nothing else may write the targets while a ratio is
      applied (call `apply(..., force=True)` after someone did).
    inputs: opened sources; by default the recipe's files are opened, and closed once prepare() has read them.
    placement: "device" keeps the resident copies beside each live tensor, "cpu" in RAM (a switch computes on
      the CPU into a staging buffer, then copies to the device), "mapped" keeps none and reads the files at
      each switch (see the module doc), "auto" picks "device" when the live tensors are on a GPU with room
      for the copies plus `device_reserve_bytes`, else "mapped".
    base: "live" (A = the live weights at prepare()) or "file" (A read from its file); see the module doc.
    difference_dtype: add difference only; None = the compute dtype, or torch.float32.
    """

    def __init__(self, recipe: MergeRecipe, targets: Targets, *, inputs: MergeInputs | None = None,
                 placement: str = "auto", base: str = "live", difference_dtype: torch.dtype | None = None,
                 device_reserve_bytes: int = DEFAULT_DEVICE_RESERVE):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
        if difference_dtype not in (None, torch.float32):
            raise ValueError("difference_dtype must be None (the model's dtype) or torch.float32, "
                             f"got {difference_dtype}")
        self.recipe = recipe
        self.placement, self.base, self.difference_dtype = placement, base, difference_dtype
        self.device_reserve_bytes = device_reserve_bytes
        self._targets = targets
        self._owns_inputs, self._inputs_closed = inputs is None, False
        self.inputs = MergeInputs.open(recipe) if inputs is None else inputs
        try:
            self.plan: MergePlan = plan_merge(recipe, self.inputs)
            self.layout = self.plan.layout
            live = self._resolve()
        except BaseException:
            self._close_inputs()
            raise
        handed_over = {self.plan.group_of(key) for key in live}
        self.groups: tuple[str, ...] = tuple(g for g in self.plan.groups if g in handed_over)
        # Parts: what one ratio applies to, switched and tracked on their own. The UNet's parts are its block
        # slots (IN04, M00, …; blocks.py) when it has that layout, so a per-block change rewrites only that block.
        self._group_of_part: dict[str, str] = {}
        for group in self.groups:
            parts = self.layout.unet_slots if group == UNET and self.layout is not None else (group,)
            self._group_of_part.update((part, group) for part in parts)
        self._slots: dict[str, list[_Slot]] = {}
        self.placement_used: str | None = None  # what "auto" chose, once prepared
        self.placement_note: str | None = None  # why resident copies asked for were not made (no room)
        # Mapped: cast buffers, kept from one switch to the next (at most CHUNK_ELEMENTS per role and dtype: 16 MiB
        # in float32); made again for every pass, they would pile up as freed blocks in glibc's per-thread arenas.
        self._scratch = CastBuffers()
        self._state: dict[str, object] = {p: None for p in self._group_of_part}  # None: originals; a float: ratio
        self.last_write = WriteStats()  # what the last apply() or restore() wrote
        self._staging: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # --- targets --------------------------------------------------------------------------------------

    def _resolve(self) -> dict[str, torch.Tensor]:
        """The live tensors of the merged groups, checked against the plan; raises naming the first bad key."""
        targets = self._targets() if callable(self._targets) else self._targets
        merged_groups = set(self.recipe.group_ratios())
        live: dict[str, torch.Tensor] = {}
        for key, tensor in targets.items():
            group = classify_key(key)
            if group not in merged_groups:
                continue  # an unmerged VAE, other keys: ignored (documented above)
            spec = self.plan.specs.get(key)
            if spec is not None and self.plan.group_of(key) is None:
                continue  # an integer buffer of a merged group: copied from A by a merge, nothing to switch
            if spec is None:
                raise MergeTargetError(f"live tensor '{key}' has no merged counterpart in A = {self.inputs.a.name}; "
                                       "the host's key mapping must use checkpoint keys "
                                       "(e.g. 'model.diffusion_model.*')")
            if tuple(tensor.shape) != spec.shape:
                raise MergeTargetError(f"live tensor '{key}' has shape {list(tensor.shape)}, "
                                       f"the checkpoint {list(spec.shape)}")
            live[key] = tensor
        controlled = {self.plan.group_of(k) for k in live}
        for key, group in self.plan.merged.items():
            if group in controlled and key not in live:
                raise MergeTargetError(f"no live tensor for '{key}': when some {GROUP_LABELS[group]} weights are "
                                       "merged in place, all of them must be given")
        if not live:
            raise MergeTargetError("no live tensor belongs to a merged group (UNet, text encoders, VAE with "
                                   f"include_vae); got {len(targets)} keys, e.g. {next(iter(targets), None)!r}")
        return live

    # --- memory ---------------------------------------------------------------------------------------

    def estimate(self) -> MemoryEstimate:
        """What prepare() holds for these targets with resident copies ("device" or "cpu"; "mapped" holds only the
        weights that differ from A's file); staging counted when a switch may need it (a target off the CPU
        unless placement="device", float8 storage)."""
        live = self._resolve()
        staged = any((t.device.type != "cpu" and self.placement != "device") or compute_dtype_for(t.dtype) != t.dtype
                     for t in live.values())
        return estimate_memory(live.values(), self.recipe.method, difference_dtype=self.difference_dtype,
                               base=self.base, staged=staged)

    def _choose_placement(self, live: Mapping[str, torch.Tensor]) -> str:
        if self.placement in ("device", "cpu"):
            return self._resident_if_room(live)
        if self.placement != "auto":
            return self.placement
        on_device = [t for t in live.values() if t.device.type == "cuda"]
        if not on_device:
            return "mapped"  # copies "beside" CPU weights are copies in RAM: the very memory a user lacks
        need = estimate_memory(on_device, self.recipe.method, difference_dtype=self.difference_dtype,
                               base=self.base).resident_bytes
        free, _total = torch.cuda.mem_get_info(on_device[0].device)
        return "device" if need + self.device_reserve_bytes <= free else "mapped"

    def _resident_if_room(self, live: Mapping[str, torch.Tensor]) -> str:
        """The resident placement asked for, or "mapped" (same weights) when its copies would not fit: in RAM, the
        process would be killed for memory (an SDXL pair in float32 on a 24 GB machine), not warned."""
        self.placement_note = None
        in_ram = self.placement == "cpu" or all(t.device.type == "cpu" for t in live.values())
        on_cuda = [t.device for t in live.values() if t.device.type == "cuda"]
        if in_ram:
            room = available_ram_bytes()
        elif on_cuda:
            room = torch.cuda.mem_get_info(on_cuda[0])[0] - self.device_reserve_bytes
        else:
            room = None  # another accelerator: its free memory is not known here
        need = self.estimate().resident_bytes
        if room is None or need <= room:
            return self.placement
        self.placement_note = (f"resident copies need {need / 1e9:.1f} GB, {max(room, 0) / 1e9:.1f} GB "
                               f"{'of RAM' if in_ram else 'on the device'} is free: reading the memory-mapped "
                               "files instead (same weights)")
        return "mapped"

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def prepared(self) -> bool:
        return bool(self._slots)

    def prepare(self) -> None:
        """Read the resident copies once (B, or B and C, key by key from the files; A from the live tensors)."""
        if self.prepared:
            return
        if self._inputs_closed:  # a prepare() after close(): the files may have changed since, check again
            self.inputs = MergeInputs.open(self.recipe)
            self._inputs_closed = False
            self.plan = plan_merge(self.recipe, self.inputs)
        live = self._resolve()
        placement = self._choose_placement(live)
        load = self._map_slot if placement == "mapped" else self._load_slot
        cpu = torch.device("cpu")
        slots: dict[str, list[_Slot]] = {part: [] for part in self._group_of_part}
        try:
            with torch.no_grad():  # nothing is written to the targets here: an error leaves them as they were
                for key, tensor in live.items():
                    device = cpu if placement == "cpu" else tensor.device
                    slots[self._part_of(key)].append(load(key, tensor, device))
        finally:
            self._scratch = CastBuffers()  # the check's buffer goes back
        self._slots, self.placement_used = slots, placement
        if placement != "mapped":
            self._close_inputs()  # everything needed is resident: release the files (Windows can then move them)

    def _load_slot(self, key: str, tensor: torch.Tensor, device: torch.device) -> _Slot:
        dtype = compute_dtype_for(tensor.dtype)
        original = None
        if self.base == "live":
            base = tensor.detach().to(device=device, dtype=dtype, copy=True)
        else:
            base = self.inputs.a.tensor(key).to(device=device, dtype=dtype)
            if not bits_equal(base.to(tensor.dtype), tensor.detach().to(device)):
                original = tensor.detach().to(device=device, copy=True)
        c = self.inputs.c.tensor(key) if self.inputs.c is not None else None
        other = merge_operand(self.recipe.method, self.inputs.b.tensor(key), c, device, dtype, self.difference_dtype)
        return _Slot(key, tensor.shape, tensor.dtype, base, other, original)

    def _map_slot(self, key: str, tensor: torch.Tensor, device: torch.device) -> _Slot:
        """Mapped: nothing resident, unless the live value is not A's file value as the host casts it (then
        that live value is kept in RAM: as A with base="live", as what restore() writes with base="file")."""
        live, stored, scratch = tensor.detach(), self.inputs.a.view(key), self._scratch
        if all(bits_equal(scratch.cast("check", piece(stored), live.device, live.dtype), piece(live))
               for piece in pieces(live)):
            return _Slot(key, tensor.shape, tensor.dtype, None, None, None)
        if self.base == "live":
            return _Slot(key, tensor.shape, tensor.dtype, live.to("cpu", compute_dtype_for(live.dtype), copy=True),
                         None, None)
        return _Slot(key, tensor.shape, tensor.dtype, None, None, live.to("cpu", copy=True))

    def close(self) -> None:
        """Restore the originals, then free the resident copies (and the inputs the engine opened, if still open)."""
        try:
            if self.prepared:
                self.restore()
        finally:
            self._slots, self._staging, self._scratch = {}, {}, CastBuffers()
            self._close_inputs()

    def _close_inputs(self) -> None:
        if self._owns_inputs:
            self.inputs.close()
            self._inputs_closed = True

    def __enter__(self) -> "InPlaceMerge":
        self.prepare()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def resident_bytes(self) -> int:
        """Bytes of the copies held since prepare() (mapped: only the live values that differ from A's file)."""
        return sum(slot.resident_bytes() for slots in self._slots.values() for slot in slots)

    # --- switching ------------------------------------------------------------------------------------

    @property
    def applied(self) -> dict[str, float | None]:
        """{group: ratio applied}; None where the originals are in place; NaN while a pass is unfinished or when
        the group's parts hold different ratios (a per-block merge: see applied_parts)."""
        out: dict[str, float | None] = {}
        for group in self.groups:
            states = {(math.nan if s is _DIRTY else s) for p, s in self._state.items()
                      if self._group_of_part[p] == group}
            out[group] = states.pop() if len(states) == 1 else math.nan
        return out

    @property
    def applied_parts(self) -> dict[str, float | None]:
        """{part: ratio applied} (the UNet per block slot when it has that layout); None: originals; NaN: dirty."""
        return {p: (math.nan if s is _DIRTY else s) for p, s in self._state.items()}

    def applied_recipe(self) -> MergeRecipe | None:
        """The recipe at the ratios now in the weights (for infotext); None while the originals are in place.

        A group the host did not hand over (e.g. text encoders on a UNet-only host) stays A's: ratio 0. UNet
        blocks at different ratios come back as `blocks` naming every slot.
        """
        ratios: dict[str, float] = {}
        for part, state in self._state.items():
            if state is _DIRTY or (state is None and not self._zero_is_original(part)):
                return None
            ratios[part] = 0.0 if state is None else state
        if all(state is None for state in self._state.values()):
            return None
        unet_parts = [p for p in self._state if self._group_of_part[p] == UNET]
        unet_values = {ratios[p] for p in unet_parts} or {0.0}
        blocks = ", ".join(f"{p}={ratios[p]!r}" for p in unet_parts) if len(unet_values) > 1 else None
        return dataclasses.replace(self.recipe, unet_ratio=self.recipe.unet_ratio if blocks else unet_values.pop(),
                                   te_ratio=ratios.get("te", 0.0),
                                   vae_ratio=ratios.get("vae", 0.0) if self.recipe.include_vae else None,
                                   blocks=blocks)

    def apply(self, unet_ratio: float, te_ratio: float | None = None, vae_ratio: float | None = None, *,
              blocks: str | None = None, force: bool = False) -> frozenset[str]:
        """Write the merge at these ratios into the live tensors; returns the groups whose weights changed.

        te_ratio / vae_ratio None follow unet_ratio, as in a recipe (the VAE only with include_vae); `blocks`
        per-block UNet ratios (blocks.py; None: unet_ratio everywhere). A part (a UNet block, the text
        encoders, the VAE) already at its ratio is skipped unless `force`.
        """
        return self.apply_recipe(self.recipe.with_ratios(unet_ratio, te_ratio, vae_ratio, blocks=blocks),
                                 force=force)

    def apply_recipe(self, recipe: MergeRecipe, *, force: bool = False) -> frozenset[str]:
        """apply() at a recipe's ratios; the recipe must be this merge (same method, models and VAE choice)."""
        if (recipe.method, recipe.models, recipe.include_vae) != (self.recipe.method, self.recipe.models,
                                                                  self.recipe.include_vae):
            raise ValueError(f"recipe '{recipe.describe()}' is not the prepared merge '{self.recipe.describe()}'")
        ratios = recipe.part_ratios(self.layout)  # raises (RecipeError) before anything is written
        self.prepare()
        targets = self._resolve() if callable(self._targets) else self._targets
        changed, stats = set(), WriteStats()
        self.last_write = stats
        with torch.no_grad():
            for part in self.pending_parts(recipe, ratios, force=force):
                a_in_place = self._state[part] is None and self._zero_is_original(part)
                self._check_files()
                self._state[part] = _DIRTY
                self._write_part(part, ratios[part], targets, a_in_place, stats)
                self._state[part] = ratios[part]
                changed.add(self._group_of_part[part])
        return frozenset(changed)

    def pending_parts(self, recipe: MergeRecipe, ratios: Mapping[str, float] | None = None, *,
                      force: bool = False) -> list[str]:
        """The parts apply_recipe(recipe) rewrites: those not at their ratio (ratio 0 is the originals when A is
        their bit copy)."""
        ratios = recipe.part_ratios(self.layout) if ratios is None else ratios
        pending = []
        for part, state in self._state.items():
            ratio = ratios[part]
            if force or not (state == ratio or (ratio == 0.0 and state is None and self._zero_is_original(part))):
                pending.append(part)
        return pending

    def pending_groups(self, recipe: MergeRecipe) -> frozenset[str]:
        """The groups apply_recipe(recipe) rewrites (some of their parts)."""
        return frozenset(self._group_of_part[p] for p in self.pending_parts(recipe))

    def restore(self) -> frozenset[str]:
        """Copy the original weights back, bit for bit, into every part not known to hold them."""
        if not self.prepared:
            return frozenset()
        targets = self._resolve() if callable(self._targets) else self._targets
        changed, stats = set(), WriteStats()
        self.last_write = stats
        with torch.no_grad():
            for part, state in self._state.items():
                if state is None:
                    continue
                self._check_files()
                self._state[part] = _DIRTY
                for slot in self._slots[part]:
                    target = self._checked_target(targets, slot)
                    original = slot.original if slot.original is not None else slot.base
                    # copy_ casts A's file value to the live dtype as the host did (checked at prepare())
                    target.copy_(original if original is not None else self.inputs.a.view(slot.key))
                    stats.add(target)
                self._state[part] = None
                changed.add(self._group_of_part[part])
        return frozenset(changed)

    def forget(self, groups: Iterable[str]) -> None:
        """The host has overwritten these groups itself (it reloaded their weights from a file): count them as
        holding the originals without writing anything, so that restore() and close() leave its new weights
        alone. The resident copies of A no longer describe those groups: close() next."""
        groups = set(groups)
        for part, group in self._group_of_part.items():
            if group in groups:
                self._state[part] = None

    # --- internals ------------------------------------------------------------------------------------

    def _part_of(self, key: str) -> str:
        group = self.plan.group_of(key)
        return unet_slot(key) if group == UNET and self.layout is not None else group

    def _zero_is_original(self, part: str) -> bool:
        """Ratio 0 writes A; when A is the bit copy of the originals, the originals already are ratio 0."""
        return all(slot.original is None for slot in self._slots.get(part, ()))

    @staticmethod
    def _checked_target(targets: Mapping[str, torch.Tensor], slot: _Slot) -> torch.Tensor:
        target = targets[slot.key]
        if target.shape != slot.shape:  # lerp(out=) would resize a parameter instead of failing
            raise MergeTargetError(f"live tensor '{slot.key}' now has shape {list(target.shape)}, "
                                   f"prepared for {list(slot.shape)}")
        return target

    def _check_files(self) -> None:
        """Mapped: A's file is what restore() reads; a file rewritten in place would restore other values."""
        if self.placement_used == "mapped":
            for source in self.inputs.by_role().values():
                source.check_unchanged()

    def _write_part(self, part: str, ratio: float, targets: Mapping[str, torch.Tensor], a_in_place: bool,
                    stats: "WriteStats") -> None:
        """One pass over a part's parameters. The hot loop of a switch: keep it lean (≈ 1680 tensors, SDXL).
        a_in_place: the live tensors hold A (the originals): a mapped switch need not read A's file."""
        write = weighted_sum_into if self.recipe.method == WEIGHTED_SUM else add_difference_into
        if self.placement_used == "mapped":
            for slot in self._slots[part]:
                target = self._checked_target(targets, slot)
                self._write_from_files(slot, target, ratio, write, a_in_place)
                stats.add(target)
            return
        endpoint = ratio == 0.0 or (ratio == 1.0 and self.recipe.method == WEIGHTED_SUM)
        for slot in self._slots[part]:
            target = self._checked_target(targets, slot)
            stats.add(target)
            base = slot.base
            if target.device == base.device and target.dtype == base.dtype:
                write(target, base, slot.other, ratio)  # the fused pass, straight into the parameter
            elif endpoint:
                target.copy_(base if ratio == 0.0 else slot.other)  # copy_ moves and casts exactly
            else:  # resident on the CPU, or float8 storage: compute beside the copies, then one copy_
                buffer = self._staging_buffer(slot, target.device)
                write(buffer, base, slot.other, ratio)
                target.copy_(buffer)

    def _write_from_files(self, slot: _Slot, target: torch.Tensor, ratio: float, write, a_in_place: bool) -> None:
        """Mapped: the same operands as the resident copies would be (A as loaded, B cast to the compute dtype,
        D = B − C in float32 then rounded), read from the files onto the target's device, written into it, a
        piece at a time through the pass's reused buffers."""
        dtype, device, cast = compute_dtype_for(slot.live_dtype), target.device, self._scratch.cast
        files = self.inputs
        a_file, b, c = files.a.view(slot.key), files.b.view(slot.key), files.c.view(slot.key) if files.c else None
        for piece in pieces(target):
            out = piece(target)
            if slot.base is not None:
                a = cast("a", piece(slot.base), device, dtype)
            elif a_in_place and target.dtype == dtype:
                a = out  # lerp / add read and write it element by element
            else:  # A as the host loaded it (float8: stored → float8 → float16)
                a = cast("a", cast("a_live", piece(a_file), device, slot.live_dtype), device, dtype)
            other = merge_operand(self.recipe.method, piece(b), None if c is None else piece(c), device, dtype,
                                  self.difference_dtype, self._scratch)
            result = out if out.dtype == dtype else self._scratch.take("out", out.shape, device, dtype)
            write(result, a, other, ratio)
            if result is not out:
                out.copy_(result)  # float8 storage: one cast, as from the resident copies

    def _staging_buffer(self, slot: _Slot, target_device: torch.device) -> torch.Tensor:
        """One reusable buffer per (device, dtype), as large as the largest resident tensor there."""
        device, dtype = slot.base.device, slot.base.dtype
        buffer = self._staging.get((device, dtype))
        if buffer is None:
            size = max(s.base.numel() for slots in self._slots.values() for s in slots
                       if s.base.device == device and s.base.dtype == dtype)
            buffer = torch.empty(size, device=device, dtype=dtype)
            if device.type == "cpu" and target_device.type == "cuda":
                buffer = buffer.pin_memory()  # page-locked: the host → device copy runs at full PCIe speed
            self._staging[(device, dtype)] = buffer
        return buffer[:slot.base.numel()].view(slot.shape)
