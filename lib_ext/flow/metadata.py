"""What a checkpoint's safetensors `__metadata__` declares about its training objective. Never the filename.

What publishers and trainers write (checked in their sources):
- `modelspec.prediction_type`: the SAI ModelSpec key ("In Stable Diffusion, `v` or `epsilon`",
  Stability-AI/ModelSpec). kohya-ss/sd-scripts library/sai_model_spec.py writes "v" with --v_parameterization and
  "epsilon" otherwise, for every SDXL checkpoint; OneTrainer writes "epsilon" from a static template
  (resources/sd_model_spec/sd_xl_base_1.0.json). SimpleTuner spells the flow objective "flow_matching" and accepts
  "flow" / "flow-matching" (simpletuner/helpers/models/common.py `PredictionTypes.from_str`), also "vpred",
  "v_prediction", "v-prediction" for v; ComfyUI custom savers write "v-zsnr".
- `modelspec.predict_key`: ComfyUI's CheckpointSave (comfy_extras/nodes_model_merging.py; reForge's copy
  ldm_patched/contrib/nodes_model_merging.py:152-155) writes "epsilon" or "v" from the model's `model_type`.
- No published RF SDXL model found declares flow. The NoobAI/ChenkinNoob rectified-flow releases (Cabal Research)
  come from bluvoll/sd-scripts `--flow_model`, which rejects --v_parameterization and so saves every checkpoint
  with "epsilon" (library/sdxl_train_util.py:236 -> library/sai_model_spec.py:215-219); Acly/krita-ai-diffusion
  PR #2358 reports the ChenkinNoob RF model "identifies as model_type: eps". A model patched with ComfyUI's
  ModelSamplingSD3 keeps model_type EPS, so CheckpointSave writes "epsilon" for it too.
So "epsilon" is what tools write when nobody said anything: it is the weakest statement, and a file that also
declares flow or v is taken at that word. Only "flow" should change a default.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREDICTION_KEYS = ("modelspec.prediction_type", "modelspec.predict_key")

_SPELLINGS = {
    "flow": "flow", "flow_matching": "flow", "flow-matching": "flow",
    "rectified_flow": "flow", "rectified-flow": "flow",
    "v": "v", "vpred": "v", "v_prediction": "v", "v-prediction": "v", "v-zsnr": "v",
    "epsilon": "eps", "eps": "eps",
    "sample": "x0", "x_prediction": "x0", "x-prediction": "x0",
}
_STRENGTH = {"flow": 3, "v": 2, "x0": 2, "eps": 1}  # "epsilon" is the common unconsidered default, see above


def declared_prediction(metadata: Mapping[str, Any] | None) -> str | None:
    """"flow", "v", "x0", "eps" as the metadata declares it, or None when it declares nothing we recognise."""
    if not metadata:
        return None
    found = []
    for key in PREDICTION_KEYS:
        value = metadata.get(key)
        if isinstance(value, str):
            kind = _SPELLINGS.get(value.strip().lower())
            if kind is not None:
                found.append(kind)
    return max(found, key=_STRENGTH.__getitem__) if found else None


def declares_flow(metadata: Mapping[str, Any] | None) -> bool:
    """True when the metadata declares a flow objective: the only case where RF becomes the model's default."""
    return declared_prediction(metadata) == "flow"
