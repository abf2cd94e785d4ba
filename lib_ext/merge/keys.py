"""Which part of an A1111-style single-file checkpoint a key belongs to, and which keys mark its prediction type.

Layouts (SD1.x, SD2.x, SDXL, as the WebUIs save them):
    UNet            model.diffusion_model.*
    text encoders   cond_stage_model.* (SD1/SD2), conditioner.embedders.<i>.* (SDXL)
    VAE             first_stage_model.*
    other           everything else: model_ema.*, alphas_cumprod, betas, logvar, denoiser.*, *.position_ids,
                    and the prediction-type marker keys read by reForge/ComfyUI (`v_pred`, `ztsnr`, `edm_*`).
"Other" keys are never merged: a merge copies them from model A.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

UNET, TEXT_ENCODER, VAE, OTHER = "unet", "te", "vae", "other"
MERGEABLE_GROUPS: tuple[str, ...] = (UNET, TEXT_ENCODER, VAE)
GROUP_LABELS = {UNET: "UNet", TEXT_ENCODER: "text encoders", VAE: "VAE", OTHER: "other keys"}

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", UNET),
    ("cond_stage_model.", TEXT_ENCODER),
    ("conditioner.embedders.", TEXT_ENCODER),
    ("first_stage_model.", VAE),
)

# reForge/ComfyUI `supported_models.SDXL.model_type` reads these top-level keys to pick EPS/V/EDM sampling.
PREDICTION_MARKER_KEYS: tuple[str, ...] = (
    "v_pred", "ztsnr", "edm_mean", "edm_std", "edm_vpred.sigma_max", "edm_vpred.sigma_min",
)
# Safetensors metadata that states the prediction type (Stability's ModelSpec).
PREDICTION_METADATA_KEYS: tuple[str, ...] = ("modelspec.prediction_type",)

UNET_INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def classify_key(key: str) -> str:
    """The group of a checkpoint key: 'unet', 'te', 'vae' or 'other' (see the module docstring)."""
    if key.endswith("position_ids"):
        return OTHER  # an index buffer, not a weight; the A1111 merger skips it too (extras.py)
    for prefix, group in _PREFIXES:
        if key.startswith(prefix):
            return group
    return OTHER


def is_prediction_marker(key: str) -> bool:
    return key in PREDICTION_MARKER_KEYS or key.startswith("edm_vpred.")


def architecture_of(keys: Iterable[str], shapes: Mapping[str, Sequence[int]] | None = None) -> str:
    """A human name for the family of a checkpoint, from its keys (for error messages only)."""
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        name = "SDXL"
    elif any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        name = "SDXL refiner"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        name = "SD2.x"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        name = "SD1.x"
    elif any(k.startswith("model.diffusion_model.") for k in keys):
        name = "UNet-only"
    else:
        name = "unknown"
    in_channels = (shapes or {}).get(UNET_INPUT_CONV)
    if in_channels is not None and len(in_channels) > 1:
        name += {9: " inpainting", 8: " instruct-pix2pix"}.get(int(in_channels[1]), "")
    return name


def prediction_type_of(keys: Iterable[str]) -> str:
    """reForge's reading of the marker keys: 'EDM', 'V_EDM', 'V (ztsnr)', 'V' or 'EPS' (for messages only)."""
    keys = set(keys)
    if "edm_mean" in keys and "edm_std" in keys:
        return "EDM"
    if "edm_vpred.sigma_max" in keys:
        return "V_EDM"
    if "v_pred" in keys:
        return "V (ztsnr)" if "ztsnr" in keys else "V"
    return "EPS"
