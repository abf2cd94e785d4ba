import math

import pytest

from lib_ext.merge.recipe import ADD_DIFFERENCE, WEIGHTED_SUM, MergeRecipe, RecipeError


def ws(**kw):
    return MergeRecipe(**{"method": "weighted_sum", "model_a": "/m/base.safetensors", "model_b": "/m/tuned.safetensors",
                          **kw})


def test_defaults_and_group_ratios():
    recipe = ws(unet_ratio=0.3)
    assert recipe.ratio_for("unet") == 0.3
    assert recipe.ratio_for("te") == 0.3          # follows the UNet
    assert recipe.ratio_for("vae") is None        # A's VAE unless asked
    assert recipe.ratio_for("other") is None
    assert recipe.group_ratios() == {"unet": 0.3, "te": 0.3}
    assert ws(unet_ratio=0.3, te_ratio=0.0).group_ratios() == {"unet": 0.3, "te": 0.0}
    assert ws(unet_ratio=0.3, include_vae=True).group_ratios() == {"unet": 0.3, "te": 0.3, "vae": 0.3}
    assert ws(unet_ratio=0.3, include_vae=True, vae_ratio=1).ratio_for("vae") == 1.0


def test_method_spellings():
    assert ws(method="Weighted sum").method == WEIGHTED_SUM
    assert MergeRecipe("Add difference", "a", "b", "c").method == ADD_DIFFERENCE
    assert MergeRecipe("ad", "a", "b", "c").method == ADD_DIFFERENCE


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="average"), "'method' must be one of weighted_sum, add_difference, got 'average'"),
    (dict(method="add_difference"), "'model_c' must be a model name or path, got None"),
    (dict(model_c="c.safetensors"), "'model_c' is only used by add_difference"),
    (dict(model_a=""), "'model_a' must be a model name or path"),
    (dict(model_b=None), "'model_b' must be a model name or path"),
    (dict(unet_ratio=math.nan), "'unet_ratio' must be a number in [-1, 2], got nan"),
    (dict(unet_ratio=50), "'unet_ratio' must be a number in [-1, 2], got 50"),
    (dict(unet_ratio=True), "'unet_ratio' must be a number in [-1, 2], got True"),
    (dict(unet_ratio="half"), "'unet_ratio' must be a number in [-1, 2], got 'half'"),
    (dict(te_ratio=-3), "'te_ratio' must be a number in [-1, 2], got -3"),
    (dict(vae_ratio=0.5), "'vae_ratio' (0.5) needs include_vae=true"),
    (dict(include_vae="yes"), "'include_vae' must be true or false"),
])
def test_validation_names_the_field(kwargs, message):
    with pytest.raises(RecipeError) as error:
        ws(**kwargs)
    assert message in str(error.value)


def test_ratios_parse_strings_and_ints():
    recipe = ws(unet_ratio="0.25", te_ratio=1)
    assert (recipe.unet_ratio, recipe.te_ratio) == (0.25, 1.0)


def test_dict_round_trip():
    recipe = MergeRecipe("add_difference", "a.safetensors", "b.safetensors", "c.safetensors", 0.7, 0.0, True, 0.5)
    assert MergeRecipe.from_dict(recipe.to_dict()) == recipe
    assert MergeRecipe.from_dict({"method": "weighted_sum", "model_a": "a", "model_b": "b"}).unet_ratio == 0.5


def test_from_dict_errors():
    with pytest.raises(RecipeError, match="unknown merge recipe field.*'ratio'"):
        MergeRecipe.from_dict({"method": "weighted_sum", "model_a": "a", "model_b": "b", "ratio": 0.5})
    with pytest.raises(RecipeError, match="'model_b' is missing"):
        MergeRecipe.from_dict({"method": "weighted_sum", "model_a": "a"})
    with pytest.raises(RecipeError, match="must be a JSON object"):
        MergeRecipe.from_dict(["weighted_sum"])


def test_with_ratios_validates_and_keeps_the_rest():
    recipe = ws(unet_ratio=0.3, include_vae=True, vae_ratio=0.1)
    cell = recipe.with_ratios(1.0, 0.0)
    assert (cell.unet_ratio, cell.te_ratio, cell.vae_ratio, cell.include_vae) == (1.0, 0.0, None, True)
    assert cell.ratio_for("vae") == 1.0
    assert ws().with_ratios(0.2, vae_ratio=0.9).vae_ratio is None  # no VAE merge: a VAE ratio means nothing
    with pytest.raises(RecipeError, match="'unet_ratio'"):
        recipe.with_ratios(7)


def test_describe():
    assert ws(unet_ratio=0.3).describe() == \
        "Weighted sum: (1-r)·base + r·tuned; UNet r=0.3, text encoders r=0.3, VAE of A"
    ad = MergeRecipe("add_difference", "x/a.safetensors", "b", "c.safetensors", 0.5, 0.0, True)
    assert ad.describe() == "Add difference: a + r·(b - c); UNet r=0.5, text encoders r=0, VAE r=0.5"
