"""plan_merge: compatible inputs give a plan; incompatible ones are refused naming the first offending key."""
import pytest
import torch

from lib_ext.merge.recipe import MergeRecipe
from lib_ext.merge.sources import (IncompatibleModelsError, MergeInputError, MergeInputs, SafetensorsSource,
                                   plan_merge)
from merge_fixtures import sd1_checkpoint, sdxl_checkpoint, write_checkpoint


def files(tmp_path, **checkpoints):
    return {role: write_checkpoint(tmp_path / f"{role}.safetensors", tensors) for role, tensors in checkpoints.items()}


def plan(tmp_path, method="weighted_sum", include_vae=False, metadata=None, **checkpoints):
    paths = {}
    for role, tensors in checkpoints.items():
        paths[role] = write_checkpoint(tmp_path / f"{role}.safetensors", tensors, (metadata or {}).get(role))
    recipe = MergeRecipe(method, paths["a"], paths["b"], paths.get("c"), 0.5, include_vae=include_vae)
    inputs = MergeInputs.open(recipe)
    try:
        return plan_merge(recipe, inputs)
    finally:
        inputs.close()


def test_sd1_plan_groups_and_copied_keys(tmp_path):
    result = plan(tmp_path, a=sd1_checkpoint(0), b=sd1_checkpoint(1))
    assert result.groups == ("unet", "te")
    assert result.keys_of("unet") == sorted(k for k in sd1_checkpoint(0) if k.startswith("model.diffusion_model."))
    assert result.group_of("cond_stage_model.transformer.text_model.final_layer_norm.weight") == "te"
    copied = result.copied_keys()
    assert "first_stage_model.decoder.conv_out.weight" in copied  # VAE not asked for
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in copied
    assert {"alphas_cumprod", "model_ema.decay"} <= set(copied)
    assert result.prediction_type == "EPS"


def test_vae_merged_only_when_asked(tmp_path):
    result = plan(tmp_path, include_vae=True, a=sd1_checkpoint(0), b=sd1_checkpoint(1))
    assert result.groups == ("unet", "te", "vae")


def test_mixed_float_dtypes_are_compatible(tmp_path):
    result = plan(tmp_path, a=sd1_checkpoint(0, torch.float16), b=sd1_checkpoint(1, torch.bfloat16))
    assert result.specs["model.diffusion_model.out.2.weight"].dtype == torch.float16  # A's layout


def test_sd1_with_sdxl_names_first_key(tmp_path):
    with pytest.raises(IncompatibleModelsError) as error:
        plan(tmp_path, a=sd1_checkpoint(0), b=sdxl_checkpoint(1))
    message = str(error.value)
    assert "A = a.safetensors (SD1.x, EPS), B = b.safetensors (SDXL, EPS)" in message
    # the UNet is checked first; in sorted order its first key not in both is the SD1 fixture's input bias
    assert "'model.diffusion_model.input_blocks.0.0.bias' is in A but not in B" in message


def test_missing_text_encoder_key_named(tmp_path):
    b = sd1_checkpoint(1)
    del b["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    with pytest.raises(IncompatibleModelsError,
                       match="'cond_stage_model.transformer.text_model.final_layer_norm.weight' is in A but not in B"):
        plan(tmp_path, a=sd1_checkpoint(0), b=b)


def test_shape_mismatch_named(tmp_path):
    b = sd1_checkpoint(1)
    b["model.diffusion_model.out.2.weight"] = torch.zeros(4, 8, 1, 1, dtype=torch.float16)
    with pytest.raises(IncompatibleModelsError, match=r"'model.diffusion_model.out.2.weight' has shape "
                                                      r"\[4, 8, 3, 3\] in A but \[4, 8, 1, 1\] in B"):
        plan(tmp_path, a=sd1_checkpoint(0), b=b)


def test_inpainting_refused_either_way(tmp_path):
    for a, b in ((sd1_checkpoint(0, inpainting=True), sd1_checkpoint(1)),
                 (sd1_checkpoint(0), sd1_checkpoint(1, inpainting=True))):
        with pytest.raises(IncompatibleModelsError) as error:
            plan(tmp_path, a=a, b=b)
        assert "'model.diffusion_model.input_blocks.0.0.weight' has shape" in str(error.value)
        assert "inpainting" in str(error.value)


def test_prediction_marker_presence(tmp_path):
    with pytest.raises(IncompatibleModelsError) as error:
        plan(tmp_path, a=sdxl_checkpoint(0, v_pred=True), b=sdxl_checkpoint(1))
    assert "(SDXL, V)" in str(error.value) and "(SDXL, EPS)" in str(error.value)
    assert "prediction-type marker key 'v_pred' is in A but not in B" in str(error.value)
    with pytest.raises(IncompatibleModelsError, match="marker key 'ztsnr' is in B but not in A"):
        plan(tmp_path, a=sdxl_checkpoint(0, v_pred=True), b=sdxl_checkpoint(1, v_pred=True, ztsnr=True))


def test_prediction_marker_values(tmp_path):
    a, b = sdxl_checkpoint(0), sdxl_checkpoint(1)
    a["edm_vpred.sigma_max"], b["edm_vpred.sigma_max"] = torch.tensor(80.0), torch.tensor(120.0)
    with pytest.raises(IncompatibleModelsError, match="marker key 'edm_vpred.sigma_max' differs between A and B"):
        plan(tmp_path, a=a, b=b)
    b["edm_vpred.sigma_max"] = torch.tensor(80.0)
    assert plan(tmp_path, a=a, b=b).prediction_type == "V_EDM"


def test_markers_checked_against_c(tmp_path):
    with pytest.raises(IncompatibleModelsError, match="'v_pred' is in A but not in C"):
        plan(tmp_path, "add_difference", a=sdxl_checkpoint(0, v_pred=True), b=sdxl_checkpoint(1, v_pred=True),
             c=sdxl_checkpoint(2))


def test_modelspec_prediction_type(tmp_path):
    metadata = {"a": {"modelspec.prediction_type": "v"}, "b": {"modelspec.prediction_type": "epsilon"}}
    with pytest.raises(IncompatibleModelsError,
                       match="metadata 'modelspec.prediction_type' is 'v' in A but 'epsilon' in B"):
        plan(tmp_path, metadata=metadata, a=sdxl_checkpoint(0), b=sdxl_checkpoint(1))
    plan(tmp_path, metadata={"a": {"modelspec.prediction_type": "v"}}, a=sdxl_checkpoint(0), b=sdxl_checkpoint(1))


def test_lora_like_a_refused(tmp_path):
    lora = {"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 2)}
    with pytest.raises(MergeInputError, match="A = a.safetensors has no UNet, text-encoder or VAE keys"):
        plan(tmp_path, a=lora, b=sd1_checkpoint(1))


def test_vae_asked_but_absent(tmp_path):
    a = {k: v for k, v in sd1_checkpoint(0).items() if not k.startswith("first_stage_model.")}
    b = {k: v for k, v in sd1_checkpoint(1).items() if not k.startswith("first_stage_model.")}
    with pytest.raises(MergeInputError, match="include_vae is set but A = a.safetensors has no VAE"):
        plan(tmp_path, include_vae=True, a=a, b=b)


def test_integer_tensor_against_float_refused(tmp_path):
    b = sd1_checkpoint(1)
    b["model.diffusion_model.input_blocks.0.0.bias"] = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(IncompatibleModelsError,
                       match="'model.diffusion_model.input_blocks.0.0.bias' is torch.float16 in A"):
        plan(tmp_path, a=sd1_checkpoint(0), b=b)


def test_method_needs_c_exactly_for_add_difference(tmp_path):
    paths = files(tmp_path, a=sd1_checkpoint(0), b=sd1_checkpoint(1), c=sd1_checkpoint(2))
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"])
    inputs = MergeInputs(SafetensorsSource(paths["a"]), SafetensorsSource(paths["b"]), SafetensorsSource(paths["c"]))
    with pytest.raises(MergeInputError, match="weighted_sum takes A and B, got a model C"):
        plan_merge(recipe, inputs)


def test_source_errors(tmp_path):
    with pytest.raises(MergeInputError, match="not a .safetensors file"):
        SafetensorsSource(tmp_path / "model.ckpt")
    with pytest.raises(MergeInputError, match="does not exist"):
        SafetensorsSource(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(MergeInputError, match="cannot read .*broken.safetensors"):
        SafetensorsSource(broken)


def test_source_reads_rows_lazily(tmp_path):
    tensors = sd1_checkpoint(0)
    source = SafetensorsSource(write_checkpoint(tmp_path / "a.safetensors", tensors, {"k": "v"}))
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert source.specs[key].shape == (40, 8) and source.specs[key].dtype == torch.float16
    assert source.metadata == {"k": "v"}
    assert torch.equal(source.rows(key, 5, 9), tensors[key][5:9])
    assert torch.equal(source.tensor(key), tensors[key])
