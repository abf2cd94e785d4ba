"""Uncond bias probe on synthetic denoisers whose answers are known in closed form.

The linear denoiser is D(x, sigma, u) = a(sigma)·x + b(u) with b(u) = mean over tokens of u's cross-attention
(optionally plus the pooled or size part of `vector`), on a 2-value latent [1, 1, 2], so every expected number
below is worked out by hand or with plain float math, independently of lib_ext.probe.
"""
import csv
import io
import json
import math

import pytest
import torch
from k_diffusion.external import DiscreteSchedule

from lib_ext import probe as pr
from lib_ext.probe import ProbeCache, ProbeError, ProbeKey, ProbeResult, ProbeSettings

SHAPE = (1, 1, 2)
POOLED = 2  # SDXL-like vector: [pooled(2) | size(2)]


def settings(**overrides) -> ProbeSettings:
    values = dict(seeds=(0, 1, 2), levels=4, cfg_scale=3.0, latent_shape=SHAPE, reference="zeros")
    values.update(overrides)
    return ProbeSettings(**values)


def linear_denoiser(a=lambda s: 0.0, vector_part=None, bias=(0.0, 0.0), log=None):
    """D = a(sigma)·x + mean_tokens(crossattn) [+ vector[:, part]] + bias; `log` collects (rows, tokens)."""
    def denoise(x, sigma, cond):
        crossattn = cond["crossattn"] if isinstance(cond, dict) else cond
        assert crossattn.shape[0] == x.shape[0] == sigma.shape[0]
        assert bool((sigma == sigma[0]).all())
        if log is not None:
            log.append((x.shape[0], crossattn.shape[1]))
        b = crossattn.mean(dim=1) + torch.tensor(bias)
        if vector_part is not None:
            b = b + cond["vector"][:, vector_part]
        scale = torch.tensor([a(float(s)) for s in sigma]).view(-1, 1, 1, 1)
        return scale * x + b.view(x.shape)
    return denoise


def tokens(*rows):
    return torch.tensor([rows], dtype=torch.float32)  # [1, T, 2]


COND = tokens([2.0, 0.0], [0.0, 0.0])   # b_c = (1, 0)
NULL = tokens([0.0, 1.0], [0.0, 1.0])   # b_null = (0, 1); b_zero = (0, 0)
TABLE = [0.5, 1.0, 2.0, 4.0]            # 4 levels over a 4-entry table are the table itself


def hand_noise(seed):
    return torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(seed)).double().flatten().tolist()


def norm(v):
    return math.sqrt(sum(float(t) ** 2 for t in v))


# --- closed forms ----------------------------------------------------------------------------------------

def test_denoiser_that_ignores_the_cond_scores_zero():
    result = pr.probe(lambda x, s, c: 0.5 * x, COND, NULL, TABLE, pr.ve_noising, settings())
    assert result.x0_rel_diff == (0.0,) * 4 and result.cfg_rel_diff == (0.0,) * 4
    assert result.score == 0.0
    # both guidance vectors are exactly zero: the documented convention says cosine 1
    assert result.guidance_cosine == (1.0,) * 4


def test_linear_in_the_cond_gives_the_analytic_values():
    # a = 0: D_c = (1,0), D_null = (0,1), D_zero = (0,0); s = 3
    # x0: |(0,-1)| / |(0,1)| = 1; CFG: X_null = (3,-2), X_zero = (3,0) -> 2/sqrt(13)
    # guidance: (1,0) vs (1,-1) -> 1/sqrt(2)
    result = pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings())
    assert result.x0_rel_diff == pytest.approx((1.0,) * 4, abs=1e-6)
    assert result.cfg_rel_diff == pytest.approx((2 / math.sqrt(13),) * 4, abs=1e-6)
    assert result.guidance_cosine == pytest.approx((1 / math.sqrt(2),) * 4, abs=1e-6)
    assert result.score == pytest.approx(2 / math.sqrt(13), abs=1e-6)
    assert result.sigmas == pytest.approx((4.0, 2.0, 1.0, 0.5), rel=1e-12)


def expected_with_inputs(inputs, a, s):
    """Per-level means of the three metrics for D = a·x + b_u given per-seed inputs x (plain float math)."""
    b_c, b_null = (1.0, 0.0), (0.0, 1.0)
    x0, cfg, cos = [], [], []
    for x in inputs:
        d_c = [a * xi + bi for xi, bi in zip(x, b_c)]
        d_null = [a * xi + bi for xi, bi in zip(x, b_null)]
        d_zero = [a * xi for xi in x]
        x_null = [n + s * (c - n) for c, n in zip(d_c, d_null)]
        x_zero = [z + s * (c - z) for c, z in zip(d_c, d_zero)]
        x0.append(norm([z - n for z, n in zip(d_zero, d_null)]) / norm(d_null))
        cfg.append(norm([z - n for z, n in zip(x_zero, x_null)]) / norm(x_null))
        g_zero, g_null = [c - z for c, z in zip(d_c, d_zero)], [c - n for c, n in zip(d_c, d_null)]
        cos.append(sum(p * q for p, q in zip(g_zero, g_null)) / (norm(g_zero) * norm(g_null)))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return mean(x0), mean(cfg), mean(cos)


def test_linear_in_x_and_cond_with_zero_reference_and_ve_noising():
    a = lambda sigma: 1.0 / (1.0 + sigma ** 2)  # noqa: E731
    seeds = (0, 1, 2)
    result = pr.probe(linear_denoiser(a), COND, NULL, TABLE, pr.ve_noising, settings(seeds=seeds))
    for index, sigma in enumerate((4.0, 2.0, 1.0, 0.5)):
        inputs = [[sigma * n for n in hand_noise(seed)] for seed in seeds]   # x = 0 + sigma·n
        x0, cfg, cos = expected_with_inputs(inputs, a(sigma), 3.0)
        assert result.x0_rel_diff[index] == pytest.approx(x0, rel=1e-5)
        assert result.cfg_rel_diff[index] == pytest.approx(cfg, rel=1e-5)
        assert result.guidance_cosine[index] == pytest.approx(cos, abs=1e-6)


def test_linear_in_x_and_cond_with_prediction_reference_and_flow_noising():
    a = lambda sigma: 0.5 + sigma  # noqa: E731
    flow_table = [0.25, 0.5, 0.75, 1.0]
    seeds = (5, 6)
    result = pr.probe(linear_denoiser(a), COND, NULL, flow_table, pr.flow_noising,
                      settings(seeds=seeds, reference="prediction"))
    for index, sigma in enumerate((1.0, 0.75, 0.5, 0.25)):
        inputs = []
        for seed in seeds:
            n = hand_noise(seed)
            x0_ref = [a(1.0) * ni + bi for ni, bi in zip(n, (1.0, 0.0))]   # D(1·n + 0·0, 1, cond)
            inputs.append([(1 - sigma) * r + sigma * ni for r, ni in zip(x0_ref, n)])
        x0, cfg, cos = expected_with_inputs(inputs, a(sigma), 3.0)
        assert result.x0_rel_diff[index] == pytest.approx(x0, rel=1e-5)
        assert result.cfg_rel_diff[index] == pytest.approx(cfg, rel=1e-5)
        assert result.guidance_cosine[index] == pytest.approx(cos, abs=1e-6)


def test_exactly_zero_null_uncond_scores_exactly_zero_and_skips_the_zero_rows():
    log = []
    zero_null = torch.zeros(1, 2, 2)
    result = pr.probe(linear_denoiser(lambda s: 0.3, log=log), COND, zero_null, TABLE, pr.ve_noising,
                      settings(reference="prediction"))
    assert result.zero_equals_null
    assert result.score == 0.0 and result.x0_rel_diff == (0.0,) * 4
    assert result.guidance_cosine == pytest.approx((1.0,) * 4, abs=1e-6)
    assert result.unet_rows == 3 + 4 * 2 * 3   # reference rows + (cond, null) rows per level
    assert sum(rows for rows, _ in log) == result.unet_rows


def test_null_prediction_exactly_zero_gives_inf_and_strict_json_null():
    # bias (0,-1) cancels b_null = (0,1): D_null = 0 while D_zero = (0,-1)
    result = pr.probe(linear_denoiser(bias=(0.0, -1.0)), COND, NULL, TABLE, pr.ve_noising, settings())
    assert result.x0_rel_diff == (math.inf,) * 4
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["levels"]["x0_rel_diff"] == [None] * 4
    assert ProbeResult.from_dict(data).x0_rel_diff == (math.inf,) * 4


# --- SDXL-like mappings ----------------------------------------------------------------------------------

def sdxl(crossattn, pooled, size):
    return {"crossattn": crossattn, "vector": torch.tensor([list(pooled) + list(size)], dtype=torch.float32)}


def test_zero_uncond_zeroes_crossattn_and_pooled_keeps_size_and_copies():
    null = sdxl(NULL, (3.0, 4.0), (1024.0, 768.0))
    original_vector = null["vector"].clone()
    zero = pr.zero_uncond(null, POOLED)
    assert torch.equal(zero["crossattn"], torch.zeros_like(NULL))
    assert zero["vector"].tolist() == [[0.0, 0.0, 1024.0, 768.0]]
    assert null["crossattn"] is NULL and torch.equal(null["vector"], original_vector)


def test_size_embedding_only_model_scores_zero_on_mappings():
    cond, null = sdxl(COND, (9.0, 9.0), (1.0, 2.0)), sdxl(NULL, (3.0, 4.0), (1.0, 2.0))
    ignore_text = lambda x, s, c: x + c["vector"][:, POOLED:].view(x.shape)  # noqa: E731
    result = pr.probe(ignore_text, cond, null, TABLE, pr.ve_noising, settings(), pooled_width=POOLED)
    assert not result.zero_equals_null
    assert result.score == 0.0


def test_pooled_only_model_gives_the_analytic_values_on_mappings():
    # D_u = pooled(u): D_c = (1,0), D_null = (0,1), D_zero = (0,0) -> same numbers as the tensor case
    cond, null = sdxl(COND, (1.0, 0.0), (5.0, 5.0)), sdxl(NULL, (0.0, 1.0), (5.0, 5.0))
    pooled_only = lambda x, s, c: c["vector"][:, :POOLED].reshape(x.shape)  # noqa: E731
    result = pr.probe(pooled_only, cond, null, TABLE, pr.ve_noising, settings(), pooled_width=POOLED)
    assert result.score == pytest.approx(2 / math.sqrt(13), abs=1e-6)
    assert result.guidance_cosine == pytest.approx((1 / math.sqrt(2),) * 4, abs=1e-6)
    assert torch.equal(null["vector"], torch.tensor([[0.0, 1.0, 5.0, 5.0]]))  # te("") untouched


def test_embedding_stats_by_hand():
    null = sdxl(tokens([3.0, 4.0], [0.0, 0.0]), (6.0, 8.0), (1.0, 1.0))
    cond = sdxl(tokens([0.0, 1.0], [0.0, 1.0]), (0.0, 5.0), (1.0, 1.0))
    stats = pr.embedding_stats(null, cond, POOLED)
    assert stats == pytest.approx({"null_token_norm_mean": 2.5, "null_token_norm_max": 5.0,
                                   "prompt_token_norm_mean": 1.0, "token_norm_ratio": 2.5,
                                   "null_pooled_norm": 10.0, "prompt_pooled_norm": 5.0, "pooled_norm_ratio": 2.0})
    assert set(pr.embedding_stats(NULL, COND, 0)) == {"null_token_norm_mean", "null_token_norm_max",
                                                      "prompt_token_norm_mean", "token_norm_ratio"}


# --- cost and batching -----------------------------------------------------------------------------------

def test_call_count_with_matching_tokens_and_no_row_limit():
    log = []
    result = pr.probe(linear_denoiser(log=log), COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"))
    # one reference call (3 rows), then per level one call with cond, null and zero rows (9 rows)
    assert log == [(3, 2)] + [(9, 2)] * 4
    assert (result.unet_calls, result.unet_rows) == (5, 39)


def test_call_count_with_token_mismatch_and_row_limit():
    log = []
    long_cond = tokens([3.0, 0.0], [0.0, 0.0], [0.0, 0.0])  # 3 tokens vs te("")'s 2, same b_c = (1, 0)
    result = pr.probe(linear_denoiser(log=log), long_cond, NULL, TABLE, pr.ve_noising,
                      settings(reference="prediction"), max_rows=2)
    # reference: 3 rows -> 2 calls; per level: cond 3 rows -> 2 calls, null+zero 6 rows -> 3 calls
    assert log == [(2, 3), (1, 3)] + [(2, 3), (1, 3), (2, 2), (2, 2), (2, 2)] * 4
    assert (result.unet_calls, result.unet_rows) == (22, 39)
    assert result.score == pytest.approx(2 / math.sqrt(13), abs=1e-6)  # separate calls, same numbers


def test_row_limit_does_not_change_the_numbers():
    denoise = linear_denoiser(lambda s: 1.0 / (1.0 + s))
    whole = pr.probe(denoise, COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"))
    split = pr.probe(denoise, COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"), max_rows=1)
    assert split.cfg_rel_diff == pytest.approx(whole.cfg_rel_diff, rel=1e-6)
    assert split.unet_calls == 3 + 4 * 9 and split.unet_rows == whole.unet_rows


def stop_after(calls: int):
    """A `should_stop` that says stop once `calls` UNet calls have been allowed."""
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > calls
    return should_stop


def test_interrupt_between_unet_calls_returns_the_finished_levels():
    # reference "prediction": call 1 is the reference, calls 2-3 the first two levels; stop before call 4.
    full = pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"))
    part = pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"),
                    should_stop=stop_after(3))
    assert part.interrupted and not full.interrupted
    assert part.unet_calls == 3 and part.sigmas == full.sigmas[:2]
    assert part.cfg_rel_diff == full.cfg_rel_diff[:2] and part.score == pytest.approx(full.score)
    data = json.loads(json.dumps(part.to_dict(), allow_nan=False))
    assert data["interrupted"] is True and len(data["levels"]["sigma"]) == 2
    assert ProbeResult.from_dict(data) == part


def test_interrupt_within_a_level_drops_that_level():
    # max_rows 2 with a longer cond: each level takes 5 calls; stopping inside level 1 keeps level 0 only.
    long_cond = tokens([3.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    part = pr.probe(linear_denoiser(), long_cond, NULL, TABLE, pr.ve_noising, settings(), max_rows=2,
                    should_stop=stop_after(7))
    assert part.interrupted and part.unet_calls == 7 and len(part.sigmas) == 1 == len(part.x0_rel_diff)


def test_interrupt_before_any_level_has_no_score():
    part = pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"),
                    should_stop=stop_after(0))
    assert part.interrupted and part.unet_calls == 0 and part.sigmas == ()
    assert math.isnan(part.score)
    data = json.loads(json.dumps(part.to_dict(), allow_nan=False))  # strict JSON: no score is null
    assert data["score"] is None and data["mean_guidance_cosine"] is None


def test_on_level_reports_progress():
    seen = []
    pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings(), on_level=lambda *a: seen.append(a))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


# --- determinism -----------------------------------------------------------------------------------------

def test_same_seeds_same_numbers_other_seeds_other_numbers():
    denoise = linear_denoiser(lambda s: 1.0 / (1.0 + s * s))
    first = pr.probe(denoise, COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"))
    again = pr.probe(denoise, COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"))
    other = pr.probe(denoise, COND, NULL, TABLE, pr.ve_noising, settings(seeds=(7, 8, 9), reference="prediction"))
    assert first.to_dict() == again.to_dict()
    assert first.cfg_rel_diff != other.cfg_rel_diff


def test_seed_noise_follows_the_cpu_generator_convention():
    noise = pr.seed_noise((3, 11), (2, 3, 3))
    assert noise.shape == (2, 2, 3, 3) and noise.dtype == torch.float32
    assert torch.equal(noise[1], torch.randn((2, 3, 3), generator=torch.Generator("cpu").manual_seed(11)))


# --- noise levels ----------------------------------------------------------------------------------------

def sd_sigmas():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def flow_sigmas(shift=3.0):
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    return shift * t / (1 + (shift - 1) * t)


@pytest.mark.parametrize("table", [sd_sigmas(), flow_sigmas()], ids=["sd", "flow-shift-3"])
def test_noise_levels_match_k_diffusion_get_sigmas(table):
    expected = DiscreteSchedule(table.float(), quantize=False).get_sigmas(12)[:-1]
    levels = pr.noise_levels(table, 12)
    assert torch.allclose(torch.tensor(levels, dtype=torch.float32), expected, rtol=1e-5)
    assert levels[0] == pytest.approx(table.max().item(), rel=1e-12)
    assert levels[-1] == pytest.approx(table.min().item(), rel=1e-12)


def test_noise_levels_edge_cases():
    assert pr.noise_levels([2.0, 1.0, 4.0], 1) == pytest.approx([4.0])            # unsorted table, one level
    assert pr.noise_levels([1.0, 4.0], 3) == pytest.approx([4.0, 2.0, 1.0])       # log-interpolated middle
    with pytest.raises(ProbeError, match="sigmas > 0"):
        pr.noise_levels([0.0, 1.0, 2.0], 3)   # sigma = 0 is the clean end, never a level
    with pytest.raises(ProbeError, match="at least 2"):
        pr.noise_levels([1.0], 3)


# --- metrics edge cases ----------------------------------------------------------------------------------

def test_cosine_conventions_for_zero_vectors():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    assert pr.guidance_cosine(a, b).tolist() == pytest.approx([1.0, 0.0, 1.0, -1.0])


def test_relative_difference_zero_over_zero_is_zero():
    zero = torch.zeros(1, 2)
    assert pr.relative_difference(zero, zero).tolist() == [0.0]


# --- results: JSON and CSV -------------------------------------------------------------------------------

def sample_result():
    return pr.probe(linear_denoiser(lambda s: 0.2), COND, NULL, TABLE, pr.ve_noising, settings())


def test_json_round_trip():
    result = sample_result()
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = ProbeResult.from_dict(json.loads(text))
    assert back == result
    assert json.loads(text)["score"] == pytest.approx(result.score)


def test_csv_header_and_rows():
    result = sample_result()
    lines = result.to_csv().splitlines()
    assert lines[0] == "level,sigma,x0_rel_diff,cfg_rel_diff,guidance_cosine,non_finite"
    assert len(lines) == 1 + 4
    level, sigma, x0, cfg, cos, non_finite = lines[2].split(",")
    assert (int(level), float(sigma), float(cfg), non_finite) == (1, result.sigmas[1], result.cfg_rel_diff[1], "")


# --- settings and input errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"cfg_scale": 1.0}, "cfg_scale"),
    ({"levels": 0}, "levels"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [1.5]}, "seeds"),
    ({"latent_shape": [4, 64]}, "latent_shape"),
    ({"reference": "noise"}, "reference"),
    ({"steps": 3}, "unknown setting"),
])
def test_settings_reject_bad_values(values, message):
    with pytest.raises(ProbeError, match=message):
        ProbeSettings.from_dict(values)


@pytest.mark.parametrize("values, message", [
    # The two: a side that cannot be allocated, and a typo (4000 for 400) that would run for hours.
    ({"latent_shape": [4, 100000, 100000]}, "height and width must be at most 256 latent pixels (2048 px), "
                                            "got 100000 × 100000"),
    ({"latent_shape": [4, 4000, 4000]}, "got 4000 × 4000"),
    ({"latent_shape": [4, 64, 257]}, "got 64 × 257"),
    ({"latent_shape": [17, 64, 64]}, "channels must be at most 16, got 17"),
    ({"seeds": list(range(64)), "levels": 9}, r"seeds × levels must be at most 512, got 64 × 9 = 576"),
])
def test_settings_bound_the_work(values, message):
    with pytest.raises(ProbeError) as error:
        ProbeSettings.from_dict(values)
    assert message in str(error.value)
    # At the bounds: accepted.
    ProbeSettings.from_dict({"latent_shape": [16, 256, 256], "seeds": list(range(64)), "levels": 8})


def test_settings_from_api_dict_round_trip():
    parsed = ProbeSettings.from_dict({"seeds": [1, 2], "latent_shape": [4, 64, 64], "cfg_scale": 5})
    assert parsed.seeds == (1, 2) and parsed.cfg_scale == 5.0
    assert ProbeSettings.from_dict(parsed.as_dict()) == parsed
    hash(parsed)  # usable in a cache key


def overflowing_denoiser(below_sigma: float, value: float, only_null: bool = False):
    """The linear denoiser, but `value` (NaN or inf) everywhere below `below_sigma` (for te('') alone or for
    every cond): a broken merge or a float16 overflow at low noise."""
    linear = linear_denoiser()

    def denoise(x, sigma, cond):
        out = linear(x, sigma, cond)
        if float(sigma[0]) < below_sigma:
            rows = (cond == NULL).flatten(1).all(dim=1) if only_null else torch.ones(len(out), dtype=torch.bool)
            out[rows] = value
        return out
    return denoise


def test_non_finite_predictions_are_named_per_level_and_leave_no_score():
    result = pr.probe(overflowing_denoiser(1.5, math.nan), COND, NULL, TABLE, pr.ve_noising, settings())
    assert result.non_finite == ("", "", "cond: NaN, te(''): NaN, zero: NaN", "cond: NaN, te(''): NaN, zero: NaN")
    assert result.cfg_rel_diff[:2] == pytest.approx((2 / math.sqrt(13),) * 2, abs=1e-6)  # the finite levels stay
    assert all(math.isnan(v) for v in result.cfg_rel_diff[2:] + result.guidance_cosine[2:])
    assert math.isnan(result.score)
    assert result.non_finite_text() == ("Uncond Lab probe: non-finite predictions at sigma 1 (cond: NaN, te(''): NaN, "
                                        "zero: NaN), 0.5 (cond: NaN, te(''): NaN, zero: NaN) of 4 levels (a broken "
                                        "merge or a float16 overflow: try full precision)")
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["score"] is None and data["non_finite"] == result.non_finite_text()
    assert data["levels"]["non_finite"] == list(result.non_finite)
    back = ProbeResult.from_dict(data)
    assert back.non_finite == result.non_finite and math.isnan(back.cfg_rel_diff[3])
    assert back.cfg_rel_diff[:2] == result.cfg_rel_diff[:2]
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [row["non_finite"] for row in rows] == list(result.non_finite)


def test_inf_in_one_prediction_names_only_that_one():
    result = pr.probe(overflowing_denoiser(0.75, math.inf, only_null=True), COND, NULL, TABLE, pr.ve_noising,
                      settings())
    assert result.non_finite == ("", "", "", "te(''): inf")
    assert pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings()).non_finite == ()


def test_a_non_finite_reference_prediction_is_named_as_the_cause():
    result = pr.probe(lambda x, s, c: x * math.nan, COND, NULL, TABLE, pr.ve_noising,
                      settings(reference="prediction"))
    assert set(result.non_finite) == {"reference prediction at sigma max: NaN"}


@pytest.mark.parametrize("which", ["cond", "null"])
def test_non_finite_encodings_stop_before_any_unet_call(which):
    calls = []
    broken = tokens([math.nan, 0.0], [0.0, 0.0])
    cond, null = (broken, NULL) if which == "cond" else (COND, broken)
    with pytest.raises(pr.NonFiniteEncodingError, match="holds NaN before any UNet call"):
        pr.probe(linear_denoiser(log=calls), cond, null, TABLE, pr.ve_noising, settings())
    assert calls == []


def test_denoiser_errors_are_reported():
    with pytest.raises(ProbeError, match="shape"):
        pr.probe(lambda x, s, c: x[:, :, :, :1], COND, NULL, TABLE, pr.ve_noising, settings())
    with pytest.raises(ProbeError, match="batch size 1"):
        pr.probe(linear_denoiser(), COND.repeat(2, 1, 1), NULL, TABLE, pr.ve_noising, settings())


# --- cache -----------------------------------------------------------------------------------------------

def test_cache_hit_miss_and_recipe_in_key():
    cache, runs = ProbeCache(), []
    key = ProbeKey.for_table("abc123", None, settings(), TABLE)
    run = lambda: runs.append(1) or sample_result()  # noqa: E731
    first = cache.get_or_run(key, run)
    assert cache.get_or_run(key, run) is first
    assert (len(runs), cache.hits, cache.misses) == (1, 1, 1)
    merged = ProbeKey.for_table("abc123", "weighted_sum(abc123, def456, 0.5)", settings(), TABLE)
    flow = ProbeKey.for_table("abc123", None, settings(), [0.25, 0.5, 0.75, 1.0])
    assert merged not in cache and flow not in cache


def test_cache_is_bounded_least_recently_used():
    cache, result = ProbeCache(max_entries=2), sample_result()
    keys = [ProbeKey.for_table(f"model{i}", None, settings(), TABLE) for i in range(3)]
    cache.put(keys[0], result)
    cache.put(keys[1], result)
    cache.get(keys[0])          # keys[0] is now the most recently used
    cache.put(keys[2], result)  # evicts keys[1]
    assert len(cache) == 2 and keys[0] in cache and keys[1] not in cache and keys[2] in cache


# --- ratio sweep -----------------------------------------------------------------------------------------

def test_sweep_follows_the_ratio_and_exports():
    # te("") scaled by (1 - r): at r = 1 it is exactly zero, so the score must fall to exactly 0
    def probe_at(ratio):
        return pr.probe(linear_denoiser(), COND, NULL * (1 - ratio), TABLE, pr.ve_noising, settings())

    sweep = pr.sweep_ratios([0.0, 0.5, 1.0], probe_at)
    scores = [row["score"] for row in sweep.csv_rows()]
    # b_null = (0, 1-r): X_null = (3, -2(1-r)), difference (0, 2(1-r))
    assert scores[0] == pytest.approx(2 / math.sqrt(13), abs=1e-6)
    assert scores[1] == pytest.approx(1 / math.sqrt(10), abs=1e-6)
    assert scores[2] == 0.0
    assert sweep.to_csv().splitlines()[0] == ",".join(pr.SWEEP_COLUMNS)
    data = json.loads(json.dumps(sweep.to_dict(), allow_nan=False))
    assert data["columns"]["ratio"] == [0.0, 0.5, 1.0] and len(data["results"]) == 3


def test_an_interrupted_sweep_ends_with_the_interrupted_ratio():
    asked = []

    def probe_at(ratio):
        asked.append(ratio)
        return pr.probe(linear_denoiser(), COND, NULL, TABLE, pr.ve_noising, settings(),
                        should_stop=stop_after(2) if ratio == 0.5 else None)

    sweep = pr.sweep_ratios([0.0, 0.5, 1.0], probe_at)
    assert asked == [0.0, 0.5] and sweep.ratios == (0.0, 0.5) and sweep.interrupted
    assert [r.interrupted for r in sweep.results] == [False, True]
    data = json.loads(json.dumps(sweep.to_dict(), allow_nan=False))
    assert data["interrupted"] is True and data["columns"]["ratio"] == [0.0, 0.5]


def test_block_sweep_has_a_merge_blocks_column():
    scale = {"IN04=0": 1.0, "IN04=1": 0.0, None: 0.5}  # a stand-in: the block's ratio scales te("")
    sweep = pr.sweep_blocks(0.5, ["IN04=0", "IN04=1", None],
                            lambda b: pr.probe(linear_denoiser(), COND, NULL * scale[b], TABLE, pr.ve_noising,
                                               settings()))
    assert sweep.to_csv().splitlines()[0] == "ratio,merge_blocks," + ",".join(pr.SWEEP_COLUMNS[1:])
    data = json.loads(json.dumps(sweep.to_dict(), allow_nan=False))
    assert data["columns"]["merge_blocks"] == ["IN04=0", "IN04=1", ""]
    assert data["columns"]["ratio"] == [0.5] * 3 and data["columns"]["score"][1] == 0.0
    with pytest.raises(ProbeError, match="block-weights list"):
        pr.sweep_blocks(0.5, [], lambda b: sample_result())


def test_sweep_rejects_empty_or_nan_ratios():
    with pytest.raises(ProbeError, match="ratios"):
        pr.sweep_ratios([], lambda r: sample_result())
    with pytest.raises(ProbeError, match="ratios"):
        pr.sweep_ratios([0.5, math.nan], lambda r: sample_result())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_on_cuda_matches_cpu():
    denoise = linear_denoiser(lambda s: 1.0 / (1.0 + s))

    def on_device(x, sigma, cond):
        assert x.is_cuda and sigma.is_cuda and cond.is_cuda
        return denoise(x.cpu(), sigma.cpu(), cond.cpu()).cuda()

    cpu = pr.probe(denoise, COND, NULL, TABLE, pr.ve_noising, settings(reference="prediction"))
    gpu = pr.probe(on_device, COND.cuda(), NULL.cuda(), TABLE, pr.ve_noising, settings(reference="prediction"),
                   device="cuda")
    assert gpu.cfg_rel_diff == pytest.approx(cpu.cfg_rel_diff, rel=1e-5)
