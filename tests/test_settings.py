import math

import re

import pytest

from lib_ext.settings import FIELDS, HIRES_MODES, PREDICTIONS, MergeRequest, Settings, SettingsError, UncondSchedule


def test_defaults_fill_missing_keys():
    s = Settings.from_dict({"enabled": True, "zero_weight": 1})
    assert s == Settings(enabled=True, zero_weight=1.0, start=0.0, end=1.0)
    assert isinstance(s.zero_weight, float)


def test_positional_args_follow_field_order():
    names = [f.name for f in FIELDS]
    assert names[:4] == ["enabled", "zero_weight", "start", "end"]
    s = Settings.from_script_args([True, 0.5, 0.1, 0.9, "Own settings", 1, 0, 0.5])
    assert (s.zero_weight, s.start, s.end, s.hr_mode, s.hr_zero_weight, s.hr_end) == (0.5, 0.1, 0.9, "own", 1.0, 0.5)


def test_api_dict_in_first_slot_wins_over_trailing_ui_defaults():
    # The WebUI's API fills the rest of the script's slice with UI defaults; the dict is what the caller meant.
    s = Settings.from_script_args([{"enabled": True, "end": 0.3}, 0.9, 0.9, 0.9])
    assert (s.enabled, s.zero_weight, s.end) == (True, None, 0.3)


def test_the_uncond_control_changes_nothing_until_a_weight_is_asked_for():
    # The switch alone (an API dict without a weight) leaves the WebUI's own uncond: no schedule, no infotext.
    for settings in (Settings(enabled=True), Settings.from_dict({"enabled": True, "rf": True, "shift": 3.0})):
        assert settings.zero_weight is None and settings.schedule(hires=False) is None
        assert settings.schedule(hires=True) is None and not settings.controls_uncond(has_hires=True)
        assert "Uncond zero weight" not in settings.infotext(has_hires=True, rf_ran=True)
    assert Settings.from_dict({"enabled": True, "zero_weight": 0}).schedule(False) == UncondSchedule(0.0, 0.0, 1.0)
    # The UI's positional args always carry the slider's weight: switching the accordion on asks for it.
    assert Settings.from_script_args([True, 0.0, 0.0, 1.0]).schedule(False) == UncondSchedule(0.0, 0.0, 1.0)
    for spelling in (None, "default", " None ", "null"):
        assert Settings.from_dict({"zero_weight": spelling}).zero_weight is None
    # A hires pass with its own settings is asked for explicitly, with or without a first-pass weight.
    own = Settings(enabled=True, hr_mode="own", hr_zero_weight=1.0)
    assert own.schedule(False) is None and own.schedule(True) == UncondSchedule(1.0, 0.0, 1.0)
    assert own.controls_uncond(has_hires=True) and not own.controls_uncond(has_hires=False)
    assert set(own.infotext(has_hires=True)) == {"Uncond hires", "Uncond hires zero weight", "Uncond hires start",
                                                 "Uncond hires end"}


@pytest.mark.parametrize("bad, fragment", [
    ({"zero_weight": 2}, "'zero_weight' must be a number in [0, 1]"),
    ({"zero_weight": -0.01}, "'zero_weight'"),
    ({"zero_weight": float("nan")}, "got nan"),
    ({"zero_weight": float("inf")}, "'zero_weight'"),
    ({"zero_weight": True}, "got True"),           # bools are ints in Python; not a weight
    ({"zero_weight": "half"}, "got 'half' (or null: the WebUI's own uncond)"),
    ({"zero_weight": [0.5]}, "got [0.5]"),
    ({"zero_weight": "half"}, "got 'half'"),
    ({"enabled": "maybe"}, "'enabled' must be true or false"),
    ({"enabled": 2}, "'enabled'"),
    ({"hr_mode": "sometimes"}, "'hr_mode' must be one of off, own, same"),
    ({"hr_mode": 1}, "'hr_mode'"),
    ({"start": 0.6, "end": 0.2}, "'start' (0.6) must not be after 'end' (0.2)"),
    ({"hr_start": 0.6, "hr_end": 0.2}, "'hr_start'"),
    ({"zero_wieght": 1}, "unknown setting(s) 'zero_wieght'"),
    ({"rf": "maybe"}, "'rf' must be true, false, null or one of 'Model default'"),
    ({"rf": 1}, "'rf'"),                             # 1 is not a prediction; true is
    ({"shift": 0}, "'shift' must be a number in (0, 100], got 0"),
    ({"shift": -3}, "'shift' must be a number in (0, 100], got -3"),
    ({"shift": 101}, "'shift'"),
    ({"shift": float("nan")}, "'shift'"),
    ({"shift": None}, "'shift'"),
    ({"multiplier": 0}, "'multiplier' must be a number in (0, 10000]"),
    ({"multiplier": "1e5"}, "'multiplier'"),
])
def test_bad_values_are_refused_with_a_message_naming_them(bad, fragment):
    with pytest.raises(SettingsError) as error:
        Settings.from_dict(bad)
    assert fragment in str(error.value)


def test_non_mapping_api_value_is_refused():
    with pytest.raises(SettingsError, match="JSON object"):
        Settings.from_dict(["enabled"])


def test_lenient_spellings():
    s = Settings.from_dict({"enabled": "true", "zero_weight": "0.25", "hr_mode": "Own settings"})
    assert (s.enabled, s.zero_weight, s.hr_mode) == (True, 0.25, "own")
    assert Settings.from_dict({"hr_mode": " SAME "}).hr_mode == "same"


def test_overrides_are_validated():
    s = Settings(enabled=True)
    assert s.with_overrides({"zero_weight": 0.7}).zero_weight == 0.7
    with pytest.raises(SettingsError):
        s.with_overrides({"zero_weight": 7})


def test_schedule_per_pass():
    s = Settings(enabled=True, zero_weight=1.0, start=0.0, end=0.3, hr_mode="own", hr_zero_weight=0.5)
    assert s.schedule(hires=False) == UncondSchedule(1.0, 0.0, 0.3)
    assert s.schedule(hires=True) == UncondSchedule(0.5, 0.0, 1.0)
    assert Settings(enabled=True, zero_weight=1.0, hr_mode="same").schedule(True) == UncondSchedule(1.0, 0.0, 1.0)
    assert Settings(enabled=True, hr_mode="off").schedule(True) is None
    assert Settings(enabled=False).schedule(False) is None


def test_infotext_only_when_enabled_and_round_trips():
    assert Settings(enabled=False, zero_weight=1).infotext() == {}
    s = Settings(enabled=True, zero_weight=0.5, start=0.1, end=0.8, hr_mode="own", hr_zero_weight=1.0)
    text = s.infotext(has_hires=True)
    assert text["Uncond zero weight"] == 0.5 and text["Uncond hires"] == "own"
    # Infotext values come back as strings after a PNG round trip.
    ui = Settings.infotext_to_ui({k: str(v) for k, v in text.items()})
    assert ui["enabled"] is True and ui["hr_mode"] == HIRES_MODES["own"]
    # No RF keys: RF did not run, and pasting says so explicitly.
    assert Settings.from_dict(ui).as_dict() == {**s.as_dict(), "rf": False}


def test_hires_keys_only_when_a_hires_pass_ran():
    text = Settings(enabled=True, hr_mode="own").infotext(has_hires=False)
    assert not any(key.startswith("Uncond hires") for key in text)
    assert "Uncond hires zero weight" not in Settings(enabled=True, hr_mode="same").infotext(has_hires=True)


def test_paste_skips_hostile_values_instead_of_failing():
    ui = Settings.infotext_to_ui({"Uncond zero weight": "1e309", "Uncond start": "0.2", "Uncond hires": "<script>"})
    assert ui == {"start": 0.2, "enabled": True, "rf": PREDICTIONS[False], "comfy_sampling": False}
    # Not ours: the uncond control stays off and the prediction is the model's own, as it was for that picture.
    assert Settings.infotext_to_ui({"Steps": "20"}) == {"rf": PREDICTIONS[False], "comfy_sampling": False}


def test_frozen():
    with pytest.raises(Exception):
        Settings().zero_weight = 1  # type: ignore[misc]
    assert math.isclose(Settings().end, 1.0)


# --- rectified flow ----------------------------------------------------------------------------------------

def test_rf_fields_are_appended_after_the_uncond_ones():
    # The positional ABI: old UI/API arg lists (8 values) still parse, with RF at its defaults.
    names = [f.name for f in FIELDS]
    assert names[9:12] == ["rf", "shift", "multiplier"]
    s = Settings.from_script_args([True, 0.5, 0.1, 0.9, "Own settings", 1, 0, 0.5])
    assert (s.rf, s.shift, s.multiplier) == (None, 3.0, 1000.0)
    s = Settings.from_script_args([True, 0, 0, 1, "same", 0, 0, 1, False, "Rectified flow", 2.5, 500])
    assert (s.rf, s.shift, s.multiplier) == (True, 2.5, 500.0)


@pytest.mark.parametrize("value, expected", [
    (None, None), (True, True), (False, False), ("true", True), ("False", False), ("null", None),
    ("Model default", None), ("rectified flow", True), ("Model's own (not flow)", False), (" RF ", True),
])
def test_prediction_accepts_json_values_and_ui_labels(value, expected):
    assert Settings.from_dict({"rf": value}).rf is expected


def test_every_prediction_label_parses_back_to_its_value():
    for value, label in PREDICTIONS.items():
        assert Settings.from_dict({"rf": label}).rf is value


def test_shift_bounds_are_inclusive_at_the_top_only():
    assert Settings.from_dict({"shift": 100}).shift == 100.0
    assert Settings.from_dict({"shift": "0.001"}).shift == 0.001


def test_rf_keys_only_when_rf_ran():
    s = Settings(enabled=True, rf=True, shift=2.5)
    assert "RF shift" not in s.infotext(rf_ran=False)
    text = s.infotext(rf_ran=True)
    assert text["RF shift"] == 2.5 and "RF multiplier" not in text  # the default multiplier is not written
    assert Settings(enabled=True, multiplier=500).infotext(rf_ran=True)["RF multiplier"] == 500


def test_rf_is_independent_of_the_uncond_switch():
    # {"rf": true, "shift": 3}: RF keys only, the uncond untouched; pasting them back does not switch it on.
    s = Settings.from_dict({"rf": True, "shift": 3.0})
    assert s.schedule(hires=False) is None
    assert s.infotext(has_hires=True, rf_ran=True) == {"RF shift": 3.0}
    ui = Settings.infotext_to_ui({"RF shift": "3.0"})
    assert ui == {"shift": 3.0, "rf": PREDICTIONS[True], "comfy_sampling": False}
    assert Settings.from_dict(ui) == s


def test_an_older_infotext_pastes_to_the_same_settings():
    # Before RF and the weight's default were independent of the switch, an enabled generation always wrote the
    # weight and window (and RF keys when RF ran); pasting it sets all of them, so it samples the same again.
    older = {"Uncond zero weight": "0.0", "Uncond start": "0.0", "Uncond end": "1.0", "RF shift": "3.0"}
    s = Settings.from_dict(Settings.infotext_to_ui(older))
    assert (s.enabled, s.zero_weight, s.rf, s.shift) == (True, 0.0, True, 3.0)
    assert s.schedule(hires=False) == UncondSchedule(0.0, 0.0, 1.0)


def test_pasting_rf_keys_turns_rf_on_explicitly():
    text = Settings(enabled=True, rf=None, shift=4.0, multiplier=800).infotext(rf_ran=True)
    ui = Settings.infotext_to_ui({k: str(v) for k, v in text.items()})
    assert ui["rf"] == PREDICTIONS[True] and ui["shift"] == 4.0 and ui["multiplier"] == 800.0
    assert Settings.from_dict(ui).rf is True


def test_pasting_a_hostile_shift_is_skipped():
    ui = Settings.infotext_to_ui({"RF shift": "-1", "Uncond start": "0.2"})
    assert "shift" not in ui and ui["rf"] == PREDICTIONS[False]


# --- merge settings ---------------------------------------------------------------------------------------

def test_merge_fields_are_appended_after_the_rf_fields():
    names = [f.name for f in FIELDS]
    assert names[:8] == ["enabled", "zero_weight", "start", "end", "hr_mode", "hr_zero_weight", "hr_start", "hr_end"]
    assert names[8:] == ["compare", "rf", "shift", "multiplier",
                         "merge_model", "merge_method", "merge_model_c", "merge_ratio", "merge_te_ratio",
                         "merge_blocks", "comfy_sampling"]


def test_comfy_sampling_is_written_when_on_and_pastes_back_off_when_absent():
    on = Settings.from_dict({"comfy_sampling": True})
    assert on.infotext() == {"ComfyUI sampling": True} and Settings().infotext() == {}
    assert Settings.infotext_to_ui({"ComfyUI sampling": "True"})["comfy_sampling"] is True
    assert Settings.infotext_to_ui({"Uncond start": "0.2"})["comfy_sampling"] is False  # made without it


def test_comfy_sampling_options_leave_the_flow_noise_alone():
    from lib_ext.comfy_sampling import comfy_sampling_options
    assert comfy_sampling_options(rectified_flow=False) == {"randn_source": "CPU", "sgm_noise_multiplier": True,
                                                            "enable_quantization": True}
    assert comfy_sampling_options(rectified_flow=True) == {"randn_source": "CPU"}


def test_no_merge_by_default_and_for_none_spellings():
    assert Settings().merge_request() is None
    for none in ("", "None", " none ", None):
        assert Settings.from_dict({"merge_model": none}).merge_request() is None


def test_merge_is_independent_of_the_uncond_switch():
    request = Settings.from_dict({"merge_model": "b.safetensors [0123456789]", "merge_ratio": 0.3}).merge_request()
    assert request == MergeRequest("weighted_sum", "b.safetensors [0123456789]", None, 0.3, None)
    assert Settings.from_dict({"merge_model": "b", "merge_ratio": 1}).schedule(hires=False) is None


def test_merge_method_spellings_and_te_ratio_follow():
    s = Settings.from_dict({"merge_model": "b", "merge_method": "Add difference", "merge_model_c": "c",
                            "merge_te_ratio": "0"})
    assert s.merge_request() == MergeRequest("add_difference", "b", "c", 0.5, 0.0)
    for follow in (None, "follow", " Follow ", ""):
        assert Settings.from_dict({"merge_te_ratio": follow}).merge_te_ratio is None


def test_weighted_sum_ignores_a_leftover_model_c():
    assert Settings.from_dict({"merge_model": "b", "merge_model_c": "c"}).merge_request().model_c is None


@pytest.mark.parametrize("bad, fragment", [
    ({"merge_model": "b", "merge_method": "add_difference"}, "'merge_model_c' is needed for merge_method add_difference"),
    ({"merge_method": "average"}, "'merge_method' must be one of add_difference, weighted_sum, got 'average'"),
    ({"merge_ratio": 2.5}, "'merge_ratio' must be a number in [-1, 2], got 2.5"),
    ({"merge_ratio": float("nan")}, "'merge_ratio'"),
    ({"merge_ratio": None}, "'merge_ratio'"),
    ({"merge_ratio": "50%"}, "got '50%'"),
    ({"merge_te_ratio": "half"}, "'merge_te_ratio' must be a number in [-1, 2] or \"follow\""),
    ({"merge_te_ratio": True}, "'merge_te_ratio'"),
    ({"merge_model": 3}, "'merge_model' must be a checkpoint name"),
    ({"merge_model": "b\n.safetensors"}, "'merge_model' must be a checkpoint name"),
    ({"merge_model": "x" * 5000}, "'merge_model' must be a checkpoint name"),
    ({"merge_model_c": ["c"]}, "'merge_model_c'"),
])
def test_bad_merge_values_are_refused(bad, fragment):
    with pytest.raises(SettingsError) as error:
        Settings.from_dict(bad)
    assert fragment in str(error.value)
    assert len(str(error.value)) < 400  # a hostile name is not echoed in full


def test_merge_infotext_and_paste_round_trip():
    s = Settings.from_dict({"merge_model": "b.safetensors [0123456789]", "merge_method": "add_difference",
                            "merge_model_c": "c.safetensors", "merge_ratio": 0.25, "merge_te_ratio": 0})
    text = s.merge_infotext()
    assert text == {"Merge model B": "b.safetensors [0123456789]", "Merge method": "Add difference",
                    "Merge model C": "c.safetensors", "Merge ratio": 0.25, "Merge TE ratio": 0.0}
    assert s.infotext() == {}  # the uncond keys depend on the uncond control only
    ui = Settings.infotext_to_ui({k: str(v) for k, v in text.items()})
    assert "enabled" not in ui  # pasting a merge must not switch the uncond control on
    assert Settings.from_dict(ui).merge_request() == s.merge_request()


def test_merge_infotext_omits_what_is_not_used():
    text = Settings.from_dict({"merge_model": "b", "merge_model_c": "c", "merge_ratio": 1}).merge_infotext()
    assert set(text) == {"Merge model B", "Merge method", "Merge ratio"}  # weighted sum: no C; TE follows
    assert Settings(enabled=True).merge_infotext() == {}


def test_merge_overrides_from_axes_are_validated():
    s = Settings.from_dict({"merge_model": "b"})
    assert s.with_overrides({"merge_ratio": 1.0}).merge_request().unet_ratio == 1.0
    with pytest.raises(SettingsError):
        s.with_overrides({"merge_ratio": 3})


def test_merge_blocks_setting_infotext_and_errors():
    s = Settings.from_dict({"merge_model": "b", "merge_ratio": 0.3, "merge_blocks": " in04=1,out=0 "})
    assert s.merge_blocks == "IN04=1, OUT=0"
    assert s.merge_request() == MergeRequest("weighted_sum", "b", None, 0.3, None, "IN04=1, OUT=0")
    text = s.merge_infotext()
    assert text["Merge blocks"] == "IN04=1, OUT=0"
    ui = Settings.infotext_to_ui({k: str(v) for k, v in text.items()})
    assert Settings.from_dict(ui).merge_request() == s.merge_request()
    assert Settings.from_dict({"merge_blocks": [0.5] * 26}).merge_blocks == ",".join(["0.5"] * 26)
    assert Settings.from_dict({"merge_model": "b", "merge_blocks": "flat"}).merge_request().blocks is None
    assert "Merge blocks" not in Settings.from_dict({"merge_model": "b"}).merge_infotext()
    assert s.with_overrides({"merge_blocks": "IN04=0"}).merge_request().blocks == "IN04=0"
    for bad, fragment in (("IN04=5", "the value of IN04 must be a number in [-1, 2], got '5'"),
                          ("SOMETHING=1", "unknown slot 'SOMETHING'"), ("nope", "unknown preset 'nope'")):
        with pytest.raises(SettingsError, match=re.escape(fragment)):
            Settings.from_dict({"merge_model": "b", "merge_blocks": bad})
    with pytest.raises(SettingsError, match="'merge_te_ratio' = 0 does too"):
        Settings.from_dict({"merge_model": "b", "merge_blocks": "BASE=1, IN04=0", "merge_te_ratio": 0})
