"""PatchMerge: reForge weight patches computed from the mapped files, checked against what reForge computes from
them (a float32 working copy, the adapter, a cast back) and against the A1111 engine: the same weights bit for
bit at every ratio, nothing read into memory beforehand."""
import pytest
import torch

from lib_ext.merge.inplace import InPlaceMerge
from lib_ext.merge.keys import classify_key
from lib_ext.merge.patches import PatchMerge, reforge_weight
from lib_ext.merge.recipe import MergeRecipe
from lib_ext.merge.sources import MergeInputError
from merge_fixtures import assert_bits_equal, sd1_checkpoint, write_checkpoint

A, B, C = sd1_checkpoint(0), sd1_checkpoint(1), sd1_checkpoint(2)
RATIOS = (0.0, 0.3, 0.5, 1.0, -0.25, 1.5)


@pytest.fixture()
def paths(tmp_path):
    return {role: write_checkpoint(tmp_path / f"{role}.safetensors", tensors)
            for role, tensors in (("a", A), ("b", B), ("c", C))}


def recipe(paths, method, **kw):
    c = (paths["c"],) if method == "add_difference" else ()
    return MergeRecipe(method, paths["a"], paths["b"], *c, include_vae=True, **kw)


def patched_model(merge: PatchMerge, ratio: float, live: dict) -> dict:
    """Every merged weight as reForge would load it with the merge's patches (and nothing else)."""
    out = {}
    for group in merge.groups:
        patches = merge.file_patches(group, {k: v.dtype for k, v in live.items()})
        for key, patch in patches.items():
            out[key] = reforge_weight(live[key], None if ratio == 0.0 else patch, ratio)
    return out


@pytest.mark.parametrize("method", ["weighted_sum", "add_difference"])
@pytest.mark.parametrize("live_dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1 << 22, 64])
def test_every_ratio_gives_the_a1111_engines_weights(paths, method, live_dtype, chunk, monkeypatch):
    """reForge's float32 working copy, our adapter, its cast back == A1111's in-place switch in the live dtype;
    also when the patch works through a weight in pieces (chunk 64)."""
    monkeypatch.setattr("lib_ext.merge.ops.CHUNK_ELEMENTS", chunk)
    live = {k: v.to(live_dtype) for k, v in A.items() if classify_key(k) != "other"}
    merge = PatchMerge(recipe(paths, method))
    engine_model = {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in live.items()}
    with InPlaceMerge(recipe(paths, method), engine_model, placement="device") as engine:
        for ratio in RATIOS:
            engine.apply(ratio, ratio, ratio)
            for key, value in patched_model(merge, ratio, live).items():
                assert_bits_equal(value, engine_model[key].detach(), f"{key} at {ratio}")
    merge.close()


def test_endpoints_are_model_a_and_model_b_exactly(paths):
    live = {k: v.float() for k, v in A.items() if classify_key(k) != "other"}
    merge = PatchMerge(recipe(paths, "weighted_sum"))
    for ratio, expected in ((0.0, A), (1.0, B)):
        for key, value in patched_model(merge, ratio, live).items():
            assert_bits_equal(value, expected[key].float(), key)  # -0.0 entries included


def test_patches_are_views_of_the_files_in_each_weights_own_dtype(paths):
    merge = PatchMerge(recipe(paths, "add_difference"))
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    patches = merge.file_patches("unet", {"diffusion_model.middle_block.1.proj_in.weight": torch.float16},
                                 lambda t: {k.replace("model.diffusion_model.", "diffusion_model."): v
                                            for k, v in t.items()})
    patch = patches["diffusion_model.middle_block.1.proj_in.weight"]
    assert patch.b.data_ptr() == merge.inputs.b.view(key).data_ptr()  # no copy: the mapped file's bytes
    assert patch.c.data_ptr() == merge.inputs.c.view(key).data_ptr()
    assert patch.live_dtype == torch.float16
    assert patches["diffusion_model.out.2.weight"].live_dtype == torch.float32  # a key the host did not list
    merge.close()


def test_an_input_rewritten_in_place_is_refused(paths):
    merge = PatchMerge(recipe(paths, "weighted_sum"))
    merge.check_unchanged()
    with open(paths["b"], "r+b") as file:
        file.seek(0, 2)
        file.write(b" ")
    with pytest.raises(MergeInputError, match="b.safetensors' was rewritten"):
        merge.check_unchanged()
    merge.close()


def test_incompatible_inputs_are_refused_before_anything_is_read(paths, tmp_path):
    from lib_ext.merge.sources import IncompatibleModelsError
    inpainting = write_checkpoint(tmp_path / "inpaint.safetensors", sd1_checkpoint(3, inpainting=True))
    with pytest.raises(IncompatibleModelsError, match="input_blocks.0.0.weight"):
        PatchMerge(MergeRecipe("weighted_sum", paths["a"], inpainting))


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


def test_patches_made_in_a_generation_serve_a_probe_outside_inference_mode(paths):
    """reForge patches under inference_mode (a generation) and under no_grad only (a probe, the sweep route): the
    reused cast buffers must serve both, in either order (found in reForge: a probe of a merge after a merged
    generation failed with 'Inplace update to inference tensor outside InferenceMode')."""
    live = {k: v.to(torch.float16) for k, v in A.items() if classify_key(k) != "other"}
    merge = PatchMerge(recipe(paths, "weighted_sum"))
    with torch.inference_mode():
        in_generation = patched_model(merge, 0.5, live)
    outside = patched_model(merge, 0.5, live)
    for key, value in in_generation.items():
        assert_bits_equal(outside[key], value, key)
    merge.close()
