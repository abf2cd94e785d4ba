"""RF preflight: the decision (setting vs checkpoint metadata) and the refusals, from hand-written WebUI facts."""
import pytest

from lib_ext.flow import (RF_SCHEDULER_LABEL, GenerationFacts, is_rf_schedule, pass_value, resolve_rf, rf_problems,
                          rf_schedule_without_rf)

A1111_SAMPLERS = ("DPM++ 2M", "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM++ 2M SDE", "DDIM", "UniPC")


def facts(**values) -> GenerationFacts:
    return GenerationFacts(**{"sampler": "Euler", "available_samplers": A1111_SAMPLERS, **values})


@pytest.mark.parametrize("choice, metadata, expected", [
    (True, None, (True, "setting")),
    (False, {"modelspec.prediction_type": "flow"}, (False, "setting")),  # an explicit "off" wins
    (None, {"modelspec.prediction_type": "flow"}, (True, "metadata")),
    (None, {"modelspec.prediction_type": "epsilon"}, (False, "metadata")),
    (None, {"modelspec.prediction_type": "v"}, (False, "metadata")),
    (None, {}, (False, "metadata")),
    (None, None, (False, "metadata")),
])
def test_resolve_rf(choice, metadata, expected):
    assert resolve_rf(choice, metadata) == expected


def test_an_sd3_checkpoint_keeps_its_own_flow_sampling_by_default():
    # Regression: an SD3 file declaring flow must not turn "Model default" into a refusal.
    assert resolve_rf(None, {"modelspec.prediction_type": "flow"}, is_sd3=True) == (False, "sd3")
    assert resolve_rf(True, None, is_sd3=True) == (True, "setting")  # explicit: refused by rf_problems


def test_a_plain_setup_has_no_problem():
    assert rf_problems(facts(sampler="Euler", scheduler=RF_SCHEDULER_LABEL, hires_sampler="Heun")) == []
    assert rf_problems(facts(sampler="Euler a", scheduler="Karras", noises_a_latent=True)) == []


def test_refused_sampler_names_the_working_ones_of_this_webui():
    (message,) = rf_problems(facts(sampler="DPM++ 2M SDE"))
    assert message.startswith("Uncond Lab RF: sampler 'DPM++ 2M SDE' cannot sample")
    assert "Samplers that work in RF mode: Euler, Heun, LMS, DPM2, DPM++ 2M, Euler a." in message
    assert "DDIM" not in message.split("work in RF mode")[1]


def test_the_hires_sampler_is_checked_once():
    assert len(rf_problems(facts(sampler="Euler", hires_sampler="DDIM"))) == 1
    assert len(rf_problems(facts(sampler="DDIM", hires_sampler="DDIM"))) == 1


def test_schedule_refusals_for_both_passes():
    problems = rf_problems(facts(scheduler="Align Your Steps", hires_scheduler="Cosine-exponential Blend"))
    assert len(problems) == 2 and "Align Your Steps" in problems[0] and "Cosine-exponential" in problems[1]


def test_extra_noise_only_matters_where_a_latent_is_noised():
    assert rf_problems(facts(img2img_extra_noise=0.2, noises_a_latent=False)) == []
    (message,) = rf_problems(facts(img2img_extra_noise=0.2, noises_a_latent=True))
    assert "'Extra noise' (0.2)" in message


def test_churn_conflicts_only_with_samplers_that_churn():
    assert rf_problems(facts(sampler="LMS", sigma_churn={"LMS": 0.5})) == []
    (message,) = rf_problems(facts(sampler="Euler", sigma_churn={"Euler": 0.5}))
    assert "'Sigma churn' (0.5) makes Euler add VE noise" in message
    assert len(rf_problems(facts(sampler="Euler", hires_sampler="Heun", sigma_churn={"Euler": 0.5, "Heun": 1}))) == 2
    # Each sampler with its own churn (reForge's Comfy samplers read their own options).
    assert rf_problems(facts(sampler="Euler Comfy", hires_sampler="Euler", sigma_churn={"Euler": 0.5})) != []
    assert rf_problems(facts(sampler="Euler Comfy", sigma_churn={"Euler": 0.5})) == []


def test_every_conflict_is_reported_with_the_prefix():
    problems = rf_problems(facts(sgm_noise_multiplier=True, zero_terminal_snr=True, refiner="xl-refiner",
                                 hires_checkpoint="other", competing_model_sampling="Advanced Model Sampling"))
    assert len(problems) == 5 and all(p.startswith("Uncond Lab RF: ") for p in problems)
    assert "Advanced Model Sampling is enabled" in problems[0]
    assert "refiner ('xl-refiner')" in problems[1] and "'other'" in problems[2]
    assert any("SGM noise multiplier" in p for p in problems) and any("Zero Terminal SNR" in p for p in problems)


def test_sd3_is_refused_alone_and_never_touched():
    (message,) = rf_problems(facts(is_sd3=True, sampler="DDIM", sgm_noise_multiplier=True))
    assert "SD3" in message and "never changes an SD3 model" in message


def test_rf_schedule_names():
    assert is_rf_schedule("Rectified Flow") and is_rf_schedule("rectified_flow") and is_rf_schedule(" RECTIFIED FLOW")
    assert not is_rf_schedule("Automatic") and not is_rf_schedule(None)
    assert rf_schedule_without_rf(["Automatic", None]) is None
    assert "'Rectified Flow' schedule needs rectified-flow sampling" in rf_schedule_without_rf([None, "Rectified Flow"])


@pytest.mark.parametrize("value", [None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint"])
def test_same_as_first_pass_is_none(value):
    assert pass_value(value) is None
    assert pass_value("Heun") == "Heun"
