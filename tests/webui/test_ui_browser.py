"""The UI in a real browser: the accordion and its hints, infotext paste, the probe tab, and the README's pictures.

Needs the `playwright` Python package and a Chromium (`UNCOND_LAB_CHROMIUM`, default /usr/bin/chromium); skipped
otherwise. Screenshots go to `UNCOND_LAB_SCREENSHOTS` when set.

The README's pictures (docs/images/*.png) are made here, from the running WebUI, on every run: a test fails when
one can no longer be made. `UNCOND_LAB_UPDATE_PICTURES=1` writes them into docs/images/ (at most 900 px wide,
128-colour PNGs; needs Pillow), from A1111 (an SDXL checkpoint shows the zero uncond that SD1.5 lacks).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.webui.conftest import SD15, SDXL

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("UNCOND_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium for the browser tests", allow_module_level=True)

PICTURES = Path(__file__).resolve().parents[2] / "docs" / "images"
UPDATE_PICTURES = os.environ.get("UNCOND_LAB_UPDATE_PICTURES") == "1"
MAX_PICTURE_WIDTH = 900  # px; the README's pictures are kept small (a few hundred KB in all)
SD15_B = "uncondlab-tiny-sd15-b"

PASTED = ("a lighthouse at dusk\nSteps: 4, Sampler: Euler, CFG scale: 7.0, Seed: 1234, Size: 64x64, "
          "Uncond zero weight: 0.7, Uncond start: 0.1, Uncond end: 0.9")


@pytest.fixture(scope="module")
def page(webui):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(webui.url, timeout=120_000)
        page.wait_for_selector("#script_txt2img_uncond_lab_enabled", state="attached", timeout=120_000)
        yield page
        browser.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("UNCOND_LAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


def readme_picture(part, name: str, clip: dict | None = None) -> None:
    """The README's picture `docs/images/<name>.png` of a part of the page (a locator, or the page and a clip):
    made on every run (it fails when the part is gone or empty), written there with UNCOND_LAB_UPDATE_PICTURES=1,
    kept in UNCOND_LAB_SCREENSHOTS."""
    png = part.screenshot(animations="disabled", timeout=60_000, **({"clip": clip} if clip else {}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000, f"the picture {name} is empty"
    folder = os.environ.get("UNCOND_LAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.png").write_bytes(png)
    if UPDATE_PICTURES:
        import io

        from PIL import Image
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if image.width > MAX_PICTURE_WIDTH:
            height = round(image.height * MAX_PICTURE_WIDTH / image.width)
            image = image.resize((MAX_PICTURE_WIDTH, height), Image.Resampling.LANCZOS)
        image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        PICTURES.mkdir(parents=True, exist_ok=True)
        image.save(PICTURES / f"{name}.png", optimize=True)


def choose(page, elem_id: str, *values: str) -> None:
    """Pick values in a gradio dropdown (one, or several in a multi-select) as a user does: type, click the match."""
    for value in values:
        box = page.locator(f"#{elem_id} input").first
        box.click()
        box.fill(value)
        page.locator(f"#{elem_id} ul.options li", has_text=value).first.click()
    page.locator("body").click(position={"x": 5, "y": 5})  # close the list


def region(page, top: str, bottom: str) -> dict:
    """The page's area from the top of one element to the bottom of another, full width of both."""
    first, last = page.locator(top).first.bounding_box(), page.locator(bottom).first.bounding_box()
    left = min(first["x"], last["x"])
    right = max(first["x"] + first["width"], last["x"] + last["width"])
    return {"x": left, "y": first["y"], "width": right - left, "height": last["y"] + last["height"] - first["y"]}


def fill_number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def open_uncond_lab_tab(page, sub_tab: str) -> None:
    page.locator("#tabs > .tab-nav button", has_text="Uncond Lab").click()
    page.locator("#tab_uncond_lab_tab .tab-nav button", has_text=sub_tab).click()


def open_txt2img(page) -> None:
    page.locator("#tabs > .tab-nav button", has_text="txt2img").click()


def small_txt2img(page, size: int = 128) -> None:
    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
    fill_number(page, "txt2img_steps", 6)
    fill_number(page, "txt2img_width", size)
    fill_number(page, "txt2img_height", size)
    fill_number(page, "txt2img_seed", 1234)


def wait_for_images(page, gallery: str, timeout: float = 600_000) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('#{gallery} img').length > 0", timeout=timeout)


def generate(page) -> None:
    """txt2img's Generate, waiting for this generation's infotext (not the one before) and its pictures."""
    before = page.locator("#html_info_txt2img").first.inner_text()  # the id is on two nested elements
    page.locator("#txt2img_generate").click()
    page.wait_for_function("(before) => { const text = document.querySelector('#html_info_txt2img').innerText;"
                           " return text.includes('Seed:') && text !== before; }", arg=before, timeout=600_000)
    wait_for_images(page, "txt2img_gallery")
    page.wait_for_selector("#txt2img_results .progressDiv", state="detached", timeout=60_000)


def number_value(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def test_accordion_has_every_control_and_its_hint(page):
    page.locator("#script_txt2img_uncond_lab_enabled .label-wrap").first.click()
    for name in ("zero_weight", "start", "end", "hr_mode", "compare", "rf", "shift", "multiplier"):
        element = page.locator(f"#script_txt2img_uncond_lab_{name}")
        assert element.count() == 1, name
        assert element.get_attribute("title"), f"no hint on {name}"
    screenshot(page, "accordion")
    page.locator("#script_txt2img_uncond_lab_rf_group .label-wrap").first.click()
    readme_picture(page.locator("#script_txt2img_uncond_lab_enabled"), "accordion")


def test_infotext_paste_restores_the_settings(page):
    page.locator("#txt2img_prompt textarea").fill(PASTED)
    page.locator("#txt2img_tools #paste").click()
    page.wait_for_function(
        "() => document.querySelector('#script_txt2img_uncond_lab_zero_weight input[type=number]').value == '0.7'",
        timeout=30_000)
    assert number_value(page, "script_txt2img_uncond_lab_start") == pytest.approx(0.1)
    assert number_value(page, "script_txt2img_uncond_lab_end") == pytest.approx(0.9)
    assert page.locator("#script_txt2img_uncond_lab_enabled-checkbox input").is_checked()
    screenshot(page, "pasted")


def test_infotext_paste_restores_rf(page):
    page.locator("#txt2img_prompt textarea").fill(PASTED + ", RF shift: 2.5, Schedule type: Rectified Flow")
    page.locator("#txt2img_tools #paste").click()
    page.wait_for_function(
        "() => document.querySelector('#script_txt2img_uncond_lab_shift input[type=number]').value == '2.5'",
        timeout=30_000)
    assert page.locator("#script_txt2img_uncond_lab_rf input[value='Rectified flow']").is_checked()
    assert page.locator("#txt2img_scheduler input").input_value() == "Rectified Flow"  # the WebUI's own field


def test_probe_tab_runs(page, webui):
    webui.use_checkpoint("uncondlab-tiny-sd15-a")
    page.locator("#tabs > .tab-nav button", has_text="Uncond Lab").click()
    page.locator("#tab_uncond_lab_tab .tab-nav button", has_text="Probe").click()
    page.locator("#uncond_lab_probe_size input[type=number]").fill("128")
    page.locator("#uncond_lab_probe_size input[type=number]").press("Enter")
    page.locator("#uncond_lab_probe_run").click()
    page.wait_for_function("() => document.querySelector('#uncond_lab_probe_summary').innerText.includes('Score')",
                           timeout=300_000)
    assert "UNet calls" in page.locator("#uncond_lab_probe_summary").first.inner_text()
    screenshot(page, "probe_tab")


def text_field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input[type=text]").first


def test_compare_grid_on_sdxl_picture(page, webui):
    webui.use_checkpoint(SDXL)
    open_txt2img(page)
    small_txt2img(page)
    choose(page, "txt2img_scheduler", "Automatic")  # the pasted infotexts above set RF and its schedule
    page.locator("#script_txt2img_uncond_lab_rf input[value='Model default']").check()
    enabled = page.locator("#script_txt2img_uncond_lab_enabled-checkbox input")
    if not enabled.is_checked():
        enabled.dispatch_event("click")  # the accordion's own checkbox input is hidden (A1111's InputAccordion)
    fill_number(page, "script_txt2img_uncond_lab_zero_weight", 0.5)
    fill_number(page, "script_txt2img_uncond_lab_start", 0)
    fill_number(page, "script_txt2img_uncond_lab_end", 1)
    page.locator("#script_txt2img_uncond_lab_compare input").check()
    try:
        generate(page)
        readme_picture(page.locator("#txt2img_gallery"), "compare_grid")
    finally:  # left on, every later generation of the page (an X/Y/Z cell too) would be a compare grid
        page.locator("#script_txt2img_uncond_lab_compare input").uncheck()


def test_xyz_plot_with_uncond_lab_axes_on_sdxl_picture(page, webui):
    webui.use_checkpoint(SDXL)
    open_txt2img(page)
    small_txt2img(page, size=64)
    choose(page, "tab_txt2img #script_list", "X/Y/Z plot")
    choose(page, "script_txt2img_xyz_plot_x_type", "[Uncond Lab] Zero weight")
    text_field(page, "script_txt2img_xyz_plot_x_values").fill("0, 0.5, 1")
    choose(page, "script_txt2img_xyz_plot_y_type", "CFG Scale")
    text_field(page, "script_txt2img_xyz_plot_y_values").fill("3, 7")
    generate(page)
    readme_picture(page, "xyz_axes", clip=region(page, "#tab_txt2img #script_list", "#tab_txt2img #swap_axes"))
    readme_picture(page.locator("#txt2img_gallery"), "xyz_grid")
    choose(page, "tab_txt2img #script_list", "None")


def test_probe_of_sd15_and_sdxl_checkpoints_picture(page, webui):
    webui.use_checkpoint(SD15)
    shelf = [SD15_B, "uncondlab-tiny-sd15-zero-te", "uncondlab-tiny-sd15-flow", SDXL]  # a 3.5 GB SDXL load is slow
    emphasis = webui.get("/sdapi/v1/options")["emphasis"]
    webui.post("/sdapi/v1/options", {"emphasis": "No norm"})  # a text encoder that outputs exactly zero: 0/0
    try:
        open_uncond_lab_tab(page, "Probe")
        fill_number(page, "uncond_lab_probe_size", 128)
        choose(page, "uncond_lab_probe_checkpoints", *shelf)
        page.locator("#uncond_lab_probe_run").click()
        page.wait_for_function(
            "() => document.querySelector('#uncond_lab_probe_summary').innerText.includes('checkpoints probed')",
            timeout=1_200_000)
    finally:
        webui.post("/sdapi/v1/options", {"emphasis": emphasis})
    assert page.locator("#uncond_lab_probe_table tbody tr").count() == len(shelf) + 1
    assert "loaded again: uncondlab-tiny-sd15-a" in page.locator("#uncond_lab_probe_summary").first.inner_text()
    readme_picture(page.locator("#tab_uncond_lab_tab"), "probe_checkpoints")


def test_merge_sweep_picture(page, webui):
    webui.use_checkpoint(SD15)
    open_uncond_lab_tab(page, "Merge sweep")
    choose(page, "uncond_lab_tab_model_b", SD15_B)
    text_field(page, "uncond_lab_tab_ratios").fill("0, 0.5, 1")
    text_field(page, "uncond_lab_tab_cfgs").fill("4, 7")
    text_field(page, "uncond_lab_tab_unconds").fill("0; 1")
    text_field(page, "uncond_lab_tab_prompt").fill("a lighthouse at dusk")
    fill_number(page, "uncond_lab_tab_seed", 1234)
    fill_number(page, "uncond_lab_tab_steps", 6)
    fill_number(page, "uncond_lab_tab_width", 64)
    fill_number(page, "uncond_lab_tab_height", 64)
    page.locator("#uncond_lab_tab_run").click()
    page.wait_for_function("() => document.querySelector('#uncond_lab_tab_info').innerText.includes(' cells in ')",
                           timeout=600_000)
    page.wait_for_selector("#tab_uncond_lab_tab .progressDiv", state="detached", timeout=60_000)
    page.locator("#uncond_lab_tab_gallery img").first.click()  # the grid, large
    readme_picture(page.locator("#tab_uncond_lab_tab"), "merge_sweep")


def test_comfyui_panel_exports_imports_and_sends_to_txt2img(page, webui, tmp_path):
    """The tab's ComfyUI panel as a user drives it: an infotext → Export → the two graph files to download; the
    API graph uploaded → Import → the WebUI parameters, Uncond Lab's included → Send to txt2img fills the form."""
    import json
    from urllib.parse import urljoin

    open_uncond_lab_tab(page, "ComfyUI")
    page.locator("#uncond_lab_comfy_source textarea").fill(PASTED + ", ComfyUI sampling: True")
    page.locator("#uncond_lab_comfy_export").click()
    def link(name: str):  # Gradio's file list: each file's download link, named by its download attribute
        return page.locator(f"#uncond_lab_comfy_downloads a[download='{name}']").first

    link("prompt.json").wait_for(timeout=60_000)
    graphs = {}
    for name in ("workflow.json", "prompt.json"):
        href = link(name).get_attribute("href")
        response = page.request.get(urljoin(webui.url + "/", href))
        assert response.ok, (name, href, response.status)
        graphs[name] = response.json()
    assert {node["type"] for node in graphs["workflow.json"]["nodes"]} >= {"KSampler", "CheckpointLoaderSimple"}
    sampler = next(node["inputs"] for node in graphs["prompt.json"].values() if node["class_type"] == "KSampler")
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (1234, 4, 7.0)
    notes = page.locator("#uncond_lab_comfy_notes").first.inner_text()
    assert "set the checkpoint in CheckpointLoaderSimple" in notes  # the infotext names no model: said, not guessed
    assert "did not sample as ComfyUI does" not in notes  # ComfyUI sampling was on

    upload = tmp_path / "prompt.json"
    upload.write_text(json.dumps(graphs["prompt.json"]))
    page.locator("#uncond_lab_comfy_upload input[type=file]").set_input_files(str(upload))
    page.locator("#uncond_lab_comfy_upload", has_text="prompt.json").first.wait_for(timeout=60_000)
    page.locator("#uncond_lab_comfy_import").click()
    page.wait_for_function(
        "() => document.querySelector('#uncond_lab_comfy_infotext textarea').value.includes('Seed: 1234')",
        timeout=60_000)
    imported = page.locator("#uncond_lab_comfy_infotext textarea").input_value()
    assert imported.startswith("a lighthouse at dusk\n") and "Steps: 4" in imported
    assert "Uncond zero weight: 0.7" in imported and "ComfyUI sampling: True" in imported, imported
    screenshot(page, "comfy_panel")

    page.locator("#uncond_lab_comfy_send").click()
    page.wait_for_function(
        "() => document.querySelector('#script_txt2img_uncond_lab_zero_weight input[type=number]').value == '0.7'",
        timeout=30_000)
    assert page.locator("#txt2img_prompt textarea").input_value() == "a lighthouse at dusk"
    assert number_value(page, "txt2img_steps") == 4 and number_value(page, "txt2img_seed") == 1234
    assert number_value(page, "script_txt2img_uncond_lab_start") == pytest.approx(0.1)
    assert number_value(page, "script_txt2img_uncond_lab_end") == pytest.approx(0.9)
    assert page.locator("#script_txt2img_uncond_lab_enabled-checkbox input").is_checked()


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def test_ui_reload_keeps_one_copy_of_each_axis(page, webui):
    """Reload UI re-imports every script and runs on_before_ui again, on a fresh X/Y/Z module.

    No request may reach the restarted server between its gradio launch and its API routes: the first request
    starts the app, and the WebUI's own create_api then fails ("Cannot add middleware after an application has
    started"), leaving it without /sdapi for good. The Reload page's JS polls exactly then, so the page is sent
    away once the server has the restart command and comes back after the log's next "Startup time:"."""
    if getattr(webui, "log_path", None) is None:
        pytest.skip("the WebUI's log is unknown (set UNCOND_LAB_WEBUI_LOG with UNCOND_LAB_WEBUI_URL)")

    def log_count(marker: str) -> int:
        return Path(webui.log_path).read_text(errors="replace").count(marker)

    restarts, startups = log_count("Restarting UI"), log_count("Startup time:")
    page.locator("#footer a", has_text="Reload UI").click()
    wait_for(lambda: log_count("Restarting UI") > restarts, "the restart")
    page.goto("about:blank")
    wait_for(lambda: log_count("Startup time:") > startups, "the restarted UI")
    page.goto(webui.url, timeout=120_000)
    page.wait_for_selector("#script_txt2img_uncond_lab_enabled", state="attached", timeout=180_000)
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == "x/y/z plot" and not s["is_img2img"])
    labels = info["args"][0]["choices"]
    for axis in ("[Uncond Lab] Zero weight", "[Uncond Lab] Start", "[Uncond Lab] End", "[Uncond Lab] RF shift"):
        assert labels.count(axis) == 1, axis
    # The RF schedule is in the WebUI's list once (the script re-registers it on import).
    assert [s["label"] for s in webui.get("/sdapi/v1/schedulers")].count("Rectified Flow") == 1
    # The extension still works after the reload.
    assert webui.txt2img({"enabled": True, "zero_weight": 1.0}).images
