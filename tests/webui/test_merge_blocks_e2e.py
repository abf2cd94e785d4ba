"""Block-weighted merges (merge_blocks) in a real WebUI: A1111 1.10 and reForge, SD1.5 and SDXL pairs.

Oracles: the plain merge at ratio r (a flat vector r must give its pictures, pixel for pixel), a checkpoint merged
key by key in this test (not by the engine) and loaded by the WebUI, and model A's pictures after every plot,
interrupted plot and refused request. The tiny SD1.5 UNet has one level (IN00-IN01, M00, OUT00-OUT01: a 6-value
vector); the SDXL test pair has SDXL's block structure (IN00-IN08, M00, OUT00-OUT08: 20 values).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path

import pytest

from lib_ext.settings import Settings
from tests.webui.client import ApiError, b64_png
from tests.webui.tiny_models import write_safetensors
from tests.webui.test_merge_e2e import (SWEEP, XYZ, Log, merge_pair, pair, pictures, rgb,  # noqa: F401 (fixtures)
                                       xyz_args)

UNET = "model.diffusion_model."
# The block each pair's X/Y/Z test sweeps, and the vector length of its UNet.
SWEPT = {"sd15": "IN01", "sdxl": "IN04"}
VECTOR = {"sd15": 6, "sdxl": 20}


def slot_of(key: str) -> str:
    """The slot of a UNet key, written here from the module names (not blocks.py)."""
    head, index = key[len(UNET):].split(".")[:2]
    return {"time_embed": "TIME", "label_emb": "LABEL", "middle_block": "M00", "out": "OUT_FINAL",
            "input_blocks": f"IN{index.zfill(2)}", "output_blocks": f"OUT{index.zfill(2)}"}[head]


def checkpoint_path(webui, stem: str) -> str:
    return next(m["filename"] for m in webui.get("/sdapi/v1/sd-models") if m["title"].startswith(stem + "."))


def te_settings(p) -> dict:
    """The pair's text-encoder ratio (main's SDXL pair leaves its shared text encoders alone: ratio 0)."""
    return dict(getattr(p, "te_settings", {}))


def own_te(p, ratio, **settings) -> dict:
    """A merge whose text encoders follow the blocks (BASE) or the ratio, whatever the pair's default."""
    return {"merge_model": p.b_title, "merge_ratio": ratio, **settings}


def written(log_text: str) -> list[int]:
    """The weight counts of the console lines 'merge ratio … applied in … (…; N weights, X MB written)' (A1111)
    and 'merge blocks … rewritten in place in … (N weights, X MB written; …)' (reForge)."""
    return [int(n) for n in re.findall(r"^Uncond Lab: merge (?:ratio .* applied|blocks .* rewritten in place) in "
                                       r".*?(\d+) weights, [\d.]+ MB written", log_text, re.MULTILINE)]


def test_a_flat_vector_is_the_plain_ratio(merge_pair):
    p = merge_pair
    flat = ",".join(["0.5"] * VECTOR[p.kind])
    plain = p.pictures(own_te(p, 0.5))
    assert plain not in (p.alone[("A", 7.0)], p.alone[("B", 7.0)])
    assert p.pictures(own_te(p, 0.2, merge_blocks=flat)) == plain  # merge_ratio is not used by a full vector
    assert p.pictures(own_te(p, 0.2, merge_blocks=f"[{flat}]")) == plain
    ones = ",".join(["1"] * VECTOR[p.kind])
    assert p.pictures(own_te(p, 0.5, merge_blocks=ones)) == p.alone[("B", 7.0)]
    assert p.pictures() == p.alone[("A", 7.0)]


def test_sparse_blocks_equal_a_checkpoint_merged_key_by_key_in_this_test(merge_pair):
    """'IN00-<swept>=1, M00=0.5, OUT=0' at merge_ratio 0.25, against a file this test merges key by key:
    torch.lerp per key at its block's ratio, in float32 (the WebUIs run --no-half: float32 weights), everything
    else (the checkpoint's VAE follows the UNet ratio; the text encoders too unless the pair fixes theirs) at
    0.25; loaded by the WebUI itself."""
    import torch
    from safetensors import safe_open
    p = merge_pair
    blocks = f"IN00-{SWEPT[p.kind]}=1, M00=0.5, OUT=0"
    values = {"M00": 0.5}
    te_ratio = te_settings(p).get("merge_te_ratio", 0.25)

    def ratio(key: str) -> float | None:
        if key.startswith(UNET):
            slot = slot_of(key)
            if slot in values:
                return values[slot]
            if slot.startswith("IN") and int(slot[2:]) <= int(SWEPT[p.kind][2:]):
                return 1.0
            return 0.0 if re.fullmatch(r"OUT\d\d", slot) else 0.25
        if key.endswith("position_ids"):
            return None
        if key.startswith(("cond_stage_model.", "conditioner.embedders.")):
            return te_ratio
        if key.startswith("first_stage_model."):
            return 0.25
        return None  # other keys: A's

    path_a, path_b = checkpoint_path(p.webui, p.a), checkpoint_path(p.webui, p.b)
    stem = f"uncondlab-test-blocks-{p.kind}"
    folder = os.path.dirname(path_a)
    target = os.path.join(folder, stem + ".safetensors")
    # One key at a time (the SDXL reference is 7 GB in float32): read from both files, merged, written.
    with safe_open(path_a, "pt") as file_a, safe_open(path_b, "pt") as file_b:
        def merged(key: str):
            tensor, r = file_a.get_tensor(key), ratio(key)
            if r is None or not tensor.is_floating_point():
                return tensor
            return torch.lerp(tensor.float(), file_b.get_tensor(key).float(), r)

        layout = {}
        for key in file_a.keys():
            stored = file_a.get_slice(key)
            dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                     "I64": torch.int64}[stored.get_dtype()]
            layout[key] = (tuple(stored.get_shape()),
                           torch.float32 if ratio(key) is not None and dtype.is_floating_point else dtype)
        write_safetensors(layout, merged, Path(target), {})
    yaml_a = os.path.splitext(os.path.realpath(path_a))[0] + ".yaml"
    if os.path.isfile(yaml_a):
        shutil.copyfile(yaml_a, os.path.join(folder, stem + ".yaml"))
    try:
        in_memory = p.pictures(p.merge(0.25, merge_blocks=blocks))
        assert in_memory not in (p.alone[("A", 7.0)], p.alone[("B", 7.0)], p.pictures(p.merge(0.25)))
        assert p.pictures() == p.alone[("A", 7.0)]
        p.webui.post("/sdapi/v1/refresh-checkpoints", {})
        p.webui.use_checkpoint(stem)
        assert p.pictures() == in_memory
    finally:
        p.webui.use_checkpoint(p.a)
        for leftover in (target, os.path.join(folder, stem + ".yaml")):
            if os.path.exists(leftover):
                os.unlink(leftover)
        p.webui.post("/sdapi/v1/refresh-checkpoints", {})


def plot_one_block(p, faults=None):
    swept = SWEPT[p.kind]
    args = xyz_args(p.webui, "[Uncond Lab] Merge blocks", f'"{swept}=0", "{swept}=1"', "CFG Scale", "3, 7")
    scripts = {"Uncond Lab test faults": {"args": [faults]}} if faults else None
    return p.webui.txt2img(p.merge(0.5), scripts=scripts, script_name=XYZ, script_args=args)


def block_cells(grid) -> dict:
    texts, images = grid.infotexts, pictures(grid)
    if len(texts) == len(images):
        texts, images = texts[1:], images[1:]
    else:
        images = images[1:]
    out = {}
    for text, image in zip(texts, images):
        if text is None:
            continue
        found = re.search(r'Merge blocks: "?([^",\n]+)', text)
        cfg = float(re.search(r"CFG scale: ([\d.]+)", text).group(1))
        out[(found.group(1) if found else None, cfg)] = [image]
    return out


def test_xyz_over_one_block_writes_only_that_block_and_restores(merge_pair):
    p = merge_pair
    swept = SWEPT[p.kind]
    log = Log(p.webui)
    cells = block_cells(plot_one_block(p))
    assert set(cells) == {(f"{swept}={v}", cfg) for v in (0, 1) for cfg in (3.0, 7.0)}, list(cells)
    assert cells[(f"{swept}=0", 7.0)] != cells[(f"{swept}=1", 7.0)]
    assert cells[(f"{swept}=0", 7.0)] not in (p.alone[("A", 7.0)], p.alone[("B", 7.0)])
    text = log.text()
    assert len(re.findall(rf"^Uncond Lab: merge ratio 0.5, blocks {swept}=0 applied", text, re.MULTILINE)) == 1, text
    assert len(re.findall(rf"^Uncond Lab: merge ratio 0.5, blocks {swept}=1 applied", text, re.MULTILINE)) == 1, text
    from safetensors import safe_open
    with safe_open(checkpoint_path(p.webui, p.a), "pt") as file:
        block_keys = [k for k in file.keys() if k.startswith(UNET) and slot_of(k) == swept]
    counts = written(text)
    # The switch between the block's cells writes that block alone. Before it, the first cell: everything but the
    # swept block (at 0 it is A's, already in place), written by A1111; by reForge's own loader when the model
    # was just loaded (the test before loads a checkpoint), else rewritten in place like the block.
    assert 1 <= len(counts) <= 2 and counts[-1] == len(block_keys), (counts, len(block_keys), text)
    assert len(counts) == 2 or p.webui.patches_weights, counts
    assert len(counts) == 1 or counts[0] > 10 * counts[1], counts
    assert p.pictures() == p.alone[("A", 7.0)]
    # the same cells again from the plain merge's side: the swept block at 1 is its own picture
    assert p.pictures(p.merge(0.5, merge_blocks=f"{swept}=1"), cfg_scale=7.0) == cells[(f"{swept}=1", 7.0)]
    assert p.pictures() == p.alone[("A", 7.0)]


def test_an_interrupted_block_plot_leaves_the_original_weights(merge_pair):
    p = merge_pair
    log = Log(p.webui)
    # 4 steps = 4 denoiser calls per cell: call 10 is inside the third cell (the block at 1, CFG 3).
    cells = block_cells(plot_one_block(p, faults={"interrupt_at_job_call": 10}))
    assert set(cells) <= {(f"{SWEPT[p.kind]}=0", 3.0), (f"{SWEPT[p.kind]}=0", 7.0), (f"{SWEPT[p.kind]}=1", 3.0)}
    assert "blocks" in log.text()
    assert p.pictures() == p.alone[("A", 7.0)]


def test_bad_block_weights_are_refused_with_422(merge_pair):
    p = merge_pair
    wrong = 26 if p.kind == "sdxl" else 20
    cases = [
        (own_te(p, 0.5, merge_blocks=",".join(["0.5"] * wrong)), f"has {wrong} values; this model needs "
                                                                f"{VECTOR[p.kind]} values"),
        (own_te(p, 0.5, merge_blocks=",".join(["0.5"] * VECTOR[p.kind]), merge_te_ratio=0),
         "'merge_te_ratio' = 0 does too"),
        (p.merge(0.5, merge_blocks="IN99=1"), "slot 'IN99' does not exist in this model"),
        (p.merge(0.5, merge_blocks="FOO=1"), "unknown slot 'FOO'"),
        (p.merge(0.5, merge_blocks="sideways"), "unknown preset 'sideways'"),
        (p.merge(0.5, merge_blocks="IN00=2.5"), "the value of IN00 must be a number in [-1, 2], got '2.5'"),
    ]
    held = p.pictures(p.merge(0.5, merge_blocks="IN00=1"))
    for settings, fragment in cases:
        # a block merge held (A1111 keeps it between generations): a refused request must not leave it half-done
        assert p.pictures(p.merge(0.5, merge_blocks="IN00=1")) == held
        with pytest.raises(ApiError) as error:
            p.txt2img(settings)
        assert error.value.status == 422 and fragment in error.value.body, (settings, error.value.body)
        assert p.pictures() == p.alone[("A", 7.0)]


def test_infotext_records_the_blocks_and_pastes_back(merge_pair):
    p = merge_pair
    settings = p.merge(0.25, merge_blocks=f"{SWEPT[p.kind].lower()}=1, out=0")
    generation = p.txt2img(settings)
    text = generation.infotexts[0]
    assert f'Merge blocks: "{SWEPT[p.kind]}=1, OUT=0"' in text, text
    parameters = p.webui.post("/sdapi/v1/png-info", {"image": b64_png(generation.images[0])})["parameters"]
    pasted = Settings.infotext_to_ui(parameters)
    assert Settings.from_dict(pasted).merge_request() == Settings.from_dict(settings).merge_request()
    assert p.pictures(Settings.from_dict(pasted).as_dict()) == pictures(generation)
    assert "Merge blocks" not in p.txt2img(p.merge(0.25)).infotexts[0]


def test_the_tab_sweeps_block_weights_and_the_probe_sweeps_a_block(merge_pair):
    p = merge_pair
    swept = SWEPT[p.kind]
    result = p.webui.post("/uncond-lab/v1/merge-sweep", {**SWEEP, "model_b": p.b_title, "ratios": "0.5",
                                                         "blocks": f'"{swept}=0", "{swept}=1"', "cfgs": "7",
                                                         "unconds": "default", "save": False,
                                                         "te_ratio": te_settings(p).get("merge_te_ratio")})
    assert (result["cells_done"], result["errors"]) == (2, [])
    assert f"block weights {swept}=0; {swept}=1" in result["grid_infotext"]
    assert p.pictures(p.merge(0.5, merge_blocks=f"{swept}=1")) == [rgb(base64.b64decode(result["images"][1]))]
    probe = p.webui.post("/uncond-lab/v1/probe", {
        "latent_shape": [4, 16, 16], "levels": 4, "seeds": [0], "cfg_scale": 7,
        "merge": {"merge_model": p.b_title, "merge_ratio": 0.5, "merge_blocks": [f"{swept}=0", f"{swept}=1"],
                  **te_settings(p)}})
    assert probe["columns"]["merge_blocks"] == [f"{swept}=0", f"{swept}=1"]
    assert probe["merge"]["merge_blocks"] == [f"{swept}=0", f"{swept}=1"]
    assert len(set(probe["columns"]["score"])) == 2
    with pytest.raises(ApiError) as error:
        p.webui.post("/uncond-lab/v1/merge-sweep", {**SWEEP, "model_b": p.b_title, "blocks": '"IN00=9"'})
    assert error.value.status == 422 and "got '9'" in error.value.body
    assert p.pictures() == p.alone[("A", 7.0)]
