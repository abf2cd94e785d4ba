"""Merges in a real WebUI (A1111 1.10 and reForge; SD1.5 and SDXL pairs: on reForge, weight patches on the loaded
model, CLIP-G's text_projection and both SDXL text encoders included).

Oracles come from the WebUI itself: "ratio 0" must be model A as loaded and "ratio 1" (text encoders following)
model B as loaded by the WebUI, pixel for pixel; "add difference with C = B" is model A; after any plot, an
interrupted one, a failed cell or a failed generation, a plain generation must be pixel-identical to one made
before any merge. The console log says how often the weights were written.
"""
from __future__ import annotations

import base64
import io
import json
import os
import random
import re
from dataclasses import dataclass

import pytest

from lib_ext.merge import sanitize_checkpoint_name
from lib_ext.settings import Settings
from tests.webui.client import ApiError, b64_png, png_pixels
from tests.webui.conftest import SDXL_SIZE, sdxl_model


def rgb(png: bytes) -> tuple:
    """(size, RGB bytes) of a PNG. reForge writes the infotext into the alpha channel of the pictures it saves
    ("stealth infotext", on unless config.json says otherwise; R modules/stealth_infotext.py), in place, so saved
    X/Y/Z cells come back RGBA: compare the colours only."""
    from PIL import Image
    return (image := Image.open(io.BytesIO(png))).size, image.convert("RGB").tobytes()


def pictures(generation) -> list:
    return [rgb(image) for image in generation.images]

PAIRS = {"sd15": ("uncondlab-tiny-sd15-a", "uncondlab-tiny-sd15-b"),
         "sdxl": (sdxl_model("a"), sdxl_model("b"))}
# The Vega-size SDXL pair shares its text encoders (conftest: --text-encoder-seed), and its merges leave them
# alone (text-encoder ratio 0): two 1.7 B-parameter models in float32 are most of a 24 GB machine, and merging the
# 0.8 B of text encoders would hold two more copies of them for nothing. Ratio 1 is then still model B, text
# encoders included; test_text_encoder_ratio_and_the_cond_cache merges SDXL text encoders on their own. The
# base-size pair has its own text encoders and VAE each, so there they follow the merge ratio: ratio 1 is B only
# if every text-encoder weight (CLIP-G's text_projection included) is B's.
TE_RATIO = {"sd15": None, "sdxl": None if SDXL_SIZE == "base" else 0.0}  # None: following the merge ratio
SDXL_ZERO_TE = sdxl_model("zero-te")
CFGS = (3.0, 7.0)
XYZ = "x/y/z plot"


@dataclass
class Pair:
    webui: object
    kind: str
    a: str          # file stems
    b: str
    a_title: str
    b_title: str
    alone: dict     # {("A" | "B", cfg): pictures of that model alone}

    def txt2img(self, settings=None, **params):
        return self.webui.txt2img(settings, **params)

    def pictures(self, settings=None, **params) -> list:
        return pictures(self.webui.txt2img(settings, **params))

    @property
    def te_settings(self) -> dict:
        return {} if TE_RATIO[self.kind] is None else {"merge_te_ratio": TE_RATIO[self.kind]}

    @property
    def te_choice(self) -> str:
        """The text-encoder ratio as the tab's dropdowns say it."""
        return "follow" if TE_RATIO[self.kind] is None else f"{TE_RATIO[self.kind]:g}"

    def merge(self, ratio, **settings):
        return {"merge_model": self.b_title, "merge_ratio": ratio, **self.te_settings, **settings}


def title_of(webui, stem: str) -> str:
    return next(t for t in webui.checkpoint_titles() if t.startswith(stem + "."))


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request, webui):
    kind = request.param
    a, b = PAIRS[kind]
    webui.post("/uncond-lab/v1/merge-release", {})
    alone = {}
    for role, stem in (("B", b), ("A", a)):  # A last: the tests start from model A loaded
        webui.use_checkpoint(stem)
        for cfg in CFGS:
            alone[(role, cfg)] = pictures(webui.txt2img(cfg_scale=cfg))
    assert webui.txt2img().pixels == webui.fresh[a]
    assert alone[("A", 7.0)] != alone[("B", 7.0)]
    return Pair(webui, kind, a, b, title_of(webui, a), title_of(webui, b), alone)


@pytest.fixture
def merge_pair(pair):
    """Model A loaded, no merge held, at the start and at the end of a test."""
    pair.webui.use_checkpoint(pair.a)
    yield pair
    pair.webui.use_checkpoint(pair.a)
    pair.webui.post("/uncond-lab/v1/merge-release", {})


class Log:
    """The part of the WebUI's console log written since this object was made."""

    def __init__(self, webui):
        if getattr(webui, "log_path", None) is None:
            pytest.skip("the WebUI's log is unknown (set UNCOND_LAB_WEBUI_LOG with UNCOND_LAB_WEBUI_URL)")
        self.path, self.start = webui.log_path, os.path.getsize(webui.log_path)

    def text(self) -> str:
        with open(self.path, "rb") as file:
            file.seek(self.start)
            return file.read().decode(errors="replace")

    def applied(self, ratio: float) -> int:
        return len(re.findall(rf"^Uncond Lab: merge ratio {ratio:g} applied", self.text(), re.MULTILINE))

    def restored(self) -> int:
        return len(re.findall(r"^Uncond Lab: merge restored", self.text(), re.MULTILINE))


def xyz_args(webui, x_label, x_values, y_label, y_values):
    """Positional X/Y/Z args: A1111 1.10 and reForge differ in length, so build them from script-info. Values as
    text ("Use text inputs instead of dropdowns"), also for axes with choices such as the merge partner."""
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == XYZ and not s["is_img2img"])
    labels = info["args"][0]["choices"]
    values = [arg.get("value") for arg in info["args"]]
    values[0:9] = [labels.index(x_label), x_values, [], labels.index(y_label), y_values, [], 0, "", []]
    arg_labels = [arg["label"] for arg in info["args"]]
    values[arg_labels.index("Include Sub Images")] = True
    values[arg_labels.index("Use text inputs instead of dropdowns")] = True
    return values


def cells_by(grid, *keys) -> dict:
    """{(value of each infotext key, ...): [picture]} for the cells of an X/Y/Z result (grid first, then cells)."""
    texts, pixels = grid.infotexts, pictures(grid)
    if len(texts) == len(pixels):
        texts, pixels = texts[1:], pixels[1:]
    else:
        pixels = pixels[1:]
    out = {}
    for text, image in zip(texts, pixels):
        if text is None:  # a cell that failed or was never run (interrupted): a blank image, no infotext
            continue
        values = []
        for key in keys:
            found = re.search(rf"{re.escape(key)}: ([^,\n]+)", text)
            values.append(float(found.group(1)) if found else None)
        out[tuple(values)] = [image]  # as pictures(): one entry per picture
    return out


def plot_ratio_by_cfg(pair, faults=None):
    args = xyz_args(pair.webui, "[Uncond Lab] Merge ratio", "0, 0.5, 1", "CFG Scale", "3, 7")
    scripts = {"Uncond Lab test faults": {"args": [faults]}} if faults else None
    return pair.webui.txt2img({"merge_model": pair.b_title, **pair.te_settings}, scripts=scripts, script_name=XYZ,
                              script_args=args)


# --- endpoints and restore ----------------------------------------------------------------------------------

def test_ratio_zero_is_model_a_and_ratio_one_is_model_b(merge_pair):
    p = merge_pair
    assert p.pictures(p.merge(0.0)) == p.alone[("A", 7.0)]
    assert p.pictures(p.merge(1.0)) == p.alone[("B", 7.0)]
    # The text encoders following too (SDXL: both encoders, CLIP-G's text_projection, patched to B's).
    assert p.pictures(p.merge(1.0, merge_te_ratio="follow")) == p.alone[("B", 7.0)]
    half = p.pictures(p.merge(0.5))
    assert half != p.alone[("A", 7.0)] and half != p.alone[("B", 7.0)]
    assert p.pictures() == p.alone[("A", 7.0)]


SOURCES_OPTION = "uncond_lab_merge_sources"  # A1111's setting; reForge's patches always read the mapped files


def test_resident_copies_and_mapped_files_give_the_same_pictures(merge_pair):
    """Where A and B are read from changes the memory, never the weights: every A1111 setting gives the same
    picture at ratio 0.5, the console says where the merge reads from, and the weights come back exactly."""
    p = merge_pair
    log = Log(p.webui)
    if p.webui.patches_weights:
        half = p.pictures(p.merge(0.5))
        assert f"read from the memory-mapped files when {p.webui.name} patches the weights" in log.text(), log.text()
        assert p.webui.get("/uncond-lab/v1/merge-status")["resident_bytes"] == 0
    else:
        saved = p.webui.get("/sdapi/v1/options")[SOURCES_OPTION]
        found = {}
        try:
            for sources, placement in (("Memory-mapped files", "mapped"), ("Resident copies", "device"),
                                       ("Automatic", "mapped")):  # CPU weights: "Automatic" reads the files
                p.webui.post("/sdapi/v1/options", {SOURCES_OPTION: sources})
                found[sources] = p.pictures(p.merge(0.5))
                status = p.webui.get("/uncond-lab/v1/merge-status")
                if sources == "Resident copies" and status["placement_note"]:
                    placement = "mapped"  # no room for copies of this pair here (SDXL on 24 GB): the files, said so
                    assert "resident copies need" in log.text(), log.text()
                assert status["placement"] == placement, status
                assert (status["resident_bytes"] == 0) == (placement == "mapped"), status
        finally:
            p.webui.post("/sdapi/v1/options", {SOURCES_OPTION: saved})
        half = found["Automatic"]
        assert found["Memory-mapped files"] == half and found["Resident copies"] == half
        assert "read from the memory-mapped files at each switch; 0.00 GB kept in RAM" in log.text(), log.text()
        assert "of copies resident (device)" in log.text() or "resident copies need" in log.text(), log.text()
    assert half not in (p.alone[("A", 7.0)], p.alone[("B", 7.0)])
    assert p.pictures() == p.alone[("A", 7.0)]


def test_xyz_plot_writes_once_per_ratio_and_its_columns_are_the_models(merge_pair):
    p = merge_pair
    log = Log(p.webui)
    cells = cells_by(plot_ratio_by_cfg(p), "Merge ratio", "CFG scale")
    assert len(cells) == 6
    for cfg in CFGS:
        assert cells[(0.0, cfg)] == p.alone[("A", cfg)]
        assert cells[(1.0, cfg)] == p.alone[("B", cfg)]
        assert cells[(0.5, cfg)] not in (p.alone[("A", cfg)], p.alone[("B", cfg)])
    assert (log.applied(0), log.applied(0.5), log.applied(1)) == (0, 1, 1), log.text()
    assert p.pictures() == p.alone[("A", 7.0)]
    assert log.restored() == 1


def test_an_interrupted_plot_leaves_the_original_weights(merge_pair):
    p = merge_pair
    log = Log(p.webui)
    # 4 steps = 4 denoiser calls per cell: call 10 is inside the first ratio-0.5 cell.
    cells = cells_by(plot_ratio_by_cfg(p, faults={"interrupt_at_job_call": 10}), "Merge ratio", "CFG scale")
    assert set(cells) <= {(0.0, 3.0), (0.0, 7.0), (0.5, 3.0)}  # nothing after the interrupted cell
    assert log.applied(0.5) == 1 and log.applied(1) == 0
    assert p.pictures() == p.alone[("A", 7.0)]


def test_a_failed_cell_leaves_the_original_weights(merge_pair):
    p = merge_pair
    log = Log(p.webui)
    # Call 14 is inside the second ratio-0.5 cell: the X/Y/Z plot reports it and goes on with ratio 1.
    cells = cells_by(plot_ratio_by_cfg(p, faults={"fail_at_job_call": 14}), "Merge ratio", "CFG scale")
    assert (0.5, 7.0) not in cells and cells[(1.0, 7.0)] == p.alone[("B", 7.0)]
    assert log.applied(0.5) == 1 and log.applied(1) == 1
    assert p.pictures() == p.alone[("A", 7.0)]


def test_a_failed_merged_generation_leaves_the_original_weights(merge_pair):
    p = merge_pair
    with pytest.raises(ApiError) as error:
        p.txt2img(p.merge(0.5), scripts={"Uncond Lab test faults": {"args": [{"fail_at_call": 2}]}})
    assert error.value.status == 500
    assert p.pictures() == p.alone[("A", 7.0)]


def test_merge_partner_axis(merge_pair):
    p = merge_pair
    args = xyz_args(p.webui, "[Uncond Lab] Merge partner", f"None, {p.b_title}", "CFG Scale", "7")
    grid = p.txt2img({"merge_ratio": 1.0, **p.te_settings}, script_name=XYZ, script_args=args)
    texts, pixels = grid.infotexts[-2:], pictures(grid)[-2:]
    by_partner = {("Merge model B: None" not in text): [image] for text, image in zip(texts, pixels)}
    assert by_partner == {False: p.alone[("A", 7.0)], True: p.alone[("B", 7.0)]}


def test_a_none_partner_column_in_a_ratio_grid_is_model_a(merge_pair):
    """Partner {B, None} × ratio {0.5, 1} with no partner in the accordion: the None cells are model A (the
    grid's reference column), their infotext saying that no merge was applied; no cell fails."""
    p = merge_pair
    log = Log(p.webui)
    args = xyz_args(p.webui, "[Uncond Lab] Merge partner", f"{p.b_title}, None", "[Uncond Lab] Merge ratio", "0.5, 1")
    grid = p.txt2img(script_name=XYZ, script_args=args)
    texts, pixels = grid.infotexts[-4:], pictures(grid)[-4:]
    assert len(texts) == 4 and None not in texts
    none_cells = [[image] for text, image in zip(texts, pixels) if "Merge model B: None" in text]
    assert none_cells == [p.alone[("A", 7.0)]] * 2
    merged = {float(re.search(r"Merge ratio: ([\d.]+)", text).group(1)): [image]
              for text, image in zip(texts, pixels) if "Merge model B: None" not in text}
    assert merged[1.0] == p.alone[("B", 7.0)] and merged[0.5] != p.alone[("A", 7.0)]
    assert "needs a merge partner" not in log.text()
    assert p.pictures() == p.alone[("A", 7.0)]


def test_img2img_encodes_its_init_image_with_the_merged_vae(merge_pair):
    p = merge_pair
    params = {"init_images": [b64_png(p.txt2img().images[0])], "denoising_strength": 0.6}
    p.webui.use_checkpoint(p.b)
    p.webui.img2img(**params)  # A1111: the first img2img after a txt2img comes out different (GLUE.md)
    b_alone = pictures(p.webui.img2img(**params))
    p.webui.use_checkpoint(p.a)
    p.webui.img2img(**params)
    a_alone = pictures(p.webui.img2img(**params))
    assert pictures(p.webui.img2img(p.merge(1.0), **params)) == b_alone
    assert pictures(p.webui.img2img(**params)) == a_alone


# --- text encoders, add difference -----------------------------------------------------------------------

def test_text_encoder_ratio_and_the_cond_cache(merge_pair):
    p = merge_pair
    if p.kind == "sdxl":
        check_sdxl_text_encoder_merge(p)
        return
    assert p.pictures(p.merge(1.0, merge_te_ratio=1.0)) == p.alone[("B", 7.0)]
    # Same prompt, same everything but the text encoders: a stale cached cond would give B's picture again.
    unet_only = p.pictures(p.merge(1.0, merge_te_ratio=0.0))
    assert unet_only not in (p.alone[("B", 7.0)], p.alone[("A", 7.0)])
    assert p.pictures(p.merge(1.0, merge_te_ratio="follow")) == p.alone[("B", 7.0)]
    assert p.pictures() == p.alone[("A", 7.0)]


def check_sdxl_text_encoder_merge(p):
    """Only the text encoders (CLIP-L, and CLIP-G with its text_projection) of the zero-te model, whose map every
    prompt to exactly 0, merged into A (UNet ratio 0): a new picture, and back to A's at text-encoder ratio 0."""
    old = p.webui.get("/sdapi/v1/options")["emphasis"]
    p.webui.post("/sdapi/v1/options", {"emphasis": "No norm"})  # A1111's "Original" divides 0 by 0
    try:
        a_alone = p.pictures()
        te_only = {"merge_model": title_of(p.webui, SDXL_ZERO_TE), "merge_ratio": 0.0, "merge_te_ratio": 1.0}
        zero_text = p.pictures(te_only)
        assert zero_text != a_alone
        # Same prompt, same UNet, other text encoders: a stale cached cond would give zero_text again.
        assert p.pictures({**te_only, "merge_te_ratio": 0.0}) == a_alone
        assert p.pictures(te_only) == zero_text
        assert p.pictures() == a_alone
    finally:
        p.webui.post("/sdapi/v1/options", {"emphasis": old})


def test_add_difference_with_c_equal_to_b_is_model_a(merge_pair):
    p = merge_pair
    settings = p.merge(0.7, merge_method="add_difference", merge_model_c=p.b_title)
    assert p.pictures(settings) == p.alone[("A", 7.0)]  # A + 0.7·(B − B)


# --- settings, API, infotext ---------------------------------------------------------------------------

def test_bad_merge_settings_are_refused_with_422(merge_pair):
    p = merge_pair
    other = PAIRS["sdxl" if p.kind == "sd15" else "sd15"][1]
    cases = [
        ({"merge_model": "no-such-model.safetensors"}, "names no known checkpoint: 'no-such-model.safetensors'"),
        ({"merge_model": p.b_title, "merge_method": "add_difference"}, "'merge_model_c' is needed"),
        ({"merge_model": p.b_title, "merge_ratio": 5}, "'merge_ratio' must be a number in [-1, 2], got 5"),
        ({"merge_model": title_of(p.webui, other)}, "cannot merge A = " + p.a),
        ({"merge_ratio": 0.5, "merge_modle": "x"}, "unknown setting(s) 'merge_modle'"),
    ]
    for settings, fragment in cases:
        with pytest.raises(ApiError) as error:
            p.txt2img(settings)
        assert error.value.status == 422 and fragment in error.value.body, (settings, error.value.body)
    assert p.pictures() == p.alone[("A", 7.0)]


def test_infotext_records_the_recipe_and_pastes_back(merge_pair):
    p = merge_pair
    settings = p.merge(0.25, merge_te_ratio=0.0)
    generation = p.txt2img(settings)
    text = generation.infotexts[0]
    model_hash = re.search(r"Model hash: (\w+)", text).group(1)
    assert re.search(r"\[(\w+)\]", p.a_title).group(1) == model_hash  # pasting loads model A
    for fragment in (f"Merge model A: {p.a_title}", f"Merge model B: {p.b_title}", "Merge method: Weighted sum",
                     "Merge ratio: 0.25", "Merge TE ratio: 0.0", f"Model: {p.a}+{p.b} ws0.25 te0"):
        assert fragment in text, text
    assert re.search(r"Merge model B: [^,]+ \[[0-9a-f]{10}\]", text)  # the partner's short hash
    parameters = p.webui.post("/sdapi/v1/png-info", {"image": b64_png(generation.images[0])})["parameters"]
    pasted = Settings.infotext_to_ui(parameters)
    assert "enabled" not in pasted
    assert Settings.from_dict(pasted).merge_request() == Settings.from_dict(settings).merge_request()
    assert "Merge" not in p.txt2img().infotexts[0]


# --- the tab's sweep and "Save this merge" -----------------------------------------------------------------

SWEEP = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 1234, "steps": 4, "width": 64,
         "height": 64, "sampler_name": "Euler", "scheduler": "Automatic"}


def test_sweep_route_and_save_this_merge(merge_pair, tmp_path):
    p = merge_pair
    log = Log(p.webui)
    result = p.webui.post("/uncond-lab/v1/merge-sweep", {**SWEEP, "model_b": p.b_title, "ratios": "0-1 [3]",
                                                         "te_ratio": TE_RATIO[p.kind],
                                                         "cfgs": "3, 7", "unconds": "default"})
    assert (result["cells_done"], result["cell_count"], result["errors"]) == (6, 6, [])
    cells = {}
    for text, image in zip(result["infotexts"], result["images"]):
        ratio = float(re.search(r"Merge ratio: ([\d.]+)", text).group(1))
        cfg = float(re.search(r"CFG scale: ([\d.]+)", text).group(1))
        cells[(ratio, cfg)] = [rgb(base64.b64decode(image))]
    for cfg in CFGS:
        assert cells[(0.0, cfg)] == p.alone[("A", cfg)] and cells[(1.0, cfg)] == p.alone[("B", cfg)]
    assert os.path.isfile(result["grid_path"]) and "Uncond Lab sweep: merge ratios 0, 0.5, 1" in result["grid_infotext"]
    grid_size = png_pixels(base64.b64decode(result["grid"]))[:2]
    assert grid_size[0] > 2 * 64 and grid_size[1] > 3 * 64  # 2 columns × 3 rows, plus the labels
    assert p.pictures() == p.alone[("A", 7.0)]  # the sweep restored the weights when it ended
    assert (log.applied(0), log.applied(0.5), log.applied(1), log.restored()) == (0, 1, 1, 1), log.text()

    name = f"uncondlab test/../{p.kind} merge"
    saved = p.webui.post("/uncond-lab/v1/save-merge", {"model_b": p.b_title, "ratio": 0.5, "name": name})
    assert os.path.basename(saved["path"]) == sanitize_checkpoint_name(name) + ".safetensors"
    assert "/" not in sanitize_checkpoint_name(name) and ".." not in sanitize_checkpoint_name(name)
    again = p.webui.post("/uncond-lab/v1/save-merge", {"model_b": p.b_title, "ratio": 0.5, "name": name})
    assert again["path"] != saved["path"] and again["path"].endswith("-2.safetensors")  # never overwrites
    assert saved["title"] in p.webui.checkpoint_titles()  # listed without a restart
    try:
        p.webui.post("/sdapi/v1/refresh-checkpoints", {})
        p.webui.use_checkpoint(os.path.splitext(os.path.basename(saved["path"]))[0])
        assert p.pictures(cfg_scale=7.0) == cells[(0.5, 7.0)]  # the file is the in-memory merge
    finally:
        p.webui.use_checkpoint(p.a)
        for path in (saved["path"], again["path"]):
            for sidecar in (path, os.path.splitext(path)[0] + ".yaml"):
                if os.path.exists(sidecar):
                    os.unlink(sidecar)
        p.webui.post("/sdapi/v1/refresh-checkpoints", {})


def test_sweep_route_refuses_bad_lists(merge_pair):
    p = merge_pair
    for payload, fragment in (({"ratios": "0-1 [0]"}, "the count must be 1 to"),
                              ({"model_b": ""}, "pick a merge partner B"),
                              ({"unconds": "sometimes"}, "cannot read 'sometimes'"),
                              ({"seeed": 3}, "unknown sweep field(s) 'seeed'")):
        with pytest.raises(ApiError) as error:
            p.webui.post("/uncond-lab/v1/merge-sweep", {**SWEEP, "model_b": p.b_title, **payload})
        assert error.value.status == 422 and fragment in error.value.body, error.value.body


# --- LoRA -----------------------------------------------------------------------------------------------------

LORA = "uncondlab-test-lora"
LORA_MODULES = {  # kohya names, which both WebUIs read; SDXL: te1 = CLIP-L, input_blocks 4 = the first attention
    "sd15": {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (320, 320),
             "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)},
    "sdxl": {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640),
             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)},
}


def write_tiny_lora(folder: str, kind: str) -> str:
    """A rank-4 LoRA on one UNet and one text-encoder layer of the test models of this kind."""
    import torch
    from safetensors.torch import save_file
    generator, tensors = torch.Generator().manual_seed(7), {}
    for module, (rows, columns) in LORA_MODULES[kind].items():
        tensors[f"{module}.lora_down.weight"] = torch.randn(4, columns, generator=generator) * 0.3
        tensors[f"{module}.lora_up.weight"] = torch.randn(rows, 4, generator=generator) * 0.3
        tensors[f"{module}.alpha"] = torch.tensor(4.0)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{LORA}-{kind}.safetensors")  # one name per kind: the WebUIs cache by name
    save_file(tensors, path)
    return path


def lora_folder(webui) -> str:
    """The WebUI's --lora-dir. Forge Neo's /sdapi/v1/cmd-flags fails on its own response model (a port given as
    an int), so there it is the default under the data dir the tests started it with."""
    try:
        return webui.get("/sdapi/v1/cmd-flags")["lora_dir"]
    except ApiError:
        if webui.kind != "forge_neo" or getattr(webui, "data_dir", None) is None:
            raise
        return str(webui.data_dir / "models" / "Lora")


def test_a_lora_applies_on_top_of_the_merge_and_never_into_model_a(merge_pair):
    p = merge_pair
    path = write_tiny_lora(lora_folder(p.webui), p.kind)
    with_lora = {"prompt": f"a lighthouse at dusk <lora:{LORA}-{p.kind}:1>"}
    try:
        a_lora = p.pictures(**with_lora)
        assert a_lora != p.alone[("A", 7.0)]
        p.webui.use_checkpoint(p.b)
        b_lora = p.pictures(**with_lora)
        p.webui.use_checkpoint(p.a)
        p.txt2img(**with_lora)  # the LoRA is now baked into model A's weights
        assert p.pictures(p.merge(1.0), **with_lora) == b_lora  # merged from clean A, LoRA on top
        assert p.pictures(p.merge(1.0)) == p.alone[("B", 7.0)]  # no LoRA left in the merge
        assert p.pictures(p.merge(1.0), **with_lora) == b_lora
        assert p.pictures(**with_lora) == a_lora  # restored with the LoRA baked in: clean A + LoRA
        assert p.pictures() == p.alone[("A", 7.0)]
    finally:
        os.unlink(path)


def test_rectified_flow_samples_the_merge(merge_pair):
    """RF and the merge on one generation (on reForge both work on the UNet patcher: the flow clone must keep the
    merge's weight patches): ratio 0 samples A, ratio 1 samples B, each as RF."""
    p = merge_pair
    rf = {"enabled": True, "rf": True, "shift": 3.0}
    schedule = {"scheduler": "Rectified Flow"}
    rf_a = p.pictures(rf, **schedule)
    p.webui.use_checkpoint(p.b)
    rf_b = p.pictures(rf, **schedule)
    p.webui.use_checkpoint(p.a)
    assert rf_a != rf_b and rf_a != p.alone[("A", 7.0)]
    assert p.pictures({**rf, **p.merge(0.0)}, **schedule) == rf_a
    assert p.pictures({**rf, **p.merge(1.0)}, **schedule) == rf_b
    assert p.pictures() == p.alone[("A", 7.0)]


# --- the tab itself, through Gradio's HTTP API (what its buttons call) ----------------------------------------

def gradio_call(webui, elem_id: str, data: list) -> list:
    """Call the function bound to the button with this elem_id, as the browser does after the button's JS."""
    config = webui.get("/config")
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    # Gradio 3 lists a dependency's targets as ids, Gradio 4 (Forge Neo) as [id, event] pairs.
    index = next(n for n, d in enumerate(config["dependencies"])
                 if button in (t[0] if isinstance(t, list) else t for t in d["targets"]))
    return webui.post("/run/predict", {"fn_index": index, "data": data, "session_hash": "uncondlabtest"})["data"]


def gallery_file(entry) -> str:
    """The file of a gallery entry; gradio adds "?<mtime>" to names it serves (a cache buster)."""
    item = entry[0] if isinstance(entry, (list, tuple)) else entry
    if isinstance(item, dict):  # Gradio 3: {"name": ...}; Gradio 4 (Forge Neo): {"image": {"path": ...}} or {"path"}
        item = item["image"]["path"] if "image" in item else item.get("path") or item["name"]
    return item.split("?")[0]


def test_the_tab_run_and_save_buttons(merge_pair):
    p = merge_pair
    values = ["Loaded model", p.b_title, "None", "Weighted sum", "0, 1", p.te_choice, "7", "default",
              "a lighthouse at dusk", "", 1234, 4, 64, 64, "Euler", "Automatic", ""]
    gallery, info = gradio_call(p.webui, "uncond_lab_tab_run", ["task(uncondlab-e2e-run)", *values])
    assert "2 of 2 cells" in info, info
    files = [gallery_file(entry) for entry in gallery]
    assert len(files) == 3  # the grid, then the cells
    cells = []
    for path in files[1:]:
        with open(path, "rb") as file:
            cells.append(rgb(file.read()))
    assert [cells[0]] == p.alone[("A", 7.0)] and [cells[1]] == p.alone[("B", 7.0)]
    assert p.pictures() == p.alone[("A", 7.0)]

    saved, status = gradio_call(p.webui, "uncond_lab_tab_save",
                                ["task(uncondlab-e2e-save)", 0.5, "tab save test", *values, ""])
    assert "Time taken" in status
    path = re.search(r"Saved (.+?\.safetensors)", saved).group(1)
    try:
        assert os.path.isfile(path) and "tab save test.safetensors" in path
        assert os.path.basename(path) in " ".join(p.webui.checkpoint_titles())
    finally:
        for leftover in (path, os.path.splitext(path)[0] + ".yaml"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        p.webui.post("/sdapi/v1/refresh-checkpoints", {})


# --- the probe of a merge (POST /uncond-lab/v1/probe with "merge") -------------------------------------------

SMALL_PROBE = {"latent_shape": [4, 16, 16], "levels": 4, "seeds": [0], "cfg_scale": 7}


def test_the_probe_of_a_merge_is_model_a_at_0_and_model_b_at_1_and_sweeps(merge_pair):
    p = merge_pair
    seeds = [random.randrange(1 << 30)]  # a running WebUI may have cached the usual seeds

    def probe(**body):
        return p.webui.post("/uncond-lab/v1/probe", {**SMALL_PROBE, "seeds": seeds, **body})

    alone_a = probe()
    p.webui.use_checkpoint(p.b)
    alone_b = probe()
    p.webui.use_checkpoint(p.a)
    assert alone_a["score"] != alone_b["score"]

    at_0 = probe(merge=p.merge(0.0))
    assert at_0["cached"] is False and at_0["merge"]["merge_model"] == p.b_title
    assert at_0["score"] == pytest.approx(alone_a["score"], rel=1e-5, abs=1e-9)

    sweep = probe(merge=p.merge([0, 0.5, 1]))
    columns = sweep["columns"]
    assert columns["ratio"] == [0.0, 0.5, 1.0] and len(sweep["results"]) == 3
    assert sweep["cached"] == [True, False, False]  # ratio 0: the probe above, same merge and seeds
    assert columns["score"][0] == at_0["score"]
    assert columns["score"][2] == pytest.approx(alone_b["score"], rel=1e-5, abs=1e-9)
    # The probe leaves model A's own weights behind.
    assert p.pictures() == p.alone[("A", 7.0)]


def test_the_probe_tab_sweeps_the_merge_ratio(merge_pair):
    p = merge_pair
    probe_settings = ["a lighthouse", str(random.randrange(1 << 30)), 4, 7, 128, "prediction"]
    merge = [p.b_title, "Weighted sum", "None", p.te_choice, "0, 1"]
    no_shelf = [[], "Model default", 3.0]  # no checkpoint list; the Prediction and RF shift controls
    summary, levels, sweep_plot, table, files, error, _bars = gradio_call(p.webui, "uncond_lab_probe_run",
                                                                          probe_settings + merge + no_shelf)
    assert error == "" and "Score by merge ratio" in summary and "r=0:" in summary and "r=1:" in summary
    assert len(files) == 2 and sweep_plot["visible"] is True
    assert [row[0] for row in table["data"]] == [0, 1]
    # The table shows 4 significant digits; the JSON download keeps every digit.
    shown = [value for row in table["data"] for value in row if isinstance(value, float)]
    assert shown and all(value == float(f"{value:.4g}") for value in shown)
    with open(next(gallery_file(f) for f in files if gallery_file(f).endswith(".json"))) as file:
        scores = json.load(file)["columns"]["score"]
    assert any(score != float(f"{score:.4g}") for score in scores)
    assert [float(f"{score:.4g}") for score in scores] == [row[1] for row in table["data"]]
    plain = gradio_call(p.webui, "uncond_lab_probe_run", probe_settings + ["None", "Weighted sum", "None", "follow",
                                                                           "0, 1"] + no_shelf)
    assert "**Score " in plain[0] and plain[5] == ""
    assert p.pictures() == p.alone[("A", 7.0)]


@pytest.mark.parametrize("merge, fragment", [
    ({"merge_model": "uncondlab-no-such-model"}, "names no known checkpoint"),
    ({"merge_ratio": 0.5}, "'merge' needs 'merge_model'"),
    ({"merge_model": "x", "ratio": 0.5}, "unknown 'merge' key(s) 'ratio'"),
    ({"merge_model": "x", "merge_ratio": "0-9 [3]"}, "Merge ratios"),
])
def test_the_probe_refuses_a_bad_merge(merge_pair, merge, fragment):
    with pytest.raises(ApiError) as error:
        merge_pair.webui.post("/uncond-lab/v1/probe", {**SMALL_PROBE, "merge": merge})
    assert error.value.status == 422 and fragment in error.value.body
