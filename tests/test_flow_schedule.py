"""The shifted flow grid, its table, ComfyUI's percent_to_sigma, and the RF schedule, against the formula.

The oracle everywhere is sigma(t) = s·t / (1 + (s - 1)·t) evaluated here in plain Python floats, independently of
the module's torch code.
"""
import math

import pytest
import torch

from lib_ext.flow import (
    FlowDenoiser,
    check_flow_sigmas,
    checked_flow_sigmas,
    flow_percent_to_sigma,
    flow_schedule,
    flow_scheduler,
    flow_sigmas,
    time_shift,
)

SHIFTS = [1.0, 1.5, 3.0, 4.5, 8.0]


def oracle_sigma(shift: float, t: float) -> float:
    return shift * t / (1.0 + (shift - 1.0) * t)


# --- time_shift ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", SHIFTS)
def test_time_shift_matches_formula_and_fixes_endpoints(shift):
    for t in (0.0, 0.001, 0.25, 0.5, 0.9, 1.0):
        assert time_shift(shift, t) == pytest.approx(oracle_sigma(shift, t), rel=1e-12, abs=1e-15)
    assert time_shift(shift, 0.0) == 0.0
    assert time_shift(shift, 1.0) == pytest.approx(1.0, abs=1e-15)


def test_time_shift_hand_values():
    # s = 3, t = 1/2: 1.5 / 2 = 0.75; s = 3, t = 0.25: 0.75 / 1.5 = 0.5
    assert time_shift(3.0, 0.5) == pytest.approx(0.75)
    assert time_shift(3.0, 0.25) == pytest.approx(0.5)
    assert time_shift(1.0, 0.3) == 0.3


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "3"])
def test_time_shift_rejects_bad_shift(bad):
    with pytest.raises(ValueError, match="shift"):
        time_shift(bad, 0.5)


# --- the 1000-entry table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", SHIFTS)
def test_flow_sigmas_table(shift):
    table = flow_sigmas(shift)
    assert table.shape == (1000,) and table.dtype == torch.float32
    expected = torch.tensor([oracle_sigma(shift, k / 1000) for k in range(1, 1001)], dtype=torch.float64)
    assert torch.allclose(table.double(), expected, rtol=1e-6, atol=1e-9)
    assert table[-1].item() == 1.0                      # pure noise at the top
    assert table[0].item() == pytest.approx(oracle_sigma(shift, 0.001), rel=1e-6)
    assert (table[1:] > table[:-1]).all()               # ascending, as DiscreteSchedule expects
    assert torch.isfinite(table.log()).all()


def test_flow_sigmas_other_table_length():
    table = flow_sigmas(3.0, timesteps=4)
    assert table.tolist() == pytest.approx([oracle_sigma(3.0, k / 4) for k in (1, 2, 3, 4)], rel=1e-6)


@pytest.mark.parametrize("bad", [0, 1, 2.5, -3])
def test_flow_sigmas_rejects_bad_length(bad):
    with pytest.raises(ValueError, match="timesteps"):
        flow_sigmas(3.0, bad)


# --- percent_to_sigma (ComfyUI ModelSamplingDiscreteFlow.percent_to_sigma) ----------------------------------

@pytest.mark.parametrize("shift", SHIFTS)
def test_percent_to_sigma_comfy_semantics(shift):
    assert flow_percent_to_sigma(0.0, shift) == 1.0
    assert flow_percent_to_sigma(-0.5, shift) == 1.0
    assert flow_percent_to_sigma(1.0, shift) == 0.0
    assert flow_percent_to_sigma(1.5, shift) == 0.0
    for p in (0.001, 0.1, 0.35, 0.5, 0.8, 0.999):
        assert flow_percent_to_sigma(p, shift) == pytest.approx(oracle_sigma(shift, 1.0 - p), rel=1e-12)


def test_percent_to_sigma_decreases_with_percent():
    values = [flow_percent_to_sigma(p / 20, 3.0) for p in range(21)]
    assert all(a > b for a, b in zip(values, values[1:]))


# --- the RF schedule ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 28, 50, 1000])
def test_flow_schedule_against_formula(shift, n):
    sigmas = flow_schedule(n, shift)
    assert sigmas.shape == (n + 1,)
    expected = [oracle_sigma(shift, 1.0 - i / n) for i in range(n)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_flow_schedule_hand_values():
    # n = 4, s = 3: t = 1, 0.75, 0.5, 0.25 -> 1, 2.25/2.5 = 0.9, 0.75, 0.5, then 0
    assert flow_schedule(4, 3.0).tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0])


def comfy_simple_oracle(n: int, shift: float) -> list:
    """ComfyUI's "simple" on a flow model: table entries sigmas[-(1 + int(x·1000/n))], then 0."""
    table = [oracle_sigma(shift, k / 1000) for k in range(1, 1001)]
    return [table[-(1 + int(x * (1000 / n)))] for x in range(n)] + [0.0]


@pytest.mark.parametrize("n", [1, 4, 8, 10, 20, 25, 40, 50, 125, 200])
def test_flow_schedule_equals_comfy_simple_when_n_divides_1000(n):
    assert flow_schedule(n, 3.0).tolist() == pytest.approx(comfy_simple_oracle(n, 3.0), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("n", [3, 7, 28, 30])
def test_flow_schedule_close_to_comfy_simple_otherwise(n):
    ours, simple = flow_schedule(n, 3.0).tolist(), comfy_simple_oracle(n, 3.0)
    assert ours != pytest.approx(simple, rel=1e-6)                      # really different ...
    assert max(abs(a - b) for a, b in zip(ours, simple)) < 3.0 / 1000  # ... by less than one table step (dσ/dt <= s)


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_flow_schedule_rejects_bad_step_count(bad):
    with pytest.raises(ValueError, match="n >= 1"):
        flow_schedule(bad, 3.0)


def test_flow_scheduler_webui_signature_reads_the_denoisers_shift():
    denoiser = FlowDenoiser(lambda x, t, **kw: x, shift=4.5)
    sigmas = flow_scheduler(n=12, sigma_min=0.1, sigma_max=10.0, inner_model=denoiser, device="cpu")
    assert torch.equal(sigmas, flow_schedule(12, 4.5))


def test_flow_scheduler_refuses_a_non_flow_model():
    class EpsWrap:
        sigmas = torch.tensor([0.03, 14.6])
    with pytest.raises(ValueError, match="EpsWrap"):
        flow_scheduler(10, 0.03, 14.6, EpsWrap(), "cpu")


# --- model-sigma schedules follow the shift (what WebUI "Automatic"/"Uniform"/Karras read) ------------------

@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_denoiser_table_schedules_follow_the_shift(shift):
    denoiser = FlowDenoiser(lambda x, t, **kw: x, shift=shift)
    assert denoiser.sigma_max.item() == 1.0
    assert denoiser.sigma_min.item() == pytest.approx(oracle_sigma(shift, 0.001), rel=1e-6)
    # DiscreteSchedule.get_sigmas(n) = uniform in the table index: t = 999 ... 0 -> sigma((k + 1)/1000), then 0
    sigmas = denoiser.get_sigmas(4)  # k = 999, 666, 333, 0
    expected = [oracle_sigma(shift, k / 1000) for k in (1000, 667, 334, 1)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-5)
    # sigma_to_t / t_to_sigma (SGM Uniform, Normal) invert each other on the shifted table
    t = denoiser.sigma_to_t(torch.tensor([1.0, expected[1], expected[3]]))
    assert t.tolist() == pytest.approx([999.0, 666.0, 0.0], abs=1e-3)


# --- check_flow_sigmas ----------------------------------------------------------------------------------

def test_check_flow_sigmas_accepts_flow_schedules():
    check_flow_sigmas(flow_schedule(10, 3.0))
    check_flow_sigmas(torch.tensor([1.0, 0.5, 0.5, 0.0, 0.0]))  # repeats are fine


@pytest.mark.parametrize("sigmas, match", [
    (torch.tensor([14.6, 1.0, 0.0]), r"\[0, 1\]"),       # a VE schedule
    (torch.tensor([1.0, -0.1]), r"\[0, 1\]"),
    (torch.tensor([0.5, 0.7, 0.0]), "increase"),           # restart-like
    (torch.tensor([]), "at least one"),
])
def test_check_flow_sigmas_rejects(sigmas, match):
    with pytest.raises(ValueError, match=match):
        check_flow_sigmas(sigmas)


def test_sigma_max_of_the_table_is_one_not_inf():
    # regression: the noisy end of the flow table is finite (VE tables end at ~14.6); log(1) = 0 must stay finite
    denoiser = FlowDenoiser(lambda x, t, **kw: x, shift=3.0)
    assert math.isfinite(denoiser.log_sigmas[-1].item()) and denoiser.log_sigmas[-1].item() == 0.0


def test_checked_flow_sigmas_passes_a_flow_schedule_and_refuses_a_ve_one():
    def flow(p, steps):
        return torch.linspace(1, 0, steps + 1)

    def ve(p, steps):
        return torch.linspace(14.6, 0, steps + 1)

    assert torch.equal(checked_flow_sigmas(flow)(None, 4), flow(None, 4))
    with pytest.raises(ValueError, match="flow sigmas must lie in"):
        checked_flow_sigmas(ve)(None, 4)
