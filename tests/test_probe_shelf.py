"""Probing a shelf of checkpoints (lib_ext/probe_shelf.py): order, failures, interrupt, ETA, formats, cache keys.

The "checkpoints" are synthetic denoisers D(x, sigma, u) = mean over tokens of u's cross-attention (a constant
prediction), so a checkpoint's score is known by hand: with the probe prompt's mean b_c, te("")'s mean b_null
and the zero uncond's 0, the CFG predictions at scale s are X_u = b_u + s·(b_c - b_u), and the score is
|X_zero - X_null| / |X_null| = (s - 1)·|b_null| / |X_null| at every level.
"""
import json
import math

import pytest
import torch

from lib_ext import probe as pr
from lib_ext import probe_shelf as ps
from lib_ext.probe import ProbeCache, ProbeError, ProbeSettings
from lib_ext.probe_shelf import CheckpointKey, ShelfEntry

SETTINGS = ProbeSettings(seeds=(0, 1), levels=3, cfg_scale=3.0, latent_shape=(1, 1, 2), reference="zeros")
COND = torch.tensor([[[2.0, 0.0]]])  # b_c = (2, 0)


def constant_denoiser(x, sigma, cond):
    return cond.mean(dim=1).view(x.shape[0], 1, 1, 2).expand_as(x).clone()


def probe_with_null(null_scale: float) -> pr.ProbeResult:
    """A checkpoint whose te("") is (0, null_scale)."""
    null = torch.tensor([[[0.0, null_scale]]])
    return pr.probe(constant_denoiser, COND, null, [0.5, 1.0, 2.0], pr.ve_noising, SETTINGS)


def expected_score(null_scale: float, s: float = 3.0) -> float:
    # X_null = b_null + s·(b_c - b_null) = (2s, (1 - s)·n); X_zero = (2s, 0)
    x_null = math.hypot(2 * s, (1 - s) * null_scale)
    return abs((1 - s) * null_scale) / x_null


SHELF = {"base.safetensors [aaaa]": 0.0, "tuned.safetensors [bbbb]": 1.0, "merge.safetensors [cccc]": 0.5}


def entries(*titles):
    return [ShelfEntry(title, title[-5:-1]) for title in titles]


def test_scores_by_hand_and_ranking():
    shelf = ps.probe_shelf(entries(*SHELF), lambda entry: (probe_with_null(SHELF[entry.title]), False))
    assert [row.score for row in shelf.rows] == pytest.approx([expected_score(v) for v in SHELF.values()], abs=1e-6)
    assert shelf.rows[0].score == 0.0  # te("") exactly zero: exactly 0
    assert [row.checkpoint for row in shelf.ranked()] == ["tuned.safetensors [bbbb]", "merge.safetensors [cccc]",
                                                         "base.safetensors [aaaa]"]
    assert not shelf.interrupted and shelf.not_probed == ()


def test_loaded_model_first_then_the_request_each_once():
    loaded = ShelfEntry("b [2]", "2")
    order = ps.shelf_order(loaded, entries("a [1]", "b [2]", "c [3]", "a [1]"))
    assert [e.title for e in order] == ["b [2]", "a [1]", "c [3]"]
    assert ps.shelf_order(None, []) == []
    with pytest.raises(ProbeError, match="at most"):
        ps.shelf_order(None, [ShelfEntry(f"m{i}") for i in range(ps.MAX_CHECKPOINTS + 1)])


def test_a_failing_checkpoint_gets_its_error_and_the_run_goes_on():
    def probe_one(entry):
        if entry.title.startswith("tuned"):
            raise RuntimeError("Error(s) in loading state_dict: size mismatch")
        return probe_with_null(SHELF[entry.title]), False

    shelf = ps.probe_shelf(entries(*SHELF), probe_one)
    assert [row.error for row in shelf.rows] == [None, "RuntimeError: Error(s) in loading state_dict: size mismatch",
                                                 None]
    assert shelf.rows[2].score == pytest.approx(expected_score(0.5), abs=1e-6)
    assert shelf.ranked()[-1].checkpoint.startswith("tuned")  # no score: last
    csv_lines = shelf.to_csv().splitlines()
    assert csv_lines[0] == ",".join(ps.SHELF_COLUMNS) and csv_lines[-1].startswith("tuned")


def test_a_checkpoint_with_non_finite_predictions_says_which_sigma_in_its_row():
    def broken(x, sigma, cond):  # a broken merge: NaN below sigma 1.5
        out = constant_denoiser(x, sigma, cond)
        return torch.full_like(out, math.nan) if float(sigma[0]) < 1.5 else out

    def probe_one(entry):
        if entry.title.startswith("tuned"):
            return pr.probe(broken, COND, torch.tensor([[[0.0, 1.0]]]), [0.5, 1.0, 2.0], pr.ve_noising,
                            SETTINGS), False
        return probe_with_null(SHELF[entry.title]), False

    shelf = ps.probe_shelf(entries(*SHELF), probe_one)
    tuned = shelf.rows[1]
    assert tuned.score is None
    assert tuned.error.startswith("Uncond Lab probe: non-finite predictions at sigma 1 (cond: NaN, te(''): NaN, "
                                  "zero: NaN), 0.5 (")
    assert json.loads(json.dumps(shelf.to_dict(), allow_nan=False))["columns"]["error"][1] == tuned.error
    assert shelf.rows[0].error is None and shelf.rows[0].score == 0.0


def test_interrupt_stops_after_the_current_checkpoint():
    done = []

    def probe_one(entry):
        done.append(entry.title)
        return probe_with_null(SHELF[entry.title]), False

    shelf = ps.probe_shelf(entries(*SHELF), probe_one, interrupted=lambda: len(done) >= 1)
    assert done == ["base.safetensors [aaaa]"]
    assert shelf.interrupted and shelf.not_probed == ("tuned.safetensors [bbbb]", "merge.safetensors [cccc]")
    assert shelf.rows[0].error is None


def test_interrupt_during_a_probe_marks_that_row():
    flag = {"on": False}

    def probe_one(entry):
        flag["on"] = True
        raise RuntimeError("Uncond Lab probe: interrupted")

    shelf = ps.probe_shelf(entries(*SHELF), probe_one, interrupted=lambda: flag["on"])
    assert [row.error for row in shelf.rows] == [ps.INTERRUPTED] and len(shelf.not_probed) == 2


def test_a_probe_stopped_by_an_interrupt_keeps_its_levels_and_ends_the_run():
    flag = {"on": False}

    def probe_one(entry):
        flag["on"] = True
        null = torch.tensor([[[0.0, 1.0]]])
        partial = pr.probe(constant_denoiser, COND, null, [0.5, 1.0, 2.0], pr.ve_noising, SETTINGS,
                           should_stop=lambda: True)  # stopped before its first UNet call
        return partial, False

    shelf = ps.probe_shelf(entries(*SHELF), probe_one, interrupted=lambda: flag["on"])
    [row] = shelf.rows
    assert row.error == ps.INTERRUPTED and row.result.interrupted and row.score is None
    assert shelf.interrupted and len(shelf.not_probed) == 2
    data = json.loads(json.dumps(shelf.to_dict(), allow_nan=False))
    assert data["columns"]["score"] == [None] and data["results"][0]["interrupted"] is True


def test_progress_and_eta_from_the_rows_done_cached_ones_excluded():
    times = iter([0.0, 10.0, 10.0, 10.0, 10.0, 30.0])  # 10 s, cached (0 s), 20 s
    calls = []

    def probe_one(entry):
        return probe_with_null(SHELF[entry.title]), entry.title.startswith("tuned")

    ps.probe_shelf(entries(*SHELF), probe_one, on_model=lambda *args: calls.append(args), clock=lambda: next(times))
    assert [(i, n, e.title[:4], eta) for i, n, e, eta in calls] == [
        (0, 3, "base", None), (1, 3, "tune", 20.0), (2, 3, "merg", 10.0)]
    assert ps.progress_text(1, 3, "tuned [b]", 20.4) == "Model 2/3: tuned [b], ETA 20 s"
    assert ps.progress_text(0, 3, "base", None) == "Model 1/3: base"


def test_json_columns_in_probing_order_strict_json():
    shelf = ps.probe_shelf(entries(*SHELF), lambda entry: (probe_with_null(SHELF[entry.title]), True))
    data = json.loads(json.dumps(shelf.to_dict(), allow_nan=False))
    assert list(data["columns"]) == list(ps.SHELF_COLUMNS)
    assert data["columns"]["checkpoint"] == list(SHELF) and data["cached"] == [True] * 3
    assert data["columns"]["hash"] == ["aaaa", "bbbb", "cccc"]
    assert data["columns"]["null_token_norm_mean"] == pytest.approx([0.0, 1.0, 0.5])
    assert data["columns"]["null_pooled_norm"] == [None] * 3  # SD1-like conds have no pooled part
    assert data["results"][1]["score"] == data["columns"]["score"][1]
    assert data["format"].endswith("/checkpoints") and data["interrupted"] is False


def test_checkpoint_names_from_the_api():
    assert ps.checkpoint_names(["a", " b "]) == ["a", "b"]
    assert ps.checkpoint_names("a") == ["a"]
    for bad in (None, 3, [1], [""], {"a": 1}):
        with pytest.raises(ProbeError, match="'checkpoints' must be a list"):
            ps.checkpoint_names(bad)


def test_cache_key_is_file_settings_and_options():
    cache = ProbeCache(4)
    key = CheckpointKey("0123456789", SETTINGS, "clip_skip=1")
    cache.put(key, probe_with_null(1.0))
    assert cache.get(CheckpointKey("0123456789", SETTINGS, "clip_skip=1")) is not None
    assert cache.get(CheckpointKey("0123456789", SETTINGS, "clip_skip=2")) is None
    assert cache.get(CheckpointKey("0123456789", ProbeSettings(**{**SETTINGS.as_dict(), "shift": 2.0}),
                                   "clip_skip=1")) is None
    assert cache.get(CheckpointKey("fedcba9876", SETTINGS, "clip_skip=1")) is None


def test_display_rounding_keeps_four_significant_digits():
    assert ps.significant(0.123456789) == 0.1235
    assert ps.significant(12345.678) == 12350.0
    assert ps.significant(0.0) == 0.0 and ps.significant(None) is None and ps.significant("x") == "x"
    assert ps.significant(math.inf) == math.inf and ps.significant(7) == 7


def test_resident_memory_is_a_positive_number_on_linux():
    value = ps.resident_mb()
    assert value is None or value > 1


# --- the flow settings of the probe ----------------------------------------------------------------------

def test_probe_settings_take_rf_and_shift_like_the_uncond_lab_dict():
    assert ProbeSettings().rf is None and ProbeSettings().shift == 3.0
    parsed = ProbeSettings.from_dict({"rf": "Rectified flow", "shift": 2})
    assert parsed.rf is True and parsed.shift == 2.0
    assert ProbeSettings.from_dict(parsed.as_dict()) == parsed
    assert ProbeSettings(rf="Model's own (not flow)").rf is False
    with pytest.raises(ProbeError, match="Uncond Lab probe: 'shift' must be a number in"):
        ProbeSettings(shift=0)
    with pytest.raises(ProbeError, match="'rf' must be"):
        ProbeSettings(rf="sometimes")
