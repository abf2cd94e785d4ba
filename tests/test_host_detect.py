"""Which WebUI is running (lib_ext/hosts/detect.py): by what it says it is, never by a package being there."""
import pytest

from lib_ext.hosts import detect


@pytest.mark.parametrize("text, kind, name", [
    ('version = "neo"\nrelease = "2.26"\n', detect.FORGE_NEO, "Forge Neo 2.26"),
    ("version = '1.0.0v2-v1.10.1RC'", detect.REFORGE, "reForge 1.0.0v2-v1.10.1RC"),
    ('version = "classic"\n', None, "Forge Classic"),
    ('version = "neo"\nrelease = "3.0"\n', None, "Forge Neo 3.0"),
    ("version = '1.0.2v1.10.1'\n", None, "Forge 1.0.2v1.10.1"),  # lllyasviel's Forge
    ("", None, "a Forge fork that names no version"),
])
def test_forge_family_by_forge_version(tmp_path, text, kind, name):
    path = tmp_path / "forge_version.py"
    path.write_text(text)
    info = detect.classify_forge(*detect.read_forge_version(path))
    assert (info.kind, info.name) == (kind, name)


def test_unsupported_says_what_it_is_and_what_is_supported():
    message = detect.HostInfo(None, "Forge Classic").unsupported_message()
    assert "Forge Classic" in message and detect.SUPPORTED_TEXT in message and message.startswith("[Uncond Lab]")


def test_outside_any_webui_nothing_is_supported():
    info = detect.detect()  # the test run has no WebUI on its path
    assert not info.supported and "no Stable Diffusion WebUI" in info.name
