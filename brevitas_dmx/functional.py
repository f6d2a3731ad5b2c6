# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The pure functional core: fake-quantize a tensor to a (possibly fractional) MX format.

Everything else in the package (quantizers, solver, export checks) calls these functions, so the
numerics live in one place.

Conventions, chosen so that integer formats match Brevitas's fixed MX quantizers bit for bit:

* The shared block scale is ``2**floor(log2(amax)) / 2**emax`` (OCP rule, ``scale_rule="floor"``),
  ``2**ceil(log2(amax / max_normal))`` (``scale_rule="nonclip"``: the smallest power of two
  that keeps the block maximum unsaturated) or AMD Quark's default ``"even"`` rule, which rounds
  ``amax`` to the element's mantissa width before the floor (``even_block_exponent``). ``amax`` is
  clamped below at ``1e-10``, as Brevitas
  does (``scaling_min_val``), so all-zero blocks give zeros, never NaN; blocks whose largest
  magnitude is below 1e-10 flush towards zero exactly as in Brevitas.
* Elements round to nearest even on the element grid, keep subnormals and saturate to the
  largest normal value.
* Gradients: rounding is straight-through; the exponent floors inside a block are piecewise
  constant, so the gradient to the format flows through the shared scale, the exponent bias
  (subnormal threshold) and the clamp bound. The gradient to ``x`` is straight-through inside
  the representable range and zero where an element saturates; the shared scale is treated as a
  constant with respect to ``x``.
* A tail shorter than a block (``x.shape[dim] % block_size != 0``) is zero-padded internally, as
  Brevitas's group view does; the padding never changes a block maximum and is dropped again.
"""

from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
import functools
import math
from typing import Callable, NamedTuple, Tuple, Union

import torch
from torch import Tensor

from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.config import SCALE_RULES

# Brevitas's ``scaling_min_val`` for float quantizers: the smallest block maximum used for scales.
SCALING_MIN_VAL = 1e-10

Width = Union[float, Tensor]


def mx_exponent_bias(exponent_bits: Tensor) -> Tensor:
    """IEEE-style bias ``2**(e-1) - 1``; continuous in ``e``."""
    return torch.exp2(exponent_bits - 1) - 1


def mx_max_exponent(exponent_bits: Tensor) -> Tensor:
    """Unbiased exponent of the largest normal value (``emax`` of the OCP spec).

    Formats with five or more exponent bits reserve their top exponent for inf/NaN (E5M2); the
    reservation is phased in linearly between four and five bits so ``emax`` stays continuous.
    """
    return torch.exp2(exponent_bits - 1) - torch.clamp(exponent_bits - 4, 0, 1)


def mx_max_normal(exponent_bits: Tensor, mantissa_bits: Tensor) -> Tensor:
    """Largest finite value of the element format; 6, 7.5, 28, 448 and 57344 at the OCP formats.

    E4M3 gives its top mantissa code to NaN, so its maximum is 448 and not 480. The share of that
    code is phased in and out around four exponent bits to keep the bound continuous in ``e``.
    """
    nan_code = torch.clamp(1 - torch.abs(exponent_bits - 4), 0, 1)
    max_mantissa = 2 - (1 + nan_code) * torch.exp2(-mantissa_bits)
    return max_mantissa * torch.exp2(mx_max_exponent(exponent_bits))


def _scale_exponent_term(e: Tensor, m: Tensor, scale_rule: str) -> Tensor:
    """The part of the shared scale exponent that depends on the format.

    floor: ``floor(log2 amax) - emax(e)``; nonclip: ``ceil(log2 amax - log2 max_normal(e, m))``,
    whose gradient (straight-through ceil) is that of ``-log2 max_normal``; even:
    ``floor(log2 amax - log2(1 - 2**-(m+2))) - emax(e)`` (``even_block_exponent``), whose
    gradient (straight-through floor, as nonclip's ceil) is that of
    ``-log2(1 - 2**-(m+2)) - emax(e)``.
    """
    if scale_rule == "floor":
        return -mx_max_exponent(e)
    if scale_rule == "even":
        return -torch.log2(1 - torch.exp2(-(m + 2))) - mx_max_exponent(e)
    return -torch.log2(mx_max_normal(e, m))


def even_block_exponent(amax: Tensor, step_factor: Union[float, Tensor]) -> Tensor:
    """``floor(log2 amax)`` after AMD Quark's ``even`` rounding of ``amax``, in ``amax``'s dtype.

    Quark (``quark.torch.quantization.utils.even_round``, amd-quark 0.13) adds
    ``1 << (22 - m)`` to the float32 bit pattern of ``amax`` and clears its 23 mantissa bits:
    the carry reaches the exponent field exactly when the top ``m + 1`` fraction bits are all
    ones, i.e. when ``amax`` rounded half up to ``m + 1`` fraction bits reaches the next power of
    two. With ``amax = r * 2**k`` (``1 <= r < 2``) the exponent is therefore ``k + 1`` if
    ``r >= 2 - 2**-(m+1)`` and ``k`` otherwise; Quark then subtracts ``emax`` (the scale is
    ``2**(that - emax)``, clamped to ``2**-127 .. 2**127``). The element's mantissa width ``m``
    enters as ``step_factor = 2**-m``. The same exponent, written without bits, is
    ``floor(log2 amax - log2(1 - 2**-(m+2)))``: that is its continuous extension to a fractional
    ``m`` (the threshold ``2 - 2**-(m+1)`` moves continuously with ``m``).

    Computed exactly: ``k`` from the exponent field (``_binade_power``), ``r`` by an exact
    division by a power of two, compared with the threshold (exact at integer ``m``). Blocks
    whose maximum is below Brevitas's ``scaling_min_val`` (1e-10) are not special-cased here;
    the callers clamp ``amax`` as for the other rules, where Quark would keep a smaller scale.
    """
    power = _binade_power(amax)
    carry = amax >= power * (2 - step_factor / 2)
    return torch.log2(power) + carry.to(amax.dtype)


def _block_scale(
        blocks: Tensor, max_exponent: Tensor, max_normal: Tensor, step_factor: Tensor,
        scale_rule: str):
    """The shared scale of each block (last dimension kept, of size 1), in the constants' dtype.

    The block's exponent is found in the blocks' own dtype, as Brevitas finds it: in bfloat16
    ``log2`` rounds up for maxima just below a power of two, and the fixed formats must match
    Brevitas's bit for bit. The scale is formed in the constants' (math) dtype: at a fractional
    format ``2**(k - emax)`` is no bfloat16 number. The even rule works on the exact block
    maximum in the math dtype (as Quark does in float32), so no ``log2`` rounding enters it."""
    amax = blocks.abs().amax(dim=-1, keepdim=True).clamp_min_(SCALING_MIN_VAL)
    if scale_rule == "floor":
        scale_exponent = torch.floor(torch.log2(amax)).to(max_exponent.dtype) - max_exponent
    elif scale_rule == "even":
        amax = amax.to(max_exponent.dtype)
        scale_exponent = even_block_exponent(amax, step_factor) - max_exponent
    else:
        ratio = amax / max_normal.to(amax.dtype)
        scale_exponent = torch.ceil(torch.log2(ratio)).to(max_normal.dtype)
    return torch.exp2(scale_exponent)


# The exponent-field mask of each float dtype, and the integer dtype of the same size.
_EXPONENT_MASKS = {
    torch.float32: (torch.int32, 0x7F800000),
    torch.bfloat16: (torch.int16, 0x7F80),
    torch.float16: (torch.int16, 0x7C00),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


def _binade_power(x: Tensor) -> Tensor:
    """``2**floor(log2 |x|)`` of every normal element, exactly; 0 for zeros and subnormals of
    ``x``'s own dtype (far below the subnormal threshold of any element format, where only that
    threshold is used).

    Made by clearing the sign and mantissa bits: exact like ``frexp``, and one vectorized pass in
    eager mode and inside ``torch.compile`` (``frexp`` made the kernels about 2x slower).
    """
    field = _EXPONENT_MASKS.get(x.dtype)
    if field is None:
        power = torch.exp2((torch.frexp(x)[1] - 1).to(x.dtype))
        return torch.where(x == 0, torch.zeros_like(x), power)
    int_dtype, mask = field
    return (x.view(int_dtype) & mask).view(x.dtype)


def _element_step(scaled: Tensor, min_normal: Tensor, step_factor: Tensor):
    """Grid spacing of each scaled element, ``2**(max(binade, 1 - bias) - m)``, and whether it
    lies in the subnormal range.

    The binade is exact (``_binade_power``); at a power of two it may differ from Brevitas's float
    ``log2`` by one binade for values within an ulp below it, where both grids round to the same
    power of two. The step is formed as a power of two times ``step_factor = 2**-m``: at hardware
    formats it is exact, and at fractional ones it is within an ulp of ``exp2(binade - m)``.
    """
    power = _binade_power(scaled)
    subnormal = power < min_normal
    return torch.maximum(power, min_normal) * step_factor, subnormal


class _FormatTerms(NamedTuple):
    half_range: Tensor  # 2**(e-1): the exponent bias + 1
    distance: Tensor  # e - 4: where the E4M3 NaN code and the E5M2 reserved exponent phase in
    max_exponent: Tensor
    step_factor: Tensor  # 2**-m
    nan_code: Tensor
    power: Tensor  # 2**max_exponent
    max_normal: Tensor


def _format_terms(e: Tensor, m: Tensor) -> _FormatTerms:
    """The subexpressions that ``format_constants`` and ``_format_partials`` share, each computed
    once (on a GPU each is a kernel launch) with the same operations as ``mx_max_exponent``,
    ``mx_max_normal`` and ``mx_exponent_bias``, so the same bits."""
    half_range = torch.exp2(e - 1)
    distance = e - 4
    max_exponent = half_range - torch.clamp(distance, 0, 1)
    step_factor = torch.exp2(-m)
    nan_code = torch.clamp(1 - torch.abs(distance), 0, 1)
    power = torch.exp2(max_exponent)
    max_normal = (2 - (1 + nan_code) * step_factor) * power
    return _FormatTerms(
        half_range, distance, max_exponent, step_factor, nan_code, power, max_normal)


def format_constants(e: Tensor, m: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """What the element kernels need of a (possibly fractional) format: the largest exponent,
    the largest value, the smallest normal value ``2**(1 - bias)`` and ``2**-m``.

    Computed once per call, outside the element-wise kernels: inside a compiled loop they would
    be recomputed (four scalar ``exp2``) for every vector of elements.
    """
    terms = _format_terms(e, m)
    return (
        terms.max_exponent,
        terms.max_normal,
        torch.exp2(1 - (terms.half_range - 1)),
        terms.step_factor)


# The element-wise kernels take the format as ``format_constants``; they are what a ``Kernels``
# set holds, as they are (``EAGER``) or compiled (``compiled_kernels``). No autograd inside.


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the element arithmetic of ``dtype`` tensors runs in, and their format constants
    come in: float32 for half-precision tensors, else their own.

    A fractional format's grid (steps of ``2**-m`` for fractional ``m``) and block scales
    (``2**(k - emax)`` for fractional ``emax``) are not bfloat16 numbers. Rounded to bfloat16,
    they move the rounding errors whose sums, a small remainder of terms that cancel, make the
    format gradient: a weight's error sum came out 140-230x its float32 value on the same
    bfloat16 values. At hardware formats every step and scale is a power of
    two and the results are the same bits either way."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _in_math_dtype(t: Tensor) -> Tensor:
    return t.to(math_dtype(t.dtype))


def _static_block(blocks: Tensor) -> None:
    """Inside ``torch.compile``, specializes the kernel on the block size (the last dimension of
    ``blocks``); the other dimensions stay dynamic. With the block size a symbol, as
    ``dynamic=True`` makes every size, Inductor compiled the element loops with run-time bounds and
    the blocks' scales in a serial loop: the weight's kernels ran slower
    (BENCHMARKS.md, 'What does the quantizer cost?'). A model has one block size, so this adds a
    guard, not a graph. Not under
    ``torch.export`` (non-strict tracing is no Dynamo tracing; strict tracing must keep a block
    dimension the caller declared dynamic)."""
    if torch.compiler.is_dynamo_compiling() and not torch.compiler.is_exporting():
        torch._dynamo.mark_static(blocks, blocks.dim() - 1)


def _forward_elements(blocks, max_exponent, max_normal, min_normal, step_factor, scale_rule):
    """Fake-quantized blocks, in the blocks' dtype, and block scales, in the math dtype (a
    fractional format's scale is no power of two, so bfloat16 would round it)."""
    _static_block(blocks)
    dtype = blocks.dtype
    scale = _block_scale(blocks, max_exponent, max_normal, step_factor, scale_rule)
    blocks = _in_math_dtype(blocks)
    out = blocks / scale
    step, _ = _element_step(out, min_normal, step_factor)
    out = torch.round(out / step) * step
    out = torch.clamp(out, -max_normal, max_normal) * scale
    return out.to(dtype), scale


def _round_elements(blocks, max_normal, min_normal, step_factor, scale):
    """Scaled elements, their rounding (before saturation), the subnormal mask and the
    saturation sign (+1 high, -1 low, 0 inside the range), in the math dtype."""
    _static_block(blocks)
    blocks, scale = _in_math_dtype(blocks), _in_math_dtype(scale)
    scaled = blocks / scale
    step, subnormal = _element_step(scaled, min_normal, step_factor)
    rounded = torch.round(scaled / step) * step
    saturated = (rounded > max_normal).to(blocks.dtype) - (rounded < -max_normal).to(blocks.dtype)
    return scaled, rounded, subnormal, saturated


def _format_sums(scaled, rounded, subnormal, saturated, inside, scale, grad_out, shape):
    """The three sums ``width_grads`` turns into the format gradient."""
    scaled_grad = grad_out * scale  # out = elements * scale
    # Inside the range d out / d log2(step) = ln2 * (out - x): the rounding error.
    error_grad = (rounded - scaled) * inside * scaled_grad
    return tuple(
        _block_sum(t, shape) for t in (error_grad, error_grad * subnormal, scaled_grad * saturated))


def _block_sum(t: Tensor, shape) -> Tensor:
    """``t`` summed in float32 to ``shape`` (which has size 1 along the block dimension): first
    within each block, so that a compiled kernel makes the three sums of ``_format_sums`` in one
    pass over the elements (summed at once to ``shape``, it stored two weight-sized tensors and
    read them in two more passes)."""
    return t.sum(-1, keepdim=True, dtype=torch.float32).sum_to_size(shape)


def _backward_elements(blocks, max_normal, min_normal, step_factor, scale, grad_out, shape):
    """Input gradient and the three sums the format gradient needs."""
    rounding = _round_elements(blocks, max_normal, min_normal, step_factor, scale)
    inside = rounding[3] == 0
    return (grad_out * inside, *_format_sums(*rounding, inside, scale, grad_out, shape))


def _values_backward_elements(blocks, max_normal, min_normal, step_factor, scale, grad_out, shape):
    """For a frozen tensor (a weight): its fake-quantized value and the three sums of
    ``_backward_elements``, from one pass over the elements; no input gradient."""
    rounding = _round_elements(blocks, max_normal, min_normal, step_factor, scale)
    inside = rounding[3] == 0
    clamped = torch.clamp(rounding[1], -max_normal, max_normal)
    return (
        (clamped * scale).to(blocks.dtype),
        *_format_sums(*rounding, inside, scale, grad_out, shape))


def _sums_elements(blocks, max_normal, min_normal, step_factor, scale, grad_out, shape):
    """For a frozen tensor whose fake-quantized value is already at hand: only the three sums."""
    rounding = _round_elements(blocks, max_normal, min_normal, step_factor, scale)
    return _format_sums(*rounding, rounding[3] == 0, scale, grad_out, shape)


def _linear_forward_elements(xb, wb, bias, const_x, const_w, rule_x, rule_w):
    """A quantized Linear layer's forward in one kernel call, from its input ``xb`` (rows,
    blocks, block) and weight ``wb`` (outputs, blocks, block) in blocks of its features: the
    output and the two block scales."""
    xq, scale_x = _forward_elements(xb, *const_x, rule_x)
    wq, scale_w = _forward_elements(wb, *const_w, rule_w)
    return torch.nn.functional.linear(xq.flatten(-2), wq.flatten(-2), bias), scale_x, scale_w


def _linear_backward_elements(xb, wb, const_x, const_w, scale_x, scale_w, grad_out):
    """The backward of ``_linear_forward_elements`` with a frozen weight, in one kernel call:
    the input gradient (in blocks) and the three sums of each tensor's format gradient. The
    quantized input and weight are recomputed from the scales, not kept: d loss / d (quantized
    weight), a weight-sized product, lives only inside the call."""
    _, max_normal, min_normal, step_factor = const_x
    rounded_x = _round_elements(xb, max_normal, min_normal, step_factor, scale_x)[1]
    xq = torch.clamp(rounded_x, -max_normal, max_normal) * scale_x
    grad_wq = grad_out.t().mm(xq.flatten(-2).to(grad_out.dtype))
    wq, *sums_w = _values_backward_elements(wb, *const_w[1:], scale_w, grad_wq.view(wb.shape), ())
    grad_xq = grad_out.mm(wq.flatten(-2).to(grad_out.dtype))
    grad_xb, *sums_x = _backward_elements(xb, *const_x[1:], scale_x, grad_xq.view(xb.shape), ())
    return grad_xb, sums_x, sums_w


@dataclass(frozen=True, eq=False)
class Kernels:
    """One set of the element kernels: ``EAGER`` (the functions above as they are) or
    ``compiled_kernels()`` (the same functions through ``torch.compile``). Whoever runs a kernel
    says which set (a quantizer's ``kernels``, ``LinearSpec.kernels``, the ``kernels`` argument of
    ``mx_quantize_blocks`` and of the ``*_kernel`` functions below), so no process-wide switch
    decides it; ``brevitas_dmx.use_compiled_kernels`` picks the set of a model's quantizers.
    Hashed and compared by identity (cheap, and a set is one object: ``EAGER`` or the one
    ``compiled_kernels()``), so it can sit in a frozen ``LinearSpec``."""

    name: str
    forward: Callable = field(repr=False)
    backward: Callable = field(repr=False)
    values_backward: Callable = field(repr=False)
    sums: Callable = field(repr=False)
    linear_forward: Callable = field(repr=False)
    linear_backward: Callable = field(repr=False)


EAGER = Kernels(
    "eager",
    forward=_forward_elements,
    backward=_backward_elements,
    values_backward=_values_backward_elements,
    sums=_sums_elements,
    linear_forward=_linear_forward_elements,
    linear_backward=_linear_backward_elements)

# Inductor keeps a half-precision intermediate in float32 unless told to round it as eager does:
# ``log2`` of a bfloat16 block maximum just below a power of two rounds up in eager (as in
# Brevitas) and not in compiled code, which found ~0.6 % of block scales one power lower.
_INDUCTOR_OPTIONS = {"emulate_precision_casts": True}

_KERNEL_NAMES = tuple(f.name for f in fields(Kernels) if f.name != "name")


@functools.lru_cache(maxsize=None)
def compiled_kernels() -> Kernels:
    """``EAGER``'s kernels fused with ``torch.compile`` (worth it on GPUs; the first call of each
    shape family compiles). Built on the first call and the same object after: every model that
    uses it shares one set of compiled graphs, so switching a model back and forth, or a second
    model, compiles nothing again. Building it compiles nothing yet (``torch.compile`` is lazy)."""
    return Kernels(
        "compiled",
        **{
            name: torch.compile(getattr(EAGER, name), dynamic=True, options=_INDUCTOR_OPTIONS)
            for name in _KERNEL_NAMES
        })


def kernels_for(compiled: bool) -> Kernels:
    """``compiled_kernels()`` if ``compiled``, else ``EAGER``."""
    return compiled_kernels() if compiled else EAGER


def forward_kernel(blocks: Tensor, constants, scale_rule: str, kernels: Kernels = EAGER):
    """Fake-quantized blocks and block scales; no autograd. ``constants``: the format's
    ``format_constants`` in ``blocks``' dtype."""
    max_exponent, max_normal, min_normal, step_factor = constants
    return kernels.forward(blocks, max_exponent, max_normal, min_normal, step_factor, scale_rule)


def backward_kernel(
        blocks: Tensor,
        constants,
        scale: Tensor,
        grad_out: Tensor,
        shape,
        kernels: Kernels = EAGER):
    """Input gradient and the three per-block sums of the format gradient; no autograd."""
    _, max_normal, min_normal, step_factor = constants
    return kernels.backward(blocks, max_normal, min_normal, step_factor, scale, grad_out, shape)


def values_backward_kernel(
        blocks: Tensor,
        constants,
        scale: Tensor,
        grad_out: Tensor,
        shape,
        kernels: Kernels = EAGER):
    """A frozen tensor's fake-quantized value and the three sums, in one pass; no autograd."""
    _, max_normal, min_normal, step_factor = constants
    return kernels.values_backward(
        blocks, max_normal, min_normal, step_factor, scale, grad_out, shape)


def sums_kernel(
        blocks: Tensor,
        constants,
        scale: Tensor,
        grad_out: Tensor,
        shape,
        kernels: Kernels = EAGER):
    """The three sums of ``backward_kernel`` alone (a frozen tensor's format gradient); no
    autograd."""
    _, max_normal, min_normal, step_factor = constants
    return kernels.sums(blocks, max_normal, min_normal, step_factor, scale, grad_out, shape)


def linear_forward_kernel(xb, wb, bias, const_x, const_w, rule_x, rule_w, kernels: Kernels = EAGER):
    """A Linear layer's fake-quantized forward from its input (rows, blocks, block) and weight
    (outputs, blocks, block): output and the two block scales; no autograd. One call, so one
    dispatch: on a slow host a call into a compiled kernel costs more than a small layer's
    element work."""
    return kernels.linear_forward(xb, wb, bias, const_x, const_w, rule_x, rule_w)


def linear_backward_kernel(
        xb, wb, const_x, const_w, scale_x, scale_w, grad_out, kernels: Kernels = EAGER):
    """Input gradient (in blocks) and the three sums of the input's and of the weight's format
    gradient (scalar formats), for ``grad_out`` of shape (rows, outputs); no autograd."""
    return kernels.linear_backward(xb, wb, const_x, const_w, scale_x, scale_w, grad_out)


class _MXQuantizeBlocks(torch.autograd.Function):
    """MX fake-quantization that keeps only its input and the block scales for backward.

    Backward recomputes the element rounding from the input. The per-element chain rule is
    reduced to three sums, which autograd then carries through the tiny format-parameter
    functions (``mx_max_exponent``, ``mx_exponent_bias``, ``mx_max_normal``), so each of those
    exists once.
    """

    @staticmethod
    def forward(ctx, blocks, exponent_bits, mantissa_bits, scale_rule, kernels):
        e = exponent_bits.to(math_dtype(blocks.dtype))
        m = mantissa_bits.to(math_dtype(blocks.dtype))
        out, scale = forward_kernel(blocks, format_constants(e, m), scale_rule, kernels)
        ctx.save_for_backward(blocks, exponent_bits, mantissa_bits, scale)
        ctx.scale_rule = scale_rule
        ctx.kernels = kernels
        scale_out = scale.to(blocks.dtype)  # the caller's dtype; backward keeps the math dtype's
        ctx.mark_non_differentiable(scale_out)
        return out, scale_out

    @staticmethod
    def backward(ctx, grad_out, grad_scale):
        blocks, exponent_bits, mantissa_bits, scale = ctx.saved_tensors
        dtype = math_dtype(blocks.dtype)
        shape = width_shape(exponent_bits, mantissa_bits)
        constants = format_constants(exponent_bits.to(dtype), mantissa_bits.to(dtype))
        grad_blocks, sum_error, sum_error_subnormal, sum_saturated = backward_kernel(
            blocks, constants, scale, grad_out, shape, ctx.kernels)
        if not ctx.needs_input_grad[0]:
            grad_blocks = None
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return grad_blocks, None, None, None, None
        grad_e, grad_m = width_grads(
            exponent_bits, mantissa_bits, sum_error, sum_error_subnormal, sum_saturated,
            ctx.scale_rule, shape)
        return grad_blocks, grad_e, grad_m, None, None


def width_shape(exponent_bits: Tensor, mantissa_bits: Tensor) -> torch.Size:
    """The shape of the format that two width tensors describe together (their broadcast).
    ``torch.broadcast_shapes`` runs in Python, ~60 us a call on a slow host: equal shapes (one
    scalar format each, the common case) skip it."""
    if exponent_bits.shape == mantissa_bits.shape:
        return exponent_bits.shape
    return torch.broadcast_shapes(exponent_bits.shape, mantissa_bits.shape)


def _format_partials(e: Tensor, m: Tensor, scale_rule: str):
    """The format terms' partial derivatives to ``e`` and ``m``, in closed form.

    They are what autograd gives through ``mx_max_exponent``, ``mx_exponent_bias``,
    ``mx_max_normal`` and ``_scale_exponent_term`` (with torch's conventions: ``clamp`` passes the
    gradient on its closed range, ``abs`` has gradient 0 at 0), written out so that a backward
    pass costs a few scalar operations instead of a small autograd graph per quantizer: on a GPU
    those scalar operations are kernel launches, and they, not the element work, bound a step.
    Returns ``max_normal`` and the pairs (d/de, d/dm) of the scale term, of the subnormal
    threshold ``1 - bias``, and of ``max_normal``.
    """
    ln2 = math.log(2.0)
    t = _format_terms(e, m)
    reserved = ((e >= 4) & (e <= 5)).to(e.dtype)  # d clamp(e - 4, 0, 1) / de
    d_max_exponent = ln2 * t.half_range - reserved
    d_nan_code = -torch.sign(t.distance) * (torch.abs(t.distance) <= 1).to(e.dtype)
    max_normal = t.max_normal
    d_max_normal_e = -t.step_factor * d_nan_code * t.power + max_normal * ln2 * d_max_exponent
    d_max_normal_m = (1 + t.nan_code) * t.step_factor * ln2 * t.power
    if scale_rule == "floor":
        d_scale = (-d_max_exponent, torch.zeros_like(m))
    elif scale_rule == "even":  # -log2(1 - 2**-(m+2)) - emax(e)
        d_scale = (-d_max_exponent, -1 / (torch.exp2(m + 2) - 1))
    else:  # -log2(max_normal)
        d_scale = (-d_max_normal_e / (max_normal * ln2), -d_max_normal_m / (max_normal * ln2))
    d_threshold = (-ln2 * t.half_range, torch.zeros_like(m))
    return max_normal, d_scale, d_threshold, (d_max_normal_e, d_max_normal_m)


def width_jacobian(e: Tensor, m: Tensor, scale_rule: str) -> Tensor:
    """What each of the backward kernels' three sums is worth to the widths' gradients.

    Returns ``J`` of shape ``broadcast(e, m).shape + (2, 3)``: row 0 gives d loss / d e and row 1
    d loss / d m as ``J @ (sum_error, sum_error_subnormal, sum_saturated)``, from the format terms'
    closed-form partials (``_format_partials``). ``J`` depends on the format only, so a whole
    model's can be computed at once (``FormatBatch``) and a layer's backward is then one product.
    """
    ln2 = math.log(2.0)
    max_normal, d_scale, d_threshold, d_max_normal = _format_partials(e, m, scale_rule)
    # The adjoint of each term, per unit of the sums:
    #   the shared scale 2**k: d out / d k = ln2 * out -> ln2 * (sum_error + max_normal * sum_sat)
    #   the subnormal threshold 1 - bias sets the step of subnormal elements -> ln2 * sum_sub
    #   the step 2**(binade - m) (the term -m) -> ln2 * sum_error
    #   the saturation bound max_normal -> sum_saturated
    row_e = (
        ln2 * d_scale[0], ln2 * d_threshold[0], ln2 * d_scale[0] * max_normal + d_max_normal[0])
    row_m = (
        ln2 * d_scale[1] - ln2,
        torch.zeros_like(max_normal),
        ln2 * d_scale[1] * max_normal + d_max_normal[1])
    rows = [torch.stack(torch.broadcast_tensors(*row), -1) for row in (row_e, row_m)]
    return torch.stack(torch.broadcast_tensors(*rows), -2)


def width_grads(
        exponent_bits, mantissa_bits, sum_error, sum_error_subnormal, sum_saturated, scale_rule,
        shape):
    """Gradients of the loss to the widths, from the three per-block sums of the backward
    kernels (``width_jacobian``)."""
    e, m = exponent_bits.detach().float(), mantissa_bits.detach().float()
    jacobian = width_jacobian(e, m, scale_rule)
    sums = torch.stack(torch.broadcast_tensors(sum_error, sum_error_subnormal, sum_saturated), -1)
    grad_e, grad_m = (jacobian * sums.unsqueeze(-2)).sum(-1).unbind(-1)
    return (
        grad_e.expand(shape).sum_to_size(exponent_bits.shape),
        grad_m.expand(shape).sum_to_size(mantissa_bits.shape))


def mx_quantize_blocks(
        blocks: Tensor,
        exponent_bits: Tensor,
        mantissa_bits: Tensor,
        scale_rule: str = DEFAULT_SCALE_RULE,
        kernels: Kernels = EAGER) -> Tuple[Tensor, Tensor]:
    """Fake-quantizes ``blocks`` whose last dimension is one MX block.

    ``exponent_bits`` and ``mantissa_bits`` must broadcast against ``blocks`` with size 1 along
    its last dimension: one format per block at the finest. Returns the fake-quantized blocks and
    the shared scales (last dimension of size 1; not differentiable). ``kernels``: the element
    kernels that run forward and backward (``EAGER`` or ``compiled_kernels()``).
    """
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"Unknown scale_rule {scale_rule!r}; choose one of {SCALE_RULES}.")
    for name, width in (("exponent_bits", exponent_bits), ("mantissa_bits", mantissa_bits)):
        if width.dim() and width.shape[-1] != 1:
            raise ValueError(
                f"{name} has shape {tuple(width.shape)}: a width tensor must have size 1 along "
                f"the block dimension (the last), since a block shares one format.")
    return _MXQuantizeBlocks.apply(blocks, exponent_bits, mantissa_bits, scale_rule, kernels)


def _as_width(width: Width, name: str, like: Tensor) -> Tensor:
    if not torch.is_tensor(width):
        minimum = 1 if name == "exponent_bits" else 0
        if not width >= minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {width}")
        width = torch.tensor(float(width))
    return width.to(like.device)


def mx_fake_quantize(
        x: Tensor,
        exponent_bits: Width,
        mantissa_bits: Width,
        block_size: int = 32,
        dim: int = -1,
        scale_rule: str = DEFAULT_SCALE_RULE,
        kernels: Kernels = EAGER) -> Tensor:
    """Fake-quantizes ``x`` to the MX format E``exponent_bits``M``mantissa_bits``.

    Blocks of ``block_size`` consecutive elements along ``dim`` share one power-of-two scale
    (E8M0). Widths may be fractional and may require grad; they are 0-d (or Python numbers), or
    broadcastable to ``x`` with size 1 along ``dim`` (one format per row, say). At integer widths
    the result equals the OCP formats E2M1, E2M3, E3M2, E4M3 and E5M2 bit for bit. ``kernels``:
    as in ``mx_quantize_blocks``.
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    dim = dim % x.dim()
    e = _as_width(exponent_bits, "exponent_bits", x)
    m = _as_width(mantissa_bits, "mantissa_bits", x)

    def to_blocked(width: Tensor) -> Tensor:
        if width.dim() == 0:
            return width
        width = width.reshape((1,) * (x.dim() - width.dim()) + tuple(width.shape))
        if width.shape[dim] != 1:
            raise ValueError(
                f"Per-block widths are not supported: a width tensor must have size 1 along "
                f"dim={dim}, got shape {tuple(width.shape)}")
        return width.movedim(dim, -1).unsqueeze(-1)

    moved = x.movedim(dim, -1)
    length = moved.shape[-1]
    pad = (-length) % block_size
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    blocks = moved.unflatten(-1, (-1, block_size))
    out, _ = mx_quantize_blocks(blocks, to_blocked(e), to_blocked(m), scale_rule, kernels)
    out = out.flatten(-2)
    if pad:
        out = out[..., :length]
    return out.movedim(-1, dim)
