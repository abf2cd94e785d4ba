"""The WebUI of tests/webui/conftest.py (started from WEBUI_DIR or reached at UNCOND_LAB_WEBUI_URL), for the
tests against real ComfyUI. The fixture is the same function, but pytest keeps one per conftest: run tests/comfy
in a pytest session of its own when the WebUI is started from WEBUI_DIR, or two WebUIs would be up at once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.webui.conftest import sd15, sdxl, webui  # noqa: F401  (fixtures)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("WEBUI_DIR") or os.environ.get("UNCOND_LAB_WEBUI_URL"):
        return
    others = [item for item in items if HERE not in Path(item.fspath).parents
              and "webui" in Path(item.fspath).parts]
    if not others:
        return
    skip = pytest.mark.skip(reason="tests/comfy and tests/webui would each start a WebUI from WEBUI_DIR; run "
                                   "tests/comfy in a pytest session of its own")
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(skip)
