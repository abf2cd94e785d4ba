"""Rectified-flow sampling for SDXL-architecture models, free of WebUI imports."""
from lib_ext.flow.schedule import (DEFAULT_TIMESTEPS, check_flow_sigmas, flow_percent_to_sigma, flow_schedule,
                                   flow_scheduler, flow_sigmas, time_shift)
from lib_ext.flow.denoiser import (DEFAULT_MULTIPLIER, FlowDenoiser, denoised_from_velocity, flow_noise,
                                   flow_noise_as_ve_noise, velocity_from_denoised)
