"""SDXL conds in A1111 1.10 and reForge: both build sgm's GeneralConditioner (`sd_model.conditioner`)."""
from __future__ import annotations


def is_dict_cond_model(sd_model) -> bool:
    """SDXL-family models take {"crossattn", "vector"} conds; the WebUIs zero their empty negatives."""
    return getattr(sd_model, "conditioner", None) is not None


def text_pooled_width(sd_model) -> int:
    """Width of the pooled text part at the start of SDXL's `vector` (1280 for SDXL base and refiner).

    The conditioner concatenates its embedders' 2-D outputs in order; the text embedders come first and only
    those with a text projection contribute (their pooled output). A1111 wraps the OpenCLIP embedder as
    `.wrapped.model.text_projection`, reForge as `.wrapped.text_projection`.
    """
    width = 0
    for embedder in getattr(sd_model.conditioner, "embedders", []):
        if getattr(embedder, "input_key", None) != "txt":
            continue
        wrapped = getattr(embedder, "wrapped", embedder)
        projection = getattr(wrapped, "text_projection", None)
        if projection is None:
            projection = getattr(getattr(wrapped, "model", None), "text_projection", None)
        if projection is not None:
            width += int(projection.shape[-1])
    return width
