"""The same checkpoint, seed and settings on A1111 and on reForge: how far apart are the pictures?

Each run stores its pictures under `UNCOND_LAB_CROSS_HOST_DIR/<webui kind>/` (skipped when that is unset); once a
run of the other WebUI left its pictures there, the test compares them, writes `table.md` beside them and checks
that no Uncond Lab setting moves the two WebUIs further apart than their plain pictures already are (a larger
difference would be a finding to explain, or a bug). Run it once per WebUI with the same folder:

    UNCOND_LAB_CROSS_HOST_DIR=/tmp/cross WEBUI_DIR=... python -m pytest tests/webui/test_cross_host_e2e.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.webui.client import max_pixel_difference
from tests.webui.conftest import SD15, SDXL

CASES = {  # name -> (Uncond Lab settings, other parameters)
    "plain": (None, {}),
    "zero": ({"enabled": True, "zero_weight": 1.0}, {}),
    "null": ({"enabled": True, "zero_weight": 0.0}, {}),
    "rf": ({"enabled": True, "rf": True, "shift": 3.0}, {"scheduler": "Rectified Flow"}),
}
MODELS = {"sd15": SD15, "sdxl": SDXL}
HOSTS = ("a1111", "reforge")


def folder() -> Path:
    path = os.environ.get("UNCOND_LAB_CROSS_HOST_DIR")
    if not path:
        pytest.skip("set UNCOND_LAB_CROSS_HOST_DIR to a folder shared by one run on each WebUI")
    return Path(path)


def write_table(root: Path) -> dict:
    """{(model, case): largest pixel difference} over the pictures both WebUIs left, also as table.md."""
    differences = {}
    for model in MODELS:
        for case in CASES:
            pictures = [root / host / f"{model}-{case}.png" for host in HOSTS]
            if all(p.exists() for p in pictures):
                differences[(model, case)] = max_pixel_difference(*(p.read_bytes() for p in pictures))
    lines = ["| model | " + " | ".join(CASES) + " |", "|---|" + "---|" * len(CASES)]
    for model in MODELS:
        row = [str(differences.get((model, case), "")) for case in CASES]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    (root / "table.md").write_text("\n".join(lines) + "\n")
    (root / "table.json").write_text(json.dumps({f"{m}/{c}": d for (m, c), d in differences.items()}, indent=1))
    return differences


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pictures_across_webuis(webui, model):
    root = folder()
    webui.use_checkpoint(MODELS[model])
    mine = root / webui.kind
    mine.mkdir(parents=True, exist_ok=True)
    for case, (settings, params) in CASES.items():
        generation = webui.txt2img(settings, **params)
        assert len(generation.images) == 1
        (mine / f"{model}-{case}.png").write_bytes(generation.images[0])
    differences = write_table(root)
    if (model, "plain") not in differences:
        pytest.skip(f"no pictures of the other WebUI in {root} yet: run this test on it with the same folder")
    plain = differences[(model, "plain")]
    for case in CASES:
        assert differences[(model, case)] <= max(plain, 1), (case, differences)
