"""'Save this merge': a merged .safetensors written key by key, in bounded memory, never over another file.

Each tensor is read from the inputs a range of rows at a time (`chunk_elements`, default 4 Mi elements), merged in
float32, cast to the output dtype and written; nothing of one chunk outlives it. Given the loaded model's dtypes
(`live_dtypes`, "Save this merge"), a group is instead merged as the in-memory merge merges it: A and B cast to
that dtype first, then combined in it (the operands of ops.merge_operand), and written in it, so that loading the
file gives the in-memory merge's picture bit for bit on a float16 UNet too (float32 arithmetic rounded once differs
from it in the last bit of some weights). Peak extra memory, whatever the model size: the chunks as read, their
float32 copies and the output chunk, about 28 bytes per chunk element = 112 MiB at the default chunk. Measured as
anonymous RSS above an import-only baseline, merging two 1 GiB files (four 256 MiB tensors): 106 MiB (weighted sum,
fp16) and 112 MiB (add difference, three fp32 inputs) at 4 Mi elements, 22 and 28 MiB at 1 Mi. The OS page cache of
the memory-mapped inputs is not counted (it is reclaimable).

The output keeps all of A's keys: merged groups merged, everything else (other keys, the prediction-type
marker keys, which plan_merge has checked are equal in all inputs, an unmerged VAE) copied from A.
Ratio 0 copies A and ratio 1 (weighted sum) copies B, so the endpoints are bit-exact in the output dtype.

Naming: the name is sanitised (`sanitize_checkpoint_name`); if "<name>.safetensors" exists, the first free
"<name>-2.safetensors", "<name>-3.safetensors", … is used: a save never overwrites. The data goes to a hidden
temporary file in the same folder, which is then hard-linked to the final name (atomic, fails if the name was
taken meanwhile, then the next free name is tried) and removed; where hard links are unsupported it is renamed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from lib_ext.merge.blocks import PRESETS, unet_slot
from lib_ext.merge.inplace import compute_dtype_for
from lib_ext.merge.keys import MERGEABLE_GROUPS, UNET, classify_key
from lib_ext.merge.ops import add_difference_into, weighted_sum_into
from lib_ext.merge.recipe import METHOD_LABELS, WEIGHTED_SUM, MergeRecipe
from lib_ext.merge.safetensors_stream import write_safetensors
from lib_ext.merge.sources import MergeInputs, MergePlan, TensorSource, TensorSpec, plan_merge

DEFAULT_CHUNK_ELEMENTS = 1 << 22
PEAK_BYTES_PER_CHUNK_ELEMENT = 28  # measured bound, see the module doc
RECIPE_METADATA_KEY = "uncond_lab_merge_recipe"
# ModelSpec fields that describe one file, not the model family: not carried over to the merge.
_MODELSPEC_NOT_CARRIED = ("modelspec.hash_sha256", "modelspec.thumbnail", "modelspec.date", "modelspec.title",
                          "modelspec.description", "modelspec.author")
_MAX_NAME_LENGTH = 150
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
OUTPUT_DTYPES = {"a": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class MergeSaveError(ValueError):
    """A merge cannot be saved under the asked name or folder; the message says why."""


# --- names -----------------------------------------------------------------------------------------------

def sanitize_checkpoint_name(name: str) -> str:
    """A file stem safe in any checkpoints folder: letters, digits, ' ._-+()[]', no path, no leading dot.

    A trailing .safetensors/.ckpt is dropped; other characters become '_'; raises when nothing is left.
    """
    if not isinstance(name, str):
        raise MergeSaveError(f"a checkpoint name must be text, got {type(name).__name__}")
    stem = unicodedata.normalize("NFC", name).strip()
    stem = re.sub(r"\.(safetensors|ckpt)$", "", stem, flags=re.IGNORECASE)
    stem = "".join(ch if ch.isalnum() or ch in " ._-+()[]" else "_" for ch in stem)
    stem = re.sub(r"\.{2,}", ".", stem)      # no '..'
    stem = stem.strip(" .")                  # no hidden file; Windows drops trailing dots and spaces
    stem = stem[:_MAX_NAME_LENGTH].rstrip(" .")
    if not stem.strip("_"):
        raise MergeSaveError(f"checkpoint name {name!r} has no usable characters (letters, digits, ' ._-+()[]')")
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    return stem


def default_merge_name(recipe: MergeRecipe) -> str:
    """e.g. 'base+tuned ws0.3', 'base+tuned ad0.5 te0 vae0.5', 'base+tuned ws0.5 blocks-1a2b3c4d' (a hash of
    the per-block ratios, or a preset's name)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in recipe.models.values()]
    tag = "ws" if recipe.method == WEIGHTED_SUM else "ad"
    name = f"{'+'.join(stems)} {tag}{recipe.unet_ratio:g}"
    if recipe.te_ratio is not None and recipe.te_ratio != recipe.unet_ratio:
        name += f" te{recipe.te_ratio:g}"
    if recipe.include_vae:
        name += f" vae{recipe.ratio_for('vae'):g}"
    if recipe.blocks is not None:  # the values are in the recipe metadata; a name has no room for 26 numbers
        tag = recipe.blocks if recipe.blocks in PRESETS else hashlib.sha256(recipe.blocks.encode()).hexdigest()[:8]
        name += f" blocks-{tag}"
    return name


def free_checkpoint_path(folder: str | os.PathLike, stem: str) -> Path:
    """'<stem>.safetensors' in `folder`, or the first free '<stem>-N.safetensors' (N = 2, 3, …)."""
    folder = Path(folder)
    candidate, number = folder / f"{stem}.safetensors", 2
    while os.path.lexists(candidate):
        candidate, number = folder / f"{stem}-{number}.safetensors", number + 1
    return candidate


# --- metadata --------------------------------------------------------------------------------------------

def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-hex 'model hash' (`sd_models.model_hash`): sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as file:
        file.seek(0x100000)
        return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The full-file sha256 A1111 shows as the model hash (its first 10 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _json_field(metadata: Mapping[str, str], key: str):
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except (TypeError, ValueError):
        return None


def merge_metadata(recipe: MergeRecipe, inputs: MergeInputs, output_stem: str,
                   sha256: Mapping[str, str | None] | None = None,
                   output_dtype: torch.dtype | None = None) -> dict[str, str]:
    """The output's safetensors metadata: our recipe, A1111's `sd_merge_recipe`/`sd_merge_models`, A's ModelSpec.

    The recipe is stored with file names, not paths (paths can carry user names). `sha256` maps roles
    ('A', 'B', 'C') to full-file hashes where known; A1111 keys `sd_merge_models` by them, so inputs of
    unknown hash contribute only the merge history they carry.
    """
    sha256 = dict(sha256 or {})
    sources = inputs.by_role()
    names = {role: os.path.basename(path) for role, path in recipe.models.items()}
    stored = dataclasses.replace(recipe, model_a=names["A"], model_b=names["B"], model_c=names.get("C"))
    metadata = {k: v for k, v in inputs.a.metadata.items()
                if k.startswith("modelspec.") and k not in _MODELSPEC_NOT_CARRIED}
    if metadata:
        metadata["modelspec.title"] = output_stem
    metadata["format"] = "pt"
    metadata[RECIPE_METADATA_KEY] = stored.to_json()
    metadata["sd_merge_recipe"] = json.dumps({
        "type": "uncond-lab",  # A1111 writes "webui" for its own merger
        "primary_model_hash": sha256.get("A"),
        "secondary_model_hash": sha256.get("B"),
        "tertiary_model_hash": sha256.get("C"),
        "interp_method": METHOD_LABELS[recipe.method],
        "multiplier": recipe.unet_ratio,
        "te_multiplier": recipe.ratio_for("te"),
        "vae_multiplier": recipe.ratio_for("vae"),
        "save_as_half": output_dtype == torch.float16,
        "custom_name": output_stem,
        "config_source": 0,
        "bake_in_vae": "None",
        "discard_weights": "",
        "is_inpainting": False,
        "is_instruct_pix2pix": False,
    })
    models: dict[str, dict] = {}
    for role, source in sources.items():
        if sha256.get(role):
            path = recipe.models[role]
            models[sha256[role]] = {
                "name": os.path.splitext(names[role])[0],
                "legacy_hash": legacy_model_hash(path) if os.path.isfile(path) else None,
                "sd_merge_recipe": _json_field(source.metadata, "sd_merge_recipe"),
            }
        history = _json_field(source.metadata, "sd_merge_models")
        if isinstance(history, dict):
            models.update(history)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata


# --- the merged tensors ----------------------------------------------------------------------------------

def output_specs(plan: MergePlan, output_dtype: torch.dtype | None = None,
                 live_dtypes: Mapping[str, torch.dtype] | None = None) -> list[TensorSpec]:
    """The output's tensors: A's keys; floating weights of the model's groups in the loaded model's dtype of their
    group (`live_dtypes`, float8 as float16) or else in `output_dtype` if given."""
    specs = []
    for key, spec in plan.specs.items():
        group = classify_key(key)
        dtype = _written_dtype(group, output_dtype, live_dtypes)
        cast = dtype is not None and spec.dtype.is_floating_point and group in MERGEABLE_GROUPS
        specs.append(TensorSpec(key, dtype, spec.shape) if cast else spec)
    return specs


def _written_dtype(group: str, output_dtype: torch.dtype | None,
                   live_dtypes: Mapping[str, torch.dtype] | None) -> torch.dtype | None:
    """What a group's floating weights are written in: the loaded model's dtype (float8 as float16), else
    output_dtype (None: A's)."""
    return compute_dtype_for(live_dtypes[group]) if live_dtypes and group in live_dtypes else output_dtype


def _row_ranges(shape: tuple[int, ...], chunk_elements: int) -> list[tuple[int, int] | None]:
    """[None] for a tensor read whole, else (start, stop) ranges of rows of at most ~chunk_elements."""
    numel = 1
    for size in shape:
        numel *= size
    if not shape or numel <= chunk_elements:
        return [None]
    row = numel // shape[0]
    step = max(1, chunk_elements // max(row, 1))
    return [(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


def _read(source: TensorSource, key: str, rows: tuple[int, int] | None) -> torch.Tensor:
    return source.tensor(key) if rows is None else source.rows(key, *rows)


def key_ratio(recipe: MergeRecipe, plan: MergePlan, key: str) -> float | None:
    """The ratio a key is merged at (its block's with per-block ratios), None for a key copied from A."""
    group = plan.group_of(key)
    if group is None:
        return None
    if group == UNET and recipe.blocks is not None:
        return recipe.part_ratios(plan.layout)[unet_slot(key)]
    return recipe.ratio_for(group)


def merged_chunks(recipe: MergeRecipe, plan: MergePlan, inputs: MergeInputs, spec: TensorSpec,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, as_loaded: bool = False) -> Iterator[torch.Tensor]:
    """The output tensor `spec` (dtype from output_specs) as row chunks, merged in float32, or `as_loaded`: in
    spec's dtype, as the in-memory merge does in a model loaded in that dtype."""
    ratio = key_ratio(recipe, plan, spec.key)
    for rows in _row_ranges(spec.shape, chunk_elements):
        yield _merged_rows(recipe, inputs, spec, rows, ratio, as_loaded)


def _merged_rows(recipe: MergeRecipe, inputs: MergeInputs, spec: TensorSpec, rows: tuple[int, int] | None,
                 ratio: float | None, as_loaded: bool = False) -> torch.Tensor:
    """One chunk of output; a function of its own so that its temporaries are freed before the next chunk."""
    a = _read(inputs.a, spec.key, rows)
    if ratio is None or ratio == 0.0:
        return a.to(spec.dtype)
    b = _read(inputs.b, spec.key, rows)
    if recipe.method == WEIGHTED_SUM and ratio == 1.0:
        return b.to(spec.dtype)
    # In float32, rounded once; or `as_loaded` as the in-memory merge computes in a model loaded in spec's dtype: A
    # as loaded, B cast to it, D = B − C in float32 rounded to it (ops.merge_operand's operands).
    dtype = spec.dtype if as_loaded else torch.float32
    merged = a.to(dtype, copy=True)
    del a
    if recipe.method == WEIGHTED_SUM:
        weighted_sum_into(merged, merged, b.to(dtype), ratio)
    else:
        difference = b.to(torch.float32, copy=True)
        del b
        difference.sub_(_read(inputs.c, spec.key, rows).to(torch.float32))
        add_difference_into(merged, merged, difference.to(dtype), ratio)
    return merged.to(spec.dtype)


def merged_state_dict(recipe: MergeRecipe, inputs: MergeInputs | None = None,
                      output_dtype: torch.dtype | None = None,
                      live_dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """The whole merge in memory (small models, tests): what save_merge writes, as one dict."""
    owned = inputs is None
    inputs = MergeInputs.open(recipe) if owned else inputs
    try:
        plan = plan_merge(recipe, inputs)
        return {spec.key: torch.cat([c.reshape(-1) for c in merged_chunks(recipe, plan, inputs, spec, 1 << 62,
                                                                          _as_loaded(plan, spec, live_dtypes))]
                                    ).reshape(spec.shape)
                for spec in output_specs(plan, output_dtype, live_dtypes)}
    finally:
        if owned:
            inputs.close()


def _as_loaded(plan: MergePlan, spec: TensorSpec, live_dtypes: Mapping[str, torch.dtype] | None) -> bool:
    return bool(live_dtypes) and plan.group_of(spec.key) in live_dtypes


# --- saving ----------------------------------------------------------------------------------------------

def _publish(temporary: Path, folder: Path, stem: str) -> Path:
    """Give the finished temporary file its final name without ever replacing an existing file."""
    while True:
        final = free_checkpoint_path(folder, stem)
        try:
            os.link(temporary, final)  # atomic; fails if `final` appeared since free_checkpoint_path
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network or FAT file systems): a plain rename
            if os.path.lexists(final):
                continue
            os.rename(temporary, final)
            return final
        os.unlink(temporary)
        return final


def save_merge(recipe: MergeRecipe, out_dir: str | os.PathLike, *, name: str | None = None,
               inputs: MergeInputs | None = None, output_dtype: torch.dtype | None = None,
               live_dtypes: Mapping[str, torch.dtype] | None = None,
               sha256: Mapping[str, str | None] | None = None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the merge as '<out_dir>/<name>.safetensors' (see the module doc); returns the path written.

    output_dtype None keeps each tensor's dtype from A. live_dtypes ({group: dtype of the loaded model's
    weights}): those groups merged and written as the in-memory merge holds them in that model.
    progress(done_bytes, total_bytes) after each chunk.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise MergeSaveError(f"output folder '{folder}' does not exist")
    stem = sanitize_checkpoint_name(name if name is not None else default_merge_name(recipe))
    owned = inputs is None
    inputs = MergeInputs.open(recipe) if owned else inputs
    temporary = folder / f".{stem}.{os.getpid()}.uncond-lab-partial"
    try:
        plan = plan_merge(recipe, inputs)
        specs = output_specs(plan, output_dtype, live_dtypes)
        metadata = merge_metadata(recipe, inputs, free_checkpoint_path(folder, stem).stem, sha256,
                                  _written_dtype(UNET, output_dtype, live_dtypes))
        total, done = sum(s.nbytes for s in specs), 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, total)

        write_safetensors(temporary, specs,
                          lambda spec: merged_chunks(recipe, plan, inputs, spec, chunk_elements,
                                                     _as_loaded(plan, spec, live_dtypes)),
                          metadata, advance)
        return _publish(temporary, folder, stem)
    finally:
        if owned:
            inputs.close()
        if os.path.lexists(temporary):
            os.unlink(temporary)
