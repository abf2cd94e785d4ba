"""Which WebUI samplers may sample a rectified-flow model, as data plus one lookup.

The criterion: with the flow denoiser D = x - sigma·v, k-diffusion's derivative (x - D)/sigma is the flow
velocity v exactly, so a sampler that only integrates dx/dsigma = (x - D)/sigma solves the flow ODE and lands on
the model's distribution up to step-size error (tests/test_flow_sampling.py checks Euler, Heun, LMS, DPM2 and
DPM++ 2M on an analytic flow). A sampler that adds noise as x + sigma_up·z, or renoises to sigma with
`denoised + sigma·noise`, assumes the variance-exploding path x = x0 + sigma·n; on a flow path that noise is
wrong (the tests show it for Euler a, DPM2 a, DPM++ 2S a, DPM++ 2M SDE), so such samplers run through an RF
variant or are refused. DDIM/PLMS/UniPC/LCM use their own model wrappers over `alphas_cumprod` and never see the
flow denoiser at all.

Labels are those of A1111 1.10.1 (modules/sd_samplers_kdiffusion.py `samplers_k_diffusion`,
sd_samplers_timesteps.py, sd_samplers_lcm.py) and reForge main (the same files, plus `additional_samplers`
and modules_forge/forge_alter_samplers.py `samplers_data_alter`). A label not listed is refused.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

RUN = "run"
SUBSTITUTE = "substitute"
REFUSE = "refuse"

# What a "run" verdict relies on, for the host to check or enforce.
NO_CHURN = "no_churn"
"""Sigma churn must be 0: churn adds VE noise (x + eps·sqrt(sigma_hat² - sigma²)) and sigma_hat may pass 1.
A1111: option `s_churn` (p.s_churn); reForge Comfy samplers: their own options, e.g. `euler_og_s_churn`."""
FLOW_MODEL_SAMPLING = "flow_model_sampling"
"""reForge's ComfyUI-backed samplers take their sigmas from `forge_objects.unet.model.model_sampling` (not from
`p.sampler_noise_scheduler_override`) and, for the SDE ones, their noise from CONST-aware half-logSNR helpers
(ldm_patched/k_diffusion/sampling.py:437-463) reached through `model.inner_model.model_patcher`. They are RF-correct
only while that UNet carries a flow + CONST `model_sampling` object patch and the denoiser's `model_patcher`
returns that same UNet."""

RF_EULER_ANCESTRAL = "RF Euler a"  # lib_ext.flow.ancestral.sample_euler_ancestral_rf


@dataclass(frozen=True)
class SamplerVerdict:
    """What RF mode does with one sampler: run it, run `substitute` in its place, or refuse with `reason`."""
    sampler: str
    action: str
    reason: str
    substitute: str | None = None
    requires: tuple[str, ...] = ()

    @property
    def works(self) -> bool:
        return self.action != REFUSE


def _run(reason: str, *requires: str) -> tuple:
    return RUN, reason, None, requires


def _substitute(reason: str) -> tuple:
    return SUBSTITUTE, reason, RF_EULER_ANCESTRAL, ()


def _refuse(reason: str) -> tuple:
    return REFUSE, reason, None, ()


_ODE = "integrates dx/dsigma = (x - D)/sigma only, which for the flow denoiser is the flow ODE"
_VE_ANCESTRAL = "adds variance-exploding ancestral noise (x + sigma_up·z), wrong on a flow path"
_VE_SDE = "adds variance-exploding SDE noise, wrong on a flow path"
_FORCED_CHURN = "forces sigma churn (gamma >= sqrt(2) - 1), i.e. variance-exploding noise on every step"
_VE_CFGPP = ("CFG++ re-noises with the uncond prediction in variance-exploding form; its flow form differs by "
             "sigma_next·(D_cfg - D_uncond), not derived here")
_COMFY_CONST = "ComfyUI SDE solver whose noise uses CONST-aware half-logSNR, RF-correct with a flow model_sampling"

# label -> (action, reason, substitute, requires)
_POLICY: dict[str, tuple] = {
    # --- A1111 1.10 k-diffusion samplers (also reForge's default "A1111" backend, k_diff/) ---
    "Euler": _run(_ODE, NO_CHURN),
    "Heun": _run(_ODE + " (second order)", NO_CHURN),
    "LMS": _run(_ODE + " (linear multistep in sigma)"),
    "DPM2": _run(_ODE + " (midpoint in log sigma)", NO_CHURN),
    "DPM++ 2M": _run(_ODE + " (exponential integrator in -log sigma; the variation-of-constants formula holds "
                            "for any D, only the interpolation of D is in log sigma)"),
    "Euler a": _substitute("k-diffusion's Euler a " + _VE_ANCESTRAL + "; the RF ancestral step replaces it"),
    "DPM2 a": _refuse(_VE_ANCESTRAL),
    "DPM++ 2S a": _refuse(_VE_ANCESTRAL),
    "DPM++ SDE": _refuse(_VE_SDE),
    "DPM++ 2M SDE": _refuse(_VE_SDE),
    "DPM++ 2M SDE Heun": _refuse(_VE_SDE),
    "DPM++ 3M SDE": _refuse(_VE_SDE),
    "DPM fast": _refuse("DPM-Solver with the WebUI's ancestral eta (default 1) adds variance-exploding noise"),
    "DPM adaptive": _refuse("DPM-Solver with the WebUI's ancestral eta (default 1) adds variance-exploding noise"),
    "Restart": _refuse("restarts by adding variance-exploding noise x + z·sqrt(sigma_hi² - sigma_lo²)"),
    # --- timestep samplers and LCM: own wrappers over alphas_cumprod, the flow denoiser is bypassed ---
    "DDIM": _refuse("a timestep sampler over alphas_cumprod (VP), bypasses the flow denoiser"),
    "DDIM CFG++": _refuse("a timestep sampler over alphas_cumprod (VP), bypasses the flow denoiser"),
    "PLMS": _refuse("a timestep sampler over alphas_cumprod (VP), bypasses the flow denoiser"),
    "UniPC": _refuse("a timestep sampler over alphas_cumprod (VP), bypasses the flow denoiser"),
    "LCM": _refuse("uses its own eps denoiser and re-noises as denoised + sigma·z (variance-exploding)"),
    # --- reForge main: additional k-diffusion samplers ---
    "Euler A2": _refuse(_VE_ANCESTRAL),
    "Euler Dy": _refuse(_FORCED_CHURN),
    "Euler SMEA Dy": _refuse(_FORCED_CHURN),
    "Euler Negative": _refuse(_FORCED_CHURN + " and flips the sign of x"),
    "Euler Negative Dy": _refuse(_FORCED_CHURN + " and flips the sign of x"),
    # --- reForge main: ComfyUI-backed samplers (modules_forge/forge_alter_samplers.py) ---
    "Euler Comfy": _run(_ODE, NO_CHURN, FLOW_MODEL_SAMPLING),
    "Heun Comfy": _run(_ODE + " (second order)", NO_CHURN, FLOW_MODEL_SAMPLING),
    "HeunPP2": _run(_ODE + " (weights sum to 1)", NO_CHURN, FLOW_MODEL_SAMPLING),
    "DPM++ 2M Comfy": _run(_ODE + " (as DPM++ 2M)", FLOW_MODEL_SAMPLING),
    "DPM++ 2M Turbo": _run(_ODE + " (as DPM++ 2M, turbo timesteps from model_sampling)", FLOW_MODEL_SAMPLING),
    "IPNDM": _run(_ODE + " (multistep in sigma)", FLOW_MODEL_SAMPLING),
    "IPNDM_V": _run(_ODE + " (variable-step multistep in sigma)", FLOW_MODEL_SAMPLING),
    "DEIS": _run(_ODE + " (multistep in sigma)", FLOW_MODEL_SAMPLING),
    "RES Multistep": _run(_ODE + " (res_multistep with eta 0: exponential integrator in -log sigma)",
                          FLOW_MODEL_SAMPLING),
    "RES Solver": _run(_ODE + " (refined exponential solver, ita 0)", FLOW_MODEL_SAMPLING),
    "Gradient Estimation": _run(_ODE + " (Euler with a gradient-estimation correction)", FLOW_MODEL_SAMPLING),
    "ODE (Bosh3)": _run(_ODE + " (torchdiffeq)", FLOW_MODEL_SAMPLING),
    "ODE (Fehlberg2)": _run(_ODE + " (torchdiffeq)", FLOW_MODEL_SAMPLING),
    "ODE (Adaptive Heun)": _run(_ODE + " (torchdiffeq)", FLOW_MODEL_SAMPLING),
    "ODE (Dopri5)": _run(_ODE + " (torchdiffeq)", FLOW_MODEL_SAMPLING),
    "ODE Custom": _run(_ODE + " (torchdiffeq)", FLOW_MODEL_SAMPLING),
    "Euler A Comfy RF": _run("ComfyUI's RF ancestral step (sample_euler_ancestral_RF), the reference of ours",
                             FLOW_MODEL_SAMPLING),
    "DPM++ 2S Ancestral Comfy RF": _run("ComfyUI's RF ancestral DPM++ 2S (sample_dpmpp_2s_ancestral_RF): flow "
                                        "midpoint, then the RF renoise", FLOW_MODEL_SAMPLING),
    "DPM++ SDE Comfy": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "DPM++ 2M SDE Comfy": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "DPM++ 3M SDE Comfy": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "DPM++ 2M SDE Turbo": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "ER SDE": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "SEEDS 2 DP": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "SEEDS 3 DP": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "SA-Solver": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "SA-Solver-Pece": _run(_COMFY_CONST, FLOW_MODEL_SAMPLING),
    "Euler Ancestral CFG++": _run("ComfyUI Euler ancestral CFG++ with CONST-aware alpha and noise",
                                  FLOW_MODEL_SAMPLING),
    "Euler A Comfy": _substitute("ComfyUI's sample_euler_ancestral picks its RF branch only when the CFG denoiser "
                                 "has a CONST `model_sampling` (reForge's has none) and that branch reads eta "
                                 "before assigning it; otherwise it " + _VE_ANCESTRAL),
    "Euler A Turbo": _refuse("Euler ancestral on turbo timesteps: " + _VE_ANCESTRAL),
    "DPM++ 2S Ancestral Comfy": _refuse(_VE_ANCESTRAL),
    "DPM++ 2S Ancestral CFG++": _refuse(_VE_ANCESTRAL),
    "DPM++ 2S Ancestral CFG++ Dyn": _refuse(_VE_ANCESTRAL),
    "DPM++ 2S Ancestral CFG++ Intern": _refuse("dispatches to its RF variant only when the CFG denoiser has a CONST "
                                               "`model_sampling` (reForge's has none); otherwise " + _VE_ANCESTRAL),
    "DPM++ SDE Classic": _refuse(_VE_SDE),
    "DPM++ SDE CFG++": _refuse(_VE_SDE),
    "DPM++ 3M SDE CFG++": _refuse(_VE_SDE),
    "DPM++ 3M SDE DY": _refuse(_VE_SDE),
    "DPM++ 3M DY": _refuse("runs DPM++ 3M SDE DY: " + _VE_SDE),
    "DPM++ 2M DY": _refuse("adds variance-exploding noise (randn) in its dynamic step"),
    "Euler CFG++": _refuse(_VE_CFGPP),
    "DPM++ 2M CFG++": _refuse(_VE_CFGPP),
    "RES Multistep CFG++": _refuse(_VE_CFGPP),
    "Gradient Estimation CFG++": _refuse(_VE_CFGPP),
    "RES Multistep Ancestral": _refuse(_VE_ANCESTRAL),
    "RES Multistep Ancestral CFG++": _refuse(_VE_ANCESTRAL),
    "Euler DY CFG++": _refuse(_FORCED_CHURN),
    "Euler SMEA DY CFG++": _refuse(_FORCED_CHURN),
    "Euler A DY CFG++": _refuse(_VE_ANCESTRAL),
    "DPM++ 2M DY CFG++": _refuse("adds variance-exploding noise (randn) in its dynamic step"),
    "Kohaku_LoNyu_Yog": _refuse(_VE_ANCESTRAL),
    "DDPM": _refuse("a DDPM ancestral step written for VP/VE alphas (alpha_cumprod = 1/(sigma² + 1))"),
    "Custom Sampler": _refuse("a user-assembled sampler whose noise cannot be checked"),
}

# A1111/reForge sampler aliases (the third tuple entry of each sampler list) -> label.
_ALIASES = {
    "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun", "k_dpmpp_2s_a": "DPM++ 2S a", "k_dpmpp_3m_sde": "DPM++ 3M SDE",
    "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive",
    "restart": "Restart", "ddim": "DDIM", "ddim_cfgpp": "DDIM CFG++", "plms": "PLMS", "unipc": "UniPC",
    "k_lcm": "LCM", "k_euler_a2": "Euler A2", "k_euler_dy": "Euler Dy", "k_euler_smea_dy": "Euler SMEA Dy",
    "k_euler_negative": "Euler Negative", "k_euler_dy_negative": "Euler Negative Dy",
}
_LOOKUP = {**{label.lower(): label for label in _POLICY}, **{alias.lower(): label for alias, label in _ALIASES.items()}}

KNOWN_SAMPLERS: tuple[str, ...] = tuple(_POLICY)


def rf_sampler_policy(sampler_name: str, aliases: Iterable[str] = ()) -> SamplerVerdict:
    """The RF verdict for a WebUI sampler label or alias (case-insensitive); unknown samplers are refused.

    `aliases` are the sampler's own (its SamplerData's): they say what the sampler is when another extension has
    relabelled it, e.g. sd-dynamic-thresholding's "Euler a_dynthres1" keeps Euler a's aliases."""
    label = next((_LOOKUP[key] for key in (str(name).strip().lower() for name in (sampler_name, *aliases))
                  if key in _LOOKUP), None)
    if label is None:
        return SamplerVerdict(str(sampler_name), REFUSE, "not a sampler Uncond Lab has checked for rectified flow")
    action, reason, substitute, requires = _POLICY[label]
    return SamplerVerdict(label, action, reason, substitute, requires)


def rf_working_samplers(available: Iterable[str] | None = None) -> list[str]:
    """Labels that run in RF mode (directly or through a substitute), in table order, limited to `available`."""
    working = [label for label in _POLICY if rf_sampler_policy(label).works]
    if available is None:
        return working
    offered = {str(name).strip().lower() for name in available}
    return [label for label in working if label.lower() in offered]


class RfSamplerError(ValueError):
    """The chosen sampler cannot sample a rectified-flow model; the message names the ones that can."""


def rf_refusal_message(sampler_name: str, available: Iterable[str] | None = None) -> str:
    verdict = rf_sampler_policy(sampler_name)
    working = rf_working_samplers(available)
    works = ", ".join(working) or "none of this WebUI's samplers"
    note = " ('Euler a' runs as the RF ancestral step.)" if "Euler a" in working else ""
    return (f"Uncond Lab RF: sampler '{sampler_name}' cannot sample a rectified-flow model: {verdict.reason}. "
            f"Samplers that work in RF mode: {works}.{note}")


def require_rf_sampler(sampler_name: str, available: Iterable[str] | None = None) -> SamplerVerdict:
    """The verdict for a sampler that works in RF mode; raises `RfSamplerError` for one that does not."""
    verdict = rf_sampler_policy(sampler_name)
    if not verdict.works:
        raise RfSamplerError(rf_refusal_message(sampler_name, available))
    return verdict


def rf_setting_conflicts(*, sgm_noise_multiplier: bool = False, zero_terminal_snr: bool = False,
                         img2img_extra_noise: float = 0.0, sigma_churn: float = 0.0,
                         sampler_name: str | None = None) -> list[str]:
    """WebUI settings that would put VE noise or a VP schedule into an RF generation, one message each."""
    conflicts = []
    if sgm_noise_multiplier:
        conflicts.append("'SGM noise multiplier' scales the initial noise by sqrt(1 + sigma²), a VE rule; on a "
                         "flow model the initial noise is exactly the noise (sigma = 1). Turn it off.")
    if zero_terminal_snr:
        conflicts.append("Zero Terminal SNR rescales a DDPM alphas_cumprod schedule; a flow model has none "
                         "(its path already reaches pure noise at sigma = 1). Turn it off.")
    if img2img_extra_noise > 0:
        conflicts.append(f"img2img 'Extra noise' ({img2img_extra_noise:g}) adds noise as x + noise·sigma, a VE "
                         f"rule that is wrong on a flow path. Set it to 0.")
    if sigma_churn > 0 and sampler_name is not None and NO_CHURN in rf_sampler_policy(sampler_name).requires:
        conflicts.append(f"'Sigma churn' ({sigma_churn:g}) makes {rf_sampler_policy(sampler_name).sampler} add VE "
                         f"noise and step above sigma = 1. Set it to 0.")
    return conflicts


# --- schedule types ---------------------------------------------------------------------------------------
# With the flow denoiser as the sampler's model, every WebUI schedule that reads the model's table (Automatic,
# Uniform, SGM Uniform, Simple, Normal, DDIM, Turbo) or its sigma_min/sigma_max (Karras, Exponential, KL Optimal,
# Beta, ...) follows the shift and stays inside [0, 1]. These do not (found by running A1111 1.10.1's and
# reForge's sd_schedulers.py over a FlowDenoiser, shift 3, 10 steps):
_SCHEDULE_REFUSALS = {
    "Align Your Steps": "hard-coded SD/SDXL (VE) noise levels 14.6 ... 0.029, not rescaled monotonically to flow",
    "Align Your Steps Custom": "user-given VE noise levels (14.6 ... by default), outside the flow range [0, 1]",
    "Align Your Steps GITS": "hard-coded VE noise levels, not rescaled monotonically to flow",
    "Align Your Steps 11": "hard-coded VE noise levels, not rescaled monotonically to flow",
    "Align Your Steps 32": "hard-coded VE noise levels, not rescaled monotonically to flow",
    "Cosine-exponential Blend": "not monotone when sigma_max is 1 (it rises again before the end)",
}


def rf_schedule_problem(schedule_label: str) -> str | None:
    """Why a WebUI schedule type cannot drive an RF model, or None. Check the sigmas too: `check_flow_sigmas`
    catches what a label cannot (the 'Schedule max sigma' option, old Karras sigmas 0.1-10, new schedules)."""
    for label, reason in _SCHEDULE_REFUSALS.items():
        if label.lower() == str(schedule_label).strip().lower():
            return f"Uncond Lab RF: schedule type '{label}' does not fit a rectified-flow model: {reason}."
    return None
