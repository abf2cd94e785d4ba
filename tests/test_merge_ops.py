import pytest
import torch

from lib_ext.merge.ops import add_difference_into, bits_equal, weighted_sum_into

A = torch.tensor([-0.0, 1.0, 0.5, -2.0], dtype=torch.float16)
B = torch.tensor([1.0, -0.0, 0.25, 4.0], dtype=torch.float16)


def test_torch_lerp_flips_negative_zero():
    """Why the endpoints are copies: lerp(a, b, 0) turns a = -0.0 into +0.0 (and lerp(a, b, 1) does for b)."""
    assert not bits_equal(torch.lerp(A, B, 0.0), A)
    assert not bits_equal(torch.lerp(A, B, 1.0), B)


@pytest.mark.parametrize("ratio, expected", [(0.0, A), (1.0, B)])
def test_weighted_sum_endpoints_are_exact(ratio, expected):
    out = torch.empty_like(A)
    weighted_sum_into(out, A, B, ratio)
    assert bits_equal(out, expected)


def test_weighted_sum_closed_form():
    out = torch.empty_like(A)
    weighted_sum_into(out, A, B, 0.25)
    assert torch.equal(out, torch.tensor([0.25, 0.75, 0.4375, -0.5], dtype=torch.float16))  # (1-r)a + r b, exact


def test_add_difference_closed_form_and_zero():
    c = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float16)
    difference = B.float() - c.float()  # float32 D into an fp16 output: one pass, one rounding
    out = torch.empty_like(A)
    add_difference_into(out, A, difference, 2.0)
    assert torch.equal(out, torch.tensor([1.0, 0.0, 0.0, 5.0], dtype=torch.float16))
    add_difference_into(out, A, difference, 0.0)
    assert bits_equal(out, A)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_add_difference_does_not_depend_on_how_it_is_cut(dtype):
    """torch.add(alpha=) rounds half-precision elements differently in its SIMD body and scalar tail: a merge over
    the whole tensor, over pieces (mapped passes, FilePatch) or over row chunks (Save) must still agree."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        generator = torch.Generator().manual_seed(0)
        a, d = (torch.randn(300_007, generator=generator).to(dtype) for _ in range(2))
        whole, cut = torch.empty_like(a), a.clone()
        add_difference_into(whole, a, d, 0.3)
        for start in range(0, a.numel(), 777):
            piece = slice(start, start + 777)
            add_difference_into(cut[piece], cut[piece], d[piece], 0.3)  # in place, as the hosts write
        assert bits_equal(whole, cut)
        assert bits_equal(whole, torch.add(a.float(), d.float(), alpha=0.3).to(dtype))  # float32, rounded once
        assert not bits_equal(whole, a)
    finally:
        torch.set_num_threads(threads)


def test_out_may_alias_a():
    a = A.float()
    weighted_sum_into(a, a, B.float(), 0.5)
    assert torch.equal(a, (A.float() + B.float()) / 2)


def test_bits_equal():
    assert bits_equal(torch.tensor([0.0]), torch.tensor([0.0]))
    assert not bits_equal(torch.tensor([-0.0]), torch.tensor([0.0]))
    assert bits_equal(torch.tensor([float("nan")]), torch.tensor([float("nan")]))
    assert not bits_equal(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float16))
    assert not bits_equal(torch.tensor([1.0]), torch.tensor([[1.0]]))
    assert bits_equal(torch.arange(3), torch.arange(3))
