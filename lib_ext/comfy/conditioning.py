"""The uncond as ComfyUI builds it from conditioning nodes, and back: Uncond Lab's zero weight `w` on [start, end].

A ComfyUI conditioning is a list of entries (nodes.py, ComfyUI v0.8.0); here each entry is a Piece
`(1 − w)·te(text) + w·zero` applied on [start, end] (fractions of the denoising, 0 = noisiest):
- CLIPTextEncode(text): [Piece(text, 0, 0, 1)].
- ConditioningZeroOut: every entry's tensors zeroed, pooled output too, its other keys kept: w → 1.
- ConditioningAverage(to, from, s): for each entry of `to`, s·to + (1 − s)·from[0] (only from's first entry; the
  pooled outputs alike), keeping `to`'s keys (its range): w = s·w_to + (1 − s)·w_from. So
  ConditioningAverage(ZeroOut(T), T, s) has w = s, as README's "ComfyUI equivalents" table says. `from` is cut or
  zero-padded to `to`'s token length, so a zero of one text averaged with another text is not a blend of that text
  (refused); a zero's length does not matter otherwise (zero keys and values give the same attention output).
- ConditioningSetTimestepRange(c, a, b): every entry's range set to [a, b] (node_helpers.conditioning_set_values
  overwrites start_percent/end_percent).
- ConditioningCombine(c1, c2): c1 + c2; ComfyUI averages the predictions of the entries active at a step.
Uncond Lab's uncond is `w` inside [start, end] and the text (w = 0) outside, so an uncond has an exact equivalent
when its pieces share one text and tile [0, 1] with one stretch of one weight and w = 0 elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from lib_ext.comfy.graph import ComfyGraph


class NoEquivalent(Exception):
    """A conditioning graph Uncond Lab cannot express; the message names the node and why."""


@dataclass(frozen=True)
class Piece:
    text: str
    weight: float  # the zero weight w of this entry
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class Uncond:
    text: str
    zero_weight: float
    start: float = 0.0
    end: float = 1.0


def _average(to: Piece, source: Piece, strength: float, label: str) -> Piece:
    if to.weight < 1 and source.weight < 1 and to.text != source.text:
        raise NoEquivalent(f"{label} averages two different texts ({to.text!r:.60}, {source.text!r:.60})")
    if to.weight == 1 and source.weight < 1 and to.text != source.text:
        raise NoEquivalent(f"{label} averages the zeroed encoding of {to.text!r:.60} with the text "
                           f"{source.text!r:.60}; ComfyUI cuts or pads that text to the zero's token length, so "
                           "zero the same CLIPTextEncode for a blend")
    text = to.text if to.weight < 1 else source.text
    return replace(to, text=text, weight=strength * to.weight + (1.0 - strength) * source.weight)


MAX_DEPTH = 100  # conditioning nodes between a sampler and a text encoder; deeper is hostile, not a workflow


def read_pieces(graph: ComfyGraph, node_id: str, encoders: list[str], path: tuple[str, ...] = ()) -> list[Piece]:
    """The pieces of the conditioning node `node_id` outputs; the CLIPTextEncode ids met are appended to
    `encoders`. Raises NoEquivalent naming the first node Uncond Lab cannot follow (or a cycle)."""
    kind, label = graph.class_of(node_id), graph.label(node_id)
    if node_id in path or len(path) > MAX_DEPTH:
        raise NoEquivalent(f"{label}: the conditioning loops back or is more than {MAX_DEPTH} nodes deep")

    def inner(name: str) -> list[Piece]:
        source = graph.link(node_id, name)
        if source is None:
            raise NoEquivalent(f"{label} has no '{name}' input")
        return read_pieces(graph, source[0], encoders, path + (node_id,))

    def number(name: str) -> float:
        value = graph.literal(node_id, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NoEquivalent(f"{label}'s '{name}' is not a number ({value!r:.60})")
        return float(value)

    if kind == "CLIPTextEncode":
        text = graph.literal(node_id, "text", None)
        if not isinstance(text, str):
            raise NoEquivalent(f"{label}'s text comes from a node Uncond Lab does not read")
        encoders.append(node_id)
        return [Piece(text, 0.0)]
    if kind == "ConditioningZeroOut":
        return [replace(piece, weight=1.0) for piece in inner("conditioning")]
    if kind == "ConditioningAverage":
        to, source, strength = inner("conditioning_to"), inner("conditioning_from"), number("conditioning_to_strength")
        return [_average(piece, source[0], strength, label) for piece in to]
    if kind == "ConditioningSetTimestepRange":
        start, end = number("start"), number("end")
        return [replace(piece, start=start, end=end) for piece in inner("conditioning")]
    if kind == "ConditioningCombine":
        return inner("conditioning_1") + inner("conditioning_2")
    raise NoEquivalent(f"{label} in the conditioning has no Uncond Lab equivalent")


def positive_text(pieces: list[Piece]) -> str:
    """The prompt of a positive that is one plain text encoding; NoEquivalent otherwise."""
    if len(pieces) == 1 and pieces[0] == Piece(pieces[0].text, 0.0):
        return pieces[0].text
    raise NoEquivalent("the positive conditioning is not one CLIPTextEncode over all steps (zeroed, averaged, "
                       "timestep ranges or combined conditionings have no A1111 prompt equivalent)")


def _stretches(pieces: list[Piece]) -> list[Piece]:
    """The pieces in order, checked to tile [0, 1] edge to edge, neighbours of equal weight joined."""
    ordered = sorted(pieces, key=lambda p: (p.start, p.end))
    if any(not 0.0 <= p.start < p.end <= 1.0 for p in ordered):
        bad = next(p for p in ordered if not 0.0 <= p.start < p.end <= 1.0)
        raise NoEquivalent(f"a timestep range [{bad.start:g}, {bad.end:g}] is empty or outside [0, 1]")
    if ordered[0].start != 0.0 or ordered[-1].end != 1.0 or any(a.end != b.start for a, b in zip(ordered, ordered[1:])):
        spans = ", ".join(f"[{p.start:g}, {p.end:g}]" for p in ordered)
        raise NoEquivalent(f"the negative's timestep ranges {spans} overlap or leave steps uncovered (ComfyUI averages "
                           "overlapping conditionings); Uncond Lab needs ranges that meet edge to edge over [0, 1]")
    joined = [ordered[0]]
    for piece in ordered[1:]:
        if piece.weight == joined[-1].weight:
            joined[-1] = replace(joined[-1], end=piece.end)
        else:
            joined.append(piece)
    return joined


def uncond_of(pieces: list[Piece]) -> Uncond:
    """The Uncond Lab uncond equal to a negative's pieces; NoEquivalent (saying why) when there is none."""
    texts = {p.text for p in pieces if p.weight < 1}
    if len(texts) > 1:
        raise NoEquivalent(f"the negative combines different texts ({', '.join(repr(t)[:60] for t in sorted(texts))})")
    text = texts.pop() if texts else pieces[0].text
    weighted = [p for p in _stretches(pieces) if p.weight != 0.0]
    if not weighted:
        return Uncond(text, 0.0)
    if len(weighted) > 1:
        raise NoEquivalent("the negative's zero weight changes more than once over the steps ("
                           + ", ".join(f"{p.weight:g} on [{p.start:g}, {p.end:g}]" for p in weighted)
                           + "); Uncond Lab has one window")
    window = weighted[0]
    return Uncond(text, window.weight, window.start, window.end)


# --- export -----------------------------------------------------------------------------------------------

Add = Callable[..., str]  # builder.add(class_type, **inputs) → node id


def uncond_nodes(add: Add, clip: tuple[str, int], uncond: Uncond) -> tuple[str, int]:
    """ComfyUI nodes for an uncond (README's "ComfyUI equivalents"), returning the negative's output:
    w = 0: the text; w = 1: ConditioningZeroOut(text); else ConditioningAverage(zero, text, strength w) (the
    zeroed one is conditioning_to, so w is its share); a window: that piece on [start, end] and the text on the rest,
    set with ConditioningSetTimestepRange and joined with ConditioningCombine."""
    text = (add("CLIPTextEncode", text=uncond.text, clip=clip), 0)
    w = uncond.zero_weight
    if w == 0.0:
        return text
    zero = (add("ConditioningZeroOut", conditioning=text), 0)
    blend = zero if w == 1.0 else (add("ConditioningAverage", conditioning_to_strength=w, conditioning_to=zero,
                                       conditioning_from=text), 0)
    if (uncond.start, uncond.end) == (0.0, 1.0):
        return blend
    spans = [(text, 0.0, uncond.start), (blend, uncond.start, uncond.end), (text, uncond.end, 1.0)]
    parts = [(add("ConditioningSetTimestepRange", start=start, end=end, conditioning=source), 0)
             for source, start, end in spans if start < end]
    combined = parts[0]
    for part in parts[1:]:
        combined = (add("ConditioningCombine", conditioning_1=combined, conditioning_2=part), 0)
    return combined
