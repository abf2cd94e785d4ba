"""Sampler and scheduler names between ComfyUI (comfy/samplers.py: KSAMPLER_NAMES, SAMPLER_NAMES,
SCHEDULER_HANDLERS) and A1111 1.10 (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py,
sd_samplers_lcm.py, sd_schedulers.py), mapped by what they compute; a pair that is not the same computation carries
a note saying how it differs.

Checked against both sources (ComfyUI v0.8.0, A1111 1.10.1):
- k-diffusion samplers are the same functions in both (comfy/k_diffusion/sampling.py); DPM2 and DPM2 a drop the
  next-to-last sigma in both (ComfyUI `DISCARD_PENULTIMATE_SIGMA_SAMPLERS`, A1111 `discard_next_to_last_sigma`),
  A1111's DPM++ 3M SDE drops it too, ComfyUI's does not.
- ComfyUI's `ddim` sampler is Euler (`sampler_object`: `ksampler("euler", ...)`), so it is imported as Euler; its
  DDIM steps are the `ddim_uniform` scheduler = A1111's "DDIM" schedule (the same loop over the sigma table).
- Schedulers: `simple` = "Simple", `sgm_uniform` = "SGM Uniform", `karras` = "Karras", `exponential` =
  "Exponential" (same formulas); `normal` = "Normal" (linspace of timesteps from sigma_max's to sigma_min's, then
  0; A1111's "Uniform", k-diffusion's `get_sigmas`, is the same sequence). `beta` and `kl_optimal` differ (A1111's
  Beta is linear in sigma over its own alpha/beta options, ComfyUI's looks the beta quantiles up in the sigma table;
  A1111's KL Optimal has no final 0 and spaces n+1 points, ComfyUI's n then 0).
- Ancestral and SDE samplers draw their per-step noise from different generators in the two programs (ComfyUI
  seeds `default_noise_sampler` / `BrownianTreeNoiseSampler` from the seed): same sampler, not the same pixels.
"""
from __future__ import annotations

STOCHASTIC_NOTE = ("draws its per-step noise from another generator in ComfyUI than in A1111: same sampler, not "
                   "the same pixels")

# ComfyUI sampler → (A1111 label, note or None)
COMFY_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "euler": ("Euler", None),
    "ddim": ("Euler", None),  # ComfyUI's ddim is euler (comfy/samplers.py sampler_object)
    "heun": ("Heun", None),
    "dpm_2": ("DPM2", None),
    "lms": ("LMS", None),
    "dpmpp_2m": ("DPM++ 2M", None),
    "dpm_fast": ("DPM fast", None),
    "dpm_adaptive": ("DPM adaptive", None),
    "euler_ancestral": ("Euler a", STOCHASTIC_NOTE),
    "dpm_2_ancestral": ("DPM2 a", STOCHASTIC_NOTE),
    "dpmpp_2s_ancestral": ("DPM++ 2S a", STOCHASTIC_NOTE),
    "dpmpp_sde": ("DPM++ SDE", STOCHASTIC_NOTE),
    "dpmpp_sde_gpu": ("DPM++ SDE", STOCHASTIC_NOTE),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", STOCHASTIC_NOTE),
    "dpmpp_2m_sde_gpu": ("DPM++ 2M SDE", STOCHASTIC_NOTE),
    "dpmpp_2m_sde_heun": ("DPM++ 2M SDE Heun", STOCHASTIC_NOTE),
    "dpmpp_2m_sde_heun_gpu": ("DPM++ 2M SDE Heun", STOCHASTIC_NOTE),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", STOCHASTIC_NOTE + "; A1111's also drops the next-to-last sigma"),
    "dpmpp_3m_sde_gpu": ("DPM++ 3M SDE", STOCHASTIC_NOTE + "; A1111's also drops the next-to-last sigma"),
    "lcm": ("LCM", "A1111's LCM samples on LCM's 50-step timestep table (ComfyUI: ModelSamplingDiscrete 'lcm'); "
                   + STOCHASTIC_NOTE),
    "uni_pc": ("UniPC", "A1111's UniPC is its own timestep sampler (its own steps, order and variant options), "
                        "not ComfyUI's uni_pc on the scheduler's sigmas"),
    "uni_pc_bh2": ("UniPC", "A1111's UniPC is its own timestep sampler (bh1 by default), not ComfyUI's uni_pc_bh2"),
}

# A1111 label → (ComfyUI sampler, note or None). DDIM is A1111's own timestep sampler: ComfyUI's nearest is
# ddim (= euler) on ddim_uniform, which export_scheduler picks for it.
WEBUI_SAMPLERS: dict[str, tuple[str, str | None]] = {
    label: (comfy, note) for comfy, (label, note) in COMFY_SAMPLERS.items()
    if not comfy.endswith("_gpu") and comfy not in ("ddim", "uni_pc_bh2")
}
WEBUI_SAMPLERS["DDIM"] = ("ddim", "A1111's DDIM is its own timestep sampler (eta and steps from its own options); "
                                  "ComfyUI's ddim is Euler on the ddim_uniform steps: close, not identical")

# ComfyUI scheduler → (A1111 "Schedule type" label, note or None)
COMFY_SCHEDULERS: dict[str, tuple[str, str | None]] = {
    "normal": ("Normal", None),
    "simple": ("Simple", None),
    "sgm_uniform": ("SGM Uniform", None),
    "karras": ("Karras", None),
    "exponential": ("Exponential", None),
    "ddim_uniform": ("DDIM", None),
    "beta": ("Beta", "A1111's Beta schedule is linear in sigma between its own alpha/beta options, ComfyUI's picks "
                     "beta quantiles from the sigma table: other steps"),
    "kl_optimal": ("KL Optimal", "A1111's KL Optimal spaces n + 1 sigmas down to sigma_min with no final 0, "
                                 "ComfyUI's n, then 0: other steps"),
}
WEBUI_SCHEDULERS: dict[str, tuple[str, str | None]] = {label: (comfy, note)
                                                       for comfy, (label, note) in COMFY_SCHEDULERS.items()}
WEBUI_SCHEDULERS["Uniform"] = ("normal", None)  # k-diffusion get_sigmas = ComfyUI normal_scheduler

# A1111's "Automatic": the sampler's own default (sd_samplers_kdiffusion.samplers_k_diffusion options), else
# k-diffusion's get_sigmas ("Uniform" = ComfyUI normal).
AUTOMATIC_SCHEDULERS = {"DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2S a": "karras", "DPM2": "karras",
                        "DPM2 a": "karras", "Restart": "karras", "DPM++ 2M SDE": "exponential",
                        "DPM++ 2M SDE Heun": "exponential", "DPM++ 3M SDE": "exponential", "DDIM": "ddim_uniform"}
# Scheduler suffixes of A1111's sampler names before 1.9 ("DPM++ 2M Karras"), as get_sampler_and_scheduler reads them.
_SCHEDULER_SUFFIXES = ("Karras", "Exponential", "SGM Uniform", "Uniform", "Polyexponential", "KL Optimal",
                       "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
RF_SCHEDULER = "Rectified Flow"  # Uncond Lab's (lib_ext.flow.preflight.RF_SCHEDULER_LABEL)


def _by_label(table: dict, name: str):
    return next((value for label, value in table.items() if label.lower() == name.strip().lower()), None)


def _import_name(table: dict, kind: str, name: str) -> tuple[str | None, str | None]:
    found = table.get(name)
    if found is None:
        return None, f"{kind} {name!r} has no A1111 equivalent; {kind} left to the WebUI's default"
    label, note = found
    return label, None if note is None else f"{kind} {name} → {label}: {note}"


def import_sampler(name: str) -> tuple[str | None, str | None]:
    """ComfyUI sampler_name → (A1111 label or None where A1111 has none, note)."""
    return _import_name(COMFY_SAMPLERS, "sampler", name)


def import_scheduler(name: str) -> tuple[str | None, str | None]:
    """ComfyUI scheduler → (A1111 schedule type or None, note)."""
    return _import_name(COMFY_SCHEDULERS, "scheduler", name)


def split_sampler_name(sampler: str, scheduler: str | None) -> tuple[str, str | None]:
    """An A1111 sampler name from before 1.9 with the schedule in it ("DPM++ 2M Karras") → (sampler, schedule)."""
    for suffix in _SCHEDULER_SUFFIXES:
        if sampler.endswith(" " + suffix) and _by_label(WEBUI_SAMPLERS, sampler[:-len(suffix) - 1]) is not None:
            return sampler[:-len(suffix) - 1], suffix
    return sampler, scheduler


def export_sampler(label: str) -> tuple[str, str | None]:
    """A1111 sampler label → (ComfyUI sampler_name, note). A WebUI-only sampler becomes euler, with a note."""
    found = _by_label(WEBUI_SAMPLERS, label)
    if found is None:
        return "euler", f"sampler {label!r} exists only in the WebUI; the graph uses euler"
    comfy, note = found
    return comfy, None if note is None else f"sampler {label} → {comfy}: {note}"


def export_scheduler(label: str | None, sampler: str, steps: int) -> tuple[str, str | None]:
    """A1111 "Schedule type" (None or "Automatic": the sampler's default) → (ComfyUI scheduler, note)."""
    if label is None or label.strip().lower() == "automatic":
        known = _by_label(WEBUI_SAMPLERS, sampler) is not None or sampler in AUTOMATIC_SCHEDULERS
        comfy = AUTOMATIC_SCHEDULERS.get(sampler, "normal")
        return comfy, None if known else f"schedule Automatic of the WebUI-only sampler {sampler!r}: normal used"
    if label.strip().lower() == RF_SCHEDULER.lower():
        note = None if 1000 % max(steps, 1) == 0 else (
            f"schedule {RF_SCHEDULER} → simple: the same steps when 1000 is a multiple of the step count; with "
            f"{steps} steps ComfyUI's simple rounds each step's t down to its 1/1000 table")
        return "simple", note
    found = _by_label(WEBUI_SCHEDULERS, label)
    if found is None:
        return "normal", f"schedule {label!r} has no ComfyUI scheduler; the graph uses normal"
    comfy, note = found
    return comfy, None if note is None else f"schedule {label} → {comfy}: {note}"
