"""The merge arithmetic on tensors, with exact endpoints.

`torch.lerp(a, b, w)` is a + w·(b - a) for w < 0.5 and b - (b - a)·(1 - w) otherwise, so it returns a at w = 0
and b at w = 1 for all finite values except signed zeros (-0.0 + 0.0 is +0.0). The endpoints are therefore
copies, which makes "ratio 0 is A, ratio 1 is B" hold bit for bit.
"""
from __future__ import annotations

import torch

_BIT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def weighted_sum_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ratio: float) -> None:
    """`out` ← (1 - r)·A + r·B (A1111 "Weighted sum") in one pass, a copy at the endpoints; `out` may be `a`."""
    if ratio == 0.0:
        out.copy_(a)
    elif ratio == 1.0:
        out.copy_(b)
    else:
        torch.lerp(a, b, ratio, out=out)


def add_difference_into(out: torch.Tensor, a: torch.Tensor, difference: torch.Tensor, ratio: float) -> None:
    """`out` ← A + r·D (A1111 "Add difference", D = B - C precomputed) in one pass, a copy at r = 0; D may be
    wider than A (float32) and `out` may be `a`."""
    if ratio == 0.0:
        out.copy_(a)
    else:
        torch.add(a, difference, alpha=ratio, out=out)


def bits_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bits (unlike torch.equal, tells -0.0 from 0.0 and compares NaNs by payload)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if not x.is_floating_point():
        return torch.equal(x, y)
    view = _BIT_VIEWS[x.element_size()]
    return torch.equal(x.contiguous().view(view), y.to(x.device).contiguous().view(view))
