# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The learnable quantizers inside Brevitas layers and graph quantization."""

from brevitas import config
from brevitas.graph.quantize import quantize
import brevitas.nn as qnn
from conftest import dmx_layer_map
from conftest import quantize_tiny_llama
from conftest import tiny_llama
import pytest
import torch
from torch import nn

import brevitas_dmx as bd
from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.proxy import dmx_quant_of
from brevitas_dmx.quant import DMXFloat6Act
from brevitas_dmx.quant import DMXFloat6Weight
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatStaircaseAct
from brevitas_dmx.quant import DMXFloatStaircaseWeight
from brevitas_dmx.quant import DMXFloatWeight

PAIRS = {
    "mxfp8-mxfp4": (DMXFloatWeight, DMXFloatAct),
    "mxfp6-mxfp4": (DMXFloat6Weight, DMXFloat6Act),
    "mxfp8-mxfp6-mxfp4": (DMXFloatStaircaseWeight, DMXFloatStaircaseAct),
}


def _linear(weight_quant=DMXFloatWeight, input_quant=DMXFloatAct, seed=0):
    torch.manual_seed(seed)
    return qnn.QuantLinear(64, 48, bias=True, weight_quant=weight_quant, input_quant=input_quant)


def _quants(layer):
    return dmx_quant_of(layer.weight_quant), dmx_quant_of(layer.input_quant)


def _set_raw(layer, value):
    with torch.no_grad():
        _quants(layer)[0].offset.raw_offset.fill_(value)


@pytest.mark.parametrize("ladder", sorted(PAIRS))
def test_eval_output_equals_functional_core_at_initial_format(ladder):
    layer = _linear(*PAIRS[ladder]).eval()
    x = torch.randn(3, 7, 64)
    expected = nn.functional.linear(
        mx_fake_quantize(x, 2, 1), mx_fake_quantize(layer.weight, 2, 1), layer.bias)
    assert torch.equal(layer(x), expected)


def test_weight_and_input_share_one_offset():
    layer = _linear()
    weight, inp = _quants(layer)
    assert weight.offset is inp.offset
    assert len(list(layer.parameters())) == 3  # weight, bias, one offset


def test_offsets_can_be_separate():
    layer = _linear(
        DMXFloatWeight.let(dmx_share_offset=False), DMXFloatAct.let(dmx_share_offset=False))
    weight, inp = _quants(layer)
    assert weight.offset is not inp.offset


def test_quantizers_on_different_ladders_do_not_share():
    layer = _linear(DMXFloatWeight, DMXFloat6Act)
    weight, inp = _quants(layer)
    assert weight.offset is not inp.offset


def test_offset_gets_a_gradient_in_training():
    layer = _linear().train()
    layer(torch.randn(4, 9, 64)).pow(2).mean().backward()
    grad = _quants(layer)[0].offset.raw_offset.grad
    assert grad is not None and torch.isfinite(grad) and grad.item() != 0.0


@pytest.mark.parametrize(
    "ladder,raw,expected",
    [
        ("mxfp8-mxfp4", 0.9, "e2m1"),
        ("mxfp8-mxfp4", 1.1, "e4m3"),
        ("mxfp6-mxfp4", 1.1, "e2m3"),
        ("mxfp8-mxfp6-mxfp4", 0.4, "e2m1"),
        ("mxfp8-mxfp6-mxfp4", 1.0, "e3m2"),
        ("mxfp8-mxfp6-mxfp4", 1.6, "e4m3"),
    ],
)
def test_eval_mode_uses_the_discrete_format(ladder, raw, expected):
    layer = _linear(*PAIRS[ladder]).eval()
    _set_raw(layer, raw)
    fmt = bd.element_format(expected)
    x = torch.randn(2, 5, 64)
    reference = nn.functional.linear(
        mx_fake_quantize(x, fmt.exponent_bits, fmt.mantissa_bits),
        mx_fake_quantize(layer.weight, fmt.exponent_bits, fmt.mantissa_bits),
        layer.bias)
    assert bd.format_map(layer)[""]["weight"] == expected
    assert torch.equal(layer(x), reference)


def test_training_mode_format_is_continuous():
    layer = _linear().train()
    _set_raw(layer, 1.0)  # the middle of the sigmoid: beta = 1, E3M2 widths in training
    e, m = _quants(layer)[0].widths()
    assert (e.item(), m.item()) == pytest.approx((3.0, 2.0))


def test_temperature_sharpens_towards_the_discrete_format():
    layer = _linear().train()
    _set_raw(layer, 1.3)
    quant = _quants(layer)[0]
    bd.set_temperature(layer, 0.4)
    soft = quant.bits().item()
    bd.set_temperature(layer, 20.0)
    sharp = quant.bits().item()
    assert 4.0 < soft < sharp and sharp == pytest.approx(8.0, abs=1e-3)


def test_state_dict_round_trip_keeps_offsets_pins_and_sharing():
    source = _linear()
    _set_raw(source, 1.7)
    bd.apply_format_map(source, {"": {"input": "e5m2"}})
    target = _linear(seed=1)
    target.load_state_dict(source.state_dict())
    weight, inp = _quants(target)
    assert weight.offset is inp.offset
    assert weight.offset.raw_offset.item() == pytest.approx(1.7)
    assert bd.format_map(target) == bd.format_map(source)
    x = torch.randn(2, 64)
    assert torch.equal(target.eval()(x), source.eval()(x))


def test_loads_a_float_state_dict(ignore_missing_keys):
    float_layer = nn.Linear(64, 48)
    layer = _linear()
    layer.load_state_dict(float_layer.state_dict())
    assert torch.equal(layer.weight, float_layer.weight)
    assert _quants(layer)[0].offset.raw_offset.item() == 0.0


def test_float_state_dict_without_ignore_missing_keys_reports_the_offsets():
    assert not config.IGNORE_MISSING_KEYS
    result = _linear().load_state_dict(nn.Linear(64, 48).state_dict(), strict=False)
    assert any(key.endswith("raw_offset") for key in result.missing_keys)


def test_tiny_llama_layerwise_quantize_keeps_logits_finite():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    float_model = tiny_llama()
    layers = dict(bd.dmx_layers(model))
    linear_names = [n for n, m in float_model.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(layers) == sorted(n for n in linear_names if n != "lm_head")
    assert torch.equal(
        layers["model.layers.0.mlp.down_proj"].weight,
        float_model.model.layers[0].mlp.down_proj.weight)
    ids = torch.randint(0, 96, (2, 16))
    logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, float_model(input_ids=ids).logits)


def test_tiny_llama_trains_offsets_through_the_lm_loss():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct).train()
    ids = torch.randint(0, 96, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [o.raw_offset.grad for o in bd.dmx_offsets(model)]
    assert len(grads) == 14
    assert all(g is not None and torch.isfinite(g) for g in grads)
    assert sum(g.item() != 0.0 for g in grads) >= 12


def test_fx_quantize_flow_on_a_hugging_face_module():
    mlp = tiny_llama().model.layers[0].mlp
    graph_model = torch.fx.symbolic_trace(mlp)
    identity = (
        qnn.QuantIdentity, {
            "act_quant": DMXFloatAct.let(group_dim=-1), "return_quant_tensor": False
        })
    quant_model = quantize(
        graph_model,
        compute_layer_map=dmx_layer_map(DMXFloatWeight, DMXFloatAct),
        quant_act_map={},
        quant_identity_map={
            "signed": identity, "unsigned": identity
        })
    names = [name for name, _ in bd.dmx_layers(quant_model)]
    assert {"gate_proj", "up_proj", "down_proj"} <= set(names)
    x = torch.randn(2, 5, 64)
    quant_model.eval()
    gate, up, down = (quant_model.get_submodule(n) for n in ("gate_proj", "up_proj", "down_proj"))
    q = lambda t: mx_fake_quantize(t, 2, 1)
    hidden = nn.functional.silu(nn.functional.linear(q(x), q(gate.weight))) * \
        nn.functional.linear(q(x), q(up.weight))
    expected = nn.functional.linear(q(hidden), q(down.weight))
    assert torch.equal(quant_model(x), expected)


def test_eval_reuses_the_quantized_weight_until_weight_or_format_changes():
    layer = _linear().eval()
    quant = _quants(layer)[0]
    with torch.no_grad():
        first = quant(layer.weight).value
        assert quant(layer.weight).value is first
        layer.weight.mul_(2.0)  # in place: the version counter changes
        second = quant(layer.weight).value
        assert second is not first and torch.equal(second, 2 * first)
        bd.apply_format_map(layer, {"": "e4m3"})
        assert not torch.equal(quant(layer.weight).value, second)


def test_training_mode_never_uses_the_eval_cache():
    layer = _linear().eval()
    quant = _quants(layer)[0]
    with torch.no_grad():
        quant(layer.weight)
    layer.train()
    out = quant(layer.weight).value
    assert quant._eval_cache is None
    assert out.grad_fn is not None  # the offset's gradient path is there


def test_the_quantizer_output_names_its_fields_and_feeds_brevitas_quant_tensors():
    layer = _linear().eval()
    weight_quant, _ = _quants(layer)
    out = weight_quant(layer.weight)
    assert isinstance(out, tuple) and out.saturating and out.inf_values is None
    assert torch.equal(out.exponent_bias, 2**(out.exponent_bit_width - 1) - 1)
    quant_weight = layer.quant_weight()  # the proxy unpacks it into a GroupwiseFloatQuantTensor
    assert torch.equal(quant_weight.scale_, out.scale)
