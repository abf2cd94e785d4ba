"""An API prompt of known nodes → a UI workflow that ComfyUI's Load (ComfyUI_frontend) opens: nodes with their
sockets, outputs and positional widget values, links `[id, from, from_slot, to, to_slot, type]`, last_node_id and
last_link_id, version 0.4. Nodes are laid out in columns by their distance from the loaders."""
from __future__ import annotations

from lib_ext.comfy.graph import is_link
from lib_ext.comfy.nodes import CONTROL, NODES

COLUMN_WIDTH, ROW_HEIGHT, MARGIN = 380, 240, 50


def _depths(prompt: dict[str, dict]) -> dict[str, int]:
    """Longest distance of each node from a node without linked inputs (the prompt is acyclic)."""
    depths: dict[str, int] = {}

    def depth(node_id: str, path: frozenset = frozenset()) -> int:
        if node_id not in depths:
            if node_id in path:
                raise ValueError(f"the prompt has a cycle through node {node_id}")
            sources = [str(v[0]) for v in prompt[node_id]["inputs"].values() if is_link(v)]
            depths[node_id] = 1 + max((depth(s, path | {node_id}) for s in sources), default=-1)
        return depths[node_id]

    for node_id in prompt:
        depth(node_id)
    return depths


def _size(class_type: str) -> list[int]:
    spec = NODES[class_type]
    if class_type == "CLIPTextEncode":
        return [400, 200]
    rows = max(len(spec.sockets), len(spec.outputs)) + len(spec.widgets)
    return [320, 30 + 24 * rows]


def prompt_to_workflow(prompt: dict[str, dict]) -> dict:
    """The UI workflow of an API prompt whose node ids are integers in strings and whose types are in NODES."""
    depths = _depths(prompt)
    order = sorted(prompt, key=lambda i: (depths[i], int(i)))
    rows: dict[int, int] = {}
    links, nodes, outgoing = [], {}, {node_id: {} for node_id in prompt}
    for node_id in sorted(prompt, key=int):
        spec = NODES[prompt[node_id]["class_type"]]
        inputs = []
        for slot, (name, kind) in enumerate(spec.sockets):
            value = prompt[node_id]["inputs"].get(name)
            link_id = None
            if is_link(value):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), int(value[1]), int(node_id), slot, kind])
                outgoing[str(value[0])].setdefault(int(value[1]), []).append(link_id)
            inputs.append({"name": name, "type": kind, "link": link_id})
        nodes[node_id] = inputs
    workflow_nodes = []
    for node_id in sorted(prompt, key=int):
        node, depth = prompt[node_id], depths[node_id]
        spec = NODES[node["class_type"]]
        row = rows[depth] = rows.get(depth, -1) + 1
        entry = {
            "id": int(node_id), "type": node["class_type"],
            "pos": [MARGIN + depth * COLUMN_WIDTH, MARGIN + row * ROW_HEIGHT], "size": _size(node["class_type"]),
            "flags": {}, "order": order.index(node_id), "mode": 0, "inputs": nodes[node_id],
            "outputs": [{"name": name, "type": kind, "links": outgoing[node_id].get(slot, []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(spec.outputs)],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": ["fixed" if name == CONTROL else node["inputs"][name] for name in spec.widgets],
        }
        title = node.get("_meta", {}).get("title")
        if title and title != node["class_type"]:
            entry["title"] = title
        workflow_nodes.append(entry)
    return {"last_node_id": max((int(i) for i in prompt), default=0), "last_link_id": len(links),
            "nodes": workflow_nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
