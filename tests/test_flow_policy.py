"""The RF sampler policy: every WebUI sampler label has a verdict, refusals name what works, settings conflicts.

The numerical backing of the verdicts (ODE samplers converge, VE-noise samplers do not) is in
test_flow_sampling.py; the ancestral step's algebra is checked here.
"""
import pytest

from lib_ext.flow import (
    FLOW_MODEL_SAMPLING,
    KNOWN_SAMPLERS,
    NO_CHURN,
    REFUSE,
    RF_EULER_ANCESTRAL,
    RUN,
    SUBSTITUTE,
    RfSamplerError,
    require_rf_sampler,
    rf_ancestral_step,
    rf_refusal_message,
    rf_sampler_policy,
    rf_schedule_problem,
    rf_setting_conflicts,
    rf_working_samplers,
)

# Typed from the WebUI sources, so that a label missing from the policy shows up here.
A1111_LABELS = [  # A1111 1.10.1 modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py, sd_samplers_lcm.py
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
]
REFORGE_EXTRA_LABELS = [  # reForge main: additional_samplers + modules_forge/forge_alter_samplers.py
    "Euler A2", "Euler Dy", "Euler SMEA Dy", "Euler Negative", "Euler Negative Dy",
    "DPM++ SDE Classic", "ER SDE", "Kohaku_LoNyu_Yog", "Euler CFG++", "Euler Ancestral CFG++",
    "DPM++ 2S Ancestral CFG++", "DPM++ 2M CFG++", "DPM++ SDE CFG++", "DPM++ 3M SDE CFG++", "Euler DY CFG++",
    "Euler SMEA DY CFG++", "Euler A DY CFG++", "DPM++ 2M DY CFG++", "RES Multistep", "RES Multistep CFG++",
    "RES Multistep Ancestral", "RES Multistep Ancestral CFG++", "Gradient Estimation", "Gradient Estimation CFG++",
    "SEEDS 2 DP", "SEEDS 3 DP", "SA-Solver", "SA-Solver-Pece", "DPM++ 2M DY", "DPM++ 3M DY", "DPM++ 3M SDE DY",
    "DDPM", "HeunPP2", "IPNDM", "IPNDM_V", "DEIS", "RES Solver", "ODE (Bosh3)", "ODE (Fehlberg2)",
    "ODE (Adaptive Heun)", "ODE (Dopri5)", "ODE Custom", "Euler A Turbo", "DPM++ 2M Turbo", "DPM++ 2M SDE Turbo",
    "Euler Comfy", "Euler A Comfy", "Euler A Comfy RF", "Heun Comfy", "DPM++ 2S Ancestral Comfy",
    "DPM++ 2S Ancestral Comfy RF", "DPM++ SDE Comfy", "DPM++ 2M Comfy", "DPM++ 2M SDE Comfy", "DPM++ 3M SDE Comfy",
    "DPM++ 2S Ancestral CFG++ Dyn", "DPM++ 2S Ancestral CFG++ Intern", "Custom Sampler",
]


@pytest.mark.parametrize("label", A1111_LABELS + REFORGE_EXTRA_LABELS)
def test_every_webui_label_has_a_reasoned_verdict(label):
    verdict = rf_sampler_policy(label)
    assert verdict.sampler == label
    assert verdict.action in (RUN, SUBSTITUTE, REFUSE)
    assert verdict.reason and "not a sampler" not in verdict.reason


def test_the_policy_lists_exactly_the_webui_labels():
    assert sorted(KNOWN_SAMPLERS) == sorted(A1111_LABELS + REFORGE_EXTRA_LABELS)


@pytest.mark.parametrize("label", ["Euler", "Heun", "LMS", "DPM2", "DPM++ 2M"])
def test_exact_ode_samplers_run(label):
    assert rf_sampler_policy(label).action == RUN


@pytest.mark.parametrize("label", ["Euler", "Heun", "DPM2", "Euler Comfy", "Heun Comfy", "HeunPP2"])
def test_churn_capable_samplers_require_no_churn(label):
    assert NO_CHURN in rf_sampler_policy(label).requires


def test_lms_and_dpmpp_2m_have_no_churn_to_worry_about():
    assert rf_sampler_policy("LMS").requires == () and rf_sampler_policy("DPM++ 2M").requires == ()


@pytest.mark.parametrize("label", ["Euler a", "Euler A Comfy"])
def test_euler_a_runs_as_rf_euler_a(label):
    verdict = rf_sampler_policy(label)
    assert verdict.action == SUBSTITUTE and verdict.substitute == RF_EULER_ANCESTRAL and verdict.works


@pytest.mark.parametrize("label", ["DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM", "DPM2 a", "DPM++ 2S a",
                                   "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Restart",
                                   "DPM fast", "DPM adaptive", "Euler A2", "Euler Dy", "Euler A Turbo"])
def test_ve_noise_and_timestep_samplers_are_refused(label):
    assert rf_sampler_policy(label).action == REFUSE


def test_comfy_backed_samplers_depend_on_the_flow_model_sampling_patch():
    for label in ("DPM++ SDE Comfy", "Euler A Comfy RF", "DPM++ 2M Comfy", "ER SDE"):
        verdict = rf_sampler_policy(label)
        assert verdict.action == RUN and FLOW_MODEL_SAMPLING in verdict.requires
    for label in ("Euler", "DPM++ 2M", "LMS"):  # k-diffusion via our denoiser: no such dependency
        assert FLOW_MODEL_SAMPLING not in rf_sampler_policy(label).requires


def test_lookup_is_case_insensitive_and_knows_aliases():
    assert rf_sampler_policy("euler A").sampler == "Euler a"
    assert rf_sampler_policy("k_euler_a").action == SUBSTITUTE
    assert rf_sampler_policy(" k_dpmpp_2m ").sampler == "DPM++ 2M"
    assert rf_sampler_policy("ddim").action == REFUSE


def test_a_relabelled_sampler_is_known_by_its_own_aliases():
    # sd-dynamic-thresholding renames the sampler in process_batch and keeps its SamplerData's aliases.
    verdict = rf_sampler_policy("Euler a_dynthres1", ["k_euler_a", "k_euler_ancestral"])
    assert (verdict.sampler, verdict.action) == ("Euler a", SUBSTITUTE)
    assert rf_sampler_policy("Euler_dynthres2", ["k_euler"]).action == RUN
    assert rf_sampler_policy("DPM++ 2M", ["k_euler_a"]).sampler == "DPM++ 2M"  # the label first
    assert rf_sampler_policy("Mystery_dynthres3", ["mystery"]).action == REFUSE


def test_unknown_samplers_are_refused():
    verdict = rf_sampler_policy("Euler Supreme 9000")
    assert verdict.action == REFUSE and verdict.sampler == "Euler Supreme 9000" and "not a sampler" in verdict.reason


def test_refusal_message_names_the_sampler_the_reason_and_what_works():
    message = rf_refusal_message("DPM++ 2M SDE")
    assert "'DPM++ 2M SDE'" in message and "variance-exploding" in message
    for label in ("Euler", "Heun", "LMS", "DPM2", "DPM++ 2M", "Euler a"):
        assert label in message


def test_refusal_message_lists_only_what_this_webui_offers():
    message = rf_refusal_message("UniPC", available=A1111_LABELS)
    works = message.split("Samplers that work in RF mode: ")[1]
    assert "Euler Comfy" not in works and "ER SDE" not in works
    assert works.startswith("Euler, Heun, LMS, DPM2, DPM++ 2M, Euler a")


def test_working_samplers_for_a1111():
    assert rf_working_samplers(A1111_LABELS) == ["Euler", "Heun", "LMS", "DPM2", "DPM++ 2M", "Euler a"]


def test_require_rf_sampler_raises_with_the_message():
    with pytest.raises(RfSamplerError, match="DDIM.*Samplers that work in RF mode: Euler"):
        require_rf_sampler("DDIM", available=A1111_LABELS)
    assert require_rf_sampler("Euler a").substitute == RF_EULER_ANCESTRAL
    assert isinstance(RfSamplerError("x"), ValueError)


# --- settings that do not fit RF --------------------------------------------------------------------------

def test_no_conflicts_by_default():
    assert rf_setting_conflicts() == []
    assert rf_setting_conflicts(sigma_churn=0.0, sampler_name="Euler") == []


def test_each_conflict_is_reported():
    conflicts = rf_setting_conflicts(sgm_noise_multiplier=True, zero_terminal_snr=True, img2img_extra_noise=0.2,
                                     sigma_churn=0.5, sampler_name="Heun")
    assert len(conflicts) == 4
    assert "SGM noise multiplier" in conflicts[0]
    assert "Zero Terminal SNR" in conflicts[1]
    assert "Extra noise" in conflicts[2] and "0.2" in conflicts[2]
    assert "Sigma churn" in conflicts[3] and "Heun" in conflicts[3]


def test_churn_matters_only_for_samplers_that_use_it():
    assert rf_setting_conflicts(sigma_churn=0.5, sampler_name="LMS") == []
    assert rf_setting_conflicts(sigma_churn=0.5) == []


# --- the RF ancestral step's algebra ---------------------------------------------------------------------

@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.9), (1.0, 0.3), (0.8, 0.5), (0.2, 0.01), (0.5, 0.49)])
@pytest.mark.parametrize("eta", [0.0, 0.25, 0.5, 1.0])
def test_ancestral_step_preserves_the_flow_marginal_given_the_true_x0(sigma, sigma_next, eta):
    # x = (1-σ)·x0 + σ·n; the step gives x' = scale·(r·x + (1-r)·x0) + renoise·z with r = σ_down/σ.
    # Coefficient of x0 must be 1 - σ_next, the noise variance σ_next² (n and z independent).
    step = rf_ancestral_step(sigma, sigma_next, eta)
    r = step.sigma_down / sigma
    x0_coefficient = step.data_scale * (r * (1 - sigma) + (1 - r))
    noise_variance = (step.data_scale * r * sigma) ** 2 + step.renoise ** 2
    assert x0_coefficient == pytest.approx(1 - sigma_next, rel=1e-12)
    assert noise_variance == pytest.approx(sigma_next ** 2, rel=1e-12)
    assert 0 <= step.sigma_down <= sigma_next


def test_ancestral_step_endpoints_of_eta():
    assert rf_ancestral_step(0.8, 0.5, 0.0) == (0.5, 1.0, 0.0)                  # plain Euler
    assert rf_ancestral_step(0.8, 0.5, 1.0).sigma_down == pytest.approx(0.5 ** 2 / 0.8)
    # by hand, σ=0.8 → 0.5, η=1: σ_down = 0.3125, scale = 0.5/0.6875, renoise² = 0.25 - (0.3125·scale)²
    step = rf_ancestral_step(0.8, 0.5, 1.0)
    assert step.data_scale == pytest.approx(0.5 / 0.6875)
    assert step.renoise ** 2 == pytest.approx(0.25 - (0.3125 * 0.5 / 0.6875) ** 2)


def test_ancestral_step_repeated_sigma_is_a_no_op():
    # regression: σ = σ_next = 1 would divide 0 by 0 in the data scale
    assert rf_ancestral_step(1.0, 1.0, 1.0) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize("args", [(0.5, 0.6, 1.0), (1.2, 0.5, 1.0), (0.5, 0.0, 1.0), (0.5, 0.2, 1.5),
                                  (0.5, 0.2, -0.1)])
def test_ancestral_step_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        rf_ancestral_step(*args)


def test_refusal_message_when_nothing_offered_works():
    message = rf_refusal_message("DDIM", available=["DDIM", "PLMS"])
    assert "none of this WebUI's samplers" in message and "Euler a" not in message


# --- schedule types -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["Align Your Steps", "align your steps 32", "Align Your Steps Custom",
                                   "Cosine-exponential Blend"])
def test_schedules_that_ignore_the_flow_table_are_named(label):
    problem = rf_schedule_problem(label)
    assert problem is not None and "does not fit a rectified-flow model" in problem


@pytest.mark.parametrize("label", ["Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple",
                                   "Normal", "DDIM", "Beta", "KL Optimal", "Turbo"])
def test_table_driven_schedules_pass(label):
    assert rf_schedule_problem(label) is None
