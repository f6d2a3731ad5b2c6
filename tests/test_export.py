# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""QONNX export of mixed MX models, checkpoints that reload, packed weights."""

import brevitas.nn as qnn
from conftest import mx_stress_tensor
from conftest import OCP_FORMATS
from conftest import quantize_tiny_llama
import onnx
from onnx import helper
from onnx import TensorProto
import pytest
import torch
from torch import nn

import brevitas_dmx as dmx
from brevitas_dmx.export import execute_qonnx
from brevitas_dmx.export import export_qonnx
from brevitas_dmx.export import load_pretrained
from brevitas_dmx.export import pack_weights
from brevitas_dmx.export import save_pretrained
from brevitas_dmx.export import unpack_weights
from brevitas_dmx.export.function import DOMAIN
from brevitas_dmx.export.qonnx import mx_node_attributes
from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.quant.fixed import fixed_mx_quantizer

STACK_FORMATS = ["e2m1", "e2m3", "e3m2", "e4m3", "e5m2"]


def mx_linear(n_in, n_out, bias=True):
    return qnn.QuantLinear(
        n_in,
        n_out,
        bias=bias,
        weight_quant=DMXFloatWeight,
        input_quant=DMXFloatAct,
        return_quant_tensor=False)


def finalized(model, formats):
    names = [name for name, _ in dmx.dmx_layers(model)]
    dmx.apply_format_map(model, dict(zip(names, formats)))
    model.eval()
    return dmx.finalize(model)


@pytest.fixture
def mixed_stack():
    torch.manual_seed(0)
    return finalized(nn.Sequential(*[mx_linear(64, 64) for _ in STACK_FORMATS]), STACK_FORMATS)


def single_node_graph(attributes, shape):
    node = helper.make_node(
        "MXFloatQuant", ["x"], ["y"],
        domain=DOMAIN,
        format=attributes["format_name"],
        exponent_bitwidth=attributes["exponent_bits"],
        mantissa_bitwidth=attributes["mantissa_bits"],
        exponent_bias=attributes["exponent_bias"],
        max_val=attributes["max_val"],
        max_exponent=attributes["max_exponent"],
        block_size=32,
        axis=-1,
        scale_rule=attributes["scale_rule"])
    graph = helper.make_graph(
        [node],
        "mx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("scale_rule", ["floor", "nonclip", "even"])
@pytest.mark.parametrize("fmt", list(OCP_FORMATS))
def test_qonnx_node_matches_the_functional_core_bit_for_bit(fmt, scale_rule):
    layer = nn.Linear(32, 32)
    proxy = fixed_mx_quantizer(fmt, "weight", scale_rule).proxy_class(
        layer, fixed_mx_quantizer(fmt, "weight", scale_rule))
    x = mx_stress_tensor()
    graph = single_node_graph(mx_node_attributes(proxy), list(x.shape))
    e, m = OCP_FORMATS[fmt][:2]
    expected = mx_fake_quantize(x, e, m, scale_rule=scale_rule)
    assert torch.equal(execute_qonnx(graph, x), expected)


def test_mixed_stack_round_trip_equals_torch(mixed_stack, tmp_path):
    x = torch.randn(5, 64)
    export_qonnx(mixed_stack, x, str(tmp_path / "stack.onnx"))
    assert torch.equal(execute_qonnx(str(tmp_path / "stack.onnx"), x), mixed_stack(x))


def node_attributes(path):
    """``{(layer, "weight_quant" or "input_quant"): attributes}`` of a graph's MX nodes, read from
    the node names, which follow the module path: "/<layer>/<role>/export_handler/..."."""
    formats = {}
    for node in onnx.load(path).graph.node:
        if node.op_type == "MXFloatQuant":
            layer, role = node.name.split("/")[1:3]
            formats[layer, role] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return formats


STACK_NODE_FORMATS = {
    (str(i), role): fmt for i, fmt in enumerate(STACK_FORMATS)
    for role in ("weight_quant", "input_quant")
}


def test_graph_attributes_name_each_layers_formats(mixed_stack, tmp_path):
    export_qonnx(mixed_stack, torch.randn(2, 64), str(tmp_path / "stack.onnx"))
    formats = node_attributes(str(tmp_path / "stack.onnx"))
    assert {key: a["format"].decode() for key, a in formats.items()} == STACK_NODE_FORMATS
    # (exponent bits, mantissa bits, exponent bias, max value, block size)
    assert _element_attributes(formats["3", "weight_quant"]) == (4, 3, 7, 448.0, 32)
    assert _element_attributes(formats["0", "input_quant"]) == (2, 1, 1, 6.0, 32)


def _element_attributes(attributes):
    keys = ("exponent_bitwidth", "mantissa_bitwidth", "exponent_bias", "max_val", "block_size")
    return tuple(attributes[key] for key in keys)


def test_a_partial_last_block_exports_bit_exactly(tmp_path):
    torch.manual_seed(0)
    layer = finalized(nn.Sequential(mx_linear(48, 64)), ["e2m1"])  # blocks of 32 + 16 (padded)
    x = torch.randn(3, 48)
    export_qonnx(layer, x, str(tmp_path / "pad.onnx"))
    assert torch.equal(execute_qonnx(str(tmp_path / "pad.onnx"), x), layer(x))


def test_export_refuses_a_model_with_learnable_formats(tmp_path):
    model = nn.Sequential(mx_linear(64, 64))
    with pytest.raises(ValueError, match="finalize"):
        export_qonnx(model, torch.randn(1, 64), str(tmp_path / "x.onnx"))


def test_export_refuses_an_unsupported_quantizer(tmp_path):
    from brevitas.quant.experimental.mx_quant_ocp import MXInt8Weight
    model = nn.Sequential(qnn.QuantLinear(64, 64, weight_quant=MXInt8Weight))
    with pytest.raises(TypeError, match="No QONNX export handler for 0.weight_quant"):
        export_qonnx(model, torch.randn(1, 64), str(tmp_path / "x.onnx"))


def test_dynamo_export_round_trip_equals_torch(mixed_stack, tmp_path):
    x = torch.randn(5, 64)
    path = str(tmp_path / "stack.onnx")
    export_qonnx(mixed_stack, x, path, dynamo=True)
    # torch.export drops Brevitas's group-view reshapes: only the MX nodes and the Gemms remain.
    assert {n.op_type for n in onnx.load(path).graph.node} == {"MXFloatQuant", "Gemm"}
    formats = node_attributes(path)
    assert {key: a["format"].decode() for key, a in formats.items()} == STACK_NODE_FORMATS
    assert torch.equal(execute_qonnx(path, x), mixed_stack(x))


@pytest.fixture
def mixed_llama(ignore_missing_keys):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    names = [name for name, _ in dmx.dmx_layers(model)]
    return finalized(model, [STACK_FORMATS[i % 5] for i in range(len(names))])


def test_save_and_load_give_equal_logits(mixed_llama, tmp_path):
    ids = torch.randint(0, 96, (2, 16))
    save_pretrained(mixed_llama, str(tmp_path))
    reloaded = load_pretrained(str(tmp_path))
    assert torch.equal(reloaded(input_ids=ids).logits, mixed_llama(input_ids=ids).logits)
    assert dmx.format_map(reloaded) == dmx.format_map(mixed_llama)


def test_load_pretrained_keeps_the_saved_dtype(ignore_missing_keys, tmp_path):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).to(torch.bfloat16)
    model = finalized(model, ["e2m1", "e4m3"] * 7)
    save_pretrained(model, str(tmp_path))
    reloaded = load_pretrained(str(tmp_path))
    ids = torch.randint(0, 96, (1, 16))
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_load_pretrained_names_a_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_pretrained(str(tmp_path))


def test_packed_size_is_the_average_bits_with_scales(mixed_llama, tmp_path):
    info = pack_weights(mixed_llama, str(tmp_path / "packed.safetensors"))
    bits = dmx.bits_report(mixed_llama)["memory_with_scales"]
    assert info["payload_bytes"] * 8 == pytest.approx(bits * info["elements"], rel=1e-12)
    assert info["file_bytes"] > info["payload_bytes"]  # plus the safetensors header


def test_packed_weights_unpack_to_the_quantized_weights(mixed_llama, tmp_path):
    pack_weights(mixed_llama, str(tmp_path / "packed.safetensors"))
    modules = dict(mixed_llama.named_modules())
    for name, weight in unpack_weights(str(tmp_path / "packed.safetensors")).items():
        assert torch.equal(weight, modules[name].quant_weight().value)


def test_tiny_llama_round_trip_within_float_rounding(mixed_llama, tmp_path):
    # Two Hugging Face Llama blocks (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU),
    # their 14 Linears in all five formats, weights and inputs quantized.
    from brevitas_dmx.export import export_causal_lm_qonnx
    export_causal_lm_qonnx(mixed_llama, str(tmp_path / "llama.onnx"), seqlen=16)
    ids = torch.randint(0, 96, (1, 16))
    with torch.no_grad():
        expected = mixed_llama(input_ids=ids).logits
    got = execute_qonnx(str(tmp_path / "llama.onnx"), ids)
    # The MX nodes are exact; onnxruntime's MatMul, Softmax and RMSNorm round in float32 in
    # another order than torch (observed: 6e-8 on logits of magnitude 0.6).
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
