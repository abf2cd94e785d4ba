"""Sampling an analytic flow: Gaussian data, whose exact velocity field is known in closed form.

Data x0 ~ N(mu, diag std²), noise n ~ N(0, 1), x = (1 - σ)·x0 + σ·n. (x0, x) is jointly Gaussian with
Cov(x0, x) = (1 - σ)·std² and Var(x) = (1 - σ)²·std² + σ², so
    E[x0 | x] = mu + (1 - σ)·std² / ((1 - σ)²·std² + σ²) · (x - (1 - σ)·mu)
and, since v = n - x0 and n = (x - (1 - σ)·x0)/σ,  E[v | x] = (x - E[x0 | x]) / σ.
That velocity is the best possible "UNet"; the flow ODE it defines carries N(0, 1) at σ = 1 exactly onto
N(mu, std²) at σ = 0, so whatever a sampler misses is its own error.

Exact moments: with this denoiser every sampler below is an affine map of its start x and of the noise it draws
(its coefficients depend only on the sigmas). So the output mean is the output for x = 0 and zero noise, and the
output variance is the sum of the squared responses to a unit start (x = 1·σ_max) and to a unit draw at each
noise call. Those are computed in float64 without any sampling error; a Monte Carlo run with a seeded generator
checks the same thing end to end.
"""
import k_diffusion.sampling as kds
import pytest
import torch

import inspect

from lib_ext.flow import (FlowDenoiser, flow_schedule, rf_sampler_policy, sample_euler_ancestral_rf,
                          seeded_euler_ancestral_rf)

MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
STD = torch.tensor([0.6, 1.0, 1.5], dtype=torch.float64)
SHIFT = 3.0


def gaussian_velocity(x, timestep, **kwargs):
    """E[v | x] for the Gaussian data above; `timestep` = σ·1000, as the UNet would receive it."""
    sigma = (timestep / 1000.0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    alpha = 1.0 - sigma
    mu, var = MU.to(x), STD.to(x) ** 2
    x0 = mu + alpha * var / (alpha ** 2 * var + sigma ** 2) * (x - alpha * mu)
    return (x - x0) / sigma


DENOISER = FlowDenoiser(gaussian_velocity, SHIFT)


def run(sampler, steps, x, noise_sampler=None, **kwargs):
    sigmas = flow_schedule(steps, SHIFT).to(torch.float64)
    if noise_sampler is not None:
        kwargs["noise_sampler"] = noise_sampler
    return sampler(DENOISER, x * sigmas[0], sigmas, disable=True, **kwargs)


def exact_moments(sampler, steps, stochastic=False, **kwargs):
    """(mean, variance) of the sampler's output distribution, per dimension, by the affine probes above.

    One batched run: row 0 starts at 0 and draws zeros (the mean), row 1 starts at 1, row 2 + k starts at 0 and
    draws a unit noise at the sampler's k-th noise call only. A first run counts the noise calls.
    """
    calls = [0]

    def count(sigma, sigma_next):
        calls[0] += 1
        return torch.zeros(1, 3, dtype=torch.float64)

    if stochastic:
        run(sampler, steps, torch.zeros(1, 3, dtype=torch.float64), noise_sampler=count, **kwargs)
    rows = 2 + calls[0]
    start = torch.zeros(rows, 3, dtype=torch.float64)
    start[1] = 1.0
    drawn = [0]

    def unit_for_row(sigma, sigma_next):
        noise = torch.zeros(rows, 3, dtype=torch.float64)
        noise[2 + drawn[0]] = 1.0
        drawn[0] += 1
        return noise

    out = run(sampler, steps, start, noise_sampler=unit_for_row if stochastic else None, **kwargs)
    mean = out[0]
    return mean, ((out[1:] - mean) ** 2).sum(0)


def errors(sampler, steps, stochastic=False, **kwargs):
    """(max |mean - mu|, max relative variance error) of the output distribution."""
    mean, var = exact_moments(sampler, steps, stochastic, **kwargs)
    return (mean - MU).abs().max().item(), (var / STD ** 2 - 1).abs().max().item()


# --- the analytic model itself ------------------------------------------------------------------------------

def test_gaussian_velocity_is_the_conditional_mean():
    # Monte Carlo regression of v = n - x0 on x at one σ: the least-squares slope/intercept match the formula
    g = torch.Generator().manual_seed(0)
    sigma = 0.4
    x0 = MU + STD * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    n = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    x = (1 - sigma) * x0 + sigma * n
    v_hat = gaussian_velocity(x, torch.full((len(x),), sigma * 1000.0, dtype=torch.float64))
    residual = (n - x0) - v_hat
    assert residual.mean(0).abs().max() < 0.01                          # unbiased
    assert (residual * (x - x.mean(0))).mean(0).abs().max() < 0.01      # uncorrelated with x: E[v|x] is linear


# --- ODE samplers: land on the data distribution, and the error shrinks as steps grow -------------------------

ODE_SAMPLERS = [("Euler", kds.sample_euler), ("Heun", kds.sample_heun), ("LMS", kds.sample_lms),
                ("DPM2", kds.sample_dpm_2), ("DPM++ 2M", kds.sample_dpmpp_2m)]


@pytest.mark.parametrize("label, sampler", ODE_SAMPLERS, ids=[label for label, _ in ODE_SAMPLERS])
def test_ode_samplers_converge_to_the_data_distribution(label, sampler):
    assert rf_sampler_policy(label).action == "run"
    variance_errors = []
    for steps in (8, 16, 32, 64, 128):
        mean_error, variance_error = errors(sampler, steps)
        assert mean_error < 1e-9                  # the mean path is exact for every one of them
        variance_errors.append(variance_error)
    assert all(b < a for a, b in zip(variance_errors, variance_errors[1:])), variance_errors
    assert variance_errors[-1] < 0.05, variance_errors


def test_euler_is_first_order_and_heun_second_order():
    euler = [errors(kds.sample_euler, n)[1] for n in (64, 128)]
    heun = [errors(kds.sample_heun, n)[1] for n in (64, 128)]
    assert 1.8 < euler[0] / euler[1] < 2.2        # halves with twice the steps
    assert 3.5 < heun[0] / heun[1] < 4.5          # quarters


def test_euler_monte_carlo_lands_on_the_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    out = run(kds.sample_euler, 256, x)
    # statistical tolerance ~4 standard errors; Euler's own bias at 256 steps is ~1 % in variance
    assert (out.mean(0) - MU).abs().max() < 4 * (STD.max() / 4000 ** 0.5)
    assert (out.var(0) / STD ** 2 - 1).abs().max() < 4 * (2 / 4000) ** 0.5 + 0.02


# --- RF Euler a ---------------------------------------------------------------------------------------------

def test_rf_euler_ancestral_converges_to_the_data_distribution():
    variance_errors = []
    for steps in (16, 32, 64, 128, 256):
        mean_error, variance_error = errors(sample_euler_ancestral_rf, steps, stochastic=True)
        assert mean_error < 1e-9
        variance_errors.append(variance_error)
    assert all(b < a for a, b in zip(variance_errors, variance_errors[1:])), variance_errors
    assert 1.7 < variance_errors[-2] / variance_errors[-1] < 2.3   # first order, like an Euler-Maruyama step
    assert variance_errors[-1] < 0.05, variance_errors


@pytest.mark.parametrize("eta", [0.3, 0.7])
def test_rf_euler_ancestral_converges_for_partial_eta(eta):
    coarse = errors(sample_euler_ancestral_rf, 32, stochastic=True, eta=eta)[1]
    fine = errors(sample_euler_ancestral_rf, 256, stochastic=True, eta=eta)[1]
    assert fine < coarse / 4 and fine < 0.05


def test_rf_euler_ancestral_monte_carlo_lands_on_the_data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    noise = lambda sigma, sigma_next: torch.randn(4000, 3, generator=g, dtype=torch.float64)
    out = run(sample_euler_ancestral_rf, 512, x, noise_sampler=noise)
    assert (out.mean(0) - MU).abs().max() < 4 * (STD.max() / 4000 ** 0.5)
    assert (out.var(0) / STD ** 2 - 1).abs().max() < 4 * (2 / 4000) ** 0.5 + 0.03  # bias at 512 steps ~2 %


def test_rf_euler_ancestral_with_eta_zero_is_euler():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    never = lambda sigma, sigma_next: pytest.fail("eta = 0 must not draw noise")
    ancestral = run(sample_euler_ancestral_rf, 20, x, noise_sampler=never, eta=0.0)
    assert torch.allclose(ancestral, run(kds.sample_euler, 20, x), atol=1e-12)


def test_rf_euler_ancestral_default_noise_comes_from_k_diffusion(monkeypatch):
    # A1111 seeds k-diffusion's noise by replacing `k_diffusion.sampling.torch`; the default sampler must use it
    drawn = []

    def fake_default_noise_sampler(x):
        def sample(sigma, sigma_next):
            drawn.append(1)
            return torch.zeros_like(x)
        return sample

    monkeypatch.setattr(kds, "default_noise_sampler", fake_default_noise_sampler)
    run(sample_euler_ancestral_rf, 5, torch.zeros(1, 3, dtype=torch.float64))
    assert len(drawn) == 4                       # one draw per step except the last (it lands on x0)


def test_seeded_rf_euler_ancestral_draws_through_the_hijack_of_the_moment():
    # The WebUIs replace their k-diffusion module's `torch` when the sampler initialises, i.e. after the sampler
    # function was chosen; so the hijack is looked up at every draw, and its draws are the ones used.
    class Hijack:
        def __init__(self, seed):
            self.generator = torch.Generator().manual_seed(seed)

        def randn_like(self, x):
            return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)

    current = {"torch": None}
    sampler = seeded_euler_ancestral_rf(lambda: current["torch"].randn_like)
    assert {"sigmas", "eta", "s_noise"} <= set(inspect.signature(sampler).parameters)
    assert "noise_sampler" not in inspect.signature(sampler).parameters  # the WebUIs would fill it with VE noise
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    current["torch"] = Hijack(7)
    seeded = run(sampler, 6, x)
    expected_draws = Hijack(7)
    expected = run(sample_euler_ancestral_rf, 6, x,
                   noise_sampler=lambda s, sn: expected_draws.randn_like(torch.empty(2, 3, dtype=torch.float64)))
    assert torch.equal(seeded, expected)
    current["torch"] = Hijack(8)
    assert not torch.equal(run(sampler, 6, x), seeded)


def test_rf_euler_ancestral_callback_and_final_step():
    seen = []
    x = torch.zeros(2, 3, dtype=torch.float64)
    out = run(sample_euler_ancestral_rf, 3, x, noise_sampler=lambda s, sn: torch.zeros(2, 3, dtype=torch.float64),
              callback=seen.append)
    assert [c["i"] for c in seen] == [0, 1, 2]
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert torch.equal(out, seen[-1]["denoised"])   # the last step returns the denoised x0


def test_rf_euler_ancestral_refuses_a_ve_schedule():
    sigmas = torch.tensor([14.6, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_euler_ancestral_rf(DENOISER, torch.zeros(1, 3), sigmas, disable=True)


# --- VE noise on a flow model: why Euler a is replaced and the SDE/ancestral samplers are refused --------------

VE_SAMPLERS = [("Euler a", kds.sample_euler_ancestral), ("DPM2 a", kds.sample_dpm_2_ancestral),
               ("DPM++ 2S a", kds.sample_dpmpp_2s_ancestral), ("DPM++ 2M SDE", kds.sample_dpmpp_2m_sde)]


@pytest.mark.parametrize("label, sampler", VE_SAMPLERS, ids=[label for label, _ in VE_SAMPLERS])
def test_ve_noise_samplers_miss_the_data_and_more_steps_do_not_help(label, sampler):
    assert rf_sampler_policy(label).action in ("refuse", "substitute")
    coarse = errors(sampler, 32, stochastic=True)
    fine = errors(sampler, 128, stochastic=True)
    assert fine[1] > 1.0 and fine[1] >= coarse[1]      # variance off by more than 100 %, growing with steps
    assert fine[0] > 0.5                                # and the mean is off too


def test_rf_euler_ancestral_tolerates_float_rounding_at_the_top():
    # regression: a schedule whose first sigma rounds a hair above 1 must not be rejected by the step
    sigmas = torch.tensor([1.0 + 1e-7, 0.5, 0.0], dtype=torch.float64)
    out = sample_euler_ancestral_rf(DENOISER, torch.zeros(1, 3, dtype=torch.float64), sigmas, disable=True,
                                    noise_sampler=lambda s, sn: torch.zeros(1, 3, dtype=torch.float64))
    assert torch.isfinite(out).all()
