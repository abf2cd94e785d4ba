"""InPlaceMerge: exact endpoints, closed-form ratios, group-wise ratios, bit-exact restore on every exit path."""
import math

import pytest
import torch

from lib_ext.merge.inplace import InPlaceMerge, MergeTargetError, estimate_memory
from lib_ext.merge.keys import classify_key
from lib_ext.merge.recipe import MergeRecipe
from merge_fixtures import assert_bits_equal, sd1_checkpoint, write_checkpoint

A, B, C = sd1_checkpoint(0), sd1_checkpoint(1), sd1_checkpoint(2)
UNET_KEY = "model.diffusion_model.middle_block.1.proj_in.weight"
TE_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
VAE_KEY = "first_stage_model.decoder.conv_out.weight"
FP16_EPS = 2.0 ** -10


@pytest.fixture()
def paths(tmp_path):
    return {role: write_checkpoint(tmp_path / f"{role}.safetensors", tensors)
            for role, tensors in (("a", A), ("b", B), ("c", C))}


def live_model(tensors=A, dtype=None):
    """The 'loaded model': parameters of every group, cloned from A (what the host maps by checkpoint key)."""
    return {k: torch.nn.Parameter(v.clone() if dtype is None else v.to(dtype), requires_grad=False)
            for k, v in tensors.items() if classify_key(k) != "other"}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.items()}


def assert_model_equals(model, expected, keys=None):
    for key in keys or model:
        assert_bits_equal(model[key].detach(), expected[key], key)


def ws(paths, **kw):
    return MergeRecipe("weighted_sum", paths["a"], paths["b"], **kw)


def ad(paths, **kw):
    return MergeRecipe("add_difference", paths["a"], paths["b"], paths["c"], **kw)


def merged_keys(model, group=None):
    return [k for k in model if classify_key(k) in ((group,) if group else ("unet", "te"))]


# --- values --------------------------------------------------------------------------------------------

def test_weighted_sum_endpoints_bit_exact(paths):
    model = live_model()
    with InPlaceMerge(ws(paths), model) as merge:
        assert merge.apply(1.0) == {"unet", "te"}
        assert_model_equals(model, B, merged_keys(model))  # including the -0.0 entries lerp would flip
        merge.apply(0.37)
        assert merge.apply(0.0) == {"unet", "te"}
        assert_model_equals(model, A, merged_keys(model))


def test_weighted_sum_matches_closed_form(paths):
    model = live_model()
    r = 0.3
    with InPlaceMerge(ws(paths), model) as merge:
        merge.apply(r)
        for key in merged_keys(model):
            expected = (1 - r) * A[key].double() + r * B[key].double()
            got = model[key].detach().double()
            assert torch.allclose(got, expected, rtol=FP16_EPS, atol=1e-7), key  # fp16 rounding of the result
            # and bit for bit what a saved merge computes (float32 lerp, then rounded to fp16)
            assert_bits_equal(model[key].detach(), torch.lerp(A[key].float(), B[key].float(), r).half(), key)


@pytest.mark.parametrize("difference_dtype", [None, torch.float32])
def test_add_difference_matches_closed_form(paths, difference_dtype):
    model = live_model()
    r = 0.6
    with InPlaceMerge(ad(paths), model, difference_dtype=difference_dtype) as merge:
        merge.apply(r)
        for key in merged_keys(model):
            expected = A[key].double() + r * (B[key].double() - C[key].double())
            got = model[key].detach().double()
            # D rounded to fp16 adds at most half an ulp of D to the result's own rounding
            tolerance = FP16_EPS * (expected.abs() + r * (B[key].double() - C[key].double()).abs()) + 1e-7
            assert ((got - expected).abs() <= tolerance).all(), key
            if difference_dtype == torch.float32:  # the float32 merge a + r·d (one fused op), as save_merge writes
                # it; (a + (r·d rounded)) can differ by one fp16 ulp at rounding ties, so the oracle uses alpha too
                exact = torch.add(A[key].float(), B[key].float() - C[key].float(), alpha=r).half()
                assert_bits_equal(model[key].detach().clone(), exact, key)
        merge.apply(0.0)
        assert_model_equals(model, A, merged_keys(model))


def test_live_fp32_model_from_fp16_files(paths):
    """A --no-half model: resident copies in float32; ratio 1 is B as the WebUI would load it (fp16 → fp32)."""
    model = live_model(dtype=torch.float32)
    with InPlaceMerge(ws(paths), model) as merge:
        merge.apply(1.0)
        assert_model_equals(model, {k: v.float() for k, v in B.items()}, merged_keys(model))


def test_float8_storage_uses_staging_and_restores(paths):
    """fp8 weights (A1111 --fp8): computed in fp16 beside the copies, then cast; the originals come back exact."""
    model = live_model(dtype=torch.float8_e4m3fn)
    before = snapshot(model)
    r = 0.5
    with InPlaceMerge(ws(paths), model) as merge:
        merge.apply(r)
        key = UNET_KEY
        expected = torch.lerp(before[key].half(), B[key], r).to(torch.float8_e4m3fn)
        assert_bits_equal(model[key].detach(), expected, key)
    assert_model_equals(model, before)


# --- groups --------------------------------------------------------------------------------------------

def test_group_ratios_and_skipping(paths):
    model = live_model()
    with InPlaceMerge(ws(paths), model) as merge:
        assert merge.groups == ("unet", "te")
        assert merge.apply(1.0, te_ratio=0.0) == {"unet"}  # te at 0 is A: already in place, nothing written
        assert_model_equals(model, B, merged_keys(model, "unet"))
        assert_model_equals(model, A, merged_keys(model, "te"))
        assert merge.apply(1.0, te_ratio=0.0) == frozenset()
        assert merge.apply(1.0) == {"te"}  # te follows the UNet again
        assert_model_equals(model, B, merged_keys(model, "te"))
        assert merge.apply(0.5, te_ratio=1.0) == {"unet"}
        assert merge.applied == {"unet": 0.5, "te": 1.0}
        assert merge.apply(0.5, te_ratio=1.0, force=True) == {"unet", "te"}


def test_vae_untouched_unless_asked(paths):
    model = live_model()
    with InPlaceMerge(ws(paths), model) as merge:
        merge.apply(1.0)
        assert "vae" not in merge.groups
        assert_model_equals(model, A, [VAE_KEY])
    with InPlaceMerge(ws(paths, include_vae=True), model) as merge:
        assert merge.apply(1.0, vae_ratio=0.0) == {"unet", "te"}
        assert_model_equals(model, A, [VAE_KEY])
        assert merge.apply(1.0) == {"vae"}
        assert_model_equals(model, B, [VAE_KEY])
    assert_model_equals(model, A)


def test_unet_only_host(paths):
    """A host that hands over only the UNet (reForge v1): the text encoders stay A's, and infotext says so."""
    model = {k: v for k, v in live_model().items() if classify_key(k) == "unet"}
    with InPlaceMerge(ws(paths), model) as merge:
        assert merge.groups == ("unet",)
        assert merge.apply(0.4) == {"unet"}
        assert merge.applied_recipe() == ws(paths, unet_ratio=0.4, te_ratio=0.0)


def test_applied_recipe(paths):
    model = live_model()
    with InPlaceMerge(ws(paths, include_vae=True), model) as merge:
        assert merge.applied_recipe() is None
        merge.apply(0.25, te_ratio=0.0)
        assert merge.applied_recipe() == ws(paths, unet_ratio=0.25, te_ratio=0.0, include_vae=True, vae_ratio=0.25)
        merge.restore()
        assert merge.applied_recipe() is None


def test_apply_recipe_checks_identity(paths):
    model = live_model()
    with InPlaceMerge(ws(paths), model) as merge:
        assert merge.apply_recipe(ws(paths, unet_ratio=1.0)) == {"unet", "te"}
        with pytest.raises(ValueError, match="is not the prepared merge"):
            merge.apply_recipe(ad(paths))


# --- restore -------------------------------------------------------------------------------------------

def test_restore_after_sweep(paths):
    model = live_model()
    before = snapshot(model)
    merge = InPlaceMerge(ad(paths), model)
    for r in (0.0, 0.5, 1.0, 1.7, -0.4):
        merge.apply(r, te_ratio=1 - r)
    assert merge.restore() == {"unet", "te"}
    assert_model_equals(model, before)
    assert merge.restore() == frozenset()  # idempotent
    merge.close()
    assert not merge.prepared


def test_restore_after_exception_in_context(paths):
    model = live_model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="sampler failed"):
        with InPlaceMerge(ws(paths), model) as merge:
            merge.apply(0.8)
            raise RuntimeError("sampler failed")
    assert_model_equals(model, before)


def test_restore_after_keyboard_interrupt_in_context(paths):
    model = live_model()
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        with InPlaceMerge(ws(paths), model) as merge:
            merge.apply(0.8)
            raise KeyboardInterrupt
    assert_model_equals(model, before)


class InterruptingTargets(dict):
    """Live tensors whose lookup raises KeyboardInterrupt at the n-th access: Ctrl-C in the middle of a pass."""

    def __init__(self, tensors, interrupt_at):
        super().__init__(tensors)
        self.lookups, self.interrupt_at = 0, interrupt_at

    def __getitem__(self, key):
        self.lookups += 1
        if self.lookups == self.interrupt_at:
            raise KeyboardInterrupt
        return super().__getitem__(key)


def test_interrupt_in_the_middle_of_a_pass(paths):
    """Ctrl-C after a few tensors were written: the group is dirty, restore() rewrites it."""
    model = live_model()
    before = snapshot(model)
    targets = InterruptingTargets(model, interrupt_at=3)
    merge = InPlaceMerge(ws(paths), targets)
    merge.prepare()
    with pytest.raises(KeyboardInterrupt):
        merge.apply(0.9)
    assert targets.lookups == 3
    assert not torch.equal(model[next(iter(model))], before[next(iter(model))])  # two tensors were written
    assert math.isnan(merge.applied["unet"]) and merge.applied_recipe() is None
    assert merge.restore() == {"unet"}
    assert_model_equals(model, before)
    # and the next apply rewrites the dirty group instead of skipping it
    assert merge.apply(0.9) == {"unet", "te"}
    merge.close()
    assert_model_equals(model, before)


def test_base_file_keeps_live_values_for_restore(paths):
    """Live weights that are not A's file (a baked-in LoRA): merges start from the file, restore gives the live."""
    model = live_model()
    baked = UNET_KEY
    with torch.no_grad():
        model[baked] += 0.125
    before = snapshot(model)
    with InPlaceMerge(ws(paths), model, base="file") as merge:
        assert merge.apply(0.0) == {"unet"}  # ratio 0 is A's file, not the live values, for the UNet
        assert_model_equals(model, A, [baked])
        merge.apply(1.0)
        assert_model_equals(model, B, merged_keys(model))
    assert_model_equals(model, before)


# --- targets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", ["device", "mapped"])
def test_files_released_after_prepare_and_reopened(paths, tmp_path, placement):
    """With resident copies the engine holds no file once prepared (Windows users can move B); mapped, it holds
    them until close(). A new prepare() after close() reads the files again and checks them again."""
    model = live_model()
    merge = InPlaceMerge(ws(paths), model, placement=placement)
    merge.prepare()
    assert hasattr(merge.inputs.b, "_file") == (placement == "mapped")
    merge.apply(1.0)
    merge.close()
    write_checkpoint(paths["b"], C)  # B changed on disk meanwhile
    with merge:
        merge.apply(1.0)
        assert_model_equals(model, C, merged_keys(model))
    assert_model_equals(model, A)


def test_copies_made_in_inference_mode_work_outside(paths):
    """reForge runs generation under torch.inference_mode(): copies made there still serve switches outside."""
    model = live_model()
    merge = InPlaceMerge(ws(paths), model)
    with torch.inference_mode():
        merge.prepare()
    merge.apply(1.0)
    assert_model_equals(model, B, merged_keys(model))
    with torch.inference_mode():
        merge.apply(0.5)
    merge.close()
    assert_model_equals(model, A)


def test_callable_targets_follow_moved_tensors(paths):
    """--medvram-like: the host replaces tensor objects between calls; the engine writes the current ones."""
    model = live_model()
    before = snapshot(model)
    current = {"model": model}
    merge = InPlaceMerge(ws(paths), lambda: current["model"])
    merge.apply(1.0)
    current["model"] = {k: torch.nn.Parameter(v.detach().clone(), requires_grad=False) for k, v in model.items()}
    assert merge.apply(0.0) == {"unet", "te"}
    assert_model_equals(current["model"], A, merged_keys(model))
    merge.apply(0.5)
    merge.close()
    assert_model_equals(current["model"], before)


def test_target_errors_name_the_key(paths):
    with pytest.raises(MergeTargetError, match="'model.diffusion_model.nope.weight' has no merged counterpart"):
        InPlaceMerge(ws(paths), {**live_model(), "model.diffusion_model.nope.weight": torch.zeros(1)})
    with pytest.raises(MergeTargetError, match=rf"'{UNET_KEY}' has shape \[8, 40\], the checkpoint \[40, 8\]"):
        InPlaceMerge(ws(paths), {**live_model(), UNET_KEY: torch.zeros(8, 40)})
    partial = live_model()
    del partial[TE_KEY]
    with pytest.raises(MergeTargetError, match=rf"no live tensor for '{TE_KEY}'"):
        InPlaceMerge(ws(paths), partial)
    with pytest.raises(MergeTargetError, match="no live tensor belongs to a merged group"):
        InPlaceMerge(ws(paths), {"alphas_cumprod": torch.zeros(10)})
    # an unmerged VAE, other keys and integer buffers are ignored, not refused
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    InPlaceMerge(ws(paths), {**live_model(), "alphas_cumprod": torch.zeros(10), position_ids: A[position_ids]}).close()


def test_shape_change_after_prepare_is_refused(paths):
    model = live_model()
    current = {"model": model}
    merge = InPlaceMerge(ws(paths), lambda: current["model"])
    merge.prepare()
    current["model"] = {**model, UNET_KEY: torch.zeros(8, 40)}
    with pytest.raises(MergeTargetError, match=f"'{UNET_KEY}' has shape"):
        merge.apply(0.5)


def test_bad_options(paths):
    with pytest.raises(ValueError, match="placement must be one of auto, device, cpu"):
        InPlaceMerge(ws(paths), live_model(), placement="gpu")
    with pytest.raises(ValueError, match="base must be one of live, file"):
        InPlaceMerge(ws(paths), live_model(), base="disk")
    with pytest.raises(ValueError, match="difference_dtype must be None"):
        InPlaceMerge(ad(paths), live_model(), difference_dtype=torch.bfloat16)


# --- memory --------------------------------------------------------------------------------------------

def test_estimate_memory_closed_form():
    tensors = [torch.empty(10, 3, dtype=torch.float16), torch.empty(7, dtype=torch.float16)]  # 37 elements
    estimate = estimate_memory(tensors, "weighted_sum")
    fields = lambda e: (e.base_bytes, e.other_bytes, e.original_bytes, e.staging_bytes)  # noqa: E731
    assert fields(estimate) == (74, 74, 0, 0)
    estimate = estimate_memory(tensors, "add_difference", difference_dtype=torch.float32, base="file", staged=True)
    assert fields(estimate) == (74, 148, 74, 60)
    assert estimate.total_bytes == 74 + 148 + 74 + 60
    fp8 = [torch.empty(5, dtype=torch.float8_e4m3fn)]  # resident in fp16, the originals in fp8
    assert estimate_memory(fp8, "weighted_sum", base="file").resident_bytes == 10 + 10 + 5


def test_estimate_memory_sdxl_unet_figure():
    """The README's figure: 2,567,463,684 fp16 parameters, two resident copies = 10.27 GB."""
    class Spec:
        def __init__(self, numel):
            self.shape, self.dtype = (numel,), torch.float16
    estimate = estimate_memory([Spec(2_567_463_684)], "weighted_sum")
    assert estimate.resident_bytes == 2 * 2 * 2_567_463_684


def test_engine_estimate(paths):
    model = live_model()
    merge = InPlaceMerge(ws(paths), model, placement="device")
    numel = sum(v.numel() for k, v in model.items() if classify_key(k) in ("unet", "te"))
    assert merge.estimate().resident_bytes == 2 * 2 * numel
    assert merge.estimate().staging_bytes == 0  # CPU targets: no staging


def test_integer_buffer_of_a_merged_group_is_left_alone(tmp_path):
    """Integer tensors under a merged prefix are copied from A by a merge; handed over, they are not switched."""
    index = "model.diffusion_model.some_index"
    a, b = {**A, index: torch.arange(4)}, {**B, index: torch.arange(4) + 10}
    recipe = MergeRecipe("weighted_sum", write_checkpoint(tmp_path / "a.safetensors", a),
                         write_checkpoint(tmp_path / "b.safetensors", b))
    model = {**live_model(), index: torch.arange(4)}
    with InPlaceMerge(recipe, model) as merge:
        merge.apply(1.0)
        assert torch.equal(model[index], torch.arange(4))
        assert_model_equals(model, B, merged_keys(live_model()))


def test_forget_leaves_a_group_the_host_reloaded(paths):
    # A1111 reloading the VAE (or all weights) into the same model object: restoring A's copies over the newly
    # loaded weights would undo the user's choice, so the host forgets those groups and closes.
    model = live_model()
    merge = InPlaceMerge(ws(paths, include_vae=True), model)
    merge.apply(0.5)
    reloaded = {k: torch.full_like(model[k], 3.0) for k in merged_keys(model, "vae")}
    for key, value in reloaded.items():
        model[key].data.copy_(value)
    merge.forget(["vae", "not-a-group"])
    assert merge.applied["vae"] is None
    merge.close()
    assert_model_equals(model, A, merged_keys(model))  # UNet and text encoders restored
    assert_model_equals(model, reloaded, list(reloaded))  # the reloaded VAE left alone
