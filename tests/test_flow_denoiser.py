"""The flow denoiser's algebra and its fit to the WebUIs' k-diffusion plumbing; flow noising."""
import pytest
import torch

from lib_ext.flow import (
    FlowDenoiser,
    denoised_from_velocity,
    flow_noise,
    flow_noise_as_ve_noise,
    flow_schedule,
    velocity_from_denoised,
)


class RecordingModel:
    """A stand-in for `sd_model.apply_model(x, t, cond)`: returns a fixed velocity and records its inputs."""

    def __init__(self, velocity):
        self.velocity = velocity
        self.calls = []

    def apply_model(self, x, t, **kwargs):
        self.calls.append((x, t, kwargs))
        return self.velocity


def test_forward_is_x_minus_sigma_v_with_timestep_sigma_times_1000():
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, -1.0]]]])        # [B=2, 1, 1, 2]
    v = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 4.0]]]])
    model = RecordingModel(v)
    denoiser = FlowDenoiser(model.apply_model, shift=3.0)
    sigma = torch.tensor([0.5, 0.25])
    cond = {"crossattn": torch.zeros(2, 77, 8)}
    out = denoiser(x, sigma, cond=cond)
    # by hand: row 0: [1 - 0.25, 2 + 0.5] ; row 1: [3 - 0.5, -1 - 1]
    assert out.tolist() == [[[[0.75, 2.5]]], [[[2.5, -2.0]]]]
    (x_seen, t_seen, kwargs_seen), = model.calls
    assert x_seen is x and t_seen.tolist() == [500.0, 250.0]
    assert kwargs_seen == {"cond": cond}                       # A1111's CFG denoiser passes cond=...


def test_multiplier_is_configurable():
    model = RecordingModel(torch.zeros(1, 1))
    FlowDenoiser(model.apply_model, shift=3.0, multiplier=999.0)(torch.ones(1, 1), torch.tensor([0.5]))
    assert model.calls[0][1].tolist() == [499.5]


@pytest.mark.parametrize("bad", [0.0, -1000.0])
def test_multiplier_must_be_positive(bad):
    with pytest.raises(ValueError, match="multiplier"):
        FlowDenoiser(lambda x, t: x, shift=3.0, multiplier=bad)


def test_sigma_zero_returns_x():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    denoiser = FlowDenoiser(lambda x, t: torch.full_like(x, 7.0), shift=3.0)
    assert torch.equal(denoiser(x, torch.zeros(3)), x)


def test_velocity_and_denoised_are_inverse():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    sigma = torch.tensor([1.0, 0.7, 0.3, 0.01])
    x0 = denoised_from_velocity(x, v, sigma)
    assert torch.allclose(velocity_from_denoised(x, x0, sigma), v, atol=1e-5)


def test_denoiser_recovers_x0_from_the_true_velocity():
    # x = (1 - σ)·x0 + σ·n and v = n - x0: x - σ·v = x0 for every σ, the definition of the flow parameterisation
    g = torch.Generator().manual_seed(2)
    x0, n = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.001])
    x = flow_noise(x0, n, sigma)
    denoiser = FlowDenoiser(lambda x_, t: n - x0, shift=3.0)
    assert torch.allclose(denoiser(x, sigma), x0, atol=1e-5)


def test_denoiser_keeps_x_dtype_when_the_model_answers_in_half():
    denoiser = FlowDenoiser(lambda x, t: x.half(), shift=3.0)
    assert denoiser(torch.ones(2, 3), torch.tensor([0.5, 0.5])).dtype == torch.float32


def test_denoiser_exposes_what_the_webuis_read():
    sd_model = object()
    denoiser = FlowDenoiser(lambda x, t: x, shift=3.0, inner_model=sd_model)
    assert denoiser.inner_model is sd_model and denoiser.shift == 3.0 and denoiser.multiplier == 1000.0
    assert denoiser.sigmas.shape == (1000,) and denoiser.log_sigmas.shape == (1000,)
    # reForge moves the tables per run by assignment
    denoiser.sigmas = denoiser.sigmas.to(torch.float64)
    denoiser.log_sigmas = denoiser.log_sigmas.to(torch.float64)
    assert "sigmas" in dict(denoiser.named_buffers()) and denoiser.sigmas.dtype == torch.float64


def test_inner_model_is_not_a_submodule():
    sd_model = torch.nn.Linear(2, 2)
    denoiser = FlowDenoiser(sd_model.forward, shift=3.0, inner_model=sd_model)
    assert denoiser.inner_model is sd_model
    assert list(denoiser.parameters()) == []        # casting/moving the denoiser never touches the weights


def test_a_host_can_add_a_model_patcher_property():
    class ReforgeFlowDenoiser(FlowDenoiser):
        @property
        def model_patcher(self):
            return self.inner_model.current_unet

    class Model:
        current_unet = "unet clone"

    model = Model()
    denoiser = ReforgeFlowDenoiser(lambda x, t: x, shift=3.0, inner_model=model)
    assert denoiser.model_patcher == "unet clone"
    model.current_unet = "patched clone"
    assert denoiser.model_patcher == "patched clone"


# --- noising ------------------------------------------------------------------------------------------------

def test_flow_noise_by_hand():
    x, n = torch.tensor([[2.0, -4.0]]), torch.tensor([[1.0, 1.0]])
    assert flow_noise(x, n, 0.25).tolist() == [[0.25 + 1.5, 0.25 - 3.0]]
    assert torch.equal(flow_noise(x, n, 0.0), x)
    assert torch.equal(flow_noise(x, n, 1.0), n)


def test_flow_noise_per_sample_sigma():
    x, n = torch.zeros(2, 3), torch.ones(2, 3)
    out = flow_noise(x, n, torch.tensor([0.125, 0.75]))  # dyadic, exact in float32
    assert out.tolist() == [[0.125] * 3, [0.75] * 3]


@pytest.mark.parametrize("sigma", [0.0, 0.03, 0.5, 0.97, 1.0])
def test_ve_noise_trick_gives_flow_noise(sigma):
    # what a WebUI does with the noise it is handed: x + noise'·σ
    g = torch.Generator().manual_seed(3)
    x, n = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    webui_noised = x + flow_noise_as_ve_noise(x, n) * sigma
    assert torch.allclose(webui_noised, flow_noise(x, n, sigma), atol=1e-6)


def test_noise_then_denoise_round_trip_through_an_img2img_schedule():
    # img2img: noise the init latent to the first sigma of the truncated schedule, the model's velocity is n - x0
    g = torch.Generator().manual_seed(4)
    x0, n = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    sigma = flow_schedule(20, 3.0)[8]
    xi = flow_noise(x0, n, sigma)
    denoiser = FlowDenoiser(lambda x, t: n - x0, shift=3.0)
    assert torch.allclose(denoiser(xi, sigma.reshape(1)), x0, atol=1e-5)


def test_denoiser_percent_to_sigma_uses_its_shift():
    denoiser = FlowDenoiser(lambda x, t: x, shift=3.0)
    assert denoiser.percent_to_sigma(0.0) == 1.0 and denoiser.percent_to_sigma(1.0) == 0.0
    assert denoiser.percent_to_sigma(0.5) == pytest.approx(0.75)   # sigma(t = 0.5) at s = 3, by hand
