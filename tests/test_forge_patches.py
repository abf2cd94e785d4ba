"""The weights a Forge-family patcher's loader skips (lib_ext/hosts/forge_patches.py, _patch_stranded_weights):
the direct parameters of a module with children, like SDXL's `clip_g.text_projection` in reForge's
SDClipModel. Stand-ins here; the real check (merge ratio 1 with the text encoders following = B's picture, then
A's again) is tests/webui/test_merge_e2e.py on reForge with the base-size SDXL pair."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

FORGE_PATCHES_PY = Path(__file__).resolve().parents[1] / "lib_ext" / "hosts" / "forge_patches.py"
ON_LOAD = "on_load_after"


@pytest.fixture()
def forge_patches(monkeypatch):
    # The file alone, its one WebUI import stood in for: the package's __init__ picks a WebUI's host module.
    state = types.ModuleType("lib_ext.hosts.webui_state")
    state.drop_cached_conds = lambda p=None: None
    monkeypatch.setitem(sys.modules, "lib_ext.hosts.webui_state", state)
    spec = importlib.util.spec_from_file_location("forge_patches_under_test", FORGE_PATCHES_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ClipWithProjection(torch.nn.Module):
    """reForge's SDClipModel in small: a child transformer, and the pooled projection as its own parameter."""
    def __init__(self):
        super().__init__()
        self.transformer = torch.nn.Linear(4, 4)
        self.text_projection = torch.nn.Parameter(torch.eye(4))


class TwoEncoders(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.clip_l, self.clip_g = torch.nn.Linear(4, 4), ClipWithProjection()


class RecordingPatcher:
    """What _patch_stranded_weights uses of a ModelPatcher: its model, add_callback, patch_weight_to_device."""
    def __init__(self, model):
        self.model, self.callbacks, self.patched = model, {}, []

    def add_callback(self, event, callback):
        self.callbacks.setdefault(event, []).append(callback)

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        self.patched.append((key, device_to, inplace_update))

    def load(self, device_to):  # the loader's end: its on-load callbacks
        for callback in self.callbacks.get(ON_LOAD, []):
            callback(self, device_to, 0, False, True)


def merge_glue(forge_patches, on_load_event):
    return forge_patches.ForgePatchMerge("reForge", object, get_key_weight=None, model_config_of=None,
                                         on_load_event=on_load_event)


def test_direct_parameters_of_a_module_with_children_are_found(forge_patches):
    model = TwoEncoders()
    held = forge_patches._held_by_a_parent_module
    assert held(model, "clip_g.text_projection")
    assert not held(model, "clip_g.transformer.weight")
    assert not held(model, "clip_l.weight")
    assert not held(model, "no_such.module.weight")


def test_stranded_weights_are_patched_in_place_by_the_patcher_when_it_loads(forge_patches):
    patcher = RecordingPatcher(TwoEncoders())
    keys = ["clip_l.weight", "clip_g.transformer.weight", "clip_g.text_projection"]
    merge_glue(forge_patches, ON_LOAD)._patch_stranded_weights(patcher, keys)
    assert patcher.patched == []  # nothing before the WebUI loads the weights
    patcher.load("cpu")
    # Only the skipped one, in place: the WebUI's SDXL embedder holds that parameter object itself.
    assert patcher.patched == [("clip_g.text_projection", "cpu", True)]


def test_no_callback_without_stranded_weights_or_without_callbacks(forge_patches):
    patcher = RecordingPatcher(TwoEncoders())
    merge_glue(forge_patches, ON_LOAD)._patch_stranded_weights(patcher, ["clip_l.weight"])
    assert patcher.callbacks == {}
    merge_glue(forge_patches, None)._patch_stranded_weights(patcher, ["clip_g.text_projection"])
    assert patcher.callbacks == {}
