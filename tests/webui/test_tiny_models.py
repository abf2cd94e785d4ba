"""The test-checkpoint generator: layouts the WebUIs detect, determinism, metadata, exactly-zero text encoders.

Structural checks use the specs alone (no tensors), so the full-size SD1.5 and SDXL layouts (3.5 GB for SDXL) are
checked without materialising them; tensor checks use the small SD1.5 and SDXL.
The text encoders are run through reference forwards written here from the papers' definitions (CLIP's
pre-LN transformer); where transformers / open_clip / PyYAML are installed, those are cross-checked too.
"""
from __future__ import annotations

import importlib.util
import json
import math
import zipfile

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from tests.webui import tiny_models as tm

SD15, SD15_SMALL = tm.model_size("sd15"), tm.model_size("sd15", small=True)
SDXL, SDXL_SMALL = tm.model_size("sdxl"), tm.model_size("sdxl", small=True)
UNET, CLIP_L_PREFIX = "model.diffusion_model.", "cond_stage_model.transformer."
XL_CLIP_L, XL_OPEN_CLIP = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."

needs_bpe = pytest.mark.skipif(
    not any(importlib.util.find_spec(p) for p in ("open_clip", "clip")), reason="no clip/open_clip package for the BPE table")


def _shape(spec, key):
    return spec[key][0]


# --- layouts ------------------------------------------------------------------------------------------------

def test_sd15_full_layout_is_what_reforge_detects_as_sd15():
    """reForge's SD15 match: 320 model channels, context 768, conv proj_in, no label_emb, 4 input channels."""
    spec = tm.checkpoint_spec(SD15)
    assert _shape(spec, f"{UNET}input_blocks.0.0.weight") == (320, 4, 3, 3)
    assert _shape(spec, f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight") == (320, 768)
    assert len(_shape(spec, f"{UNET}input_blocks.1.1.proj_in.weight")) == 4
    assert not any(k.startswith(f"{UNET}label_emb.") for k in spec)
    assert _shape(spec, f"{UNET}out.2.weight") == (4, 320, 3, 3)


def test_sd15_full_text_encoder_and_vae_are_full_size():
    """reForge builds CLIP-L and the VAE from fixed configs, so these must be the real shapes."""
    spec = tm.checkpoint_spec(SD15)
    te = f"{CLIP_L_PREFIX}text_model."
    assert _shape(spec, f"{te}embeddings.token_embedding.weight") == (49408, 768)
    assert _shape(spec, f"{te}embeddings.position_embedding.weight") == (77, 768)
    assert _shape(spec, f"{te}encoder.layers.11.mlp.fc1.weight") == (3072, 768)
    assert f"{te}encoder.layers.12.mlp.fc1.weight" not in spec
    assert sum(math.prod(s) for k, (s, _) in spec.items() if k.startswith(CLIP_L_PREFIX)) == 123_060_480 + 77
    assert _shape(spec, "first_stage_model.encoder.down.3.block.1.conv2.weight") == (512, 512, 3, 3)
    assert _shape(spec, "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight") == (128, 256, 1, 1)
    assert sum(math.prod(s) for k, (s, _) in spec.items() if k.startswith("first_stage_model.")) == 83_653_863


def test_sd15_has_the_ldm_schedule_buffers():
    """ldm `register_schedule` for the linear schedule: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2."""
    schedule = tm.ddpm_schedule()
    assert set(tm.SD15_SCHEDULE_KEYS) <= set(tm.checkpoint_spec(SD15))
    assert schedule["betas"][0].item() == pytest.approx(0.00085, rel=1e-6)
    assert schedule["betas"][-1].item() == pytest.approx(0.012, rel=1e-6)
    product = 1.0
    for t in range(1000):
        beta = (math.sqrt(0.00085) + t * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
        product *= 1.0 - beta
    assert schedule["alphas_cumprod"][-1].item() == pytest.approx(product, rel=1e-5)
    assert schedule["alphas_cumprod_prev"][0].item() == 1.0
    assert all(v.dtype == torch.float32 and v.shape == (1000,) for v in schedule.values())


@pytest.mark.parametrize("size", [SDXL, SDXL_SMALL], ids=["sdxl", "sdxl-small"])
def test_sdxl_layout_keeps_real_block_names_and_vector_width(size):
    spec = tm.checkpoint_spec(size)
    emb = size.unet.model_channels * 4
    # vector = pooled 1280 + 3 size embeddings of 2 x 256 = 2816, as in real SDXL
    assert _shape(spec, f"{UNET}label_emb.0.0.weight") == (emb, 1280 + 3 * 512)
    assert _shape(spec, f"{XL_OPEN_CLIP}text_projection") == (size.open_clip.width, 1280)
    assert max(int(k.split(".")[3]) for k in spec if k.startswith(f"{UNET}input_blocks.")) == 8
    assert max(int(k.split(".")[3]) for k in spec if k.startswith(f"{UNET}output_blocks.")) == 8
    # A1111 calls a model without this key SSD-1B (`is_ssd`), not SDXL
    assert f"{UNET}middle_block.1.transformer_blocks.0.attn1.to_q.weight" in spec
    context = size.clip_l.hidden + size.open_clip.width
    assert _shape(spec, f"{UNET}middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1] == context
    assert _shape(spec, f"{XL_CLIP_L}text_model.embeddings.token_embedding.weight") == (49408, size.clip_l.hidden)
    assert not any(k.startswith("cond_stage_model.") for k in spec)


def _transformer_count(spec, block):
    """The number of BasicTransformerBlocks in `<block>.1` (e.g. block = UNET + "input_blocks.4")."""
    prefix = f"{block}.1.transformer_blocks."
    return len({k[len(prefix):].split(".")[0] for k in spec if k.startswith(prefix)})


def test_sdxl_unet_is_what_reforge_detects_as_sdxl():
    """reForge reads a UNet's config off its keys (one transformer depth per input block that has a res block,
    context from attn2.to_k, adm from label_emb) and takes the first SDXL-family entry that equals it on
    model_channels, linear proj_in, transformer_depth, context_dim and adm_in_channels: here Segmind Vega's."""
    spec = tm.checkpoint_spec(SDXL)
    depths = [_transformer_count(spec, f"{UNET}input_blocks.{i}") for i in range(1, 9)
              if f"{UNET}input_blocks.{i}.0.in_layers.0.weight" in spec]
    assert depths == [0, 0, 1, 1, 2, 2]
    assert [_transformer_count(spec, f"{UNET}output_blocks.{i}") for i in range(9)] == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert _transformer_count(spec, f"{UNET}middle_block") == 2  # not matched on; A1111 needs it
    assert _shape(spec, f"{UNET}input_blocks.0.0.weight") == (320, 4, 3, 3)
    assert _shape(spec, f"{UNET}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight") == (640, 2048)
    assert len(_shape(spec, f"{UNET}input_blocks.4.1.proj_in.weight")) == 2  # linear
    assert _shape(spec, f"{UNET}label_emb.0.0.weight") == (1280, 2816)


def test_sdxl_text_encoders_and_vae_are_full_size():
    """reForge builds CLIP-L, the bigG text tower and the VAE from fixed configs: real SDXL's parameter counts."""
    spec = tm.checkpoint_spec(SDXL)
    count = lambda prefix: sum(math.prod(s) for k, (s, _) in spec.items() if k.startswith(prefix))
    assert count(XL_CLIP_L) == 123_060_480 + 77  # + the position_ids buffer, as in SD1.5
    assert count(XL_OPEN_CLIP) == 694_659_841    # SDXL's text_encoder_2 (694,659,840) + logit_scale
    assert count("first_stage_model.") == 83_653_863
    assert _shape(spec, f"{XL_OPEN_CLIP}transformer.resblocks.31.mlp.c_fc.weight") == (5120, 1280)
    assert f"{XL_OPEN_CLIP}transformer.resblocks.32.ln_1.weight" not in spec


@pytest.mark.parametrize("size", [SD15, SD15_SMALL, SDXL, SDXL_SMALL],
                         ids=["sd15", "sd15-small", "sdxl", "sdxl-small"])
def test_unet_skip_channels_add_up(size):
    """Each output block's first conv takes its input plus the matching skip: in_layers.2 in == norm width."""
    spec = tm.checkpoint_spec(size)
    for key, (shape, _) in spec.items():
        if key.endswith(".in_layers.2.weight"):
            assert _shape(spec, key.replace("in_layers.2", "in_layers.0"))[0] == shape[1]
        if key.endswith(".skip_connection.weight"):
            assert _shape(spec, key.replace("skip_connection", "in_layers.2"))[1] == shape[1]


# --- tensors ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_models():
    return {kind: tm.build_state_dict(kind, seed=1, small=True) for kind in tm.KINDS}


@pytest.mark.parametrize("kind", tm.KINDS)
def test_state_dict_matches_spec_keys_shapes_dtypes(kind, small_models):
    spec = tm.checkpoint_spec(tm.model_size(kind, small=True))
    sd = small_models[kind]
    assert list(sd) == list(spec)
    for key, tensor in sd.items():
        assert tuple(tensor.shape) == spec[key][0], key
        if key.endswith("position_ids"):
            assert tensor.dtype == torch.int64 and tensor.tolist() == [list(range(77))]
        elif key in tm.SD15_SCHEDULE_KEYS:
            assert tensor.dtype == torch.float32
        else:
            assert tensor.dtype == torch.float16, key
            assert torch.isfinite(tensor).all(), key


@pytest.mark.parametrize("kind", tm.KINDS)
def test_same_seed_same_bits_other_seed_other_weights(kind, small_models):
    again = tm.build_state_dict(kind, seed=1, small=True)
    for key, tensor in small_models[kind].items():
        assert torch.equal(tensor, again[key]), key
    random_spec = {k: v for k, v in tm.checkpoint_spec(tm.model_size(kind, True)).items()
                   if v[1] in ("weight", "weight_t", "bias", "embed") and "token_embedding" not in k}
    other = tm.materialize(random_spec, seed=2)
    assert all(not torch.equal(small_models[kind][k], other[k]) for k in random_spec)


def test_a_key_does_not_depend_on_the_other_keys(small_models):
    spec = tm.checkpoint_spec(SDXL_SMALL)
    for key in (f"{UNET}out.2.weight", f"{XL_OPEN_CLIP}text_projection"):
        assert torch.equal(tm.materialize({key: spec[key]}, seed=1)[key], small_models["sdxl"][key])


# --- the text encoders, through reference forwards -------------------------------------------------------------

def _attention(x, q, k, v, heads):
    """Causal multi-head attention over [B, T, C] (CLIP's text mask)."""
    b, t, c = x.shape
    split = lambda y: y.view(b, t, heads, c // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
    return out.transpose(1, 2).reshape(b, t, c)


def hf_clip_text_forward(sd, prefix, size, ids):
    """transformers CLIPTextModel: pre-LN blocks, quick_gelu MLP; returns (hidden_states, last_hidden_state)."""
    p = f"{prefix}text_model."
    w = lambda name: sd[p + name].float()
    x = w("embeddings.token_embedding.weight")[ids] + w("embeddings.position_embedding.weight")[: ids.shape[1]]
    hidden = [x]
    for i in range(size.layers):
        layer = f"encoder.layers.{i}."
        lin = lambda name, y: F.linear(y, w(f"{layer}{name}.weight"), w(f"{layer}{name}.bias"))
        h = F.layer_norm(x, (size.hidden,), w(f"{layer}layer_norm1.weight"), w(f"{layer}layer_norm1.bias"), 1e-5)
        x = x + lin("self_attn.out_proj", _attention(h, lin("self_attn.q_proj", h), lin("self_attn.k_proj", h),
                                                     lin("self_attn.v_proj", h), size.heads))
        h = F.layer_norm(x, (size.hidden,), w(f"{layer}layer_norm2.weight"), w(f"{layer}layer_norm2.bias"), 1e-5)
        h = lin("mlp.fc1", h)
        x = x + lin("mlp.fc2", h * torch.sigmoid(1.702 * h))
        hidden.append(x)
    last = F.layer_norm(x, (size.hidden,), w("final_layer_norm.weight"), w("final_layer_norm.bias"), 1e-5)
    return hidden, last


def open_clip_text_forward(sd, prefix, size, ids):
    """open_clip text tower as sgm's FrozenOpenCLIPEmbedder2 uses it: (penultimate, pooled)."""
    w = lambda name: sd[prefix + name].float()
    x = w("token_embedding.weight")[ids] + w("positional_embedding")[: ids.shape[1]]
    penultimate = None
    for i in range(size.layers):
        block = f"transformer.resblocks.{i}."
        if i == size.layers - 1:
            penultimate = x
        h = F.layer_norm(x, (size.width,), w(f"{block}ln_1.weight"), w(f"{block}ln_1.bias"))
        q, k, v = F.linear(h, w(f"{block}attn.in_proj_weight"), w(f"{block}attn.in_proj_bias")).chunk(3, dim=-1)
        x = x + F.linear(_attention(h, q, k, v, size.heads), w(f"{block}attn.out_proj.weight"),
                         w(f"{block}attn.out_proj.bias"))
        h = F.layer_norm(x, (size.width,), w(f"{block}ln_2.weight"), w(f"{block}ln_2.bias"))
        h = F.gelu(F.linear(h, w(f"{block}mlp.c_fc.weight"), w(f"{block}mlp.c_fc.bias")))
        x = x + F.linear(h, w(f"{block}mlp.c_proj.weight"), w(f"{block}mlp.c_proj.bias"))
    last = F.layer_norm(x, (size.width,), w("ln_final.weight"), w("ln_final.bias"))
    pooled = last[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ w("text_projection")
    return penultimate, pooled


def _prompts(pad_id):
    """Token ids of "" and of random prompts, padded to 77 the way A1111 pads (SD1: end token; OpenCLIP: 0)."""
    gen = torch.Generator().manual_seed(0)
    rows = [[49406, 49407]]
    rows += [[49406] + torch.randint(0, 49406, (n,), generator=gen).tolist() + [49407] for n in (1, 7, 75)]
    return torch.tensor([r + [pad_id] * (77 - len(r)) for r in rows])


@pytest.fixture(scope="module")
def zero_te_models():
    return {kind: tm.build_state_dict(kind, seed=1, small=True, zero_text_encoder=True) for kind in tm.KINDS}


def test_zero_text_encoder_sd15_encodes_every_prompt_to_zero(zero_te_models, small_models):
    ids = _prompts(pad_id=49407)
    hidden, last = hf_clip_text_forward(zero_te_models["sd15"], CLIP_L_PREFIX, SD15_SMALL.clip_l, ids)
    assert torch.equal(last, torch.zeros_like(last))
    assert all(torch.equal(h, torch.zeros_like(h)) for h in hidden)  # CLIP skip reads these
    _, random_last = hf_clip_text_forward(small_models["sd15"], CLIP_L_PREFIX, SD15_SMALL.clip_l, ids)
    assert random_last.abs().min(dim=-1).values.gt(0).all()  # the reference forward is not trivially zero


def test_zero_text_encoder_sdxl_zeroes_both_encoders_and_pooled(zero_te_models, small_models):
    sd = zero_te_models["sdxl"]
    hidden, _ = hf_clip_text_forward(sd, XL_CLIP_L, SDXL_SMALL.clip_l, _prompts(pad_id=49407))
    crossattn_l = hidden[SDXL_SMALL.clip_l.layers - 1]  # the yaml's layer_idx
    penultimate, pooled = open_clip_text_forward(sd, XL_OPEN_CLIP, SDXL_SMALL.open_clip, _prompts(pad_id=0))
    for t in (crossattn_l, penultimate, pooled):
        assert torch.equal(t, torch.zeros_like(t))
    assert pooled.shape == (4, 1280)
    _, random_pooled = open_clip_text_forward(small_models["sdxl"], XL_OPEN_CLIP, SDXL_SMALL.open_clip,
                                              _prompts(pad_id=0))
    assert not torch.equal(random_pooled[0], random_pooled[1])


def test_zero_text_encoder_leaves_unet_and_vae_bitwise_alone(zero_te_models, small_models):
    for kind in tm.KINDS:
        for key, tensor in small_models[kind].items():
            if key.startswith(("model.", "first_stage_model.")) or key in tm.SD15_SCHEDULE_KEYS:
                assert torch.equal(tensor, zero_te_models[kind][key]), key


# --- files ----------------------------------------------------------------------------------------------------

def test_metadata_parsing_rejects_pairs_without_equals():
    assert tm.parse_metadata(["modelspec.prediction_type=flow", "a=b=c", "empty="]) == {
        "modelspec.prediction_type": "flow", "a": "b=c", "empty": ""}
    with pytest.raises(tm.TinyModelError, match="KEY=VALUE"):
        tm.parse_metadata(["flow"])
    with pytest.raises(tm.TinyModelError, match="kind"):
        tm.model_size("sd3")


def test_safetensors_file_reads_back_with_its_metadata(tmp_path, small_models):
    """The hand-written safetensors file, read by the safetensors library: same tensors, metadata, dtypes."""
    written = tm.write_model(tmp_path, "m", "sd15", seed=1, small=True, metadata={"uncondlab.objective": "flow"},
                             a1111_files=False)
    with safe_open(str(written.checkpoint), "pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == sorted(small_models["sd15"])
        for key, tensor in small_models["sd15"].items():
            assert torch.equal(f.get_tensor(key), tensor), key
    assert meta["uncondlab.objective"] == "flow"
    assert meta["uncondlab.kind"] == "sd15" and meta["uncondlab.seed"] == "1"
    assert meta["uncondlab.zero_text_encoder"] == "false" and meta["uncondlab.small"] == "true"
    assert json.loads(meta["uncondlab.sizes"])["unet"]["context_dim"] == SD15_SMALL.clip_l.hidden
    assert written.yaml is None and not (tmp_path / "m.yaml").exists()
    scalar = tmp_path / "scalar.safetensors"
    tm.save_safetensors({"s": torch.tensor(2.5, dtype=torch.bfloat16)}, scalar, {})
    with safe_open(str(scalar), "pt") as f:
        assert f.get_tensor("s").item() == 2.5 and f.get_tensor("s").shape == ()


@needs_bpe
def test_clip_vocab_is_openai_clip_l(tmp_path):
    """Token ids of CLIP-L's tokenizer: "a photo of a cat" -> 49406 320 1125 539 320 2368 49407."""
    vocab, merges = tm.clip_vocab_and_merges(tm.find_clip_bpe())
    assert len(vocab) == 49408 and len(merges) == 48894
    assert [vocab[t] for t in ("a</w>", "photo</w>", "of</w>", "cat</w>")] == [320, 1125, 539, 2368]
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and vocab[",</w>"] == 267


@needs_bpe
def test_a1111_files_sdxl(tmp_path):
    hub = tmp_path / "hub"
    written = tm.write_model(tmp_path / "models", "x", "sdxl", seed=1, small=True, hf_cache=hub)
    assert written.open_clip_arch == f"hf-hub:{SDXL_SMALL.open_clip.repo_id}"
    repo = hub / ("models--" + SDXL_SMALL.open_clip.repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text()
    config = json.loads((snapshot / "open_clip_config.json").read_text())
    assert config["model_cfg"]["embed_dim"] == 1280 and config["model_cfg"]["text_cfg"]["width"] == 64
    weights_file = snapshot / "open_clip_pytorch_model.bin"
    assert not zipfile.is_zipfile(weights_file)  # A1111's safe unpickler rejects torch's new zip entries
    weights = torch.load(weights_file, weights_only=True)
    assert {f"{XL_OPEN_CLIP}{k}" for k in weights if not k.startswith("visual.")} == {
        k for k in tm.checkpoint_spec(SDXL_SMALL) if k.startswith(XL_OPEN_CLIP)}
    folder = written.text_config_folder
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == SDXL_SMALL.clip_l.hidden
    assert (folder / "merges.txt").read_text().startswith("#version: 0.2\ni n\n")
    yaml_text = written.yaml.read_text()
    assert f'version: "{folder}"' in yaml_text and f'arch: "{written.open_clip_arch}"' in yaml_text


@needs_bpe
def test_yaml_round_trips(tmp_path):
    yaml = pytest.importorskip("yaml")
    written = tm.write_model(tmp_path, "s", "sd15", seed=1, small=True)
    loaded = yaml.safe_load(written.yaml.read_text())
    assert loaded == tm.sd15_config(SD15_SMALL, str(written.text_config_folder))
    xl = tm.sdxl_config(SDXL, "/x/clip", "hf-hub:o/n")
    assert yaml.safe_load("\n".join(tm.to_yaml(xl))) == xl


def test_sdxl_yaml_gives_a1111_this_unet_and_the_bigg_text_tower():
    """A1111's sgm UNetModel takes one transformer depth per level plus the middle's; its FrozenOpenCLIPEmbedder2
    builds open_clip's own ViT-bigG-14 (on the meta device, the checkpoint fills it); SD1.5's ldm UNet one depth."""
    params = tm.sdxl_config(SDXL, "/x/clip", "ViT-bigG-14")["model"]["params"]
    unet = params["network_config"]["params"]
    assert (unet["transformer_depth"], unet["transformer_depth_middle"]) == ([0, 1, 2], 2)
    assert (unet["attention_resolutions"], unet["context_dim"], unet["adm_in_channels"]) == ([2, 4], 2048, 2816)
    assert (unet["model_channels"], unet["num_head_channels"], unet["use_linear_in_transformer"]) == (320, 64, True)
    embedders = params["conditioner_config"]["params"]["emb_models"]
    assert embedders[0]["params"] == {"layer": "hidden", "layer_idx": 11, "version": "/x/clip"}
    assert embedders[1]["params"]["arch"] == "ViT-bigG-14" and embedders[1]["params"]["version"] is None
    assert params["first_stage_config"]["params"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4]
    assert tm.sd15_config(SD15, "/x/clip")["model"]["params"]["unet_config"]["params"]["transformer_depth"] == 1
    mixed = tm.UnetSize(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 2),
                        transformer_depth_middle=1, context_dim=64, use_linear_in_transformer=False, num_heads=2)
    with pytest.raises(tm.TinyModelError, match="one transformer depth"):
        tm._unet_params(mixed, ldm=True)


def test_streamed_file_is_the_in_memory_file(tmp_path, small_models):
    """write_model makes one tensor at a time; the bytes are those of the whole state dict written at once."""
    written = tm.write_model(tmp_path, "s", "sdxl", seed=1, small=True, a1111_files=False)
    with safe_open(str(written.checkpoint), "pt") as f:
        metadata = f.metadata()
    tm.save_safetensors(small_models["sdxl"], tmp_path / "whole.safetensors", metadata)
    assert written.checkpoint.read_bytes() == (tmp_path / "whole.safetensors").read_bytes()


def test_a_tensor_unlike_its_header_stops_the_write_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    layout = {"a": ((2,), torch.float16), "b": ((3,), torch.float16)}
    with pytest.raises(tm.TinyModelError, match=r"b: got \(2,\)"):
        tm.write_safetensors(layout, lambda key: torch.zeros(2, dtype=torch.float16), path, {})
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_deterministic_files(tmp_path):
    args = ["--kind", "sd15", "--small", "--seed", "7", "--name", "c", "--safetensors-only", "--zero-text-encoder",
            "--metadata", "k=v", "--metadata", "a=b"]
    assert tm.main(["--out", str(tmp_path / "1"), *args]) == 0
    assert tm.main(["--out", str(tmp_path / "2"), *args]) == 0
    assert (tmp_path / "1" / "c.safetensors").read_bytes() == (tmp_path / "2" / "c.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        tm.main(["--out", str(tmp_path), "--name", "../escape"])


# --- cross-checks against the real libraries, where installed ---------------------------------------------------

@needs_bpe
def test_transformers_clip_matches_spec_and_reference(tmp_path, small_models):
    transformers = pytest.importorskip("transformers")
    written = tm.write_model(tmp_path, "s", "sd15", seed=1, small=True, a1111_files=True)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(str(written.text_config_folder)))
    sd = {k[len(CLIP_L_PREFIX):]: v.float() for k, v in small_models["sd15"].items() if k.startswith(CLIP_L_PREFIX)}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in sd.items() if k in expected} == expected
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=True)
    ids = _prompts(pad_id=49407)
    with torch.no_grad():
        out = model(input_ids=ids).last_hidden_state
    _, reference = hf_clip_text_forward(small_models["sd15"], CLIP_L_PREFIX, SD15_SMALL.clip_l, ids)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(written.text_config_folder))
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_open_clip_loads_the_hub_model_and_matches_reference(tmp_path, small_models, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    arch = tm.write_open_clip_hub_model(tmp_path, SDXL_SMALL.open_clip)
    model = open_clip.create_model(arch, cache_dir=str(tmp_path))
    text = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    ours = {k[len(XL_OPEN_CLIP):]: v.float() for k, v in small_models["sdxl"].items() if k.startswith(XL_OPEN_CLIP)}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in text.items()}
    model.load_state_dict(ours, strict=False)
    ids = _prompts(pad_id=0)
    with torch.no_grad():
        pooled = model.encode_text(ids)
    _, reference = open_clip_text_forward(small_models["sdxl"], XL_OPEN_CLIP, SDXL_SMALL.open_clip, ids)
    torch.testing.assert_close(pooled, reference, atol=1e-4, rtol=1e-4)


@needs_bpe
def test_sdxl_text_encoders_have_the_shapes_of_open_clip_bigg_and_transformers_clip_l(tmp_path):
    """The real-size SDXL's text towers, key for key, against the libraries' own models (built on the meta device)."""
    open_clip = pytest.importorskip("open_clip")
    transformers = pytest.importorskip("transformers")
    spec = tm.checkpoint_spec(SDXL)
    with torch.device("meta"):
        bigg = open_clip.create_model("ViT-bigG-14", pretrained=None, device="meta")
    expected = {XL_OPEN_CLIP + k: tuple(v.shape) for k, v in bigg.state_dict().items() if not k.startswith("visual.")}
    assert {k: _shape(spec, k) for k in spec if k.startswith(XL_OPEN_CLIP)} == expected
    folder = tm.write_clip_text_folder(tmp_path / "clip", SDXL.clip_l, tm.find_clip_bpe())
    with torch.device("meta"):
        clip_l = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(str(folder)))
    expected = {XL_CLIP_L + k: tuple(v.shape) for k, v in clip_l.state_dict().items()}
    assert {k: _shape(spec, k) for k in spec if k.startswith(XL_CLIP_L)} == expected


def test_text_encoder_seed_shares_the_text_encoders_only(tmp_path):
    """The SDXL merge pair shares its text encoders (a merge of them then costs no memory in the tests)."""
    a = tm.write_model(tmp_path, "a", "sdxl", seed=1, small=True, a1111_files=False)
    b = tm.write_model(tmp_path, "b", "sdxl", seed=2, small=True, a1111_files=False, text_encoder_seed=1)
    with safe_open(str(a.checkpoint), "pt") as fa, safe_open(str(b.checkpoint), "pt") as fb:
        assert fb.metadata()["uncondlab.text_encoder_seed"] == "1"
        assert "uncondlab.text_encoder_seed" not in fa.metadata()
        for key in fa.keys():
            same = torch.equal(fa.get_tensor(key), fb.get_tensor(key))
            assert same == (tm.is_text_encoder_key(key) or key.endswith("position_ids")), key
