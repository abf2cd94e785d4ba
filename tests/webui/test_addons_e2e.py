"""Uncond Lab beside what users stack on it, in real WebUIs: reForge's built-ins (Kohya HRFix = Deep Shrink,
Advanced Model Sampling, the CFG++ samplers), A1111's DDIM CFG++, sd-dynamic-thresholding and ADetailer (installed
from their own sources through UNCOND_LAB_ADDONS, see conftest.py; skipped where absent), NGMS, and a checkpoint
rewritten on disk while a merge of it is held. The README's compatibility table cites these tests.
"""
from __future__ import annotations

import shutil

import pytest

from tests.webui.client import ApiError, max_pixel_difference
from tests.webui.conftest import SD15
from tests.webui.test_merge_e2e import SOURCES_OPTION
from tests.webui.test_rf_e2e import RF, ams, set_options
from tests.webui.test_uncond_e2e import NULL, ZERO

DYNTHRES = "Dynamic Thresholding (CFG Scale Fix)"
ADETAILER = "ADetailer"
NOTE = "Uncond Lab note"


def script_titles(webui) -> set[str]:
    info = webui.get("/sdapi/v1/script-info")
    return {script["name"].lower() for script in info if script.get("name")}


def require_script(webui, title: str) -> None:
    if title.lower() not in script_titles(webui):
        pytest.skip(f"'{title}' is not installed in this WebUI (UNCOND_LAB_ADDONS, see conftest.py)")


def only_on(webui, *kinds: str) -> None:
    if webui.kind not in kinds:
        pytest.skip(f"{webui.name} has no such add-on")


def note_of(generation) -> str:
    infotext = generation.infotexts[0]
    return infotext.split(f"{NOTE}: ", 1)[1].split("\n")[0] if f"{NOTE}: " in infotext else ""


# --- Deep Shrink (reForge's Kohya HRFix Integrated) under rectified flow ----------------------------------

def deep_shrink(enabled: bool = True) -> dict:
    """Its 8 args: enabled, block number, downscale factor, start/end percent, downscale after skip, methods."""
    return {"kohya hrfix integrated": {"args": [enabled, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic"]}}


def test_sdxl_reforge_rf_with_deep_shrink_equals_advanced_model_sampling_with_it(sdxl):
    """Deep Shrink turns its percent window into sigmas when it patches; Uncond Lab's flow sampling is installed
    before that (metadata.ini orders the script before it), so its window is in RF's sigmas, as under AMS."""
    only_on(sdxl, "reforge")
    rf = {**RF, "zero_weight": 1.0}
    params = {"scheduler": "Simple"}
    shrunk = sdxl.txt2img(rf, scripts=deep_shrink(), **params).images[0]
    assert max_pixel_difference(shrunk, sdxl.txt2img(rf, **params).images[0]) > 8  # Deep Shrink acts under RF
    try:
        theirs = sdxl.txt2img(scripts={**ams(), **deep_shrink()}, **params).images[0]
        assert max_pixel_difference(shrunk, theirs) <= 1
    finally:
        sdxl.txt2img({"enabled": True})  # removes what Advanced Model Sampling leaves on the model


# --- reForge's other built-ins: the uncond choice reaches them, and under RF they act as under AMS -------

# Title -> args that enable it with a visible effect at 4 steps (their ui() order; reForge main).
REFORGE_BUILTINS = {
    "FreeU Integrated": [True, 1.5, 1.6, 0.6, 0.3],
    "SelfAttentionGuidance Integrated": [True, 3.0, 5.0],
    "RescaleCFG for reForge": [True, "Normal", 1.0],
    "\"APG's now your CFG\" and Guidance Limiter for reForge": [True, -0.5, 0.0, 2.0, 0.0, False, -1.0, -1.0],
    "Mahiro CFG for reForge": [True],
    "DynamicThresholding (CFG-Fix) Integrated": [True, False, 3.0, 0.9, "Constant", 0.0, "Constant", 0.0, 1.0,
                                                 "enable", "MEAN", "AD", 1.0],
    "LatentModifier Integrated": [False, 0.0, "anisotropic", "None", True, 0.5, "reinhard", 100.0, 0.0,
                                  False, "gaussian", "add", 0.0, 100, "subtract", 0.0, 0.0,
                                  False, 127, 0.0, "hard_clamp", 5.0, 0.0, False, "None"],
    "Kohya HRFix Integrated": [True, 3, 2.0, 0.0, 1.0, True, "bicubic", "bicubic"],
}


@pytest.mark.parametrize("title", REFORGE_BUILTINS)
def test_sdxl_reforge_builtin_composes_with_the_uncond_choice_and_rf(sdxl, title):
    only_on(sdxl, "reforge")
    addon = {title: {"args": REFORGE_BUILTINS[title]}}
    params = {"cfg_scale": 9}  # 64×64: SAG needs a latent over 4 pixels, it has 8
    plain = sdxl.txt2img(scripts=addon, **params).images[0]
    assert max_pixel_difference(plain, sdxl.txt2img(**params).images[0]) > 0  # the add-on acts
    assert max_pixel_difference(sdxl.txt2img(ZERO, scripts=addon, **params).images[0], plain) == 0  # reForge's own
    assert max_pixel_difference(sdxl.txt2img(NULL, scripts=addon, **params).images[0], plain) > 0
    rf = sdxl.txt2img({**RF, "zero_weight": 1.0}, scripts=addon, scheduler="Simple", **params).images[0]
    try:
        theirs = sdxl.txt2img(scripts={**ams(), **addon}, scheduler="Simple", **params).images[0]
        assert max_pixel_difference(rf, theirs) <= 1  # the add-on sees the same flow sampling as under AMS
    finally:
        sdxl.txt2img({"enabled": True})  # removes what Advanced Model Sampling leaves on the model


# --- sd-dynamic-thresholding (A1111): it relabels the sampler after Uncond Lab's checks -------------------

def dynamic_thresholding(interpolate_phi: float = 0.0) -> dict:
    """Enabled; interpolate phi 0 returns plain CFG (its no-op setting), 1 its thresholded CFG."""
    args = [True, 7.0, 100.0, "Constant", 0.0, "Constant", 0.0, 4.0, True, "MEAN", "AD", interpolate_phi]
    return {DYNTHRES: {"args": args}}


@pytest.mark.parametrize("sampler", ["Euler a", "Euler"])
def test_sdxl_rf_with_dynamic_thresholding_keeps_the_rf_sampler(sdxl, sampler):
    require_script(sdxl, DYNTHRES)
    rf = {**RF, "zero_weight": 1.0}
    alone = sdxl.txt2img(rf, sampler_name=sampler).images[0]
    noop = sdxl.txt2img(rf, sampler_name=sampler, scripts=dynamic_thresholding(0.0))
    assert max_pixel_difference(alone, noop.images[0]) <= 1  # "Euler a_dynthres1" still runs the RF ancestral step
    assert f"Sampler: {sampler}," in noop.infotexts[0]
    acting = sdxl.txt2img(rf, sampler_name=sampler, cfg_scale=12, scripts=dynamic_thresholding(1.0)).images[0]
    assert max_pixel_difference(acting, sdxl.txt2img(rf, sampler_name=sampler, cfg_scale=12).images[0]) > 1


def test_sdxl_uncond_choice_with_dynamic_thresholding(sdxl):
    require_script(sdxl, DYNTHRES)
    scripts = dynamic_thresholding(1.0)
    assert sdxl.txt2img(ZERO, scripts=scripts).pixels == sdxl.txt2img(scripts=scripts).pixels  # zeros: A1111's own
    assert sdxl.txt2img(NULL, scripts=scripts).pixels != sdxl.txt2img(scripts=scripts).pixels


# --- CFG 1: the note only where the uncond really does nothing ------------------------------------------

def cfg_plus_plus_sampler(webui) -> str:
    return {"a1111": "DDIM CFG++", "reforge": "Euler CFG++"}.get(webui.kind) or pytest.skip("no CFG++ sampler")


def test_sdxl_cfg_plus_plus_at_cfg_one_uses_the_uncond_and_gets_no_note(sdxl):
    sampler = cfg_plus_plus_sampler(sdxl)
    null, zero = (sdxl.txt2img(choice, sampler_name=sampler, cfg_scale=1) for choice in (NULL, ZERO))
    assert max_pixel_difference(null.images[0], zero.images[0]) > 8  # the uncond matters at CFG 1 here
    assert "CFG scale is 1" not in note_of(null) and "CFG scale is 1" not in note_of(zero)
    assert "CFG scale is 1" in note_of(sdxl.txt2img(NULL, sampler_name="Euler", cfg_scale=1))


# --- NGMS under rectified flow ---------------------------------------------------------------------------

def test_sd15_ngms_with_rf_is_noted_with_its_flow_equivalent(sd15):
    old = set_options(sd15, s_min_uncond=2.0)
    try:
        note = note_of(sd15.txt2img({"rf": True, "shift": 3.0}))
        assert "NGMS 2 is compared with RF's sigmas (1 down to 0), so it skips the uncond on every other step" in note
        assert "the flow sigma matching eps sigma 2 is 0.667" in note
        assert "NGMS" not in note_of(sd15.txt2img({"enabled": True}))
    finally:
        sd15.post("/sdapi/v1/options", old)


# --- ADetailer: its inpainting passes run only the scripts its setting names ----------------------------

def adetailer_on() -> dict:
    return {ADETAILER: {"args": [True, False, {"ad_model": "face_yolov8n.pt"}]}}


def test_sd15_adetailer_without_uncond_lab_in_its_passes_is_noted(sd15):
    require_script(sd15, ADETAILER)
    note = note_of(sd15.txt2img(NULL, scripts=adetailer_on()))
    assert "ADetailer's inpainting passes run without Uncond Lab" in note
    assert "add 'uncond_lab' to Settings > ADetailer > Script names to apply to ADetailer" in note
    listed = sd15.txt2img(NULL, scripts=adetailer_on(),
                          override_settings={"ad_script_names": "dynamic_thresholding,uncond_lab"})
    assert "ADetailer" not in note_of(listed)
    assert "ADetailer" not in note_of(sd15.txt2img(NULL))  # ADetailer off: nothing to say


# --- a checkpoint rewritten on disk while a merge of it is held ------------------------------------------

@pytest.fixture
def rewritable_checkpoint(sd15):
    """A copy of the -a checkpoint in the checkpoint list, which the test may rewrite (only in a data dir the
    tests made); the original stays loaded afterwards."""
    if getattr(sd15, "log_path", None) is None:
        pytest.skip("needs the WebUI started by the tests (its throw-away data dir)")
    folder = sd15.log_path.parent / "models" / "Stable-diffusion"
    path = folder / "uncondlab-rewritten-a.safetensors"
    shutil.copyfile(folder / f"{SD15}.safetensors", path)
    shutil.copyfile(folder / f"{SD15}.yaml", path.with_suffix(".yaml"))  # A1111's config for the tiny model
    sd15.post("/sdapi/v1/refresh-checkpoints", {})
    yield path
    sd15.use_checkpoint(SD15)
    path.unlink()
    path.with_suffix(".yaml").unlink()
    sd15.post("/sdapi/v1/refresh-checkpoints", {})


def rewrite_in_place(path, source) -> None:
    """What a trainer's save over the file does: the same file (inode) truncated and written again."""
    data = source.read_bytes()
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(data)


@pytest.mark.parametrize("sources", ["Memory-mapped files", "Resident copies"])
def test_sd15_model_a_rewritten_during_a_held_merge_never_leaves_it_merged(sd15, rewritable_checkpoint, sources):
    if sd15.kind != "a1111" and sources != "Memory-mapped files":
        pytest.skip("A1111's setting; the Forge WebUIs patch from the mapped files")
    old = set_options(sd15, **{SOURCES_OPTION: sources}) if sd15.kind == "a1111" else {}
    b_file = rewritable_checkpoint.parent / "uncondlab-tiny-sd15-b.safetensors"
    try:
        sd15.use_checkpoint("uncondlab-tiny-sd15-b")
        plain_b = sd15.txt2img().pixels
        sd15.use_checkpoint("uncondlab-rewritten-a")
        plain_a = sd15.txt2img().pixels
        merged = sd15.txt2img({"merge_model": "uncondlab-tiny-sd15-b", "merge_ratio": 0.5}).pixels
        rewrite_in_place(rewritable_checkpoint, b_file)  # the trainer saves B's weights over A, merge held
        try:
            first = sd15.txt2img().pixels
        except ApiError as error:  # the merge could not be undone from the rewritten file: refused, and reloaded
            assert error.status == 422 and "rewritten on disk" in error.body and "reloaded" in error.body, error.body
            first = None
        after = [sd15.txt2img().pixels]
        if sd15.kind != "forge_neo":  # Neo has no such route (nor action)
            sd15.post("/sdapi/v1/reload-checkpoint", {})  # Settings > Actions: unload, reload
            after.append(sd15.txt2img().pixels)
        assert merged not in after and first != merged
        # The weights are the file's now (reloaded) or the old A's (restored from a copy or the WebUI's backup).
        assert all(pixels in (plain_a, plain_b) for pixels in after + ([first] if first else []))
    finally:
        if old:
            sd15.post("/sdapi/v1/options", old)
