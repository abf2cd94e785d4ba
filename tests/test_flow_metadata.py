"""What a checkpoint's safetensors metadata declares about its objective; filenames never count."""
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lib_ext.flow import declared_prediction, declares_flow


@pytest.mark.parametrize("value, expected", [
    ("flow", "flow"), ("flow_matching", "flow"), ("Flow-Matching", "flow"), ("rectified_flow", "flow"),
    ("v", "v"), ("v_prediction", "v"), ("v-prediction", "v"), ("vpred", "v"), ("v-zsnr", "v"),
    ("epsilon", "eps"), ("eps", "eps"), ("sample", "x0"), (" epsilon ", "eps"),
])
def test_modelspec_prediction_type_spellings(value, expected):
    assert declared_prediction({"modelspec.prediction_type": value}) == expected


def test_comfyui_checkpoint_save_key():
    assert declared_prediction({"modelspec.predict_key": "v"}) == "v"
    assert declared_prediction({"modelspec.predict_key": "epsilon"}) == "eps"


@pytest.mark.parametrize("metadata", [
    None, {}, {"modelspec.title": "NoobAI RF flow model"},          # a title is not a declaration
    {"modelspec.prediction_type": "something new"},
    {"modelspec.prediction_type": {"json": "object"}},                # A1111 json-decodes '{...}' values
    {"ss_output_name": "my_flow_model_rf"},
])
def test_nothing_recognisable_declares_nothing(metadata):
    assert declared_prediction(metadata) is None and not declares_flow(metadata)


def test_epsilon_is_the_weakest_word():
    # sd-scripts writes "epsilon" by default; a ComfyUI save of a flow-patched model keeps model_type EPS
    assert declared_prediction({"modelspec.prediction_type": "flow_matching",
                                "modelspec.predict_key": "epsilon"}) == "flow"
    assert declared_prediction({"modelspec.prediction_type": "epsilon", "modelspec.predict_key": "v"}) == "v"


def test_only_flow_makes_rf_the_default():
    assert declares_flow({"modelspec.prediction_type": "flow"})
    assert not declares_flow({"modelspec.prediction_type": "v"})
    assert not declares_flow({"modelspec.prediction_type": "epsilon"})


def test_reads_a_real_safetensors_header(tmp_path):
    # the filename screams "flow", the metadata says epsilon: the metadata wins
    path = tmp_path / "NoobAI-RectifiedFlow-flow-rf.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"modelspec.prediction_type": "epsilon"})
    with safe_open(str(path), framework="pt") as handle:
        assert declared_prediction(handle.metadata()) == "eps"
    path2 = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(path2), metadata={"modelspec.prediction_type": "flow_matching"})
    header_length = struct.unpack("<Q", path2.read_bytes()[:8])[0]
    header = json.loads(path2.read_bytes()[8:8 + header_length])
    assert declares_flow(header["__metadata__"])
