"""Export (lib_ext/comfy/from_webui.py, layout.py, infotext.py): the nodes each WebUI setting becomes, a UI
workflow that ComfyUI's Load accepts, A1111 infotext, and the notes for what ComfyUI has no node for."""
from __future__ import annotations

import pytest

from lib_ext.comfy import export_infotext, export_payload, parse_infotext
from lib_ext.comfy.nodes import CONTROL, NODES
from lib_ext.comfy.workflow import workflow_to_prompt
from lib_ext.settings import Settings


def payload(settings: dict | None = None, **fields) -> dict:
    base = {"prompt": "a lighthouse", "negative_prompt": "", "seed": 5, "steps": 20, "cfg_scale": 7.0,
            "sampler_name": "Euler", "scheduler": "Normal", "width": 1024, "height": 1024,
            "override_settings": {"sd_model_checkpoint": "base.safetensors [0123456789]"},
            "alwayson_scripts": {"Uncond Lab": {"args": [{"comfy_sampling": True, **(settings or {})}]}}}
    return {**base, **fields}


def nodes_of(prompt: dict, kind: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == kind]


def source(prompt: dict, node: dict, name: str) -> dict:
    return prompt[node["inputs"][name][0]]


def negative_of(prompt: dict) -> dict:
    sampler = nodes_of(prompt, "KSampler")[0]
    return source(prompt, sampler, "negative")


def check_workflow(workflow: dict, prompt: dict) -> None:
    """What ComfyUI_frontend's loader relies on: unique ids, last ids, links that agree with both ends, one widget
    value per widget, and the frontend's own conversion giving back the prompt."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] == max(nodes)
    assert workflow["last_link_id"] == len(workflow["links"]) == max((l[0] for l in workflow["links"]), default=0)
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[target]["inputs"][target_slot]["type"] == kind == nodes[origin]["outputs"][origin_slot]["type"]
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
    for node in workflow["nodes"]:
        spec = NODES[node["type"]]
        assert len(node["widgets_values"]) == len(spec.widgets)
        assert [i["name"] for i in node["inputs"]] == [name for name, _ in spec.sockets]
        for slot, output in enumerate(node["outputs"]):
            assert output["slot_index"] == slot
            assert all(workflow["links"][link - 1][1] == node["id"] for link in output["links"])
        if CONTROL in spec.widgets:
            assert node["widgets_values"][spec.widgets.index(CONTROL)] == "fixed"  # the seed stays as exported
    assert sorted(n["order"] for n in workflow["nodes"]) == list(range(len(nodes)))
    assert workflow["version"] == 0.4 and workflow_to_prompt(workflow) == (prompt, [])


def test_a_plain_export_and_its_workflow():
    exported = export_payload(payload({"enabled": True, "zero_weight": 0.0}))
    prompt = exported["prompt"]
    check_workflow(exported["workflow"], prompt)
    assert nodes_of(prompt, "CheckpointLoaderSimple")[0]["inputs"] == {"ckpt_name": "base.safetensors"}  # no [hash]
    sampler = nodes_of(prompt, "KSampler")[0]["inputs"]
    assert {k: sampler[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
        "seed": 5, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert negative_of(prompt) == {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
                                   "_meta": {"title": "CLIPTextEncode"}}
    assert exported["notes"] == []


def test_the_uncond_per_the_readme_table():
    zero = export_payload(payload({"enabled": True, "zero_weight": 1.0}))["prompt"]
    assert negative_of(zero)["class_type"] == "ConditioningZeroOut"
    blend = export_payload(payload({"enabled": True, "zero_weight": 0.35}))["prompt"]
    average = negative_of(blend)
    # conditioning_to is the zeroed encoding: its strength is the zero weight (nodes.py ConditioningAverage)
    assert average["class_type"] == "ConditioningAverage" and average["inputs"]["conditioning_to_strength"] == 0.35
    assert source(blend, average, "conditioning_to")["class_type"] == "ConditioningZeroOut"
    assert source(blend, average, "conditioning_from")["class_type"] == "CLIPTextEncode"
    window = export_payload(payload({"enabled": True, "zero_weight": 1.0, "end": 0.3}))["prompt"]
    combine = negative_of(window)
    pieces = [source(window, combine, name) for name in ("conditioning_1", "conditioning_2")]
    assert [(p["inputs"]["start"], p["inputs"]["end"], source(window, p, "conditioning")["class_type"])
            for p in pieces] == [(0.0, 0.3, "ConditioningZeroOut"), (0.3, 1.0, "CLIPTextEncode")]


@pytest.mark.parametrize("negative, family, expected, noted", [
    ("", None, "ConditioningZeroOut", True),   # A1111/reForge zero an empty SDXL negative
    ("", "SDXL", "ConditioningZeroOut", False),
    ("", "SD1.5", "CLIPTextEncode", False),
    ("blurry", None, "CLIPTextEncode", False),
])
def test_the_webuis_own_uncond(negative, family, expected, noted):
    exported = export_payload(payload({"enabled": False}, negative_prompt=negative), family=family)
    assert negative_of(exported["prompt"])["class_type"] == expected
    assert any("WebUI's own uncond" in n for n in exported["notes"]) == noted


def merge_export(settings: dict, family: str | None = None, **override) -> dict:
    fields = payload({"merge_model": "tuned [abcdef0123]", **settings})
    fields["override_settings"].update(override)
    return export_payload(fields, family=family)


def test_plain_merge_nodes_and_the_vae_note():
    exported = merge_export({"merge_ratio": 0.3})
    prompt = exported["prompt"]
    check_workflow(exported["workflow"], prompt)
    (model_merge,), (clip_merge,) = nodes_of(prompt, "ModelMergeSimple"), nodes_of(prompt, "CLIPMergeSimple")
    assert model_merge["inputs"]["ratio"] == 0.7 == clip_merge["inputs"]["ratio"]  # model 1's share; TE follows
    assert source(prompt, model_merge, "model2")["inputs"]["ckpt_name"] == "tuned.safetensors"
    assert "merge model B 'tuned' has no file extension; tuned.safetensors assumed" in exported["notes"]
    assert any(n.startswith("VAE: Uncond Lab merges the checkpoint's VAE at 0.3") for n in exported["notes"])
    no_vae_note = merge_export({"merge_ratio": 0.3, "merge_te_ratio": 0}, sd_vae="vae.safetensors")
    assert not nodes_of(no_vae_note["prompt"], "CLIPMergeSimple")
    assert not any(n.startswith("VAE:") for n in no_vae_note["notes"])
    assert nodes_of(no_vae_note["prompt"], "VAELoader")[0]["inputs"] == {"vae_name": "vae.safetensors"}


@pytest.mark.parametrize("blocks, ratio, family, kind, values", [
    ("input=0.3, middle=1, out=0.7", 0.0, None, "ModelMergeBlocks", {"input": 0.3, "middle": 1.0, "out": 0.7}),
    ("input-only", 0.5, None, "ModelMergeBlocks", {"input": 0.0, "middle": 1.0, "out": 1.0}),
    ("IN04=1", 0.25, None, "ModelMergeSDXL", {"input_blocks.4": 0.0, "input_blocks.3": 0.75, "label_emb.": 0.75,
                                              "middle_block.2": 0.75, "out.": 0.75}),
    ("IN04=1", 0.25, "SD1", "ModelMergeSD1", {"input_blocks.4.": 0.0, "input_blocks.11.": 0.75, "label_emb.": 0.75}),
    (",".join(["0.2"] * 26), 0.5, None, "ModelMergeBlocks", {"input": 0.8, "middle": 0.8, "out": 0.8}),
    ("gradient-up", 0.5, None, "ModelMergeSDXL", {"input_blocks.0": 1.0, "output_blocks.8": 0.0, "out.": 0.0}),
    ("out=0.2, input=0.9, middle=0.4", 0.0, None, "ModelMergeSDXL", {"time_embed.": 0.2, "input_blocks.0": 0.9}),
])
def test_block_merge_nodes(blocks, ratio, family, kind, values):
    exported = merge_export({"merge_ratio": ratio, "merge_blocks": blocks}, family=family)
    (node,) = [n for n in exported["prompt"].values() if n["class_type"].startswith("ModelMerge")]
    assert node["class_type"] == kind
    assert {name: node["inputs"][name] for name in values} == values
    assert list(node["inputs"])[:len(NODES[kind].widgets)] == list(NODES[kind].widgets)  # widgets first, in order
    check_workflow(exported["workflow"], exported["prompt"])
    assert any("exported as ModelMergeSDXL for SDXL" in n for n in exported["notes"]) == (kind == "ModelMergeSDXL"
                                                                                          and "_" not in blocks)


@pytest.mark.parametrize("settings, fragment", [
    ({"merge_method": "add_difference", "merge_model_c": "c"},
     "an add-difference merge (A + r·(B − C)) is not exported"),
    ({"merge_ratio": 1.5}, "a merge value outside [0, 1] (extrapolation): ComfyUI's merge nodes refuse it"),
    ({"merge_blocks": "LABEL=1"}, "slot 'LABEL' does not exist in this model (SD1.x/SD2.x"),
])
def test_merges_comfyui_cannot_do_are_noted(settings, fragment):
    assert any(fragment in n for n in merge_export(settings, family="SD1")["notes"])


def test_loras_rf_clip_skip():
    exported = export_payload(payload({"rf": True, "shift": 2.5}, prompt="boat <lora:a:0.8> <lora:b:0.5:1.2>, sea "
                                                                        "<lora:c:te=0:unet=0.7> <hypernet:h:1>",
                                      negative_prompt="<lora:n:1> ugly"),)
    prompt = exported["prompt"]
    loras = [(n["class_type"], n["inputs"]["lora_name"], n["inputs"]["strength_model"],
              n["inputs"].get("strength_clip")) for n in prompt.values() if n["class_type"].startswith("LoraLoader")]
    assert loras == [("LoraLoader", "a.safetensors", 0.8, 0.8), ("LoraLoader", "b.safetensors", 1.2, 0.5),
                     ("LoraLoaderModelOnly", "c.safetensors", 0.7, None)]
    texts = [n["inputs"]["text"] for n in nodes_of(prompt, "CLIPTextEncode")]
    assert texts == ["boat, sea", "ugly"]
    assert nodes_of(prompt, "ModelSamplingSD3")[0]["inputs"]["shift"] == 2.5
    assert any("<hypernet:h:1> has no ComfyUI node" in n for n in exported["notes"])
    assert "LoRA tags in the negative prompt are not exported" in exported["notes"]
    aura = export_payload(payload({"rf": True, "shift": 1.7, "multiplier": 1}))["prompt"]
    assert nodes_of(aura, "ModelSamplingAuraFlow")[0]["inputs"]["shift"] == 1.7
    odd = export_payload(payload({"rf": True, "multiplier": 500}))
    assert any("RF multiplier 500" in n for n in odd["notes"])
    skip = export_payload(payload(override_settings={"sd_model_checkpoint": "m.ckpt", "CLIP_stop_at_last_layers": 2}))
    assert nodes_of(skip["prompt"], "CLIPSetLastLayer")[0]["inputs"]["stop_at_clip_layer"] == -2


@pytest.mark.parametrize("sampler, scheduler, steps, comfy, fragment", [
    ("DPM++ 2M", "Automatic", 20, ("dpmpp_2m", "karras"), None),  # A1111's Automatic for DPM++ 2M is Karras
    ("Euler", None, 20, ("euler", "normal"), None),
    ("DPM++ 2M SDE", "Automatic", 20, ("dpmpp_2m_sde", "exponential"), "same sampler, not the same pixels"),
    ("DDIM", "Automatic", 20, ("ddim", "ddim_uniform"), "A1111's DDIM is its own timestep sampler"),
    ("Restart", "Karras", 20, ("euler", "karras"), "sampler 'Restart' exists only in the WebUI"),
    ("Euler", "Align Your Steps", 20, ("euler", "normal"), "schedule 'Align Your Steps' has no ComfyUI scheduler"),
    ("Euler", "Uniform", 20, ("euler", "normal"), None),
    ("Euler", "Rectified Flow", 25, ("euler", "simple"), None),  # 1000 is a multiple of 25
    ("Euler", "Rectified Flow", 30, ("euler", "simple"), "with 30 steps ComfyUI's simple rounds"),
])
def test_samplers_and_schedules(sampler, scheduler, steps, comfy, fragment):
    exported = export_payload(payload({"enabled": True, "zero_weight": 0}, sampler_name=sampler,
                                      scheduler=scheduler, steps=steps))
    node = nodes_of(exported["prompt"], "KSampler")[0]["inputs"]
    assert (node["sampler_name"], node["scheduler"]) == comfy
    assert (exported["notes"] == []) if fragment is None else any(fragment in n for n in exported["notes"])


def test_what_the_payload_asks_that_the_graph_does_not_do():
    fields = payload(enable_hr=True, seed=-1, n_iter=2, batch_size=2,
                     alwayson_scripts={"Uncond Lab": {"args": [{"hr_mode": "own", "compare": True}]},
                                       "ADetailer": {"args": []}})
    fields["override_settings"]["sd_vae_overrides_per_model_preferences"] = True
    notes = " | ".join(export_payload(fields)["notes"])
    for fragment in ("the hires pass (hires fix) is not exported", "Uncond Lab's own hires uncond settings neither",
                     "seed -1 (random in the WebUI) exported as 0", "n_iter 2", "a batch: A1111 seeds image i",
                     "other scripts (ADetailer)", "Compare zero vs null is WebUI-only",
                     "override_settings sd_vae_overrides_per_model_preferences are not exported",
                     "the WebUI did not sample as ComfyUI does"):
        assert fragment in notes, fragment
    bare = export_payload({"prompt": "x"})
    assert bare["notes"][0] == ("not in the payload, A1111's API defaults used: steps, cfg_scale, width, height, "
                                "seed, sampler_name")
    assert any("no sd_model_checkpoint" in n for n in bare["notes"])
    with pytest.raises(ValueError, match="'zero_weight' must be a number"):
        export_payload(payload({"zero_weight": 3}))


INFOTEXT = """a lighthouse at dusk, (film grain:1.1)
second line <lora:grain:0.6>
Negative prompt: blurry,
lowres
Steps: 24, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 832x1216, Model hash: 0123456789, \
Model: base+tuned ws0.3, Clip skip: 2, RNG: CPU, SGM noise multiplier: True, Uncond zero weight: 1.0, \
Uncond start: 0.0, Uncond end: 0.3, RF shift: 2.5, Merge model A: base.safetensors [0123456789], \
Merge model B: tuned.safetensors [abcdef0123], Merge method: Weighted sum, Merge ratio: 0.3, Merge TE ratio: 0.0, \
Merge blocks: "input=0.3, middle=1, out=0.7", ComfyUI sampling: True, Version: v1.10.1"""


def test_a1111_infotext():
    params = parse_infotext(INFOTEXT)
    assert params["Prompt"] == "a lighthouse at dusk, (film grain:1.1)\nsecond line <lora:grain:0.6>"
    assert params["Negative prompt"] == "blurry,\nlowres"
    assert (params["Size-1"], params["Size-2"], params["Merge blocks"]) == ("832", "1216",
                                                                           "input=0.3, middle=1, out=0.7")
    exported = export_infotext(INFOTEXT)
    prompt = exported["prompt"]
    check_workflow(exported["workflow"], prompt)
    sampler = nodes_of(prompt, "KSampler")[0]["inputs"]
    assert (sampler["sampler_name"], sampler["scheduler"], sampler["seed"]) == ("dpmpp_2m", "karras", 1234)
    assert nodes_of(prompt, "CheckpointLoaderSimple")[0]["inputs"]["ckpt_name"] == "base.safetensors"  # model A
    assert nodes_of(prompt, "ModelMergeBlocks")[0]["inputs"]["out"] == 0.7
    assert not nodes_of(prompt, "CLIPMergeSimple")  # Merge TE ratio 0
    assert nodes_of(prompt, "ModelSamplingSD3")[0]["inputs"]["shift"] == 2.5
    assert nodes_of(prompt, "CLIPSetLastLayer") and nodes_of(prompt, "LoraLoader")
    assert negative_of(prompt)["class_type"] == "ConditioningCombine"  # the [0, 0.3] window
    assert any("prompt weights" in n for n in exported["notes"])
    # SGM noise multiplier: True in an RF infotext would be refused by Uncond Lab, but it is only read here
    assert parse_infotext("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}


def test_bad_infotext_values_are_noted():
    exported = export_infotext("x\nSteps: many, Sampler: Euler, Seed: 3, Uncond zero weight: 7")
    assert any("infotext Steps 'many' is not a number" in n for n in exported["notes"])
    assert Settings.infotext_to_ui({"Uncond zero weight": "7"}).get("zero_weight") is None  # skipped, as pasting
