"""The same checkpoint, seed and settings on A1111, reForge and Forge Neo: how far apart are the pictures?

Each run stores its pictures under `UNCOND_LAB_CROSS_HOST_DIR/<webui kind>/` (skipped when that is unset); once a
run of A1111 and one of another WebUI left their pictures there, the test compares them, writes `table.md` beside
them and checks that no Uncond Lab setting moves a WebUI further from A1111 than their plain pictures already are
(a larger difference would be a finding to explain, or a bug). Run it once per WebUI with the same folder:

    UNCOND_LAB_CROSS_HOST_DIR=/tmp/cross WEBUI_DIR=... python -m pytest tests/webui/test_cross_host_e2e.py

Forge Neo feeds SDXL te("") for an empty negative unless its `sdxl_zero_neg` option is on, so on Neo every case
runs with that option on (the WebUI default of the other two), and the case `neo-default` (the option off) is
compared with A1111's `null`. `merge1` is A merged with B at ratio 1 (text encoders following), compared across
WebUIs and, on each WebUI, with B loaded alone (`b`): the "merge 1 vs B" column. Every picture is made with CLIP
skip 1 (A1111's default; Neo's is 2).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from tests.webui.client import max_pixel_difference
from tests.webui.conftest import SD15, SDXL, sdxl_model
from tests.webui.test_merge_e2e import title_of

MERGE_PARTNER = {"sd15": "uncondlab-tiny-sd15-b", "sdxl": sdxl_model("b")}
CASES = {  # name -> (Uncond Lab settings, other parameters); "{b}" is the merge partner's title
    "plain": (None, {}),
    "zero": ({"enabled": True, "zero_weight": 1.0}, {}),
    "null": ({"enabled": True, "zero_weight": 0.0}, {}),
    "rf": ({"enabled": True, "rf": True, "shift": 3.0}, {"scheduler": "Rectified Flow"}),
    "merge1": ({"merge_model": "{b}", "merge_ratio": 1.0}, {}),
}
NEO_DEFAULT = "neo-default"  # Neo with sdxl_zero_neg off: te("") for the empty negative, as A1111's null
A1111_COUNTERPART = {NEO_DEFAULT: "null"}
MODELS = {"sd15": SD15, "sdxl": SDXL}
REFERENCE, OTHERS = "a1111", ("reforge", "forge_neo")
SAME_OPTIONS = {"override_settings": {"CLIP_stop_at_last_layers": 1}}  # Forge Neo's default CLIP skip is 2
COLUMNS = [*CASES, NEO_DEFAULT]


def folder() -> Path:
    path = os.environ.get("UNCOND_LAB_CROSS_HOST_DIR")
    if not path:
        pytest.skip("set UNCOND_LAB_CROSS_HOST_DIR to a folder shared by one run on each WebUI")
    return Path(path)


def write_table(root: Path) -> dict:
    """{(host, model, case): largest pixel difference from A1111's picture} over the pictures the runs left,
    and {(host, model, "merge1 vs b"): merge ratio 1 against B alone on that WebUI}; also as table.md."""
    differences = {}
    for model in MODELS:
        for host in OTHERS:
            for case in COLUMNS:
                mine = root / host / f"{model}-{case}.png"
                theirs = root / REFERENCE / f"{model}-{A1111_COUNTERPART.get(case, case)}.png"
                if mine.exists() and theirs.exists():
                    differences[(host, model, case)] = max_pixel_difference(mine.read_bytes(), theirs.read_bytes())
        for host in (REFERENCE, *OTHERS):
            merged, alone = root / host / f"{model}-merge1.png", root / host / f"{model}-b.png"
            if merged.exists() and alone.exists():
                differences[(host, model, "merge1 vs b")] = max_pixel_difference(merged.read_bytes(),
                                                                                  alone.read_bytes())
    columns = [*COLUMNS, "merge1 vs b"]
    lines = ["Largest pixel difference (0-255) from A1111's picture of the same case (`neo-default`: from A1111's "
             "`null`); `merge1 vs b`: on that WebUI itself.", "",
             "| WebUI | model | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for host in (REFERENCE, *OTHERS):
        for model in MODELS:
            row = [str(differences.get((host, model, case), "")) for case in columns]
            if any(row):
                lines.append(f"| {host} | {model} | " + " | ".join(row) + " |")
    (root / "table.md").write_text("\n".join(lines) + "\n")
    (root / "table.json").write_text(json.dumps({"/".join(k): d for k, d in differences.items()}, indent=1))
    return differences


@contextlib.contextmanager
def neo_zero_neg(webui, value: bool):
    """Forge Neo's `sdxl_zero_neg` set for the block (nothing on the other WebUIs)."""
    if webui.kind != "forge_neo":
        yield
        return
    before = webui.get("/sdapi/v1/options")["sdxl_zero_neg"]
    webui.post("/sdapi/v1/options", {"sdxl_zero_neg": value})
    try:
        yield
    finally:
        webui.post("/sdapi/v1/options", {"sdxl_zero_neg": before})


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pictures_across_webuis(webui, model):
    root = folder()
    mine = root / webui.kind
    mine.mkdir(parents=True, exist_ok=True)
    partner = MERGE_PARTNER[model]
    with neo_zero_neg(webui, True):
        webui.use_checkpoint(partner)
        (mine / f"{model}-b.png").write_bytes(webui.txt2img(**SAME_OPTIONS).images[0])
        webui.use_checkpoint(MODELS[model])
        for case, (settings, params) in CASES.items():
            if settings and settings.get("merge_model") == "{b}":
                settings = {**settings, "merge_model": title_of(webui, partner)}
            generation = webui.txt2img(settings, **params, **SAME_OPTIONS)
            assert len(generation.images) == 1
            (mine / f"{model}-{case}.png").write_bytes(generation.images[0])
    if webui.kind == "forge_neo":
        with neo_zero_neg(webui, False):
            (mine / f"{model}-{NEO_DEFAULT}.png").write_bytes(webui.txt2img(**SAME_OPTIONS).images[0])
    differences = write_table(root)
    assert differences[(webui.kind, model, "merge1 vs b")] == 0, differences
    if webui.kind == REFERENCE:
        compared = [host for host in OTHERS if (host, model, "plain") in differences]
    else:
        compared = [webui.kind] if (webui.kind, model, "plain") in differences else []
    if not compared:
        pytest.skip(f"no pictures of A1111 and another WebUI in {root} yet: run this test on each with that folder")
    for host in compared:
        plain = differences[(host, model, "plain")]
        for case in COLUMNS:
            if (host, model, case) in differences:
                assert differences[(host, model, case)] <= max(plain, 1), (host, case, differences)
