"""Write a .safetensors file tensor by tensor, chunk by chunk, without holding the state dict in memory.

`safetensors.torch.save_file` needs the whole dict; this writes the same format (huggingface/safetensors
README, "Format") in two passes: the header from the specs first, then the bytes as they are produced.

    8 bytes     little-endian u64 N, the header size
    N bytes     JSON: {"__metadata__": {str: str}, key: {"dtype", "shape", "data_offsets": [begin, end]}, ...},
                padded with spaces to a multiple of 8
    the rest    the tensors' bytes, little-endian, C order, contiguous, without holes
Tensors are laid out by decreasing element size, then by name (what safetensors itself does), so every
tensor is aligned to its element size.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Iterable, Mapping, Sequence

import torch

from lib_ext.merge.sources import TORCH_TO_SAFETENSORS, TensorSpec

ChunkSource = Callable[[TensorSpec], Iterable[torch.Tensor]]


class SafetensorsWriteError(RuntimeError):
    """A producer yielded bytes that do not match the header (dtype, count); the message names the tensor."""


def file_order(specs: Iterable[TensorSpec]) -> list[TensorSpec]:
    return sorted(specs, key=lambda s: (-s.dtype.itemsize, s.key))


def header_bytes(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and the padded JSON header for tensors stored in the order of `specs`."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata maps str to str; {bad[0]!r} does not")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for spec in specs:
        if spec.dtype not in TORCH_TO_SAFETENSORS:
            raise TypeError(f"tensor '{spec.key}': dtype {spec.dtype} has no safetensors name")
        header[spec.key] = {"dtype": TORCH_TO_SAFETENSORS[spec.dtype], "shape": list(spec.shape),
                            "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(path: str | os.PathLike, specs: Iterable[TensorSpec], chunks: ChunkSource,
                      metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int], None] | None = None) -> None:
    """Write `path`; `chunks(spec)` yields the tensor's data in C order as tensors of its dtype (any shapes).

    `progress(n)` is called with the number of bytes after each chunk. The file is written where asked: make
    it a temporary name and rename it when complete (see save.py).
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian data; this writer only runs on little-endian hosts")
    ordered = file_order(specs)
    with open(path, "wb") as file:
        file.write(header_bytes(ordered, metadata))
        for spec in ordered:
            written = 0
            for chunk in chunks(spec):
                if chunk.dtype != spec.dtype:
                    raise SafetensorsWriteError(f"tensor '{spec.key}': got a {chunk.dtype} chunk, "
                                                f"header says {spec.dtype}")
                data = chunk.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                del chunk  # hold no chunk while the producer computes the next one
                file.write(memoryview(data.numpy()))
                written += data.numel()
                if progress is not None:
                    progress(data.numel())
                del data
            if written != spec.nbytes:
                raise SafetensorsWriteError(f"tensor '{spec.key}': wrote {written} bytes, header says {spec.nbytes}")
        file.flush()
        os.fsync(file.fileno())
