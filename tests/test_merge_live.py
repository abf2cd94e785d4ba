"""merge_live: checkpoint keys of live tensors behind A1111's hijack wrappers, the Lora extension's caches and the
float8 caches, on small hand-built modules shaped like A1111's (names as in A modules/sd_hijack.py)."""
import torch
from torch import nn

from lib_ext.merge.live import (Fp16Caches, checkpoint_key, clean_value, live_tensors, modules_by_group,
                                reset_lora_caches, unbake_lora, write_targets)


class Wrapper(nn.Module):
    """sd_hijack's wrappers: FrozenCLIPEmbedderWithCustomWords, EmbeddingsWithFixes (`.wrapped`)."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped


def sd1_like():
    model = nn.Module()
    model.model = nn.Module()
    model.model.diffusion_model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Linear(8, 8))
    clip = nn.Module()
    clip.transformer = nn.Module()
    clip.transformer.text_model = nn.Module()
    clip.transformer.text_model.embeddings = nn.Module()
    clip.transformer.text_model.embeddings.token_embedding = Wrapper(nn.Embedding(16, 8))
    clip.transformer.text_model.embeddings.register_buffer("position_ids", torch.arange(4))
    clip.transformer.text_model.attn = nn.MultiheadAttention(8, 2)
    model.cond_stage_model = Wrapper(clip)
    model.first_stage_model = nn.Conv2d(4, 3, 1)
    return model


SD1_KEYS = {
    "model.diffusion_model.0.weight", "model.diffusion_model.0.bias", "model.diffusion_model.1.weight",
    "model.diffusion_model.1.bias",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.text_model.attn.in_proj_weight",
    "cond_stage_model.transformer.text_model.attn.in_proj_bias",
    "cond_stage_model.transformer.text_model.attn.out_proj.weight",
    "cond_stage_model.transformer.text_model.attn.out_proj.bias",
    "first_stage_model.weight", "first_stage_model.bias",
}


def test_checkpoint_key_drops_wrapper_segments_only():
    assert checkpoint_key("cond_stage_model.wrapped.transformer.text_model.embeddings.token_embedding.wrapped.weight") \
        == "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    assert checkpoint_key("conditioner.embedders.1.wrapped.model.token_embedding.wrapped.weight") \
        == "conditioner.embedders.1.model.token_embedding.weight"
    assert checkpoint_key("model.diffusion_model.wrappedx.weight") == "model.diffusion_model.wrappedx.weight"


def test_live_tensors_find_every_checkpoint_key_behind_the_wrappers():
    model = sd1_like()
    found = live_tensors(model, SD1_KEYS | {"cond_stage_model.transformer.text_model.embeddings.position_ids"})
    assert set(found) == SD1_KEYS | {"cond_stage_model.transformer.text_model.embeddings.position_ids"}
    token = found["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    assert token.tensor is model.cond_stage_model.wrapped.transformer.text_model.embeddings.token_embedding.wrapped.weight
    out_proj = found["cond_stage_model.transformer.text_model.attn.out_proj.weight"]
    assert out_proj.owner is model.cond_stage_model.wrapped.transformer.text_model.attn.out_proj
    assert out_proj.parent is model.cond_stage_model.wrapped.transformer.text_model.attn
    assert set(write_targets(found)) == set(found)


def test_an_aliased_text_encoder_is_found_under_its_checkpoint_name():
    # SDXL: A1111 sets `cond_stage_model = conditioner`, so every text-encoder tensor has two names.
    model = nn.Module()
    model.conditioner = nn.Module()
    model.conditioner.embedders = nn.ModuleList([Wrapper(nn.Linear(4, 4))])
    model.cond_stage_model = model.conditioner
    found = live_tensors(model, {"conditioner.embedders.0.weight", "conditioner.embedders.0.bias"})
    assert set(found) == {"conditioner.embedders.0.weight", "conditioner.embedders.0.bias"}
    groups = modules_by_group(model, ["te"])
    # each module once: the conditioner (through its alias), embedders, the wrapper, the linear
    assert len(groups["te"]) == len({id(m) for m in groups["te"]}) == 4


def test_modules_by_group():
    model = sd1_like()
    groups = modules_by_group(model, ["unet", "vae"])
    assert model.model.diffusion_model[0] in groups["unet"] and model.first_stage_model in groups["vae"]
    assert all(m is not model.first_stage_model for m in groups["unet"])


def bake(module, names=(("lora", 1.0, 1.0, None),)):
    """What networks.network_apply_weights does: back up to the CPU, then change the weights in place."""
    with torch.no_grad():
        if isinstance(module, nn.MultiheadAttention):
            module.network_weights_backup = (module.in_proj_weight.clone(), module.out_proj.weight.clone())
            module.network_bias_backup = module.out_proj.bias.clone()
            module.in_proj_weight.add_(1.0)
            module.out_proj.weight.add_(1.0)
            module.out_proj.bias.add_(1.0)
        else:
            module.network_weights_backup = module.weight.clone()
            module.network_bias_backup = None if module.bias is None else module.bias.clone()
            module.weight.add_(1.0)
            if module.bias is not None:
                module.bias.add_(1.0)
    module.network_current_names = names


def test_unbake_puts_the_clean_weights_back_and_clean_value_reads_them():
    model = sd1_like()
    linear = model.model.diffusion_model[1]
    attention = model.cond_stage_model.wrapped.transformer.text_model.attn
    clean = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bake(linear)
    bake(attention)
    found = live_tensors(model, SD1_KEYS)
    for key, live in found.items():
        expected = clean[next(n for n in clean if checkpoint_key(n) == key)]
        assert torch.equal(clean_value(live), expected), key
    assert unbake_lora(model.modules()) == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, clean[name]), name
    assert linear.network_current_names == () and linear.network_weights_backup is not None  # backup kept
    assert unbake_lora(model.modules()) == 0


def test_unbake_drops_a_bias_the_lora_created():
    linear = nn.Linear(4, 4, bias=False)
    linear.network_weights_backup, linear.network_bias_backup = linear.weight.detach().clone(), None
    linear.network_current_names = (("lora", 1.0, 1.0, None),)
    linear.bias = nn.Parameter(torch.ones(4))  # a LoRA with a bias on a bias-less layer
    unbake_lora([linear])
    assert linear.bias is None


def test_reset_forgets_the_backups():
    model = sd1_like()
    bake(model.model.diffusion_model[1])
    assert reset_lora_caches(model.modules()) == 1
    linear = model.model.diffusion_model[1]
    assert (linear.network_current_names, linear.network_weights_backup, linear.network_bias_backup) == ((), None, None)


def test_fp16_caches_are_set_aside_and_put_back_as_the_same_objects():
    conv, plain = nn.Conv2d(4, 4, 1), nn.Linear(2, 2)
    conv.fp16_weight, conv.fp16_bias = conv.weight.detach().half(), conv.bias.detach().half()
    weight, bias = conv.fp16_weight, conv.fp16_bias
    caches = Fp16Caches()
    assert caches.set_aside([conv, plain]) == 1 and conv.fp16_weight is None and conv.fp16_bias is None
    assert caches.set_aside([conv]) == 0  # already aside: the originals are not overwritten by None
    assert caches.put_back([plain]) == 0 and len(caches) == 1
    assert caches.put_back() == 1
    assert conv.fp16_weight is weight and conv.fp16_bias is bias and not hasattr(plain, "fp16_weight")
