"""Block-weighted merges: a ratio per UNet block ("slot"), in supermerger's slot names.

Slots, derived from the key structure of the UNet (`model.diffusion_model.*`):

    TIME       time_embed.*                     the timestep embedding MLP
    LABEL      label_emb.*                      SDXL's size/crop embedding (absent in SD1.x/SD2.x)
    IN00…INnn  input_blocks.<n>.*               SD1.x/SD2.x: IN00–IN11; SDXL: IN00–IN08
    M00        middle_block.*
    OUT00…     output_blocks.<n>.*              SD1.x/SD2.x: OUT00–OUT11; SDXL: OUT00–OUT08
    OUT_FINAL  out.*                            the final norm and convolution
    BASE       the text encoders (not a UNet slot; supermerger's first vector value)

Every UNet key belongs to exactly one slot; a UNet with a key outside these (another architecture) has no
layout, and a block-weighted merge of it is refused.

`merge_blocks` forms (parse_blocks):
    a full vector   supermerger's order BASE, IN00…, M00, OUT00… (26 values for SD1.x/SD2.x, 20 for SDXL), as a
                    JSON list or comma-separated numbers. BASE is the text encoders' ratio; TIME and LABEL take
                    IN00's value, OUT_FINAL the last OUT's; merge_ratio is unused, and a VAE that follows the
                    UNet ratio takes BASE (so a flat vector r is the plain ratio r everywhere).
    assignments     `IN00-IN08=1, M00=0.5, OUT=0`: a slot, a range of slots (in the order of the table above),
                    or a group (IN, M, OUT: the numbered blocks of that part; BASE). Later items override earlier
                    ones. UNet slots not named take `merge_ratio`; the text encoders take BASE if named, else
                    `merge_te_ratio` as without blocks.
    a preset        a name from PRESETS (may be followed by assignments: `input-only, M00=0.5`).
    ComfyUI names   the arguments of ComfyUI's block-merge nodes, with ComfyUI's values and rule (below):
                    `input=0.3, middle=1, out=0.7` (ModelMergeBlocks), or `time_embed.`, `label_emb.`,
                    `input_blocks.0`…, `middle_block.0`…`middle_block.2`, `output_blocks.0`…, `out.` (ModelMergeSDXL;
                    ModelMergeSD1's `input_blocks.0.` etc. too: the trailing dot is optional, except in `out.`,
                    which is the final layer alone while `out` is ModelMergeBlocks' whole output side).

ComfyUI's rule (comfy_extras/nodes_model_merging.py, ModelMergeBlocks.merge, which ModelMergeSD1/SDXL inherit from
comfy_extras/nodes_model_merging_model_specific.py; ComfyUI v0.8.0): every UNet key (without `diffusion_model.`)
takes the value of the longest argument name it starts with, and a key no name matches takes the FIRST argument's
value (so ModelMergeBlocks' `input` also covers time_embed and label_emb, and `out` covers output_blocks and
`out.`). The value is model 1's (A's) share: `add_patches(model2, 1 - ratio, ratio)` makes ratio·A + (1 − ratio)·B,
so a slot's ratio here (B's share) is 1 − value. Argument order matters (the first is the default), so the
canonical text keeps the order given (ComfyUI's: the node's widget order, or the API prompt's input order).
Uncond Lab has one middle slot (M00): `middle_block.0/1/2` must end up with one value. A numbered name is one block
(`input_blocks.1` is never blocks 10 and 11, as ModelMergeSD1's dotted names; ModelMergeSDXL's dotless names only
differ on a UNet with 10+ blocks, which is not SDXL). ComfyUI names cover every UNet key, so merge_ratio is not used
by the UNet; a checkpoint VAE that follows the UNet ratio takes merge_ratio (0 keeps A's VAE, as ComfyUI's merge
nodes do, which never touch the VAE). ComfyUI names are not mixed with slots or presets in one value; `out` alone
(without another ComfyUI name) stays Uncond Lab's OUT group, as before.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

UNET_PREFIX = "model.diffusion_model."
BASE, TIME, LABEL, MIDDLE, OUT_FINAL = "BASE", "TIME", "LABEL", "M00", "OUT_FINAL"
GROUPS = ("IN", "M", "OUT", "BASE")
# Extrapolation up to one model-distance either way is allowed; beyond that a value is almost surely a typo
# (50 meant as 50 %). Every merge ratio (recipe.py) and block value uses this range.
RATIO_RANGE = (-1.0, 2.0)

_NUMBERED = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.")
_SLOT_NAME = re.compile(r"^(IN|OUT)(\d{2})$")


class BlocksError(ValueError):
    """A merge_blocks value cannot be read or does not fit the model; the message names the value."""


def unet_slot(key: str) -> str | None:
    """The slot of a checkpoint UNet key (`model.diffusion_model.…`), None for a key outside every slot."""
    if not key.startswith(UNET_PREFIX):
        return None
    rest = key[len(UNET_PREFIX):]
    numbered = _NUMBERED.match(rest)
    if numbered:
        return f"{'IN' if numbered.group(1) == 'input_blocks' else 'OUT'}{int(numbered.group(2)):02d}"
    for prefix, slot in (("middle_block.", MIDDLE), ("time_embed.", TIME), ("label_emb.", LABEL),
                         ("out.", OUT_FINAL)):
        if rest.startswith(prefix):
            return slot
    return None


@dataclass(frozen=True)
class BlockLayout:
    """The slots of one UNet: how many input and output blocks, whether it has a label embedding."""
    inputs: int
    outputs: int
    label: bool

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> "BlockLayout | None":
        """The layout of a model's UNet keys (checkpoint names), or None when a key is in no slot or the blocks
        are not numbered 0…n-1."""
        slots = set()
        for key in keys:
            slot = unet_slot(key)
            if slot is None:
                return None
            slots.add(slot)
        numbers = {kind: sorted(int(s[len(kind):]) for s in slots if _SLOT_NAME.match(s) and s.startswith(kind))
                   for kind in ("IN", "OUT")}
        if not numbers["IN"] or not numbers["OUT"] or MIDDLE not in slots:
            return None
        if any(values != list(range(len(values))) for values in numbers.values()):
            return None
        return cls(len(numbers["IN"]), len(numbers["OUT"]), LABEL in slots)

    @property
    def family(self) -> str:
        if (self.inputs, self.outputs, self.label) == (12, 12, False):
            return "SD1.x/SD2.x"
        if (self.inputs, self.outputs, self.label) == (9, 9, True):
            return "SDXL"
        return f"UNet with {self.inputs} input and {self.outputs} output blocks"

    @property
    def vector_slots(self) -> tuple[str, ...]:
        """supermerger's vector order: BASE, IN00…, M00, OUT00…"""
        return (BASE, *(f"IN{i:02d}" for i in range(self.inputs)), MIDDLE,
                *(f"OUT{i:02d}" for i in range(self.outputs)))

    @property
    def unet_slots(self) -> tuple[str, ...]:
        """The UNet's slots in forward order: TIME, [LABEL], IN…, M00, OUT…, OUT_FINAL."""
        return (TIME, *((LABEL,) if self.label else ()), *self.vector_slots[1:], OUT_FINAL)

    @property
    def slots(self) -> tuple[str, ...]:
        """Every name an assignment may use as a slot (ranges follow this order)."""
        return (BASE, *self.unet_slots)

    def describe_vector(self) -> str:
        first_out, last_in, last_out = "OUT00", f"IN{self.inputs - 1:02d}", f"OUT{self.outputs - 1:02d}"
        return f"{len(self.vector_slots)} values for {self.family} (BASE, IN00…{last_in}, M00, {first_out}…{last_out})"

    def group(self, name: str) -> tuple[str, ...]:
        if name == "IN":
            return self.vector_slots[1:1 + self.inputs]
        if name == "M":
            return (MIDDLE,)
        if name == "OUT":
            return self.vector_slots[2 + self.inputs:]
        return (BASE,)


# --- presets: functions of the layout, {slot: ratio} -----------------------------------------------------------

def _gradient(layout: BlockLayout, rising: bool) -> dict[str, float]:
    numbered = layout.vector_slots[1:]
    last = len(numbered) - 1
    values = {slot: (i / last if rising else 1.0 - i / last) for i, slot in enumerate(numbered)}
    values[TIME] = values[numbered[0]]
    if layout.label:
        values[LABEL] = values[numbered[0]]
    values[OUT_FINAL] = values[numbered[-1]]
    return values


def _part_only(layout: BlockLayout, part: str) -> dict[str, float]:
    """B's weights (ratio 1) in one part of the UNet, A's (0) in the rest; TIME and LABEL count as input side,
    OUT_FINAL as output side."""
    inputs = set(layout.group("IN")) | {TIME, LABEL}
    outputs = set(layout.group("OUT")) | {OUT_FINAL}
    chosen = {"IN": inputs, "OUT": outputs, "M": {MIDDLE}}[part]
    return {slot: 1.0 if slot in chosen else 0.0 for slot in layout.unet_slots}


PRESETS: dict[str, tuple[str, Callable[[BlockLayout], dict[str, float]] | None]] = {
    "flat": ("no per-block ratios: every UNet weight takes merge_ratio (the plain merge)", None),
    "gradient-up": ("0 at IN00 rising linearly to 1 at the last OUT block (TIME, LABEL as IN00; OUT_FINAL as "
                    "the last OUT)", lambda layout: _gradient(layout, True)),
    "gradient-down": ("1 at IN00 falling linearly to 0 at the last OUT block (TIME, LABEL as IN00; OUT_FINAL as "
                      "the last OUT)", lambda layout: _gradient(layout, False)),
    "input-only": ("B in TIME, LABEL and the input blocks (1), A elsewhere in the UNet (0)",
                   lambda layout: _part_only(layout, "IN")),
    "middle-only": ("B in the middle block (1), A elsewhere in the UNet (0)", lambda layout: _part_only(layout, "M")),
    "output-only": ("B in the output blocks and OUT_FINAL (1), A elsewhere in the UNet (0)",
                    lambda layout: _part_only(layout, "OUT")),
}
PRESET_NAMES = tuple(PRESETS)


# --- ComfyUI's argument names -------------------------------------------------------------------------------

COMFY_BLOCKS_NAMES = ("input", "middle", "out")  # ModelMergeBlocks' arguments
_COMFY_NUMBERED = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(0|[1-9]\d?)\.?$")
_COMFY_COUNTS = {"input_blocks": 12, "middle_block": 3, "output_blocks": 12}  # ModelMergeSD1's (SDXL: 9, 3, 9)
_COMFY_MIDDLE = tuple(f"middle_block.{i}." for i in range(3))


def comfy_name(name: str) -> str | None:
    """The canonical spelling (ModelMergeSDXL's) of a ComfyUI block-merge argument, None if `name` is not one."""
    name = re.sub(r"\s+", "", name.lower())
    if name in ("input", "middle", "out", "out."):
        return name
    if name.rstrip(".") in ("time_embed", "label_emb"):
        return name.rstrip(".") + "."
    numbered = _COMFY_NUMBERED.match(name)
    if numbered and int(numbered.group(2)) < _COMFY_COUNTS[numbered.group(1)]:
        return f"{numbered.group(1)}.{numbered.group(2)}"
    return None


def _comfy_prefix(name: str) -> str:
    """What ComfyUI matches keys against: a numbered block with its dot (block 1 is not blocks 10, 11)."""
    return name + "." if _COMFY_NUMBERED.match(name) else name


def comfy_share(arguments: tuple[tuple[str, float], ...], unet_key: str) -> float:
    """ComfyUI's ModelMergeBlocks rule for one UNet key without `diffusion_model.`: the value of the longest
    argument the key starts with, else the first argument's. The value is model 1's (A's) share."""
    value, longest = arguments[0][1], 0
    for name, share in arguments:
        prefix = _comfy_prefix(name)
        if unet_key.startswith(prefix) and len(prefix) > longest:
            value, longest = share, len(prefix)
    return value


def slot_key_prefix(slot: str) -> str:
    """The key prefix every UNet key of a slot starts with (M00: its first sub-block; the three agree)."""
    numbered = _SLOT_NAME.match(slot)
    if numbered:
        return f"{'input_blocks' if numbered.group(1) == 'IN' else 'output_blocks'}.{int(numbered.group(2))}."
    return {TIME: "time_embed.", LABEL: "label_emb.", MIDDLE: _COMFY_MIDDLE[0], OUT_FINAL: "out."}[slot]


def _comfy_arguments(tokens: list[str], text: str) -> tuple[tuple[str, float], ...]:
    """`name=value` items in ComfyUI names → ((name, value), ...) in the order given, checked."""
    arguments: list[tuple[str, float]] = []
    for token in tokens:
        name, equals, number = token.partition("=")
        canonical = comfy_name(name) if equals else None
        if canonical is None:
            raise BlocksError(f"merge_blocks: {token.strip()!r} is not a ComfyUI argument (input, middle, out; "
                              "time_embed., label_emb., input_blocks.N, middle_block.N, output_blocks.N, out.), and "
                              f"ComfyUI names are not mixed with Uncond Lab slots or presets in {text!r:.200}")
        if any(canonical == seen for seen, _ in arguments):
            raise BlocksError(f"merge_blocks: ComfyUI argument {canonical!r} is named twice in {text!r:.200}")
        arguments.append((canonical, _value(number.strip(), f"the value of {canonical}")))
    middle = [comfy_share(tuple(arguments), prefix) for prefix in _COMFY_MIDDLE]
    if len(set(middle)) > 1:
        raise BlocksError(f"merge_blocks: {text!r:.200} gives middle_block.0/1/2 the values "
                          f"{', '.join(map(_number, middle))} (ComfyUI's rule); Uncond Lab has one middle slot (M00), "
                          "so they must be equal")
    return tuple(arguments)


def _is_comfy_form(tokens: list[str]) -> bool:
    """Whether a value names a ComfyUI argument that cannot be an Uncond Lab slot (`out` alone is the OUT group)."""
    names = (comfy_name(t.partition("=")[0]) for t in tokens if "=" in t)
    return any(name not in (None, "out") for name in names)


# --- parsing ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockWeights:
    """A parsed merge_blocks value: a full vector, or items (presets and assignments) applied in order."""
    vector: tuple[float, ...] | None = None
    items: tuple[tuple[str, float | None], ...] = ()  # (preset name, None) or (slot/range/group, value)
    comfy: tuple[tuple[str, float], ...] = ()  # ComfyUI (argument, model 1's share) in ComfyUI's order

    @property
    def text(self) -> str:
        """The canonical text (what infotext, metadata and the recipe hold); parse_blocks(text) gives self."""
        if self.vector is not None:
            return ",".join(_number(v) for v in self.vector)
        if self.comfy:
            return ", ".join(f"{name}={_number(value)}" for name, value in self.comfy)
        return ", ".join(name if value is None else f"{name}={_number(value)}" for name, value in self.items)

    @property
    def base(self) -> float | None:
        """The text encoders' ratio this value sets (BASE), or None."""
        if self.vector is not None:
            return self.vector[0]
        base = None
        for name, value in self.items:
            if name == BASE:
                base = value
        return base

    @property
    def sets_every_unet_slot(self) -> bool:
        """A full vector, ComfyUI names or a preset with values (then merge_ratio is not used by the UNet)."""
        return self.vector is not None or bool(self.comfy) or any(value is None and PRESETS[name][1] is not None
                                              for name, value in self.items)

    def slot_ratios(self, layout: BlockLayout | None, unet_ratio: float, te_ratio: float) -> dict[str, float]:
        """{slot: ratio} for every slot of the layout (BASE = the text encoders). Raises BlocksError naming the
        value when it does not fit this layout (a vector's length, a slot the model lacks)."""
        if layout is None:
            raise BlocksError(f"merge_blocks {self.text!r}: this model's UNet has keys outside the blocks "
                              "(not an SD1.x/SD2.x/SDXL UNet), so it cannot be merged per block")
        ratios = {slot: unet_ratio for slot in layout.unet_slots}
        ratios[BASE] = te_ratio
        if self.comfy:  # B's share is 1 − ComfyUI's value (model 1's share), exactly as ComfyUI computes it
            ratios.update((slot, 1.0 - comfy_share(self.comfy, slot_key_prefix(slot))) for slot in layout.unet_slots)
            return ratios
        if self.vector is not None:
            if len(self.vector) != len(layout.vector_slots):
                raise BlocksError(f"merge_blocks has {len(self.vector)} values; this model needs "
                                  f"{layout.describe_vector()}")
            ratios.update(zip(layout.vector_slots, self.vector))
            ratios[TIME] = ratios["IN00"]
            if layout.label:
                ratios[LABEL] = ratios["IN00"]
            ratios[OUT_FINAL] = ratios[layout.vector_slots[-1]]
            return ratios
        for name, value in self.items:
            if value is None:
                preset = PRESETS[name][1]
                if preset is not None:
                    ratios.update(preset(layout))
                continue
            for slot in _expand(name, layout):
                ratios[slot] = value
        return ratios


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _value(token: str, what: str) -> float:
    low, high = RATIO_RANGE
    try:
        value = float(token)
    except ValueError:
        raise BlocksError(f"merge_blocks: {what} must be a number in [{low:g}, {high:g}], got {token!r}") from None
    if math.isnan(value) or not low <= value <= high:
        raise BlocksError(f"merge_blocks: {what} must be a number in [{low:g}, {high:g}], got {token!r}")
    return value


_NAME = r"(?:BASE|TIME|LABEL|M00|OUT_FINAL|(?:IN|OUT)\d{2})"
_TARGET = re.compile(rf"^(?:{_NAME}(?:\s*-\s*{_NAME})?|IN|M|OUT|BASE)$")


def _check_target(name: str) -> str:
    """Upper-case, spaces removed; a known slot form, range or group (the layout checks the numbers)."""
    canonical = re.sub(r"\s+", "", name.upper())
    if not _TARGET.match(canonical):
        raise BlocksError(f"merge_blocks: unknown slot {name.strip()!r}; use BASE, TIME, LABEL, IN00…, M00, OUT00…, "
                          "OUT_FINAL, a range (IN00-IN05), a group (IN, M, OUT), a preset "
                          f"({', '.join(PRESET_NAMES)}), or ComfyUI's argument names alone (input, middle, out; "
                          "time_embed., label_emb., input_blocks.N, middle_block.N, output_blocks.N, out.)")
    return canonical


def _expand(name: str, layout: BlockLayout) -> tuple[str, ...]:
    if name in GROUPS:
        return layout.group(name)
    ends = name.split("-")
    for end in ends:
        if end not in layout.slots:
            raise BlocksError(f"merge_blocks: slot {end!r} does not exist in this model ({layout.family}: "
                              f"{', '.join(layout.slots)})")
    if len(ends) == 1:
        return (name,)
    first, last = sorted(layout.slots.index(end) for end in ends)
    return layout.slots[first:last + 1]


def parse_blocks(value: Any) -> BlockWeights | None:
    """A merge_blocks value (text, a JSON list, a list of numbers) → BlockWeights; None for none ("", "flat",
    None). Checks the syntax, names and ranges; whether it fits a model is checked by slot_ratios()."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        return BlockWeights(vector=tuple(_value("not a number" if isinstance(v, bool) else str(v),
                                                f"value {i + 1} of the vector") for i, v in enumerate(value)))
    if not isinstance(value, str):
        raise BlocksError(f"merge_blocks must be text or a list of numbers, got {value!r:.200}")
    text = value.strip()
    if len(text) > 2000:
        raise BlocksError(f"merge_blocks is too long ({len(text)} characters)")
    if len(text) >= 2 and text[0] == text[-1] == '"':  # a value pasted with the X/Y/Z plot's or infotext's quotes
        text = text[1:-1].strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise BlocksError(f"merge_blocks: {text!r:.200} is not a JSON list of numbers ({error})") from None
        if not isinstance(values, list) or not values:
            raise BlocksError(f"merge_blocks: {text!r:.200} is not a JSON list of numbers")
        return parse_blocks([v if isinstance(v, (int, float)) else str(v) for v in values])
    if text.lower() in ("", "none", "flat"):
        return None
    tokens = [t.strip() for t in re.split(r"[,;\n]", text)]
    if any(not t for t in tokens):
        raise BlocksError(f"merge_blocks: an empty item in {text!r:.200}")
    if all(_is_number(t) for t in tokens):
        return BlockWeights(vector=tuple(_value(t, f"value {i + 1} of the vector") for i, t in enumerate(tokens)))
    if _is_comfy_form(tokens):
        return BlockWeights(comfy=_comfy_arguments(tokens, text))
    items: list[tuple[str, float | None]] = []
    for token in tokens:
        name, equals, number = token.partition("=")
        if not equals:
            preset = token.lower()
            if preset not in PRESETS:
                if _is_number(token):
                    raise BlocksError(f"merge_blocks: {token!r} is a number among assignments in {text!r:.200}; "
                                      "give either a full vector or assignments like IN04=0.5")
                raise BlocksError(f"merge_blocks: unknown preset {token!r}; presets: {', '.join(PRESET_NAMES)} "
                                  "(or assignments like IN00-IN05=1, OUT=0)")
            items.append((preset, None))
            continue
        target = _check_target(name)
        items.append((target, _value(number.strip(), f"the value of {name.strip()}")))
    if all(value is None and PRESETS[name][1] is None for name, value in items):
        return None  # "flat" only
    return BlockWeights(items=tuple(items))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def canonical_blocks(value: Any) -> str | None:
    """The canonical text of a merge_blocks value, None when it sets no per-block ratio."""
    parsed = parse_blocks(value)
    return None if parsed is None else parsed.text


def slot_keys(keys: Iterable[str]) -> dict[str, list[str]]:
    """{slot: [UNet keys]} in key order (for tables and tests); keys in no slot under None."""
    table: dict[str, list[str]] = {}
    for key in keys:
        table.setdefault(unet_slot(key), []).append(key)
    return table
