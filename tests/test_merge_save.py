"""The streaming safetensors writer and 'Save this merge': format, values, metadata, names, never overwriting."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lib_ext.merge.inplace import InPlaceMerge
from lib_ext.merge.keys import classify_key
from lib_ext.merge.recipe import MergeRecipe
from lib_ext.merge.safetensors_stream import SafetensorsWriteError, write_safetensors
from lib_ext.merge.save import (MergeSaveError, free_checkpoint_path, merged_state_dict, sanitize_checkpoint_name,
                                save_merge)
from lib_ext.merge.sources import MergeInputs, TensorSpec
from merge_fixtures import assert_bits_equal, sd1_checkpoint, sdxl_checkpoint, write_checkpoint

# --- the writer ----------------------------------------------------------------------------------------

MIXED = {
    "f16": torch.randn(5, 3).half(), "bf16": torch.randn(7).bfloat16(), "f32": torch.randn(2, 2, 2),
    "f64": torch.randn(3).double(), "i64": torch.arange(6).reshape(1, 6), "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(0.5), "empty": torch.tensor([]), "f8": torch.randn(4).to(torch.float8_e4m3fn),
}


def whole(tensors):
    return lambda spec: [tensors[spec.key]]


def test_writer_round_trip(tmp_path):
    path = tmp_path / "mixed.safetensors"
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in MIXED.items()]
    write_safetensors(path, specs, whole(MIXED), {"note": "hi", "ünï": "cödé"})
    loaded = load_file(path)
    assert loaded.keys() == MIXED.keys()
    for key, tensor in MIXED.items():
        assert_bits_equal(loaded[key], tensor, key) if tensor.is_floating_point() else torch.equal(loaded[key], tensor)
    with safe_open(path, "pt") as file:
        assert file.metadata() == {"note": "hi", "ünï": "cödé"}
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    assert header_length % 8 == 0 and raw[8:10] == b'{"'  # A1111 read_metadata_from_safetensors asserts '{"'
    header = json.loads(raw[8:8 + header_length])
    begins = sorted(v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    for key, entry in header.items():  # every tensor aligned to its element size (file order by size)
        if key != "__metadata__":
            assert entry["data_offsets"][0] % MIXED[key].element_size() == 0, key
    assert begins[0] == 0


def test_writer_takes_chunks(tmp_path):
    tensor = torch.randn(10, 4)
    path = tmp_path / "chunks.safetensors"
    chunks = lambda spec: [tensor[:3], tensor[3:4], tensor[4:]]  # noqa: E731
    write_safetensors(path, [TensorSpec("t", torch.float32, (10, 4))], chunks)
    assert torch.equal(load_file(path)["t"], tensor)


def test_writer_checks_the_producer(tmp_path):
    spec = TensorSpec("t", torch.float32, (4,))
    with pytest.raises(SafetensorsWriteError, match="tensor 't': wrote 12 bytes, header says 16"):
        write_safetensors(tmp_path / "x.safetensors", [spec], lambda s: [torch.zeros(3)])
    with pytest.raises(SafetensorsWriteError, match="tensor 't': got a torch.float16 chunk"):
        write_safetensors(tmp_path / "x.safetensors", [spec], lambda s: [torch.zeros(4).half()])
    with pytest.raises(TypeError, match="metadata maps str to str"):
        write_safetensors(tmp_path / "x.safetensors", [spec], lambda s: [torch.zeros(4)], {"n": 1})


# --- save_merge ----------------------------------------------------------------------------------------

A, B, C = sd1_checkpoint(0), sd1_checkpoint(1, torch.bfloat16), sd1_checkpoint(2, torch.float32)


@pytest.fixture()
def paths(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    metadata = {"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": "Base",
                "modelspec.thumbnail": "data:image/png;base64,AAAA", "ss_training": "x",
                "sd_merge_models": json.dumps({"f" * 64: {"name": "older", "legacy_hash": "12345678"}})}
    return {"a": write_checkpoint(models / "base.safetensors", A, metadata),
            "b": write_checkpoint(models / "tuned.safetensors", B),
            "c": write_checkpoint(models / "sd15.safetensors", C),
            "out": tmp_path / "out"}


def oracle(recipe, key):
    """The merge of one key by hand: float32, weighted sum or add difference, in A's dtype."""
    group = classify_key(key)
    r = recipe.ratio_for(group) if group != "other" and A[key].is_floating_point() else None
    if r is None or r == 0:
        return A[key]
    a, b = A[key].float(), B[key].float()
    if recipe.method == "weighted_sum":
        return (B[key].to(A[key].dtype) if r == 1 else torch.lerp(a, b, r).to(A[key].dtype))
    return torch.add(a, b - C[key].float(), alpha=r).to(A[key].dtype)


@pytest.mark.parametrize("recipe_args", [
    ("weighted_sum", None, 0.3, None, False),
    ("weighted_sum", None, 1.0, 0.0, True),
    ("add_difference", "c", 0.7, 0.2, True),
])
def test_saved_file_equals_in_memory_merge(paths, recipe_args):
    method, c, unet, te, vae = recipe_args
    recipe = MergeRecipe(method, paths["a"], paths["b"], paths[c] if c else None, unet, te, vae)
    paths["out"].mkdir()
    path = save_merge(recipe, paths["out"], name="merged", chunk_elements=64)  # 64: proj_in (40x8) in 8 chunks
    saved, in_memory = load_file(path), merged_state_dict(recipe)
    assert saved.keys() == A.keys() == in_memory.keys()
    for key in A:
        assert_bits_equal(saved[key], in_memory[key], key) if A[key].is_floating_point() \
            else torch.equal(saved[key], A[key])
        if A[key].is_floating_point():
            assert_bits_equal(saved[key], oracle(recipe, key), key)


def test_in_place_merge_equals_saved_merge(paths):
    """A sweep cell rendered in memory uses the same weights as the file 'Save this merge' writes."""
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.35, te_ratio=0.8)
    model = {k: v.clone() for k, v in A.items() if classify_key(k) in ("unet", "te")}
    saved = merged_state_dict(recipe)
    with InPlaceMerge(recipe, model) as merge:
        merge.apply(0.35, 0.8)
        for key in model:
            assert_bits_equal(model[key], saved[key], key)


@pytest.mark.parametrize("method", ["weighted_sum", "add_difference"])
def test_save_as_loaded_is_the_in_memory_merge_of_a_float16_unet(tmp_path, method):
    """"Save this merge" of float32 files for a model loaded with a float16 UNet and float32 text encoders (Forge
    Neo, reForge --unet-in-fp16): each part merged and written as the in-memory merge holds it, on A1111
    (InPlaceMerge) and on the Forge hosts (FilePatch), bit for bit; merging in float32 and rounding once does not
    give those bits."""
    from lib_ext.merge.patches import PatchMerge
    files = {name: write_checkpoint(tmp_path / f"{name}.safetensors", sd1_checkpoint(seed, torch.float32))
             for name, seed in (("a", 10), ("b", 11), ("c", 12))}
    recipe = MergeRecipe(method, files["a"], files["b"], files["c"] if method == "add_difference" else None,
                         unet_ratio=0.3, te_ratio=0.6)
    live_dtypes = {"unet": torch.float16, "te": torch.float32}
    a = load_file(files["a"])
    loaded = {k: v.to(live_dtypes[classify_key(k)]) for k, v in a.items() if classify_key(k) in live_dtypes
              and v.is_floating_point()}
    (tmp_path / "out").mkdir()
    saved = load_file(save_merge(recipe, tmp_path / "out", name="merged", live_dtypes=live_dtypes, chunk_elements=64))
    in_place = {k: v.clone() for k, v in loaded.items()}
    with InPlaceMerge(recipe, in_place) as merge:  # its exit puts A back
        merge.apply(0.3, 0.6)
        for key in loaded:
            assert_bits_equal(in_place[key], saved[key], key)
    patches = PatchMerge(recipe)
    try:
        for group, ratio in (("unet", 0.3), ("te", 0.6)):
            for key, patch in patches.file_patches(group, {k: v.dtype for k, v in loaded.items()}).items():
                working = loaded[key].to(torch.float32)  # the Forge patcher's float32 working copy
                assert_bits_equal(patch.merge_into(working, ratio).to(loaded[key].dtype), saved[key], key)
    finally:
        patches.close()
    rounded_once = merged_state_dict(recipe, output_dtype=torch.float16)
    assert any(not torch.equal(rounded_once[key], saved[key]) for key in loaded if classify_key(key) == "unet")
    assert {saved[k].dtype for k in loaded if classify_key(k) == "te"} == {torch.float32}
    assert saved.keys() == a.keys()


def test_save_for_a_float8_unet_is_written_in_float16_and_says_so(paths):
    """float8 storage computes in float16 (inplace.compute_dtype_for): the file holds those float16 weights, and
    A1111's recipe metadata calls it half."""
    paths["out"].mkdir()
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.5)
    path = save_merge(recipe, paths["out"], name="fp8", live_dtypes={"unet": torch.float8_e4m3fn})
    unet_dtypes = {t.dtype for k, t in load_file(path).items() if classify_key(k) == "unet" and t.is_floating_point()}
    assert unet_dtypes == {torch.float16}
    with safe_open(path, "pt") as file:
        assert json.loads(file.metadata()["sd_merge_recipe"])["save_as_half"] is True


def test_endpoints_are_the_inputs(paths):
    paths["out"].mkdir()
    zero = load_file(save_merge(MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.0), paths["out"]))
    one = load_file(save_merge(MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=1.0), paths["out"],
                               output_dtype=torch.bfloat16))
    for key in A:
        assert_bits_equal(zero[key], A[key], key) if A[key].is_floating_point() else None
        if classify_key(key) in ("unet", "te") and A[key].is_floating_point():
            assert_bits_equal(one[key], B[key], key)  # B is bf16, and so is the output
    assert one["alphas_cumprod"].dtype == torch.float32  # other keys keep their dtype


def test_markers_kept(tmp_path):
    a, b = sdxl_checkpoint(0, v_pred=True, ztsnr=True), sdxl_checkpoint(1, v_pred=True, ztsnr=True)
    recipe = MergeRecipe("weighted_sum", write_checkpoint(tmp_path / "a.safetensors", a),
                         write_checkpoint(tmp_path / "b.safetensors", b), unet_ratio=0.5)
    saved = load_file(save_merge(recipe, tmp_path))
    assert saved["v_pred"].shape == (0,) and saved["ztsnr"].shape == (0,)
    assert torch.equal(saved["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"],
                       a["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"])


def test_metadata(paths):
    recipe = MergeRecipe("add_difference", paths["a"], paths["b"], paths["c"], 0.7, 0.0)
    paths["out"].mkdir()
    path = save_merge(recipe, paths["out"], name="my merge", sha256={"A": "a" * 64, "B": None})
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    stored = MergeRecipe.from_dict(json.loads(metadata["uncond_lab_merge_recipe"]))
    assert stored == MergeRecipe("add_difference", "base.safetensors", "tuned.safetensors", "sd15.safetensors",
                                 0.7, 0.0)
    a1111 = json.loads(metadata["sd_merge_recipe"])
    assert a1111["interp_method"] == "Add difference" and a1111["multiplier"] == 0.7
    assert a1111["te_multiplier"] == 0.0 and a1111["primary_model_hash"] == "a" * 64
    assert a1111["secondary_model_hash"] is None and a1111["custom_name"] == "my merge"
    models = json.loads(metadata["sd_merge_models"])
    assert models["a" * 64]["name"] == "base" and len(models["a" * 64]["legacy_hash"]) == 8
    assert models["f" * 64] == {"name": "older", "legacy_hash": "12345678"}  # A's own history carried
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
    assert metadata["modelspec.title"] == "my merge"
    assert "modelspec.thumbnail" not in metadata and "ss_training" not in metadata
    assert str(paths["a"]) not in json.dumps(metadata)  # file names only, no paths


# --- names and files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("my merge", "my merge"),
    ("merge.safetensors", "merge"),
    ("Merge.CKPT", "Merge"),
    ("../../etc/passwd", "_._etc_passwd"),
    ("a/b\\c", "a_b_c"),
    ("..hidden", "hidden"),
    ("x..y", "x.y"),
    ("name.", "name"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("模型 v2 (0.5)", "模型 v2 (0.5)"),
    ("a:b*c?\"d<e>f|g\x00h", "a_b_c__d_e_f_g_h"),
    ("x" * 300, "x" * 150),
])
def test_sanitize_checkpoint_name(name, expected):
    assert sanitize_checkpoint_name(name) == expected


@pytest.mark.parametrize("name", ["", "   ", "..", ".safetensors", "///", "."])
def test_sanitize_refuses_empty_names(name):
    with pytest.raises(MergeSaveError, match="has no usable characters"):
        sanitize_checkpoint_name(name)


def test_never_overwrites(paths):
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.5)
    out = paths["out"]
    out.mkdir()
    existing = out / "merge.safetensors"
    existing.write_bytes(b"precious")
    first = save_merge(recipe, out, name="merge")
    second = save_merge(recipe, out, name="merge.safetensors")
    assert (first.name, second.name) == ("merge-2.safetensors", "merge-3.safetensors")
    assert existing.read_bytes() == b"precious"
    assert sorted(os.listdir(out)) == ["merge-2.safetensors", "merge-3.safetensors", "merge.safetensors"]
    assert free_checkpoint_path(out, "merge").name == "merge-4.safetensors"


def test_default_name_and_traversal_stay_in_folder(paths):
    out = paths["out"]
    out.mkdir()
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.25, te_ratio=0.0)
    assert save_merge(recipe, out).name == "base+tuned ws0.25 te0.safetensors"
    assert save_merge(recipe, out, name="../escape").parent == out


def test_failed_save_leaves_nothing(paths, monkeypatch):
    out = paths["out"]
    out.mkdir()
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.5)

    def broken_chunks(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr("lib_ext.merge.save.merged_chunks", broken_chunks)
    with pytest.raises(KeyboardInterrupt):
        save_merge(recipe, out, name="interrupted")
    assert os.listdir(out) == []
    with pytest.raises(MergeSaveError, match="does not exist"):
        save_merge(recipe, out / "missing")


def test_incompatible_save_refused_before_writing(tmp_path):
    recipe = MergeRecipe("weighted_sum", write_checkpoint(tmp_path / "a.safetensors", sd1_checkpoint(0)),
                         write_checkpoint(tmp_path / "b.safetensors", sdxl_checkpoint(1)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Exception, match="cannot merge"):
        save_merge(recipe, out)
    assert os.listdir(out) == []


def test_shared_inputs_stay_open(paths):
    recipe = MergeRecipe("weighted_sum", paths["a"], paths["b"], unet_ratio=0.5)
    paths["out"].mkdir()
    inputs = MergeInputs.open(recipe)
    save_merge(recipe, paths["out"], inputs=inputs)
    save_merge(recipe.with_ratios(0.7), paths["out"], inputs=inputs)  # the CLI reuses one set of inputs
    inputs.close()
    assert len(os.listdir(paths["out"])) == 2
