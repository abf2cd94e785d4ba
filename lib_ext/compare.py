"""One-click zero vs null comparison: which variants to render and the amplified difference map."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lib_ext.settings import Settings

DIFF_GAIN = 4.0  # |zero - null| is small for most models; x4 makes a 16-level difference visible


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: dict[str, Any] | None  # Uncond Lab settings for it; None = the extension off (WebUI default)


WEBUI_UNCOND_LABELS = {"zero": "zeros", "text": 'te("")'}


def compare_variants(settings: Settings, webui_uncond: str = "zero") -> list[Variant]:
    """WebUI default, null (w = 0), zero (w = 1) and the blend the user set (their weight and window).

    `webui_uncond`: what the WebUI feeds an empty SDXL negative without us, "zero" (A1111, reForge, Forge Neo with
    `sdxl_zero_neg`) or "text" (Forge Neo's default); the first column's label says which.

    The blend repeats null or zero when the user's weight is 0 or 1 over the whole range; it is still rendered so
    the grid keeps its shape (and the user sees that it is one of the two).
    """
    if settings.zero_weight is None:  # no weight asked for: the user's generation has the WebUI's own uncond
        blend = "yours: the WebUI's own uncond"
    else:
        blend = f"blend w = {settings.zero_weight:g} on [{settings.start:g}, {settings.end:g}]"
    return [
        Variant(f"WebUI default ({WEBUI_UNCOND_LABELS[webui_uncond]})", None),
        Variant("null uncond te(\"\") (w = 0)", {"zero_weight": 0.0, "start": 0.0, "end": 1.0}),
        Variant("zero uncond (w = 1)", {"zero_weight": 1.0, "start": 0.0, "end": 1.0}),
        Variant(blend, {"zero_weight": settings.zero_weight, "start": settings.start, "end": settings.end}),
    ]


def difference_map(a: torch.Tensor, b: torch.Tensor, gain: float = DIFF_GAIN) -> torch.Tensor:
    """Per-pixel |a − b| × gain of two uint8 images [H, W, C], clipped to 255: black where they agree."""
    if a.shape != b.shape:
        raise ValueError(f"Uncond Lab: images to compare differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    difference = (a.to(torch.int16) - b.to(torch.int16)).abs().to(torch.float32) * gain
    return difference.clamp(0, 255).to(torch.uint8)


def mean_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |a − b| over all pixels and channels, in 0–255 units (printed under the difference map)."""
    return (a.to(torch.float32) - b.to(torch.float32)).abs().mean().item()
