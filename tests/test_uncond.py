import math

import pytest
import torch

from lib_ext.settings import Settings, UncondSchedule
from lib_ext.uncond import (SigmaWindow, UncondRun, blend_toward_zero, discrete_percent_to_sigma,
                            embedding_norms, restore_text_uncond, uncond_at_step, webui_zeroed_rows,
                            zero_weight_at)

POOLED = 6  # a tiny SDXL-like vector: [pooled (6) | size embeddings (4)]


class DictWithShape(dict):
    """Stands in for the WebUIs' SDXL cond type: a dict subclass that must survive our edits."""

    @property
    def shape(self):
        return self["crossattn"].shape


def sdxl_cond(rows=2, tokens=77, seed=0, zero_text=False):
    g = torch.Generator().manual_seed(seed)
    crossattn = torch.randn(rows, tokens, 8, generator=g)
    vector = torch.randn(rows, POOLED + 4, generator=g)
    if zero_text:  # what the WebUI feeds for an empty negative: text parts zero, size part kept
        crossattn.zero_()
        vector[:, :POOLED] = 0
    return DictWithShape(crossattn=crossattn, vector=vector)


def null_cond(seed=7):
    g = torch.Generator().manual_seed(seed)
    return {"crossattn": torch.randn(1, 77, 8, generator=g), "vector": torch.randn(1, POOLED + 4, generator=g)}


# --- the window --------------------------------------------------------------------------------------------

def test_percent_to_sigma_endpoints_follow_comfyui():
    sigmas = torch.linspace(0.03, 14.6, 1000)
    assert discrete_percent_to_sigma(0.0, sigmas) == math.inf      # open from the first step
    assert discrete_percent_to_sigma(-1.0, sigmas) == math.inf
    assert discrete_percent_to_sigma(1.0, sigmas) == 0.0           # open to the last step


def test_percent_to_sigma_interpolates_log_sigma_over_len_minus_one():
    # ComfyUI: sigma(t) with t = (1 - percent) * 999 for a 1000-entry table; here 5 entries -> t = (1-p)*4.
    sigmas = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    assert discrete_percent_to_sigma(0.5, sigmas) == pytest.approx(4.0)          # t = 2, on a table entry
    assert discrete_percent_to_sigma(0.25, sigmas) == pytest.approx(8.0)         # t = 3
    # t = 2.5 -> geometric mean of 4 and 8 (linear in log sigma)
    assert discrete_percent_to_sigma(0.375, sigmas) == pytest.approx(math.sqrt(32.0))


def test_window_is_comfyui_inclusive_range():
    window = SigmaWindow(sigma_start=5.0, sigma_end=1.0)
    assert [window.contains(s) for s in (6.0, 5.0, 3.0, 1.0, 0.5)] == [False, True, True, True, False]
    schedule = UncondSchedule(zero_weight=0.7, start=0.0, end=0.3)
    assert zero_weight_at(schedule, window, 3.0) == 0.7
    assert zero_weight_at(schedule, window, 0.5) == 0.0


def test_window_from_percents_on_a_1000_entry_table():
    sigmas = torch.exp(torch.linspace(math.log(0.03), math.log(14.6), 1000, dtype=torch.float64))
    window = SigmaWindow.from_percents(0.0, 0.3, lambda p: discrete_percent_to_sigma(p, sigmas))
    assert window.sigma_start == math.inf
    # end = 30 % -> t = 0.7 * 999 = 699.3: 70 % of log sigma[699] plus 30 % of log sigma[700]
    expected = math.exp(0.7 * math.log(sigmas[699]) + 0.3 * math.log(sigmas[700]))
    assert window.sigma_end == pytest.approx(expected, rel=1e-9)


# --- blends --------------------------------------------------------------------------------------------

def test_tensor_blend():
    text = torch.randn(2, 77, 8)
    assert blend_toward_zero(text, 0.0, 0) is text
    assert torch.equal(blend_toward_zero(text, 1.0, 0), torch.zeros_like(text))
    assert torch.allclose(blend_toward_zero(text, 0.25, 0), 0.75 * text)


def test_dict_blend_keeps_type_and_size_embeddings():
    cond = sdxl_cond()
    original = {k: v.clone() for k, v in cond.items()}
    out = blend_toward_zero(cond, 0.4, POOLED)
    assert out is cond and type(out) is DictWithShape
    assert torch.allclose(out["crossattn"], 0.6 * original["crossattn"])
    assert torch.allclose(out["vector"][:, :POOLED], 0.6 * original["vector"][:, :POOLED])
    assert torch.equal(out["vector"][:, POOLED:], original["vector"][:, POOLED:])


def test_full_zero_weight_equals_webui_zeroing_bit_for_bit():
    webui_zero = sdxl_cond(zero_text=True)
    ours = blend_toward_zero(sdxl_cond(), 1.0, POOLED)
    ours["vector"][:, POOLED:] = webui_zero["vector"][:, POOLED:]  # size parts come from the pass either way
    assert torch.equal(ours["crossattn"], webui_zero["crossattn"])
    assert torch.equal(ours["vector"], webui_zero["vector"])
    assert not torch.signbit(ours["crossattn"]).any()  # no -0.0 from 0 * negative values


# --- the honest text uncond ------------------------------------------------------------------------------

def test_zeroed_rows_are_detected_per_row():
    cond = sdxl_cond(rows=3)
    cond["crossattn"][1] = 0
    cond["vector"][1, :POOLED] = 0
    assert webui_zeroed_rows(cond, POOLED).tolist() == [False, True, False]
    assert webui_zeroed_rows(torch.zeros(2, 77, 8), 0).tolist() == [False, False]  # SD1 never zeroes


def test_restore_puts_null_uncond_into_zeroed_rows_only():
    cond = sdxl_cond(rows=3)
    cond["crossattn"][1] = 0
    cond["vector"][1, :POOLED] = 0
    before = {k: v.clone() for k, v in cond.items()}
    null = null_cond()
    out = restore_text_uncond(cond, null, POOLED)
    assert out is cond
    assert torch.equal(out["crossattn"][1], null["crossattn"][0])
    assert torch.equal(out["vector"][1, :POOLED], null["vector"][0, :POOLED])
    assert torch.equal(out["vector"][1, POOLED:], before["vector"][1, POOLED:])  # the row's own size part
    for row in (0, 2):
        assert torch.equal(out["crossattn"][row], before["crossattn"][row])
        assert torch.equal(out["vector"][row], before["vector"][row])


def test_restore_pads_null_uncond_like_stack_conds():
    # A batch whose other negative is 154 tokens long: A1111 pads the shorter row with its last token.
    cond = sdxl_cond(rows=2, tokens=154)
    cond["crossattn"][0] = 0
    cond["vector"][0, :POOLED] = 0
    null = null_cond()
    out = restore_text_uncond(cond, null, POOLED)
    assert torch.equal(out["crossattn"][0, :77], null["crossattn"][0])
    assert torch.equal(out["crossattn"][0, 77:], null["crossattn"][0, -1:].expand(77, -1))


def test_restore_skips_conds_of_another_model():
    cond = sdxl_cond(zero_text=True)
    refiner_null = {"crossattn": torch.randn(1, 77, 5), "vector": torch.randn(1, POOLED + 4)}
    assert torch.equal(restore_text_uncond(cond, refiner_null, POOLED)["crossattn"], torch.zeros(2, 77, 8))


def test_restore_casts_to_the_cond_dtype():
    cond = sdxl_cond(zero_text=True)
    cond["crossattn"] = cond["crossattn"].half()
    null = null_cond()
    out = restore_text_uncond(cond, null, POOLED)
    assert out["crossattn"].dtype == torch.float16
    assert torch.equal(out["crossattn"][0], null["crossattn"][0].half())


def test_null_weight_on_webui_zero_gives_null_uncond_and_full_weight_gives_zero_back():
    null = null_cond()
    at_null = uncond_at_step(sdxl_cond(zero_text=True), null, 0.0, POOLED)
    assert torch.equal(at_null["crossattn"], null["crossattn"].expand(2, -1, -1))
    webui = sdxl_cond(zero_text=True)
    at_zero = uncond_at_step(sdxl_cond(zero_text=True), null, 1.0, POOLED)
    assert torch.equal(at_zero["crossattn"], webui["crossattn"]) and torch.equal(at_zero["vector"], webui["vector"])


def test_blend_of_restored_rows_is_average_of_zero_and_null():
    null = null_cond()
    out = uncond_at_step(sdxl_cond(zero_text=True), null, 0.25, POOLED)
    assert torch.allclose(out["crossattn"][0], 0.75 * null["crossattn"][0])
    assert torch.allclose(out["vector"][0, :POOLED], 0.75 * null["vector"][0, :POOLED])


def test_embedding_norms():
    null = {"crossattn": torch.zeros(1, 77, 8), "vector": torch.zeros(1, POOLED + 4)}
    null["crossattn"][0, :, 0] = 3.0
    null["crossattn"][0, :, 1] = 4.0
    null["vector"][0, :POOLED] = 1.0
    norms = embedding_norms(null, POOLED)
    assert norms == {"crossattn_token_norm": pytest.approx(5.0), "pooled_norm": pytest.approx(math.sqrt(POOLED))}


# --- one generation ------------------------------------------------------------------------------------

def linear_percent_to_sigma(percent):
    return 10.0 * (1.0 - percent)  # sigma 10 at 0 %, 0 at 100 %


def test_run_applies_weight_inside_the_window_only():
    settings = Settings(enabled=True, zero_weight=1.0, start=0.0, end=0.5)
    run = UncondRun(settings, POOLED)
    run.begin_batch(null_cond())
    run.begin_pass(hires=False)
    inside = run.uncond_for_call(sdxl_cond(), 8.0, linear_percent_to_sigma)
    assert torch.equal(inside["crossattn"], torch.zeros(2, 77, 8))
    text = sdxl_cond()
    outside = run.uncond_for_call(text, 2.0, linear_percent_to_sigma)
    assert torch.equal(outside["crossattn"], sdxl_cond()["crossattn"])
    assert (run.denoiser_calls, run.blended_calls, run.text_encoder_calls) == (2, 1, 1)


def test_run_resolves_the_window_per_pass():
    settings = Settings(enabled=True, zero_weight=1.0, end=0.5, hr_mode="own", hr_zero_weight=1.0, hr_end=0.9)
    run = UncondRun(settings, POOLED)
    run.begin_pass(hires=False)
    run.uncond_for_call(sdxl_cond(), 8.0, linear_percent_to_sigma)
    assert run.window.sigma_end == pytest.approx(5.0)
    run.begin_pass(hires=True)
    run.uncond_for_call(sdxl_cond(), 8.0, linear_percent_to_sigma)
    assert run.window.sigma_end == pytest.approx(1.0)


def test_untouched_hires_pass_passes_the_webui_uncond_through():
    run = UncondRun(Settings(enabled=True, zero_weight=1.0, hr_mode="off"), POOLED)
    run.begin_batch(null_cond())
    run.begin_pass(hires=True)
    cond = sdxl_cond(zero_text=True)
    assert run.uncond_for_call(cond, 5.0, linear_percent_to_sigma) is cond
    assert torch.equal(cond["crossattn"], torch.zeros(2, 77, 8))


def test_run_reuses_its_answer_only_for_the_same_input_and_weight():
    settings = Settings(enabled=True, zero_weight=0.5, start=0.0, end=0.5)
    run = UncondRun(settings, POOLED)
    run.begin_batch(null_cond())
    run.begin_pass(hires=False)
    first = {k: v.clone() for k, v in run.uncond_for_call(sdxl_cond(zero_text=True), 8.0,
                                                           linear_percent_to_sigma).items()}
    again = run.uncond_for_call(sdxl_cond(zero_text=True), 7.0, linear_percent_to_sigma)  # a rebuilt, equal input
    assert type(again) is DictWithShape and all(torch.equal(again[k], first[k]) for k in first)
    # Prompt editing in the negative changes the input: computed afresh.
    edited = run.uncond_for_call(sdxl_cond(seed=3), 7.0, linear_percent_to_sigma)
    assert torch.allclose(edited["crossattn"], 0.5 * sdxl_cond(seed=3)["crossattn"])
    # Outside the window the weight is 0: the text uncond, not the blended answer from before.
    outside = run.uncond_for_call(sdxl_cond(seed=3), 1.0, linear_percent_to_sigma)
    assert torch.equal(outside["crossattn"], sdxl_cond(seed=3)["crossattn"])
