# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Training on the ladder's real formats: the "blend" and "sample" roundings."""

import json

from conftest import quantize_tiny_llama
from conftest import run_formats_used
from conftest import tiny_run_argv
import pytest
import torch

from brevitas_dmx import llm
import brevitas_dmx as bd
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ladder
from brevitas_dmx.proxy import dmx_quant_of
from brevitas_dmx.quant import DMXFloatChainAct
from brevitas_dmx.quant import DMXFloatChainWeight


def _weight_quantizer(rounding, raw):
    """The first layer's weight quantizer on the E2M1 -> E2M3 -> E4M3 chain, training, with the
    offset at ``raw`` and a temperature at which F(raw) is raw itself at the middle of a
    segment and the nearest knot elsewhere."""
    model = quantize_tiny_llama(DMXFloatChainWeight, DMXFloatChainAct).train()
    bd.set_rounding(model, rounding)
    bd.set_temperature(model, 1000.0)
    layer = model.model.layers[0].self_attn.q_proj
    quant = dmx_quant_of(layer.weight_quant)
    quant.offset.raw_offset.data.fill_(raw)
    return quant, layer.weight.detach()


def _at_format(quant, weight, name):
    quant.pin(element_format(name))
    try:
        return quant(weight).value.detach()
    finally:
        quant.unpin()


def test_segment_at_finds_the_segment_that_holds_the_offset():
    chain = ladder("e2m1,e2m3,e4m3")
    betas = (-1.0, 0.0, 1.9, 2.0, 3.5, 4.0, 9.0)
    assert [chain.segment_at(b) for b in betas] == [0, 0, 0, 1, 1, 1, 1]


def test_blend_is_the_weighted_sum_of_the_two_formats_around_the_offset():
    quant, weight = _weight_quantizer("blend", 3.0)  # beta 3: halfway from E2M3 to E4M3
    low, high = _at_format(quant, weight, "e2m3"), _at_format(quant, weight, "e4m3")
    assert not torch.equal(low, high)
    torch.testing.assert_close(quant(weight).value, 0.5 * (low + high), rtol=0, atol=1e-6)


def test_blend_at_a_knot_is_that_format_exactly():
    quant, weight = _weight_quantizer("blend", 2.0)
    assert torch.equal(quant(weight).value.detach(), _at_format(quant, weight, "e2m3"))


def test_sample_is_one_of_the_two_formats_and_draws_both():
    quant, weight = _weight_quantizer("sample", 3.0)
    low, high = _at_format(quant, weight, "e2m3"), _at_format(quant, weight, "e4m3")
    torch.manual_seed(0)
    drawn = []
    for _ in range(16):
        y = quant(weight).value.detach()
        is_low = torch.allclose(y, low, rtol=0, atol=1e-6)
        assert is_low or torch.allclose(y, high, rtol=0, atol=1e-6)
        drawn.append(is_low)
    assert any(drawn) and not all(drawn)


@pytest.mark.parametrize("rounding", ["blend", "sample"])
def test_offset_gradient_is_the_inner_product_with_the_format_difference(rounding):
    quant, weight = _weight_quantizer(rounding, 3.0)
    bd.set_temperature(quant.offset, 0.4)  # a smooth F, so that d beta / d raw is not zero
    low, high = _at_format(quant, weight, "e2m3"), _at_format(quant, weight, "e4m3")
    grad_out = torch.randn_like(low)
    (quant(weight).value * grad_out).sum().backward()
    raw = quant.offset.raw_offset
    dbeta = torch.autograd.grad(quant.offset(), raw)[0]
    length = ladder("e2m1,e2m3,e4m3").segments[1][1]
    expected = (grad_out * (high - low)).sum() / length * dbeta
    torch.testing.assert_close(raw.grad, expected, rtol=1e-4, atol=1e-6)


def test_blend_leaves_evaluation_on_the_discrete_format():
    quant, weight = _weight_quantizer("blend", 2.6)
    quant.eval()
    assert torch.equal(quant(weight).value, _at_format(quant, weight, "e2m3"))


@pytest.mark.parametrize("rounding", ["blend", "sample"])
def test_chain_run_with_a_mixture_ends_on_its_formats_within_budget(
        rounding, tiny_folder, text_file, tmp_path):
    argv = tiny_run_argv(
        tiny_folder,
        text_file,
        tmp_path,
        "--dmx-rounding",
        rounding,
        "--dmx-ladder",
        "e2m1,e2m3,e4m3",
        "--dmx-target-bits",
        "5.5",
        "--dmx-steps",
        "4",
        "--dmx-batch-size",
        "4",
        "--dmx-skip-baselines")
    assert llm.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    used = run_formats_used(tmp_path)
    assert used <= {"e2m1", "e2m3", "e4m3"}
    assert metrics["avg_bits"] <= 5.5 + 1e-9
