# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The functional core against independent references: ml_dtypes grids and Brevitas's MX."""

import math

from autograd_reference import reference_quantize_blocks
import brevitas.nn as qnn
from conftest import mx_stress_tensor
from conftest import OCP_FORMATS
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import ml_dtypes
import numpy as np
import pytest
import torch

from brevitas_dmx.formats import LADDERS
from brevitas_dmx.functional import _binade_power
from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.functional import mx_max_normal
from brevitas_dmx.functional import mx_quantize_blocks
from brevitas_dmx.quant import fixed_mx_quantizer

FORMAT_NAMES = sorted(OCP_FORMATS)


def _blocks(x: torch.Tensor, block_size: int = 32) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, block_size)


@st.composite
def mx_tensors(draw):
    """Float32 matrices with rows at scattered magnitudes, zero blocks and outliers."""
    rows = draw(st.integers(1, 6))
    n_blocks = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 32 * n_blocks)).astype(np.float32)
    x *= np.exp2(rng.integers(-40, 40, size=(rows, 1))).astype(np.float32)
    zero_mask = rng.random((rows, n_blocks)) < 0.2
    x.reshape(rows, n_blocks, 32)[zero_mask] = 0.0
    outliers = rng.random(x.shape) < 0.02
    x[outliers] *= np.float32(draw(st.sampled_from([10.0, 1e3, 1e5])))
    return torch.from_numpy(x)


def _ml_dtypes_reference(blocks: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """Elements rounded by ml_dtypes (RNE, subnormals) after saturating at the max normal."""
    _, _, dtype_name, max_normal = OCP_FORMATS[fmt]
    scaled = np.clip((blocks / scale).numpy(), -max_normal, max_normal)
    grid = scaled.astype(getattr(ml_dtypes, dtype_name)).astype(np.float32)
    return torch.from_numpy(grid) * scale


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@settings(max_examples=40, deadline=None)
@given(x=mx_tensors())
def test_elements_match_ml_dtypes_grid(fmt, x):
    e, m, _, _ = OCP_FORMATS[fmt]
    out, scale = mx_quantize_blocks(_blocks(x), torch.tensor(float(e)), torch.tensor(float(m)))
    assert torch.equal(out, _ml_dtypes_reference(_blocks(x), scale, fmt))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@settings(max_examples=40, deadline=None)
@given(x=mx_tensors())
def test_floor_scale_is_the_ocp_shared_exponent(fmt, x):
    e, m, _, max_normal = OCP_FORMATS[fmt]
    _, scale = mx_quantize_blocks(_blocks(x), torch.tensor(float(e)), torch.tensor(float(m)))
    amax = _blocks(x).abs().amax(-1, keepdim=True).clamp_min(1e-10).numpy().astype(np.float64)
    _, exponent = np.frexp(amax)  # exact floor(log2(amax)) + 1, computed in float64
    emax = np.floor(np.log2(max_normal))
    expected = np.exp2(exponent - 1 - emax)
    # Brevitas takes floor(log2(amax)) in float32, which rounds up for maxima within one float32
    # ulp below a power of two; the core follows Brevitas there (a legal, twice larger scale).
    just_below_power = np.exp2(exponent) * (1 - 2.0**-23) <= amax
    expected = np.where(just_below_power, 2 * expected, expected)
    assert np.array_equal(scale.numpy().astype(np.float64), expected)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@settings(max_examples=40, deadline=None)
@given(x=mx_tensors())
def test_nonclip_scale_is_smallest_unsaturating_power_of_two(fmt, x):
    e, m, _, max_normal = OCP_FORMATS[fmt]
    blocks = _blocks(x)
    _, scale = mx_quantize_blocks(
        blocks, torch.tensor(float(e)), torch.tensor(float(m)), scale_rule="nonclip")
    amax = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-10).double()
    scale = scale.double()
    assert torch.equal(torch.exp2(torch.round(torch.log2(scale))), scale)
    # Within float32 rounding of amax / max_normal, as Brevitas computes it.
    assert bool((amax / scale <= max_normal * (1 + 2**-22)).all())
    assert bool((amax / (scale / 2) > max_normal).all())


@pytest.mark.parametrize("scale_rule", ["floor", "nonclip", "even"])
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_matches_brevitas_weight_quantizer(fmt, scale_rule):
    e, m, _, _ = OCP_FORMATS[fmt]
    x = mx_stress_tensor()
    layer = qnn.QuantLinear(
        x.shape[1],
        x.shape[0],
        bias=False,
        weight_quant=fixed_mx_quantizer(fmt, "weight", scale_rule))
    layer.weight.data.copy_(x)
    expected = layer.quant_weight().value
    assert torch.equal(mx_fake_quantize(x, e, m, scale_rule=scale_rule), expected)


@pytest.mark.parametrize("scale_rule", ["floor", "nonclip", "even"])
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_matches_brevitas_activation_quantizer(fmt, scale_rule):
    e, m, _, _ = OCP_FORMATS[fmt]
    x = mx_stress_tensor(rows=24, seed=1).reshape(2, 12, 256)
    act = qnn.QuantIdentity(
        fixed_mx_quantizer(fmt, "act", scale_rule).let(group_dim=-1), return_quant_tensor=True)
    expected = act(x).value
    assert torch.equal(mx_fake_quantize(x, e, m, scale_rule=scale_rule), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_binade_power_equals_frexp_on_normal_numbers(dtype):
    # The exponent-field mask must agree with frexp (an independent, exact reference) on every
    # normal number, from the smallest to the largest, at and just below powers of two.
    info = torch.finfo(dtype)
    powers = torch.arange(math.ceil(math.log2(info.tiny)), math.floor(math.log2(info.max)) + 1)
    below = torch.nextafter(torch.exp2(powers.double()).to(dtype), torch.zeros((), dtype=dtype))
    x = torch.cat([torch.exp2(powers.double()).to(dtype), below, torch.randn(4096, dtype=dtype)])
    x = torch.cat([x, -x])
    x = x[x.isfinite() & (x.abs() >= info.tiny)]
    expected = torch.ldexp(torch.ones_like(x), torch.frexp(x)[1] - 1)
    assert torch.equal(_binade_power(x), expected)


@pytest.mark.parametrize("fmt,expected", [(f, spec[3]) for f, spec in sorted(OCP_FORMATS.items())])
def test_max_normal_at_ocp_formats(fmt, expected):
    e, m, _, _ = OCP_FORMATS[fmt]
    assert mx_max_normal(torch.tensor(float(e)), torch.tensor(float(m))).item() == expected


def test_max_normal_is_continuous_between_formats():
    e = torch.linspace(2, 5, 301)
    bound = mx_max_normal(e, torch.full_like(e, 2.0))
    jumps = (bound[1:] / bound[:-1]).max().item()
    assert jumps < 1.1


def test_all_zero_block_gives_zeros_not_nan():
    x = torch.zeros(3, 64)
    x[1, 40] = 5.0
    for e, m in [(2.0, 1.0), (2.7, 1.7), (4.0, 3.0)]:
        out = mx_fake_quantize(x, e, m)
        assert torch.isfinite(out).all()
        assert torch.equal(out[0], torch.zeros(64)) and torch.equal(out[1, :32], torch.zeros(32))


def test_tail_shorter_than_block_is_padded_with_zeros():
    x = torch.randn(5, 70)
    padded = torch.nn.functional.pad(x, (0, 26))
    expected = mx_fake_quantize(padded, 2, 1)[:, :70]
    assert torch.equal(mx_fake_quantize(x, 2, 1), expected)


def test_blocks_run_along_the_requested_dim():
    x = torch.randn(64, 7)
    expected = mx_fake_quantize(x.t().contiguous(), 4, 3).t()
    assert torch.equal(mx_fake_quantize(x, 4, 3, dim=0), expected)


def test_block_size_is_respected():
    x = torch.randn(4, 64)
    x[:, 5] = 100.0  # with blocks of 16, the outlier only coarsens its own block
    out16 = mx_fake_quantize(x, 2, 1, block_size=16)
    assert torch.equal(out16[:, 16:], mx_fake_quantize(x[:, 16:], 2, 1, block_size=16))
    assert not torch.equal(out16, mx_fake_quantize(x, 2, 1, block_size=32))


def test_bfloat16_input_matches_float32_at_integer_formats():
    x = torch.randn(8, 128).to(torch.bfloat16)
    out = mx_fake_quantize(x, 4, 3)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), mx_fake_quantize(x.float(), 4, 3))


@pytest.mark.parametrize("ladder", sorted(LADDERS))
def test_error_decreases_as_beta_grows(ladder):
    torch.manual_seed(0)
    w = torch.randn(128, 512) * 0.02
    w[torch.rand_like(w) < 0.002] *= 20
    path = LADDERS[ladder]

    def error(beta):
        e, m = path.widths(torch.tensor(beta))
        return ((mx_fake_quantize(w, e, m) - w)**2).mean().item()

    half_steps = [error(b) for b in (0.0, 0.5, 1.0, 1.5, 2.0)]
    assert all(b < a for a, b in zip(half_steps, half_steps[1:]))
    fine = [error(b) for b in np.linspace(0, 2, 21)]
    assert all(b < 1.1 * a for a, b in zip(fine, fine[1:]))


@pytest.mark.parametrize("ladder", sorted(LADDERS))
def test_gradients_to_beta_are_finite_and_nonzero(ladder):
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    x = torch.randn(16, 256)
    target = x @ w.t()
    path = LADDERS[ladder]
    for start in (0.3, 1.0, 1.7):
        beta = torch.tensor(start, requires_grad=True)
        e, m = path.widths(beta)
        out = mx_fake_quantize(x, e, m) @ mx_fake_quantize(w, e, m).t()
        ((out - target)**2).mean().backward()
        assert torch.isfinite(beta.grad) and beta.grad.item() != 0.0


def test_gradient_reaches_exponent_and_mantissa_separately():
    w = torch.randn(32, 64)
    e = torch.tensor(2.5, requires_grad=True)
    m = torch.tensor(1.5, requires_grad=True)
    (mx_fake_quantize(w, e, m) * torch.randn(32, 64)).sum().backward()
    assert e.grad.item() != 0.0 and m.grad.item() != 0.0


def test_gradient_to_input_is_straight_through_except_saturated():
    x = torch.randn(2, 32) * 0.1
    x[0, 3] = 100.0  # 6.25 after scaling: rounds to the max normal 6, not saturated
    x[1, 3] = 7.5  # rounds to 8 on the E2M1 grid: saturates to 6
    x.requires_grad_(True)
    mx_fake_quantize(x, 2, 1).sum().backward()
    expected = torch.ones_like(x)
    expected[1, 3] = 0.0
    assert torch.equal(x.grad, expected)


def test_per_row_widths_broadcast():
    x = torch.randn(2, 64)
    e = torch.tensor([[2.0], [4.0]])
    m = torch.tensor([[1.0], [3.0]])
    out = mx_fake_quantize(x, e, m)
    assert torch.equal(out[0], mx_fake_quantize(x[:1], 2, 1)[0])
    assert torch.equal(out[1], mx_fake_quantize(x[1:], 4, 3)[0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(block_size=0), "block_size"),
        (dict(scale_rule="round"), "scale_rule"),
        (dict(exponent_bits=0), "exponent_bits"),
        (dict(mantissa_bits=torch.ones(1, 64)), "size 1 along"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = dict(exponent_bits=2, mantissa_bits=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mx_fake_quantize(torch.randn(4, 64), **args)


def test_widths_varying_within_a_block_are_refused():
    blocks = torch.randn(4, 2, 32)
    with pytest.raises(ValueError, match="exponent_bits has shape \\(32,\\).*size 1 along"):
        mx_quantize_blocks(blocks, torch.full((32,), 3.0), torch.tensor(2.0))


@pytest.mark.parametrize("scale_rule", ["floor", "nonclip", "even"])
@pytest.mark.parametrize("widths", [(2.3, 1.3), (3.6, 2.6), (4.4, 2.2), (2.0 + 1e-3, 2.9)])
def test_custom_backward_matches_autograd_reference(widths, scale_rule):
    torch.manual_seed(0)
    x = (mx_stress_tensor(rows=16, cols=128) * 1e-3).requires_grad_(True)
    g = torch.randn(16, 128)
    grads = []
    for fn in (lambda b, e, m: mx_quantize_blocks(b, e, m, scale_rule)[0],
               lambda b, e, m: reference_quantize_blocks(b, e, m, scale_rule)):
        e = torch.tensor(widths[0], requires_grad=True)
        m = torch.tensor(widths[1], requires_grad=True)
        out = fn(_blocks(x), e, m).reshape(16, 128)
        grads.append((out.detach(), *torch.autograd.grad((out * g).sum(), (x, e, m))))
    (out, gx, ge, gm), (ref_out, ref_gx, ref_ge, ref_gm) = grads
    assert torch.equal(out, ref_out)
    # The reference divides and multiplies by a non-power-of-two scale: float rounding only.
    assert torch.allclose(gx, ref_gx, rtol=1e-6, atol=0)
    assert ge.item() == pytest.approx(ref_ge.item(), rel=1e-4, abs=1e-6)
    assert gm.item() == pytest.approx(ref_gm.item(), rel=1e-4, abs=1e-6)
    assert ge.item() != 0.0 and gm.item() != 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_format_constants_equal_the_format_functions_bit_for_bit(dtype):
    from brevitas_dmx.functional import format_constants
    from brevitas_dmx.functional import mx_exponent_bias
    from brevitas_dmx.functional import mx_max_exponent
    e, m = torch.meshgrid(
        torch.linspace(1.0, 6.0, 501), torch.linspace(0.0, 4.0, 401), indexing="ij")
    e, m = e.to(dtype), m.to(dtype)
    want = (
        mx_max_exponent(e),
        mx_max_normal(e, m),
        torch.exp2(1 - mx_exponent_bias(e)),
        torch.exp2(-m))
    for got, expected in zip(format_constants(e, m), want):
        assert torch.equal(got, expected)


def _width_grads_by_autograd(e, m, sums, scale_rule, shape):
    """Autograd through the format functions themselves: the oracle for the closed form."""
    from brevitas_dmx.functional import _scale_exponent_term
    from brevitas_dmx.functional import mx_exponent_bias
    ln2 = math.log(2.0)
    e, m = e.clone().requires_grad_(True), m.clone().requires_grad_(True)
    sum_error, sum_subnormal, sum_saturated = sums
    max_normal = mx_max_normal(e, m)
    terms = (
        (
            _scale_exponent_term(e, m, scale_rule),
            ln2 * (sum_error + max_normal.detach() * sum_saturated)),
        (1 - mx_exponent_bias(e), ln2 * sum_subnormal),
        (-m, ln2 * sum_error),
        (max_normal, sum_saturated),
    )
    return torch.autograd.grad(
        [v.expand(shape) for v, _ in terms], (e, m), [a.expand(shape) for _, a in terms])


# Exponent widths on both sides of the E4M3 NaN code and the E5M2 reserved exponent (4 and 5),
# and exactly on them, where clamp and abs switch their gradients.
@pytest.mark.parametrize("e_value", [2.0, 2.7, 3.0, 3.5, 4.0, 4.25, 4.5, 5.0, 5.5])
@pytest.mark.parametrize("scale_rule", ["floor", "nonclip", "even"])
def test_closed_form_width_grads_match_autograd(e_value, scale_rule):
    from brevitas_dmx.functional import width_grads
    torch.manual_seed(0)
    shape = (4, 1, 1)  # per-row widths against per-block sums
    e = torch.full((4, 1, 1), e_value)
    m = torch.tensor([0.5, 1.0, 2.3, 3.0]).view(4, 1, 1)
    sums = [torch.randn(shape) for _ in range(3)]
    got = width_grads(e, m, *sums, scale_rule, shape)
    # The oracle in float64; the closed form runs in float32, where the saturation term
    # (max_normal, up to 57344, times its sum) sets the size of the rounding error.
    want = _width_grads_by_autograd(
        e.double(), m.double(), [t.double() for t in sums], scale_rule, shape)
    tolerance = 1e-5 * (1 + mx_max_normal(e, m).double() * sum(t.abs().double() for t in sums))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert ((g.double() - w).abs() <= tolerance).all()


def test_custom_backward_saves_only_the_input_and_block_scales():
    x = torch.randn(64, 256, requires_grad=True)
    e = torch.tensor(2.5, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        mx_fake_quantize(x, e, e - 1)
    big = [t for t in saved if t.numel() > x.numel() // 32]  # more than one value per block
    assert len(big) == 1 and big[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_compiled_kernels_match_eager(compiled_kernels):
    # --dmx-compile runs the torch.compile'd kernels: the same values at hardware formats, and
    # the same gradient sums up to the order of float additions.
    from brevitas_dmx import functional
    torch.manual_seed(0)
    blocks = torch.randn(8, 4, 32) * torch.exp2(torch.randint(-8, 8, (8, 4, 1)).float())
    grad = torch.randn_like(blocks)
    cases = ((4.0, 3.0, True), (2.0, 1.0, True), (3.3, 2.2, False))

    def run(kernels):
        results = []
        for e, m, _ in cases:
            e, m = torch.tensor(e), torch.tensor(m)
            out, scale = functional.forward_kernel(
                blocks, functional.format_constants(e, m), "floor", kernels)
            sums = functional.values_backward_kernel(
                blocks, functional.format_constants(e, m), scale, grad, (), kernels)
            results.append((out, scale, sums))
        return results

    assert compiled_kernels.forward is not functional.EAGER.forward
    compiled = run(compiled_kernels)
    eager = run(functional.EAGER)
    for (_, _, exact), (out, scale, sums), (out_c, scale_c, sums_c) in zip(cases, eager, compiled):
        assert torch.equal(scale, scale_c)
        if exact:
            assert torch.equal(out, out_c)
        else:
            torch.testing.assert_close(out_c, out, rtol=1e-6, atol=0)
        for got, expected in zip(sums_c, sums):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_format_sums_equal_the_float32_ones_on_the_same_values():
    # a fractional format's grid and scales are no bfloat16 numbers: the arithmetic runs in
    # float32 (in bfloat16 the error sum came out 140-230x off on one weight)
    from brevitas_dmx import functional
    torch.manual_seed(0)
    blocks = (torch.randn(64, 6, 32) * 0.05).bfloat16()
    grad = (torch.randn(64, 6, 32) * 1e-3).bfloat16()
    e, m = torch.tensor(3.3), torch.tensor(2.2)
    constants = functional.format_constants(e, m)
    # one scale for both: bfloat16 finds some blocks' exponents one higher, as Brevitas does
    _, scale = functional.forward_kernel(blocks.float(), constants, "floor")
    sums = {}
    for dtype in (torch.float32, torch.bfloat16):
        assert functional.math_dtype(dtype) == torch.float32
        x = blocks.to(dtype)
        sums[dtype] = functional.values_backward_kernel(x, constants, scale, grad.to(dtype), ())[1:]
    for got, want in zip(sums[torch.bfloat16], sums[torch.float32]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kernel", ["forward", "values_backward"])
def test_compiled_kernels_keep_only_the_block_size_static(kernel):
    # The block size is compiled in (loops of known length, and the scales computed in
    # parallel: BENCHMARKS.md, 'What does the quantizer cost?'); the other sizes stay dynamic, so
    # layers and batches of any
    # shape share one compiled kernel. A fresh function: the module's kernels may already hold
    # graphs for other block sizes from other tests.
    from brevitas_dmx import functional
    constants = functional.format_constants(torch.tensor(3.3), torch.tensor(2.2))

    def call(blocks):
        if kernel == "forward":
            return functional._forward_elements(blocks, *constants, "floor")
        _, scale = functional._forward_elements(blocks, *constants, "floor")
        return functional._values_backward_elements(
            blocks, *constants[1:], scale, torch.ones_like(blocks), ())

    compiled = torch.compile(call, dynamic=True)
    compiled(torch.randn(8, 4, 32))
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(torch.randn(5, 7, 32))  # held before too: rows and blocks stay dynamic
        with pytest.raises(RuntimeError, match="recompile"):  # the block size is compiled in
            compiled(torch.randn(5, 7, 16))


def test_strict_export_keeps_a_block_dimension_declared_dynamic():
    # the block size is compiled in only under torch.compile: torch.export keeps what it is told

    class Quantize(torch.nn.Module):

        def forward(self, blocks):
            return mx_quantize_blocks(blocks, torch.tensor(4.0), torch.tensor(3.0))[0]

    blocks = torch.randn(4, 3, 32)
    dims = {"blocks": {2: torch.export.Dim("block", min=2, max=64)}}
    program = torch.export.export(Quantize(), (blocks,), dynamic_shapes=dims, strict=True)
    small = torch.randn(4, 3, 16)
    assert torch.equal(program.module()(small), Quantize()(small))


def test_compiled_bfloat16_kernels_find_the_eager_block_scales(compiled_kernels):
    # eager bfloat16 rounds log2 of a block maximum just below a power of two up, as Brevitas
    # does; compiled code kept it in float32 and found ~0.6 % of the scales one power lower
    from brevitas_dmx import functional
    torch.manual_seed(0)
    blocks = torch.randn(64, 16, 32) * torch.exp2(torch.randint(-6, 6, (64, 16, 1)).float())
    blocks = blocks.bfloat16()
    constants = functional.format_constants(torch.tensor(4.0), torch.tensor(3.0))
    compiled = functional.forward_kernel(blocks, constants, "floor", compiled_kernels)
    eager = functional.forward_kernel(blocks, constants, "floor", functional.EAGER)
    assert torch.equal(compiled[1], eager[1])
    assert torch.equal(compiled[0], eager[0])
