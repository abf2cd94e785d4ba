"""The loaded model's side of an in-place merge on A1111, kept free of WebUI imports so it can be tested:
checkpoint keys of live tensors behind the hijack wrappers, the Lora extension's weight caches, float8 caches.

Keys: A1111's `sd_hijack` wraps each text encoder (`cond_stage_model.wrapped`, `conditioner.embedders.<i>.wrapped`)
and its token embedding (`EmbeddingsWithFixes(...).wrapped`), so a live name has extra `wrapped` segments; the
UNet and the VAE are not wrapped (A modules/sd_hijack.py:205-240). SDXL also aliases `cond_stage_model` to the
`conditioner`: a live tensor can have several names, only the one naming a checkpoint key is used.

Lora (A extensions-builtin/Lora/networks.py:376-455, 572-575): a module with a LoRA baked in holds
`network_current_names` (non-empty) and its clean weights in `network_weights_backup` / `network_bias_backup`
(MultiheadAttention: a tuple (in_proj_weight, out_proj.weight)); it re-bakes lazily in forward whenever
`network_current_names` differs from the wanted set. So before a merge reads or writes weights, the clean
values are put back (`unbake_lora`), and after a write the caches are reset (`reset_lora_caches`): the next
forward backs up the merged weights and bakes the LoRA on top of them.

float8 (A modules/sd_models.py:495-515): with "Cache FP16 weight for LoRA", Linear/Conv2d modules keep
`fp16_weight` / `fp16_bias` (float16 copies of the pre-float8 weights) that Lora computes from. They describe
model A, so while a merge is applied they are set aside (Lora then computes from the float8 weights, as with the
option off) and put back, the same objects, when the originals are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Container, Iterable, Mapping

import torch

from lib_ext.merge.keys import classify_key

WRAPPER_SEGMENT = "wrapped"


def checkpoint_key(live_name: str) -> str:
    """The checkpoint key of a live parameter or buffer name: the hijack's `wrapped` segments dropped."""
    return ".".join(part for part in live_name.split(".") if part != WRAPPER_SEGMENT)


@dataclass(frozen=True)
class LiveTensor:
    """Where a checkpoint key lives: the tensor, its owning module and attribute, and the owner's parent."""
    tensor: torch.Tensor
    owner: torch.nn.Module
    attribute: str
    parent: torch.nn.Module | None


def live_tensors(root: torch.nn.Module, keys: Container[str]) -> dict[str, LiveTensor]:
    """{checkpoint key: LiveTensor} for every parameter or buffer of `root` whose name maps to one of `keys`."""
    found: dict[str, LiveTensor] = {}
    parents: dict[int, torch.nn.Module] = {}
    for name, module in root.named_modules(remove_duplicate=False):
        for child in module.children():
            parents.setdefault(id(child), module)
        prefix = name + "." if name else ""
        for attribute, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is None:
                continue
            key = checkpoint_key(prefix + attribute)
            if key in keys and key not in found:
                found[key] = LiveTensor(tensor, module, attribute, None)
    return {k: LiveTensor(t.tensor, t.owner, t.attribute, parents.get(id(t.owner))) for k, t in found.items()}


def loaded_dtype(modules: Iterable[torch.nn.Module]) -> torch.dtype | None:
    """The dtype a part's weights are loaded in: its first floating parameter's; None where it has none."""
    for module in modules:
        for parameter in module.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    return None


def modules_by_group(root: torch.nn.Module, groups: Iterable[str]) -> dict[str, list[torch.nn.Module]]:
    """The modules under the UNet, text encoders and VAE (each module once, under its first checkpoint name)."""
    wanted = set(groups)
    seen: set[int] = set()
    by_group: dict[str, list[torch.nn.Module]] = {g: [] for g in wanted}
    for name, module in root.named_modules(remove_duplicate=False):
        group = classify_key(checkpoint_key(name) + ".")
        if group in wanted and id(module) not in seen:
            seen.add(id(module))
            by_group[group].append(module)
    return by_group


# --- the Lora extension's caches ---------------------------------------------------------------------------

def _lora_baked(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "network_current_names", ()))


def _put_back(owner: torch.nn.Module, attribute: str, value: torch.Tensor | None) -> None:
    """networks.restore_weights_backup: copy the clean value in, or drop a bias the LoRA created."""
    if value is None:
        setattr(owner, attribute, None)
    else:
        getattr(owner, attribute).copy_(value)


def unbake_lora(modules: Iterable[torch.nn.Module]) -> int:
    """Put the clean weights back into every module with a LoRA baked in (networks.
    network_restore_weights_from_backup) and mark it clean; returns how many modules changed."""
    count = 0
    with torch.no_grad():
        for module in modules:
            weights, bias = getattr(module, "network_weights_backup", None), getattr(module, "network_bias_backup", None)
            if not _lora_baked(module) or (weights is None and bias is None):
                continue
            attention = isinstance(module, torch.nn.MultiheadAttention)
            if weights is not None:
                if attention:
                    _put_back(module, "in_proj_weight", weights[0])
                    _put_back(module.out_proj, "weight", weights[1])
                else:
                    _put_back(module, "weight", weights)
            _put_back(module.out_proj if attention else module, "bias", bias)
            module.network_current_names = ()
            count += 1
    return count


def reset_lora_caches(modules: Iterable[torch.nn.Module]) -> int:
    """networks.network_reset_cached_weight: forget the backups, so that the next forward backs up the new
    weights and bakes the wanted LoRAs on top of them."""
    count = 0
    for module in modules:
        if hasattr(module, "network_current_names") or getattr(module, "network_weights_backup", None) is not None:
            module.network_current_names = ()
            module.network_weights_backup = None
            module.network_bias_backup = None
            count += 1
    return count


def clean_value(live: LiveTensor) -> torch.Tensor:
    """The value of a live tensor without a baked LoRA: the Lora backup where one is baked in."""
    attention = live.parent if isinstance(live.parent, torch.nn.MultiheadAttention) else None
    if attention is not None and live.owner is attention.out_proj:
        if _lora_baked(attention):  # out_proj's backups are kept on the attention module
            backup = (attention.network_weights_backup or (None, None))[1] if live.attribute == "weight" \
                else attention.network_bias_backup
            return live.tensor if backup is None else backup
        return live.tensor
    if not _lora_baked(live.owner):
        return live.tensor
    if live.attribute in ("weight", "in_proj_weight"):
        backup = live.owner.network_weights_backup
        if isinstance(live.owner, torch.nn.MultiheadAttention) and backup is not None:
            backup = backup[0]
    elif live.attribute == "bias":
        backup = live.owner.network_bias_backup
    else:
        backup = None
    return live.tensor if backup is None else backup


# --- float8 caches -----------------------------------------------------------------------------------------

FP16_CACHE_ATTRIBUTES = ("fp16_weight", "fp16_bias")


class Fp16Caches:
    """The `fp16_weight` / `fp16_bias` caches of float8 modules, set aside while a merge is applied."""

    def __init__(self):
        self._kept: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor | None]]] = {}

    def set_aside(self, modules: Iterable[torch.nn.Module]) -> int:
        count = 0
        for module in modules:
            if id(module) in self._kept or getattr(module, "fp16_weight", None) is None:
                continue
            self._kept[id(module)] = (module, {a: getattr(module, a, None) for a in FP16_CACHE_ATTRIBUTES})
            for attribute in FP16_CACHE_ATTRIBUTES:
                setattr(module, attribute, None)
            count += 1
        return count

    def put_back(self, modules: Iterable[torch.nn.Module] | None = None) -> int:
        """Put the set-aside caches back (of `modules`, or all)."""
        ids = list(self._kept) if modules is None else [id(m) for m in modules if id(m) in self._kept]
        for key in ids:
            module, values = self._kept.pop(key)
            for attribute, value in values.items():
                setattr(module, attribute, value)
        return len(ids)

    def __len__(self) -> int:
        return len(self._kept)


def write_targets(tensors: Mapping[str, LiveTensor]) -> dict[str, torch.Tensor]:
    """{checkpoint key: tensor} for InPlaceMerge."""
    return {key: live.tensor for key, live in tensors.items()}
