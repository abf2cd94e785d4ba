"""Uncond Lab beside three A1111 extensions users stack on it, in a real A1111 1.10 (SD1.5 tiny checkpoint, 64×64,
4 steps), each installed from its own sources through UNCOND_LAB_ADDONS (see conftest.py) and skipped where absent:

* Regional Prompter (hako-mikan/sd-webui-regional-prompter), Attention mode: it replaces the UNet's cross-attention
  forward and gives each region of the latent its own BREAK chunk of the cond. The uncond (77 tokens here, the
  cond 154) reaches the model in its own call and RP hands it to plain attention ("return out for NP"): it reads
  the uncond it is given, so Uncond Lab's choice, made in the cfg_denoiser callback, is the one it uses.
* NegPiP (hako-mikan/sd-webui-negpip): it takes the `(word:-w)` parts out of the prompt and, in every
  cross-attention, appends their embeddings to the cond's context with their values negated. The uncond half of
  the batch is left as it comes (only a negative weight in the negative prompt would be appended to it).
  Its script reads ui-config.json when imported, so it fails to load on a WebUI's first start in a new data dir
  (the tests' own; see `negpip_webui`): NegPiP's limitation, not Uncond Lab's.
* Incantations (v0xie/sd-webui-incantations), Perturbed-Attention Guidance: a second UNet pass in the
  cfg_denoised callback with the cond twice (not the uncond) and the middle block's self-attention replaced by
  the identity, added as `pag_scale · (cond - perturbed)` in its own combine_denoised; the CFG term of that
  combine uses the uncond half of the model's output, the one Uncond Lab chose. Under RF its pass goes through
  the denoiser's `inner_model`, the flow denoiser Uncond Lab installed.

For each: (1) it acts (its picture differs from the plain one), (2) the uncond choice reaches its generation
(A1111 feeds te("") for SD1.5: null weight + add-on = add-on alone pixel for pixel, zero weight + add-on differs),
(3) under rectified flow it still acts (differs from RF alone) and is deterministic. The README's compatibility
table cites these tests; the figures (largest pixel differences) are printed (`pytest -rA`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from tests.webui.client import max_pixel_difference
from tests.webui.conftest import SD15, second_webui
from tests.webui.test_addons_e2e import require_script, script_titles
from tests.webui.test_rf_e2e import RF
from tests.webui.test_uncond_e2e import NULL, ZERO

REGIONAL_PROMPTER = "Regional Prompter"
NEGPIP = "NegPiP"
INCANTATIONS = "Incantations"


@dataclass(frozen=True)
class Addon:
    title: str
    args: list
    marker: str  # what it writes into the infotext when it runs
    params: dict = field(default_factory=dict)  # the generation's own parameters (its prompt)


def regional_prompter_args() -> list:
    """rp.py ui(): active, debug, tab, Matrix/Mask/Prompt submodes, divide ratios, base ratios, use base, use
    common, use common negative, calc mode, options, LoRA neg TE/UNet ratios, threshold, mask, LoRA stop steps,
    flip. Here: Matrix tab, 2 columns 1:1, Attention mode."""
    return [True, False, "Matrix", "Columns", "Mask", "Prompt", "1,1", "0.2", False, False, False, "Attention", [],
            "0", "0", "0.4", None, "0", "0", False]


def incantations_args(pag_scale: float = 3.0) -> list:
    """incantation_base.py concatenates its submodules' ui() lists, in this order (INCANT_DEBUG unset):
    SEG (4), S-CFG (8), PAG (9), Multi-Concept T2I-Zero (10), Seek Incantations (7); CFG Combiner has none.
    Only PAG on: active, scale, start/end step, CFG scheduler off (its defaults), no saliency-adaptive fusion."""
    seg = [False, 11.0, 0, 150]
    scfg = [False, 1.0, 0.8, 3.0, 0.0, 0, 150, 4]
    pag = [True, pag_scale, 0, 150, False, "Constant", 0.0, 100.0, False]
    t2i0 = [False, False, 2, 0.1, 0.5, 0.0, "", 0.0, 25, 1]
    incant = [False, False, False, "BREAK", "-", 0.2, 10]
    return seg + scfg + pag + t2i0 + incant


ADDONS = {
    "regional-prompter": Addon(REGIONAL_PROMPTER, regional_prompter_args(), "RP Active: True",
                               {"prompt": "a red lighthouse BREAK a blue sea at dusk"}),
    "negpip": Addon(NEGPIP, [True], "NegPiP Active: True", {"prompt": "a lighthouse at dusk, (red:-1.5)"}),
    "incantations-pag": Addon(INCANTATIONS, incantations_args(), "PAG Active: True"),
}


# --- NegPiP needs ui-config.json at import --------------------------------------------------------------

@pytest.fixture(scope="module")
def negpip_webui(webui, tmp_path_factory):
    """The WebUI for the NegPiP tests. NegPiP reads `ui-config.json` when its script is imported
    (`open(shared.cmd_opts.ui_config_file)`), before A1111 writes that file at the end of its first UI build: in the
    fresh data dir of the tests' WebUI (as on a WebUI's very first start) it fails to load ("Error loading script:
    negpip.py", FileNotFoundError). Then a second A1111 is started from WEBUI_DIR, its data dir holding an empty
    ui-config.json, as a WebUI started before has."""
    if NEGPIP.lower() in script_titles(webui):
        yield webui
        return
    log = getattr(webui, "log_path", None)
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    if "negpip.py" not in text or "ui-config.json" not in text or not os.environ.get("WEBUI_DIR"):
        pytest.skip(f"'{NEGPIP}' is not installed in this WebUI (UNCOND_LAB_ADDONS, see conftest.py)")
    data_dir = tmp_path_factory.mktemp("webui-negpip-data")
    (data_dir / "ui-config.json").write_text("{}")
    with second_webui(data_dir) as second:
        yield second


@pytest.fixture
def addon(request, webui):
    """(WebUI on the SD1.5 checkpoint, Addon) for the parameter's add-on; skipped where it is not installed."""
    spec = ADDONS[request.param]
    if webui.kind != "a1111":
        pytest.skip("these are A1111's extensions and argument lists")
    host = request.getfixturevalue("negpip_webui") if spec.title == NEGPIP else webui
    require_script(host, spec.title)
    host.use_checkpoint(SD15)
    return host, spec


def scripts_of(spec: Addon) -> dict:
    return {spec.title: {"args": spec.args}}


def figure(label: str, value: int) -> int:
    print(f"{label}: max pixel difference {value}")
    return value


# --- (1) it acts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("addon", list(ADDONS), indirect=True)
def test_sd15_a1111_addon_acts_and_leaves_nothing_behind(addon):
    webui, spec = addon
    plain = webui.txt2img(**spec.params)
    acting = webui.txt2img(scripts=scripts_of(spec), **spec.params)
    assert spec.marker in acting.infotexts[0] and spec.marker not in plain.infotexts[0]
    assert figure(f"{spec.title} vs plain", max_pixel_difference(acting.images[0], plain.images[0])) > 0
    assert webui.txt2img(**spec.params).pixels == plain.pixels  # nothing left on the model or the callbacks


# --- (2) the uncond choice reaches its generation ------------------------------------------------------

@pytest.mark.parametrize("addon", list(ADDONS), indirect=True)
def test_sd15_a1111_addon_composes_with_the_uncond_choice(addon):
    webui, spec = addon
    scripts = scripts_of(spec)
    alone = webui.txt2img(scripts=scripts, **spec.params)
    null = webui.txt2img(NULL, scripts=scripts, **spec.params)
    zero = webui.txt2img(ZERO, scripts=scripts, **spec.params)
    assert spec.marker in null.infotexts[0] and spec.marker in zero.infotexts[0]
    assert figure(f"null + {spec.title} vs {spec.title} alone",
                  max_pixel_difference(null.images[0], alone.images[0])) == 0  # te(""): A1111's own
    assert figure(f"zero + {spec.title} vs {spec.title} alone",
                  max_pixel_difference(zero.images[0], alone.images[0])) > 0
    # ... and the add-on still acts on the zero uncond's picture.
    zero_plain = webui.txt2img(ZERO, **spec.params)
    assert figure(f"zero + {spec.title} vs zero alone", max_pixel_difference(zero.images[0], zero_plain.images[0])) > 0


# --- (3) under rectified flow ----------------------------------------------------------------------------

@pytest.mark.parametrize("addon", list(ADDONS), indirect=True)
def test_sd15_a1111_addon_under_rf_acts_and_is_deterministic(addon):
    webui, spec = addon
    scripts = scripts_of(spec)
    rf_alone = webui.txt2img(RF, sampler_name="Euler", **spec.params)
    rf_addon = webui.txt2img(RF, scripts=scripts, sampler_name="Euler", **spec.params)
    assert "RF shift: 3.0" in rf_addon.infotexts[0] and spec.marker in rf_addon.infotexts[0]
    assert figure(f"RF + {spec.title} vs RF alone", max_pixel_difference(rf_addon.images[0], rf_alone.images[0])) > 0
    assert webui.txt2img(RF, scripts=scripts, sampler_name="Euler", **spec.params).pixels == rf_addon.pixels
    eps_addon = webui.txt2img(scripts=scripts, **spec.params)
    assert figure(f"RF + {spec.title} vs {spec.title} alone (eps)",
                  max_pixel_difference(rf_addon.images[0], eps_addon.images[0])) > 0  # RF is really on
