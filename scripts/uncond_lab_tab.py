"""Uncond Lab's tab (merge-ratio × CFG × uncond sweeps, "Save this merge") and its API routes; the work is in
lib_ext/hosts/tab.py (WebUI glue) and lib_ext/sweep.py (parsing and layout)."""
from modules import script_callbacks

from lib_ext.hosts import tab

script_callbacks.on_ui_tabs(tab.on_ui_tabs, name="uncond_lab_tab")
script_callbacks.on_app_started(tab.on_app_started, name="uncond_lab_api")
