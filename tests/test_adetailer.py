"""Whether ADetailer's inpainting passes run Uncond Lab (lib_ext/adetailer.py), by ADetailer 26.2's own rules."""
import pytest

from lib_ext import adetailer

FACE = {"ad_model": "face_yolov8n.pt", "ad_tab_enable": True}
NONE = {"ad_model": "None"}


@pytest.mark.parametrize("args, enabled", [
    ([True, False, FACE, NONE], True),
    ([False, False, FACE, NONE], False),              # switched off
    ([True, False, NONE, NONE], False),               # no tab names a model
    ([True, False, {**FACE, "ad_tab_enable": False}], False),
    ([FACE], True),                                   # the API's short form: no switch, a tab
    ([], False),
])
def test_enabled_by_adetailers_rule(args, enabled):
    assert adetailer.is_enabled(args) is enabled


@pytest.mark.parametrize("options, runs", [
    ({}, False),                                                          # ADetailer's default list
    ({"ad_script_names": adetailer.DEFAULT_SCRIPT_NAMES + ", uncond_lab"}, True),
    ({"ad_script_names": "uncond_lab"}, True),
    ({"ad_script_names": "uncond-lab,Uncond Lab"}, False),                # the folder or the title do not match
    ({"ad_only_selected_scripts": False}, True),                          # every AlwaysOn script is kept
])
def test_whitelist_by_file_stem(options, runs):
    assert adetailer.runs_uncond_lab(options) is runs


def test_the_note_names_the_setting_only_when_faces_would_miss_uncond_lab():
    note = adetailer.missing_passes_note([True, False, FACE], {})
    assert "add 'uncond_lab' to Settings > ADetailer > Script names to apply to ADetailer" in note
    assert adetailer.missing_passes_note([True, False, FACE], {"ad_script_names": "uncond_lab"}) is None
    assert adetailer.missing_passes_note([False, False, FACE], {}) is None
    assert adetailer.missing_passes_note(None, {}) is None  # ADetailer not installed
