# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The pure functional core: fake-quantize a tensor to a (possibly fractional) MX format.

Everything else in the package (quantizers, solver, export checks) calls these functions, so the
numerics live in one place.

Conventions, chosen so that integer formats match Brevitas's fixed MX quantizers bit for bit:

* The shared block scale is ``2**floor(log2(amax)) / 2**emax`` (OCP rule, ``scale_rule="floor"``)
  or ``2**ceil(log2(amax / max_normal))`` (``scale_rule="nonclip"``: the smallest power of two
  that keeps the block maximum unsaturated). ``amax`` is clamped below at ``1e-10``, as Brevitas
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

from typing import Tuple, Union

import torch
from torch import Tensor

SCALE_RULES = ("floor", "nonclip")

# Brevitas's ``scaling_min_val`` for float quantizers: the smallest block maximum used for scales.
SCALING_MIN_VAL = 1e-10

Width = Union[float, Tensor]


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _ceil_ste(x: Tensor) -> Tensor:
    return x + (torch.ceil(x) - x).detach()


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


def mx_quantize_blocks(
        blocks: Tensor,
        exponent_bits: Tensor,
        mantissa_bits: Tensor,
        scale_rule: str = "floor") -> Tuple[Tensor, Tensor]:
    """Fake-quantizes ``blocks`` whose last dimension is one MX block.

    ``exponent_bits`` and ``mantissa_bits`` must broadcast against ``blocks``. Returns the
    fake-quantized blocks and the shared scales (last dimension of size 1).
    """
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"Unknown scale_rule {scale_rule!r}; choose one of {SCALE_RULES}.")
    dtype = blocks.dtype
    e = exponent_bits.to(dtype)
    m = mantissa_bits.to(dtype)
    max_normal = mx_max_normal(e, m)
    amax = blocks.detach().abs().amax(dim=-1, keepdim=True).clamp_min(SCALING_MIN_VAL)
    if scale_rule == "floor":
        scale_exponent = torch.floor(torch.log2(amax)) - mx_max_exponent(e)
    else:
        scale_exponent = _ceil_ste(torch.log2(amax / max_normal))
    scale = torch.exp2(scale_exponent)

    scaled = blocks / scale
    # Exponent of each element's binade, clamped at the subnormal range; constant w.r.t. the
    # format except through the bias (the subnormal threshold).
    binade = torch.floor(torch.log2(scaled.detach().abs() + torch.finfo(dtype).tiny))
    element_exponent = torch.maximum(binade, 1 - mx_exponent_bias(e)) - m
    step = torch.exp2(element_exponent)
    elements = step * _round_ste(scaled / step)
    # Saturate; ``where`` rather than min/max so that an element landing exactly on the bound
    # keeps its whole straight-through gradient.
    elements = torch.where(elements > max_normal, max_normal, elements)
    elements = torch.where(elements < -max_normal, -max_normal, elements)
    return elements * scale, scale


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
        scale_rule: str = "floor") -> Tensor:
    """Fake-quantizes ``x`` to the MX format E``exponent_bits``M``mantissa_bits``.

    Blocks of ``block_size`` consecutive elements along ``dim`` share one power-of-two scale
    (E8M0). Widths may be fractional and may require grad; they are 0-d (or Python numbers), or
    broadcastable to ``x`` with size 1 along ``dim`` (one format per row, say). At integer widths
    the result equals the OCP formats E2M1, E2M3, E3M2, E4M3 and E5M2 bit for bit.
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
    out, _ = mx_quantize_blocks(blocks, to_blocked(e), to_blocked(m), scale_rule)
    out = out.flatten(-2)
    if pad:
        out = out[..., :length]
    return out.movedim(-1, dim)
