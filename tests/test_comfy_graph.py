"""Reading ComfyUI graphs (lib_ext/comfy/graph.py, workflow.py): the API prompt as ComfyUI runs it, a UI workflow
turned into that prompt as ComfyUI_frontend's graphToPrompt does (src/utils/executionUtil.ts), and the errors for
anything that is not a graph."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from lib_ext.comfy import ComfyGraphError, load_graph
from lib_ext.comfy.graph import MAX_NODES
from lib_ext.comfy.workflow import workflow_to_prompt

FIXTURES = Path(__file__).parent / "comfy_graphs"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_the_frontends_default_workflow_becomes_its_api_prompt():
    """The prompt written out by hand from the frontend's rules: widget values (without the seed's control value)
    in widget order, then the linked inputs; ids as strings; titles in _meta."""
    expected = {
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]},
              "_meta": {"title": "CLIPTextEncode"}},
        "6": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
                         "clip": ["4", 1]}, "_meta": {"title": "CLIPTextEncode"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1},
              "_meta": {"title": "EmptyLatentImage"}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                         "latent_image": ["5", 0]}, "_meta": {"title": "KSampler"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
              "_meta": {"title": "VAEDecode"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}, "_meta": {"title": "SaveImage"}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.ckpt"},
              "_meta": {"title": "CheckpointLoaderSimple"}},
    }
    graph = load_graph(fixture("default_workflow.json"))
    assert graph.source == "workflow" and graph.prompt == expected
    assert list(graph.prompt["3"]["inputs"]) == list(expected["3"]["inputs"])  # the order ModelMergeBlocks reads
    # the same workflow with schema-1 link objects
    objects = fixture("default_workflow.json")
    objects["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                        for link in objects["links"]]
    assert load_graph(objects).prompt == expected


def test_reroutes_primitives_bypassed_and_muted_nodes():
    graph = load_graph(fixture("merge_lora_rf_clipskip.json"))
    prompt = graph.prompt
    assert prompt["19"]["inputs"]["model"] == ["17", 0]  # through the Reroute
    assert prompt["3"]["inputs"]["seed"] == 987654321  # the PrimitiveNode's value, not a link
    assert prompt["9"]["inputs"]["images"] == ["8", 0]  # the bypassed ImageSharpen passes its IMAGE on
    assert not {"18", "21", "23", "24"} & set(prompt)  # Reroute, PrimitiveNode, bypassed, muted: left out
    assert graph.literal("3", "seed") == 987654321 and graph.label("3") == "#3 KSampler"


def test_unknown_nodes_keep_their_links_and_raw_widgets():
    workflow = fixture("default_workflow.json")
    workflow["nodes"].append({"id": 10, "type": "SomeCustomNode", "mode": 0, "widgets_values": [1, "x"],
                              "inputs": [{"name": "image", "type": "IMAGE", "link": 10}]})
    workflow["links"].append([10, 8, 0, 10, 0, "IMAGE"])
    node = load_graph(workflow).prompt["10"]
    assert node["inputs"] == {"image": ["8", 0]} and node["widgets_values"] == [1, "x"]


def test_widget_count_mismatch_is_noted():
    workflow = fixture("default_workflow.json")
    workflow["nodes"][3]["widgets_values"].append("extra")
    notes = workflow_to_prompt(workflow)[1]
    assert notes == ["node #3 KSampler: 8 widget values where ComfyUI v0.8.0 has 7 (seed, control_after_generate, "
                     "steps, cfg, sampler_name, scheduler, denoise); read by position"]


def test_inputs_from_left_out_nodes_are_dropped():
    workflow = fixture("default_workflow.json")
    next(n for n in workflow["nodes"] if n["id"] == 7)["mode"] = 2  # mute the negative's encoder
    prompt = load_graph(workflow).prompt
    assert "7" not in prompt and "negative" not in prompt["3"]["inputs"]


def test_api_prompts_in_their_wrappers():
    prompt = fixture("basic_api_example.json")
    for form in (prompt, {"prompt": prompt, "client_id": "x"}, {"prompt": json.dumps(prompt)}, json.dumps(prompt),
                 json.dumps(prompt).encode()):
        graph = load_graph(form)
        assert graph.prompt["3"]["class_type"] == "KSampler" and graph.link("3", "model") == ("4", 0)
    assert load_graph(prompt).source == "api" and load_graph({"prompt": prompt}).source == "prompt"


def test_dangling_links_and_literals():
    prompt = fixture("basic_api_example.json")
    prompt["3"]["inputs"]["model"] = ["99", 0]
    graph = load_graph(prompt)
    assert graph.link("3", "model") is None and graph.link("3", "seed") is None
    with pytest.raises(ComfyGraphError, match="#3 KSampler has no value for 'model'"):
        graph.literal("3", "model")


def sampler_free() -> dict:
    prompt = fixture("basic_api_example.json")
    del prompt["3"]
    return prompt


@pytest.mark.parametrize("source, fragment", [
    ("{not json", "the text is not JSON"),
    ("[1, 2]", "a JSON list, expected an object"),
    ({}, "expected an API prompt"),
    ({"nodes": "x"}, "expected an API prompt"),
    ({"nodes": [{"id": 1}], "links": []}, "'nodes' must be a list of objects with 'id' and 'type'"),
    ({"nodes": [{"id": 1, "type": "KSampler"}], "links": [[1, 2]]}, "neither [id, from, slot, to, slot, type]"),
    ({"1": {"inputs": {}}, "2": {"class_type": "KSampler"}}, "expected an API prompt"),
    ({"1": {"class_type": "KSampler", "inputs": [1]}}, "node '1' has 'inputs' that are not an object"),
    (sampler_free(), "no sampler in this ComfyUI graph (KSampler or KSamplerAdvanced)"),
    ({**sampler_free(), "20": {"class_type": "SamplerCustomAdvanced", "inputs": {}}},
     "it has SamplerCustomAdvanced, which Uncond Lab does not read"),
    ({str(i): {"class_type": "KSampler", "inputs": {}} for i in range(MAX_NODES + 1)}, "more than 10000 are not read"),
    (b"\xff\xfe\x00", "neither a PNG nor UTF-8 JSON text"),
])
def test_what_is_not_a_graph_is_refused_saying_why(source, fragment):
    with pytest.raises(ComfyGraphError, match=re.escape(fragment)) as error:
        load_graph(copy.deepcopy(source))
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixture_workflows_are_consistent(name):
    """The hand-built workflows hold what the frontend writes: each link once at both ends, last ids right."""
    workflow = fixture(name)
    if "nodes" not in workflow:
        return  # an API prompt
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == max(l[0] for l in workflow["links"])
    for link_id, origin, origin_slot, target, target_slot, _ in workflow["links"]:
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]


def test_a_graph_wrapped_under_its_chunk_name_or_as_json_text():
    workflow = json.loads((FIXTURES / "default_workflow.json").read_text())
    assert load_graph({"workflow": workflow}).prompt == load_graph(workflow).prompt
    assert load_graph({"workflow": json.dumps(workflow)}).prompt == load_graph(workflow).prompt
    with pytest.raises(ComfyGraphError, match="'prompt' is a string that is not JSON"):
        load_graph({"prompt": "a string"})
