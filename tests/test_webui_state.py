"""The te("") cache beside the WebUI's cond caches (lib_ext/hosts/webui_state.py), against stand-ins for the
three WebUI modules it imports: reused while the WebUI's own cache key holds, encoded again when it changes or
when the caches are dropped (the text encoders' weights changed), never kept after a failed encoding."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest


STATE_PY = Path(__file__).resolve().parents[1] / "lib_ext" / "hosts" / "webui_state.py"


class Processing:
    """StableDiffusionProcessing's cache key, reduced to what varies here (A processing.py:440-458)."""
    def __init__(self, width=64, loras=None):
        self.width, self.extra_network_data = width, loras

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        return (tuple(required_prompts), steps, extra_network_data, self.width)


@pytest.fixture()
def webui_state(monkeypatch):
    processing = types.ModuleType("modules.processing")
    processing.StableDiffusionProcessing = type("StableDiffusionProcessing", (Processing,), {})
    processing.StableDiffusionProcessingTxt2Img = type("Txt2Img", (processing.StableDiffusionProcessing,), {})
    modules = types.ModuleType("modules")
    modules.processing, modules.call_queue, modules.shared = processing, types.ModuleType("c"), types.ModuleType("s")
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.processing", processing)
    # The file alone: the package's __init__ picks a WebUI's host module, which these stand-ins do not provide.
    spec = importlib.util.spec_from_file_location("webui_state_under_test", STATE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, processing


def test_te_empty_is_encoded_once_per_cache_key(webui_state):
    state, processing = webui_state
    calls = []

    def encode(p):
        calls.append(p)
        return {"crossattn": len(calls)}

    make = processing.StableDiffusionProcessingTxt2Img
    assert state.cached_null_uncond(make(), encode) == ({"crossattn": 1}, True)
    assert state.cached_null_uncond(make(), encode) == ({"crossattn": 1}, False)  # the next generation
    assert state.cached_null_uncond(make(width=128), encode) == ({"crossattn": 2}, True)  # SDXL's size vector
    assert state.cached_null_uncond(make(width=128, loras={"lora": ["x"]}), encode)[1]
    state.drop_cached_conds()  # a merge changed the text encoders: the key does not see weights
    assert state.cached_null_uncond(make(width=128, loras={"lora": ["x"]}), encode) == ({"crossattn": 4}, True)


def test_a_failed_encoding_leaves_no_entry(webui_state):
    state, processing = webui_state

    def fail(p):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        state.cached_null_uncond(processing.StableDiffusionProcessing(), fail)
    assert state.cached_null_uncond(processing.StableDiffusionProcessing(), lambda p: "te") == ("te", True)
