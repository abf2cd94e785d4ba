import pytest
import torch

from lib_ext.compare import compare_variants, difference_map, mean_abs_difference
from lib_ext.settings import Settings


def test_variants_are_default_null_zero_and_the_users_blend():
    variants = compare_variants(Settings(enabled=True, zero_weight=0.3, start=0.1, end=0.6, compare=True))
    assert [v.overrides for v in variants] == [
        None,
        {"zero_weight": 0.0, "start": 0.0, "end": 1.0},
        {"zero_weight": 1.0, "start": 0.0, "end": 1.0},
        {"zero_weight": 0.3, "start": 0.1, "end": 0.6},
    ]
    assert variants[3].label == "blend w = 0.3 on [0.1, 0.6]"


def test_without_a_weight_the_users_generation_is_the_webui_default():
    variants = compare_variants(Settings(enabled=True, compare=True))
    assert variants[3].label == "yours: the WebUI's own uncond" and variants[3].overrides["zero_weight"] is None


def test_difference_map_amplifies_and_clips():
    a = torch.tensor([[[10, 200, 0]]], dtype=torch.uint8)
    b = torch.tensor([[[12, 100, 0]]], dtype=torch.uint8)
    # |10-12|*4 = 8, |200-100|*4 = 400 -> 255, 0 stays 0; no uint8 wrap-around on the subtraction
    assert difference_map(a, b).tolist() == [[[8, 255, 0]]]
    assert difference_map(b, a).tolist() == [[[8, 255, 0]]]
    assert mean_abs_difference(a, b) == pytest.approx((2 + 100 + 0) / 3)


def test_difference_map_refuses_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        difference_map(torch.zeros(2, 2, 3, dtype=torch.uint8), torch.zeros(2, 3, 3, dtype=torch.uint8))


def test_the_default_column_says_what_the_webui_feeds():
    settings = Settings(enabled=True, compare=True)
    assert compare_variants(settings)[0].label == "WebUI default (zeros)"  # A1111, reForge
    assert compare_variants(settings, "text")[0].label == 'WebUI default (te(""))'  # Forge Neo's default
