"""Sweep lists in the X/Y/Z plot's syntax, the uncond list, cell order and grid labels; hostile input refused."""
import re

import pytest

from lib_ext.merge.sweep import (MAX_CELLS, MAX_VALUES, SweepError, SweepPlan, parse_cfgs, parse_ratios, parse_unconds,
                           plan_sweep, uncond_label)


@pytest.mark.parametrize("text, expected", [
    ("0.3", [0.3]),
    ("0, 0.3, 0.5", [0.0, 0.3, 0.5]),
    ("0-1", [0.0, 1.0]),
    ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0-1 [1]", [0.0]),
    ("0-1 (+0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0-1 (0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),      # the X/Y/Z plot insists on the sign; here it may go
    ("0-1 (+0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),  # no 0.30000000000000004, no 1.1
    ("0-0.95 (+0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    ("1-0 (-0.5)", [1.0, 0.5, 0.0]),
    ("1-0 (0.5)", [1.0, 0.5, 0.0]),
    ("-0.5-0.5 [3]", [-0.5, 0.0, 0.5]),
    (" .5 , 1.,0-1 [2] ", [0.5, 1.0, 0.0, 1.0]),
    ("0.5,,1,", [0.5, 1.0]),
])
def test_ratio_lists(text, expected):
    assert parse_ratios(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "give at least one value"),
    (" , ", "give at least one value"),
    ("half", "cannot read 'half'"),
    ("0-1 [0]", "the count must be 1 to"),
    ("0-1 [1000000]", "the count must be 1 to"),
    ("0-1 (+0)", "the step must not be 0"),
    ("0-1 (-0.5)", "never gets from 0 to 1"),
    ("0-2 (+0.00001)", "at most 64 values per list"),
    ("3", "3 is outside [-1, 2]"),
    ("nan", "cannot read 'nan'"),
    ("1e400", "cannot read"),
    ("0-1 [5] [6]", "cannot read"),
    ("__import__('os')", "cannot read"),
    ("x" * 10000, "cannot read 'xxxxxxxx"),
])
def test_bad_ratio_lists(text, fragment):
    with pytest.raises(SweepError) as error:
        parse_ratios(text)
    message = str(error.value)
    assert message.startswith("Merge ratios: ") and fragment in message and len(message) < 300


def test_too_many_values_in_total():
    with pytest.raises(SweepError, match="more than 64 values"):
        parse_ratios(", ".join(["0.5"] * (MAX_VALUES + 1)))


def test_cfg_lists():
    assert parse_cfgs("3, 7") == [3.0, 7.0]
    assert parse_cfgs("1-9 (+4)") == [1.0, 5.0, 9.0]
    with pytest.raises(SweepError, match="CFG scales: 101 is outside"):
        parse_cfgs("101")


def test_uncond_lists():
    assert parse_unconds("WebUI default; 0; 1; 0.5") == [None, 0.0, 1.0, 0.5]
    assert parse_unconds("default, null, zero") == [None, 0.0, 1.0]
    assert parse_unconds("") == [None] and parse_unconds(" ; ") == [None]
    for bad, fragment in (("1.5", "outside [0, 1]"), ("inf", "outside [0, 1]"), ("maybe", "cannot read 'maybe'"),
                          ("nan", "outside [0, 1]")):
        with pytest.raises(SweepError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            parse_unconds(bad)
    assert [uncond_label(w) for w in (None, 0.0, 1.0, 0.25)] == \
        ["WebUI uncond", "null uncond", "zero uncond", "zero weight 0.25"]


def test_cells_run_ratio_outermost_and_fill_the_grid_row_by_row():
    plan = plan_sweep("0, 0.5, 1", "3, 7", "default; 1")
    cells = plan.cells()
    assert plan.cell_count == len(cells) == 12
    assert [c.ratio for c in cells] == [0.0] * 4 + [0.5] * 4 + [1.0] * 4  # one weight update per ratio
    assert [(c.row, c.column) for c in cells] == [(r, c) for r in range(3) for c in range(4)]
    assert [(c.uncond, c.cfg) for c in cells[:4]] == [(None, 3.0), (None, 7.0), (1.0, 3.0), (1.0, 7.0)]
    assert plan.row_labels() == ["Merge ratio 0", "Merge ratio 0.5", "Merge ratio 1"]
    assert plan.column_labels() == [["CFG 3", "WebUI uncond"], ["CFG 7", "WebUI uncond"],
                                    ["CFG 3", "zero uncond"], ["CFG 7", "zero uncond"]]


def test_labels_leave_out_what_does_not_vary():
    assert plan_sweep("0", "7", "").column_labels() == [["CFG 7"]]
    assert plan_sweep("0", "7", "null; zero").column_labels() == [["null uncond"], ["zero uncond"]]


def test_too_many_cells():
    with pytest.raises(SweepError, match=f"at most {MAX_CELLS}"):
        plan_sweep("0-1 [64]", "1-8", "")
    with pytest.raises(SweepError, match="at least one"):
        SweepPlan((), (7.0,), (None,))


def test_block_weights_list_is_one_more_row_dimension():
    plan = plan_sweep("0.5, 1", "7", "default", '"IN04=0", "in04=1", input-only, flat')
    assert plan.blocks == ("IN04=0", "IN04=1", "input-only", None)
    assert plan.cell_count == 8
    cells = plan.cells()
    assert [(c.ratio, c.blocks) for c in cells[:4]] == [(0.5, "IN04=0"), (0.5, "IN04=1"), (0.5, "input-only"),
                                                         (0.5, None)]  # ratio outermost, then blocks
    assert plan.row_labels()[1] == "Merge ratio 0.5, blocks IN04=1"
    assert plan_sweep("0.5", "7", "default").blocks == (None,)
    assert plan_sweep("0.5", "7", "default", '"IN00-IN03=1, OUT=0"').blocks == ("IN00-IN03=1, OUT=0",)


@pytest.mark.parametrize("text, fragment", [
    ('"IN04=7"', "the value of IN04 must be a number in [-1, 2], got '7'"),
    ("IN04=0, nonsense", "unknown preset 'nonsense'"),
])
def test_bad_block_weights_lists(text, fragment):
    with pytest.raises(SweepError, match=re.escape(fragment)):
        plan_sweep("0.5", "7", "default", text)
