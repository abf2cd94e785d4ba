"""PatchMerge: reForge-style weight patches, checked against what reForge computes from them (float32, then a
cast) and against save_merge's file: exact endpoints, r = 0.5 exact where B − A is, one ulp elsewhere."""
import pytest
import torch

from lib_ext.merge.recipe import MergeRecipe
from lib_ext.merge.save import merged_state_dict
from lib_ext.merge.patches import PATCH_DIFF, PATCH_SET, PatchMerge, patch_kind, reforge_weight
from merge_fixtures import assert_bits_equal, sd1_checkpoint, write_checkpoint

A, B, C = sd1_checkpoint(0), sd1_checkpoint(1), sd1_checkpoint(2)
GROUPS = ("unet", "te", "vae")


@pytest.fixture()
def paths(tmp_path):
    return {role: write_checkpoint(tmp_path / f"{role}.safetensors", tensors)
            for role, tensors in (("a", A), ("b", B), ("c", C))}


def patched_model(merge: PatchMerge, ratios: dict, live: dict) -> dict:
    """Every merged weight as reForge would load it with the merge's patches (and nothing else)."""
    out = {}
    for group in merge.groups:
        kind, tensors = merge.patches(group, ratios[group])
        for key in merge.plan.keys_of(group):
            patches = [] if kind is None else [(ratios[group], kind, tensors[key])]
            out[key] = reforge_weight(live[key], patches)
    return out


def test_patch_kinds():
    assert patch_kind("weighted_sum", 0.0) is None and patch_kind("add_difference", 0.0) is None
    assert patch_kind("weighted_sum", 1.0) == PATCH_SET
    assert patch_kind("add_difference", 1.0) == PATCH_DIFF and patch_kind("weighted_sum", 0.3) == PATCH_DIFF


@pytest.mark.parametrize("live_dtype", [torch.float16, torch.float32])
def test_endpoints_are_model_a_and_model_b_exactly(paths, live_dtype):
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], include_vae=True)
    live = {k: v.to(live_dtype) for k, v in A.items()}
    merge = PatchMerge(recipe, {g: live_dtype for g in GROUPS})
    for ratio, expected in ((0.0, A), (1.0, B)):
        for key, value in patched_model(merge, {g: ratio for g in GROUPS}, live).items():
            assert_bits_equal(value, expected[key].to(live_dtype), key)  # -0.0 entries included
    merge.close()


def test_half_way_matches_the_saved_file_where_the_difference_is_exact(paths):
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.5, include_vae=True)
    live = {k: v.float() for k, v in A.items()}  # reForge with --no-half: float32 weights from float16 files
    patched = patched_model(PatchMerge(recipe, {g: torch.float32 for g in GROUPS}), {g: 0.5 for g in GROUPS}, live)
    saved = merged_state_dict(recipe, output_dtype=torch.float32)
    for key, value in patched.items():
        a, b = A[key].double(), B[key].double()
        exact = (b - a).float().double() == (b - a)  # B − A representable in float32 (exact in float64)
        assert torch.equal(value[exact], saved[key][exact]), key
        ulp = torch.finfo(torch.float32).eps * saved[key].abs().clamp_min(torch.finfo(torch.float32).tiny)
        assert ((value - saved[key]).abs() <= ulp).all(), key


def test_add_difference_at_one_matches_the_saved_file(paths):
    recipe = MergeRecipe("add_difference", paths["a"], paths["b"], paths["c"], unet_ratio=1.0)
    live = {k: v.float() for k, v in A.items()}
    merge = PatchMerge(recipe, {"unet": torch.float32, "te": torch.float32})
    assert merge.groups == ("unet", "te")  # the VAE is not merged without include_vae
    patched = patched_model(merge, {"unet": 1.0, "te": 1.0}, live)
    saved = merged_state_dict(recipe, output_dtype=torch.float32)
    for key, value in patched.items():
        assert_bits_equal(value, saved[key], key)  # A + 1·D: one rounding, as torch.add(A, D, alpha=1)


def test_differences_are_kept_in_the_live_dtype_and_b_read_on_demand(paths):
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"])
    merge = PatchMerge(recipe, {"unet": torch.float16, "te": torch.float8_e4m3fn, "vae": torch.float32})
    assert merge.groups == ("unet", "te")
    merge.prepare()
    assert {t.dtype for t in merge.differences("unet").values()} == {torch.float16}
    assert {t.dtype for t in merge.differences("te").values()} == {torch.float16}  # float8 storage: float16
    before = merge.resident_bytes()
    kind, b = merge.patches("unet", 1.0)
    assert kind == PATCH_SET and merge.resident_bytes() == before + sum(t.nbytes for t in b.values())
    for key, value in b.items():
        assert_bits_equal(value, B[key], key)
    merge.close()
    assert merge.resident_bytes() == 0


def test_incompatible_inputs_are_refused_before_anything_is_read(paths, tmp_path):
    from lib_ext.merge.sources import IncompatibleModelsError
    inpainting = write_checkpoint(tmp_path / "inpaint.safetensors", sd1_checkpoint(3, inpainting=True))
    with pytest.raises(IncompatibleModelsError, match="input_blocks.0.0.weight"):
        PatchMerge(MergeRecipe("weighted_sum", paths["a"], inpainting), {"unet": torch.float16})


def test_widest_dtype():
    from lib_ext.merge.patches import widest_dtype
    tensors = [torch.zeros(1, dtype=torch.float16), torch.zeros(1, dtype=torch.float32), torch.zeros(1, dtype=torch.int64)]
    assert widest_dtype(tensors) == torch.float32
    assert widest_dtype([torch.zeros(1, dtype=torch.bfloat16)]) == torch.bfloat16
    assert widest_dtype([]) == torch.float32


def test_a_weight_hidden_behind_a_wrapper_is_patched_under_both_names():
    from lib_ext.merge.patches import with_wrapped_aliases
    token = torch.ones(2)
    tensors = {"clip_l.transformer.text_model.embeddings.token_embedding.weight": token,
               "clip_l.transformer.text_model.final_layer_norm.weight": torch.zeros(2)}
    live = {"clip_l.transformer.text_model.embeddings.token_embedding.weight",
            "clip_l.transformer.text_model.embeddings.token_embedding.wrapped.weight",
            "clip_l.transformer.text_model.final_layer_norm.weight"}
    out = with_wrapped_aliases(tensors, live)
    assert set(out) == live and out["clip_l.transformer.text_model.embeddings.token_embedding.wrapped.weight"] is token
    assert with_wrapped_aliases(tensors, set(tensors)) == tensors  # no wrapper: unchanged
