"""Uncond Lab's merge engine, free of WebUI imports: recipes, lazy inputs, in-place apply/restore, saving.

    recipe.py             MergeRecipe: method, models A/B[/C], ratios per group (UNet, text encoders, VAE)
    blocks.py             per-block UNet ratios (merge_blocks): the slot of every UNet key, parsing, presets
    keys.py               which group a checkpoint key belongs to; prediction-type marker keys
    sources.py            memory-mapped safetensors inputs and the compatibility check (MergePlan)
    ops.py                the arithmetic, exact at the endpoints
    inplace.py            InPlaceMerge: a ratio change as one fused pass over live tensors; exact restore
    safetensors_stream.py a bounded-memory safetensors writer
    save.py               'Save this merge': metadata, safe names, never overwrite
    cli.py                `python -m lib_ext.merge`
    session.py            MergeSessions: one merge kept between generations; when it is restored
    live.py               A1111's live tensors by checkpoint key (hijack wrappers, Lora backups, fp8 caches)
    patches.py            reForge: a merge as weight patches computed from the mapped files
    sweep.py              the tab's sweep: ratio/CFG/uncond lists in the X/Y/Z syntax, grid layout
See README.md in this folder for the memory each option needs.
"""
from lib_ext.merge.inplace import InPlaceMerge, MemoryEstimate, MergeTargetError, estimate_memory
from lib_ext.merge.keys import OTHER, TEXT_ENCODER, UNET, VAE, classify_key
from lib_ext.merge.recipe import ADD_DIFFERENCE, WEIGHTED_SUM, MergeRecipe, RecipeError
from lib_ext.merge.save import (MergeSaveError, merged_state_dict, sanitize_checkpoint_name, save_merge)
from lib_ext.merge.sources import (IncompatibleModelsError, InMemorySource, MergeInputError, MergeInputs, MergePlan,
                                   SafetensorsSource, plan_merge)

__all__ = [
    "MergeRecipe", "RecipeError", "WEIGHTED_SUM", "ADD_DIFFERENCE",
    "classify_key", "UNET", "TEXT_ENCODER", "VAE", "OTHER",
    "MergeInputs", "SafetensorsSource", "InMemorySource", "MergePlan", "plan_merge",
    "MergeInputError", "IncompatibleModelsError",
    "InPlaceMerge", "MemoryEstimate", "estimate_memory", "MergeTargetError",
    "save_merge", "merged_state_dict", "sanitize_checkpoint_name", "MergeSaveError",
]
