"""PNG text chunks (lib_ext/comfy/png.py) on PNGs built here byte by byte, as ComfyUI's SaveImage (PIL's
PngInfo.add_text: tEXt, or iTXt for non-Latin-1 text) and other writers (zTXt, compressed iTXt) store them."""
from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from lib_ext.comfy import ComfyGraphError, export_png, import_graph, load_graph, png_text_chunks
from lib_ext.comfy import png as png_module

FIXTURES = Path(__file__).parent / "comfy_graphs"
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text(keyword: str, value: str) -> bytes:
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value.encode("latin-1"))


def ztext(keyword: str, value: str) -> bytes:
    return chunk(b"zTXt", keyword.encode("latin-1") + b"\0\0" + zlib.compress(value.encode("latin-1")))


def itext(keyword: str, value: str, compressed: bool) -> bytes:
    data = zlib.compress(value.encode("utf-8")) if compressed else value.encode("utf-8")
    return chunk(b"iTXt", keyword.encode("latin-1") + b"\0" + bytes([int(compressed), 0]) + b"en\0" + b"\0" + data)


def png(*text_chunks: bytes, after_idat: tuple[bytes, ...] = ()) -> bytes:
    """A 1×1 RGB PNG with the given chunks before (and after) its image data."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
    return SIGNATURE + header + b"".join(text_chunks) + pixels + b"".join(after_idat) + chunk(b"IEND", b"")


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_every_text_chunk_kind():
    data = png(text("prompt", '{"a": 1}'), ztext("workflow", '{"b": 2}'), itext("note", "日本語 ✓", False),
               after_idat=(itext("late", "später " * 50, True),))
    assert png_text_chunks(data) == {"prompt": '{"a": 1}', "workflow": '{"b": 2}', "note": "日本語 ✓",
                                     "late": "später " * 50}


def test_a_comfyui_png_imports_its_prompt_before_its_workflow():
    prompt = fixture("basic_api_example.json")
    workflow = fixture("default_workflow.json")  # another seed: the prompt (what ran) must win
    data = png(text("prompt", json.dumps(prompt)), text("workflow", json.dumps(workflow)))
    graph = load_graph(data)
    assert graph.source == "png prompt" and graph.prompt["3"]["inputs"]["seed"] == 8566257
    assert import_graph(data)["txt2img"]["seed"] == 8566257
    only_workflow = png(text("workflow", json.dumps(workflow)))
    assert load_graph(only_workflow).source == "png workflow"
    assert import_graph(only_workflow)["txt2img"]["seed"] == 156680208700286


def test_an_a1111_png_is_exported_not_imported():
    infotext = "a lighthouse\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64"
    data = png(text("parameters", infotext))
    with pytest.raises(ComfyGraphError, match="A1111 generation parameters"):
        import_graph(data)
    exported = export_png(data)
    kinds = {node["class_type"] for node in exported["prompt"].values()}
    assert {"KSampler", "CheckpointLoaderSimple", "SaveImage"} <= kinds
    with pytest.raises(ComfyGraphError, match="a ComfyUI graph already"):
        export_png(png(text("prompt", "{}")))


@pytest.mark.parametrize("data, fragment", [
    (b"GIF89a...", "not a PNG"),
    (png(text("prompt", "{}"))[:40], "runs past the end"),
    (png(text("prompt", "{}"))[:50], "runs past the end"),
    (png(chunk(b"zTXt", b"prompt\0\0not zlib")), "not valid zlib data"),
    (png(chunk(b"tEXt", b"no terminator")), "no keyword terminator"),
    (png(chunk(b"iTXt", b"prompt\0")), "truncated"),
    (png(chunk(b"iTXt", b"prompt\0\0\0\0\0\xff\xfe")), "not UTF-8"),
])
def test_bad_pngs_are_refused_saying_why(data, fragment):
    with pytest.raises(ComfyGraphError, match=re.escape(fragment)):
        png_text_chunks(data)


@pytest.mark.parametrize("data, fragment", [
    (png(), "the PNG has no ComfyUI graph (text chunks: none)"),
    (png(text("prompt", "{not json")), "the PNG's 'prompt' text is not JSON"),
    (png(text("prompt", "[1, 2]")), "not a ComfyUI graph: a JSON list"),
    (b"\x89PNX not quite", "neither a PNG nor UTF-8 JSON text"),
])
def test_pngs_without_a_graph_are_refused_saying_why(data, fragment):
    with pytest.raises(ComfyGraphError, match=re.escape(fragment)):
        load_graph(data)


def test_a_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(png_module, "MAX_TEXT_BYTES", 1000)
    with pytest.raises(ComfyGraphError, match="inflates to more than 1000 bytes"):
        png_text_chunks(png(ztext("prompt", "x" * 5000)))
