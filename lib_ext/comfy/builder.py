"""Build an API prompt node by node, inputs in the order ComfyUI_frontend writes them (widgets in widget order,
then links): ModelMergeBlocks reads its first argument as the default, in the prompt's input order."""
from __future__ import annotations

from typing import Any

from lib_ext.comfy.nodes import NODES


class PromptBuilder:
    def __init__(self):
        self.prompt: dict[str, dict] = {}

    def add(self, class_type: str, **inputs: Any) -> str:
        """Add a node; a tuple (node id, slot) is a link. Returns the new node's id ("1", "2", ...)."""
        spec = NODES[class_type]
        unknown = set(inputs) - set(spec.api_widgets) - {name for name, _ in spec.sockets}
        if unknown:
            raise ValueError(f"{class_type} has no input(s) {', '.join(sorted(unknown))}")
        ordered = {name: inputs[name] for name in spec.api_widgets if name in inputs}
        ordered.update((name, list(inputs[name])) for name, _ in spec.sockets if name in inputs)
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": ordered, "_meta": {"title": class_type}}
        return node_id
