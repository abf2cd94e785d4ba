"""ComfyUI import/export through a real WebUI: the routes, PNG Info of a ComfyUI PNG, and the option that writes
ComfyUI's graph into the WebUI's PNGs. (Pictures against real ComfyUI: tests/comfy/.)"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from tests.webui.client import ApiError
from tests.webui.conftest import SD15

GRAPHS = Path(__file__).resolve().parents[1] / "comfy_graphs"
SETTINGS = {"enabled": True, "zero_weight": 0.4, "start": 0.0, "end": 0.6, "comfy_sampling": True}


def payload(webui, settings: dict = SETTINGS) -> dict:
    title = next(t for t in webui.checkpoint_titles() if t.startswith(SD15 + "."))
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 1234, "steps": 4, "width": 64,
            "height": 64, "cfg_scale": 7.0, "sampler_name": "Euler", "scheduler": "Automatic",
            "override_settings": {"sd_model_checkpoint": title},
            "alwayson_scripts": {"Uncond Lab": {"args": [settings]}}}


def comfy_png(graph: dict) -> bytes:
    """A PNG as ComfyUI's SaveImage writes it: the picture plus "prompt" (and "workflow") text chunks."""
    from PIL import Image, PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_export_then_import_gives_the_settings_and_the_picture_back(sd15):
    original = payload(sd15)
    graphs = sd15.post("/uncond-lab/v1/comfy/export", original)
    assert {"prompt", "workflow", "notes"} <= set(graphs)
    types = {node["class_type"] for node in graphs["prompt"].values()}
    assert {"KSampler", "ConditioningZeroOut", "ConditioningSetTimestepRange"} <= types
    imported = sd15.post("/uncond-lab/v1/comfy/import", {"prompt": graphs["prompt"]})
    args = imported["txt2img"]["alwayson_scripts"]["Uncond Lab"]["args"][0]
    assert (args["zero_weight"], args["start"], args["end"], args["comfy_sampling"]) == (0.4, 0.0, 0.6, True)
    # Nothing lost but, on Forge Neo, the quantization switch it does not have.
    assert all("not an option of this WebUI" in item for item in imported["unsupported"]), imported["unsupported"]
    assert "Uncond zero weight: 0.4" in imported["infotext"] and "ComfyUI sampling: True" in imported["infotext"]
    again = sd15.post("/uncond-lab/v1/comfy/import", {"workflow": graphs["workflow"]})
    assert again["txt2img"] == imported["txt2img"]  # the UI graph reads as the API graph
    from_webui = sd15.txt2img(**{k: v for k, v in original.items() if k != "alwayson_scripts"},
                              scripts=original["alwayson_scripts"])
    from_import = sd15.txt2img(**{k: v for k, v in imported["txt2img"].items() if k != "alwayson_scripts"},
                               scripts=imported["txt2img"]["alwayson_scripts"])
    assert from_import.pixels == from_webui.pixels
    assert "ComfyUI sampling: True" in from_webui.infotexts[0] and "RNG: CPU" in from_webui.infotexts[0]


def test_comfy_sampling_is_this_generation_only(sd15):
    options = sd15.get("/sdapi/v1/options")
    before = {key: options[key] for key in ("randn_source", "sgm_noise_multiplier", "enable_quantization")
              if key in options}  # Forge Neo has no enable_quantization
    matched = sd15.txt2img({"comfy_sampling": True})
    assert "ComfyUI sampling: True" in matched.infotexts[0]
    assert {key: sd15.get("/sdapi/v1/options")[key] for key in before} == before
    assert matched.pixels != sd15.txt2img().pixels  # CPU noise, quantized timesteps, SGM noise scaling
    assert sd15.txt2img().pixels == sd15.fresh[SD15]


def test_export_from_an_infotext(sd15):
    text = sd15.txt2img(SETTINGS).infotexts[0]
    graphs = sd15.post("/uncond-lab/v1/comfy/export", {"infotext": text})
    imported = sd15.post("/uncond-lab/v1/comfy/import", {"prompt": graphs["prompt"]})
    assert imported["txt2img"]["alwayson_scripts"]["Uncond Lab"]["args"][0]["zero_weight"] == 0.4


@pytest.mark.parametrize("body, fragment", [
    ({}, "base64 PNG"),
    ({"png": "not base64!"}, "'png' is not base64"),
    ({"prompt": {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "x"}}}}, "sampler"),
    ({"prompt": "a string"}, "is a string that is not JSON"),
])
def test_import_refuses_what_is_not_a_graph_with_422(sd15, body, fragment):
    with pytest.raises(ApiError) as error:
        sd15.post("/uncond-lab/v1/comfy/import", body)
    assert error.value.status == 422 and fragment in error.value.body, error.value.body


def test_png_info_of_a_comfyui_png_reads_as_webui_parameters(sd15):
    graph = json.loads((GRAPHS / "uncond_window.json").read_text())
    graph = graph.get("prompt", graph)
    info = sd15.post("/sdapi/v1/png-info", {"image": base64.b64encode(comfy_png(graph)).decode()})
    assert "Uncond zero weight: 1.0" in info["info"] and "Uncond end: 0.3" in info["info"]
    assert info["parameters"]["Uncond end"] == "0.3" and info["parameters"]["Steps"] == "24"


def test_the_option_writes_comfyuis_graph_into_saved_pngs(sd15):
    if getattr(sd15, "log_path", None) is None:
        pytest.skip("needs the WebUI started by the tests (its throw-away data dir)")
    from PIL import Image
    outputs = sd15.log_path.parent / ("output" if sd15.kind == "forge_neo" else "outputs")  # the WebUI's own
    sd15.post("/sdapi/v1/options", {"uncond_lab_comfy_png_chunks": True})
    try:
        before = set(outputs.rglob("*.png"))
        sd15.txt2img(SETTINGS, save_images=True)
        [saved] = set(outputs.rglob("*.png")) - before
        chunks = Image.open(saved).info
        assert "parameters" in chunks and {"prompt", "workflow"} <= set(chunks)
        imported = sd15.post("/uncond-lab/v1/comfy/import", {"prompt": json.loads(chunks["prompt"])})
        assert imported["txt2img"]["alwayson_scripts"]["Uncond Lab"]["args"][0]["end"] == 0.6
    finally:
        sd15.post("/sdapi/v1/options", {"uncond_lab_comfy_png_chunks": False})  # the default
