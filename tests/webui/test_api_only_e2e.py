"""A WebUI started with --nowebui (API only): it never builds the UI, and calls `on_before_ui` only after its API
has set up the scripts, so axes registered there would be missing from the X/Y/Z plot (issue 10). Uncond Lab's
eight axes must be listed by /sdapi/v1/script-info and work by index, as an API client uses them.

Starts its own WebUI (the `api_only_webui` fixture, from WEBUI_DIR) on the SD1.5 pair, which both WebUIs load.
"""
from __future__ import annotations

from tests.webui.test_merge_e2e import CFGS, PAIRS, XYZ, cells_by, pictures, title_of, xyz_args

AXES = ["[Uncond Lab] Zero weight", "[Uncond Lab] Start", "[Uncond Lab] End", "[Uncond Lab] RF shift",
        "[Uncond Lab] ComfyUI sampling", "[Uncond Lab] Merge ratio", "[Uncond Lab] Merge TE ratio",
        "[Uncond Lab] Merge partner", "[Uncond Lab] Merge blocks"]


def test_script_info_lists_every_axis_once(api_only_webui):
    plots = [s for s in api_only_webui.get("/sdapi/v1/script-info") if s["name"] == XYZ]
    assert sorted(plot["is_img2img"] for plot in plots) == [False, True]
    for plot in plots:
        labels = plot["args"][0]["choices"]
        assert [label for label in labels if label.startswith("[Uncond Lab]")] == AXES, labels
        assert labels.index(AXES[0]) > labels.index("CFG Scale")  # after the built-in axes


def test_xyz_plot_over_merge_ratio_by_cfg(api_only_webui):
    webui = api_only_webui
    a, b = PAIRS["sd15"]
    alone = {}
    for role, stem in (("B", b), ("A", a)):  # model A loaded last, for the plot
        webui.use_checkpoint(stem)
        for cfg in CFGS:
            alone[(role, cfg)] = pictures(webui.txt2img(cfg_scale=cfg))
    args = xyz_args(webui, "[Uncond Lab] Merge ratio", "0, 1", "CFG Scale", ", ".join(map(str, CFGS)))
    grid = webui.txt2img({"merge_model": title_of(webui, b)}, script_name=XYZ, script_args=args)
    cells = cells_by(grid, "Merge ratio", "CFG scale")
    assert len(cells) == 4
    for cfg in CFGS:
        assert cells[(0.0, cfg)] == alone[("A", cfg)] and cells[(1.0, cfg)] == alone[("B", cfg)]
    assert pictures(webui.txt2img(cfg_scale=CFGS[-1])) == alone[("A", CFGS[-1])]  # the weights restored
