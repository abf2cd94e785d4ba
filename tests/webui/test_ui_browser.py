"""The UI in a real browser: the accordion and its hints, infotext paste, the probe tab.

Needs the `playwright` Python package and a Chromium (`UNCOND_LAB_CHROMIUM`, default /usr/bin/chromium); skipped
otherwise. Screenshots go to `UNCOND_LAB_SCREENSHOTS` when set.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("UNCOND_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium for the browser tests", allow_module_level=True)

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


def number_value(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def test_accordion_has_every_control_and_its_hint(page):
    page.locator("#script_txt2img_uncond_lab_enabled .label-wrap").first.click()
    for name in ("zero_weight", "start", "end", "hr_mode", "compare", "rf", "shift", "multiplier"):
        element = page.locator(f"#script_txt2img_uncond_lab_{name}")
        assert element.count() == 1, name
        assert element.get_attribute("title"), f"no hint on {name}"
    screenshot(page, "accordion")


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
