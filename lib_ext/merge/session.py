"""One in-place merge kept on the loaded model across generations: a sweep costs one weight update per distinct
ratio, and the original weights come back, bit for bit, as soon as a generation does not ask for that merge.

Why lazily: X/Y/Z cells are separate generations on copies of `p`, `postprocess` is skipped when a generation
raises, and neither WebUI has an end-of-job event. So every generation states what it wants before it encodes
or samples anything (`MergeSessions.sync`, from the script's `process()`), and the weights are made to hold
exactly that:

    no merge wanted           the session's groups restored (bit-exact copies), its resident copies freed
    the same merge            only the groups whose ratio changed are rewritten; nothing when none did
    another merge, or model   the old session closed (restored, freed), a new one prepared

A sweep that owns its loop (the tab) calls `MergeSessions.close()` in a `finally`; a model load calls it too.
Someone else writing the weights (A1111 reloading the VAE or the whole checkpoint into the same model object)
is noticed by a fingerprint of each group's values: those groups are `forget`-ten, not restored over the new
weights, and the next merge is prepared from what is loaded then. A restore that fails (model A's file rewritten
in place by a trainer while the merge was held, so the originals cannot be read back) leaves the weights merged:
the model is then reloaded from its checkpoint (`SessionHost.reload`), and until that has worked every `sync`
tries again and refuses, so no generation silently gets the merged weights.

The host supplies a `SessionHost` (lib_ext/hosts): the live tensors by checkpoint key, and what has to happen
around a write (A1111: put the Lora extension's clean weights back first; reset its caches, float8 caches and
the cond caches after).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping, Protocol

import torch

from lib_ext.merge.inplace import InPlaceMerge, WriteStats
from lib_ext.merge.keys import GROUP_LABELS
from lib_ext.merge.recipe import MergeRecipe

FINGERPRINT_TENSORS = 3     # per group: first, middle and last key
# The host's setting for where A and B are read from at a switch (lib_ext/merge/inplace.py, `placement`).
SOURCES_AUTO, SOURCES_RESIDENT, SOURCES_MAPPED = "Automatic", "Resident copies", "Memory-mapped files"
SOURCES_CHOICES = (SOURCES_AUTO, SOURCES_RESIDENT, SOURCES_MAPPED)
FINGERPRINT_ELEMENTS = 32   # per tensor, evenly strided


class MergeUnrestoredError(RuntimeError):
    """The weights may still hold a merge that could not be undone, and the checkpoint could not be reloaded."""


class SessionHost(Protocol):
    def targets(self) -> Mapping[str, torch.Tensor]:
        """The live tensors by checkpoint key (resolved at every call: modules may have moved)."""

    def clean_values(self, keys: Iterable[str]) -> Mapping[str, torch.Tensor]:
        """Those keys' values without what the host layers on top (A1111: the Lora backup where one is baked in)."""

    def before_write(self, groups: frozenset[str]) -> None:
        """Make the live tensors of these groups hold their clean values (A1111: un-bake a LoRA)."""

    def after_write(self, ratios: Mapping[str, float | None]) -> None:
        """These groups were just written ({group: ratio}, None = the originals): drop what caches their values."""

    def alive(self) -> bool:
        """Whether the model is still loaded (a session of an unloaded model is dropped, not restored)."""

    def close(self) -> None:
        """Release what the host kept for this session."""

    def reload(self) -> bool:
        """The originals could not be put back (model A's file was rewritten in place, a read failed): load the
        model's checkpoint again the WebUI's own way. False when there is nothing to reload any more (the model
        is gone, or another checkpoint was loaded into it); raises when the load fails."""


@dataclass(frozen=True)
class MergeUpdate:
    """One write to the weights (or the one-time preparation), for the console log and tests."""
    kind: str                               # "prepared", "applied" or "restored"
    ratios: Mapping[str, float | None]      # the groups written: {group: ratio}, None = the originals
    seconds: float
    unet_ratio: float | None = None
    detail: str = ""
    blocks: str | None = None       # the recipe's per-block ratios (applied)
    written: WriteStats | None = None

    def message(self) -> str:
        groups = ", ".join(f"{GROUP_LABELS[g]} {_ratio_text(r)}" for g, r in self.ratios.items())
        if self.written is not None:
            groups += f"; {self.written.tensors} weights, {self.written.bytes / 1e6:.1f} MB written"
        if self.kind == "applied":
            blocks = f", blocks {self.blocks}" if self.blocks else ""
            return f"Uncond Lab: merge ratio {self.unet_ratio:g}{blocks} applied in {self.seconds:.2f} s ({groups})"
        if self.kind == "restored":
            return f"Uncond Lab: merge restored in {self.seconds:.2f} s ({groups})"
        return f"Uncond Lab: merge prepared in {self.seconds:.2f} s ({self.detail})"


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "original"
    return "per block" if math.isnan(ratio) else format(ratio, "g")


def placement_for(sources: str, low_vram: bool) -> str:
    """InPlaceMerge's placement for the host's setting. Low-VRAM modes keep the GPU free for inference: resident
    copies go to RAM there, and "Automatic" reads the files."""
    if sources == SOURCES_MAPPED or (sources != SOURCES_RESIDENT and low_vram):
        return "mapped"
    if sources == SOURCES_RESIDENT:
        return "cpu" if low_vram else "device"
    return "auto"


def fingerprint(values: Mapping[str, torch.Tensor], keys: Iterable[str]) -> tuple:
    """A few evenly spaced elements of each tensor, as raw bits (plus dtype and shape): changes when a file is
    loaded over the tensor, costs a few small copies."""
    prints = []
    for key in keys:
        tensor = values[key].detach()
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_ELEMENTS)
        sample = flat[::step][:FINGERPRINT_ELEMENTS].to("cpu").contiguous()
        prints.append((key, str(tensor.dtype), tuple(tensor.shape), bytes(sample.view(torch.uint8).tolist())))
    return tuple(prints)


class MergeSession:
    """An InPlaceMerge bound to one loaded model, with the host's hooks and the fingerprints of what it wrote."""

    def __init__(self, key: Hashable, recipe: MergeRecipe, host: SessionHost, *, placement: str = "auto",
                 merge_factory: Callable[..., InPlaceMerge] = InPlaceMerge):
        self.key, self.host, self.placement = key, host, placement
        self.merge = merge_factory(recipe, host.targets, placement=placement)
        self._prints: dict[str, tuple] = {}
        self._print_keys: dict[str, list[str]] = {}

    # --- fingerprints ---------------------------------------------------------------------------------

    def _fingerprints(self) -> dict[str, tuple]:
        values = self.host.clean_values([k for keys in self._print_keys.values() for k in keys])
        return {g: fingerprint(values, keys) for g, keys in self._print_keys.items()}

    def overwritten(self) -> frozenset[str]:
        """Groups whose values someone else changed since this session last wrote them."""
        if not self._prints:
            return frozenset()
        now = self._fingerprints()
        return frozenset(g for g, prints in self._prints.items() if now[g] != prints)

    def _after_write(self, groups: frozenset[str]) -> None:
        applied = self.merge.applied
        self.host.after_write({g: applied[g] for g in self.merge.groups if g in groups})
        self._prints = self._fingerprints()

    # --- writes ---------------------------------------------------------------------------------------

    def apply(self, recipe: MergeRecipe) -> list[MergeUpdate]:
        """Make the weights hold `recipe` (this session's merge at some ratios); [] when they already do."""
        pending = self.merge.pending_groups(recipe)
        if not pending:
            return []
        updates = []
        if not self.merge.prepared:
            start = time.perf_counter()
            self.host.before_write(frozenset(self.merge.groups))  # A = the live weights: they must be clean
            self.merge.prepare()
            plan = self.merge.plan
            self._print_keys = {g: _spread(plan.keys_of(g)) for g in self.merge.groups}
            updates.append(MergeUpdate("prepared", {}, time.perf_counter() - start, detail=self.describe_memory()))
        else:
            self.host.before_write(pending)
        start = time.perf_counter()
        try:
            self.merge.apply_recipe(recipe)
        finally:
            self._after_write(pending)  # also after a failure: a half-written group must not stay cached
        applied = self.merge.applied
        updates.append(MergeUpdate("applied", {g: applied[g] for g in self.merge.groups if g in pending},
                                   time.perf_counter() - start, unet_ratio=recipe.unet_ratio, blocks=recipe.blocks,
                                   written=self.merge.last_write))
        return updates

    def describe_memory(self) -> str:
        """What the merge holds, for the console: the resident copies, or the mapped files and the weights kept
        because they differ from A's file."""
        merge = self.merge
        held = f"{merge.resident_bytes() / 1e9:.2f} GB"
        if merge.placement_used == "mapped":
            note = f"{merge.placement_note}; " if merge.placement_note else ""
            return (f"{note}read from the memory-mapped files at each switch; {held} kept in RAM for weights that "
                    "differ from model A's file")
        return f"{held} of copies resident ({merge.placement_used})"

    def restore(self) -> list[MergeUpdate]:
        """Put the original weights back, bit for bit, where this session changed them."""
        if not self.merge.prepared:
            return []
        changed = frozenset(g for g, ratio in self.merge.applied.items() if ratio is not None)
        if not changed:
            return []
        start = time.perf_counter()
        self.host.before_write(changed)
        try:
            self.merge.restore()
        finally:
            self._after_write(changed)
        return [MergeUpdate("restored", {g: None for g in self.merge.groups if g in changed},
                            time.perf_counter() - start, written=self.merge.last_write)]

    def close(self) -> list[MergeUpdate]:
        """Restore what this session changed (except groups someone else has reloaded since), free the copies."""
        try:
            if not self.host.alive():
                self.merge.forget(self.merge.groups)  # the model is gone: nothing to restore into
                return []
            self.merge.forget(self.overwritten())
            return self.restore()
        finally:
            self.merge.close()
            self.host.close()


def _spread(keys: list[str]) -> list[str]:
    """First, middle and last key."""
    if len(keys) <= FINGERPRINT_TENSORS:
        return list(keys)
    return [keys[0], keys[len(keys) // 2], keys[-1]]


class MergeSessions:
    """At most one MergeSession at a time (one merge's resident copies), kept from one generation to the next.

    One instance per WebUI process, owned by the host module: it holds the resident copies between generations,
    nothing per generation.
    """

    def __init__(self, log: Callable[[str], None] = print):
        self.current: MergeSession | None = None
        self.unrestored: SessionHost | None = None  # a session's host whose restore failed, model not reloaded
        self.log = log

    def sync(self, key: Hashable | None, recipe: MergeRecipe | None, make_host: Callable[[], SessionHost], *,
             placement: str = "auto") -> list[MergeUpdate]:
        """Make the weights hold `recipe` (key: what identifies the model and the merge's inputs), or the
        originals when `recipe` is None. On any failure the session is closed (weights restored) and the error
        re-raised."""
        updates: list[MergeUpdate] = []
        if self.unrestored is not None:
            self._reload_unrestored(refuse=True)
        try:
            session = self.current
            if session is not None and (recipe is None or session.key != key or session.placement != placement
                                        or not session.host.alive() or session.overwritten()):
                updates += self.close(log=False)
            if recipe is not None:
                if self.current is None and recipe.changes_weights():
                    # Ratio 0 everywhere is model A as loaded: no copies are read until a ratio needs them.
                    self.current = MergeSession(key, recipe, make_host(), placement=placement)
                if self.current is not None:
                    updates += self.current.apply(recipe)
        except BaseException:
            updates += self._close_after_error()
            raise
        finally:
            for update in updates:
                self.log(update.message())
        return updates

    def _close_after_error(self) -> list[MergeUpdate]:
        try:
            return self.close(log=False)
        except Exception as error:  # the first error is the one to report; the copies are dropped either way
            self.log(f"Uncond Lab: merge could not be restored after an error: {error}")
            return []

    def close(self, log: bool = True) -> list[MergeUpdate]:
        """Restore and free the current session, if any (end of a sweep, a model load, a UI reload)."""
        session, self.current = self.current, None
        if session is None:
            return []
        try:
            updates = session.close()
        except Exception as error:
            self.log(f"Uncond Lab: the merge could not be undone ({error}); reloading the checkpoint from disk so "
                     "that no merge stays in the loaded weights")
            self.unrestored = session.host
            raise MergeUnrestoredError(f"{error}. {self._reload_unrestored(refuse=False)}") from error
        if log:
            for update in updates:
                self.log(update.message())
        return updates

    def _reload_unrestored(self, refuse: bool) -> str:
        """Reload the model a failed restore left merged, and say how that went; when it fails, every later sync
        tries again and, until it works, refuses (`refuse`)."""
        try:
            reloaded = self.unrestored.reload()
        except Exception as error:  # noqa: BLE001  (said, and the next sync refuses)
            message = (f"Uncond Lab: the loaded weights may still hold a merge, and reloading the checkpoint "
                       f"failed: {error}. Load a checkpoint (or restart the WebUI) before generating")
            self.log(message)
            if refuse:
                raise MergeUnrestoredError(message) from error
            return message
        self.unrestored = None
        message = ("Uncond Lab reloaded the checkpoint from disk, so the loaded weights are its file's, without the "
                   "merge: generate again" if reloaded else "The model has been replaced since: no merge is left")
        self.log(message)
        return message

    def applied_ratios(self) -> dict[str, float | None]:
        """{group: ratio} now in the weights; {} without a session."""
        return dict(self.current.merge.applied) if self.current is not None else {}
