"""Whether a generation samples as rectified flow, and why it may not: decided from facts the host gathers.

The hosts (lib_ext/hosts/a1111.py, reforge.py) read the WebUI's state into a `GenerationFacts`; everything that
decides lives here, free of WebUI imports, so it is tested without a WebUI. The decision is made once per
generation, in the script's `process()`, the last hook that can still stop a generation with a message.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lib_ext.flow.metadata import declares_flow
from lib_ext.flow.policy import rf_refusal_message, rf_sampler_policy, rf_schedule_problem, rf_setting_conflicts

RF_SCHEDULER_NAME = "rectified_flow"
RF_SCHEDULER_LABEL = "Rectified Flow"
"""The RF schedule (`flow_schedule`) in the WebUIs' 'Schedule type' list: n steps uniform in t over the shifted
grid, 1 -> 0 (ComfyUI's "simple" on a flow model)."""

PREFIX = "Uncond Lab RF: "
_SAME = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint")


@dataclass(frozen=True)
class RfPlan:
    """How this generation samples as rectified flow (one per generation, stored on `p`)."""
    shift: float
    multiplier: float
    source: str  # "setting": the user chose RF; "metadata": the checkpoint declares a flow objective


def resolve_rf(choice: bool | None, metadata: Mapping[str, Any] | None, is_sd3: bool = False) -> tuple[bool, str]:
    """(RF on?, why): an explicit choice wins; "model default" (None) is RF exactly when the checkpoint's
    safetensors metadata declares a flow objective. Never guessed from the file name. An SD3 checkpoint samples
    as flow by itself: its default is its own sampling, whatever its metadata says."""
    if choice is not None:
        return bool(choice), "setting"
    if is_sd3:
        return False, "sd3"
    return declares_flow(metadata), "metadata"


def is_rf_schedule(name: str | None) -> bool:
    return str(name or "").strip().lower() in (RF_SCHEDULER_NAME, RF_SCHEDULER_LABEL.lower())


def pass_value(value: str | None) -> str | None:
    """A hires-pass sampler/scheduler field as the WebUI means it: None for "same as the first pass"."""
    return None if value in _SAME else value


@dataclass(frozen=True)
class GenerationFacts:
    """What the WebUI is about to do, as far as RF cares. Sampler and schedule names are the WebUI's labels."""
    sampler: str
    scheduler: str | None = None
    hires_sampler: str | None = None          # the hires pass's sampler; None when no hires pass runs
    hires_scheduler: str | None = None
    noises_a_latent: bool = False             # img2img or a hires pass: the WebUI noises a given latent
    available_samplers: tuple[str, ...] = ()  # the WebUI's sampler labels, to name the ones that work
    sgm_noise_multiplier: bool = False
    zero_terminal_snr: bool = False
    img2img_extra_noise: float = 0.0
    sigma_churn: Mapping[str, float] = field(default_factory=dict)  # per sampler: the churn it would use
    is_sd3: bool = False                      # a real SD3 model: it has its own flow sampling, never touched
    refiner: str | None = None                # a refiner that will take over mid-sampling
    hires_checkpoint: str | None = None       # another checkpoint for the hires pass
    competing_model_sampling: str | None = None  # another feature that patches model sampling this generation


def rf_problems(facts: GenerationFacts) -> list[str]:
    """Why this generation cannot sample as rectified flow, one full sentence each; empty when it can."""
    if facts.is_sd3:
        return [PREFIX + "the loaded checkpoint is SD3, which samples as rectified flow by itself; Uncond Lab "
                         "never changes an SD3 model. Set Prediction to 'Model default' or 'Model's own'."]
    problems = []
    if facts.competing_model_sampling:
        problems.append(PREFIX + f"{facts.competing_model_sampling} is enabled and also replaces the model "
                                 f"sampling; turn one of them off (its SD3 mode with shift s is the same flow "
                                 f"sampling as Uncond Lab RF with shift s).")
    if facts.refiner:
        problems.append(PREFIX + f"the refiner ('{facts.refiner}') swaps the model mid-sampling and rebuilds its "
                                 f"denoiser; turn the refiner off.")
    if facts.hires_checkpoint:
        problems.append(PREFIX + f"a hires checkpoint ('{facts.hires_checkpoint}') is not supported: the "
                                 f"prediction type belongs to one checkpoint. Use the same checkpoint.")
    samplers = [facts.sampler] + ([facts.hires_sampler] if facts.hires_sampler else [])
    for sampler in dict.fromkeys(samplers):  # the hires sampler only once if it is the same
        if not rf_sampler_policy(sampler).works:
            problems.append(rf_refusal_message(sampler, facts.available_samplers))
    for schedule in dict.fromkeys(s for s in (facts.scheduler, facts.hires_scheduler) if s):
        problem = rf_schedule_problem(schedule)
        if problem:
            problems.append(problem)
    conflicts = rf_setting_conflicts(
        sgm_noise_multiplier=facts.sgm_noise_multiplier, zero_terminal_snr=facts.zero_terminal_snr,
        img2img_extra_noise=facts.img2img_extra_noise if facts.noises_a_latent else 0.0)
    for sampler in dict.fromkeys(samplers):
        conflicts += rf_setting_conflicts(sigma_churn=facts.sigma_churn.get(sampler, 0.0), sampler_name=sampler)
    problems += [PREFIX + conflict for conflict in dict.fromkeys(conflicts)]
    return problems


def rf_schedule_without_rf(schedulers: Iterable[str | None]) -> str | None:
    """The message for the RF schedule picked while the generation does not sample as rectified flow."""
    if any(is_rf_schedule(name) for name in schedulers):
        return (PREFIX + f"the '{RF_SCHEDULER_LABEL}' schedule needs rectified-flow sampling: set Uncond Lab's "
                         f"Prediction to 'Rectified flow' (or use a checkpoint that declares flow), or pick "
                         f"another schedule type.")
    return None
