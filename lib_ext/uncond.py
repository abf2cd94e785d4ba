"""The unconditional half of CFG as a blend of the text uncond and the zero uncond, scheduled in sigma.

    uncond = (1 - w) * text + w * zero,   w = zero_weight inside [start, end] of the denoising, 0 outside.

`text` is the honest encoding of the negative prompt (for an empty negative that is te(""), the "null uncond"
ComfyUI feeds); `zero` is what A1111/reForge feed SDXL for an empty negative: cross-attention zeroed and the
pooled text part of `vector` zeroed, the size/crop embeddings kept. w = 1 everywhere is ComfyUI's
ConditioningZeroOut, w = r is ConditioningAverage(zero, text, r), and the window is ComfyUI's
ConditioningSetTimestepRange: percentages of the model's timestep range, compared in sigma, so it does not
depend on the step count or the scheduler.

A cond is a tensor [B, tokens, C] (SD1/SD2) or a mapping with "crossattn" [B, tokens, C] and "vector" [B, D]
(SDXL). Mappings are updated in place and returned, because the WebUIs pass their own dict subclass, which
must be kept; they rebuild it for every denoiser call, so nothing cached is touched.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, MutableMapping, Union

import torch

from lib_ext.settings import Settings, UncondSchedule

Cond = Union[torch.Tensor, MutableMapping[str, torch.Tensor]]
PercentToSigma = Callable[[float], float]


# --- the window ------------------------------------------------------------------------------------------

def discrete_percent_to_sigma(percent: float, sigmas: torch.Tensor) -> float:
    """ComfyUI `ModelSamplingDiscrete.percent_to_sigma` over an ascending table of the model's sigmas.

    0 % is the noisy end (an unbounded sigma, so the window is open from the first step), 100 % the clean end.
    """
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    log_sigmas = sigmas.double().log()
    t = (1.0 - percent) * (len(sigmas) - 1)
    low, frac = int(math.floor(t)), t - math.floor(t)
    high = min(low + 1, len(sigmas) - 1)
    return math.exp((1.0 - frac) * log_sigmas[low].item() + frac * log_sigmas[high].item())


@dataclass(frozen=True)
class SigmaWindow:
    """The part of the denoising where the zero weight applies, as the sigmas that bound it."""
    sigma_start: float  # the noisy bound: active while sigma <= sigma_start
    sigma_end: float    # the clean bound: active while sigma >= sigma_end

    @classmethod
    def from_percents(cls, start: float, end: float, percent_to_sigma: PercentToSigma) -> "SigmaWindow":
        return cls(percent_to_sigma(start), percent_to_sigma(end))

    def contains(self, sigma: float) -> bool:
        """ComfyUI's test in `get_area_and_mult`: outside when sigma > start or sigma < end."""
        return self.sigma_end <= sigma <= self.sigma_start


def zero_weight_at(schedule: UncondSchedule, window: SigmaWindow, sigma: float) -> float:
    return schedule.zero_weight if window.contains(sigma) else 0.0


# --- the conds -------------------------------------------------------------------------------------------

def _crossattn(cond: Cond) -> torch.Tensor:
    return cond["crossattn"] if isinstance(cond, MutableMapping) else cond


def _match_tokens(null: torch.Tensor, tokens: int) -> torch.Tensor:
    """Fit a [1, 77·k, C] encoding to `tokens`, padding with its last token like A1111's `stack_conds`."""
    if null.shape[1] >= tokens:
        return null[:, :tokens]
    pad = null[:, -1:].expand(-1, tokens - null.shape[1], -1)
    return torch.cat([null, pad], dim=1)


def webui_zeroed_rows(uncond: Cond, pooled_width: int) -> torch.Tensor:
    """Rows the WebUI zeroed itself (SDXL, empty negative): all cross-attention and the pooled part are 0.

    A real text encoding is never exactly zero, so the data tells; a model whose te("") is exactly zero is
    unaffected because substituting te("") then changes nothing.
    """
    if not isinstance(uncond, MutableMapping):
        return torch.zeros(uncond.shape[0], dtype=torch.bool, device=uncond.device)
    crossattn_zero = (uncond["crossattn"] == 0).flatten(1).all(dim=1)
    pooled_zero = (uncond["vector"][:, :pooled_width] == 0).all(dim=1)
    return crossattn_zero & pooled_zero


def restore_text_uncond(uncond: Cond, null_uncond: Cond | None, pooled_width: int) -> Cond:
    """Put te("") back into the rows the WebUI zeroed, so `uncond` is the honest text uncond everywhere.

    Only the text parts come from te(""); each row keeps its own size/crop embeddings (the pass resolution).
    """
    if null_uncond is None or not isinstance(uncond, MutableMapping):
        return uncond
    if null_uncond["crossattn"].shape[-1] != uncond["crossattn"].shape[-1]:
        return uncond  # another model's conds (the SDXL refiner switched in): te("") of the base doesn't fit
    rows = webui_zeroed_rows(uncond, pooled_width)
    if not rows.any():
        return uncond
    crossattn, vector = uncond["crossattn"].clone(), uncond["vector"].clone()
    null_crossattn = _match_tokens(null_uncond["crossattn"].to(crossattn), crossattn.shape[1])
    crossattn[rows] = null_crossattn.expand(int(rows.sum()), -1, -1)
    vector[rows, :pooled_width] = null_uncond["vector"][:, :pooled_width].to(vector)
    uncond["crossattn"], uncond["vector"] = crossattn, vector
    return uncond


def blend_toward_zero(text: Cond, zero_weight: float, pooled_width: int) -> Cond:
    """(1 - w)·text + w·zero. w = 0 returns `text` untouched and w = 1 exact zeros, as the WebUI's own."""
    if zero_weight == 0.0:
        return text
    keep = 1.0 - zero_weight

    def scaled(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t) if zero_weight == 1.0 else t * keep

    if not isinstance(text, MutableMapping):
        return scaled(text)
    vector = text["vector"].clone()
    vector[:, :pooled_width] = scaled(vector[:, :pooled_width])
    text["crossattn"], text["vector"] = scaled(text["crossattn"]), vector
    return text


def uncond_at_step(uncond: Cond, null_uncond: Cond | None, zero_weight: float, pooled_width: int) -> Cond:
    """The uncond to feed at one denoiser call: honest text uncond, then blended toward zero."""
    return blend_toward_zero(restore_text_uncond(uncond, null_uncond, pooled_width), zero_weight, pooled_width)


def embedding_norms(null_uncond: Cond, pooled_width: int) -> dict[str, float]:
    """How far te("") is from zero: mean per-token L2 norm of the cross-attention, L2 norm of the pooled part."""
    norms = {"crossattn_token_norm": _crossattn(null_uncond)[0].float().norm(dim=-1).mean().item()}
    if isinstance(null_uncond, MutableMapping):
        norms["pooled_norm"] = null_uncond["vector"][0, :pooled_width].float().norm().item()
    return norms


def _parts(cond: Cond) -> dict[str, torch.Tensor]:
    return dict(cond) if isinstance(cond, MutableMapping) else {"": cond}


def _equal_parts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _with_parts(cond: Cond, parts: dict[str, torch.Tensor]) -> Cond:
    if not isinstance(cond, MutableMapping):
        return parts[""]
    cond.update(parts)
    return cond


# --- one generation --------------------------------------------------------------------------------------

class UncondRun:
    """The uncond state of one generation: created per `p`, so nothing carries over to the next one.

    The host calls `begin_batch` with te("") once per batch (after LoRA activation), `begin_pass` before each
    sampler run, and `uncond_for_call` from its per-denoiser-call hook, which only reads this object.
    """

    def __init__(self, settings: Settings, pooled_width: int = 0):
        self.settings = settings
        self.pooled_width = pooled_width
        self.null_uncond: Cond | None = None
        self.schedule: UncondSchedule | None = None
        self.window: SigmaWindow | None = None
        self.text_encoder_calls = 0  # te("") encodings: one per batch, none per step
        self.text_encoder_seconds = 0.0
        self.denoiser_calls = 0
        self.blended_calls = 0
        self.hook_seconds = 0.0  # time spent in uncond_for_call, for the benchmark
        self._last: tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def begin_batch(self, null_uncond: Cond | None, seconds: float = 0.0, encoded: bool = True) -> None:
        """te("") of this batch (None where no WebUI zeroing is possible) and the time its encoding took (not
        `encoded`: the host had it from an earlier batch with the same text encoders and settings)."""
        self.null_uncond = null_uncond
        if null_uncond is not None and encoded:
            self.text_encoder_calls += 1
            self.text_encoder_seconds += seconds

    def begin_pass(self, hires: bool) -> None:
        """A sampler run starts; its window is resolved at its first denoiser call, once every script has
        patched the model's schedule (reForge rebuilds it per run, other scripts may patch it after us)."""
        self.schedule = self.settings.schedule(hires)
        self.window = None

    def uncond_for_call(self, uncond: Cond, sigma: float, percent_to_sigma: PercentToSigma) -> Cond:
        started = time.perf_counter()
        self.denoiser_calls += 1
        if self.schedule is None:
            return uncond
        if self.window is None:
            self.window = SigmaWindow.from_percents(self.schedule.start, self.schedule.end, percent_to_sigma)
        weight = zero_weight_at(self.schedule, self.window, sigma)
        if weight:
            self.blended_calls += 1
        uncond = self._reuse_or_compute(uncond, weight)
        self.hook_seconds += time.perf_counter() - started
        return uncond

    def _reuse_or_compute(self, uncond: Cond, weight: float) -> Cond:
        """The WebUIs rebuild the same uncond for every call (it only changes with prompt editing in the
        negative), so the previous answer is reused when the input and the weight are unchanged."""
        parts = _parts(uncond)
        if self._last is not None and self._last[0] == weight and _equal_parts(self._last[1], parts):
            return _with_parts(uncond, self._last[2])
        result = uncond_at_step(uncond, self.null_uncond, weight, self.pooled_width)
        self._last = (weight, parts, _parts(result))
        return result

    def stats(self) -> str:
        """One infotext value: what this generation cost Uncond Lab."""
        per_call_us = 1e6 * self.hook_seconds / max(self.denoiser_calls, 1)
        return (f"te calls {self.text_encoder_calls} ({1e3 * self.text_encoder_seconds:.0f} ms), denoiser calls "
                f"{self.denoiser_calls}, blended {self.blended_calls}, hook {per_call_us:.0f} us/call")
