"""A merge as data: method, inputs and one ratio per group. Nothing is read or computed here.

    weighted_sum:    (1 - r)·A + r·B        (A1111 "Weighted sum")
    add_difference:  A + r·(B - C)          (A1111 "Add difference")

r is chosen per group: `unet_ratio` for the UNet, `te_ratio` for the text encoders (None = follows the UNet),
`vae_ratio` for the VAE, which is left as A's unless `include_vae` (None = follows the UNet). te("") depends
only on the text encoders, so te_ratio = 0 keeps the uncond of A while the UNet moves. `blocks` sets a ratio per
UNet block (lib_ext/merge/blocks.py: a supermerger vector, assignments like `IN04=0.5`, or a preset); UNet blocks
it does not name take unet_ratio.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from lib_ext.merge.blocks import RATIO_RANGE, BlockLayout, BlocksError, BlockWeights, parse_blocks
from lib_ext.merge.keys import GROUP_LABELS, TEXT_ENCODER, UNET, VAE

WEIGHTED_SUM, ADD_DIFFERENCE = "weighted_sum", "add_difference"
METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE)
METHOD_LABELS = {WEIGHTED_SUM: "Weighted sum", ADD_DIFFERENCE: "Add difference"}  # A1111's merger labels
_METHOD_SPELLINGS = {**{m: m for m in METHODS}, **{label.lower(): m for m, label in METHOD_LABELS.items()},
                     "ws": WEIGHTED_SUM, "ad": ADD_DIFFERENCE}

_KEEP = object()  # with_ratios: keep the recipe's blocks


class RecipeError(ValueError):
    """A recipe field is missing or out of range; the message names it and says what is allowed."""


def parse_method(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in _METHOD_SPELLINGS:
        return _METHOD_SPELLINGS[value.strip().lower()]
    raise RecipeError(f"merge 'method' must be one of {', '.join(METHODS)}, got {value!r}")


def parse_ratio(name: str, value: Any) -> float:
    low, high = RATIO_RANGE
    if isinstance(value, bool) or value is None:
        raise RecipeError(f"merge '{name}' must be a number in [{low:g}, {high:g}], got {value!r}")
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"merge '{name}' must be a number in [{low:g}, {high:g}], got {value!r}") from None
    if math.isnan(ratio) or not low <= ratio <= high:
        raise RecipeError(f"merge '{name}' must be a number in [{low:g}, {high:g}], got {value!r}")
    return ratio


def _parse_optional_ratio(name: str, value: Any) -> float | None:
    return None if value is None else parse_ratio(name, value)


def _parse_model(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"merge '{name}' must be a model name or path, got {value!r}")
    return value


@dataclass(frozen=True)
class MergeRecipe:
    method: str
    model_a: str
    model_b: str
    model_c: str | None = None
    unet_ratio: float = 0.5
    te_ratio: float | None = None   # None: follows unet_ratio
    include_vae: bool = False
    vae_ratio: float | None = None  # None: follows unet_ratio (only with include_vae)
    blocks: str | None = None       # per-block UNet ratios (blocks.py), canonical text; None: unet_ratio for all

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("method", parse_method(self.method))
        set_("model_a", _parse_model("model_a", self.model_a))
        set_("model_b", _parse_model("model_b", self.model_b))
        if self.method == ADD_DIFFERENCE:
            set_("model_c", _parse_model("model_c", self.model_c))
        elif self.model_c is not None:
            raise RecipeError(f"merge 'model_c' is only used by {ADD_DIFFERENCE}; "
                              f"{self.method} takes A and B, got model_c={self.model_c!r}")
        set_("unet_ratio", parse_ratio("unet_ratio", self.unet_ratio))
        set_("te_ratio", _parse_optional_ratio("te_ratio", self.te_ratio))
        if not isinstance(self.include_vae, bool):
            raise RecipeError(f"merge 'include_vae' must be true or false, got {self.include_vae!r}")
        if self.vae_ratio is not None and not self.include_vae:
            raise RecipeError(f"merge 'vae_ratio' ({self.vae_ratio!r}) needs include_vae=true; "
                              "without it the VAE stays A's")
        set_("vae_ratio", _parse_optional_ratio("vae_ratio", self.vae_ratio))
        try:
            weights = parse_blocks(self.blocks)
        except BlocksError as error:
            raise RecipeError(str(error)) from None
        set_("blocks", None if weights is None else weights.text)
        if weights is not None and weights.base is not None and self.te_ratio is not None:
            source = "its first value (BASE)" if weights.vector is not None else "BASE"
            raise RecipeError(f"merge_blocks {weights.text!r:.200} sets the text encoders' ratio with {source} "
                              f"= {weights.base:g}, and merge_te_ratio = {self.te_ratio:g} does too; give one")

    # --- meaning --------------------------------------------------------------------------------------

    def ratio_for(self, group: str) -> float | None:
        """The ratio a group is merged at, or None for a group left as A's (the VAE without include_vae)."""
        if group == UNET:
            return self.unet_ratio
        if group == TEXT_ENCODER:
            base = self.block_weights.base if self.blocks is not None else None
            if base is not None:
                return base
            return self.unet_ratio if self.te_ratio is None else self.te_ratio
        if group == VAE:
            if not self.include_vae:
                return None
            if self.vae_ratio is not None:
                return self.vae_ratio
            vector = self.block_weights.vector if self.blocks is not None else None
            # The VAE follows the UNet's ratio; a full vector does not use unet_ratio, so it follows its BASE
            # (then a flat vector r is the plain ratio r everywhere, VAE included).
            return self.unet_ratio if vector is None else vector[0]
        return None

    def group_ratios(self) -> dict[str, float]:
        """{group: ratio} for every group this recipe merges (the UNet's: unet_ratio, which `blocks` may override
        per block: see part_ratios)."""
        ratios = {group: self.ratio_for(group) for group in (UNET, TEXT_ENCODER, VAE)}
        return {group: ratio for group, ratio in ratios.items() if ratio is not None}

    @property
    def block_weights(self) -> BlockWeights | None:
        return parse_blocks(self.blocks)

    def part_ratios(self, layout: BlockLayout | None) -> dict[str, float]:
        """{part: ratio}: the UNet per slot of `layout` (IN00, M00, TIME, …; 'unet' when layout is None), then
        'te' and 'vae' as group_ratios. Raises RecipeError naming the value when `blocks` does not fit."""
        groups = self.group_ratios()
        parts: dict[str, float] = {}
        if layout is None:
            if self.blocks is not None:
                try:
                    self.block_weights.slot_ratios(None, self.unet_ratio, groups[TEXT_ENCODER])
                except BlocksError as error:
                    raise RecipeError(str(error)) from None
            parts[UNET] = self.unet_ratio
        elif self.blocks is None:
            parts.update((slot, self.unet_ratio) for slot in layout.unet_slots)
        else:
            try:
                slots = self.block_weights.slot_ratios(layout, self.unet_ratio, groups[TEXT_ENCODER])
            except BlocksError as error:
                raise RecipeError(str(error)) from None
            parts.update((slot, slots[slot]) for slot in layout.unet_slots)
        parts.update((group, ratio) for group, ratio in groups.items() if group != UNET)
        return parts

    def changes_weights(self) -> bool:
        """Whether any weight differs from A's (False: every ratio 0 and no per-block ratio)."""
        return self.blocks is not None or any(r != 0.0 for r in self.group_ratios().values())

    @property
    def models(self) -> dict[str, str]:
        """{"A": model_a, "B": model_b[, "C": model_c]}."""
        roles = {"A": self.model_a, "B": self.model_b}
        if self.model_c is not None:
            roles["C"] = self.model_c
        return roles

    def with_ratios(self, unet_ratio: Any, te_ratio: Any = None, vae_ratio: Any = None,
                    blocks: Any = _KEEP) -> "MergeRecipe":
        """The same merge at other ratios (a sweep cell), validated like a new recipe; `blocks` kept unless given."""
        return dataclasses.replace(self, unet_ratio=unet_ratio, te_ratio=te_ratio,
                                   vae_ratio=vae_ratio if self.include_vae else None,
                                   blocks=self.blocks if blocks is _KEEP else blocks)

    # --- serialisation --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MergeRecipe":
        if not isinstance(values, Mapping):
            raise RecipeError(f"a merge recipe must be a JSON object, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in known]
        if unknown:
            raise RecipeError(f"unknown merge recipe field(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(known)}")
        for required in ("method", "model_a", "model_b"):
            if required not in values:
                raise RecipeError(f"merge recipe field '{required}' is missing")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> str:
        """One line for infotext and logs, e.g. 'Weighted sum a + b, UNet 0.3, text encoders 0.3, VAE A'."""
        names = {role: os.path.splitext(os.path.basename(path))[0] for role, path in self.models.items()}
        if self.method == WEIGHTED_SUM:
            formula = f"(1-r)·{names['A']} + r·{names['B']}"
        else:
            formula = f"{names['A']} + r·({names['B']} - {names['C']})"
        parts = [f"{GROUP_LABELS[g]} r={self.ratio_for(g):g}" for g in (UNET, TEXT_ENCODER)]
        parts.append(f"VAE r={self.ratio_for(VAE):g}" if self.include_vae else "VAE of A")
        if self.blocks is not None:
            parts.append(f"blocks {self.blocks}")
        return f"{METHOD_LABELS[self.method]}: {formula}; {', '.join(parts)}"
