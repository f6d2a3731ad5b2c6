# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""AMD Quark's "even" scale rule."""

import brevitas.nn as qnn
from conftest import mx_stress_tensor
from conftest import OCP_FORMATS
import pytest
import torch

from brevitas_dmx.export.qonnx_ops import mx_block_scale
from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.functional import mx_quantize_blocks
from brevitas_dmx.quant.fixed import fixed_mx_quantizer

QUARK_DTYPES = {"e2m1": "fp4", "e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2", "e4m3": "fp8_e4m3"}

# Block maxima on both sides of the even rule's threshold 2 - 2**-(m+1) (times 2**3), with the
# scale each rule gives: floor 2**(3 - emax) for all; even one power higher at the threshold.
HAND_BLOCKS = [
    # (format, block maximum, floor scale, even scale)
    ("e2m1", 1.75 * 8, 2.0, 4.0),  # E2M1: threshold 1.75, emax 2
    ("e2m1", 1.6875 * 8, 2.0, 2.0),
    ("e2m3", 1.9375 * 8, 2.0, 4.0),  # E2M3: threshold 1.9375, emax 2
    ("e2m3", 1.875 * 8, 2.0, 2.0),
    ("e3m2", 1.875 * 8, 0.5, 1.0),  # E3M2: threshold 1.875, emax 4
    ("e3m2", 1.8125 * 8, 0.5, 0.5),
    ("e4m3", 1.9375 * 8, 2.0**-5, 2.0**-4),  # E4M3: threshold 1.9375, emax 8
    ("e4m3", 1.875 * 8, 2.0**-5, 2.0**-5),
]


@pytest.mark.parametrize("fmt,amax,floor_scale,even_scale", HAND_BLOCKS)
def test_even_scale_rounds_the_block_maximum_to_the_mantissa_width(
        fmt, amax, floor_scale, even_scale):
    e, m, _, _ = OCP_FORMATS[fmt]
    block = torch.full((1, 32), 0.25)
    block[0, 5] = -amax
    scales = {}
    for rule in ("floor", "even"):
        _, scale = mx_quantize_blocks(block, torch.tensor(float(e)), torch.tensor(float(m)), rule)
        scales[rule] = scale.item()
    assert scales == {"floor": floor_scale, "even": even_scale}
    # The numpy reference of the QONNX node, an independent implementation, agrees.
    emax = {"e2m1": 2, "e2m3": 2, "e3m2": 4, "e4m3": 8}[fmt]
    numpy_scale = mx_block_scale(block.numpy(), emax, 0.0, "even", m)
    assert numpy_scale.item() == even_scale


def test_even_rounds_a_maximum_at_the_threshold_up_where_floor_saturates():
    # E2M1 block maximum 1.75: floor keeps scale 1/4 and saturates 7 to 6 (1.5); even takes
    # scale 1/2 and rounds 3.5 to 4 (2.0), Quark's "x in [1.75 * 2**n, 2**(n+1)] -> 2**(n+1)".
    x = torch.zeros(1, 32)
    x[0, 0] = 1.75
    assert mx_fake_quantize(x, 2, 1, scale_rule="floor")[0, 0].item() == 1.5
    assert mx_fake_quantize(x, 2, 1, scale_rule="even")[0, 0].item() == 2.0


@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2", "e4m3"])
def test_fixed_even_quantizer_matches_the_functional_core(fmt):
    e, m, _, _ = OCP_FORMATS[fmt]
    x = mx_stress_tensor()
    layer = qnn.QuantLinear(
        x.shape[1], x.shape[0], bias=False, weight_quant=fixed_mx_quantizer(fmt, "weight", "even"))
    layer.weight.data.copy_(x)
    assert torch.equal(layer.quant_weight().value, mx_fake_quantize(x, e, m, scale_rule="even"))


def _quark_reference(x, fmt):
    from quark.torch.kernel.hw_emulation.hw_emulation_interface import fake_quantize_mx
    return fake_quantize_mx(
        x,
        axis=-1,
        block_size=32,
        scale_calculation_mode="even",
        mx_element_dtype=QUARK_DTYPES[fmt])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["e2m1", "e2m3", "e3m2", "e4m3"])
def test_even_rule_is_bit_exact_with_amd_quark(fmt, dtype):
    pytest.importorskip("quark")
    e, m, _, _ = OCP_FORMATS[fmt]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(
        64, 256, generator=g) * torch.exp2(torch.randint(-12, 12, (64, 1), generator=g).float())
    x = x.to(dtype)
    expected = _quark_reference(x, fmt)
    assert torch.equal(mx_fake_quantize(x, e, m, scale_rule="even"), expected)
    layer = qnn.QuantLinear(
        256, 64, bias=False, weight_quant=fixed_mx_quantizer(fmt, "weight", "even")).to(dtype)
    layer.weight.data.copy_(x)
    assert torch.equal(layer.quant_weight().value, expected)
    # The rule matters on these tensors: floor gives other values.
    assert not torch.equal(mx_fake_quantize(x, e, m, scale_rule="floor"), expected)
