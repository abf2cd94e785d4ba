"""Import (lib_ext/comfy/to_webui.py): ComfyUI graphs → an A1111 txt2img payload with Uncond Lab's settings, on
ComfyUI's own graphs, hand-built workflows for each uncond of README's "ComfyUI equivalents" table, and graphs
with no exact equivalent, which must be named in "unsupported", never approximated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_ext.comfy import import_graph
from lib_ext.merge.blocks import BlockLayout, parse_blocks
from lib_ext.settings import Settings

FIXTURES = Path(__file__).parent / "comfy_graphs"
MATCH = {"randn_source": "CPU", "sgm_noise_multiplier": True, "enable_quantization": True}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def uncond_lab(payload: dict) -> dict:
    return payload["alwayson_scripts"]["Uncond Lab"]["args"][0]


def node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


def sd15(**nodes: dict) -> dict:
    """ComfyUI's basic API example (3 KSampler, 4 checkpoint, 5 latent, 6 positive, 7 negative "bad hands",
    8 VAEDecode, 9 SaveImage) with nodes added or replaced (ids as "n10" → "10")."""
    prompt = fixture("basic_api_example.json")
    prompt.update({key.lstrip("n"): value for key, value in nodes.items()})
    return prompt


def with_negative(source: str, **nodes: dict) -> dict:
    prompt = sd15(**nodes)
    prompt["3"]["inputs"]["negative"] = [source, 0]
    return prompt


def imported(prompt: dict) -> tuple[dict, dict, list[str]]:
    result = import_graph(prompt)
    return result["txt2img"], uncond_lab(result["txt2img"]), result["unsupported"]


# --- ComfyUI's own graphs -------------------------------------------------------------------------------------

def test_comfyuis_default_sdxl_graph():
    """tests/inference/graphs/default_graph_sdxl1_0.json: base with a ZeroOut negative; its refiner pass starts at
    step 32 of 20, so it returns the latent untouched and the import is the base pass alone."""
    result = import_graph(fixture("default_graph_sdxl1_0.json"))
    assert result["unsupported"] == []
    settings = Settings.from_dict({"enabled": True, "zero_weight": 1.0, "start": 0.0, "end": 1.0, "rf": False,
                                   "comfy_sampling": True}).as_dict()
    assert result["txt2img"] == {
        "prompt": "a photo of a cat", "negative_prompt": "a photo of a cat", "seed": 42, "steps": 20,
        "cfg_scale": 7.5, "sampler_name": "Euler", "scheduler": "Normal", "width": 1024, "height": 1024,
        "batch_size": 1, "n_iter": 1,
        "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors", "sd_vae": "None",
                              "CLIP_stop_at_last_layers": 1, **MATCH},
        "override_settings_restore_afterwards": True,
        "alwayson_scripts": {"Uncond Lab": {"args": [settings]}}}


def test_comfyuis_basic_api_example_and_the_frontends_default_workflow():
    payload, settings, unsupported = imported(fixture("basic_api_example.json"))
    assert unsupported == []
    assert (payload["prompt"], payload["negative_prompt"], payload["seed"], payload["cfg_scale"]) == (
        "masterpiece best quality girl", "bad hands", 8566257, 8.0)
    assert (settings["enabled"], settings["zero_weight"]) == (True, 0.0)  # ComfyUI's uncond: te(negative)
    assert payload["override_settings"]["sd_model_checkpoint"] == "v1-5-pruned-emaonly.safetensors"
    payload, settings, unsupported = imported(fixture("default_workflow.json"))
    assert unsupported == [] and payload["negative_prompt"] == "text, watermark" and payload["seed"] == 156680208700286
    assert (payload["width"], payload["height"], payload["steps"]) == (512, 512, 20)


# --- README's "ComfyUI equivalents", as workflows -------------------------------------------------------------

@pytest.mark.parametrize("name, weight, start, end", [
    ("uncond_null.json", 0.0, 0.0, 1.0),     # CLIPTextEncode("")
    ("uncond_zero.json", 1.0, 0.0, 1.0),     # ConditioningZeroOut(CLIPTextEncode(""))
    ("uncond_blend.json", 0.35, 0.0, 1.0),   # ConditioningAverage(zero, text, 0.35)
    ("uncond_window.json", 1.0, 0.0, 0.3),   # ZeroOut on [0, 0.3] combined with the text on [0.3, 1]
])
def test_the_readme_table(name, weight, start, end):
    payload, settings, unsupported = imported(fixture(name))
    assert unsupported == []
    assert (settings["enabled"], settings["zero_weight"], settings["start"], settings["end"]) == (
        True, weight, start, end)
    assert payload["negative_prompt"] == "" and payload["prompt"] == "a lighthouse at dusk"
    assert (payload["sampler_name"], payload["scheduler"], payload["cfg_scale"]) == ("DPM++ 2M", "Karras", 6.5)


def test_merge_lora_rf_clip_skip_and_vae():
    payload, settings, unsupported = imported(fixture("merge_lora_rf_clipskip.json"))
    assert unsupported == []
    assert payload["prompt"] == "a lighthouse at dusk, film grain <lora:film-grain:0.5:0.8>"  # te 0.5, UNet 0.8
    assert payload["override_settings"] == {"sd_model_checkpoint": "base.safetensors",
                                            "sd_vae": "sdxl_vae.safetensors", "CLIP_stop_at_last_layers": 2,
                                            "randn_source": "CPU", "sgm_noise_multiplier": False}
    assert (settings["rf"], settings["shift"], settings["multiplier"]) == (True, 2.5, 1000.0)
    # ModelMergeSimple ratio 0.7 and CLIPMergeSimple 0.6 are model 1's shares
    assert (settings["merge_model"], settings["merge_ratio"], settings["merge_te_ratio"]) == ("tuned.safetensors",
                                                                                            0.3, 0.4)
    assert (settings["zero_weight"], payload["negative_prompt"], payload["seed"]) == (0.5, "blurry", 987654321)


# --- the negative: exact equivalents and refusals -------------------------------------------------------------

ZERO = node("ConditioningZeroOut", conditioning=["7", 0])


def test_an_average_with_the_text_first_and_the_zero_second():
    """ConditioningAverage(to=text, from=zero, s) = s·text + (1 − s)·zero: w = 1 − s; a zero's own text does not
    matter when it is cut or padded (zeros stay zeros)."""
    _, settings, unsupported = imported(with_negative(
        "11", n10=node("ConditioningZeroOut", conditioning=["12", 0]),
        n12=node("CLIPTextEncode", text="", clip=["4", 1]),
        n11=node("ConditioningAverage", conditioning_to=["7", 0], conditioning_from=["10", 0],
                 conditioning_to_strength=0.75)))
    assert unsupported == [] and settings["zero_weight"] == 0.25


def test_a_window_in_the_middle_in_three_pieces():
    pieces = dict(n10=ZERO, n11=node("ConditioningAverage", conditioning_to=["10", 0], conditioning_from=["7", 0],
                                     conditioning_to_strength=0.6),
                  n12=node("ConditioningSetTimestepRange", conditioning=["7", 0], start=0.0, end=0.2),
                  n13=node("ConditioningSetTimestepRange", conditioning=["11", 0], start=0.2, end=0.7),
                  n14=node("ConditioningSetTimestepRange", conditioning=["7", 0], start=0.7, end=1.0),
                  n15=node("ConditioningCombine", conditioning_1=["13", 0], conditioning_2=["12", 0]),
                  n16=node("ConditioningCombine", conditioning_1=["14", 0], conditioning_2=["15", 0]))
    payload, settings, unsupported = imported(with_negative("16", **pieces))
    assert unsupported == []
    assert (settings["zero_weight"], settings["start"], settings["end"]) == (0.6, 0.2, 0.7)
    assert payload["negative_prompt"] == "bad hands"


RANGE = "ConditioningSetTimestepRange"


@pytest.mark.parametrize("negative, nodes, fragment", [
    ("12", dict(n10=ZERO, n11=node(RANGE, conditioning=["10", 0], start=0.0, end=0.5),
                n13=node(RANGE, conditioning=["7", 0], start=0.3, end=1.0),
                n12=node("ConditioningCombine", conditioning_1=["11", 0], conditioning_2=["13", 0])),
     "overlap or leave steps uncovered"),
    ("11", dict(n10=ZERO, n11=node(RANGE, conditioning=["10", 0], start=0.0, end=0.5)), "[0, 0.5] overlap or leave"),
    ("15", dict(n10=ZERO, n11=node(RANGE, conditioning=["10", 0], start=0.0, end=0.3),
                n12=node("ConditioningAverage", conditioning_to=["10", 0], conditioning_from=["7", 0],
                         conditioning_to_strength=0.5),
                n13=node(RANGE, conditioning=["12", 0], start=0.3, end=0.6),
                n14=node(RANGE, conditioning=["7", 0], start=0.6, end=1.0),
                n16=node("ConditioningCombine", conditioning_1=["11", 0], conditioning_2=["13", 0]),
                n15=node("ConditioningCombine", conditioning_1=["16", 0], conditioning_2=["14", 0])),
     "changes more than once over the steps (1 on [0, 0.3], 0.5 on [0.3, 0.6])"),
    ("12", dict(n10=node("CLIPTextEncode", text="ugly", clip=["4", 1]),
                n11=node(RANGE, conditioning=["7", 0], start=0.0, end=0.5),
                n13=node(RANGE, conditioning=["10", 0], start=0.5, end=1.0),
                n12=node("ConditioningCombine", conditioning_1=["11", 0], conditioning_2=["13", 0])),
     "combines different texts"),
    ("11", dict(n10=node("ConditioningZeroOut", conditioning=["12", 0]),
                n12=node("CLIPTextEncode", text="", clip=["4", 1]),
                n11=node("ConditioningAverage", conditioning_to=["10", 0], conditioning_from=["7", 0],
                         conditioning_to_strength=0.5)),
     "cuts or pads that text to the zero's token length"),
    ("11", dict(n10=node("CLIPTextEncode", text="ugly", clip=["4", 1]),
                n11=node("ConditioningAverage", conditioning_to=["10", 0], conditioning_from=["7", 0],
                         conditioning_to_strength=0.5)),
     "averages two different texts"),
    ("10", dict(n10=node("ControlNetApply", conditioning=["7", 0], strength=1.0)),
     "#10 ControlNetApply in the conditioning has no Uncond Lab equivalent"),
    ("10", dict(n10=node(RANGE, conditioning=["7", 0], start=0.6, end=0.4)), "[0.6, 0.4] is empty"),
])
def test_negatives_without_an_exact_equivalent_are_named_not_approximated(negative, nodes, fragment):
    payload, settings, unsupported = imported(with_negative(negative, **nodes))
    assert (settings["enabled"], settings["zero_weight"]) == (False, None)  # the WebUI's own uncond, untouched
    assert any(line.startswith("negative: ") and fragment in line and "Uncond Lab left off" in line
               for line in unsupported), unsupported


def test_a_positive_that_is_not_one_text_is_named():
    prompt = sd15(n10=node("ConditioningZeroOut", conditioning=["6", 0]))
    prompt["3"]["inputs"]["positive"] = ["10", 0]
    payload, _, unsupported = imported(prompt)
    assert payload["prompt"] == "" and any(line.startswith("positive: the positive conditioning is not one")
                                           for line in unsupported)


# --- the model: merges, RF, LoRA, CLIP skip, VAE --------------------------------------------------------------

def merged(kind: str, *, clip_merge: float | None = None, vae_loader: bool = True, **arguments) -> dict:
    nodes = dict(n20=node("CheckpointLoaderSimple", ckpt_name="tuned.safetensors"),
                 n21=node(kind, model1=["4", 0], model2=["20", 0], **arguments))
    if vae_loader:
        nodes["n23"] = node("VAELoader", vae_name="vae.safetensors")
    prompt = sd15(**nodes)
    prompt["3"]["inputs"]["model"] = ["21", 0]
    if vae_loader:
        prompt["8"]["inputs"]["vae"] = ["23", 0]
    if clip_merge is not None:
        prompt["22"] = node("CLIPMergeSimple", clip1=["4", 1], clip2=["20", 1], ratio=clip_merge)
        for encoder in ("6", "7"):
            prompt[encoder]["inputs"]["clip"] = ["22", 0]
    return prompt


def test_plain_merges():
    _, settings, unsupported = imported(merged("ModelMergeSimple", ratio=0.75))
    assert unsupported == []
    # the text encoders stay model 1's without CLIPMergeSimple: te ratio 0, said explicitly
    assert (settings["merge_model"], settings["merge_ratio"], settings["merge_te_ratio"]) == ("tuned.safetensors",
                                                                                            0.25, 0.0)
    _, settings, _ = imported(merged("ModelMergeSimple", ratio=0.75, clip_merge=0.5))
    assert settings["merge_te_ratio"] == 0.5
    # only the text encoders merged: the UNet ratio 0
    prompt = merged("ModelMergeSimple", ratio=1.0, clip_merge=0.2)
    prompt["3"]["inputs"]["model"] = ["4", 0]
    _, settings, unsupported = imported(prompt)
    assert unsupported == [] and (settings["merge_ratio"], settings["merge_te_ratio"]) == (0.0, 0.8)


def test_the_vae_merge_is_named_when_the_checkpoints_vae_decodes():
    _, settings, unsupported = imported(merged("ModelMergeSimple", ratio=0.75, vae_loader=False))
    assert settings["merge_ratio"] == 0.25
    assert any(line.startswith("VAE: ComfyUI's merge leaves model 1's VAE") for line in unsupported)


def test_block_merges_keep_comfyuis_names_and_values():
    _, settings, unsupported = imported(merged("ModelMergeBlocks", vae_loader=False, input=0.3, middle=1.0, out=0.7))
    assert unsupported == []  # merge_ratio 0: the checkpoint's VAE stays A's, as in ComfyUI
    assert (settings["merge_blocks"], settings["merge_ratio"], settings["merge_te_ratio"]) == (
        "input=0.3, middle=1, out=0.7", 0.0, 0.0)
    sdxl = {"time_embed.": 0.1, "label_emb.": 0.2, **{f"input_blocks.{i}": 0.3 + i / 100 for i in range(9)},
            **{f"middle_block.{i}": 0.5 for i in range(3)}, **{f"output_blocks.{i}": 0.6 + i / 100 for i in range(9)},
            "out.": 0.9}
    _, settings, unsupported = imported(merged("ModelMergeSDXL", **sdxl))
    assert unsupported == []
    ratios = parse_blocks(settings["merge_blocks"]).slot_ratios(BlockLayout(9, 9, True), 0.0, 0.0)
    assert ratios["LABEL"] == 1.0 - 0.2 and ratios["OUT_FINAL"] == 1.0 - 0.9
    assert ratios["IN04"] == 1.0 - sdxl["input_blocks.4"] and ratios["M00"] == 0.5
    _, settings, unsupported = imported(merged("ModelMergeSDXL", **{**sdxl, "middle_block.1": 0.9}))
    assert settings["merge_model"] == "" and any("Uncond Lab has one middle slot" in line for line in unsupported)


@pytest.mark.parametrize("change, fragment", [
    (lambda p: p["21"]["inputs"].update(model1=["30", 0]) or p.update({"30": node(
        "LoraLoader", model=["4", 0], clip=["4", 1], lora_name="a.safetensors", strength_model=1.0,
        strength_clip=1.0)}),
     "#30 LoraLoader before the merge: ComfyUI scales it by the merge ratio"),
    (lambda p: p["21"]["inputs"].update(model2=["30", 0]) or p.update({"30": node(
        "LoraLoaderModelOnly", model=["20", 0], lora_name="a.safetensors", strength_model=1.0)}),
     "model2 does not come straight from a CheckpointLoaderSimple"),
    (lambda p: p["3"]["inputs"].update(model=["30", 0]) or p.update({"30": node(
        "ModelMergeSimple", model1=["21", 0], model2=["20", 0], ratio=0.5)}),
     "a second merge on the model's path"),
    (lambda p: p["3"]["inputs"].update(model=["30", 0]) or p.update({"30": node(
        "ModelSamplingDiscrete", model=["21", 0], sampling="v_prediction", zsnr=True)}),
     "(sampling v_prediction, zsnr True): Uncond Lab has no prediction-type switch"),
    (lambda p: p["3"]["inputs"].update(model=["30", 0]) or p.update({"30": node(
        "FreeU_V2", model=["21", 0], b1=1.3, b2=1.4, s1=0.9, s2=0.2)}),
     "#30 FreeU_V2 on the model's path has no Uncond Lab equivalent"),
    (lambda p: p["22"].update(inputs={**p["22"]["inputs"], "clip2": ["31", 1]}) or p.update(
        {"31": node("CheckpointLoaderSimple", ckpt_name="other.safetensors")}),
     "the UNet is merged with 'tuned.safetensors' and the text encoders with 'other.safetensors'"),
    (lambda p: p["6"]["inputs"].update(clip=["20", 1]), "set up differently"),
    (lambda p: [p[e]["inputs"].update(clip=["20", 1]) for e in ("6", "7")],
     "the text encoders come from 'tuned.safetensors', the UNet from 'v1-5-pruned-emaonly.safetensors'"),
    (lambda p: p["8"]["inputs"].update(vae=["20", 2]), "the VAE comes from #20 CheckpointLoaderSimple (tuned"),
])
def test_model_setups_without_an_equivalent_are_named(change, fragment):
    prompt = merged("ModelMergeSimple", ratio=0.75, clip_merge=0.5)
    change(prompt)
    unsupported = import_graph(prompt)["unsupported"]
    assert any(fragment in line for line in unsupported), unsupported


def test_rf_nodes_lora_only_and_clip_skip():
    prompt = sd15(n30=node("ModelSamplingAuraFlow", model=["31", 0], shift=1.73),
                  n31=node("LoraLoaderModelOnly", model=["4", 0], lora_name="sub\\dir\\detail.safetensors",
                           strength_model=0.7),
                  n32=node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-2))
    prompt["3"]["inputs"]["model"] = ["30", 0]
    for encoder in ("6", "7"):
        prompt[encoder]["inputs"]["clip"] = ["32", 0]
    payload, settings, unsupported = imported(prompt)
    assert unsupported == []
    assert (settings["rf"], settings["shift"], settings["multiplier"]) == (True, 1.73, 1.0)
    assert payload["prompt"].endswith(" <lora:detail:0:0.7>")  # no text-encoder part: te 0
    assert payload["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert "enable_quantization" not in payload["override_settings"]  # RF: the RNG only (lib_ext/comfy_sampling.py)
    prompt["30"]["inputs"]["shift"] = 0.0  # ComfyUI allows it, Uncond Lab's shift is in (0, 100]
    _, settings, unsupported = imported(prompt)
    assert settings["rf"] is None and any("'shift' must be a number in (0, 100]" in line for line in unsupported)


# --- sampling -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, scheduler, webui_sampler, webui_scheduler, fragment", [
    ("ddim", "ddim_uniform", "Euler", "DDIM", None),  # ComfyUI's ddim is euler
    ("dpm_2", "karras", "DPM2", "Karras", None),
    ("euler_ancestral", "sgm_uniform", "Euler a", "SGM Uniform", "same sampler, not the same pixels"),
    ("dpmpp_3m_sde_gpu", "exponential", "DPM++ 3M SDE", "Exponential", "also drops the next-to-last sigma"),
    ("res_multistep", "simple", None, "Simple", "sampler 'res_multistep' has no A1111 equivalent"),
    ("euler", "beta", "Euler", "Beta", "scheduler beta → Beta: A1111's Beta schedule is linear in sigma"),
    ("euler", "linear_quadratic", "Euler", None, "scheduler 'linear_quadratic' has no A1111 equivalent"),
])
def test_samplers_and_schedulers(sampler, scheduler, webui_sampler, webui_scheduler, fragment):
    prompt = sd15()
    prompt["3"]["inputs"].update(sampler_name=sampler, scheduler=scheduler)
    payload, _, unsupported = imported(prompt)
    assert (payload.get("sampler_name"), payload.get("scheduler")) == (webui_sampler, webui_scheduler)
    assert (unsupported == []) if fragment is None else any(fragment in line for line in unsupported)


def advanced(**inputs) -> dict:
    prompt = sd15()
    prompt["3"] = node("KSamplerAdvanced", add_noise="enable", noise_seed=7, steps=20, cfg=5.0, sampler_name="euler",
                       scheduler="normal", start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable",
                       model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0])
    prompt["3"]["inputs"].update(inputs)
    return prompt


@pytest.mark.parametrize("prompt, fragment", [
    (sd15(), None),
    (advanced(), None),
    (advanced(end_at_step=12), "steps 0 to 12 of 20 (a partial pass) imported as all steps"),
    (advanced(add_noise="disable"), "add_noise disabled has no txt2img equivalent"),
    (dict(sd15(), **{"3": node("KSampler", seed=1, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal",
                                denoise=0.6, model=["4", 0], positive=["6", 0], negative=["7", 0],
                                latent_image=["5", 0])}),
     "denoise 0.6 < 1 has no txt2img equivalent"),
    (dict(sd15(), **{"5": node("EmptyLatentImage", width=512, height=768, batch_size=4)}),
     "batch of 4: ComfyUI draws the batch's noise from one generator"),
    (dict(sd15(), **{"5": node("VAEEncode", pixels=["40", 0], vae=["4", 2]),
                     "40": node("LoadImage", image="x.png")}),
     "the latent comes from #5 VAEEncode: only an EmptyLatentImage (txt2img) is imported"),
    (dict(sd15(), **{"9": node("SaveImage", images=["41", 0], filename_prefix="x"),
                     "41": node("ImageScaleBy", image=["8", 0], upscale_method="lanczos", scale_by=2.0)}),
     "#41 ImageScaleBy after the VAE decode is not carried over"),
    (dict(sd15(), **{"3": dict(sd15()["3"], inputs=dict(sd15()["3"]["inputs"], seed=["42", 0])),
                     "42": node("Seed (rgthree)", seed=5)}),
     "#3 KSampler: 'seed' comes from a node Uncond Lab does not read"),
])
def test_sampler_passes(prompt, fragment):
    payload, _, unsupported = imported(prompt)
    assert (unsupported == []) if fragment is None else any(fragment in line for line in unsupported), unsupported


def test_two_passes_import_the_first_and_say_so():
    prompt = sd15(n10=node("LatentUpscaleBy", samples=["3", 0], upscale_method="nearest-exact", scale_by=1.5),
                  n11=node("KSampler", seed=2, steps=10, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=0.5,
                           model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["12", 0]),
                  n12=node("KSampler", seed=3, steps=10, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=0.5,
                           model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["3", 0]))
    prompt["8"]["inputs"]["samples"] = ["11", 0]
    payload, _, unsupported = imported(prompt)
    assert payload["seed"] == 8566257
    assert any(line.startswith("3 sampler passes (#3 KSampler, #12 KSampler, #11 KSampler): only the first, "
                               "#3 KSampler, is imported") for line in unsupported), unsupported


def test_prompt_weights_are_named():
    prompt = sd15()
    prompt["6"]["inputs"]["text"] = "a (red:1.2) boat"
    assert any("prompt weights" in line for line in import_graph(prompt)["unsupported"])


# --- hostile graphs: loops and depth end in a sentence, never a RecursionError or a hang ----------------------

def test_loops_and_deep_chains():
    loop = with_negative("10", n10=node("ConditioningCombine", conditioning_1=["11", 0], conditioning_2=["7", 0]),
                         n11=node("ConditioningZeroOut", conditioning=["10", 0]))
    assert any("loops back or is more than 100 nodes deep" in line for line in import_graph(loop)["unsupported"])
    deep = sd15(**{f"n{100 + i}": node("ConditioningZeroOut", conditioning=[str(99 + i) if i else "7", 0])
                   for i in range(5000)})
    deep["3"]["inputs"]["negative"] = ["5099", 0]
    assert any("more than 100 nodes deep" in line for line in import_graph(deep)["unsupported"])
    model_loop = sd15(n10=node("LoraLoader", model=["11", 0], clip=["4", 1], lora_name="a", strength_model=1,
                               strength_clip=1),
                      n11=node("LoraLoaderModelOnly", model=["10", 0], lora_name="b", strength_model=1))
    model_loop["3"]["inputs"]["model"] = ["11", 0]
    model_loop["6"]["inputs"]["clip"] = model_loop["7"]["inputs"]["clip"] = ["12", 0]
    model_loop["12"] = node("CLIPSetLastLayer", clip=["12", 0], stop_at_clip_layer=-2)
    unsupported = import_graph(model_loop)["unsupported"]
    assert any("the model's path loops back" in line for line in unsupported)
    assert any("#12 CLIPSetLastLayer: the text encoders' path loops back" in line for line in unsupported)


@pytest.mark.parametrize("clip_nodes, fragment", [
    (dict(n30=node("LoraLoader", model=["4", 0], clip=["4", 1], lora_name="a", strength_model=1, strength_clip=1),
          n31=node("CLIPMergeSimple", clip1=["30", 1], clip2=["20", 1], ratio=0.5),
          n20=node("CheckpointLoaderSimple", ckpt_name="tuned.safetensors")),
     "#30 LoraLoader before the CLIP merge (ComfyUI scales it by the merge ratio)"),
    (dict(n30=node("CLIPMergeSimple", clip1=["4", 1], clip2=["20", 1], ratio=0.5),
          n31=node("CLIPMergeSimple", clip1=["30", 0], clip2=["20", 1], ratio=0.5),
          n20=node("CheckpointLoaderSimple", ckpt_name="tuned.safetensors")),
     "#30 CLIPMergeSimple a second CLIP merge"),
    (dict(n31=node("CLIPMergeSimple", clip1=["4", 1], clip2=["32", 0], ratio=0.5),
          n32=node("CLIPLoader", clip_name="t5.safetensors", type="sd3")),
     "#31 CLIPMergeSimple: clip2 does not come straight from a CheckpointLoaderSimple"),
    (dict(n31=node("CLIPTextEncodeHook", clip=["4", 1])), "#31 CLIPTextEncodeHook on the text encoders' path"),
])
def test_text_encoder_paths_without_an_equivalent(clip_nodes, fragment):
    prompt = sd15(**clip_nodes)
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["31", 0]
    assert any(fragment in line for line in import_graph(prompt)["unsupported"])


def test_a_hires_pass_imports_the_first_pass():
    """KSampler → LatentUpscaleBy → KSampler (denoise 0.5), as ComfyUI's hires-fix examples build it."""
    prompt = sd15(n10=node("LatentUpscaleBy", samples=["3", 0], upscale_method="nearest-exact", scale_by=1.5),
                  n11=node("KSampler", seed=2, steps=10, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=0.5,
                           model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["10", 0]))
    prompt["8"]["inputs"]["samples"] = ["11", 0]
    payload, _, unsupported = imported(prompt)
    assert (payload["seed"], payload["steps"], payload["width"]) == (8566257, 20, 512)
    assert unsupported == ["2 sampler passes (#3 KSampler, #11 KSampler): only the first, #3 KSampler, is imported "
                           "(a refiner or second pass has no exact txt2img equivalent)"]


def test_a_latent_size_from_another_node_is_named():
    prompt = sd15(n40=node("PrimitiveInt", value=640), n41=node("SomeMathNode", a=1))
    prompt["5"]["inputs"].update(width=["40", 0], height=["41", 0])
    payload, _, unsupported = imported(prompt)
    assert payload["width"] == 640 and "height" not in payload
    assert unsupported == ["#5 EmptyLatentImage: 'height' comes from a node Uncond Lab does not read; left to the "
                           "WebUI"]
