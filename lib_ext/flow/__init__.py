"""Rectified-flow sampling for SDXL-architecture models, free of WebUI imports.

One concept per module: `schedule` (shift, sigma table, percent_to_sigma, the RF schedule), `denoiser` (the
k-diffusion flow denoiser, flow noising), `ancestral` (Euler a for flow), `policy` (which WebUI samplers and
schedule types may run), `metadata` (what a checkpoint declares about its objective).
"""
from lib_ext.flow.ancestral import (RfAncestralStep, rf_ancestral_step, sample_euler_ancestral_rf,
                                   seeded_euler_ancestral_rf)
from lib_ext.flow.denoiser import (DEFAULT_MULTIPLIER, FlowDenoiser, denoised_from_velocity, flow_noise,
                                   flow_noise_as_ve_noise, velocity_from_denoised)
from lib_ext.flow.metadata import declared_prediction, declares_flow
from lib_ext.flow.policy import (FLOW_MODEL_SAMPLING, KNOWN_SAMPLERS, NO_CHURN, REFUSE, RF_EULER_ANCESTRAL, RUN,
                                 SUBSTITUTE, RfSamplerError, SamplerVerdict, require_rf_sampler, rf_refusal_message,
                                 rf_sampler_policy, rf_schedule_problem, rf_setting_conflicts, rf_working_samplers)
from lib_ext.flow.preflight import (RF_SCHEDULER_LABEL, RF_SCHEDULER_NAME, GenerationFacts, RfPlan, is_rf_schedule,
                                    pass_value, resolve_rf, rf_problems, rf_schedule_without_rf)
from lib_ext.flow.schedule import (DEFAULT_TIMESTEPS, check_flow_sigmas, checked_flow_sigmas, flow_percent_to_sigma,
                                   flow_schedule, flow_scheduler, flow_sigmas, time_shift)

__all__ = [
    "DEFAULT_MULTIPLIER", "DEFAULT_TIMESTEPS", "FLOW_MODEL_SAMPLING", "KNOWN_SAMPLERS", "NO_CHURN", "REFUSE",
    "RF_EULER_ANCESTRAL", "RF_SCHEDULER_LABEL", "RF_SCHEDULER_NAME", "RUN", "SUBSTITUTE", "FlowDenoiser",
    "GenerationFacts", "RfAncestralStep", "RfPlan", "RfSamplerError", "SamplerVerdict", "is_rf_schedule",
    "pass_value", "resolve_rf", "rf_problems", "rf_schedule_without_rf",
    "check_flow_sigmas", "checked_flow_sigmas", "declared_prediction", "declares_flow", "denoised_from_velocity", "flow_noise",
    "flow_noise_as_ve_noise", "flow_percent_to_sigma", "flow_schedule", "flow_scheduler", "flow_sigmas",
    "require_rf_sampler", "rf_ancestral_step", "rf_refusal_message", "rf_sampler_policy", "rf_schedule_problem",
    "rf_setting_conflicts", "rf_working_samplers", "sample_euler_ancestral_rf", "seeded_euler_ancestral_rf",
    "time_shift",
    "velocity_from_denoised",
]
