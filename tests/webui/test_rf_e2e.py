"""Rectified-flow mode in a real WebUI (A1111 1.10 and reForge, SD1.5 and SDXL), through the HTTP API.

What is checked: RF runs in txt2img, img2img and hires fix with the RF schedule and Euler, Heun, DPM++ 2M (each
deterministic and different from the model's own sampling); Euler a runs its RF variant, seeded; refused
samplers and conflicting options give HTTP 422 with a message; infotext and PNG-info round trip; the X/Y/Z RF
shift axis; a checkpoint that declares flow in its metadata is RF by default; RF is independent of the uncond
control (it leaves the WebUI's own uncond until a zero weight is set); nothing is left behind (plain generations
afterwards equal the ones made before any test, also after a failure or an interrupt mid-sampling).

Oracle (reForge): its built-in "Advanced Model Sampling" in SD3 mode with shift s is ComfyUI's flow sampling;
Uncond Lab RF with shift s must give the same pixels (txt2img: identical; img2img/hires: within one level,
because the two noise a latent as sigma·n + (1 - sigma)·x and x + (n - x)·sigma, equal up to float rounding).
"""
from __future__ import annotations

import re

import pytest

from lib_ext.settings import PREDICTIONS, Settings
from tests.webui.client import ApiError, b64_png, max_pixel_difference
from tests.webui.conftest import SD15, SDXL, sdxl_model
from tests.webui.test_uncond_e2e import warm_img2img, xyz_args

RF = {"enabled": True, "rf": True, "shift": 3.0}  # the uncond switch on without a weight: the WebUI's own uncond
RF_ONLY = {"rf": True, "shift": 3.0}
RF_SCHEDULE = {"scheduler": "Rectified Flow"}
HIRES = {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.6, "hr_second_pass_steps": 3, "hr_cfg": 0}
SAMPLERS = ["Euler", "Heun", "DPM++ 2M"]
FLOW_SD15, FLOW_SDXL = "uncondlab-tiny-sd15-flow", sdxl_model("flow")  # -a weights, metadata: flow
FAULTS = "Uncond Lab test faults"


def refusal(call) -> str:
    """The detail of the HTTP 422 that `call` must end in."""
    with pytest.raises(ApiError) as error:
        call()
    assert error.value.status == 422, error.value.body
    return error.value.body


def probe(webui) -> str:
    """What earlier generations left on the model (see the fault extension), from a plain generation."""
    infotext = webui.txt2img(scripts={FAULTS: {"args": [{"probe": True}]}}).infotexts[0]
    return re.search(r"Uncond Lab probe: ([^,\n]*)", infotext).group(1)


def set_options(webui, **values) -> dict:
    """Set options through the API (overrides of options absent from config.json leak); returns the old ones."""
    current = webui.get("/sdapi/v1/options")
    webui.post("/sdapi/v1/options", values)
    return {key: current[key] for key in values}


def generate(webui, mode: str, uncond_lab=None, init: str | None = None, **params):
    if mode == "txt2img":
        return webui.txt2img(uncond_lab, **params)
    if mode == "hires":
        return webui.txt2img(uncond_lab, **HIRES, **params)
    return webui.img2img(uncond_lab, init_images=[init], denoising_strength=0.6, **params)


def check_rf_modes(webui, mode: str, sampler: str) -> None:
    """RF with the RF schedule: the same twice, not the model's own sampling, and said so in the infotext."""
    init = None
    if mode == "img2img":
        init = b64_png(webui.txt2img().images[0])
        warm_img2img(webui, init)
    params = {"sampler_name": sampler, **RF_SCHEDULE}
    first = generate(webui, mode, RF, init, **params)
    assert generate(webui, mode, RF, init, **params).pixels == first.pixels
    assert generate(webui, mode, None, init, sampler_name=sampler).pixels != first.pixels
    assert "RF shift: 3.0" in first.infotexts[0] and "Schedule type: Rectified Flow" in first.infotexts[0]


# --- the modes, the samplers that work ---------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "hires"])
def test_sd15_rf_runs_deterministically(sd15, mode, sampler):
    check_rf_modes(sd15, mode, sampler)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "hires"])
def test_sdxl_rf_runs_deterministically(sdxl, mode, sampler):
    check_rf_modes(sdxl, mode, sampler)


def test_sd15_shift_and_schedule_change_the_picture(sd15):
    base = sd15.txt2img(RF, **RF_SCHEDULE).pixels
    assert sd15.txt2img({**RF, "shift": 1.0}, **RF_SCHEDULE).pixels != base
    # The WebUI's own schedules follow the flow table too, and differ from the RF schedule.
    assert sd15.txt2img(RF, scheduler="Karras").pixels != base


def test_sd15_uncond_window_follows_the_flow_time(sd15):
    # RF schedule, 4 steps, shift 3: sigmas 1, 0.9, 0.75, 0.5, 0. The window [0, end] keeps the zero weight on
    # steps with sigma >= percent_to_sigma(end) = sigma(1 - end) on the flow grid: end 0.55 -> 0.711 and end
    # 0.6 -> 0.667 both cover the first three steps, end 0.45 -> 0.786 only the first two. (On the model's eps
    # table every one of these ends is a sigma above 1, so all three would cover no step at all.)
    def window(end):
        return sd15.txt2img({**RF, "zero_weight": 1.0, "start": 0.0, "end": end}, **RF_SCHEDULE).pixels
    three_steps = window(0.55)
    assert window(0.6) == three_steps
    assert window(0.45) != three_steps
    assert three_steps != sd15.txt2img({**RF, "zero_weight": 1.0}, **RF_SCHEDULE).pixels  # not every step
    assert three_steps != sd15.txt2img(RF, **RF_SCHEDULE).pixels                          # not no step


def test_sd15_euler_a_runs_the_seeded_rf_variant(sd15):
    euler_a = sd15.txt2img(RF, sampler_name="Euler a", **RF_SCHEDULE)
    assert sd15.txt2img(RF, sampler_name="Euler a", **RF_SCHEDULE).pixels == euler_a.pixels  # seeded
    assert sd15.txt2img(RF, sampler_name="Euler a", seed=99, **RF_SCHEDULE).pixels != euler_a.pixels
    assert sd15.txt2img(RF, sampler_name="Euler", **RF_SCHEDULE).pixels != euler_a.pixels   # it adds noise
    assert sd15.txt2img(sampler_name="Euler a").pixels != euler_a.pixels


def test_sdxl_euler_a_runs_the_seeded_rf_variant(sdxl):
    euler_a = sdxl.txt2img(RF, sampler_name="Euler a", **RF_SCHEDULE)
    assert sdxl.txt2img(RF, sampler_name="Euler a", **RF_SCHEDULE).pixels == euler_a.pixels
    assert sdxl.txt2img(RF, sampler_name="Euler", **RF_SCHEDULE).pixels != euler_a.pixels


# --- refusals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE", "DDIM", "DPM2 a"])
def test_sd15_refused_samplers_name_the_working_ones(sd15, sampler):
    if sampler not in {entry["name"] for entry in sd15.get("/sdapi/v1/samplers")}:
        pytest.skip(f"{sd15.name} has no sampler '{sampler}'")  # Forge Neo has no DPM2 a
    body = refusal(lambda: sd15.txt2img(RF, sampler_name=sampler))
    assert f"sampler '{sampler}' cannot sample a rectified-flow model" in body
    assert "Samplers that work in RF mode: Euler, Heun, LMS, DPM2, DPM++ 2M, Euler a" in body


def test_sdxl_refusals_are_those_of_sd15(sdxl):
    body = refusal(lambda: sdxl.txt2img(RF, sampler_name="DPM++ 2M SDE"))
    assert "sampler 'DPM++ 2M SDE' cannot sample a rectified-flow model" in body
    assert "sampler 'DDIM'" in refusal(lambda: sdxl.txt2img(RF, hr_sampler_name="DDIM", **HIRES))
    assert "'Rectified Flow' schedule needs rectified-flow sampling" in refusal(lambda: sdxl.txt2img(**RF_SCHEDULE))
    assert sdxl.txt2img().pixels == sdxl.fresh[SDXL]


def test_sd15_hires_sampler_is_checked_too(sd15):
    assert "sampler 'DDIM'" in refusal(lambda: sd15.txt2img(RF, hr_sampler_name="DDIM", **HIRES))


def test_sd15_rf_schedule_without_rf_is_refused(sd15):
    assert "'Rectified Flow' schedule needs rectified-flow sampling" in refusal(
        lambda: sd15.txt2img(**RF_SCHEDULE))
    assert "'Rectified Flow' schedule" in refusal(lambda: sd15.txt2img({"enabled": True, "rf": False},
                                                                       **RF_SCHEDULE))


@pytest.mark.parametrize("option, value, fragment", [
    ("sgm_noise_multiplier", True, "'SGM noise multiplier'"),
    ("sd_noise_schedule", "Zero Terminal SNR", "Zero Terminal SNR"),
    ("s_churn", 0.5, "'Sigma churn' (0.5)"),
])
def test_sd15_conflicting_options_are_refused(sd15, option, value, fragment):
    old = set_options(sd15, **{option: value})
    try:
        assert fragment in refusal(lambda: sd15.txt2img(RF, **RF_SCHEDULE))
    finally:
        sd15.post("/sdapi/v1/options", old)


def test_sd15_img2img_extra_noise_is_refused(sd15):
    init = b64_png(sd15.txt2img().images[0])
    old = set_options(sd15, img2img_extra_noise=0.2)
    try:
        assert "'Extra noise' (0.2)" in refusal(lambda: sd15.img2img(RF, init_images=[init]))
        assert sd15.txt2img(RF, **RF_SCHEDULE).images  # txt2img noises no latent: not concerned
    finally:
        sd15.post("/sdapi/v1/options", old)


def test_sd15_bad_rf_settings_are_refused(sd15):
    assert "'shift' must be a number in (0, 100], got 0" in refusal(lambda: sd15.txt2img({**RF, "shift": 0}))
    assert "'rf' must be true, false, null" in refusal(lambda: sd15.txt2img({**RF, "rf": "sometimes"}))


# --- API forms, infotext -----------------------------------------------------------------------------------

def test_sd15_api_labels_and_positional_args(sd15):
    expected = sd15.txt2img(RF, **RF_SCHEDULE).pixels
    assert sd15.txt2img({"enabled": True, "rf": PREDICTIONS[True]}, **RF_SCHEDULE).pixels == expected
    positional = [True, 0.0, 0.0, 1.0, "same", 0.0, 0.0, 1.0, False, PREDICTIONS[True], 3.0, 1000.0]
    assert sd15.txt2img(positional, **RF_SCHEDULE).pixels == expected


def test_sd15_infotext_round_trip_through_png_info(sd15):
    settings = {**RF_ONLY, "shift": 2.5, "multiplier": 999.0}
    image = sd15.txt2img(settings, **RF_SCHEDULE).images[0]
    parameters = sd15.post("/sdapi/v1/png-info", {"image": b64_png(image)})["parameters"]
    assert parameters["RF shift"] == "2.5" and parameters["RF multiplier"] == "999.0"
    assert Settings.from_dict(Settings.infotext_to_ui(parameters)) == Settings.from_dict(settings)
    # Without RF: no RF key, and pasting says "not flow".
    plain = sd15.post("/sdapi/v1/png-info", {"image": b64_png(sd15.txt2img({"enabled": True}).images[0])})
    assert "RF shift" not in plain["info"]
    assert Settings.infotext_to_ui(plain["parameters"])["rf"] == PREDICTIONS[False]


def test_sd15_xyz_over_rf_shift(sd15):
    args = xyz_args(sd15, "[Uncond Lab] RF shift", "1, 3", "Nothing", "")
    grid = sd15.txt2img(script_name="x/y/z plot", script_args=args, **RF_SCHEDULE)
    cells, texts = grid.pixels[1:], grid.infotexts[-2:]
    assert len(cells) == 2
    assert ["RF shift: 1.0" in texts[0], "RF shift: 3.0" in texts[1]] == [True, True]
    # The shift-3 cell is the plain RF generation with shift 3 (the axis switches RF on, nothing else).
    assert cells[1] == sd15.txt2img(RF_ONLY, **RF_SCHEDULE).pixels[0]
    assert "Uncond zero weight" not in texts[1]
    assert cells[0] != cells[1]


# --- nothing is left behind --------------------------------------------------------------------------------

def test_sd15_rf_off_afterwards_is_a_fresh_start(sd15):
    sd15.txt2img(RF, **RF_SCHEDULE, **HIRES)
    assert sd15.txt2img().pixels == sd15.fresh[SD15]
    assert sd15.txt2img({"enabled": True}).pixels == sd15.fresh[SD15]  # model default: this model is not flow
    assert probe(sd15) == probe_of_a_clean_model(sd15)


def probe_of_a_clean_model(webui) -> str:
    clean = "create_denoiser=False;add_noise_to_latent=False;model_sampling=False"
    own = {"reforge": "ModelSampling", "forge_neo": "Prediction"}.get(webui.kind)  # not our flow class
    return clean + (f";unet_model_sampling={own}" if own else "")


def test_sd15_failure_and_interrupt_mid_rf_leave_nothing_behind(sd15):
    with pytest.raises(ApiError) as error:
        sd15.txt2img(RF, scripts={FAULTS: {"args": [{"fail_at_call": 3}]}}, **RF_SCHEDULE)
    assert error.value.status == 500
    assert probe(sd15) == probe_of_a_clean_model(sd15)
    assert sd15.txt2img().pixels == sd15.fresh[SD15]
    sd15.txt2img(RF, scripts={FAULTS: {"args": [{"interrupt_at_call": 2}]}}, **RF_SCHEDULE, **HIRES)
    assert probe(sd15) == probe_of_a_clean_model(sd15)
    assert sd15.txt2img().pixels == sd15.fresh[SD15]


def test_sd15_zero_terminal_snr_is_unaffected_by_an_earlier_rf_run(sd15):
    # reForge applies ZTSNR to the UNet's current model_sampling between generations; an RF patch left on the
    # model would take it. The RF run must put the model's own back.
    old = set_options(sd15, sd_noise_schedule="Zero Terminal SNR")
    try:
        before = sd15.txt2img().pixels
        sd15.post("/sdapi/v1/options", old)
        sd15.txt2img(RF, **RF_SCHEDULE)
        sd15.post("/sdapi/v1/options", {"sd_noise_schedule": "Zero Terminal SNR"})
        assert sd15.txt2img().pixels == before
    finally:
        sd15.post("/sdapi/v1/options", old)


# --- reForge: the Comfy samplers, Advanced Model Sampling --------------------------------------------------

def reforge_only(webui):
    if webui.kind != "reforge":
        pytest.skip("reForge only")


def test_sd15_reforge_comfy_samplers_follow_the_flow(sd15):
    reforge_only(sd15)
    # The Comfy samplers take their schedule from the (patched) model sampling by their own names; reForge turns
    # other names, ours included, into "Normal" for them. Their "Simple" is the RF schedule value for value
    # when the steps divide 1000, and Euler Comfy is the same Euler step: the k-diffusion Euler's pixels.
    expected = sd15.txt2img(RF, **RF_SCHEDULE).pixels
    assert sd15.txt2img(RF, sampler_name="Euler Comfy", scheduler="Simple").pixels == expected
    # An SDE sampler that reads model_sampling through the denoiser's model_patcher: runs, seeded.
    sde = sd15.txt2img(RF, sampler_name="DPM++ 2M SDE Comfy", scheduler="Simple").pixels
    assert sd15.txt2img(RF, sampler_name="DPM++ 2M SDE Comfy", scheduler="Simple").pixels == sde
    assert sd15.txt2img(sampler_name="DPM++ 2M SDE Comfy", scheduler="Simple").pixels != sde


def test_sd15_reforge_comfy_churn_options_are_checked(sd15):
    reforge_only(sd15)
    old = set_options(sd15, euler_og_s_churn=0.5)
    try:
        assert "'Sigma churn' (0.5) makes Euler Comfy" in refusal(
            lambda: sd15.txt2img(RF, sampler_name="Euler Comfy", scheduler="Simple"))
        assert sd15.txt2img(RF, **RF_SCHEDULE).images  # the k-diffusion Euler reads s_churn, which is 0
    finally:
        sd15.post("/sdapi/v1/options", old)


def ams(shift: float = 3.0, mode: str = "SD3") -> dict:
    """reForge's Advanced Model Sampling, enabled: its 16 positional args (enabled, mode, discrete type,
    zero SNR, EDM type, EDM sigma max/min, V sigma max/min, cascade/SD3/Aura shift, Flux max/base shift, width,
    height); zero SNR off, else reForge's processing also applies ZTSNR."""
    args = [True, mode, "eps", False, "v_prediction", 120.0, 0.002, 500.0, 0.03, 2.0, shift, 1.73, 1.15, 0.5,
            1024, 1024]
    return {"advanced model sampling for reforge": {"args": args}}


def webui_uncond(settings: dict, model: str) -> dict:
    """`settings` with the uncond the WebUI itself feeds for an empty negative spelled out: te("") on SD1.5, zeros
    (w = 1) on SDXL. The same pictures as no weight at all, which leaves the WebUI's own uncond."""
    return {**settings, "zero_weight": 1.0} if model == SDXL else settings


def check_rf_equals_advanced_model_sampling_sd3(webui, model: str) -> None:
    reforge_only(webui)
    rf = webui_uncond(RF, model)
    ours = {(sampler, schedule): webui.txt2img(rf, sampler_name=sampler, scheduler=schedule).images[0]
            for sampler, schedule in [("Euler", "Automatic"), ("Euler", "Simple"), ("Euler", "Karras"),
                                      ("Heun", "Simple"), ("DPM++ 2M", "Simple")]}
    rf_only = webui.txt2img(RF_ONLY, sampler_name="Euler", scheduler="Simple").images[0]
    init = b64_png(webui.txt2img().images[0])
    ours_img2img = webui.img2img(rf, init_images=[init], denoising_strength=0.6, scheduler="Simple").images[0]
    ours_hires = webui.txt2img(rf, scheduler="Simple", **HIRES).images[0]
    try:
        # From here on Advanced Model Sampling leaves its flow denoiser on the model (see clean_leftovers).
        for (sampler, schedule), image in ours.items():
            theirs = webui.txt2img(sampler_name=sampler, scheduler=schedule, scripts=ams()).images[0]
            assert max_pixel_difference(image, theirs) == 0, (sampler, schedule)
        assert max_pixel_difference(rf_only, ours[("Euler", "Simple")]) == 0  # {"rf": true, "shift": 3} alone
        theirs = webui.img2img(init_images=[init], denoising_strength=0.6, scheduler="Simple", scripts=ams())
        assert max_pixel_difference(ours_img2img, theirs.images[0]) <= 1
        theirs = webui.txt2img(scheduler="Simple", scripts=ams(), **HIRES)
        assert max_pixel_difference(ours_hires, theirs.images[0]) <= 1
        # Both at once: refused, the message says which.
        assert "Advanced Model Sampling (SD3 mode) is enabled" in refusal(lambda: webui.txt2img(RF, scripts=ams()))
        assert "create_denoiser=True" in probe(webui)  # its leak, which Uncond Lab cleans up below
    finally:
        webui.txt2img({"enabled": True})  # any enabled Uncond Lab generation removes the leftover
    assert probe(webui) == probe_of_a_clean_model(webui)
    assert webui.txt2img().pixels == webui.fresh[model]


def test_sd15_reforge_rf_equals_advanced_model_sampling_sd3(sd15):
    check_rf_equals_advanced_model_sampling_sd3(sd15, SD15)


def test_sdxl_reforge_rf_equals_advanced_model_sampling_sd3(sdxl):
    """The SDXL UNet under reForge's own flow sampling: its {crossattn, vector} conds, its size embeddings in hires."""
    check_rf_equals_advanced_model_sampling_sd3(sdxl, SDXL)


# --- a checkpoint that declares flow in its metadata -------------------------------------------------------

def check_model_default(webui, flow_model: str, plain_model: str) -> None:
    """'Model default' applies whatever the uncond switch: a checkpoint that declares flow samples as RF."""
    webui.use_checkpoint(flow_model)
    try:
        by_default = webui.txt2img(**RF_SCHEDULE)
        assert "RF shift: 3.0" in by_default.infotexts[0] and "Uncond" not in by_default.infotexts[0]
        assert webui.txt2img(RF, **RF_SCHEDULE).pixels == by_default.pixels
        assert webui.txt2img({"enabled": True}, **RF_SCHEDULE).pixels == by_default.pixels
        own = webui.txt2img({"rf": False})
        assert "RF shift" not in own.infotexts[0] and own.pixels != by_default.pixels
        assert own.pixels == webui.fresh[plain_model]  # the model's own sampling of the same weights
        if webui.kind == "reforge":  # Advanced Model Sampling, enabled by the user, wins over a model default
            theirs = webui.txt2img(scheduler="Simple", scripts=ams())
            enabled = webui_uncond({"enabled": True}, plain_model)
            assert webui.txt2img(enabled, scheduler="Simple", scripts=ams()).pixels == theirs.pixels
            webui.txt2img({"enabled": True})  # removes what Advanced Model Sampling left on the model
    finally:
        webui.use_checkpoint(plain_model)
    # The plain model declares nothing: model default is its own sampling, as "Model's own" was on the flow file.
    plain = webui.txt2img({"enabled": True})
    assert "RF shift" not in plain.infotexts[0] and plain.pixels == own.pixels


def test_sd15_checkpoint_declaring_flow_is_rf_by_default(sd15):
    check_model_default(sd15, FLOW_SD15, SD15)


def test_sdxl_checkpoint_declaring_flow_is_rf_by_default(sdxl):
    check_model_default(sdxl, FLOW_SDXL, SDXL)


def test_sdxl_rf_alone_keeps_the_webuis_uncond(sdxl):
    """Issue 10: RF asked for on its own (or with the uncond switch on but no weight) changes the sampling only. For
    SDXL with an empty negative the WebUI's own uncond is the zero uncond (w = 1), not te("") (w = 0)."""
    rf_only = sdxl.txt2img(RF_ONLY, **RF_SCHEDULE)
    assert "RF shift: 3.0" in rf_only.infotexts[0] and "Uncond" not in rf_only.infotexts[0]
    assert sdxl.txt2img(RF, **RF_SCHEDULE).pixels == rf_only.pixels
    assert sdxl.txt2img({**RF, "zero_weight": 1.0}, **RF_SCHEDULE).pixels == rf_only.pixels
    assert sdxl.txt2img({**RF, "zero_weight": 0.0}, **RF_SCHEDULE).pixels != rf_only.pixels
    # The X/Y/Z RF shift axis too, with the UI's args (the accordion off): the uncond stays the WebUI's.
    args = xyz_args(sdxl, "[Uncond Lab] RF shift", "3", "Nothing", "")
    grid = sdxl.txt2img(script_name="x/y/z plot", script_args=args, **RF_SCHEDULE)
    assert grid.pixels[-1] == rf_only.pixels[0]


def test_sdxl_rf_off_afterwards_is_a_fresh_start(sdxl):
    sdxl.txt2img(RF, **RF_SCHEDULE, **HIRES)
    assert sdxl.txt2img().pixels == sdxl.fresh[SDXL]
    assert probe(sdxl) == probe_of_a_clean_model(sdxl)
