"""Which WebUI is running, by what it says it is, and whether Uncond Lab supports it.

Forks share package names (reForge, Forge Classic and Forge Neo all have `modules_forge`), so the presence of a
package tells nothing: Forge-family WebUIs name themselves in `modules_forge/forge_version.py` (`version`:
"neo" for Forge Neo, "classic" for Forge Classic, a version string such as "1.0.0v2-v1.10.1RC" for reForge);
lllyasviel's Forge says "1.0.2v1.10.1"; A1111 is told by its 1.10 features. Reads files and module specs only: nothing of the WebUI is imported, so an
unsupported one is never half-initialised by us.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

A1111, REFORGE, FORGE_NEO = "a1111", "reforge", "forge_neo"
SUPPORTED_TEXT = "AUTOMATIC1111 1.10.x, reForge (main) and Forge Neo 2.x"


@dataclass(frozen=True)
class HostInfo:
    kind: str | None  # A1111, REFORGE, FORGE_NEO, or None: not supported
    name: str         # what the WebUI says it is, for messages

    @property
    def supported(self) -> bool:
        return self.kind is not None

    def unsupported_message(self) -> str:
        return (f"[Uncond Lab] not loaded: this WebUI is {self.name}, which Uncond Lab does not support "
                f"(supported: {SUPPORTED_TEXT}).")


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def read_forge_version(path: Path) -> tuple[str, str]:
    """(`version`, `release`) assigned in a forge_version.py, read as text: the file is two assignments."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = {name: value for name, value in re.findall(r"^(version|release)\s*=\s*['\"]([^'\"]*)['\"]", text, re.M)}
    return found.get("version", ""), found.get("release", "")


def classify_forge(version: str, release: str) -> HostInfo:
    """A Forge-family WebUI by its forge_version.py."""
    if version == "neo":
        major = release.split(".")[0]
        if major == "2":
            return HostInfo(FORGE_NEO, f"Forge Neo {release}")
        return HostInfo(None, f"Forge Neo {release or '(no release)'}")
    if version == "classic":
        return HostInfo(None, "Forge Classic")
    if re.fullmatch(r"\d+\.\d+\.\d+v2-v1\.10\.\d+.*", version):  # reForge: "<its version>v2-v<A1111's>"
        return HostInfo(REFORGE, f"reForge {version}")
    return HostInfo(None, f"Forge {version}" if version else "a Forge fork that names no version")


def detect() -> HostInfo:
    forge_version = _module_file("modules_forge.forge_version")
    if forge_version is not None:
        return classify_forge(*read_forge_version(forge_version))
    if _module_file("modules_forge") is not None:
        return HostInfo(None, "a Forge fork without modules_forge/forge_version.py (Forge before 2024-06?)")
    if _module_file("modules.processing") is None:
        return HostInfo(None, "no Stable Diffusion WebUI (no modules.processing)")
    if _module_file("modules.models.sd3.sd3_model") is None:  # added in 1.10.0, with SD3
        return HostInfo(None, "AUTOMATIC1111 older than 1.10")
    return HostInfo(A1111, "AUTOMATIC1111 1.10")
