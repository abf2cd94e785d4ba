"""Uncond bias probe: how much a model's prediction depends on zero vs null uncond, in numbers.

The probe feeds one denoiser the same noisy latents with three conds: the probe prompt `c`, the null uncond
te("") and the zero uncond (te("") with cross-attention and pooled text zeroed, size embeddings kept, see
`uncond.blend_toward_zero`). It never branches on the model type: the host hands it `denoise(x, sigma, cond)`,
which returns the x0 prediction (for flow models too), the model's sigma table and a `noising` rule.

Definitions (the README copies this block):

- Noise levels: `levels` sigmas uniform in the model's timestep, from the largest to the smallest sigma of its
  table, interpolated in log sigma: k-diffusion's `DiscreteSchedule.get_sigmas(levels)` without the final 0
  (A1111's schedule when no scheduler is set). For a flow model the table is its shifted flow table. Uniform in
  timestep is how the model was trained, so the mean over levels weighs noise levels like training does.
- Inputs: per seed s, noise n_s = torch.randn(latent_shape) from a CPU generator seeded with s (A1111's CPU
  RNG convention). The reference picture x0_ref is, with reference="prediction" (default), the model's own
  one-step x0 prediction for the probe prompt from pure noise, D(noising(0, n_s, sigma_max), sigma_max, c);
  with reference="zeros", x0_ref = 0. At each level x = noising(x0_ref, n_s, sigma) with the same n_s: the
  latent a DDIM / rectified-flow Euler path would reach if the model's x0 estimate never changed. So the
  model sees a plausible picture at low noise rather than a flat one, and the inputs are reproducible.
- Per level and seed, with D_u = denoise(x, sigma, u) and s the CFG scale:
    x0_rel_diff     = ||D_zero - D_null|| / ||D_null||
    cfg_rel_diff    = ||X_zero - X_null|| / ||X_null||,   X_u = D_u + s·(D_c - D_u)   (the CFG output)
    guidance_cosine = cos(D_c - D_zero, D_c - D_null)
  Norms are L2 over the whole latent. A 0/0 ratio is 0, x/0 is +inf (JSON null). The cosine is 1 when both
  guidance vectors are exactly zero (the same guidance: none) and 0 when exactly one is. Each per-level value
  is the mean over seeds.
- Score = mean over the noise levels of cfg_rel_diff: the average fraction of the CFG prediction, the x0 the
  sampler steps toward, that moves when the zero uncond replaces the null uncond. It is scale-free (a ratio of
  norms), 0 when both unconds give identical predictions (exactly 0 when te("") is exactly zero: the zero rows
  are then not evaluated at all), and grows with the CFG scale, as the effect on pictures does.
- Cost: `unet_calls` counts denoise() invocations (one batched UNet forward each), `unet_rows` the latents
  evaluated over all of them. Cond and null/zero rows share a call when their token counts match; calls hold
  at most `max_rows` rows. The work is bounded before anything is allocated: at most `MAX_LATENT_CHANNELS`
  channels, `MAX_LATENT_SIDE` latent pixels a side, `MAX_SEED_LEVELS` seeds × levels.
- Interrupted (`should_stop()` true before a UNet call): the levels finished so far, `interrupted` set; the
  score is the mean over those levels (None when none finished).
- Non-finite predictions (a broken merge, an fp16 overflow): the probe goes on; such a level's values are NaN
  and `non_finite` says which prediction held NaN or inf there, so the score is NaN (JSON null) with the reason.
  Non-finite encodings (te("") or the prompt) stop it before any UNet call, saying which.
"""
from __future__ import annotations

import csv
import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from lib_ext.settings import Settings, SettingsError
from lib_ext.uncond import Cond, blend_toward_zero, embedding_norms

Denoise = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]
Noising = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]

DEFAULT_PROBE_PROMPT = "a cat sitting on a windowsill, daylight"
REFERENCES = ("prediction", "zeros")
MAX_SEEDS = 64
MAX_LEVELS = 100
MAX_SEED_LEVELS = 512      # seeds × levels: the probe costs seeds × (3 · levels + 1) UNet rows
MAX_LATENT_CHANNELS = 16   # SD1/SDXL latents have 4, SD3/Flux 16
MAX_LATENT_SIDE = 256      # latent pixels: 2048 px, the tab's largest size
RESULT_FORMAT = "uncond-lab-probe/1"
LEVEL_COLUMNS = ("level", "sigma", "x0_rel_diff", "cfg_rel_diff", "guidance_cosine", "non_finite")


class ProbeError(ValueError):
    """A probe setting or input is invalid; the message names the value and what is allowed."""


class NonFiniteEncodingError(ProbeError):
    """The probe prompt's encoding or te("") holds NaN or inf: nothing was sent to the UNet."""


# --- settings --------------------------------------------------------------------------------------------

def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ProbeError(f"Uncond Lab probe: '{name}' must be a list of integers, got {value!r}")
    items = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ProbeError(f"Uncond Lab probe: '{name}' must be a list of integers, got {value!r}")
    return items


@dataclass(frozen=True)
class ProbeSettings:
    """What the probe computes; everything that changes its numbers for a given model (the cache key's part)."""
    prompt: str = DEFAULT_PROBE_PROMPT  # the host encodes it into the cond that gives the guidance direction
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    levels: int = 12
    cfg_scale: float = 7.0
    latent_shape: tuple[int, ...] = (4, 128, 128)  # SDXL's 1024² latent; smaller is cheaper
    reference: str = "prediction"
    rf: bool | None = None  # rectified flow as for a generation: None = when the checkpoint declares it
    shift: float = 3.0      # the flow shift when the probe runs as rectified flow

    def __post_init__(self):
        self._check_flow()
        object.__setattr__(self, "seeds", _int_tuple("seeds", self.seeds))
        object.__setattr__(self, "latent_shape", _int_tuple("latent_shape", self.latent_shape))
        if not isinstance(self.prompt, str):
            raise ProbeError(f"Uncond Lab probe: 'prompt' must be a string, got {self.prompt!r}")
        if not 1 <= len(self.seeds) <= MAX_SEEDS:
            raise ProbeError(f"Uncond Lab probe: 'seeds' must hold 1 to {MAX_SEEDS} seeds, got {len(self.seeds)}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or not 1 <= self.levels <= MAX_LEVELS:
            raise ProbeError(f"Uncond Lab probe: 'levels' must be an integer in [1, {MAX_LEVELS}], got {self.levels!r}")
        if (isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float))
                or not 1.0 < self.cfg_scale <= 100.0):
            raise ProbeError(f"Uncond Lab probe: 'cfg_scale' must be a number in (1, 100] (at 1 the uncond is "
                             f"unused, so there is nothing to measure), got {self.cfg_scale!r}")
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        if len(self.seeds) * self.levels > MAX_SEED_LEVELS:
            raise ProbeError(f"Uncond Lab probe: seeds × levels must be at most {MAX_SEED_LEVELS}, got "
                             f"{len(self.seeds)} × {self.levels} = {len(self.seeds) * self.levels}; use fewer seeds "
                             f"or levels")
        if len(self.latent_shape) != 3 or min(self.latent_shape) < 1:
            raise ProbeError(f"Uncond Lab probe: 'latent_shape' must be [channels, height, width] of positive "
                             f"integers, got {list(self.latent_shape)}")
        channels, height, width = self.latent_shape
        if channels > MAX_LATENT_CHANNELS:
            raise ProbeError(f"Uncond Lab probe: 'latent_shape' channels must be at most {MAX_LATENT_CHANNELS}, "
                             f"got {channels}")
        if max(height, width) > MAX_LATENT_SIDE:
            raise ProbeError(f"Uncond Lab probe: 'latent_shape' height and width must be at most {MAX_LATENT_SIDE} "
                             f"latent pixels ({MAX_LATENT_SIDE * 8} px), got {height} × {width}")
        if self.reference not in REFERENCES:
            raise ProbeError(f"Uncond Lab probe: 'reference' must be one of {', '.join(REFERENCES)}, "
                             f"got {self.reference!r}")

    def _check_flow(self) -> None:
        """`rf` and `shift` take what the Uncond Lab dict takes (true/false/null or the UI's labels)."""
        try:
            flow = Settings.from_dict({"rf": self.rf, "shift": self.shift})
        except SettingsError as error:
            raise ProbeError(str(error).replace("Uncond Lab:", "Uncond Lab probe:", 1)) from None
        object.__setattr__(self, "rf", flow.rf)
        object.__setattr__(self, "shift", flow.shift)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ProbeSettings":
        """The API form: named settings, defaults for missing keys, an error for unknown keys."""
        if not isinstance(values, Mapping):
            raise ProbeError(f"Uncond Lab probe: settings must be a JSON object, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [key for key in values if key not in known]
        if unknown:
            raise ProbeError(f"Uncond Lab probe: unknown setting(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(known)}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "seeds": list(self.seeds), "levels": self.levels,
                "cfg_scale": self.cfg_scale, "latent_shape": list(self.latent_shape), "reference": self.reference,
                "rf": self.rf, "shift": self.shift}


# --- noise levels and inputs -----------------------------------------------------------------------------

def noise_levels(sigma_table: Sequence[float] | torch.Tensor, count: int) -> list[float]:
    """k-diffusion `DiscreteSchedule.get_sigmas(count)` without the final 0: uniform in timestep, descending."""
    table = torch.as_tensor(sigma_table, dtype=torch.float64).flatten()
    if table.numel() < 2 or not bool(torch.isfinite(table).all()) or not bool((table > 0).all()):
        raise ProbeError(f"Uncond Lab probe: the sigma table must hold at least 2 finite sigmas > 0, "
                         f"got {table.numel()} values from {table.min().item() if table.numel() else None} "
                         f"to {table.max().item() if table.numel() else None}")
    if count < 1:
        raise ProbeError(f"Uncond Lab probe: the number of noise levels must be at least 1, got {count}")
    log_sigmas = table.sort().values.log()
    levels = []
    for t in torch.linspace(len(log_sigmas) - 1, 0, count, dtype=torch.float64).tolist():
        low = min(int(math.floor(t)), len(log_sigmas) - 2)
        frac = t - low
        levels.append(math.exp((1.0 - frac) * log_sigmas[low].item() + frac * log_sigmas[low + 1].item()))
    return levels


def ve_noising(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 + sigma·noise: k-diffusion / A1111 `x + noise * sigma` for eps and v models."""
    return x0 + sigma * noise


def flow_noising(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1 - sigma)·x0 + sigma·noise: rectified flow, SD3 `add_noise_to_latent` / ComfyUI `CONST.noise_scaling`."""
    return (1.0 - sigma) * x0 + sigma * noise


def seed_noise(seeds: Sequence[int], latent_shape: Sequence[int]) -> torch.Tensor:
    """[len(seeds), *latent_shape] float32 noise, each row from a CPU generator seeded with its seed."""
    return torch.stack([torch.randn(tuple(latent_shape), generator=torch.Generator("cpu").manual_seed(seed))
                        for seed in seeds])


def zero_uncond(null_uncond: Cond, pooled_width: int) -> Cond:
    """The WebUI's zero uncond for te(""), on a copy: `blend_toward_zero` assigns into mappings."""
    copy = dict(null_uncond) if isinstance(null_uncond, Mapping) else null_uncond
    return blend_toward_zero(copy, 1.0, pooled_width)


# --- metrics ---------------------------------------------------------------------------------------------

def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator with 0/0 = 0 and x/0 = +inf."""
    zero = denominator == 0
    ratio = numerator / torch.where(zero, torch.ones_like(denominator), denominator)
    at_zero = torch.where(numerator == 0, torch.zeros_like(ratio), torch.full_like(ratio, math.inf))
    return torch.where(zero, at_zero, ratio)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: ||a - b|| / ||b|| over all but the first dimension."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return _ratio((a - b).norm(dim=1), b.norm(dim=1))


def guidance_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row cosine similarity; 1 when both rows are zero, 0 when exactly one is."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    both_nonzero = (norm_a > 0) & (norm_b > 0)
    cosine = (a * b).sum(dim=1) / torch.where(both_nonzero, norm_a * norm_b, torch.ones_like(norm_a))
    cosine = torch.where(both_nonzero, cosine.clamp(-1.0, 1.0), torch.zeros_like(cosine))
    return torch.where((norm_a == 0) & (norm_b == 0), torch.ones_like(cosine), cosine)


def cfg_combine(cond_pred: torch.Tensor, uncond_pred: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022) as A1111 writes it: uncond + scale·(cond - uncond)."""
    return uncond_pred + scale * (cond_pred - uncond_pred)


def embedding_stats(null_uncond: Cond, cond: Cond, pooled_width: int) -> dict[str, float]:
    """How far te("") is from zero, absolutely and relative to the probe prompt's encoding."""
    null, prompt = embedding_norms(null_uncond, pooled_width), embedding_norms(cond, pooled_width)
    null_tokens = _crossattn(null_uncond)[0].float().norm(dim=-1)
    stats = {"null_token_norm_mean": null["crossattn_token_norm"],
             "null_token_norm_max": null_tokens.max().item(),
             "prompt_token_norm_mean": prompt["crossattn_token_norm"]}
    stats["token_norm_ratio"] = _ratio(torch.tensor(stats["null_token_norm_mean"]),
                                       torch.tensor(stats["prompt_token_norm_mean"])).item()
    if "pooled_norm" in null:
        stats["null_pooled_norm"], stats["prompt_pooled_norm"] = null["pooled_norm"], prompt["pooled_norm"]
        stats["pooled_norm_ratio"] = _ratio(torch.tensor(null["pooled_norm"]),
                                            torch.tensor(prompt["pooled_norm"])).item()
    return stats


# --- batched denoiser calls ------------------------------------------------------------------------------

def _crossattn(cond: Cond) -> torch.Tensor:
    return cond["crossattn"] if isinstance(cond, Mapping) else cond


def _check_single(name: str, cond: Cond) -> None:
    parts = cond.values() if isinstance(cond, Mapping) else [cond]
    if isinstance(cond, Mapping) and "crossattn" not in cond:
        raise ProbeError(f"Uncond Lab probe: the {name} mapping needs a 'crossattn' entry, got keys {list(cond)}")
    if not all(isinstance(t, torch.Tensor) and t.shape[0] == 1 for t in parts):
        raise ProbeError(f"Uncond Lab probe: the {name} must be a single encoding (batch size 1), got shapes "
                         f"{[tuple(getattr(t, 'shape', ())) for t in parts]}")


def _repeat_and_cat(conds: Sequence[Cond], rows: int) -> Cond:
    """Each single-row cond repeated `rows` times, all concatenated along the batch."""
    def cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.expand(rows, *t.shape[1:]) for t in tensors])

    if not isinstance(conds[0], Mapping):
        return cat(conds)
    keys = list(conds[0])
    if any(set(c) != set(keys) for c in conds):
        raise ProbeError(f"Uncond Lab probe: the cond and te('') mappings must have the same keys, got "
                         f"{[sorted(c) for c in conds]}")
    return {key: cat([c[key] for c in conds]) for key in keys}


def _rows(cond: Cond, start: int, stop: int) -> Cond:
    if isinstance(cond, Mapping):
        return {key: value[start:stop] for key, value in cond.items()}
    return cond[start:stop]


class _Stopped(Exception):
    """`should_stop()` said so before a UNet call."""


class _CountingDenoiser:
    """Calls `denoise` for several conds on the same latents, batched by token count, at most `max_rows` a call;
    asks `should_stop` before each call."""

    def __init__(self, denoise: Denoise, max_rows: int | None, should_stop: Callable[[], bool] | None = None):
        if max_rows is not None and max_rows < 1:
            raise ProbeError(f"Uncond Lab probe: 'max_rows' must be at least 1 or None, got {max_rows}")
        self.denoise, self.max_rows, self.should_stop = denoise, max_rows, should_stop
        self.calls = self.rows = 0

    def __call__(self, x: torch.Tensor, sigma: float, conds: Sequence[Cond]) -> list[torch.Tensor]:
        groups: OrderedDict[int, list[int]] = OrderedDict()
        for index, cond in enumerate(conds):
            groups.setdefault(_crossattn(cond).shape[1], []).append(index)
        out: list[torch.Tensor | None] = [None] * len(conds)
        for indices in groups.values():
            batch = self._run(x.repeat(len(indices), *[1] * (x.ndim - 1)), sigma,
                              _repeat_and_cat([conds[i] for i in indices], x.shape[0]))
            for i, part in zip(indices, batch.split(x.shape[0])):
                out[i] = part
        return out  # type: ignore[return-value]

    def _run(self, x: torch.Tensor, sigma: float, cond: Cond) -> torch.Tensor:
        step = self.max_rows or x.shape[0]
        outputs = []
        for start in range(0, x.shape[0], step):
            rows = x[start:start + step]
            sigmas = torch.full((rows.shape[0],), sigma, dtype=torch.float32, device=x.device)
            if self.should_stop is not None and self.should_stop():
                raise _Stopped
            pred = self.denoise(rows, sigmas, _rows(cond, start, start + step))
            self.calls += 1
            self.rows += rows.shape[0]
            if tuple(pred.shape) != tuple(rows.shape):
                raise ProbeError(f"Uncond Lab probe: the denoiser returned shape {tuple(pred.shape)} for input "
                                 f"shape {tuple(rows.shape)}; it must return the x0 prediction")
            outputs.append(pred.float())
        return torch.cat(outputs)


def _non_finite_kind(tensor: torch.Tensor) -> str | None:
    if bool(torch.isnan(tensor).any()):
        return "NaN"
    if bool(torch.isinf(tensor).any()):
        return "inf"
    return None


def non_finite_predictions(predictions: Mapping[str, torch.Tensor]) -> str:
    """"" when every prediction is finite, else e.g. "cond: NaN, te(''): inf"; a non-finite reference prediction
    (every level's input) is named alone."""
    kinds = {name: _non_finite_kind(tensor) for name, tensor in predictions.items()}
    if kinds.get("reference"):
        return f"reference prediction at sigma max: {kinds['reference']}"
    return ", ".join(f"{name}: {kind}" for name, kind in kinds.items() if kind)


def _check_finite(name: str, cond: Cond) -> None:
    for part, tensor in (cond.items() if isinstance(cond, Mapping) else [("", cond)]):
        kind = _non_finite_kind(tensor)
        if kind:
            where = f" ({part})" if part else ""
            raise NonFiniteEncodingError(f"Uncond Lab probe: {name}{where} holds {kind} before any UNet call: the "
                                         f"text encoders' output is broken, so every generation with it is too")


def _same_cond(a: Cond, b: Cond) -> bool:
    if isinstance(a, Mapping):
        return all(torch.equal(a[key], b[key]) for key in a)
    return torch.equal(a, b)


# --- the probe -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeResult:
    """Per-level means over seeds (descending sigma), the embedding side, and what it cost."""
    settings: ProbeSettings
    sigmas: tuple[float, ...]
    x0_rel_diff: tuple[float, ...]
    cfg_rel_diff: tuple[float, ...]
    guidance_cosine: tuple[float, ...]
    embedding: Mapping[str, float] = field(default_factory=dict)
    unet_calls: int = 0
    unet_rows: int = 0
    zero_equals_null: bool = False  # te("") is exactly zero, so zero and null uncond are the same cond
    interrupted: bool = False  # stopped early: the levels finished before (possibly none)
    non_finite: tuple[str, ...] = ()  # per level: "" or which predictions held NaN/inf (see non_finite_text)

    @property
    def score(self) -> float:
        """Mean over the noise levels of cfg_rel_diff (see the module docstring); NaN without any level."""
        return _mean(self.cfg_rel_diff)

    @property
    def mean_x0_rel_diff(self) -> float:
        return _mean(self.x0_rel_diff)

    @property
    def mean_guidance_cosine(self) -> float:
        return _mean(self.guidance_cosine)

    def non_finite_text(self) -> str | None:
        """Why the score is missing, e.g. "non-finite predictions at sigma 14.61 (cond: NaN), 2.918 (...)";
        None when every level was finite."""
        bad = [f"{sigma:.4g} ({what})" for sigma, what in zip(self.sigmas, self.non_finite) if what]
        if not bad:
            return None
        return (f"Uncond Lab probe: non-finite predictions at sigma {', '.join(bad)} of {len(self.sigmas)} "
                f"levels (a broken merge or a float16 overflow: try full precision)")

    def level_columns(self) -> dict[str, list[float]]:
        return {"sigma": list(self.sigmas), "x0_rel_diff": list(self.x0_rel_diff),
                "cfg_rel_diff": list(self.cfg_rel_diff), "guidance_cosine": list(self.guidance_cosine)}

    def _level_non_finite(self) -> list[str]:
        return list(self.non_finite) or [""] * len(self.sigmas)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (strict JSON: +inf becomes null)."""
        return {"format": RESULT_FORMAT,
                "score": _json_float(self.score),
                "mean_x0_rel_diff": _json_float(self.mean_x0_rel_diff),
                "mean_guidance_cosine": _json_float(self.mean_guidance_cosine),
                "unet_calls": self.unet_calls, "unet_rows": self.unet_rows,
                "zero_equals_null": self.zero_equals_null, "interrupted": self.interrupted,
                "non_finite": self.non_finite_text(),
                "embedding": {key: _json_float(value) for key, value in self.embedding.items()},
                "levels": {**{key: [_json_float(v) for v in values] for key, values in self.level_columns().items()},
                           "non_finite": self._level_non_finite()},
                "settings": self.settings.as_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProbeResult":
        if data.get("format") != RESULT_FORMAT:
            raise ProbeError(f"Uncond Lab probe: expected a result of format {RESULT_FORMAT!r}, "
                             f"got {data.get('format')!r}")
        levels = data["levels"]
        non_finite = tuple(levels.get("non_finite") or ())

        def floats(column: str) -> tuple[float, ...]:  # null is +inf, or NaN on a non-finite level
            return tuple(math.nan if value is None and non_finite and non_finite[i] else _from_json_float(value)
                         for i, value in enumerate(levels[column]))

        return cls(settings=ProbeSettings.from_dict(data["settings"]),
                   sigmas=tuple(levels["sigma"]),
                   x0_rel_diff=floats("x0_rel_diff"),
                   cfg_rel_diff=floats("cfg_rel_diff"),
                   guidance_cosine=floats("guidance_cosine"),
                   embedding={key: _from_json_float(value) for key, value in data["embedding"].items()},
                   unet_calls=data["unet_calls"], unet_rows=data["unet_rows"],
                   zero_equals_null=data["zero_equals_null"], interrupted=data.get("interrupted", False),
                   non_finite=non_finite if any(non_finite) else ())

    def csv_rows(self) -> list[dict[str, float | int]]:
        """One row per noise level, columns `LEVEL_COLUMNS`."""
        return [{"level": index, "sigma": sigma, "x0_rel_diff": x0, "cfg_rel_diff": cfg, "guidance_cosine": cos,
                 "non_finite": bad}
                for index, (sigma, x0, cfg, cos, bad) in enumerate(zip(self.sigmas, self.x0_rel_diff,
                                                                       self.cfg_rel_diff, self.guidance_cosine,
                                                                       self._level_non_finite()))]

    def to_csv(self) -> str:
        return _csv_text(LEVEL_COLUMNS, self.csv_rows())


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _from_json_float(value: float | None) -> float:
    return math.inf if value is None else value


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@torch.no_grad()
def probe(denoise: Denoise, cond: Cond, null_uncond: Cond, sigma_table: Sequence[float] | torch.Tensor,
          noising: Noising, settings: ProbeSettings = ProbeSettings(), pooled_width: int = 0,
          max_rows: int | None = None, device: torch.device | str = "cpu",
          on_level: Callable[[int, int], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> ProbeResult:
    """Measure zero vs null uncond on one model (definitions in the module docstring).

    `denoise(x [R, *latent_shape] float32, sigma [R] float32, cond with R rows) -> x0 prediction [R, ...]` must
    treat rows independently. `cond` and `null_uncond` are single encodings (batch 1) on the model's device:
    tensors [1, T, C] (SD1/SD2) or mappings {"crossattn": [1, T, C], "vector": [1, D]} (SDXL, the first
    `pooled_width` columns of vector being the pooled text part); the denoiser receives plain dicts. `on_level`
    is called with (levels done, levels total) after each level. `should_stop()` is asked before every UNet
    call: true ends the probe there, with the levels finished so far and `interrupted` set.
    """
    _check_single("probe prompt cond", cond)
    _check_single("null uncond te('')", null_uncond)
    _check_finite("the probe prompt's encoding", cond)
    _check_finite("te('') (the null uncond)", null_uncond)
    if isinstance(cond, Mapping) != isinstance(null_uncond, Mapping):
        raise ProbeError("Uncond Lab probe: the cond and te('') must both be tensors or both be mappings")
    sigmas = noise_levels(sigma_table, settings.levels)
    sigma_max = float(torch.as_tensor(sigma_table, dtype=torch.float64).max())
    evaluate = _CountingDenoiser(denoise, max_rows, should_stop)
    zero = zero_uncond(null_uncond, pooled_width)
    zero_equals_null = _same_cond(zero, null_uncond)

    per_level: dict[str, list] = {"x0_rel_diff": [], "cfg_rel_diff": [], "guidance_cosine": [], "non_finite": []}
    try:
        _measure(evaluate, cond, null_uncond, zero, zero_equals_null, sigmas, sigma_max, noising, settings, device,
                 per_level, on_level)
        interrupted = False
    except _Stopped:
        interrupted = True
    done = len(per_level["cfg_rel_diff"])
    return ProbeResult(settings=settings, sigmas=tuple(sigmas[:done]),
                       x0_rel_diff=tuple(per_level["x0_rel_diff"]), cfg_rel_diff=tuple(per_level["cfg_rel_diff"]),
                       guidance_cosine=tuple(per_level["guidance_cosine"]),
                       embedding=embedding_stats(null_uncond, cond, pooled_width),
                       unet_calls=evaluate.calls, unet_rows=evaluate.rows, zero_equals_null=zero_equals_null,
                       interrupted=interrupted,
                       non_finite=tuple(per_level["non_finite"]) if any(per_level["non_finite"]) else ())


def _measure(evaluate: _CountingDenoiser, cond: Cond, null_uncond: Cond, zero: Cond, zero_equals_null: bool,
             sigmas: Sequence[float], sigma_max: float, noising: Noising, settings: ProbeSettings,
             device: torch.device | str, per_level: dict[str, list[float]],
             on_level: Callable[[int, int], None] | None) -> None:
    """The probe's loop: appends each finished level's means over seeds to `per_level`."""
    noise = seed_noise(settings.seeds, settings.latent_shape).to(device)
    reference = torch.zeros_like(noise)
    if settings.reference == "prediction":
        [reference] = evaluate(noising(reference, noise, sigma_max), sigma_max, [cond])

    for index, sigma in enumerate(sigmas):
        x = noising(reference, noise, sigma)
        if zero_equals_null:
            pred_cond, pred_null = evaluate(x, sigma, [cond, null_uncond])
            pred_zero = pred_null
        else:
            pred_cond, pred_null, pred_zero = evaluate(x, sigma, [cond, null_uncond, zero])
        predictions = {"reference": reference, "cond": pred_cond, "te('')": pred_null}
        bad = non_finite_predictions(predictions if zero_equals_null else {**predictions, "zero": pred_zero})
        per_level["non_finite"].append(bad)
        if bad:
            for metric in ("x0_rel_diff", "cfg_rel_diff", "guidance_cosine"):
                per_level[metric].append(math.nan)
        else:
            cfg_zero = cfg_combine(pred_cond, pred_zero, settings.cfg_scale)
            cfg_null = cfg_combine(pred_cond, pred_null, settings.cfg_scale)
            per_level["x0_rel_diff"].append(relative_difference(pred_zero, pred_null).mean().item())
            per_level["cfg_rel_diff"].append(relative_difference(cfg_zero, cfg_null).mean().item())
            per_level["guidance_cosine"].append(
                guidance_cosine(pred_cond - pred_zero, pred_cond - pred_null).mean().item())
        if on_level is not None:
            on_level(index + 1, len(sigmas))


# --- cache -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeKey:
    """Everything that decides a probe's numbers besides the seeds' noise.

    `model_hash` names the loaded weights, `recipe` the merge applied on top (None for none), `schedule` the
    noise levels (so switching flow/shift/ZTSNR on the same checkpoint misses), `variant` anything else the host
    knows changes the numbers (CLIP skip, parameterisation).
    """
    model_hash: str
    recipe: str | None
    settings: ProbeSettings
    schedule: tuple[float, ...]
    variant: str = ""

    @classmethod
    def for_table(cls, model_hash: str, recipe: str | None, settings: ProbeSettings,
                  sigma_table: Sequence[float] | torch.Tensor, variant: str = "") -> "ProbeKey":
        return cls(model_hash, recipe, settings, tuple(noise_levels(sigma_table, settings.levels)), variant)


class ProbeCache:
    """Least-recently-used probe results, owned by the host per WebUI session (no module-global state)."""

    def __init__(self, max_entries: int = 32):
        if max_entries < 1:
            raise ProbeError(f"Uncond Lab probe: the cache must hold at least 1 entry, got {max_entries}")
        self.max_entries = max_entries
        self.hits = self.misses = 0
        self._entries: OrderedDict[ProbeKey, ProbeResult] = OrderedDict()
        self._lock = threading.Lock()  # the API route and the UI may ask at once

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: ProbeKey) -> bool:
        return key in self._entries

    def get(self, key: ProbeKey) -> ProbeResult | None:
        with self._lock:
            result = self._entries.get(key)
            if result is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return result

    def put(self, key: ProbeKey, result: ProbeResult) -> None:
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get_or_run(self, key: ProbeKey, run: Callable[[], ProbeResult]) -> ProbeResult:
        """The cached result, or `run()` stored under `key`. The run itself is not under the lock."""
        result = self.get(key)
        if result is None:
            result = run()
            self.put(key, result)
        return result

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# --- merge-ratio sweep -----------------------------------------------------------------------------------

SWEEP_COLUMNS = ("ratio", "score", "mean_x0_rel_diff", "mean_guidance_cosine", "null_token_norm_mean",
                 "null_pooled_norm", "unet_calls")


@dataclass(frozen=True)
class RatioSweep:
    """One probe result per merge ratio (or per block-weights setting at one ratio), in the order asked; an
    interrupted sweep ends with the interrupted row's partial result (the rows after it are left out)."""
    ratios: tuple[float, ...]
    results: tuple[ProbeResult, ...]
    blocks: tuple[str | None, ...] | None = None  # a sweep of block weights: each row's (None: the plain ratio)

    @property
    def columns(self) -> tuple[str, ...]:
        return SWEEP_COLUMNS if self.blocks is None else ("ratio", "merge_blocks", *SWEEP_COLUMNS[1:])

    @property
    def interrupted(self) -> bool:
        return any(result.interrupted for result in self.results)

    def csv_rows(self) -> list[dict[str, float | int | None]]:
        """One row per ratio, columns `SWEEP_COLUMNS` (null_pooled_norm is None for SD1/SD2); a block sweep has
        a `merge_blocks` column too."""
        rows = [{"ratio": ratio, "score": result.score, "mean_x0_rel_diff": result.mean_x0_rel_diff,
                 "mean_guidance_cosine": result.mean_guidance_cosine,
                 "null_token_norm_mean": result.embedding.get("null_token_norm_mean"),
                 "null_pooled_norm": result.embedding.get("null_pooled_norm"), "unet_calls": result.unet_calls}
                for ratio, result in zip(self.ratios, self.results)]
        if self.blocks is not None:
            for row, blocks in zip(rows, self.blocks):
                row["merge_blocks"] = blocks or ""
        return rows

    def to_csv(self) -> str:
        return _csv_text(self.columns, self.csv_rows())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the per-ratio summary as columns, plus every full result."""
        columns = {name: [_json_float(row[name]) if isinstance(row[name], float) else row[name]
                          for row in self.csv_rows()] for name in self.columns}
        return {"format": RESULT_FORMAT + "/sweep", "columns": columns, "interrupted": self.interrupted,
                "results": [result.to_dict() for result in self.results]}


def sweep_ratios(ratios: Sequence[float], probe_at: Callable[[float], ProbeResult]) -> RatioSweep:
    """Probe at each merge ratio, stopping after an interrupted one. `probe_at(r)` applies the merge, probes
    (through the cache) and restores."""
    ratios = tuple(ratios)
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r)
                             for r in ratios):
        raise ProbeError(f"Uncond Lab probe: the merge ratios must be a non-empty list of finite numbers, "
                         f"got {list(ratios)}")
    results = _until_interrupted(probe_at, [float(r) for r in ratios])
    return RatioSweep(tuple(float(r) for r in ratios[:len(results)]), results)


def sweep_blocks(ratio: float, blocks: Sequence[str | None],
                 probe_at: Callable[[str | None], ProbeResult]) -> RatioSweep:
    """Probe at each block-weights setting (canonical text, None = the plain ratio) at one merge ratio."""
    blocks = tuple(blocks)
    if not blocks:
        raise ProbeError("Uncond Lab probe: the block-weights list must not be empty")
    results = _until_interrupted(probe_at, blocks)
    return RatioSweep((float(ratio),) * len(results), results, blocks[:len(results)])


def _until_interrupted(probe_at: Callable, values: Sequence) -> tuple[ProbeResult, ...]:
    """probe_at(value) for each value, stopping after the first interrupted result (kept, marked)."""
    results: list[ProbeResult] = []
    for value in values:
        results.append(probe_at(value))
        if results[-1].interrupted:
            break
    return tuple(results)
