"""Uncond Lab's tab and HTTP route; everything they do lives in lib_ext."""
from modules import script_callbacks

from lib_ext.hosts import probe_service, tab

service = probe_service.ProbeService()  # one per WebUI session: the tab and the API share its cache

script_callbacks.on_ui_tabs(lambda: tab.on_ui_tabs(service), name="uncond_lab_tab")
script_callbacks.on_app_started(lambda demo, app: probe_service.register_api(app, service), name="uncond_lab_api")
