"""Block-weighted merges (lib_ext/merge/blocks.py): the slot of every real SD1.5/SDXL UNet key, parsing and its
errors, and the engine writing each weight at its block's ratio, only where the ratio changed."""
from __future__ import annotations

import re

import pytest
import torch

from bench.merge_switch import sdxl_unet_shapes
from lib_ext.merge import InPlaceMerge, MergeRecipe, RecipeError, merged_state_dict
from lib_ext.merge.blocks import PRESETS, BlockLayout, BlocksError, parse_blocks, slot_keys, unet_slot
from lib_ext.merge.patches import PatchMerge, reforge_weight
from lib_ext.merge.save import default_merge_name
from tests.merge_fixtures import assert_bits_equal, write_checkpoint
from tests.webui import tiny_models as tm

UNET = "model.diffusion_model."
# SD1.5's real UNet hyper-parameters (v1-inference.yaml), for its key list; tiny_models' SD1.5 is one level deep.
SD15_UNET = tm.UnetSize(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, transformer_depth=(1, 1, 1, 0),
                        transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, num_heads=8)
SD15_TE = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
SDXL_TES = ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            "conditioner.embedders.1.model.ln_final.weight")


def sd15_unet_keys() -> list[str]:
    return list(tm.unet_spec(UNET, SD15_UNET))


def sdxl_unet_keys() -> list[str]:
    return list(sdxl_unet_shapes())


def reference_slot(key: str) -> str:
    """The slot a key belongs to, written from the WebUIs' module names independently of blocks.py."""
    name = key[len(UNET):]
    head, index = name.split(".")[0], name.split(".")[1]
    return {"time_embed": "TIME", "label_emb": "LABEL", "middle_block": "M00", "out": "OUT_FINAL",
            "input_blocks": f"IN{index.zfill(2)}", "output_blocks": f"OUT{index.zfill(2)}"}[head]


# --- the slot mapping on the real key lists -----------------------------------------------------------------

@pytest.mark.parametrize("family, keys, count, vector", [
    ("SD1.x/SD2.x", sd15_unet_keys, 686, 26),
    ("SDXL", sdxl_unet_keys, 1680, 20),
])
def test_every_real_unet_key_is_in_exactly_one_slot(family, keys, count, vector):
    keys = keys()
    assert len(keys) == count  # the real models' UNet key counts
    layout = BlockLayout.from_keys(keys)
    assert layout.family == family and len(layout.vector_slots) == vector
    table = slot_keys(keys)
    assert None not in table  # no key outside a slot
    assert set(table) == set(layout.unet_slots)  # every slot holds keys, no slot outside the layout
    assert sum(len(v) for v in table.values()) == len(keys) == len(set(keys))
    for key in keys:
        assert unet_slot(key) == reference_slot(key), key


def test_slot_tables_name_the_special_keys():
    sd15, sdxl = slot_keys(sd15_unet_keys()), slot_keys(sdxl_unet_keys())
    assert sd15["TIME"] == [f"{UNET}time_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    assert sd15["OUT_FINAL"] == [f"{UNET}out.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    assert "LABEL" not in sd15 and sdxl["LABEL"] == [f"{UNET}label_emb.0.{i}.{p}" for i in (0, 2)
                                                    for p in ("weight", "bias")]
    assert sd15["IN00"] == [f"{UNET}input_blocks.0.0.weight", f"{UNET}input_blocks.0.0.bias"]
    assert BlockLayout.from_keys(sd15_unet_keys()).vector_slots == (
        "BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
    assert BlockLayout.from_keys(sdxl_unet_keys()).unet_slots == (
        "TIME", "LABEL", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)), "OUT_FINAL")
    # SDXL's transformer depth: 2 in IN04 (level 2), 10 in IN07 (level 3): 26 keys per transformer block
    depth = {slot: sum(k.endswith(".attn1.to_q.weight") for k in sdxl[slot]) for slot in ("IN04", "IN07", "M00")}
    assert depth == {"IN04": 2, "IN07": 10, "M00": 10}


def test_layout_refuses_unknown_keys():
    assert BlockLayout.from_keys([*sd15_unet_keys(), f"{UNET}something_else.weight"]) is None
    assert BlockLayout.from_keys([k for k in sd15_unet_keys() if ".input_blocks.3." not in k]) is None  # a gap


# --- parsing ----------------------------------------------------------------------------------------------

SD15 = BlockLayout.from_keys(sd15_unet_keys())
SDXL = BlockLayout.from_keys(sdxl_unet_keys())


def test_full_vector_as_json_and_as_text():
    values = [round(i / 25, 4) for i in range(26)]
    text = ",".join(map(str, values))
    for form in (text, f"[{text}]", f" {text.replace(',', ', ')} ", values):
        weights = parse_blocks(form)
        assert weights.vector == tuple(values)
        ratios = weights.slot_ratios(SD15, 0.9, 0.9)
        assert [ratios[s] for s in SD15.vector_slots] == values
        assert ratios["TIME"] == ratios["IN00"] and ratios["OUT_FINAL"] == ratios["OUT11"]
    assert parse_blocks(parse_blocks(text).text) == parse_blocks(text)


def test_sparse_assignments_ranges_groups_and_order():
    weights = parse_blocks("IN00-IN08=1, m00=0.5, OUT=0, out03=0.25")
    ratios = weights.slot_ratios(SDXL, 0.3, 0.7)
    assert all(ratios[f"IN{i:02d}"] == 1.0 for i in range(9))
    assert ratios["M00"] == 0.5 and ratios["OUT03"] == 0.25  # later items override earlier ones
    assert all(ratios[f"OUT{i:02d}"] == 0.0 for i in range(9) if i != 3)
    assert ratios["TIME"] == ratios["LABEL"] == ratios["OUT_FINAL"] == 0.3  # unnamed: merge_ratio
    assert ratios["BASE"] == 0.7 and weights.base is None  # the text encoders keep merge_te_ratio
    assert parse_blocks("BASE=0.2, IN04=1").base == 0.2
    assert weights.text == "IN00-IN08=1, M00=0.5, OUT=0, OUT03=0.25"
    # a range in slot order, either way round, may cross parts
    ranges = parse_blocks("OUT01-IN11=2").slot_ratios(SD15, 0, 0)
    assert [s for s, r in ranges.items() if r == 2] == ["IN11", "M00", "OUT00", "OUT01"]
    # a value pasted with the X/Y/Z plot's quotes
    assert parse_blocks('"IN04=0"').text == "IN04=0"


def test_presets():
    for layout in (SD15, SDXL):
        up = parse_blocks("gradient-up").slot_ratios(layout, 0.5, 0.5)
        numbered = layout.vector_slots[1:]
        assert up[numbered[0]] == 0.0 and up[numbered[-1]] == 1.0
        assert all(up[a] < up[b] for a, b in zip(numbered, numbered[1:]))
        down = parse_blocks("gradient-down").slot_ratios(layout, 0.5, 0.5)
        assert all(abs(up[s] + down[s] - 1.0) < 1e-12 for s in layout.unet_slots)
        inputs = parse_blocks("input-only").slot_ratios(layout, 0.5, 0.5)
        assert {s for s in layout.unet_slots if inputs[s] == 1.0} == {*layout.group("IN"), "TIME",
                                                                      *(["LABEL"] if layout.label else [])}
        outputs = parse_blocks("output-only, M00=0.5").slot_ratios(layout, 0.5, 0.5)
        assert outputs["OUT_FINAL"] == 1.0 and outputs["M00"] == 0.5 and outputs["IN00"] == 0.0
    assert parse_blocks("flat") is None and parse_blocks("") is None and parse_blocks(None) is None
    assert set(PRESETS) >= {"flat", "gradient-up", "gradient-down", "input-only", "output-only"}


@pytest.mark.parametrize("value, layout, fragment", [
    ("0.5," * 19 + "0.5", SD15, "has 20 values; this model needs 26 values for SD1.x/SD2.x"),
    ("0.5," * 25 + "0.5", SDXL, "has 26 values; this model needs 20 values for SDXL"),
    ("LABEL=1", SD15, "slot 'LABEL' does not exist in this model (SD1.x/SD2.x"),
    ("IN09=1", SDXL, "slot 'IN09' does not exist"),
])
def test_values_that_do_not_fit_the_model(value, layout, fragment):
    with pytest.raises(BlocksError, match=re.escape(fragment)):
        parse_blocks(value).slot_ratios(layout, 0.5, 0.5)


@pytest.mark.parametrize("value, fragment", [
    ("FOO=1", "unknown slot 'FOO'"),
    ("IN4=1", "unknown slot 'IN4'"),
    ("bogus", "unknown preset 'bogus'"),
    ("IN00=3", "the value of IN00 must be a number in [-1, 2], got '3'"),
    ("IN00=nan", "got 'nan'"),
    ("IN00=x", "got 'x'"),
    ("0.5, 7", "value 2 of the vector must be a number in [-1, 2], got '7'"),
    ("IN00=1, 0.5", "'0.5' is a number among assignments"),
    ("IN00=1,,OUT=0", "an empty item"),
    ("[0.5, 0.5", "is not a JSON list"),
    ({"IN00": 1}, "must be text or a list of numbers"),
    ([0.5, True], "value 2 of the vector"),
])
def test_bad_values_are_refused_naming_the_value(value, fragment):
    with pytest.raises(BlocksError, match=re.escape(fragment)):
        parse_blocks(value)


def test_recipe_refuses_conflicts_and_keeps_the_canonical_text():
    with pytest.raises(RecipeError, match=r"BASE\) = 0.5, and merge_te_ratio = 0.2"):
        MergeRecipe("weighted_sum", "a", "b", te_ratio=0.2, blocks="0.5," * 19 + "0.5")
    with pytest.raises(RecipeError, match="BASE = 0.1"):
        MergeRecipe("weighted_sum", "a", "b", te_ratio=0.2, blocks="BASE=0.1")
    with pytest.raises(RecipeError, match="unknown preset 'nope'"):
        MergeRecipe("weighted_sum", "a", "b", blocks="nope")
    recipe = MergeRecipe("weighted_sum", "a", "b", unet_ratio=0.3, blocks=" in04 = 1 ,base=0")
    assert recipe.blocks == "IN04=1, BASE=0" and recipe.ratio_for("te") == 0.0
    assert MergeRecipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.with_ratios(0.4).blocks == recipe.blocks and recipe.with_ratios(0.4, blocks=None).blocks is None
    assert MergeRecipe("weighted_sum", "a", "b", blocks="flat").blocks is None
    assert "blocks IN04=1, BASE=0" in recipe.describe()
    assert default_merge_name(recipe).startswith("a+b ws0.3 blocks-")
    assert MergeRecipe("weighted_sum", "a", "b", unet_ratio=0.0, blocks="IN04=1").changes_weights()
    # the VAE follows the UNet's ratio: merge_ratio with assignments, BASE with a full vector (unet_ratio unused)
    flat = MergeRecipe("weighted_sum", "a", "b", unet_ratio=0.2, include_vae=True, blocks=",".join(["0.5"] * 26))
    assert flat.group_ratios() == {"unet": 0.2, "te": 0.5, "vae": 0.5}
    sparse = MergeRecipe("weighted_sum", "a", "b", unet_ratio=0.2, include_vae=True, blocks="BASE=0.5, IN04=1")
    assert sparse.group_ratios() == {"unet": 0.2, "te": 0.5, "vae": 0.2}


# --- the engine -------------------------------------------------------------------------------------------

def layout_checkpoint(keys: list[str], te_keys: tuple[str, ...], seed: int) -> dict[str, torch.Tensor]:
    """The real UNet key names with small tensors (a few elements each), plus text-encoder keys."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for i, key in enumerate([*keys, *te_keys]):
        t = torch.randn(3 + i % 4, generator=generator)
        t[0] = -0.0
        out[key] = t.to(torch.float16)
    return out


@pytest.fixture(params=["sd15", "sdxl"])
def models(request, tmp_path):
    keys, tes = (sd15_unet_keys(), (SD15_TE,)) if request.param == "sd15" else (sdxl_unet_keys(), SDXL_TES)
    paths = {}
    for role, seed in (("A", 1), ("B", 2), ("C", 3)):
        paths[role] = write_checkpoint(tmp_path / f"{role}.safetensors", layout_checkpoint(keys, tes, seed))
    return request.param, paths


def live_copy(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(path)


def recipe_for(paths, method="weighted_sum", **kw) -> MergeRecipe:
    return MergeRecipe(method, paths["A"], paths["B"], paths["C"] if method == "add_difference" else None, **kw)


def reference_merge(paths, method, key_ratio) -> dict[str, torch.Tensor]:
    """Key by key, as A1111's merger computes in the live dtype: lerp(A, B, r) / A + r·(B − C) (D rounded to the
    live dtype, the sum in float32 and rounded once: ops.add_difference_into); endpoints copies."""
    a, b, c = live_copy(paths["A"]), live_copy(paths["B"]), live_copy(paths["C"])
    out = {}
    for key, value in a.items():
        r = key_ratio(key)
        if r == 0.0:
            out[key] = value.clone()
        elif method == "weighted_sum":
            out[key] = b[key].clone() if r == 1.0 else torch.lerp(value, b[key], r)
        else:
            difference = (b[key].float() - c[key].float()).to(value.dtype)
            out[key] = torch.add(value.float(), difference.float(), alpha=r).to(value.dtype)
    return out


PLACEMENTS = ["device", "cpu", "mapped"]


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("method", ["weighted_sum", "add_difference"])
def test_flat_vector_is_the_plain_ratio_bit_for_bit(models, placement, method):
    family, paths = models
    n = 26 if family == "sd15" else 20
    plain_live, vector_live = live_copy(paths["A"]), live_copy(paths["A"])
    with InPlaceMerge(recipe_for(paths, method), plain_live, placement=placement) as plain, \
            InPlaceMerge(recipe_for(paths, method), vector_live, placement=placement) as vector:
        for r in (0.3, 1.0, 0.0, -0.5):
            plain.apply(r)
            vector.apply(0.77, blocks=",".join([repr(r)] * n))  # merge_ratio unused by a full vector
            for key in plain_live:
                assert_bits_equal(vector_live[key], plain_live[key], f"{family} {key} r={r}")


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("method", ["weighted_sum", "add_difference"])
def test_each_weight_gets_its_slots_ratio(models, placement, method):
    family, paths = models
    blocks = "IN00-IN03=1, M00=0.5, OUT=0, TIME=0.25, BASE=0.75"
    values = {"M00": 0.5, "TIME": 0.25}

    def key_ratio(key):  # written from the assignment above, not from blocks.py
        if not key.startswith(UNET):
            return 0.75
        slot = reference_slot(key)
        if slot in values:
            return values[slot]
        if slot.startswith("IN") and int(slot[2:]) <= 3:
            return 1.0
        if re.fullmatch(r"OUT\d\d", slot):
            return 0.0
        return 0.3  # merge_ratio

    expected = reference_merge(paths, method, key_ratio)
    live = live_copy(paths["A"])
    recipe = recipe_for(paths, method, unet_ratio=0.3, blocks=blocks)
    with InPlaceMerge(recipe, live, placement=placement) as merge:
        merge.apply_recipe(recipe)
        for key in live:
            assert_bits_equal(live[key], expected[key], key)
        assert merge.applied["te"] == 0.75 and merge.applied["unet"] != merge.applied["unet"]  # NaN: per block
        assert merge.applied_parts["M00"] == 0.5
        assert merge.applied_recipe().part_ratios(merge.layout) == recipe.part_ratios(merge.layout)
    if method == "weighted_sum":  # the saved merge: float32 arithmetic, the same per-key ratios
        saved = merged_state_dict(recipe)
        a, b = live_copy(paths["A"]), live_copy(paths["B"])
        for key in saved:
            r = key_ratio(key)
            assert_bits_equal(saved[key], torch.lerp(a[key].float(), b[key].float(), r).half()
                              if r not in (0.0, 1.0) else (a if r == 0.0 else b)[key], key)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_block_switch_writes_only_that_block_and_restores_exactly(models, placement):
    family, paths = models
    originals = live_copy(paths["A"])
    live = live_copy(paths["A"])
    in04 = [k for k in live if unet_slot(k) == "IN04"]
    recipe = recipe_for(paths, unet_ratio=0.5)
    with InPlaceMerge(recipe, live, placement=placement) as merge:
        merge.apply(0.5, blocks="IN04=0")
        first = merge.last_write
        assert first.tensors == len(live) - len(in04)  # IN04 at 0 is A, which is in place: not written
        snapshot = {k: v.clone() for k, v in live.items()}
        merge.apply(0.5, blocks="IN04=1")
        assert merge.last_write.tensors == len(in04)
        assert merge.last_write.bytes == sum(live[k].numel() * 2 for k in in04)
        assert merge.pending_groups(recipe.with_ratios(0.5, blocks="IN04=1")) == frozenset()
        for key in live:
            if key not in in04:
                assert_bits_equal(live[key], snapshot[key], key)
        merge.apply(0.5, blocks="IN04=0")
        assert merge.last_write.tensors == len(in04)
        merge.apply(0.5)  # the plain ratio: IN04 again, nothing else
        assert merge.last_write.tensors == len(in04)
        merge.restore()
        assert merge.last_write.tensors == len(live)
    for key in live:
        assert_bits_equal(live[key], originals[key], key)


def test_interrupted_block_switch_restores_exactly(models, monkeypatch):
    family, paths = models
    originals, live = live_copy(paths["A"]), live_copy(paths["A"])
    merge = InPlaceMerge(recipe_for(paths), live, placement="mapped")
    with merge:
        merge.apply(0.5, blocks="IN04=0")
        import lib_ext.merge.inplace as inplace
        calls = {"n": 0}
        real = inplace.weighted_sum_into

        def interrupted(*args):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real(*args)

        monkeypatch.setattr(inplace, "weighted_sum_into", interrupted)
        with pytest.raises(KeyboardInterrupt):
            merge.apply(0.5, blocks="IN04=0.7")
        assert merge.applied_parts["IN04"] != merge.applied_parts["IN04"]  # dirty
        monkeypatch.setattr(inplace, "weighted_sum_into", real)
    for key in live:
        assert_bits_equal(live[key], originals[key], key)


def test_bad_blocks_are_refused_before_anything_is_written(models):
    family, paths = models
    originals, live = live_copy(paths["A"]), live_copy(paths["A"])
    wrong_length = "0.5," * (19 if family == "sd15" else 25) + "0.5"
    with pytest.raises(RecipeError, match="values; this model needs"):
        InPlaceMerge(recipe_for(paths, blocks=wrong_length), live)
    with InPlaceMerge(recipe_for(paths), live, placement="mapped") as merge:
        merge.apply(0.4, blocks="IN01=1")
        snapshot = {k: v.clone() for k, v in live.items()}
        for bad in (wrong_length, "IN12=1" if family == "sd15" else "IN09=1"):
            with pytest.raises(RecipeError, match="IN12|IN09|values; this model needs"):
                merge.apply(0.4, blocks=bad)
            for key in live:
                assert_bits_equal(live[key], snapshot[key], key)
    for key in live:
        assert_bits_equal(live[key], originals[key], key)


def test_blocks_need_a_known_unet_layout(tmp_path):
    from tests.merge_fixtures import sd1_checkpoint  # a few keys only: no block layout
    a = write_checkpoint(tmp_path / "a.safetensors", sd1_checkpoint(1))
    b = write_checkpoint(tmp_path / "b.safetensors", sd1_checkpoint(2))
    with pytest.raises(RecipeError, match="cannot be merged per block"):
        merged_state_dict(MergeRecipe("weighted_sum", a, b, blocks="IN00=1"))
    merged_state_dict(MergeRecipe("weighted_sum", a, b))  # a plain merge still works


@pytest.mark.parametrize("method", ["weighted_sum", "add_difference"])
def test_reforge_patches_per_part_match_the_in_place_merge(models, method):
    family, paths = models
    recipe = recipe_for(paths, method, unet_ratio=0.3, blocks="gradient-up, M00=0.5")
    live = live_copy(paths["A"])
    with InPlaceMerge(recipe, live, placement="mapped") as merge:
        merge.apply_recipe(recipe)
        patch_merge = PatchMerge(recipe)
        try:
            ratios = patch_merge.part_ratios(recipe)
            a = live_copy(paths["A"])
            seen = set()
            for group in patch_merge.groups:
                for part, patches in patch_merge.file_patches_by_part(group, {k: torch.float16 for k in a}).items():
                    for key, patch in patches.items():
                        seen.add(key)
                        assert_bits_equal(reforge_weight(a[key], patch, ratios[part]), live[key], key)
            assert seen == set(a)
        finally:
            patch_merge.close()


def test_cli_blocks_and_saved_metadata(models, tmp_path, capsys):
    import json

    from safetensors import safe_open

    from lib_ext.merge.cli import main
    family, paths = models
    out = tmp_path / "out"
    out.mkdir()
    assert main([paths["A"], paths["B"], "--ratio", "0.25", "--blocks", "IN04=1, out=0", "--out-dir", str(out),
                 "--no-progress"]) == 0
    path = capsys.readouterr().out.strip()
    assert "blocks-" in path
    a, b = live_copy(paths["A"]), live_copy(paths["B"])
    with safe_open(path, "pt") as file:
        recipe = json.loads(file.metadata()["uncond_lab_merge_recipe"])
        assert recipe["blocks"] == "IN04=1, OUT=0" and recipe["unet_ratio"] == 0.25
        for key in file.keys():
            slot = reference_slot(key) if key.startswith(UNET) else "BASE"
            expected = {"IN04": b[key]}.get(slot, a[key] if re.fullmatch(r"OUT\d\d", slot) else None)
            if expected is None:
                expected = torch.lerp(a[key].float(), b[key].float(), 0.25).half()
            assert_bits_equal(file.get_tensor(key), expected, key)
    wrong = "0.5," * (19 if family == "sd15" else 25) + "0.5"
    assert main([paths["A"], paths["B"], "--ratio", "0.5", "--blocks", wrong, "--out-dir", str(out)]) == 2
    assert "values; this model needs" in capsys.readouterr().err
    assert main([paths["A"], paths["B"], "--ratio", "0.5", "--blocks", "IN04=9", "--out-dir", str(out)]) == 2
    assert "got '9'" in capsys.readouterr().err


# --- ComfyUI's argument names ---------------------------------------------------------------------------------

# ModelMergeSDXL's and ModelMergeSD1's arguments in their INPUT_TYPES order, spelled as ComfyUI spells them
# (comfy_extras/nodes_model_merging_model_specific.py, ComfyUI v0.8.0): SDXL's numbered names have no trailing dot.
SDXL_NODE = ("time_embed.", "label_emb.", *(f"input_blocks.{i}" for i in range(9)),
             *(f"middle_block.{i}" for i in range(3)), *(f"output_blocks.{i}" for i in range(9)), "out.")
SD1_NODE = ("time_embed.", "label_emb.", *(f"input_blocks.{i}." for i in range(12)),
            *(f"middle_block.{i}." for i in range(3)), *(f"output_blocks.{i}." for i in range(12)), "out.")


def comfy_model1_share(arguments: dict[str, float], key: str) -> float:
    """ComfyUI's ModelMergeBlocks.merge written out again from comfy_extras/nodes_model_merging.py (independently of
    blocks.py): the longest argument the key (without 'diffusion_model.') starts with, else the first argument."""
    k_unet = key[len(UNET):]
    ratio = next(iter(arguments.values()))
    last_arg_size = 0
    for arg in arguments:
        if k_unet.startswith(arg) and last_arg_size < len(arg):
            ratio = arguments[arg]
            last_arg_size = len(arg)
    return ratio


def node_values(names, middle=0.5) -> dict[str, float]:
    """Every argument a different value (the three middle ones equal: Uncond Lab has one middle slot)."""
    return {name: middle if name.startswith("middle_block") else round(0.01 + i / 40, 4)
            for i, name in enumerate(names)}


COMFY_CASES = [
    ("sdxl", {"input": 0.3, "middle": 1.0, "out": 0.7}),  # ModelMergeBlocks: input also covers time/label
    ("sdxl", {"out": 0.2, "input": 0.9, "middle": 0.4}),  # API input order: the first argument is the default
    ("sdxl", node_values(SDXL_NODE)),
    ("sdxl", {"input_blocks.4": 0.2, "out.": 0.9}),  # a partial set: everything else takes the first value
    ("sd15", {"input": 0.25, "middle": 0.0, "out": 1.0}),
    ("sd15", node_values(SD1_NODE)),
    ("sd15", {"input_blocks.1.": 0.1, "input": 0.6, "middle": 0.6, "out": 0.4}),  # block 1 is not 10, 11
    ("sd15", {"middle": 0.5, "time_embed.": 0.0, "out.": 1.0}),
]


@pytest.mark.parametrize("family, arguments", COMFY_CASES)
def test_comfy_names_give_every_real_unet_key_comfyuis_share(family, arguments):
    keys = sd15_unet_keys() if family == "sd15" else sdxl_unet_keys()
    layout = BlockLayout.from_keys(keys)
    text = ", ".join(f"{name}={value}" for name, value in arguments.items())
    weights = parse_blocks(text)
    assert weights.sets_every_unet_slot and weights.base is None
    ratios = weights.slot_ratios(layout, 0.123, 0.5)  # merge_ratio is not used by the UNet
    assert ratios["BASE"] == 0.5
    for key in keys:
        assert ratios[unet_slot(key)] == 1.0 - comfy_model1_share(arguments, key), key  # B's share, exactly
    # the canonical text keeps ComfyUI's names (ModelMergeSDXL's spelling), values and order
    assert [name for name, _ in weights.comfy] == [name.rstrip(".") if name[-2].isdigit() else name
                                                   for name in arguments]
    assert parse_blocks(weights.text) == weights and [v for _, v in weights.comfy] == list(arguments.values())


def test_comfy_block_examples():
    ratios = parse_blocks("input=0.3, middle=1, out=0.7").slot_ratios(SDXL, 0.5, 0.5)
    assert ratios["TIME"] == ratios["LABEL"] == ratios["IN08"] == 1.0 - 0.3
    assert ratios["M00"] == 0.0 and ratios["OUT00"] == ratios["OUT_FINAL"] == 1.0 - 0.7
    assert parse_blocks(" Input = 0.3 ,MIDDLE=1, out=0.7").text == "input=0.3, middle=1, out=0.7"
    # `out.` is the final layer alone; `out` (ModelMergeBlocks) the whole output side
    final = parse_blocks("input=1, out.=0").slot_ratios(SD15, 0.5, 0.5)
    assert final["OUT_FINAL"] == 1.0 and final["OUT11"] == 0.0 and final["M00"] == 0.0
    # equal middle values are one M00
    middle = parse_blocks("input=0.1, middle_block.0=0.5, middle_block.1=0.5, middle_block.2.=0.5")
    assert middle.slot_ratios(SDXL, 0, 0)["M00"] == 0.5
    assert middle.text == "input=0.1, middle_block.0=0.5, middle_block.1=0.5, middle_block.2=0.5"
    assert parse_blocks("time_embed=0.2, label_emb.=0.4").text == "time_embed.=0.2, label_emb.=0.4"
    # `out` alone is still Uncond Lab's OUT group (B's share), as before ComfyUI names were accepted
    assert parse_blocks("out=0.7").items == (("OUT", 0.7),) and parse_blocks("IN04=1, out=0").text == "IN04=1, OUT=0"


@pytest.mark.parametrize("value, fragment", [
    ("input=0.3, middle_block.0=0.5", "gives middle_block.0/1/2 the values 0.5, 0.3, 0.3"),
    ("middle=1, middle_block.1=0.5", "values 1, 0.5, 1"),
    ("input=0.5, IN04=1", "'IN04=1' is not a ComfyUI argument"),
    ("IN04=1, input=0.5", "'IN04=1' is not a ComfyUI argument"),
    ("input=0.5, gradient-up", "'gradient-up' is not a ComfyUI argument"),
    ("input=0.5, BASE=0", "'BASE=0' is not a ComfyUI argument"),
    ("input=0.5, input=0.6", "'input' is named twice"),
    ("time_embed=0.5, time_embed.=0.2", "'time_embed.' is named twice"),
    ("input=3", "the value of input must be a number in [-1, 2], got '3'"),
    ("input_blocks.12=1", "unknown slot 'input_blocks.12'"),
    ("middle_block.3=1", "or ComfyUI's argument names alone"),
    ("input_blocks.0-input_blocks.3=1", "unknown slot"),
])
def test_bad_comfy_values_are_refused_naming_the_value(value, fragment):
    with pytest.raises(BlocksError, match=re.escape(fragment)):
        parse_blocks(value)


def test_comfy_names_through_the_engine_and_settings(models):
    from lib_ext.settings import Settings
    family, paths = models
    arguments = {"input": 0.3, "middle": 1.0, "out": 0.7}
    expected = reference_merge(paths, "weighted_sum", lambda key: 1.0 - comfy_model1_share(arguments, key)
                               if key.startswith(UNET) else 0.0)
    recipe = recipe_for(paths, unet_ratio=0.0, te_ratio=0.0, include_vae=False, blocks="input=0.3, middle=1, out=0.7")
    live = live_copy(paths["A"])
    with InPlaceMerge(recipe, live, placement="mapped") as merge:
        merge.apply_recipe(recipe)
        for key in live:
            assert_bits_equal(live[key], expected[key], key)
    settings = Settings.from_dict({"merge_model": "b", "merge_blocks": "Input=0.3,middle=1 , out=0.7",
                                   "merge_te_ratio": 0})
    assert settings.merge_blocks == "input=0.3, middle=1, out=0.7"
    # merge_ratio is the VAE's when it follows the UNet: 0 keeps A's VAE, as ComfyUI's merge nodes do
    with_vae = MergeRecipe("weighted_sum", "a", "b", unet_ratio=0.0, te_ratio=0.0, include_vae=True,
                           blocks=settings.merge_blocks)
    assert with_vae.group_ratios() == {"unet": 0.0, "te": 0.0, "vae": 0.0}
