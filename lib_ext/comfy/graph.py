"""Read a ComfyUI graph from what a user has: a PNG that ComfyUI saved, an API prompt, or a UI workflow.

API prompt ("prompt", what ComfyUI runs; server.py's /prompt, execution.py): {"<id>": {"class_type": ...,
"inputs": {name: literal or [source_id, output_slot]}, "_meta": {"title": ...}}}. UI workflow (ComfyUI_frontend):
{"nodes": [...], "links": [...], ...}, turned into the API form by workflow.py. A PNG holds both (png.py); the
prompt is preferred, being exactly what ran.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from lib_ext.comfy.errors import ComfyGraphError
from lib_ext.comfy.nodes import PRIMITIVE_NODES, SAMPLER_NODES
from lib_ext.comfy.png import is_png, png_text_chunks
from lib_ext.comfy.workflow import workflow_to_prompt

MISSING = object()
MAX_NODES = 10000  # a graph with more nodes than this is refused (hostile input, not a workflow)


@dataclass
class ComfyGraph:
    """An API prompt with the helpers the import needs; `source` says what it was read from."""
    prompt: dict[str, dict]
    source: str
    notes: list[str] = field(default_factory=list)

    def class_of(self, node_id: str) -> str:
        return self.prompt[node_id]["class_type"]

    def label(self, node_id: str) -> str:
        """How messages name a node: '#7 CLIPTextEncode'."""
        return f"#{node_id} {self.class_of(node_id)}"

    def link(self, node_id: str, name: str) -> tuple[str, int] | None:
        """The (source id, output slot) an input is linked to, None when it is a literal, absent or dangling."""
        value = self.prompt[node_id]["inputs"].get(name)
        if is_link(value) and str(value[0]) in self.prompt:
            return str(value[0]), int(value[1])
        return None

    def literal(self, node_id: str, name: str, default: Any = MISSING) -> Any:
        """An input's value; a link to a Primitive node gives that node's value. Raises ComfyGraphError naming the
        node when the input is missing and no default is given."""
        value = self.prompt[node_id]["inputs"].get(name, MISSING)
        if is_link(value):
            source = self.link(node_id, name)
            primitive = source is not None and self.class_of(source[0]) in PRIMITIVE_NODES
            value = self.prompt[source[0]]["inputs"].get("value", MISSING) if primitive else MISSING
        if isinstance(value, Mapping) and "__value__" in value:  # the frontend's wrapper for list values
            value = value["__value__"]
        if value is MISSING:
            if default is not MISSING:
                return default
            raise ComfyGraphError(f"{self.label(node_id)} has no value for '{name}'")
        return value

    def consumers(self, node_id: str) -> list[tuple[str, str]]:
        """(node id, input name) of every input linked to an output of `node_id`."""
        return [(other, name) for other, node in self.prompt.items() for name, value in node["inputs"].items()
                if is_link(value) and str(value[0]) == node_id]

    def nodes_of(self, *classes: str) -> list[str]:
        return sorted((i for i, node in self.prompt.items() if node["class_type"] in classes), key=_id_order)


def is_link(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool)


def _id_order(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _checked_prompt(prompt: Mapping) -> dict[str, dict]:
    if len(prompt) > MAX_NODES:
        raise ComfyGraphError(f"the graph has {len(prompt)} nodes; more than {MAX_NODES} are not read")
    checked = {}
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise ComfyGraphError(f"not a ComfyUI API prompt: node {node_id!r:.50} has no 'class_type'")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise ComfyGraphError(f"not a ComfyUI API prompt: node {node_id!r:.50} has 'inputs' that are not an object")
        checked[str(node_id)] = {**node, "inputs": dict(inputs)}
    return checked


def _looks_like_api(value: Mapping) -> bool:
    return bool(value) and all(isinstance(n, Mapping) and "class_type" in n for n in value.values())


def _from_mapping(value: Mapping, source: str) -> ComfyGraph:
    if isinstance(value.get("nodes"), list):
        prompt, notes = workflow_to_prompt(value)
        return ComfyGraph(_checked_prompt(prompt), source or "workflow", notes)
    for key in ("prompt", "workflow"):  # the /prompt request body, the import route's, a PNG's text chunks
        if key in value:
            inner = value[key]
            if isinstance(inner, str):
                try:
                    inner = json.loads(inner)
                except ValueError:
                    raise ComfyGraphError(f"not a ComfyUI graph: '{key}' is a string that is not JSON") from None
            return _from_value(inner, source or key)
    if _looks_like_api(value):
        return ComfyGraph(_checked_prompt(value), source or "api")
    raise ComfyGraphError("not a ComfyUI graph: expected an API prompt {id: {class_type, inputs}} or a UI workflow "
                          "{nodes, links}")


def _from_value(value: Any, source: str) -> ComfyGraph:
    if not isinstance(value, Mapping):
        raise ComfyGraphError(f"not a ComfyUI graph: a JSON {type(value).__name__}, expected an object")
    return _from_mapping(value, source)


def _from_png(data: bytes) -> ComfyGraph:
    texts = png_text_chunks(data)
    for key in ("prompt", "workflow"):
        if key in texts:
            try:
                return _from_value(json.loads(texts[key]), f"png {key}")
            except json.JSONDecodeError as error:
                raise ComfyGraphError(f"the PNG's '{key}' text is not JSON ({error})") from None
    if "parameters" in texts:
        raise ComfyGraphError("the PNG holds A1111 generation parameters, not a ComfyUI graph (no 'prompt' or "
                              "'workflow' text): export it to ComfyUI instead")
    raise ComfyGraphError(f"the PNG has no ComfyUI graph (text chunks: {', '.join(texts) or 'none'})")


def load_graph(source: bytes | str | Mapping) -> ComfyGraph:
    """A ComfyGraph from PNG bytes, JSON text or bytes, or a parsed dict (API prompt, UI workflow, or either under
    "prompt"). Raises ComfyGraphError saying why when it is none of these or has no KSampler/KSamplerAdvanced."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if is_png(data):
            graph = _from_png(data)
            return _with_sampler(graph)
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ComfyGraphError("neither a PNG nor UTF-8 JSON text") from None
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as error:
            raise ComfyGraphError(f"not a ComfyUI graph: the text is not JSON ({error})") from None
    return _with_sampler(_from_value(source, ""))


def _with_sampler(graph: ComfyGraph) -> ComfyGraph:
    if graph.nodes_of(*SAMPLER_NODES):
        return graph
    others = sorted({n["class_type"] for n in graph.prompt.values() if "Sampler" in n["class_type"]})
    found = f"; it has {', '.join(others)}, which Uncond Lab does not read" if others else ""
    raise ComfyGraphError(f"no sampler in this ComfyUI graph (KSampler or KSamplerAdvanced){found}")
