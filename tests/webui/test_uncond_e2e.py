"""Uncond control in a real WebUI. Oracles come from the WebUI itself: its own zeroing of an empty SDXL negative
(= zero uncond) and a negative of one space, which tokenizes like "" but is not zeroed (= te(""), null uncond)."""
from __future__ import annotations

import pytest

from lib_ext.settings import Settings
from tests.webui.client import ApiError, b64_png
from tests.webui.conftest import SDXL

NULL = {"enabled": True, "zero_weight": 0.0}
ZERO = {"enabled": True, "zero_weight": 1.0}
LONG_PROMPT = ", ".join(["a very detailed lighthouse on a rocky coast at dusk with waves"] * 8)  # > 75 tokens


def warm_img2img(webui, init: str) -> dict:
    """img2img parameters, after one throw-away img2img: the first img2img after a txt2img comes out different
    in A1111 1.10 whatever the extension does (seen with Uncond Lab disabled too)."""
    params = {"init_images": [init], "denoising_strength": 0.6}
    webui.img2img(**params)
    return params


# --- SD1.5: every WebUI feeds te("") for an empty negative -----------------------------------------------

def test_sd15_null_weight_is_the_webui_default(sd15):
    assert sd15.txt2img(NULL).pixels == sd15.txt2img().pixels


def test_sd15_zero_weight_changes_the_picture(sd15):
    assert sd15.txt2img(ZERO).pixels != sd15.txt2img().pixels


def test_sd15_batch_and_img2img(sd15):
    batch = sd15.txt2img(NULL, batch_size=2)
    assert len(batch.images) == 2 and batch.pixels == sd15.txt2img(batch_size=2).pixels
    params = warm_img2img(sd15, b64_png(batch.images[0]))
    assert sd15.img2img(NULL, **params).pixels == sd15.img2img(**params).pixels


# --- SDXL: A1111/reForge zero an empty negative -----------------------------------------------------------

def default_uncond(webui) -> dict:
    """The setting that gives the WebUI's own picture: zero (A1111, reForge, Neo with sdxl_zero_neg) or null."""
    return ZERO if webui.feeds_zero_uncond() else NULL


def test_sdxl_full_zero_weight_is_the_webui_default(sdxl):
    assert sdxl.txt2img(default_uncond(sdxl)).pixels == sdxl.txt2img().pixels


def test_sdxl_neo_default_is_null_and_its_zero_option_is_zero(sdxl):
    """Forge Neo: w = 0 is its default picture, w = 1 its picture with `sdxl_zero_neg` on, pixel for pixel, and
    flipping the option takes effect at the next generation (Neo's cond cache is not keyed on it)."""
    if sdxl.kind != "forge_neo":
        pytest.skip("Forge Neo's sdxl_zero_neg option")
    neo_default = sdxl.txt2img().pixels
    assert sdxl.txt2img(NULL).pixels == neo_default
    sdxl.post("/sdapi/v1/options", {"sdxl_zero_neg": True})
    try:
        neo_zero = sdxl.txt2img().pixels
        assert neo_zero != neo_default  # not Neo's stale cached uncond
        assert sdxl.txt2img(ZERO).pixels == neo_zero
        assert sdxl.txt2img(NULL).pixels == neo_default
    finally:
        sdxl.post("/sdapi/v1/options", {"sdxl_zero_neg": False})
    assert sdxl.txt2img().pixels == neo_default


def test_sdxl_null_weight_is_te_of_empty_string(sdxl):
    null = sdxl.txt2img(NULL)
    assert null.pixels == sdxl.txt2img(negative_prompt=" ").pixels
    assert (null.pixels != sdxl.txt2img().pixels) == sdxl.feeds_zero_uncond()  # Forge Neo: its own is te("")


@pytest.mark.parametrize("prompt", [LONG_PROMPT, "a lighthouse AND a storm"], ids=["154-tokens", "AND"])
def test_sdxl_null_uncond_with_long_and_composed_prompts(sdxl, prompt):
    assert sdxl.txt2img(NULL, prompt=prompt).pixels == sdxl.txt2img(negative_prompt=" ", prompt=prompt).pixels


@pytest.mark.parametrize("prompt", ["a lighthouse at dusk", "a lighthouse AND a storm"], ids=["plain", "AND"])
def test_sdxl_batch_of_two(sdxl, prompt):
    params = {"batch_size": 2, "prompt": prompt}
    null = sdxl.txt2img(NULL, **params)
    assert len(null.images) == 2 and null.pixels == sdxl.txt2img(negative_prompt=" ", **params).pixels
    assert sdxl.txt2img(default_uncond(sdxl), **params).pixels == sdxl.txt2img(**params).pixels


def test_sdxl_prompt_edited_negative_is_never_zeroed(sdxl):
    # "[:blurry:2]" is "" for two steps, but the WebUIs only zero a negative whose every schedule text is "".
    negative = "[:blurry:2]"
    assert sdxl.txt2img(NULL, negative_prompt=negative).pixels == sdxl.txt2img(negative_prompt=negative).pixels


def test_sdxl_blend_lies_between_null_and_zero(sdxl):
    blend = sdxl.txt2img({"enabled": True, "zero_weight": 0.5})
    assert blend.pixels == sdxl.txt2img({"enabled": True, "zero_weight": 0.5}).pixels
    assert blend.pixels not in (sdxl.txt2img(ZERO).pixels, sdxl.txt2img(NULL).pixels)
    assert "Uncond zero weight: 0.5" in blend.infotexts[0]


def test_sdxl_window_limits_the_zero_weight(sdxl):
    early = sdxl.txt2img({**ZERO, "start": 0.0, "end": 0.5}).pixels
    assert early != sdxl.txt2img(ZERO).pixels and early != sdxl.txt2img(NULL).pixels
    # A window past every sigma of the schedule is the null uncond everywhere.
    assert sdxl.txt2img({**ZERO, "start": 1.0, "end": 1.0}).pixels == sdxl.txt2img(NULL).pixels


HIRES = {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.6, "hr_second_pass_steps": 3, "hr_cfg": 0}


def test_sdxl_hires_pass_settings(sdxl):
    # A1111 has a separate hires negative: " " (te("")) or "" (zeroed) per pass gives every combination.
    same = sdxl.txt2img(NULL, **HIRES)
    assert same.pixels == sdxl.txt2img(negative_prompt=" ", hr_negative_prompt=" ", **HIRES).pixels
    # An empty hires negative falls back to the first pass's, so "te("") then zeros" has no WebUI oracle; but
    # an untouched hires pass keeps the WebUI's zeros, which is what its own w = 1 gives too.
    untouched = sdxl.txt2img({**NULL, "hr_mode": "off"}, **HIRES)
    own = sdxl.txt2img({**NULL, "hr_mode": "own", "hr_zero_weight": 1.0}, **HIRES)
    if sdxl.feeds_zero_uncond():
        assert own.pixels == untouched.pixels != same.pixels
    else:  # Forge Neo: an untouched hires pass keeps its own te("")
        assert untouched.pixels == same.pixels != own.pixels
    assert "Uncond hires: own" in own.infotexts[0]


def test_sdxl_cfg_one_runs_and_says_the_uncond_is_unused(sdxl):
    at_cfg_one = sdxl.txt2img(ZERO, cfg_scale=1.0)
    assert at_cfg_one.images and "Uncond Lab note" in at_cfg_one.infotexts[0]
    if sdxl.skips_uncond_at_cfg1:  # no uncond at CFG 1: any zero weight is the plain picture
        assert at_cfg_one.pixels == sdxl.txt2img(NULL, cfg_scale=1.0).pixels == sdxl.txt2img(cfg_scale=1.0).pixels


def test_sdxl_img2img(sdxl):
    params = warm_img2img(sdxl, b64_png(sdxl.txt2img().images[0]))
    assert sdxl.img2img(NULL, **params).pixels == sdxl.img2img(negative_prompt=" ", **params).pixels


# --- settings, API and infotext -------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    ({"enabled": True, "zero_weight": 2}, "'zero_weight' must be a number in [0, 1], got 2"),
    ({"enabled": True, "zero_wieght": 1}, "unknown setting(s) 'zero_wieght'"),
    ({"enabled": True, "start": 0.8, "end": 0.2}, "'start' (0.8) must not be after 'end' (0.2)"),
])
def test_api_refuses_bad_settings_with_422(sd15, args, fragment):
    with pytest.raises(ApiError) as error:
        sd15.txt2img(args)
    assert error.value.status == 422 and fragment in error.value.body


def test_positional_args_are_the_ui_order(sd15):
    assert sd15.txt2img([True, 1.0, 0.0, 1.0]).pixels == sd15.txt2img(ZERO).pixels


def test_disabled_writes_no_infotext(sd15):
    assert "Uncond" not in sd15.txt2img({"enabled": False, "zero_weight": 1.0}).infotexts[0]


def test_infotext_round_trip_through_png_info(sd15):
    settings = {"enabled": True, "zero_weight": 0.25, "start": 0.1, "end": 0.7}
    image = sd15.txt2img(settings).images[0]
    parameters = sd15.post("/sdapi/v1/png-info", {"image": b64_png(image)})["parameters"]
    # Pasting also sets the prediction explicitly: no RF keys = RF did not run = "Model's own".
    assert Settings.from_dict(Settings.infotext_to_ui(parameters)) == Settings.from_dict({**settings, "rf": False})


def test_cfg_one_and_skipped_uncond_steps_run(sd15):
    at_cfg_one = sd15.txt2img(ZERO, cfg_scale=1.0)
    assert at_cfg_one.images and "Uncond Lab note" in at_cfg_one.infotexts[0]
    assert "Uncond Lab note" not in sd15.txt2img(ZERO).infotexts[0]
    # Through the options, not override_settings: the WebUIs keep an override of an option that config.json
    # lacks for every later generation.
    sd15.post("/sdapi/v1/options", {"s_min_uncond": 100.0})
    try:
        assert "negative guidance minimum sigma" in sd15.txt2img(ZERO).infotexts[0]
    finally:
        sd15.post("/sdapi/v1/options", {"s_min_uncond": 0.0})


# --- nothing is left behind -----------------------------------------------------------------------------

def test_a_generation_failing_mid_sampling_leaves_nothing_behind(sd15):
    with pytest.raises(ApiError) as error:
        sd15.txt2img(ZERO, scripts={"Uncond Lab test faults": {"args": [{"fail_at_call": 3}]}})
    assert error.value.status == 500
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]


def test_an_interrupted_generation_leaves_nothing_behind(sd15):
    sd15.txt2img(ZERO, scripts={"Uncond Lab test faults": {"args": [{"interrupt_at_call": 2}]}})
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]


def test_sdxl_failure_and_interrupt_leave_nothing_behind(sdxl):
    with pytest.raises(ApiError):
        sdxl.txt2img(NULL, scripts={"Uncond Lab test faults": {"args": [{"fail_at_call": 2}]}})
    sdxl.txt2img(NULL, scripts={"Uncond Lab test faults": {"args": [{"interrupt_at_call": 2}]}})
    assert sdxl.txt2img().pixels == sdxl.fresh[SDXL]


# --- X/Y/Z plot -----------------------------------------------------------------------------------------

def xyz_args(webui, x_label, x_values, y_label, y_values):
    """Positional X/Y/Z args: A1111 1.10 and reForge differ in length, so build them from script-info."""
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == "x/y/z plot" and not s["is_img2img"])
    labels = info["args"][0]["choices"]
    values = [arg.get("value") for arg in info["args"]]
    values[0:9] = [labels.index(x_label), x_values, [], labels.index(y_label), y_values, [], 0, "", []]
    values[[arg["label"] for arg in info["args"]].index("Include Sub Images")] = True
    return values


def test_xyz_zero_weight_by_cfg(sd15):
    args = xyz_args(sd15, "[Uncond Lab] Zero weight", "0, 1", "CFG Scale", "3, 7")
    grid = sd15.txt2img(script_name="x/y/z plot", script_args=args)
    texts = grid.infotexts
    assert len(grid.images) == 1 + 4  # the grid, then the cells
    cells = texts[1:] if len(texts) == 5 else texts
    assert sum("Uncond zero weight: 1.0" in t for t in cells) == 2
    assert sum("Uncond zero weight: 0.0" in t for t in cells) == 2
    # The cell w=1, CFG 7 is the plain generation with those settings.
    cell = grid.pixels[1:][[i for i, t in enumerate(cells) if "zero weight: 1.0" in t and "CFG scale: 7" in t][0]]
    assert cell == sd15.txt2img(ZERO, cfg_scale=7).pixels[0]
