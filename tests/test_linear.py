# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""DMXQuantLinear: the fused training step gives qnn.QuantLinear's outputs and gradients and
keeps less for backward; outside training it is qnn.QuantLinear."""

import brevitas.nn as qnn
import pytest
import torch

import brevitas_dmx as dmx
from brevitas_dmx.nn import DMXQuantLinear
from brevitas_dmx.profiling import saved_tensor_bytes
from brevitas_dmx.proxy import dmx_quant_of
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatStaircaseAct
from brevitas_dmx.quant import DMXFloatStaircaseWeight
from brevitas_dmx.quant import DMXFloatWeight


def _pair(bias, weight_quant, act_quant, raw):
    torch.manual_seed(0)
    stock, fused = (
        cls(96, 40, bias=bias, weight_quant=weight_quant, input_quant=act_quant,
            return_quant_tensor=False) for cls in (qnn.QuantLinear, DMXQuantLinear))
    fused.load_state_dict(stock.state_dict())
    for layer in (stock, fused):
        for offset in dmx.train_only_offsets(layer):
            offset.raw_offset.data.fill_(raw)
        layer.train()
    return stock, fused


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("raw", [0.3, 1.1, 1.9])
@pytest.mark.parametrize("ladder", ["sigmoid", "staircase"])
def test_fused_step_equals_quant_linear(bias, raw, ladder):
    quants = (DMXFloatWeight, DMXFloatAct) if ladder == "sigmoid" else (
        DMXFloatStaircaseWeight, DMXFloatStaircaseAct)
    stock, fused = _pair(bias, *quants, raw)
    x = torch.randn(3, 5, 96) * torch.logspace(-3, 2, 96)
    x[0, 0, :32] = 0
    results = []
    for layer in (stock, fused):
        xx = x.clone().requires_grad_(True)
        y = layer(xx)
        (y.pow(2).sum()).backward()
        results.append((y.detach(), xx.grad, [o.raw_offset.grad for o in dmx.dmx_offsets(layer)]))
    (y0, gx0, go0), (y1, gx1, go1) = results
    assert torch.equal(y0, y1)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(go0, go1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # the size-weighted average still sees the input shape
    assert dmx.average_bits(fused, "size") == dmx.average_bits(stock, "size")


def test_fused_step_keeps_less_for_backward():
    stock, fused = _pair(False, DMXFloatWeight, DMXFloatAct, 1.0)
    x = torch.randn(64, 96, requires_grad=True)
    assert saved_tensor_bytes(lambda: fused(x))[1] < saved_tensor_bytes(lambda: stock(x))[1]


def test_eval_and_no_grad_take_the_stock_path():
    stock, fused = _pair(False, DMXFloatWeight, DMXFloatAct, 1.5)
    x = torch.randn(4, 96)
    stock.eval(), fused.eval()
    assert torch.equal(stock(x), fused(x))
    fused.train(), stock.train()
    with torch.no_grad():
        assert torch.equal(stock(x), fused(x))


def _quantizers(layer):
    """(weight quantizer, input quantizer) of a dMX layer."""
    return dmx_quant_of(layer.weight_quant), dmx_quant_of(layer.input_quant)


def _step(layer, x):
    """(output, input grad, offset grads) of one training step of ``layer``."""
    for offset in dmx.dmx_offsets(layer):
        offset.raw_offset.grad = None
    xx = x.clone().requires_grad_(True)
    y = layer(xx)
    y.pow(2).sum().backward()
    return y.detach(), xx.grad, [o.raw_offset.grad.clone() for o in dmx.dmx_offsets(layer)]


def test_compiled_step_matches_the_eager_one(compiled_kernels):
    from brevitas_dmx import functional
    assert compiled_kernels.linear_forward is not functional.EAGER.linear_forward
    assert compiled_kernels.linear_backward is not functional.EAGER.linear_backward
    _, fused = _pair(True, DMXFloatWeight, DMXFloatAct, 1.3)
    dmx.use_compiled_kernels(fused, True)
    assert all(q.kernels is compiled_kernels for q in _quantizers(fused))
    x = torch.randn(3, 5, 96) * torch.logspace(-3, 2, 96)
    compiled = _step(fused, x)
    dmx.use_compiled_kernels(fused, False)
    assert all(q.kernels is functional.EAGER for q in _quantizers(fused))
    eager = _step(fused, x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6)
    for got, want in zip(compiled[2], eager[2]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_compiled_step_compiles_once_for_every_weight_shape(compiled_kernels):
    # Weights and biases are parameters, whose shapes torch.compile keeps static, and it guards
    # on requires_grad: a kernel per layer shape and per input with or without grad, and past
    # its cache limit eager kernels. The first layer has 2 blocks, the size of the pair of
    # format constants (views of a pair, they tied it to the blocks). A bias, present or not,
    # is a graph of its own.
    layers = [
        DMXQuantLinear(
            features,
            outputs,
            bias=True,
            weight_quant=DMXFloatWeight,
            input_quant=DMXFloatAct,
            return_quant_tensor=False) for features, outputs in ((64, 40), (160, 72), (96, 24))
    ]
    for layer in layers:
        dmx.train_only_offsets(layer)
        dmx.use_compiled_kernels(layer, True)
        layer.train()
    with dmx.batched_formats(layers[0]):  # the constants as the trainer gives them
        _step(layers[0], torch.randn(3, 5, 64))
    with torch.compiler.set_stance("fail_on_recompile"):
        for layer, rows in zip(layers[1:], (11, 7)):
            with dmx.batched_formats(layer):
                _step(layer, torch.randn(2, rows, layer.in_features))
        layers[0](torch.randn(4, 64)).pow(2).sum().backward()  # an input that requires no grad


def test_use_compiled_kernels_switches_only_its_model_and_survives_a_reload():
    # the kernels are the model's choice: another model keeps its own, and Brevitas's rebuild
    # of the quantizers on a state-dict load keeps it (compiling nothing: torch.compile is lazy)
    from brevitas_dmx import functional
    _, fused = _pair(False, DMXFloatWeight, DMXFloatAct, 1.3)
    _, other = _pair(False, DMXFloatWeight, DMXFloatAct, 1.3)
    dmx.use_compiled_kernels(fused, True)
    before = _quantizers(fused)
    assert all(q.kernels is functional.compiled_kernels() for q in before)
    assert all(q.kernels is functional.EAGER for q in _quantizers(other))
    fused.load_state_dict(fused.state_dict())
    assert all(q.kernels is functional.compiled_kernels() for q in _quantizers(fused))
    dmx.use_compiled_kernels(fused, False)
    assert all(q.kernels is functional.EAGER for q in _quantizers(fused))
