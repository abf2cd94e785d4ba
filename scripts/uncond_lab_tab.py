"""Uncond Lab's tab (merge sweeps, the probe) and its HTTP routes; everything they do lives in lib_ext."""
from lib_ext.hosts import SUPPORTED

if SUPPORTED:  # else scripts/uncond_lab.py has said why Uncond Lab is not loaded
    from modules import script_callbacks

    from lib_ext.hosts import probe_checkpoints, probe_service, tab

    service = probe_service.ProbeService()  # one per WebUI session: the tab and the API share its cache
    checkpoints = probe_checkpoints.CheckpointProbe(service)  # probes of several checkpoints, its own cache

    script_callbacks.on_ui_tabs(lambda: tab.on_ui_tabs(service, checkpoints), name="uncond_lab_tab")
    script_callbacks.on_app_started(lambda demo, app: tab.on_app_started(app, service, checkpoints),
                                    name="uncond_lab_api")
