"""A ComfyUI graph's import as an A1111 infotext (PNG Info of a ComfyUI PNG): pasting it gives the same settings."""
import json
from pathlib import Path

import pytest

from lib_ext.comfy import import_graph, infotext_to_payload, payload_to_infotext

GRAPHS = sorted((Path(__file__).parent / "comfy_graphs").glob("*.json"))
CORE = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "scheduler", "width", "height",
        "alwayson_scripts")


@pytest.mark.parametrize("path", GRAPHS, ids=lambda path: path.stem)
def test_the_infotext_of_an_import_pastes_back_to_it(path):
    payload = import_graph(json.loads(path.read_text()))["txt2img"]
    back, notes = infotext_to_payload(payload_to_infotext(payload, model_hash="0123456789"))
    assert notes == []
    assert {key: back[key] for key in CORE} == {key: payload[key] for key in CORE}
    for key in ("CLIP_stop_at_last_layers", "randn_source", "sgm_noise_multiplier"):
        assert back["override_settings"][key] == payload["override_settings"][key]


def test_infotext_fields_are_quoted_where_a1111_would_and_carry_the_hash():
    payload = import_graph(json.loads((Path(__file__).parent / "comfy_graphs" / "uncond_window.json").read_text()))
    text = payload_to_infotext(payload["txt2img"], model_hash="0123456789")
    assert "Model hash: 0123456789, Model: sd_xl_base_1.0" in text
    assert "Uncond zero weight: 1.0, Uncond start: 0.0, Uncond end: 0.3" in text
    quoted = payload_to_infotext({**payload["txt2img"], "sampler_name": "Euler, odd: name"})
    assert 'Sampler: "Euler, odd: name"' in quoted
