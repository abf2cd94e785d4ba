"""Merge inputs read lazily, key by key, and the compatibility check that turns them into a merge plan.

A source exposes its tensor specs (from the safetensors header: no tensor is read) and reads one tensor, or a
range of its rows, on demand, so memory stays bounded by what the caller holds at once. `view(key)` gives a
tensor without reading it into this process's memory at all: a read-only window on the memory-mapped file, whose
pages the OS page cache holds while RAM allows and drops when it does not (the mapped merge placement).
"""
from __future__ import annotations

import functools
import json
import math
import mmap
import os
import struct
import warnings
from dataclasses import dataclass
from typing import Mapping, Protocol

import torch

from lib_ext.merge.blocks import BlockLayout
from lib_ext.merge.keys import (MERGEABLE_GROUPS, PREDICTION_METADATA_KEYS, UNET, UNET_INPUT_CONV, VAE,
                                architecture_of, classify_key, is_prediction_marker, prediction_type_of)
from lib_ext.merge.ops import bits_equal
from lib_ext.merge.recipe import ADD_DIFFERENCE, MergeRecipe

# safetensors dtype names (the format's spec) ↔ torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_SAFETENSORS = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class MergeInputError(ValueError):
    """An input cannot be read as a checkpoint; the message names the file and why."""


class IncompatibleModelsError(MergeInputError):
    """The inputs cannot be merged (architecture, shape or prediction type); the message names the first key."""


@dataclass(frozen=True)
class TensorSpec:
    """What a safetensors header says about one tensor."""
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class TensorSource(Protocol):
    name: str
    metadata: Mapping[str, str]
    specs: Mapping[str, TensorSpec]

    def tensor(self, key: str) -> torch.Tensor: ...

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor: ...

    def view(self, key: str) -> torch.Tensor: ...

    def check_unchanged(self) -> None: ...

    def close(self) -> None: ...


class SafetensorsSource:
    """A .safetensors checkpoint, memory-mapped read-only: specs from its header now, tensors on demand.

    `view()` is the stored tensor itself (no copy); `tensor()` and `rows()` copy it into this process's memory.
    The mapping is shared and read-only, so it costs the page cache, not the process's own (anonymous) memory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        if not self.path.lower().endswith(".safetensors"):
            raise MergeInputError(f"'{self.path}' is not a .safetensors file; only safetensors inputs are merged "
                                  "(pickled .ckpt files can run code when loaded)")
        if not os.path.isfile(self.path):
            raise MergeInputError(f"checkpoint '{self.path}' does not exist")
        try:
            self._file = _MappedFile(self.path)
        except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
            raise MergeInputError(f"cannot read '{self.path}' as safetensors: {error}") from error
        self.metadata: Mapping[str, str] = self._file.metadata
        self.specs: Mapping[str, TensorSpec] = self._file.specs
        self._views: dict[str, torch.Tensor] = {}

    def view(self, key: str) -> torch.Tensor:
        """The stored tensor without a copy: a view of the mapped file (made once per key: a switch asks for
        every weight's). Read it, never write to it."""
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._file.view(self.specs[key])
        return view

    def tensor(self, key: str) -> torch.Tensor:
        return self.view(key).clone()

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the first dimension, reading only those bytes."""
        return self.view(key)[start:stop].clone()

    def check_unchanged(self) -> None:
        """Raise if the file was rewritten in place since it was opened: its values may no longer be the ones
        checked then. A file replaced by another (a rename) does not matter: the mapping keeps the old one."""
        if self._file.rewritten():
            raise MergeInputError(f"checkpoint '{self.path}' was rewritten on disk while it was merged from; "
                                  "reload the checkpoint")

    def close(self) -> None:
        self.__dict__.pop("_file", None)  # unmapped once the views still in use are gone too
        self._views = {}


class _MappedFile:
    """The safetensors format: 8 bytes of little-endian header length, a JSON header {key: {dtype, shape,
    data_offsets}, "__metadata__": {...}}, then the data (offsets relative to its start)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as file:
            self._identity = _identity(os.fstat(file.fileno()))
            size = self._identity[2]
            (header_length,) = struct.unpack("<Q", file.read(8))
            if header_length > size - 8:
                raise ValueError(f"header length {header_length} exceeds the file's {size} bytes")
            header = json.loads(file.read(header_length))
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata = dict(header.pop("__metadata__", None) or {})
        self.specs: dict[str, TensorSpec] = {}
        self.offsets: dict[str, int] = {}
        for key, entry in header.items():
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"tensor '{key}' has dtype {entry['dtype']}, not one of {', '.join(SAFETENSORS_DTYPES)}")
            spec = TensorSpec(key, dtype, tuple(int(n) for n in entry["shape"]))
            begin, end = entry["data_offsets"]
            if end - begin != spec.nbytes or 8 + header_length + end > size:
                raise ValueError(f"tensor '{key}': data offsets {[begin, end]} do not hold {spec.nbytes} bytes")
            self.specs[key], self.offsets[key] = spec, 8 + header_length + begin

    def view(self, spec: TensorSpec) -> torch.Tensor:
        offset = self.offsets[spec.key]
        if spec.numel == 0:
            return torch.empty(spec.shape, dtype=spec.dtype)
        if offset % spec.dtype.itemsize:  # the format does not promise alignment: a copy then
            data = bytearray(self._map[offset:offset + spec.nbytes])
            return torch.frombuffer(data, dtype=spec.dtype).view(spec.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the given buffer is not writable": it is only read
            return torch.frombuffer(self._map, dtype=spec.dtype, count=spec.numel, offset=offset).view(spec.shape)

    def rewritten(self) -> bool:
        """The same file (device, inode) with another size or modification time."""
        try:
            now = _identity(os.stat(self.path))
        except OSError:
            return False  # removed or renamed away: the mapping keeps the old file
        return now[:2] == self._identity[:2] and now != self._identity


def _identity(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class InMemorySource:
    """Tensors already in memory behind the source interface (tests, benchmarks, a host's own state dict)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], name: str, metadata: Mapping[str, str] | None = None):
        self.name = name
        self.metadata = dict(metadata or {})
        self._tensors = dict(tensors)
        self.specs = {k: TensorSpec(k, t.dtype, tuple(t.shape)) for k, t in self._tensors.items()}

    def tensor(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._tensors[key][start:stop]

    def view(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def check_unchanged(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class MergeInputs:
    """The sources of one merge by role: A, B and, for add difference, C."""
    a: TensorSource
    b: TensorSource
    c: TensorSource | None = None

    @classmethod
    def open(cls, recipe: MergeRecipe) -> "MergeInputs":
        opened: list[SafetensorsSource] = []
        try:
            for path in recipe.models.values():
                opened.append(SafetensorsSource(path))
        except BaseException:
            for source in opened:
                source.close()
            raise
        return cls(*opened)

    def by_role(self) -> dict[str, TensorSource]:
        roles = {"A": self.a, "B": self.b}
        if self.c is not None:
            roles["C"] = self.c
        return roles

    def close(self) -> None:
        for source in self.by_role().values():
            source.close()


@dataclass(frozen=True)
class MergePlan:
    """What a merge touches: the merged keys with their group, and every tensor of A (the output layout)."""
    method: str
    specs: Mapping[str, TensorSpec]   # all of A's tensors, in A's order
    merged: Mapping[str, str]         # merged key → its group ('unet', 'te', 'vae'), in A's order
    prediction_type: str              # from the marker keys, e.g. 'EPS', 'V (ztsnr)'

    def group_of(self, key: str) -> str | None:
        """The merged group of a key, None for a key copied from A."""
        return self.merged.get(key)

    def keys_of(self, group: str) -> list[str]:
        return [key for key, g in self.merged.items() if g == group]

    @functools.cached_property
    def layout(self) -> BlockLayout | None:
        """The UNet's block slots (blocks.py), None without a UNet or for a UNet outside SD1.x/SD2.x/SDXL's."""
        return BlockLayout.from_keys(self.keys_of(UNET)) if UNET in self.merged.values() else None

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups with at least one merged key, in the order unet, te, vae."""
        present = set(self.merged.values())
        return tuple(g for g in MERGEABLE_GROUPS if g in present)

    def copied_keys(self) -> list[str]:
        """Keys of A that a merge copies unchanged (other keys, integer buffers, an unmerged VAE)."""
        return [key for key in self.specs if key not in self.merged]


def _refuse(sources: Mapping[str, TensorSource], detail: str) -> IncompatibleModelsError:
    described = ", ".join(f"{role} = {s.name} ({architecture_of(s.specs, _shapes(s))}, "
                          f"{prediction_type_of(k for k in s.specs if is_prediction_marker(k))})"
                          for role, s in sources.items())
    return IncompatibleModelsError(f"cannot merge {described}: {detail}")


def _shapes(source: TensorSource) -> dict[str, tuple[int, ...]]:
    return {k: s.shape for k, s in source.specs.items() if k == UNET_INPUT_CONV}


def _first_missing_key(sources: Mapping[str, TensorSource], group: str) -> tuple[str, str, str] | None:
    """(key, role that has it, role that lacks it) for the first key, in sorted order, not in every input."""
    keysets = {role: {k for k in s.specs if classify_key(k) == group} for role, s in sources.items()}
    union = set().union(*keysets.values())
    for key in sorted(union):
        having = [role for role, keys in keysets.items() if key in keys]
        lacking = [role for role, keys in keysets.items() if key not in keys]
        if lacking:
            return key, having[0], lacking[0]
    return None


def _check_markers(sources: Mapping[str, TensorSource]) -> None:
    """Same prediction-type marker keys with the same values, and the same ModelSpec prediction type."""
    markers = sorted({k for s in sources.values() for k in s.specs if is_prediction_marker(k)})
    (first_role, first), *others = sources.items()
    for key in markers:
        for role, source in others:
            if (key in first.specs) != (key in source.specs):
                has, lacks = (first_role, role) if key in first.specs else (role, first_role)
                raise _refuse(sources, f"prediction-type marker key '{key}' is in {has} but not in {lacks}; "
                                       "models of different prediction types cannot be merged")
            if key in first.specs and not bits_equal(first.tensor(key), source.tensor(key)):
                raise _refuse(sources, f"prediction-type marker key '{key}' differs between {first_role} and {role}")
    for key in PREDICTION_METADATA_KEYS:
        for role, source in others:
            mine, theirs = first.metadata.get(key), source.metadata.get(key)
            if mine is not None and theirs is not None and mine != theirs:
                raise _refuse(sources, f"metadata '{key}' is {mine!r} in {first_role} but {theirs!r} in {role}")


def plan_merge(recipe: MergeRecipe, inputs: MergeInputs) -> MergePlan:
    """Check that the inputs can be merged by `recipe` and list what is merged; raise naming the first bad key.

    Checked: C present exactly for add difference; same keys in every merged group (SD1 vs SDXL, a LoRA as
    B…); same shapes (an inpainting UNet has a 9-channel input conv); same floating dtypes kind; the same
    prediction-type markers. Headers only, plus the marker tensors (a few bytes).
    """
    if (recipe.method == ADD_DIFFERENCE) != (inputs.c is not None):
        takes = "A, B and C" if recipe.method == ADD_DIFFERENCE else "A and B"
        raise MergeInputError(f"{recipe.method} takes {takes}, got {'a' if inputs.c is not None else 'no'} model C")
    sources = inputs.by_role()
    a = inputs.a
    merged_groups = [g for g in MERGEABLE_GROUPS if recipe.ratio_for(g) is not None]
    if not any(classify_key(k) in merged_groups for k in a.specs):
        raise MergeInputError(f"A = {a.name} has no UNet, text-encoder or VAE keys "
                              "(model.diffusion_model.*, cond_stage_model.*, conditioner.embedders.*, "
                              "first_stage_model.*); is it a LoRA, an embedding or a diffusers folder file?")
    for group in merged_groups:
        missing = _first_missing_key(sources, group)
        if missing:
            key, has, lacks = missing
            raise _refuse(sources, f"'{key}' is in {has} but not in {lacks}")
    merged: dict[str, str] = {}
    for key, spec in a.specs.items():
        group = classify_key(key)
        if group not in merged_groups:
            continue
        for role, source in sources.items():
            other = source.specs[key]
            if other.shape != spec.shape:
                detail = f"'{key}' has shape {list(spec.shape)} in A but {list(other.shape)} in {role}"
                if key == UNET_INPUT_CONV:
                    detail += (" (an inpainting or instruct-pix2pix UNet takes extra input channels; merging it "
                               "with a normal model is not supported)")
                raise _refuse(sources, detail)
            if other.dtype.is_floating_point != spec.dtype.is_floating_point:
                raise _refuse(sources, f"'{key}' is {spec.dtype} in A but {other.dtype} in {role}")
        if spec.dtype.is_floating_point:  # integer buffers in a merged group are copied from A
            merged[key] = group
    _check_markers(sources)
    if VAE in merged_groups and VAE not in merged.values():
        raise MergeInputError(f"include_vae is set but A = {a.name} has no VAE (first_stage_model.*) weights")
    plan = MergePlan(recipe.method, dict(a.specs), merged,
                     prediction_type_of(k for k in a.specs if is_prediction_marker(k)))
    if recipe.blocks is not None:
        recipe.part_ratios(plan.layout)  # refuses (RecipeError) per-block ratios that do not fit this UNet
    return plan
