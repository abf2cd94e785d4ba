"""The probe route and the compare grid in a real WebUI."""
from __future__ import annotations

import random
import threading
import time

import pytest

from tests.webui.client import ApiError
from tests.webui.conftest import SD15, SDXL, sdxl_model
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


def test_probe_names_the_emphasis_setting_when_it_makes_te_empty_nan(webui):
    """The default emphasis rescales a cond by old mean / new mean: 0 / 0 for a text encoder that outputs zeros.
    The probe says so and which setting fixes it, in a shelf row too, instead of an empty score."""
    before = webui.get("/sdapi/v1/options")["emphasis"]
    webui.post("/sdapi/v1/options", {"emphasis": "Original"})
    try:
        webui.use_checkpoint("uncondlab-tiny-sd15-zero-te")
        try:
            result = probe(webui, seeds=fresh_seeds())
        except ApiError as error:
            assert error.status == 422, error.body
            assert "holds NaN before any UNet call" in error.body and "Emphasis mode to 'No norm'" in error.body
        else:  # a WebUI whose "Original" emphasis leaves an all-zero cond alone
            assert webui.kind == "forge_neo" and result["score"] == 0.0
        webui.use_checkpoint(SD15)
        shelf = probe(webui, seeds=fresh_seeds(), checkpoints=["uncondlab-tiny-sd15-zero-te"])
        error = shelf["columns"]["error"][1]
        assert error is None or "Emphasis mode to 'No norm'" in error
    finally:
        webui.post("/sdapi/v1/options", {"emphasis": before})
        webui.use_checkpoint(SD15)


def test_probe_of_sdxl(sdxl):
    result = probe(sdxl)
    assert result["score"] > 0 and result["embedding"]["null_pooled_norm"] > 0
    assert sdxl.txt2img().pixels == sdxl.fresh[SDXL]


def test_probe_of_sdxl_with_zero_text_encoder_scores_zero(sdxl, no_norm_emphasis):
    check_zero_text_encoder_scores_zero(sdxl, sdxl_model("zero-te"))


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


# --- several checkpoints in one run ----------------------------------------------------------------------

SD15_SHELF = ["uncondlab-tiny-sd15-b", "uncondlab-tiny-sd15-zero-te", "uncondlab-tiny-sd15-flow"]
SDXL_SHELF = [sdxl_model("b"), sdxl_model("zero-te"), sdxl_model("flow")]


def fresh_seeds():
    return [random.randrange(1 << 30), random.randrange(1 << 30)]  # not in any cache of a running WebUI


def loaded_checkpoint(webui) -> str:
    return webui.get("/sdapi/v1/options")["sd_model_checkpoint"]


def log_text(webui) -> str:
    return webui.log_path.read_text(errors="replace") if getattr(webui, "log_path", None) else ""


def check_shelf_probe(webui, loaded, others):
    """Four checkpoints in one run: the scores of each probed alone, the zero-TE one exactly 0, the flow one on
    its flow schedule, the checkpoint of before loaded again with its pictures unchanged; a repeat loads nothing."""
    seeds = fresh_seeds()
    before = loaded_checkpoint(webui)
    assert before.startswith(loaded)
    shelf = probe(webui, seeds=seeds, checkpoints=others)
    columns = shelf["columns"]
    assert list(columns) == ["checkpoint", "hash", "score", "null_token_norm_mean", "null_pooled_norm",
                             "unet_calls", "error"]
    assert [title.split(".")[0] for title in columns["checkpoint"]] == [loaded, *others]
    assert columns["error"] == [None] * 4 and shelf["cached"] == [False] * 4 and shelf["interrupted"] is False
    assert all(len(h) == 10 for h in columns["hash"])
    assert loaded_checkpoint(webui) == before and shelf["model"]["name"] == loaded
    assert webui.txt2img().pixels == webui.fresh[loaded]
    zero_te, flow = 2, 3  # the order of `others`
    assert columns["score"][zero_te] == 0.0 and columns["null_token_norm_mean"][zero_te] == 0.0
    assert all(score > 0 for i, score in enumerate(columns["score"]) if i != zero_te)
    assert shelf["results"][flow]["levels"]["sigma"][0] <= 1.0 < shelf["results"][0]["levels"]["sigma"][0]

    # Each alone, loaded by the WebUI's own setting. The seeds go in the other order so that no cache answers
    # (the probe's values are means over the seeds).
    for title, score in zip(columns["checkpoint"], columns["score"]):
        webui.use_checkpoint(title.split(".")[0])
        alone = probe(webui, seeds=seeds[::-1])
        assert alone["cached"] is False
        assert alone["score"] == pytest.approx(score, abs=1e-4), title
    webui.use_checkpoint(loaded)
    assert webui.txt2img().pixels == webui.fresh[loaded]  # (Forge Neo loads a selected checkpoint only now)

    # A repeat is free: every row from the cache, no checkpoint loaded.
    loads = log_text(webui).count("Loading")
    again = probe(webui, seeds=seeds, checkpoints=others)
    assert again["cached"] == [True] * 4 and again["columns"]["score"] == columns["score"]
    assert log_text(webui).count("Loading") == loads
    assert webui.txt2img().pixels == webui.fresh[loaded]


def test_probe_of_sd15_checkpoints_in_one_run(sd15, no_norm_emphasis):
    check_shelf_probe(sd15, "uncondlab-tiny-sd15-a", SD15_SHELF)


def test_probe_of_sdxl_checkpoints_in_one_run(sdxl, no_norm_emphasis):
    check_shelf_probe(sdxl, SDXL, SDXL_SHELF)


def test_probe_of_checkpoints_refuses_an_unknown_name_before_loading_anything(sd15):
    before, loads = loaded_checkpoint(sd15), log_text(sd15).count("Loading")
    with pytest.raises(ApiError) as error:
        probe(sd15, checkpoints=["uncondlab-tiny-sd15-b", "no-such-model.safetensors"])
    assert error.value.status == 422 and "no-such-model.safetensors" in error.value.body
    assert loaded_checkpoint(sd15) == before and log_text(sd15).count("Loading") == loads
    with pytest.raises(ApiError) as error:
        probe(sd15, checkpoints="uncondlab-tiny-sd15-b", merge={"merge_model": "uncondlab-tiny-sd15-b"})
    assert error.value.status == 422 and "cannot be combined" in error.value.body


def test_interrupted_probe_of_checkpoints_leaves_the_original_loaded(sd15):
    before = loaded_checkpoint(sd15)
    answer = {}

    def run():
        answer["shelf"] = probe(sd15, seeds=fresh_seeds(), levels=12, latent_shape=[4, 32, 32],
                                checkpoints=SD15_SHELF)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while "Uncond Lab probe" not in (sd15.get("/sdapi/v1/progress?skip_current_image=true")["state"]["job"] or ""):
        assert time.time() < deadline and thread.is_alive(), "the probe never showed up in the progress"
        time.sleep(0.05)
    sd15.post("/sdapi/v1/interrupt", {})
    thread.join(timeout=300)
    shelf = answer["shelf"]
    assert shelf["interrupted"] is True
    assert len(shelf["columns"]["checkpoint"]) + len(shelf["not_probed"]) == 4 and shelf["not_probed"]
    assert loaded_checkpoint(sd15) == before and shelf["model"]["name"] == "uncondlab-tiny-sd15-a"
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]


def test_probe_of_checkpoints_does_not_accumulate_memory(sd15):
    """reForge keeps patchers and may keep an old model: three runs over four checkpoints (465 MB files), and the
    resident memory after the third grows by less than one checkpoint over what it was after the first."""
    after = []
    for _ in range(3):
        shelf = probe(sd15, seeds=fresh_seeds(), checkpoints=SD15_SHELF)
        assert shelf["cached"] == [False] * 4
        after.append(shelf["memory"]["rss_after_mb"])
    print("resident memory after each run (MiB):", after)
    assert after[2] - after[0] < 465


@pytest.fixture
def broken_checkpoint(sd15):
    """A file in the checkpoint list that no loader can read (only in a data dir the tests made)."""
    if getattr(sd15, "log_path", None) is None:
        pytest.skip("needs the WebUI started by the tests (its throw-away data dir)")
    path = sd15.log_path.parent / "models" / "Stable-diffusion" / "uncondlab-broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    sd15.post("/sdapi/v1/refresh-checkpoints", {})
    yield "uncondlab-broken"
    path.unlink()
    sd15.post("/sdapi/v1/refresh-checkpoints", {})


def test_probe_of_checkpoints_reports_a_failing_one_in_its_row_and_goes_on(sd15, broken_checkpoint):
    before = loaded_checkpoint(sd15)
    shelf = probe(sd15, seeds=fresh_seeds(), checkpoints=[broken_checkpoint, "uncondlab-tiny-sd15-b"])
    columns = shelf["columns"]
    assert columns["checkpoint"][1].startswith(broken_checkpoint)
    assert columns["error"][0] is None and columns["error"][1] and columns["error"][2] is None
    assert columns["score"][1] is None and shelf["results"][1] is None and columns["score"][2] > 0
    assert loaded_checkpoint(sd15) == before and shelf["model"]["name"] == "uncondlab-tiny-sd15-a"
    assert sd15.txt2img().pixels == sd15.fresh["uncondlab-tiny-sd15-a"]
