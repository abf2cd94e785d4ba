"""The merge arithmetic on tensors, with exact endpoints.

`torch.lerp(a, b, w)` is a + w·(b - a) for w < 0.5 and b - (b - a)·(1 - w) otherwise, so it returns a at w = 0
and b at w = 1 for all finite values except signed zeros (-0.0 + 0.0 is +0.0). The endpoints are therefore
copies, which makes "ratio 0 is A, ratio 1 is B" hold bit for bit.
"""
from __future__ import annotations

import math

import torch

from lib_ext.merge.recipe import WEIGHTED_SUM

# Mapped passes cast and merge at most this many elements of a tensor at a time, through reused buffers. The
# merge arithmetic gives each element the same bits however a tensor is cut (torch.lerp and float32 arithmetic do;
# half-precision add difference goes through float32 for it, _add_scaled_in_float32).
CHUNK_ELEMENTS = 1 << 22

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
    elif out.dtype in _HALF_DTYPES:
        _add_scaled_in_float32(out, a, difference, ratio)
    else:
        torch.add(a, difference, alpha=ratio, out=out)


_HALF_DTYPES = (torch.float16, torch.bfloat16)
_FLOAT32_PIECE = 1 << 20  # elements per float32 step of _add_scaled_in_float32 (a 4 MiB buffer)


def _add_scaled_in_float32(out: torch.Tensor, a: torch.Tensor, difference: torch.Tensor, ratio: float) -> None:
    """A + r·D for a float16/bfloat16 `out`, the same bits however the tensor is cut. torch.add(alpha=r) in half
    precision rounds an element differently in its SIMD body and its scalar tail (CPU), so its bits depend on the
    call's length and thread split (measured: whole tensor vs pieces differ in ~0.2 % of the elements with 3 or
    more threads), and a sweep's resident and mapped passes, FilePatch and "Save this merge" would disagree. In
    float32 both paths agree: A + r·D is computed there, as the float32 merge computes it, and rounded once."""
    if not out.is_contiguous():  # rare: one float32 copy of the whole tensor
        out.copy_(torch.add(a.to(torch.float32), difference.to(torch.float32), alpha=ratio))
        return
    flat_out, flat_a, flat_d = out.view(-1), a.reshape(-1), difference.reshape(-1)
    size = min(flat_out.numel(), _FLOAT32_PIECE)
    a32, d32 = (torch.empty(size, dtype=torch.float32, device=out.device) for _ in range(2))
    for start in range(0, flat_out.numel(), _FLOAT32_PIECE):
        stop = min(start + _FLOAT32_PIECE, flat_out.numel())
        piece_a, piece_d = a32[:stop - start].copy_(flat_a[start:stop]), d32[:stop - start].copy_(flat_d[start:stop])
        torch.add(piece_a, piece_d, alpha=ratio, out=piece_a)
        flat_out[start:stop].copy_(piece_a)


def bits_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bits (unlike torch.equal, tells -0.0 from 0.0 and compares NaNs by payload)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if not x.is_floating_point():
        return torch.equal(x, y)
    view = _BIT_VIEWS[x.element_size()]
    return torch.equal(x.contiguous().view(view), y.to(x.device).contiguous().view(view))


def merge_operand(method: str, b: torch.Tensor, c: torch.Tensor | None, device: torch.device, dtype: torch.dtype,
                  difference_dtype: torch.dtype | None = None, scratch: "CastBuffers | None" = None) -> torch.Tensor:
    """What a merge combines with A, on `device`: B in the compute dtype (weighted sum), or D = B − C computed in
    float32 and rounded once to `difference_dtype or dtype` (add difference). Every placement and host uses this,
    so that they all write the same bits. With `scratch`, casts go into its reused buffers."""
    scratch = scratch or _NO_SCRATCH
    if method == WEIGHTED_SUM:
        return scratch.cast("b", b, device, dtype)
    b32, c32 = scratch.cast("b", b, device, torch.float32), scratch.cast("c", c, device, torch.float32)
    difference = torch.sub(b32, c32, out=scratch.take("d32", b32.shape, device, torch.float32))
    return scratch.cast("d", difference, device, difference_dtype or dtype)


class CastBuffers:
    """Buffers reused for every cast, one per role and dtype. A fresh tensor per cast would leave glibc holding the
    freed blocks in per-thread arenas: measured in A1111, a sweep of a float32 model from float16 files grew the
    process by a whole model copy of such blocks."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def take(self, role: str, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get((role, device, dtype))
        # A buffer made under inference_mode (a generation) cannot be written outside it (a probe, a sweep route).
        stale = buffer is not None and buffer.is_inference() and not torch.is_inference_mode_enabled()
        if buffer is None or buffer.numel() < numel or stale:
            buffer = self._buffers[(role, device, dtype)] = torch.empty(max(numel, 1), device=device, dtype=dtype)
        return buffer[:numel].view(shape)

    def cast(self, role: str, tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """tensor.to(device, dtype) (copy_ casts the same way), into a buffer; no copy when it is a no-op."""
        if tensor.dtype == dtype and tensor.device == device:
            return tensor
        return self.take(role, tensor.shape, device, dtype).copy_(tensor)


class _Allocating(CastBuffers):
    """No buffers to reuse: each cast and result a new tensor (one-off callers, e.g. reForge's patches)."""

    def take(self, role, shape, device, dtype):
        return torch.empty(shape, device=device, dtype=dtype)


_NO_SCRATCH = _Allocating()


def pieces(tensor: torch.Tensor):
    """Functions that cut a tensor (and any other of its shape) into flat pieces of CHUNK_ELEMENTS; the whole
    tensor when it is small or not contiguous."""
    numel = tensor.numel()
    if numel <= CHUNK_ELEMENTS or not tensor.is_contiguous():
        return [lambda t: t]
    return [lambda t, start=start: t.reshape(-1)[start:start + CHUNK_ELEMENTS]
            for start in range(0, numel, CHUNK_ELEMENTS)]
