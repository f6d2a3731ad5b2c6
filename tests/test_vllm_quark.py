# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""What vLLM 0.33.0's Quark OCP MX path serves (brevitas_dmx.export.vllm_quark)."""

import json

from conftest import quantize_tiny_llama
import pytest

import brevitas_dmx as dmx
from brevitas_dmx.export import export_quark
from brevitas_dmx.export import vllm_quark as vq
from brevitas_dmx.export.quark import _tensor_spec
from brevitas_dmx.export.quark import QUARK_INPUT_FORMATS
from brevitas_dmx.export.quark import QUARK_WEIGHT_FORMATS
from brevitas_dmx.formats import FORMATS
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight

SUB_BYTE = ("e2m1", "e2m3", "e3m2")


def test_mxfp4_and_mxfp6_weights_are_served_with_any_mxfp4_or_mxfp6_input_or_none():
    for weight in SUB_BYTE:
        for inp in SUB_BYTE + (None,):
            assert vq.is_served(weight, inp), (weight, inp)


def test_mxfp8_weights_are_served_weight_only_or_with_mxfp8_inputs_only():
    assert vq.is_served("e4m3", None) and vq.is_served("e4m3", "e4m3")
    # vLLM loads these, but its MXFP8 kernels never read the input config: not served as written.
    for inp in SUB_BYTE:
        assert ("e4m3", inp) in vq.LOADED_COMBINATIONS and not vq.is_served("e4m3", inp)


def test_sub_byte_weights_with_mxfp8_inputs_are_not_served():
    # vLLM loads them, but no kernel on ROCm (and only Humming on CUDA) takes MXFP8 inputs.
    for weight in SUB_BYTE:
        assert (weight, "e4m3") in vq.LOADED_COMBINATIONS and not vq.is_served(weight, "e4m3")


def test_e5m2_is_served_in_no_role():
    assert all("e5m2" not in pair for pair in vq.LOADED_COMBINATIONS | vq.SERVED_COMBINATIONS)
    assert not any(vq.is_served("e5m2", inp) for inp in list(FORMATS) + [None])


def test_a_layer_without_a_weight_quantizer_is_not_served():
    assert not vq.is_served(None, "e2m1") and not vq.is_served(None, None)


def test_the_served_set_is_exactly_fourteen_pairs_within_what_vllm_loads():
    assert vq.SERVED_COMBINATIONS <= vq.LOADED_COMBINATIONS
    assert len(vq.SERVED_COMBINATIONS) == 14 and len(vq.LOADED_COMBINATIONS) == 20
    assert set(vq.EXECUTION) == set(vq.SERVED_COMBINATIONS)


def test_aliases_and_format_objects_are_read_and_unknown_names_refused():
    assert vq.is_served("mxfp4", "E2M1") and vq.is_served(FORMATS["e4m3"], None)
    with pytest.raises(ValueError, match="Unknown MX element format 'fp5'"):
        vq.is_served("fp5", None)


def test_served_formats_drop_what_vllm_does_not_serve_tied():
    assert vq.served_formats("e2m1,e2m3,e4m3") == ("e2m1", "e2m3", "e4m3")
    assert vq.served_formats("e2m1,e3m2,e5m2") == ("e2m1", "e3m2")
    assert vq.served_formats("mxfp8-mxfp4", weights_only=True) == ("e2m1", "e4m3")


def test_served_ladder_is_the_chain_of_served_formats_or_a_named_refusal():
    assert vq.served_ladder("e2m1,e2m3,e5m2").name == "mxfp6-mxfp4"
    with pytest.raises(ValueError, match=r"keeps 1 format.*\(e3m2; not e5m2\)"):
        vq.served_ladder("e3m2,e5m2")


def test_check_format_map_served_names_every_offending_layer():
    fmap = {
        "model.layers.0.mlp.down_proj": {
            "weight": "e2m1", "input": "e2m3", "bits": 4.0
        },
        "model.layers.0.self_attn.o_proj": {
            "weight": "e4m3", "input": "e2m1", "bits": 8.0
        },
        "model.layers.1.self_attn.o_proj": {
            "weight": "e5m2", "input": None, "bits": 8.0
        },
        "model.layers.1.mlp.down_proj": {
            "weight": None, "input": "e2m1", "bits": 4.0
        },
    }
    with pytest.raises(ValueError) as info:
        vq.check_format_map_served(fmap)
    message = str(info.value)
    assert "layers.0.self_attn.o_proj (e4m3/e2m1)" in message
    assert "layers.1.self_attn.o_proj (e5m2/float)" in message
    assert "layers.1.mlp.down_proj (float/e2m1)" in message
    assert "layers.0.mlp.down_proj" not in message and "vLLM 0.33.0" in message


def test_check_format_map_served_names_unknown_formats():
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.up_proj \(Unknown MX element"):
        vq.check_format_map_served({"model.layers.0.mlp.up_proj": {"weight": "fp5"}})


def test_check_format_map_served_refuses_split_fused_layers_unless_asked_not_to():
    fmap = {
        f"model.layers.0.self_attn.{leaf}_proj": {
            "weight": fmt, "input": fmt
        } for leaf, fmt in (("q", "e2m1"), ("k", "e3m2"), ("v", "e2m1"))
    }
    with pytest.raises(ValueError, match="--dmx-tie qkv-gateup"):
        vq.check_format_map_served(fmap)
    vq.check_format_map_served(fmap, fused=False)


def test_exportable_pairs_are_the_served_ones_the_quark_export_writes():
    exportable = vq.exportable_combinations()
    assert exportable == {
        (w, a)
        for w, a in vq.SERVED_COMBINATIONS
        if w in QUARK_WEIGHT_FORMATS and a in QUARK_INPUT_FORMATS | {None}
    }
    # The export writes no MXFP8 inputs (Quark 0.13 cannot quantize them dynamically).
    assert vq.SERVED_COMBINATIONS - exportable == {("e4m3", "e4m3")}


def _spec(weight, inp):
    return {
        "weight": _tensor_spec(weight, "weight", "layer"),
        "input_tensors": None if inp is None else _tensor_spec(inp, "input", "layer"),
        "output_tensors": None,
        "bias": None,
    }


@pytest.mark.parametrize("weight", SUB_BYTE)
@pytest.mark.parametrize("inp", SUB_BYTE + (None,))
def test_the_exporters_mxfp4_and_mxfp6_specs_read_back_as_their_formats(weight, inp):
    assert vq.quark_spec_combination(_spec(weight, inp)) == (weight, inp)


def test_the_exporters_mxfp8_weight_spelling_is_not_one_vllm_0_33_loads():
    # per_block is taken only with scale_type float8_e8m0fnu and symmetric true
    # (ocp_mx_weight_dtype_and_rows); the export writes "float" and None, which Quark 0.13 reads.
    spec = _spec("e4m3", "e2m1")
    with pytest.raises(ValueError, match="scale_type float8_e8m0fnu, symmetric true"):
        vq.quark_spec_combination(spec)
    spec["weight"].update(scale_type="float8_e8m0fnu", symmetric=True)
    assert vq.quark_spec_combination(spec) == ("e4m3", "e2m1")
    per_group = dict(_spec("e2m1", None), weight=dict(_tensor_spec("e2m1", "weight", "l")))
    per_group["weight"]["dtype"] = "fp8_e4m3"
    assert vq.quark_spec_combination(per_group) == ("e4m3", None)


def test_static_or_per_tensor_fp8_or_e5m2_inputs_find_no_scheme():
    static = _spec("e2m1", "e2m1")
    static["input_tensors"]["is_dynamic"] = False
    with pytest.raises(ValueError, match="quantizes inputs dynamically"):
        vq.quark_spec_combination(static)
    fp8 = _spec("e2m1", "e2m1")
    fp8["input_tensors"].update(dtype="fp8_e4m3", qscheme="per_tensor", group_size=None)
    with pytest.raises(ValueError, match="not MXFP8"):
        vq.quark_spec_combination(fp8)
    e5m2 = _spec("e2m1", "e2m1")
    e5m2["input_tensors"]["dtype"] = "fp8_e5m2"
    with pytest.raises(ValueError, match="'fp8_e5m2' is not one"):
        vq.quark_spec_combination(e5m2)


def _even_llama(formats):
    model = quantize_tiny_llama(
        DMXFloatWeight.let(dmx_scale_rule="even"), DMXFloatAct.let(dmx_scale_rule="even"))
    names = [name for name, _ in dmx.dmx_layers(model)]
    dmx.apply_format_map(model, {n: formats(n) for n in names})
    return dmx.finalize(model.eval())


# A tied mixed map over the tiny Llama: every served sub-byte pair of the export but one.
MIXED = {
    "q_proj": {
        "weight": "e2m1", "input": "e2m1"
    },
    "k_proj": {
        "weight": "e2m1", "input": "e2m1"
    },
    "v_proj": {
        "weight": "e2m1", "input": "e2m1"
    },
    "o_proj": {
        "weight": "e3m2", "input": "e2m3"
    },
    "gate_proj": {
        "weight": "e2m3", "input": "e2m3"
    },
    "up_proj": {
        "weight": "e2m3", "input": "e2m3"
    },
    "down_proj": {
        "weight": "e2m3", "input": "e2m1"
    },
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _even_llama(lambda n: MIXED[n.rsplit(".", 1)[1]])
    directory = tmp_path_factory.mktemp("quark")
    export_quark(model, str(directory))
    config = json.loads((directory / "config.json").read_text())["quantization_config"]
    return dmx.format_map(model), config


def test_an_exported_checkpoints_layers_read_back_as_served_pairs(exported):
    fmap, config = exported
    vq.check_format_map_served(fmap)
    for name, entry in fmap.items():
        spec = config["layer_quant_config"].get(name, config["global_quant_config"])
        assert vq.quark_spec_combination(spec) == (entry["weight"], entry["input"])


# vLLM's packed modules of a Llama (vllm/model_executor/models/llama.py).
LLAMA_PACKED = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]
}


def test_vllms_own_parser_picks_the_ocp_mx_scheme_for_each_layer(exported):
    # Runs only where vLLM is installed: importing it needs its full dependency set (msgspec,
    # zmq, a matching torch, ...), which this environment does not have.
    quark = pytest.importorskip("vllm.model_executor.layers.quantization.quark.quark")
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.quantization.utils.ocp_mx_utils import _ACTIVATION_QUANT_KEY_MAP
    from vllm.model_executor.layers.quantization.utils.ocp_mx_utils import _WEIGHT_QUANT_KEY_MAP
    fmap, config = exported
    parsed = quark.QuarkConfig.from_config(config)
    parsed.packed_modules_mapping = dict(LLAMA_PACKED)
    mx = {f: vq.QUARK_DTYPES[f].replace("fp", "mxfp") for f in vq.QUARK_DTYPES}
    for layer in range(2):
        for fused, first in (("self_attn.qkv_proj", "self_attn.q_proj"),
                             ("self_attn.o_proj", "self_attn.o_proj"),
                             ("mlp.gate_up_proj", "mlp.gate_proj"),
                             ("mlp.down_proj", "mlp.down_proj")):
            entry = fmap[f"model.layers.{layer}.{first}"]
            weight_key, input_key, scheme = parsed.get_scheme_cls(
                LinearBase, f"model.layers.{layer}.{fused}")
            assert scheme is quark.QuarkOCP_MX
            assert weight_key == _WEIGHT_QUANT_KEY_MAP[mx[entry["weight"]]]
            assert input_key == _ACTIVATION_QUANT_KEY_MAP[mx[entry["input"]]]
