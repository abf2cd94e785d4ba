"""The shifted flow time grid: sigma(t) = s·t / (1 + (s - 1)·t), its 1000-entry table, and the RF schedule.

On the straight path x_t = (1 - sigma)·x0 + sigma·noise, sigma runs from 1 (pure noise) to 0 (data). The SD3 shift
s (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 23) moves the grid toward the noisy end; s = 1 is
the plain uniform grid. The UNet sees timestep = sigma · multiplier (ComfyUI `ModelSamplingDiscreteFlow`).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

Number = float | torch.Tensor

DEFAULT_TIMESTEPS = 1000


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"flow shift must be a finite number > 0, got {shift!r}")


def time_shift(shift: float, t: Number) -> Number:
    """ComfyUI `time_snr_shift(alpha, t)`: s·t / (1 + (s - 1)·t); maps [0, 1] onto itself, fixing 0 and 1."""
    _check_shift(shift)
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(shift: float, timesteps: int = DEFAULT_TIMESTEPS) -> torch.Tensor:
    """Ascending table sigma(k / T), k = 1..T (ComfyUI / A1111 SD3 `ModelSamplingDiscreteFlow.sigmas`).

    The last entry is exactly 1 (pure noise); the first is sigma(1/T) > 0, so its log is finite for k-diffusion's
    `DiscreteSchedule`. Computed in float64 and stored as float32.
    """
    if not (isinstance(timesteps, int) and timesteps >= 2):
        raise ValueError(f"flow table needs an integer timesteps >= 2, got {timesteps!r}")
    t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
    return time_shift(shift, t).to(torch.float32)


def flow_percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI `ModelSamplingDiscreteFlow.percent_to_sigma`: 0 % → 1.0, 100 % → 0.0, else sigma(1 - percent)."""
    _check_shift(shift)
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return float(time_shift(shift, 1.0 - percent))


def flow_schedule(n: int, shift: float, device: Any = None) -> torch.Tensor:
    """The RF schedule: n steps uniform in t over the shifted grid, sigma_i = sigma(1 - i/n), i = 0..n.

    Starts at exactly 1 (so txt2img's `noise · sigmas[0]` is pure noise) and ends at exactly 0. Not quantised to
    the 1000-entry table: when n divides 1000 it equals ComfyUI's "simple" scheduler on a flow model value for
    value; otherwise "simple" rounds each t down to the table (a difference below 1/1000 in t). ComfyUI's
    "normal" differs: it spaces n points from t = 1 to t = 1/1000 and then appends 0.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"RF schedule needs a step count n >= 1, got {n!r}")
    t = 1.0 - torch.arange(0, n + 1, dtype=torch.float64) / n
    sigmas = time_shift(shift, t)
    sigmas[-1] = 0.0  # already 0 up to rounding; make the end exact
    return sigmas.to(dtype=torch.float32, device=device)


def flow_scheduler(n: int, sigma_min: float, sigma_max: float, inner_model: Any, device: Any) -> torch.Tensor:
    """`flow_schedule` with the WebUI scheduler signature (A1111 `sd_schedulers`, need_inner_model=True).

    The shift comes from the model's flow denoiser (`inner_model.shift`). `sigma_min`/`sigma_max` are ignored,
    like ComfyUI's "simple": the RF schedule always spans the whole path, 1 → 0.
    """
    shift = getattr(inner_model, "shift", None)
    if shift is None:
        raise ValueError(f"the RF schedule needs a rectified-flow denoiser (with a 'shift'); the sampler's model "
                         f"is {type(inner_model).__name__}. Enable RF mode for this model or pick another schedule.")
    return flow_schedule(n, float(shift), device=device)


def check_flow_sigmas(sigmas: torch.Tensor) -> None:
    """Raise unless `sigmas` is a non-increasing schedule inside [0, 1], the only range a flow path has."""
    values = sigmas.detach().double().cpu()
    if values.numel() == 0:
        raise ValueError("a flow schedule needs at least one sigma, got an empty tensor")
    if values.min() < 0 or values.max() > 1 + 1e-6:
        raise ValueError(f"flow sigmas must lie in [0, 1], got min {values.min().item():g}, max "
                         f"{values.max().item():g}; a VE schedule or a 'Schedule max sigma' override does not fit RF")
    rises = (values[1:] > values[:-1]).nonzero()
    if len(rises):
        i = int(rises[0])
        raise ValueError(f"flow sigmas must not increase, got {values[i].item():g} then {values[i + 1].item():g} "
                         f"at index {i}")



def checked_flow_sigmas(get_sigmas):
    """A sampler's `get_sigmas(p, steps)` that refuses a schedule leaving the flow range (e.g. the WebUIs'
    'Schedule max sigma' option)."""
    @functools.wraps(get_sigmas)
    def get_flow_sigmas(p, steps):
        sigmas = get_sigmas(p, steps)
        check_flow_sigmas(sigmas)
        return sigmas
    return get_flow_sigmas
