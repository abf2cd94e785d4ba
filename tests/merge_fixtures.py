"""Tiny synthetic checkpoints in the A1111 single-file layout, for the merge tests (a few keys per group)."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

SD1_SHAPES = {
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.input_blocks.0.0.bias": (8,),
    "model.diffusion_model.middle_block.1.proj_in.weight": (40, 8),  # 40 rows: chunked by small chunk sizes
    "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 8),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,),
    "first_stage_model.decoder.conv_out.weight": (3, 4, 3, 3),
    "first_stage_model.decoder.conv_out.bias": (3,),
}
SDXL_SHAPES = {
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.label_emb.0.0.weight": (8, 12),
    "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (16, 8),
    "conditioner.embedders.1.model.token_embedding.weight": (16, 8),
    "conditioner.embedders.1.model.text_projection": (8, 8),
    "first_stage_model.decoder.conv_out.weight": (3, 4, 3, 3),
}


def random_weights(shapes: dict, seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Normal weights with a few exact -0.0 and +0.0 entries (torch.lerp would turn -0.0 into +0.0)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        t = torch.randn(shape, generator=generator, dtype=torch.float32)
        flat = t.view(-1)
        flat[0], flat[-1] = -0.0, 0.0
        tensors[key] = t.to(dtype)
    return tensors


def sd1_checkpoint(seed: int, dtype: torch.dtype = torch.float16, inpainting: bool = False) -> dict[str, torch.Tensor]:
    shapes = dict(SD1_SHAPES)
    if inpainting:
        shapes["model.diffusion_model.input_blocks.0.0.weight"] = (8, 9, 3, 3)
    tensors = random_weights(shapes, seed, dtype)
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(6).unsqueeze(0)
    tensors["alphas_cumprod"] = torch.linspace(0.99, 0.01, 10)
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    return tensors


def sdxl_checkpoint(seed: int, dtype: torch.dtype = torch.float16, v_pred: bool = False,
                    ztsnr: bool = False) -> dict[str, torch.Tensor]:
    tensors = random_weights(SDXL_SHAPES, seed, dtype)
    tensors["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(6).unsqueeze(0)
    if v_pred:
        tensors["v_pred"] = torch.tensor([])
    if ztsnr:
        tensors["ztsnr"] = torch.tensor([])
    return tensors


def write_checkpoint(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return str(path)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so -0.0 and 0.0 compare unequal."""
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bits_equal(x: torch.Tensor, y: torch.Tensor, what: str = "") -> None:
    assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
    assert torch.equal(bits(x), bits(y)), f"{what}: bits differ"
