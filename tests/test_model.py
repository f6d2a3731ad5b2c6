# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Model-level helpers: format maps, bit averages and finalization."""

import brevitas.nn as qnn
from brevitas.proxy.groupwise_float_parameter_quant import \
    GroupwiseWeightFloatQuantProxyFromInjector
from brevitas.proxy.groupwise_float_runtime_quant import GroupwiseActFloatQuantProxyFromInjector
from conftest import quantize_tiny_llama
import pytest
import torch
from torch import nn

import brevitas_dmx as bd
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatStaircaseAct
from brevitas_dmx.quant import DMXFloatStaircaseWeight
from brevitas_dmx.quant import DMXFloatWeight

MIXED_MAP = {
    "model.layers.0.self_attn.q_proj": "e4m3",
    "model.layers.0.self_attn.v_proj": {
        "weight": "e3m2", "input": "e2m3"
    },
    "model.layers.0.mlp.down_proj": "mxfp8",
    "model.layers.1.mlp.up_proj": {
        "weight": "e5m2"
    },
}


def _two_layer_model():
    torch.manual_seed(0)
    return nn.Sequential(
        qnn.QuantLinear(64, 96, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct),
        nn.ReLU(),
        qnn.QuantLinear(96, 32, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct))


def test_quantizers_are_listed_in_module_order_with_shared_layers_once():
    torch.manual_seed(0)
    shared = qnn.QuantLinear(
        32, 32, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct)
    model = nn.ModuleDict({"b": _two_layer_model(), "a": shared, "again": shared})
    names = [name for name, _ in bd.mx_quantizers(model)]
    quantized = [name for name, m in model.named_modules() if isinstance(m, qnn.QuantLinear)]
    assert quantized == ["b.0", "b.2", "a"]
    assert names == [n for n in quantized for _ in range(2)]  # weight and input of each


def test_train_only_offsets_freezes_everything_but_the_offsets():
    model = _two_layer_model()
    offsets = bd.train_only_offsets(model)
    assert offsets == bd.dmx_offsets(model) and offsets
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(o.raw_offset) for o in offsets}


def test_format_map_lists_every_layer_at_mxfp4_initially():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    fmap = bd.format_map(model)
    assert len(fmap) == 14
    assert set(map(str, fmap.values())) == {str({"weight": "e2m1", "input": "e2m1", "bits": 4.0})}


def test_apply_format_map_pins_weight_and_input_formats():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    bd.apply_format_map(model, MIXED_MAP)
    fmap = bd.format_map(model)
    assert fmap["model.layers.0.self_attn.q_proj"] == {
        "weight": "e4m3", "input": "e4m3", "bits": 8.0
    }
    assert fmap["model.layers.0.self_attn.v_proj"] == {
        "weight": "e3m2", "input": "e2m3", "bits": 6.0
    }
    assert fmap["model.layers.0.mlp.down_proj"]["weight"] == "e4m3"
    assert fmap["model.layers.1.mlp.up_proj"] == {"weight": "e5m2", "input": "e2m1", "bits": 8.0}
    assert fmap["model.layers.1.mlp.down_proj"]["weight"] == "e2m1"


def test_pinned_format_holds_in_training_mode():
    model = _two_layer_model().train()
    bd.apply_format_map(model, {"0": "e4m3"})
    assert bd.average_bits(model, "memory", False).item() == pytest.approx(
        (
            8 * 64 * 96
            + bd.dmx_layers(model)[1][1].weight_quant.tensor_quant.bits().item() * 96 * 32) /
        (64 * 96 + 96 * 32))


def test_format_map_round_trips_through_apply():
    source = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    bd.apply_format_map(source, MIXED_MAP)
    target = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    bd.apply_format_map(target, bd.format_map(source))
    assert bd.format_map(target) == bd.format_map(source)


def test_unknown_layer_names_raise_value_error_naming_them():
    model = _two_layer_model()
    with pytest.raises(ValueError, match=r"unknown layer names \['decoder.fc9'\]"):
        bd.apply_format_map(model, {"decoder.fc9": "e4m3", "0": "e4m3"})
    assert bd.format_map(model)["0"]["weight"] == "e2m1"  # nothing was pinned


def test_unknown_format_names_raise_value_error_naming_them():
    model = _two_layer_model()
    with pytest.raises(ValueError, match="'fp7'.*'e9m9'"):
        bd.apply_format_map(model, {"0": "fp7", "2": {"weight": "e9m9"}})


def test_format_for_a_missing_quantizer_is_refused():
    model = nn.Sequential(qnn.QuantLinear(64, 32, bias=False, weight_quant=DMXFloatWeight))
    with pytest.raises(ValueError, match="no learnable input quantizer"):
        bd.apply_format_map(model, {"0": {"input": "e4m3"}})


def test_simple_size_and_memory_averages():
    model = _two_layer_model()
    bd.apply_format_map(model, {"0": "e4m3", "2": "e2m1"})
    model(torch.randn(2, 10, 64))
    assert bd.average_bits(model, "simple", False).item() == pytest.approx(6.0)
    weights = (8 * 64 * 96 + 4 * 96 * 32) / (64 * 96 + 96 * 32)
    assert bd.average_bits(model, "memory", False).item() == pytest.approx(weights)
    sizes = [64 * 96, 96 * 32, 10 * 64, 10 * 96]
    bits = [8, 4, 8, 4]
    size = sum(s * b for s, b in zip(sizes, bits)) / sum(sizes)
    assert bd.average_bits(model, "size", False).item() == pytest.approx(size)
    assert bd.average_bits(
        model, "size", include_scale_bits=True).item() == pytest.approx(size + 0.25)


def test_average_bits_is_differentiable_in_the_offsets():
    model = _two_layer_model().train()
    bd.average_bits(model, "size").backward()
    grads = [o.raw_offset.grad for o in bd.dmx_offsets(model)]
    assert all(g is not None and g.item() > 0 for g in grads)


def test_bits_report_is_plain_floats_of_the_discrete_formats():
    model = _two_layer_model().train()
    with torch.no_grad():
        bd.dmx_offsets(model)[0].raw_offset.fill_(0.9)  # continuous beta ~ 0.8, discrete 0
    report = bd.bits_report(model)
    assert report["simple"] == 4.0 and report["simple_with_scales"] == 4.25
    assert all(isinstance(v, float) for v in report.values())


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting"):
        bd.average_bits(_two_layer_model(), "median")


@pytest.mark.parametrize("scale_rule", ["floor", "nonclip", "even"])
def test_finalize_keeps_outputs_identical(scale_rule):
    weight = DMXFloatStaircaseWeight.let(dmx_scale_rule=scale_rule)
    act = DMXFloatStaircaseAct.let(dmx_scale_rule=scale_rule)
    model = quantize_tiny_llama(weight, act)
    with torch.no_grad():
        for i, offset in enumerate(bd.dmx_offsets(model)):
            offset.raw_offset.fill_([0.0, 1.0, 2.0][i % 3])  # all three staircase formats
    bd.apply_format_map(model, MIXED_MAP)
    model.eval()
    ids = torch.randint(0, 96, (2, 16))
    expected = model(input_ids=ids).logits
    fmap = bd.format_map(model)
    bd.finalize(model)
    assert bd.dmx_layers(model) == []
    assert bd.format_map(model) == fmap
    assert torch.equal(model(input_ids=ids).logits, expected)


def test_finalized_layers_use_plain_brevitas_proxies():
    model = _two_layer_model()
    bd.apply_format_map(model, {"0": "e4m3"})
    bd.finalize(model)
    layer = model[0]
    assert type(layer.weight_quant) is GroupwiseWeightFloatQuantProxyFromInjector
    assert type(layer.input_quant) is GroupwiseActFloatQuantProxyFromInjector
    assert layer.weight_quant.quant_injector.exponent_bit_width == 4
    assert not any("offset" in name for name, _ in model.named_parameters())
