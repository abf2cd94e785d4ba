import pytest

from lib_ext.merge.keys import (OTHER, TEXT_ENCODER, UNET, VAE, architecture_of, classify_key, is_prediction_marker,
                                prediction_type_of)


@pytest.mark.parametrize("key, group", [
    ("model.diffusion_model.input_blocks.0.0.weight", UNET),
    ("model.diffusion_model.out.2.bias", UNET),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", TEXT_ENCODER),  # SD1
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", TEXT_ENCODER),       # SD2
    ("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias", TEXT_ENCODER),     # SDXL CLIP-L
    ("conditioner.embedders.1.model.text_projection", TEXT_ENCODER),                            # SDXL CLIP-G
    ("first_stage_model.decoder.conv_out.weight", VAE),
    # never merged:
    ("cond_stage_model.transformer.text_model.embeddings.position_ids", OTHER),
    ("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", OTHER),
    ("model_ema.diffusion_modelinput_blocks00weight", OTHER),
    ("model_ema.decay", OTHER),
    ("alphas_cumprod", OTHER), ("betas", OTHER), ("logvar", OTHER), ("denoiser.sigmas", OTHER),
    ("v_pred", OTHER), ("ztsnr", OTHER), ("edm_mean", OTHER), ("edm_std", OTHER), ("edm_vpred.sigma_max", OTHER),
    # a prefix must match at the start, with its dot:
    ("lora_unet_model.diffusion_model.x", OTHER),
    ("model.diffusion_modelx.weight", OTHER),
    ("first_stage_model_ema.weight", OTHER),
])
def test_classify_key(key, group):
    assert classify_key(key) == group


@pytest.mark.parametrize("key, marker", [
    ("v_pred", True), ("ztsnr", True), ("edm_mean", True), ("edm_std", True), ("edm_vpred.sigma_max", True),
    ("edm_vpred.sigma_min", True), ("alphas_cumprod", False), ("model.diffusion_model.v_pred", False),
])
def test_is_prediction_marker(key, marker):
    assert is_prediction_marker(key) is marker


def test_prediction_type_follows_reforge_order():
    # reForge supported_models.SDXL.model_type: EDM before V_EDM before V; ztsnr only qualifies V.
    assert prediction_type_of([]) == "EPS"
    assert prediction_type_of(["v_pred"]) == "V"
    assert prediction_type_of(["v_pred", "ztsnr"]) == "V (ztsnr)"
    assert prediction_type_of(["edm_vpred.sigma_max", "v_pred"]) == "V_EDM"
    assert prediction_type_of(["edm_mean", "edm_std", "v_pred"]) == "EDM"
    assert prediction_type_of(["ztsnr"]) == "EPS"


def test_architecture_of():
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    assert architecture_of([unet, "conditioner.embedders.1.model.ln_final.weight"]) == "SDXL"
    assert architecture_of([unet, "conditioner.embedders.0.model.ln_final.weight"]) == "SDXL refiner"
    assert architecture_of([unet, "cond_stage_model.model.ln_final.weight"]) == "SD2.x"
    assert architecture_of([unet, "cond_stage_model.transformer.text_model.final_layer_norm.weight"]) == "SD1.x"
    assert architecture_of([unet]) == "UNet-only"
    assert architecture_of(["lora_unet_down.alpha"]) == "unknown"
    sd1 = [unet, "cond_stage_model.transformer.x"]
    assert architecture_of(sd1, {unet: (320, 9, 3, 3)}) == "SD1.x inpainting"
    assert architecture_of(sd1, {unet: (320, 8, 3, 3)}) == "SD1.x instruct-pix2pix"
    assert architecture_of(sd1, {unet: (320, 4, 3, 3)}) == "SD1.x"
