"""A small HTTP client for a running WebUI's API, and the pixels of the PNGs it returns (stdlib only)."""
from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status, self.body = status, body


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed IDAT) of a PNG. Two PNGs from the same encoder have equal IDAT data
    exactly when their pixels are equal; text chunks (the infotext) are ignored."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def png_rgb(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw samples) of an 8-bit PNG: the IDAT data with the per-row filters undone (PNG spec,
    section 9), so that byte differences are pixel differences. Channels from the colour type (RGB 3, RGBA 4)."""
    width, height, data = png_pixels(png)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[png[25]]  # IHDR colour type; bit depth (png[24]) must be 8
    assert png[24] == 8, "only 8-bit PNGs"
    stride, out, previous = width * channels, bytearray(), bytearray(width * channels)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = data[start], bytearray(data[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - up_left
                da, db, dc = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
                predictor = left if da <= db and da <= dc else up if db <= dc else up_left
                line[i] = (line[i] + predictor) & 0xFF
        out += line
        previous = line
    return width, height, bytes(out)


def max_pixel_difference(a: bytes, b: bytes) -> int:
    """The largest difference of one channel between two PNGs of the same size (0 = identical pixels)."""
    (wa, ha, ra), (wb, hb, rb) = png_rgb(a), png_rgb(b)
    assert (wa, ha) == (wb, hb), f"sizes differ: {wa}x{ha} vs {wb}x{hb}"
    return max((abs(x - y) for x, y in zip(ra, rb)), default=0)


@dataclass
class Generation:
    images: list[bytes]
    info: dict[str, Any]

    @property
    def pixels(self) -> list[tuple[int, int, bytes]]:
        return [png_pixels(image) for image in self.images]

    @property
    def infotexts(self) -> list[str]:
        return self.info.get("infotexts", [])


class WebUI:
    NAMES = {"a1111": "A1111", "reforge": "reForge", "forge_neo": "Forge Neo"}

    def __init__(self, url: str, kind: str):
        self.url = url.rstrip("/")
        self.kind = kind  # "a1111", "reforge" or "forge_neo"
        self.stop = None  # set where the test session started the WebUI: stops it before the session ends

    @property
    def name(self) -> str:
        return self.NAMES[self.kind]

    @property
    def patches_weights(self) -> bool:
        """A merge is applied as the WebUI's weight patches (reForge, Neo), not written by Uncond Lab (A1111)."""
        return self.kind in ("reforge", "forge_neo")

    @property
    def skips_uncond_at_cfg1(self) -> bool:
        return self.kind in ("reforge", "forge_neo")

    def feeds_zero_uncond(self) -> bool:
        """Whether the WebUI's own picture has the zero uncond for an empty SDXL negative: A1111 and reForge
        always; Forge Neo only with its `sdxl_zero_neg` option (te("") by default)."""
        return self.kind != "forge_neo" or bool(self.get("/sdapi/v1/options").get("sdxl_zero_neg"))

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 600) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")) from None
        return json.loads(body) if body else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return self.request("POST", path, payload)

    # --- conveniences -------------------------------------------------------------------------------------

    def checkpoint_titles(self) -> list[str]:
        return [model["title"] for model in self.get("/sdapi/v1/sd-models")]

    def use_checkpoint(self, name: str) -> None:
        """Load a checkpoint by file stem, unless it is the loaded one already."""
        titles = self.checkpoint_titles()
        title = next((t for t in titles if t.startswith(name + ".") or t.startswith(name + " ")), None)
        assert title is not None, f"checkpoint {name!r} not found; have {titles}"
        if self.get("/sdapi/v1/options").get("sd_model_checkpoint") != title:
            self.post("/sdapi/v1/options", {"sd_model_checkpoint": title})

    def txt2img(self, uncond_lab: Any = None, scripts: dict | None = None, **params) -> Generation:
        return self._generate("/sdapi/v1/txt2img", uncond_lab, scripts, params)

    def img2img(self, uncond_lab: Any = None, scripts: dict | None = None, **params) -> Generation:
        return self._generate("/sdapi/v1/img2img", uncond_lab, scripts, params)

    def _generate(self, path: str, uncond_lab: Any, scripts: dict | None, params: dict) -> Generation:
        payload = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 1234, "steps": 4,
                   "width": 64, "height": 64, "cfg_scale": 7.0, "sampler_name": "Euler",
                   "send_images": True, "save_images": False, **params}
        if self.kind == "forge_neo" and payload.get("enable_hr"):
            # Neo's hires pass fails on an API request without it (processing.py: `"Use same choices" not in
            # self.hr_additional_modules`, None by default), with or without Uncond Lab.
            payload.setdefault("hr_additional_modules", ["Use same choices"])
            # Neo has no latent upscalers (shared.latent_upscale_modes is empty): with none named, processing.py
            # falls back to the string "nearest" and indexes it as a mode dict (TypeError). Its plain resize.
            payload.setdefault("hr_upscaler", "None")
        alwayson = dict(scripts or {})
        if uncond_lab is not None:
            alwayson["Uncond Lab"] = {"args": uncond_lab if isinstance(uncond_lab, list) else [uncond_lab]}
        if alwayson:
            payload["alwayson_scripts"] = alwayson
        result = self.post(path, payload)
        images = [base64.b64decode(image.split(",", 1)[-1]) for image in result["images"]]
        return Generation(images, json.loads(result["info"]))


def b64_png(png: bytes) -> str:
    return base64.b64encode(png).decode()
