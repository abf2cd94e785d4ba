"""The round trip (lib_ext/comfy): import_graph(export_payload(x)) == x for a payload in import_graph's form, for
every case Uncond Lab maps (null, zero, blend, windows, RF, merges, block merges, LoRA, CLIP skip, VAE), through the
API prompt, the UI workflow and a PNG holding both; and export(import(graph)) keeps a ComfyUI graph's meaning."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from lib_ext.comfy import export_payload, import_graph, load_graph
from lib_ext.comfy.conditioning import read_pieces, uncond_of
from lib_ext.comfy.nodes import SD1_MERGE_ARGUMENTS, SDXL_MERGE_ARGUMENTS
from lib_ext.settings import Settings

FIXTURES = Path(__file__).parent / "comfy_graphs"
MATCH = {"randn_source": "CPU", "sgm_noise_multiplier": True, "enable_quantization": True}


def payload(settings: dict | None = None, prompt: str = "a lighthouse at dusk", negative: str = "",
            **override) -> dict:
    """A txt2img payload as import_graph writes it."""
    values = {"enabled": True, "zero_weight": 0.0, "rf": False, "comfy_sampling": True, **(settings or {})}
    sampling = {"randn_source": "CPU", "sgm_noise_multiplier": False} if values["rf"] else MATCH
    return {"prompt": prompt, "negative_prompt": negative, "seed": 1234, "steps": 24, "cfg_scale": 6.5,
            "sampler_name": "DPM++ 2M", "scheduler": "Karras", "width": 1024, "height": 1024, "batch_size": 1,
            "n_iter": 1,
            "override_settings": {"sd_model_checkpoint": "base.safetensors", "sd_vae": "None",
                                  "CLIP_stop_at_last_layers": 1, **override, **sampling},
            "override_settings_restore_afterwards": True,
            "alwayson_scripts": {"Uncond Lab": {"args": [Settings.from_dict(values).as_dict()]}}}


MERGE = {"merge_model": "tuned.safetensors"}
VAE = {"sd_vae": "sdxl_vae.safetensors"}  # a VAE file: the WebUI does not merge it (ComfyUI never does)
SDXL_NODE = ", ".join(f"{name}={0.5 if 'middle' in name else round(0.02 + i / 30, 4)}"
                      for i, name in enumerate(SDXL_MERGE_ARGUMENTS))  # ModelMergeSDXL's own order and spelling
SD1_NODE = ", ".join(f"{name.rstrip('.') if name[-2].isdigit() else name}={0.5 if 'middle' in name else i / 40}"
                     for i, name in enumerate(SD1_MERGE_ARGUMENTS))

CASES = {
    "null": payload({"zero_weight": 0.0}),
    "zero": payload({"zero_weight": 1.0}),
    "blend": payload({"zero_weight": 0.35}),
    "blend of a negative": payload({"zero_weight": 0.7}, negative="blurry, lowres"),
    "window at the start": payload({"zero_weight": 1.0, "end": 0.3}),
    "window in the middle": payload({"zero_weight": 0.5, "start": 0.2, "end": 0.6}, negative="blurry"),
    "window at the end": payload({"zero_weight": 0.25, "start": 0.7}),
    "rf": payload({"rf": True, "shift": 2.5}),
    "rf auraflow": payload({"rf": True, "shift": 1.73, "multiplier": 1.0}),
    "merge": payload({**MERGE, "merge_ratio": 0.3, "merge_te_ratio": 0.4}, **VAE),
    "merge, A's text encoders": payload({**MERGE, "merge_ratio": 0.3, "merge_te_ratio": 0.0}, **VAE),
    "text encoders only": payload({**MERGE, "merge_ratio": 0.0, "merge_te_ratio": 0.6}),
    "ModelMergeBlocks": payload({**MERGE, "merge_ratio": 0.0, "merge_te_ratio": 0.0,
                                 "merge_blocks": "input=0.3, middle=1, out=0.7"}),
    "ModelMergeSDXL": payload({**MERGE, "merge_ratio": 0.0, "merge_te_ratio": 0.25, "merge_blocks": SDXL_NODE}),
    "ModelMergeSD1": payload({**MERGE, "merge_ratio": 0.0, "merge_te_ratio": 0.0, "merge_blocks": SD1_NODE}),
    "lora": payload(prompt="a lighthouse <lora:film-grain:0.8>"),
    "loras, te and unet apart": payload(prompt="a lighthouse <lora:a:0.5:1.2> <lora:b:0:0.7> <lora:c:1>"),
    "clip skip": payload(CLIP_stop_at_last_layers=2),
    "vae file": payload(**VAE),
    "everything": payload({"zero_weight": 0.6, "start": 0.1, "end": 0.9, "rf": True, "shift": 3.0, **MERGE,
                           "merge_ratio": 0.45, "merge_te_ratio": 0.2}, prompt="a boat <lora:x:0.6>",
                          negative="ugly", CLIP_stop_at_last_layers=2, **VAE),
}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def comfy_png(prompt: dict, workflow: dict) -> bytes:
    """What ComfyUI's SaveImage writes: "prompt" and "workflow" as JSON tEXt chunks."""
    texts = b"".join(chunk(b"tEXt", key.encode() + b"\0" + json.dumps(value).encode("latin-1"))
                     for key, value in (("prompt", prompt), ("workflow", workflow)))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + texts + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case", CASES)
def test_import_of_export_is_the_payload(case):
    """Contract: every Uncond Lab setup ComfyUI can express comes back exactly, with nothing unsupported, from the
    API prompt, from the UI workflow (as the frontend would turn it into a prompt) and from a ComfyUI PNG."""
    original = CASES[case]
    exported = export_payload(original)
    for form in (exported["prompt"], exported["workflow"], comfy_png(exported["prompt"], exported["workflow"])):
        result = import_graph(form)
        assert result["unsupported"] == []
        assert result["txt2img"] == original


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_export_of_import_keeps_a_graphs_meaning(name):
    """A ComfyUI graph, imported, exported and imported again, gives the same payload, and its negative the same
    uncond (w, window and text) as the original graph's."""
    graph = json.loads((FIXTURES / name).read_text())
    first = import_graph(graph)
    exported = export_payload(first["txt2img"])
    again = import_graph(exported["prompt"])
    assert again["txt2img"] == first["txt2img"] and again["unsupported"] == first["unsupported"]

    def negative_uncond(source):
        loaded = load_graph(source)
        sampler = loaded.nodes_of("KSampler", "KSamplerAdvanced")[0]
        return uncond_of(read_pieces(loaded, loaded.link(sampler, "negative")[0], []))

    assert negative_uncond(exported["prompt"]) == negative_uncond(graph)
