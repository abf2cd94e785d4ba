"""Random-weight SD1.5 and SDXL test checkpoints for the WebUI integration tests.

Writes `<name>.safetensors` with the key names and layouts of real checkpoints, and for A1111 the `<name>.yaml`
it reads next to a checkpoint, plus the local folders that yaml points to, so that nothing is fetched from a hub:

    python -m tests.webui.tiny_models --out DIR --kind sdxl --seed 1 --name uncondlab-vega-sdxl-a \
        [--zero-text-encoder] [--metadata KEY=VALUE ...] [--small | --base]

Layouts (A1111 1.10 names; `P` = the prefix of the part):
- sd15: `model.diffusion_model.*` (ldm UNet, 320 channels, one level: reForge's SD1.5 detection needs 320
  channels and context 768, not the block count), `cond_stage_model.transformer.text_model.*` (full CLIP-L, which
  reForge builds from its own fixed config), `first_stage_model.*` (full SD VAE, same reason) and the DDPM
  schedule buffers (`alphas_cumprod`, ...) of real SD1.5 files. `--small` shrinks CLIP-L and the VAE for CI; such
  a file loads in A1111 (through its yaml), not in reForge.
- sdxl: sgm `DiffusionEngine` names. `conditioner.embedders.0.transformer.text_model.*` is CLIP-L (hidden layer 11,
  i.e. the penultimate), `conditioner.embedders.1.model.*` the OpenCLIP ViT-bigG-14 text tower (1280 wide, 32
  layers; penultimate layer for crossattn, `ln_final` + `text_projection` for the 1280-wide pooled vector),
  `first_stage_model.*` the SD/SDXL VAE: the real sizes, because reForge builds both text encoders and the VAE
  from its own fixed configs. The UNet is the smallest one reForge still calls SDXL: it matches SDXL-family UNets
  by `model_channels` 320, `context_dim` 2048, `adm_in_channels` 2816 and the exact per-block `transformer_depth`
  list, whose smallest known entry is Segmind Vega's [0, 0, 1, 1, 2, 2] (levels of 320/640/1280 channels with 0/1/2
  transformer blocks, 2 res blocks each). Vega has no middle-block transformer, which A1111 takes for SSD-1B and
  cannot load; this file has one of depth 2 (reForge does not match on it), and its yaml tells A1111
  `transformer_depth: [0, 1, 2]`, `transformer_depth_middle: 2`. About 1.65 B parameters, 3.3 GB in fp16.
  As in real SDXL: vector = [pooled (1280) | original_size (512) | crop_coords (512) | target_size (512)] = 2816,
  so `vector[:, :1280]` is the pooled text part; crossattn = [CLIP-L hidden | OpenCLIP penultimate] = 768 + 1280.
  `--base` is SDXL base's UNet (input depths [0, 0, 2, 2, 10, 10], middle 10; 2.57 B parameters, 6.9 GB with the
  text encoders and VAE in fp16): Forge Neo recognises SDXL only by base's input depths (no Vega entry), and
  A1111's sgm UNet builds output blocks as deep as the input ones, so it is the one SDXL file all three load.
  `--small` is the old tiny SDXL (text encoders 64 wide, 32-channel UNet with the real block names; A1111 only):
  open_clip knows no architecture that small, so its yaml names it `hf-hub:uncondlab/...`, a model folder this
  script writes into the local Hugging Face cache (`--hf-cache`, default: where huggingface_hub looks, honouring
  HF_HUB_CACHE / HF_HOME); run the WebUI with HF_HUB_OFFLINE=1 so open_clip takes it from there.

Every tensor is drawn from its own generator seeded by (seed, key), so files are reproducible bit for bit (the
`__metadata__` is written sorted) and a key's values do not depend on which other keys exist. Tensors are
generated and written one at a time, so writing a 3.3 GB file needs a few hundred MB of memory, not the file's
size. `--zero-text-encoder` zeroes the token and position embeddings, every residual-branch output projection and
the final LayerNorm bias of each text encoder: the residual stream then stays exactly 0, so every prompt
(including "") encodes to exactly 0, pooled output too. In A1111 such a file needs the `emphasis` option set to
"No norm", "Ignore" or "None": the default "Original" rescales the cond by old_mean / new_mean = 0 / 0 and the UNet
then fails A1111's NaN check.

Needs only torch (it writes the safetensors format itself); the CLIP tokenizer files come from the BPE table
that the `clip` or `open_clip` package ships (k-diffusion depends on `clip`).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import math
import os
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

KINDS = ("sd15", "sdxl")
GENERATOR = "uncondlab tests/webui/tiny_models.py"
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT = 77
HF_REPO_OWNER = "uncondlab"


class TinyModelError(ValueError):
    """An option of the generator is invalid; the message names it and says what is allowed."""


# --- architecture sizes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipTextSize:
    """A Hugging Face `CLIPTextModel` (CLIP-L is hidden 768, 12 layers, 12 heads, MLP 3072)."""
    hidden: int
    layers: int
    heads: int
    intermediate: int

    @property
    def folder_name(self) -> str:
        return f"clip-text-h{self.hidden}-l{self.layers}-a{self.heads}-i{self.intermediate}"


@dataclass(frozen=True)
class OpenClipTextSize:
    """An open_clip text tower (ViT-bigG-14's is width 1280, 32 layers, 20 heads, embed_dim 1280)."""
    width: int
    layers: int
    heads: int
    embed_dim: int  # width of the pooled output (text_projection)

    @property
    def repo_id(self) -> str:
        return f"{HF_REPO_OWNER}/tiny-openclip-w{self.width}-l{self.layers}-a{self.heads}-e{self.embed_dim}"


@dataclass(frozen=True)
class VaeSize:
    """ldm/sgm `AutoencoderKL` (SD's is ch 128, ch_mult 1,2,4,4, 2 res blocks): 8x down with 4 levels."""
    ch: int
    ch_mult: Tuple[int, ...]
    num_res_blocks: int
    z_channels: int = 4


@dataclass(frozen=True)
class UnetSize:
    """ldm/sgm `UNetModel` hyper-parameters that decide the state-dict layout."""
    model_channels: int
    channel_mult: Tuple[int, ...]
    num_res_blocks: int
    transformer_depth: Tuple[int, ...]  # per level of channel_mult: SpatialTransformer depth, 0 = none
    transformer_depth_middle: int       # the middle block's (A1111 needs one: without it, it is SSD-1B)
    context_dim: int
    use_linear_in_transformer: bool
    num_heads: int = -1          # ldm style (SD1.5: 8), or
    num_head_channels: int = -1  # sgm style (SDXL: 64)
    adm_in_channels: Optional[int] = None
    in_channels: int = 4
    out_channels: int = 4

    @property
    def attention_levels(self) -> Tuple[int, ...]:
        """Indices into channel_mult whose blocks carry a SpatialTransformer."""
        return tuple(level for level, depth in enumerate(self.transformer_depth) if depth)


@dataclass(frozen=True)
class ModelSize:
    kind: str
    unet: UnetSize
    vae: VaeSize
    clip_l: ClipTextSize
    open_clip: Optional[OpenClipTextSize] = None


CLIP_L = ClipTextSize(hidden=768, layers=12, heads=12, intermediate=3072)
OPEN_CLIP_BIGG = OpenClipTextSize(width=1280, layers=32, heads=20, embed_dim=1280)  # ViT-bigG-14's text tower
SD_VAE = VaeSize(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)  # SD1.x and SDXL share this layout
TINY_VAE = VaeSize(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1)  # GroupNorm(32) needs multiples of 32
TINY_CLIP_L = ClipTextSize(hidden=64, layers=2, heads=2, intermediate=256)
TINY_OPEN_CLIP = OpenClipTextSize(width=64, layers=2, heads=2, embed_dim=1280)
SDXL_ADM_CHANNELS = 1280 + 3 * 512  # pooled + 3 ConcatTimestepEmbedderND(outdim=256)

SIZES: Dict[Tuple[str, str], ModelSize] = {
    ("sd15", "default"): ModelSize(
        kind="sd15",
        unet=UnetSize(model_channels=320, channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,),
                      transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, num_heads=8),
        vae=SD_VAE, clip_l=CLIP_L),
    ("sd15", "small"): ModelSize(
        kind="sd15",
        unet=UnetSize(model_channels=32, channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,),
                      transformer_depth_middle=1, context_dim=TINY_CLIP_L.hidden, use_linear_in_transformer=False,
                      num_heads=2),
        vae=TINY_VAE, clip_l=TINY_CLIP_L),
    # Segmind Vega's UNet plus a middle transformer (see the module docstring): what reForge loads as SDXL.
    ("sdxl", "default"): ModelSize(
        kind="sdxl",
        unet=UnetSize(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 1, 2),
                      transformer_depth_middle=2, context_dim=CLIP_L.hidden + OPEN_CLIP_BIGG.width,
                      use_linear_in_transformer=True, num_head_channels=64, adm_in_channels=SDXL_ADM_CHANNELS),
        vae=SD_VAE, clip_l=CLIP_L, open_clip=OPEN_CLIP_BIGG),
    # SDXL's block structure (3 levels, 2 res blocks, attention on levels 2 and 3: input_blocks 0-8, middle,
    # output_blocks 0-8 as in real SDXL, so block-wise merges see the real names), 32 channels wide.
    ("sdxl", "small"): ModelSize(
        kind="sdxl",
        unet=UnetSize(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 1, 1),
                      transformer_depth_middle=1, context_dim=TINY_CLIP_L.hidden + TINY_OPEN_CLIP.width,
                      use_linear_in_transformer=True, num_head_channels=32, adm_in_channels=SDXL_ADM_CHANNELS),
        vae=TINY_VAE, clip_l=TINY_CLIP_L, open_clip=TINY_OPEN_CLIP),
    # SDXL base's UNet (2.57 B parameters): Forge Neo recognises SDXL only by base's input depths, and A1111's sgm
    # UNet builds output blocks as deep as the input ones, so this is the one SDXL file all three WebUIs load.
    ("sdxl", "base"): ModelSize(
        kind="sdxl",
        unet=UnetSize(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 2, 10),
                      transformer_depth_middle=10, context_dim=CLIP_L.hidden + OPEN_CLIP_BIGG.width,
                      use_linear_in_transformer=True, num_head_channels=64, adm_in_channels=SDXL_ADM_CHANNELS),
        vae=SD_VAE, clip_l=CLIP_L, open_clip=OPEN_CLIP_BIGG),
}


def model_size(kind: str, small: bool = False, base: bool = False) -> ModelSize:
    if kind not in KINDS:
        raise TinyModelError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if base and (small or kind != "sdxl"):
        raise TinyModelError("--base is SDXL base's UNet: only with --kind sdxl, not with --small")
    return SIZES[(kind, "small" if small else "base" if base else "default")]


# --- state-dict specs: key -> (shape, init) ------------------------------------------------------------
# init: "weight" (normal / sqrt(fan_in)), "weight_t" (same, fan_in = shape[0], for x @ W), "bias", "norm_w",
# "norm_b", "embed", "logit_scale", "position_ids", or "schedule:<name>".

Spec = Dict[str, Tuple[Tuple[int, ...], str]]


def _linear(spec: Spec, key: str, out_f: int, in_f: int, bias: bool = True) -> None:
    spec[f"{key}.weight"] = ((out_f, in_f), "weight")
    if bias:
        spec[f"{key}.bias"] = ((out_f,), "bias")


def _conv(spec: Spec, key: str, out_c: int, in_c: int, k: int) -> None:
    spec[f"{key}.weight"] = ((out_c, in_c, k, k), "weight")
    spec[f"{key}.bias"] = ((out_c,), "bias")


def _norm(spec: Spec, key: str, channels: int) -> None:
    spec[f"{key}.weight"] = ((channels,), "norm_w")
    spec[f"{key}.bias"] = ((channels,), "norm_b")


def clip_text_spec(prefix: str, size: ClipTextSize) -> Spec:
    """transformers `CLIPTextModel` (4.30, where `position_ids` is still a saved buffer)."""
    spec: Spec = {}
    p = f"{prefix}text_model."
    spec[f"{p}embeddings.token_embedding.weight"] = ((CLIP_VOCAB_SIZE, size.hidden), "embed")
    spec[f"{p}embeddings.position_embedding.weight"] = ((CLIP_CONTEXT, size.hidden), "embed")
    spec[f"{p}embeddings.position_ids"] = ((1, CLIP_CONTEXT), "position_ids")
    for i in range(size.layers):
        layer = f"{p}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _linear(spec, f"{layer}self_attn.{proj}", size.hidden, size.hidden)
        _norm(spec, f"{layer}layer_norm1", size.hidden)
        _linear(spec, f"{layer}mlp.fc1", size.intermediate, size.hidden)
        _linear(spec, f"{layer}mlp.fc2", size.hidden, size.intermediate)
        _norm(spec, f"{layer}layer_norm2", size.hidden)
    _norm(spec, f"{p}final_layer_norm", size.hidden)
    return spec


def open_clip_text_spec(prefix: str, size: OpenClipTextSize) -> Spec:
    """open_clip `CLIP` text tower (what sgm's FrozenOpenCLIPEmbedder2 keeps after `del model.visual`)."""
    spec: Spec = {
        f"{prefix}positional_embedding": ((CLIP_CONTEXT, size.width), "embed"),
        f"{prefix}text_projection": ((size.width, size.embed_dim), "weight_t"),
        f"{prefix}logit_scale": ((), "logit_scale"),
        f"{prefix}token_embedding.weight": ((CLIP_VOCAB_SIZE, size.width), "embed"),
    }
    spec.update(_open_clip_resblocks(f"{prefix}transformer.", size.width, size.layers))
    _norm(spec, f"{prefix}ln_final", size.width)
    return spec


def _open_clip_resblocks(prefix: str, width: int, layers: int, mlp_ratio: int = 4) -> Spec:
    spec: Spec = {}
    for i in range(layers):
        block = f"{prefix}resblocks.{i}."
        _norm(spec, f"{block}ln_1", width)
        spec[f"{block}attn.in_proj_weight"] = ((3 * width, width), "weight")
        spec[f"{block}attn.in_proj_bias"] = ((3 * width,), "bias")
        _linear(spec, f"{block}attn.out_proj", width, width)
        _norm(spec, f"{block}ln_2", width)
        _linear(spec, f"{block}mlp.c_fc", mlp_ratio * width, width)
        _linear(spec, f"{block}mlp.c_proj", width, mlp_ratio * width)
    return spec


TINY_VISION_CFG = {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16}


def _open_clip_visual_spec(embed_dim: int) -> Spec:
    """open_clip `VisionTransformer` for TINY_VISION_CFG: only there so the hf-hub weights load strictly."""
    cfg = TINY_VISION_CFG
    width, grid = cfg["width"], cfg["image_size"] // cfg["patch_size"]
    spec: Spec = {
        "visual.class_embedding": ((width,), "embed"),
        "visual.positional_embedding": ((grid * grid + 1, width), "embed"),
        "visual.proj": ((width, embed_dim), "weight_t"),
        "visual.conv1.weight": ((width, 3, cfg["patch_size"], cfg["patch_size"]), "weight"),
    }
    _norm(spec, "visual.ln_pre", width)
    spec.update(_open_clip_resblocks("visual.transformer.", width, cfg["layers"]))
    _norm(spec, "visual.ln_post", width)
    return spec


def _resnet_block(spec: Spec, key: str, in_c: int, out_c: int) -> None:
    """ldm `ResnetBlock` of the VAE (no time embedding)."""
    _norm(spec, f"{key}.norm1", in_c)
    _conv(spec, f"{key}.conv1", out_c, in_c, 3)
    _norm(spec, f"{key}.norm2", out_c)
    _conv(spec, f"{key}.conv2", out_c, out_c, 3)
    if in_c != out_c:
        _conv(spec, f"{key}.nin_shortcut", out_c, in_c, 1)


def _vae_mid(spec: Spec, key: str, channels: int) -> None:
    _resnet_block(spec, f"{key}.block_1", channels, channels)
    _norm(spec, f"{key}.attn_1.norm", channels)
    for conv in ("q", "k", "v", "proj_out"):
        _conv(spec, f"{key}.attn_1.{conv}", channels, channels, 1)
    _resnet_block(spec, f"{key}.block_2", channels, channels)


def vae_spec(prefix: str, size: VaeSize) -> Spec:
    """ldm `AutoencoderKL`: `Encoder`, `Decoder`, `quant_conv`, `post_quant_conv` (no attention resolutions)."""
    spec: Spec = {}
    ch, mult, z = size.ch, size.ch_mult, size.z_channels
    enc = f"{prefix}encoder"
    _conv(spec, f"{enc}.conv_in", ch, 3, 3)
    block_in = ch
    for level, m in enumerate(mult):
        for i in range(size.num_res_blocks):
            _resnet_block(spec, f"{enc}.down.{level}.block.{i}", block_in, ch * m)
            block_in = ch * m
        if level != len(mult) - 1:
            _conv(spec, f"{enc}.down.{level}.downsample.conv", block_in, block_in, 3)
    _vae_mid(spec, f"{enc}.mid", block_in)
    _norm(spec, f"{enc}.norm_out", block_in)
    _conv(spec, f"{enc}.conv_out", 2 * z, block_in, 3)

    dec = f"{prefix}decoder"
    block_in = ch * mult[-1]
    _conv(spec, f"{dec}.conv_in", block_in, z, 3)
    _vae_mid(spec, f"{dec}.mid", block_in)
    for level in reversed(range(len(mult))):
        for i in range(size.num_res_blocks + 1):
            _resnet_block(spec, f"{dec}.up.{level}.block.{i}", block_in, ch * mult[level])
            block_in = ch * mult[level]
        if level != 0:
            _conv(spec, f"{dec}.up.{level}.upsample.conv", block_in, block_in, 3)
    _norm(spec, f"{dec}.norm_out", block_in)
    _conv(spec, f"{dec}.conv_out", 3, block_in, 3)

    _conv(spec, f"{prefix}quant_conv", 2 * z, 2 * z, 1)
    _conv(spec, f"{prefix}post_quant_conv", z, z, 1)
    return spec


def _unet_resblock(spec: Spec, key: str, in_c: int, out_c: int, emb_c: int) -> None:
    """openaimodel `ResBlock`: in_layers (GroupNorm, SiLU, conv), emb_layers, out_layers, 1x1 skip if needed."""
    _norm(spec, f"{key}.in_layers.0", in_c)
    _conv(spec, f"{key}.in_layers.2", out_c, in_c, 3)
    _linear(spec, f"{key}.emb_layers.1", out_c, emb_c)
    _norm(spec, f"{key}.out_layers.0", out_c)
    _conv(spec, f"{key}.out_layers.3", out_c, out_c, 3)
    if in_c != out_c:
        _conv(spec, f"{key}.skip_connection", out_c, in_c, 1)


def _spatial_transformer(spec: Spec, key: str, channels: int, depth: int, size: UnetSize) -> None:
    """`SpatialTransformer` with `BasicTransformerBlock`s (GEGLU feed-forward); inner dim = channels."""
    _norm(spec, f"{key}.norm", channels)
    if size.use_linear_in_transformer:
        _linear(spec, f"{key}.proj_in", channels, channels)
    else:
        _conv(spec, f"{key}.proj_in", channels, channels, 1)
    for d in range(depth):
        block = f"{key}.transformer_blocks.{d}"
        for attn, ctx in (("attn1", channels), ("attn2", size.context_dim)):
            _linear(spec, f"{block}.{attn}.to_q", channels, channels, bias=False)
            _linear(spec, f"{block}.{attn}.to_k", channels, ctx, bias=False)
            _linear(spec, f"{block}.{attn}.to_v", channels, ctx, bias=False)
            _linear(spec, f"{block}.{attn}.to_out.0", channels, channels)
        _linear(spec, f"{block}.ff.net.0.proj", channels * 4 * 2, channels)
        _linear(spec, f"{block}.ff.net.2", channels, channels * 4)
        for n in ("norm1", "norm2", "norm3"):
            _norm(spec, f"{block}.{n}", channels)
    if size.use_linear_in_transformer:
        _linear(spec, f"{key}.proj_out", channels, channels)
    else:
        _conv(spec, f"{key}.proj_out", channels, channels, 1)


def unet_spec(prefix: str, size: UnetSize) -> Spec:
    """openaimodel `UNetModel` (ldm and sgm share the layout), walked in the order its __init__ builds it."""
    spec: Spec = {}
    mc, emb_c = size.model_channels, size.model_channels * 4
    _linear(spec, f"{prefix}time_embed.0", emb_c, mc)
    _linear(spec, f"{prefix}time_embed.2", emb_c, emb_c)
    if size.adm_in_channels is not None:
        _linear(spec, f"{prefix}label_emb.0.0", emb_c, size.adm_in_channels)
        _linear(spec, f"{prefix}label_emb.0.2", emb_c, emb_c)
    _conv(spec, f"{prefix}input_blocks.0.0", mc, size.in_channels, 3)

    skip_channels, ch, index = [mc], mc, 1
    for level, mult in enumerate(size.channel_mult):
        for _ in range(size.num_res_blocks):
            _unet_resblock(spec, f"{prefix}input_blocks.{index}.0", ch, mult * mc, emb_c)
            ch = mult * mc
            if level in size.attention_levels:
                _spatial_transformer(spec, f"{prefix}input_blocks.{index}.1", ch, size.transformer_depth[level],
                                     size)
            skip_channels.append(ch)
            index += 1
        if level != len(size.channel_mult) - 1:
            _conv(spec, f"{prefix}input_blocks.{index}.0.op", ch, ch, 3)
            skip_channels.append(ch)
            index += 1

    _unet_resblock(spec, f"{prefix}middle_block.0", ch, ch, emb_c)
    _spatial_transformer(spec, f"{prefix}middle_block.1", ch, size.transformer_depth_middle, size)
    _unet_resblock(spec, f"{prefix}middle_block.2", ch, ch, emb_c)

    index = 0
    for level, mult in reversed(list(enumerate(size.channel_mult))):
        for i in range(size.num_res_blocks + 1):
            _unet_resblock(spec, f"{prefix}output_blocks.{index}.0", ch + skip_channels.pop(), mc * mult, emb_c)
            ch = mc * mult
            sub = 1
            if level in size.attention_levels:
                _spatial_transformer(spec, f"{prefix}output_blocks.{index}.1", ch, size.transformer_depth[level],
                                     size)
                sub = 2
            if level and i == size.num_res_blocks:
                _conv(spec, f"{prefix}output_blocks.{index}.{sub}.conv", ch, ch, 3)
            index += 1

    _norm(spec, f"{prefix}out.0", ch)
    _conv(spec, f"{prefix}out.2", size.out_channels, mc, 3)
    return spec


# The buffers ldm's `DDPM.register_schedule` saves, for SD1's "linear" schedule (A1111 reads alphas_cumprod).
SD15_SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def ddpm_schedule(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
                  ) -> Dict[str, torch.Tensor]:
    """ldm `make_beta_schedule("linear")` + `DDPM.register_schedule` (v_posterior 0), float64 math, float32 out."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(), "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {k: v.float() for k, v in out.items()}


def checkpoint_spec(size: ModelSize) -> Spec:
    """Every key of the checkpoint with its shape and init rule, in A1111's names."""
    spec: Spec = {}
    spec.update(unet_spec("model.diffusion_model.", size.unet))
    if size.kind == "sd15":
        spec.update(clip_text_spec("cond_stage_model.transformer.", size.clip_l))
        for key in SD15_SCHEDULE_KEYS:
            spec[key] = ((1000,), f"schedule:{key}")
    else:
        spec.update(clip_text_spec("conditioner.embedders.0.transformer.", size.clip_l))
        spec.update(open_clip_text_spec("conditioner.embedders.1.model.", size.open_clip))
    spec.update(vae_spec("first_stage_model.", size.vae))
    return spec


# --- text-encoder zeroing --------------------------------------------------------------------------------

# Token/position embeddings make the residual stream's input; attention out-projections and MLP down-projections
# are the only writes into it; the final LayerNorm maps 0 to its bias. Zero all of these and every layer's
# output, the final hidden state and the pooled projection are exactly 0 whatever the tokens.
_ZERO_TE_PATTERNS = (
    r"\.text_model\.embeddings\.(token|position)_embedding\.weight$",
    r"\.text_model\.encoder\.layers\.\d+\.(self_attn\.out_proj|mlp\.fc2)\.(weight|bias)$",
    r"\.text_model\.final_layer_norm\.bias$",
    r"^conditioner\.embedders\.\d+\.model\.(token_embedding\.weight|positional_embedding)$",
    r"^conditioner\.embedders\.\d+\.model\.transformer\.resblocks\.\d+\.(attn\.out_proj|mlp\.c_proj)\.(weight|bias)$",
    r"^conditioner\.embedders\.\d+\.model\.ln_final\.bias$",
)
_ZERO_TE_RE = re.compile("|".join(f"(?:{p})" for p in _ZERO_TE_PATTERNS))


def is_zeroed_by_zero_text_encoder(key: str) -> bool:
    return _ZERO_TE_RE.search(key) is not None


TEXT_ENCODER_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")


def is_text_encoder_key(key: str) -> bool:
    return key.startswith(TEXT_ENCODER_PREFIXES)


# --- materialising -----------------------------------------------------------------------------------------

def key_seed(seed: int, key: str) -> int:
    """A per-tensor seed, so a key's values depend only on (seed, key)."""
    return (seed * 0x9E3779B97F4A7C15 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63)


def _init_tensor(shape: Tuple[int, ...], init: str, generator: torch.Generator) -> torch.Tensor:
    if init == "position_ids":
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if init == "logit_scale":
        return torch.tensor(math.log(1 / 0.07))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if init == "weight":
        return noise / math.sqrt(math.prod(shape[1:]))
    if init == "weight_t":
        return noise / math.sqrt(shape[0])
    if init == "norm_w":
        return 1.0 + 0.02 * noise
    if init in ("bias", "norm_b", "embed"):
        return 0.02 * noise
    raise TinyModelError(f"unknown init rule {init!r}")


def _tensor_dtype(init: str, dtype: torch.dtype) -> torch.dtype:
    """Floats in `dtype`, except the DDPM schedule (float32, as ldm saves it); position ids int64."""
    return torch.int64 if init == "position_ids" else torch.float32 if init.startswith("schedule:") else dtype


def make_tensor(key: str, shape: Tuple[int, ...], init: str, seed: int, dtype: torch.dtype = torch.float16,
                zero_text_encoder: bool = False) -> torch.Tensor:
    """The tensor of one key: a function of (seed, key, shape, init) only."""
    if init.startswith("schedule:"):
        return ddpm_schedule(timesteps=shape[0])[init.split(":", 1)[1]].clone()
    tensor = _init_tensor(shape, init, torch.Generator().manual_seed(key_seed(seed, key)))
    if zero_text_encoder and is_zeroed_by_zero_text_encoder(key):
        tensor = torch.zeros_like(tensor)
    return tensor.to(_tensor_dtype(init, dtype))


def materialize(spec: Mapping[str, Tuple[Tuple[int, ...], str]], seed: int, dtype: torch.dtype = torch.float16,
                zero_text_encoder: bool = False) -> Dict[str, torch.Tensor]:
    """Random tensors for `spec`, all in memory (`write_model` makes them one at a time instead)."""
    return {key: make_tensor(key, shape, init, seed, dtype, zero_text_encoder) for key, (shape, init) in spec.items()}


def build_state_dict(kind: str, seed: int, small: bool = False, zero_text_encoder: bool = False,
                     dtype: torch.dtype = torch.float16) -> Dict[str, torch.Tensor]:
    return materialize(checkpoint_spec(model_size(kind, small)), seed, dtype, zero_text_encoder)


# --- tokenizer and config folders ------------------------------------------------------------------------

def find_clip_bpe() -> Path:
    """The CLIP BPE table shipped by the `open_clip` or `clip` package (the same file in both)."""
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
            if candidate.is_file():
                return candidate
    raise TinyModelError("no CLIP BPE table found: install open_clip_torch or clip (k-diffusion brings clip), "
                         "or pass --bpe PATH to bpe_simple_vocab_16e6.txt.gz")


def _bytes_to_unicode() -> Dict[int, str]:
    """CLIP's `bytes_to_unicode` (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges(bpe_path: Path) -> Tuple[Dict[str, int], List[str]]:
    """openai/CLIP `SimpleTokenizer.__init__`: the vocab.json / merges.txt of openai/clip-vit-large-patch14."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def write_clip_text_folder(folder: Path, size: ClipTextSize, bpe_path: Path) -> Path:
    """A local stand-in for the hub's openai/clip-vit-large-patch14: text config + tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    config = {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "hidden_size": size.hidden, "intermediate_size": size.intermediate, "num_attention_heads": size.heads,
        "num_hidden_layers": size.layers, "max_position_embeddings": CLIP_CONTEXT, "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "projection_dim": 768, "attention_dropout": 0.0,
        "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32",
    }
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    tokenizer_config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_CONTEXT,
                        "do_lower_case": True, "errors": "replace", "add_prefix_space": False}
    _write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    _write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    _write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    _write_text(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")
    return folder


def default_hf_hub_cache() -> Path:
    """Where huggingface_hub looks: HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    hf_home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(hf_home).expanduser() / "hub"


def open_clip_hub_config(size: OpenClipTextSize) -> dict:
    """The open_clip_config.json open_clip's `create_model("hf-hub:...")` reads (model_cfg + preprocess_cfg)."""
    return {
        "model_cfg": {
            "embed_dim": size.embed_dim,
            "vision_cfg": dict(TINY_VISION_CFG),
            "text_cfg": {"context_length": CLIP_CONTEXT, "vocab_size": CLIP_VOCAB_SIZE, "width": size.width,
                         "heads": size.heads, "layers": size.layers},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]},
    }


def write_open_clip_hub_model(hub_cache: Path, size: OpenClipTextSize) -> str:
    """A model folder in the Hugging Face cache layout (refs/main -> snapshots/<rev>/), for offline hf-hub loads.

    open_clip 2.20 loads `open_clip_pytorch_model.bin` strictly into the whole CLIP, so it holds zeros for a
    tiny vision tower too; the checkpoint overwrites every text weight (zeros are cast to the model's dtype). Returns the arch name for the yaml.
    """
    config_text = json.dumps(open_clip_hub_config(size), indent=2, sort_keys=True) + "\n"
    revision = hashlib.sha1(config_text.encode("utf-8")).hexdigest()
    repo_folder = hub_cache / ("models--" + size.repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    _write_text(snapshot / "open_clip_config.json", config_text)
    spec = {**open_clip_text_spec("", size), **_open_clip_visual_spec(size.embed_dim)}
    weights = {key: torch.zeros(shape, dtype=torch.float16) for key, (shape, _) in spec.items()}
    # The legacy (non-zip) format: A1111's safe unpickler rejects the `.format_version` entry of new zip files.
    torch.save(weights, snapshot / "open_clip_pytorch_model.bin", _use_new_zipfile_serialization=False)
    (repo_folder / "refs").mkdir(exist_ok=True)
    _write_text(repo_folder / "refs" / "main", revision)
    return f"hf-hub:{size.repo_id}"


_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """`write_safetensors` for tensors already in memory."""
    layout = {key: (tuple(tensor.shape), tensor.dtype) for key, tensor in tensors.items()}
    write_safetensors(layout, tensors.__getitem__, path, metadata)


def write_safetensors(layout: Mapping[str, Tuple[Tuple[int, ...], torch.dtype]],
                      tensor_of: Callable[[str], torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """The safetensors format (8-byte header length, JSON header, raw little-endian data), written byte-for-byte
    reproducibly: the safetensors library orders `__metadata__` by hash, so its files differ run to run, and
    A1111 names checkpoints by the sha256 of the file. The header comes from `layout` (key -> shape, dtype), so
    each tensor is only asked for (`tensor_of(key)`) when its bytes are written, and dropped after."""
    header: Dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for key, (shape, dtype) in layout.items():
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # readers expect the data to start 8-byte aligned
    partial = Path(f"{path}.partial")  # then renamed: a WebUI reading the old file keeps a whole one
    try:
        with open(partial, "wb") as f:
            f.write(len(encoded).to_bytes(8, "little"))
            f.write(encoded)
            for key, (shape, dtype) in layout.items():
                tensor = tensor_of(key).detach()
                if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                    raise TinyModelError(f"{key}: got {tuple(tensor.shape)} {tensor.dtype}, "
                                         f"the header says {tuple(shape)} {dtype}")
                f.write(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


# --- A1111 yaml ----------------------------------------------------------------------------------------------

def _unet_params(size: UnetSize, ldm: bool) -> dict:
    ds = [2 ** level for level in size.attention_levels]
    params = {
        "use_checkpoint": False, "in_channels": size.in_channels, "out_channels": size.out_channels,
        "model_channels": size.model_channels, "attention_resolutions": ds, "num_res_blocks": size.num_res_blocks,
        "channel_mult": list(size.channel_mult), "use_spatial_transformer": True,
        "context_dim": size.context_dim, "use_linear_in_transformer": size.use_linear_in_transformer,
        "legacy": False,
    }
    depths = {size.transformer_depth[level] for level in size.attention_levels} | {size.transformer_depth_middle}
    if ldm:  # ldm's UNetModel takes one depth for every transformer
        if len(depths) != 1:
            raise TinyModelError(f"an ldm UNet has one transformer depth, got {sorted(depths)}")
        params["transformer_depth"] = depths.pop()
    else:  # sgm's: a depth per level (only read on levels with attention) and the middle block's
        params["transformer_depth"] = list(size.transformer_depth)
        params["transformer_depth_middle"] = size.transformer_depth_middle
    if size.num_head_channels == -1:
        params["num_heads"] = size.num_heads
    else:
        params["num_head_channels"] = size.num_head_channels
    if size.adm_in_channels is not None:
        params.update({"adm_in_channels": size.adm_in_channels, "num_classes": "sequential"})
    if ldm:
        params["image_size"] = 32  # unused
    else:
        params["spatial_transformer_attn_type"] = "softmax"
    return params


def _ddconfig(size: VaeSize) -> dict:
    return {"double_z": True, "z_channels": size.z_channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
            "ch": size.ch, "ch_mult": list(size.ch_mult), "num_res_blocks": size.num_res_blocks,
            "attn_resolutions": [], "dropout": 0.0}


def sd15_config(size: ModelSize, clip_folder: str) -> dict:
    """configs/v1-inference.yaml with the tiny UNet/VAE and a local CLIP-L folder."""
    return {"model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
            "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": 4,
            "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
            "scale_factor": 0.18215, "use_ema": False,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                            "params": _unet_params(size.unet, ldm=True)},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
                "embed_dim": size.vae.z_channels, "monitor": "val/rec_loss", "ddconfig": _ddconfig(size.vae),
                "lossconfig": {"target": "torch.nn.Identity"}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                  "params": {"version": clip_folder}},
        }}}


def sdxl_config(size: ModelSize, clip_folder: str, open_clip_arch: str) -> dict:
    """generative-models configs/inference/sd_xl_base.yaml with the tiny parts."""
    def size_embedder(key: str) -> dict:
        return {"is_trainable": False, "input_key": key,
                "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "params": {"outdim": 256}}

    return {"model": {
        "target": "sgm.models.diffusion.DiffusionEngine",
        "params": {
            "scale_factor": 0.13025, "disable_first_stage_autocast": True,
            "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
                "num_idx": 1000,
                "weighting_config": {"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
                "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
                "discretization_config": {
                    "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}},
            "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                               "params": _unet_params(size.unet, ldm=False)},
            "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
                {"is_trainable": False, "input_key": "txt",
                 "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                 "params": {"layer": "hidden", "layer_idx": size.clip_l.layers - 1, "version": clip_folder}},
                {"is_trainable": False, "input_key": "txt",
                 "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                 "params": {"arch": open_clip_arch, "version": None, "freeze": True, "layer": "penultimate",
                            "always_return_pooled": True, "legacy": False}},
                size_embedder("original_size_as_tuple"),
                size_embedder("crop_coords_top_left"),
                size_embedder("target_size_as_tuple"),
            ]}},
            "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper", "params": {
                "embed_dim": size.vae.z_channels, "monitor": "val/rec_loss",
                "ddconfig": {**_ddconfig(size.vae), "attn_type": "vanilla"},
                "lossconfig": {"target": "torch.nn.Identity"}}},
        }}}


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(value, indent: int = 0) -> Iterator[str]:
    """Block-style YAML for nested dicts/lists of scalars (enough for these configs, no PyYAML needed)."""
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) or (isinstance(item, list) and any(isinstance(x, (dict, list)) for x in item)):
                yield f"{pad}{key}:"
                yield from to_yaml(item, indent + 1)
            elif isinstance(item, list):
                yield f"{pad}{key}: [{', '.join(_yaml_scalar(x) for x in item)}]"
            else:
                yield f"{pad}{key}: {_yaml_scalar(item)}"
    elif isinstance(value, list):
        for item in value:
            lines = list(to_yaml(item, indent + 1))
            yield f"{pad}- {lines[0].lstrip()}"
            yield from lines[1:]
    else:
        yield f"{pad}{_yaml_scalar(value)}"


# --- writing -------------------------------------------------------------------------------------------------

def parse_metadata(pairs: Sequence[str]) -> Dict[str, str]:
    metadata: Dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TinyModelError(f"--metadata must be KEY=VALUE, got {pair!r}")
        metadata[key.strip()] = value
    return metadata


@dataclass(frozen=True)
class WrittenModel:
    checkpoint: Path
    yaml: Optional[Path]
    text_config_folder: Optional[Path]
    open_clip_arch: Optional[str]


def write_model(out_dir, name: str, kind: str, seed: int, *, small: bool = False, base: bool = False,
                zero_text_encoder: bool = False,
                metadata: Optional[Mapping[str, str]] = None, dtype: torch.dtype = torch.float16,
                a1111_files: bool = True, hf_cache=None, bpe_path=None,
                text_encoder_seed: Optional[int] = None) -> WrittenModel:
    """Write `<out_dir>/<name>.safetensors` and, with `a1111_files`, the yaml and the folders it points to.
    `text_encoder_seed`: draw the text encoders from this seed instead (two files sharing it share them)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise TinyModelError(f"name must be letters, digits, '.', '_' or '-', got {name!r}")
    size = model_size(kind, small, base)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    header = {
        "uncondlab.generator": GENERATOR, "uncondlab.kind": kind, "uncondlab.seed": str(seed),
        "uncondlab.small": str(small).lower(), "uncondlab.zero_text_encoder": str(zero_text_encoder).lower(),
        "uncondlab.sizes": json.dumps(asdict(size), sort_keys=True),
    }
    if base:
        header["uncondlab.base"] = "true"
    if text_encoder_seed is not None:
        header["uncondlab.text_encoder_seed"] = str(text_encoder_seed)
    header.update(metadata or {})
    checkpoint = out_dir / f"{name}.safetensors"
    spec = checkpoint_spec(size)
    layout = {key: (shape, _tensor_dtype(init, dtype)) for key, (shape, init) in spec.items()}
    te_seed = seed if text_encoder_seed is None else text_encoder_seed
    write_safetensors(layout, lambda key: make_tensor(key, *spec[key], te_seed if is_text_encoder_key(key) else seed,
                                                      dtype, zero_text_encoder), checkpoint, header)
    if not a1111_files:
        return WrittenModel(checkpoint, None, None, None)

    bpe = Path(bpe_path) if bpe_path else find_clip_bpe()
    text_folder = write_clip_text_folder(out_dir / "uncondlab-text-configs" / size.clip_l.folder_name,
                                         size.clip_l, bpe)
    arch = None
    if kind == "sd15":
        config = sd15_config(size, str(text_folder))
    else:
        if size.open_clip == OPEN_CLIP_BIGG:  # open_clip's own config; A1111 builds it on the meta device
            arch = "ViT-bigG-14"
        else:
            arch = write_open_clip_hub_model(Path(hf_cache) if hf_cache else default_hf_hub_cache(), size.open_clip)
        config = sdxl_config(size, str(text_folder), arch)
    yaml_path = out_dir / f"{name}.yaml"
    _write_text(yaml_path, f"# {GENERATOR}: kind={kind} seed={seed} small={small} "
                           f"zero_text_encoder={zero_text_encoder}\n" + "\n".join(to_yaml(config)) + "\n")
    return WrittenModel(checkpoint, yaml_path, text_folder, arch)


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.webui.tiny_models", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for <name>.safetensors, <name>.yaml and text configs")
    parser.add_argument("--kind", choices=KINDS, default="sd15")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="file stem (default: uncondlab-tiny-<kind>-s<seed>)")
    parser.add_argument("--text-encoder-seed", type=int,
                        help="seed of the text encoders (default: --seed); merge tests share them to save memory")
    parser.add_argument("--zero-text-encoder", action="store_true",
                        help="text encoder(s) map every prompt to exactly 0 (pooled too)")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="extra safetensors __metadata__ entry (repeatable)")
    parser.add_argument("--small", action="store_true",
                        help="tiny text encoders, VAE and UNet for fast tests (such files load in A1111 only)")
    parser.add_argument("--base", action="store_true",
                        help="sdxl: SDXL base's UNet, which Forge Neo needs (2.57 B parameters, 6.9 GB in fp16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--safetensors-only", action="store_true", help="skip the A1111 yaml and its folders")
    parser.add_argument("--hf-cache", help="Hugging Face hub cache for the small sdxl's OpenCLIP config "
                                           f"(default: {default_hf_hub_cache()})")
    parser.add_argument("--bpe", help="path to CLIP's bpe_simple_vocab_16e6.txt.gz (default: from open_clip/clip)")
    args = parser.parse_args(argv)
    try:
        written = write_model(args.out, args.name or f"uncondlab-tiny-{args.kind}-s{args.seed}", args.kind,
                              args.seed, small=args.small, base=args.base, zero_text_encoder=args.zero_text_encoder,
                              metadata=parse_metadata(args.metadata), dtype=DTYPES[args.dtype],
                              a1111_files=not args.safetensors_only, hf_cache=args.hf_cache, bpe_path=args.bpe,
                              text_encoder_seed=args.text_encoder_seed)
    except TinyModelError as e:
        parser.error(str(e))
    for label, path in (("checkpoint", written.checkpoint), ("yaml", written.yaml),
                        ("text config", written.text_config_folder), ("open_clip arch", written.open_clip_arch)):
        if path is not None:
            print(f"{label}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
