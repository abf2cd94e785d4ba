"""The "Uncond Lab" tab: merge sweeps (merge_tab.py), the probe (probe_tab.py), ComfyUI import/export
(comfy_bridge.py), and their HTTP routes."""
from __future__ import annotations

import gradio as gr

from lib_ext.hosts import comfy_bridge, merge_tab, probe_service, probe_tab
from lib_ext.hosts.probe_checkpoints import CheckpointProbe
from lib_ext.hosts.probe_service import ProbeService


def on_ui_tabs(service: ProbeService, checkpoints: CheckpointProbe):
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Tabs():
            with gr.Tab("Merge sweep", elem_id="uncond_lab_tab_sweep"):
                merge_tab.build_sweep_tab()
            with gr.Tab("Probe", elem_id="uncond_lab_tab_probe"):
                probe_tab.build_probe_tab(service, checkpoints)
            with gr.Tab("ComfyUI", elem_id="uncond_lab_tab_comfy"):
                comfy_bridge.build_comfy_tab()
    return [(tab, "Uncond Lab", "uncond_lab_tab")]


def on_app_started(app, service: ProbeService, checkpoints: CheckpointProbe) -> None:
    merge_tab.register_api(app)
    probe_service.register_api(app, service, checkpoints)
    comfy_bridge.register_api(app)
