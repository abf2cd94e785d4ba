"""A PNG's text chunks, read without an imaging library (PNG spec, section 11.3.4: tEXt, zTXt, iTXt).

ComfyUI's SaveImage writes `prompt` (the API graph that ran) and `workflow` (the UI graph) as JSON strings with
PIL's `PngInfo.add_text` (nodes.py, SaveImage.save_images): tEXt while the text is Latin-1 (json.dumps escapes
the rest), iTXt otherwise. A1111 writes its infotext as `parameters`.
"""
from __future__ import annotations

import struct
import zlib

from lib_ext.comfy.errors import ComfyGraphError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 64 * 1024 * 1024  # a decompressed chunk larger than this is refused (a zlib bomb, not a graph)


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_SIGNATURE


def _inflate(data: bytes, keyword: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error as error:
        raise ComfyGraphError(f"PNG text chunk {keyword!r} is not valid zlib data ({error})") from None
    if inflater.unconsumed_tail:
        raise ComfyGraphError(f"PNG text chunk {keyword!r} inflates to more than {MAX_TEXT_BYTES} bytes")
    return text


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str]:
    """(keyword, text) of one tEXt / zTXt / iTXt chunk body."""
    keyword, separator, rest = body.partition(b"\0")
    if not separator:
        raise ComfyGraphError(f"PNG {kind.decode()} chunk has no keyword terminator")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":  # compression method byte (0 = zlib), then the compressed Latin-1 text
        return name, _inflate(rest[1:], name).decode("latin-1")
    if len(rest) < 2:
        raise ComfyGraphError(f"PNG iTXt chunk {name!r} is truncated")
    compressed, rest = rest[0], rest[2:]  # compression flag, method
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    data = _inflate(text, name) if compressed else text
    try:
        return name, data.decode("utf-8")
    except UnicodeDecodeError:
        raise ComfyGraphError(f"PNG iTXt chunk {name!r} is not UTF-8") from None


def png_text_chunks(data: bytes) -> dict[str, str]:
    """{keyword: text} of every text chunk before IEND (a later chunk with the same keyword wins). Raises
    ComfyGraphError for data that is not a PNG or whose chunks run past its end."""
    if not is_png(data):
        raise ComfyGraphError("not a PNG file (no PNG signature)")
    texts, offset = {}, len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 8 + length + 4  # data, then the CRC
        if end > len(data):
            raise ComfyGraphError(f"PNG chunk {kind!r} at byte {offset} runs past the end of the file")
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _text_chunk(kind, data[offset + 8:offset + 8 + length])
            texts[keyword] = text
        if kind == b"IEND":
            return texts
        offset = end
    if offset < len(data):
        raise ComfyGraphError(f"PNG chunk header at byte {offset} runs past the end of the file")
    return texts
