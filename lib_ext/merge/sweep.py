"""The merge-sweep tab's logic: value lists in the X/Y/Z plot's syntax, the uncond list, the cells and the grid.

Value lists (A1111 scripts/xyz_grid.py `process_axis`, float axes), items separated by commas:

    0.3                  one value
    0-1                  from 0 to 1 in steps of 1
    0-1 (+0.25)          steps of 0.25; the sign may be left out here, and the end is not overshot by rounding
    1-0 (-0.25)          downwards
    0-1 [5]              5 values, evenly spaced, both ends included

Uncond list, items separated by semicolons or commas: `default` (the WebUI's own uncond, Uncond Lab off),
`null` (= zero weight 0: te(""), what ComfyUI feeds), `zero` (= zero weight 1: what A1111/reForge feed SDXL for
an empty negative), or a zero weight in [0, 1].

Block-weights list (per-block UNet ratios, lib_ext/merge/blocks.py), items separated by commas and quoted where
they contain commas, as the X/Y/Z plot reads its text values: `"IN04=0", "IN04=1", input-only`; `flat` or `none`
(or an empty list) = the plain ratio.

Cells are generated merge ratio outermost (one weight update per ratio), then block weights (a block change
rewrites only the blocks whose ratio changed), then uncond, then CFG; the grid has one row per (ratio, block
weights) pair and one column per (uncond, CFG) pair, in that order.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from lib_ext.merge.blocks import BlocksError, canonical_blocks
from lib_ext.merge.recipe import RATIO_RANGE

MAX_VALUES = 64    # per list
MAX_CELLS = 256    # per sweep
CFG_RANGE = (0.0, 100.0)
_ROUND_DIGITS = 10  # 0.1·3 = 0.30000000000000004 → 0.3

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*"
                    rf"(?:\(\s*([+-]?)\s*((?:\d+(?:\.\d*)?|\.\d+))\s*\)|\[\s*(\d+)\s*\])?\s*$")
_SINGLE = re.compile(rf"^\s*({_NUMBER})\s*$")

UNCOND_NAMES = {"default": None, "webui": None, "webui default": None, "off": None,
                "null": 0.0, "zero": 1.0}


class SweepError(ValueError):
    """A sweep list cannot be read; the message names the item and says what is allowed."""


def _clean(value: float) -> float:
    rounded = round(value, _ROUND_DIGITS)
    return 0.0 if rounded == 0 else rounded  # no -0.0 in labels


def _range_values(text: str, start: float, end: float, sign: str | None, step: str | None,
                  count: str | None) -> list[float]:
    if count is not None:
        n = int(count)
        if not 1 <= n <= MAX_VALUES:
            raise SweepError(f"'{text}': the count must be 1 to {MAX_VALUES}, got {n}")
        if n == 1:
            return [start]
        return [_clean(start + (end - start) * i / (n - 1)) for i in range(n)]
    size = float(step) if step is not None else 1.0
    if sign == "-":
        size = -size
    elif not sign and end < start:
        size = -size  # "1-0 (0.25)": the direction is the range's
    if size == 0:
        raise SweepError(f"'{text}': the step must not be 0")
    if (end - start) * size < 0:
        raise SweepError(f"'{text}': a step of {size:+g} never gets from {start:g} to {end:g}")
    n = math.floor((end - start) / size + 1e-9) + 1
    if n > MAX_VALUES:
        raise SweepError(f"'{text}' gives {n} values; at most {MAX_VALUES} values per list")
    return [_clean(start + size * i) for i in range(n)]


def parse_values(text: str, what: str, low: float, high: float) -> list[float]:
    """Numbers from an X/Y/Z-style list (see the module doc), each checked against [low, high]."""
    if not isinstance(text, str) or not text.strip():
        raise SweepError(f"{what}: give at least one value, e.g. '0, 0.5, 1' or '0-1 [5]'")
    values: list[float] = []
    for item in text.split(","):
        if not item.strip():
            continue
        single, ranged = _SINGLE.match(item), _RANGE.match(item)
        if single:
            values.append(_clean(float(single.group(1))))
        elif ranged:
            start, end, sign, step, count = ranged.groups()
            try:
                values += _range_values(item.strip(), float(start), float(end), sign, step, count)
            except SweepError as error:
                raise SweepError(f"{what}: {error}") from None
        else:
            raise SweepError(f"{what}: cannot read '{item.strip()[:60]}'; use numbers and ranges such as "
                             "'0.3', '0-1 [5]' or '0-1 (+0.25)'")
        if len(values) > MAX_VALUES:
            raise SweepError(f"{what}: more than {MAX_VALUES} values")
    for value in values:
        if not (math.isfinite(value) and low <= value <= high):
            raise SweepError(f"{what}: {value:g} is outside [{low:g}, {high:g}]")
    if not values:
        raise SweepError(f"{what}: give at least one value, e.g. '0, 0.5, 1' or '0-1 [5]'")
    return values


def parse_ratios(text: str) -> list[float]:
    return parse_values(text, "Merge ratios", *RATIO_RANGE)


def parse_cfgs(text: str) -> list[float]:
    return parse_values(text, "CFG scales", *CFG_RANGE)


def parse_unconds(text: str) -> list[float | None]:
    """Zero weights (None = the WebUI's own uncond) from the uncond list (see the module doc)."""
    if not isinstance(text, str) or not text.strip():
        return [None]
    choices: list[float | None] = []
    for item in re.split(r"[;,]", text):
        name = item.strip().lower()
        if not name:
            continue
        if name in UNCOND_NAMES:
            choices.append(UNCOND_NAMES[name])
            continue
        try:
            weight = float(name)
        except ValueError:
            raise SweepError(f"Uncond list: cannot read '{item.strip()[:60]}'; use 'default', 'null', 'zero' "
                             "or a zero weight in [0, 1]") from None
        if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise SweepError(f"Uncond list: zero weight {item.strip()[:20]} is outside [0, 1]")
        choices.append(_clean(weight))
        if len(choices) > MAX_VALUES:
            raise SweepError(f"Uncond list: more than {MAX_VALUES} values")
    return choices or [None]


def parse_blocks_list(text: str) -> list[str | None]:
    """Canonical block weights (None = the plain ratio) from the block-weights list (see the module doc)."""
    if not isinstance(text, str) or not text.strip():
        return [None]
    items = [item.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for item in row]
    choices: list[str | None] = []
    for item in items:
        if not item:
            continue
        try:
            choices.append(canonical_blocks(item))
        except BlocksError as error:
            raise SweepError(f"Block weights list: {error}") from None
        if len(choices) > MAX_VALUES:
            raise SweepError(f"Block weights list: more than {MAX_VALUES} values")
    return choices or [None]


def uncond_label(weight: float | None) -> str:
    if weight is None:
        return "WebUI uncond"
    if weight == 0.0:
        return "null uncond"
    if weight == 1.0:
        return "zero uncond"
    return f"zero weight {weight:g}"


@dataclass(frozen=True)
class SweepCell:
    row: int
    column: int
    ratio: float
    cfg: float
    uncond: float | None  # zero weight, None = the WebUI's own uncond
    blocks: str | None = None  # per-block UNet ratios, None = the plain ratio


@dataclass(frozen=True)
class SweepPlan:
    ratios: tuple[float, ...]
    cfgs: tuple[float, ...]
    unconds: tuple[float | None, ...]
    blocks: tuple[str | None, ...] = (None,)

    def __post_init__(self):
        if not (self.ratios and self.cfgs and self.unconds and self.blocks):
            raise SweepError("a sweep needs at least one merge ratio, one CFG scale and one uncond setting")
        if self.cell_count > MAX_CELLS:
            blocks = f" × {len(self.blocks)} block weights" if len(self.blocks) > 1 else ""
            raise SweepError(f"{len(self.ratios)} ratios{blocks} × {len(self.cfgs)} CFG scales × "
                             f"{len(self.unconds)} uncond settings = {self.cell_count} cells; at most {MAX_CELLS}")

    @property
    def cell_count(self) -> int:
        return len(self.rows) * len(self.cfgs) * len(self.unconds)

    @property
    def rows(self) -> list[tuple[float, str | None]]:
        """(ratio, block weights) per grid row: ratio outermost."""
        return [(ratio, blocks) for ratio in self.ratios for blocks in self.blocks]

    @property
    def columns(self) -> list[tuple[float | None, float]]:
        return [(uncond, cfg) for uncond in self.unconds for cfg in self.cfgs]

    def cells(self) -> list[SweepCell]:
        """In generation order: ratio outermost (so a ratio is written once), then uncond, then CFG."""
        return [SweepCell(row, column, ratio, cfg, uncond, blocks)
                for row, (ratio, blocks) in enumerate(self.rows)
                for column, (uncond, cfg) in enumerate(self.columns)]

    def row_labels(self) -> list[str]:
        return [f"Merge ratio {ratio:g}" + ("" if blocks is None else f", blocks {blocks}")
                for ratio, blocks in self.rows]

    def column_labels(self) -> list[list[str]]:
        """One or two lines per column: the CFG scale, and the uncond when several are compared."""
        labels = []
        for uncond, cfg in self.columns:
            lines = []
            if len(self.cfgs) > 1 or len(self.unconds) == 1:
                lines.append(f"CFG {cfg:g}")
            if len(self.unconds) > 1:
                lines.append(uncond_label(uncond))
            labels.append(lines)
        return labels


def plan_sweep(ratios: str, cfgs: str, unconds: str, blocks: str = "") -> SweepPlan:
    return SweepPlan(tuple(parse_ratios(ratios)), tuple(parse_cfgs(cfgs)), tuple(parse_unconds(unconds)),
                     tuple(parse_blocks_list(blocks)))
