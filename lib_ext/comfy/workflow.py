"""A UI workflow → the API prompt ComfyUI would run, as ComfyUI_frontend's `graphToPrompt` builds it
(src/utils/executionUtil.ts).

What the frontend does and this follows: muted (mode 2, NEVER) and bypassed (mode 4) nodes are left out; a link
from a bypassed node is passed on to that node's input of the same type (the same slot first); virtual nodes are
left out (Reroute passes its input on; a PrimitiveNode's value becomes the literal input); widget values come first,
in widget order, then the linked inputs (a linked widget input replaces the widget's value, keeping its place: the
order matters to ModelMergeBlocks, whose first argument is its default); an input whose source was left out is
dropped. Links are `[id, origin_id, origin_slot, target_id, target_slot, type]` (schema 0.4) or objects with those
names (schema 1). Nodes of unknown types keep their linked inputs; their widget values cannot be named, so they are
kept as the list `widgets_values` beside `inputs` (not an API field: ComfyUI never sees these prompts).
"""
from __future__ import annotations

from typing import Any, Mapping

from lib_ext.comfy.errors import ComfyGraphError
from lib_ext.comfy.nodes import CONTROL, NODES, REROUTE, UI_PRIMITIVE

MODE_NEVER, MODE_BYPASS = 2, 4  # litegraph's LGraphEventMode
_LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def _links(workflow: Mapping) -> dict[Any, dict]:
    links = {}
    for link in workflow.get("links") or ():
        if isinstance(link, (list, tuple)) and len(link) >= 5:
            link = dict(zip(_LINK_FIELDS, link))
        if not isinstance(link, Mapping) or "origin_id" not in link:
            raise ComfyGraphError(f"workflow link {link!r:.100} is neither [id, from, slot, to, slot, type] nor "
                                  "an object with origin_id")
        links[link["id"]] = link
    return links


class _Resolver:
    """Follows a link through Reroutes, PrimitiveNodes and bypassed nodes to ("link", id, slot), ("value", v)
    or None (the source is left out)."""

    def __init__(self, nodes: dict[Any, Mapping], links: dict[Any, dict]):
        self.nodes, self.links = nodes, links

    def resolve(self, link_id: Any, seen: frozenset = frozenset()) -> tuple | None:
        link = self.links.get(link_id)
        if link is None or link_id in seen:
            return None
        seen = seen | {link_id}
        origin = self.nodes.get(link["origin_id"])
        if origin is None or origin.get("mode") == MODE_NEVER:
            return None
        if origin.get("type") == REROUTE:
            inputs = origin.get("inputs") or [{}]
            return self.resolve(inputs[0].get("link"), seen)
        if origin.get("type") == UI_PRIMITIVE:
            values = origin.get("widgets_values") or [None]
            return ("value", values[0])
        if origin.get("mode") == MODE_BYPASS:
            return self._through_bypass(origin, link, seen)
        return ("link", str(origin["id"]), int(link["origin_slot"]))

    def _through_bypass(self, node: Mapping, link: Mapping, seen: frozenset) -> tuple | None:
        kind, slot = link.get("type"), int(link["origin_slot"])
        inputs = [i for i in node.get("inputs") or () if i.get("link") is not None]
        same_slot = [i for i in (node.get("inputs") or ())[slot:slot + 1] if i.get("type") == kind]
        candidates = [i for i in same_slot if i.get("link") is not None] + [i for i in inputs if i.get("type") == kind]
        return self.resolve(candidates[0]["link"], seen) if candidates else None


def _widget_inputs(node: Mapping, notes: list[str]) -> dict[str, Any]:
    values = node.get("widgets_values")
    spec = NODES.get(node.get("type"))
    if spec is None or values is None:
        return {}
    if isinstance(values, Mapping):  # some nodes store their widgets by name
        return {name: values[name] for name in spec.api_widgets if name in values}
    if len(values) != len(spec.widgets):
        notes.append(f"node #{node['id']} {node['type']}: {len(values)} widget values where ComfyUI v0.8.0 has "
                     f"{len(spec.widgets)} ({', '.join(spec.widgets)}); read by position")
    return {name: value for name, value in zip(spec.widgets, values) if name != CONTROL}


def workflow_to_prompt(workflow: Mapping) -> tuple[dict[str, dict], list[str]]:
    """(API prompt, notes) for a UI workflow ({"nodes": [...], "links": [...], ...})."""
    nodes_list = workflow.get("nodes")
    if not isinstance(nodes_list, list) or not all(isinstance(n, Mapping) and "id" in n and "type" in n
                                                   for n in nodes_list):
        raise ComfyGraphError("not a ComfyUI workflow: 'nodes' must be a list of objects with 'id' and 'type'")
    nodes = {node["id"]: node for node in nodes_list}
    resolver, notes = _Resolver(nodes, _links(workflow)), []
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or ()
    if subgraphs:
        notes.append(f"the workflow has {len(subgraphs)} subgraph(s); their insides are not read")
    prompt: dict[str, dict] = {}
    for node in nodes_list:
        if node["type"] in (REROUTE, UI_PRIMITIVE) or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        inputs = _widget_inputs(node, notes)
        for socket in node.get("inputs") or ():
            if socket.get("link") is None:
                continue
            resolved = resolver.resolve(socket["link"])
            if resolved is not None:
                inputs[socket["name"]] = list(resolved[1:]) if resolved[0] == "link" else resolved[1]
        entry = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title") or node["type"]}}
        if node["type"] not in NODES and node.get("widgets_values"):
            entry["widgets_values"] = node["widgets_values"]
        prompt[str(node["id"])] = entry
    for entry in prompt.values():  # as the frontend: an input whose source was left out is dropped
        for name, value in list(entry["inputs"].items()):
            if _is_link(value) and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt, notes


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)
