"""The probe route and the compare grid in a real WebUI."""
from __future__ import annotations

import random
import threading
import time

import pytest

from tests.webui.client import ApiError
from tests.webui.conftest import SDXL
from tests.webui.test_merge_e2e import gradio_call

SMALL_PROBE = {"latent_shape": [4, 16, 16], "levels": 6, "seeds": [0, 1], "cfg_scale": 7}


def probe(webui, **settings):
    return webui.post("/uncond-lab/v1/probe", {**SMALL_PROBE, **settings})


@pytest.fixture
def no_norm_emphasis(webui):
    """A text encoder that outputs exactly zero makes the default emphasis compute 0/0."""
    before = webui.get("/sdapi/v1/options")["emphasis"]
    webui.post("/sdapi/v1/options", {"emphasis": "No norm"})
    yield
    webui.post("/sdapi/v1/options", {"emphasis": before})


def check_zero_text_encoder_scores_zero(webui, name):
    webui.use_checkpoint(name)
    result = probe(webui)
    assert result["score"] == 0.0 and result["zero_equals_null"] is True
    assert result["embedding"]["null_token_norm_mean"] == 0.0
    assert result["unet_calls"] > 0


def test_probe_of_sd15(sd15):
    fresh_seeds = [random.randrange(1 << 30), 5]  # a running WebUI may have probed the usual seeds already
    result = probe(sd15, seeds=fresh_seeds)
    levels = result["levels"]
    assert result["score"] > 0 and len(levels["sigma"]) == 6 and len(levels["cfg_rel_diff"]) == 6
    assert levels["sigma"] == sorted(levels["sigma"], reverse=True)
    assert result["unet_calls"] > 0 and result["cached"] is False
    assert probe(sd15, seeds=fresh_seeds)["cached"] is True
    # Probing reads the weights only: a plain generation is what it was before any test.
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]


def test_probe_of_sd15_with_zero_text_encoder_scores_zero(webui, no_norm_emphasis):
    check_zero_text_encoder_scores_zero(webui, "uncondlab-tiny-sd15-zero-te")


def test_probe_of_sdxl(sdxl):
    result = probe(sdxl)
    assert result["score"] > 0 and result["embedding"]["null_pooled_norm"] > 0
    assert sdxl.txt2img().pixels == sdxl.fresh[SDXL]


def test_probe_of_sdxl_with_zero_text_encoder_scores_zero(sdxl, no_norm_emphasis):
    check_zero_text_encoder_scores_zero(sdxl, "uncondlab-vega-sdxl-zero-te")


@pytest.mark.parametrize("body, fragment", [
    ({"levels": 0}, "'levels' must be an integer"),
    ({"cfg_scale": 1}, "'cfg_scale' must be a number in (1, 100]"),
    ({"seeds": "0,1"}, "'seeds' must be a list of integers"),
    ({"steps": 4}, "unknown setting(s) 'steps'"),
])
def test_probe_refuses_bad_input(sd15, body, fragment):
    with pytest.raises(ApiError) as error:
        sd15.post("/uncond-lab/v1/probe", body)
    assert error.value.status == 422 and fragment in error.value.body


@pytest.mark.parametrize("body, fragment", [
    # The two of issue 10: 160 GB for the noise alone, and a typo (4000 for 400) that ran for hours.
    ({"latent_shape": [4, 100000, 100000]}, "height and width must be at most 256 latent pixels"),
    ({"latent_shape": [4, 4000, 4000]}, "got 4000 × 4000"),
    ({"latent_shape": [64, 64, 64]}, "channels must be at most 16"),
    ({"seeds": list(range(64)), "levels": 100}, "seeds × levels must be at most 512"),
])
def test_oversized_probes_are_refused_at_once(sd15, body, fragment):
    started = time.monotonic()
    with pytest.raises(ApiError) as error:
        sd15.post("/uncond-lab/v1/probe", body)
    assert error.value.status == 422 and fragment in error.value.body, error.value.body
    assert time.monotonic() - started < 1.0
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]


def wait_for_job(webui, job: str, timeout: float = 120) -> None:
    """Until the WebUI runs `job` and has finished one noise level (so an interrupt is not reset by its start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = webui.get("/sdapi/v1/progress?skip_current_image=true")["state"]
        if state.get("job") == job and state.get("sampling_step", 0) >= 1:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the WebUI did not start {job!r} within {timeout:.0f} s")


@pytest.mark.parametrize("interrupt_from", ["api", "tab"])
def test_interrupt_stops_a_running_probe_and_frees_the_queue(sd15, interrupt_from):
    # 64 levels of 3 short UNet calls (24 small latents in rows of 8): the interrupt lands mid-probe and
    # is honoured within one call.
    body = {**SMALL_PROBE, "seeds": [random.randrange(1 << 30) for _ in range(8)], "levels": 64}
    answer: dict = {}

    def run_probe():
        answer["result"] = sd15.post("/uncond-lab/v1/probe", body)
        answer["at"] = time.monotonic()

    thread = threading.Thread(target=run_probe)
    thread.start()
    wait_for_job(sd15, "uncond_lab_probe")
    interrupted_at = time.monotonic()
    if interrupt_from == "api":
        sd15.post("/sdapi/v1/interrupt", {})
    else:  # the Probe sub-tab's Interrupt button, as the browser calls it
        gradio_call(sd15, "uncond_lab_probe_interrupt", [])
    thread.join(timeout=60)
    result = answer["result"]
    assert result["interrupted"] is True and answer["at"] - interrupted_at < 5.0
    levels = len(result["levels"]["sigma"])
    assert 1 <= levels < 64 and len(result["levels"]["cfg_rel_diff"]) == levels and result["score"] > 0
    assert result["cached"] is False
    # The queue is free at once: a plain generation runs, as before the probe.
    started = time.monotonic()
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]
    assert time.monotonic() - started < 30
    assert probe(sd15)["interrupted"] is False


def test_compare_grid_shows_the_webui_default_null_zero_and_blend(sdxl):
    blend = {"enabled": True, "zero_weight": 0.5, "end": 0.6}
    grid = sdxl.txt2img({**blend, "compare": True})
    assert len(grid.images) == 6  # labelled grid, default, null, zero, difference map, the blend itself
    width, height, _ = grid.pixels[0]
    assert width > 4 * 64 and height > 64
    default, null, zero, _diff, own = grid.pixels[1:]
    assert default == sdxl.txt2img().pixels[0]
    assert null == sdxl.txt2img(negative_prompt=" ").pixels[0]
    assert zero == sdxl.txt2img({"enabled": True, "zero_weight": 1.0}).pixels[0]
    assert own == sdxl.txt2img(blend).pixels[0]
    assert "Uncond zero weight: 0.0" in grid.infotexts[2] and "Uncond zero weight: 1.0" in grid.infotexts[3]
    assert "Uncond" not in grid.infotexts[1]


def test_compare_on_sd15(sd15):
    grid = sd15.txt2img({"enabled": True, "zero_weight": 1.0, "compare": True})
    default, null, zero, _diff, own = grid.pixels[1:]
    assert default == null  # SD1.x: every WebUI feeds te("") already
    assert zero == own != null
