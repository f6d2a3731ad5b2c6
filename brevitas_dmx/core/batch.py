# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Every learnable format of a model computed together, once per training forward pass.

A learnable quantizer's format is a handful of scalar operations: the offset's tempered sigmoid,
the ladder's widths, the format constants the element kernels need and, in backward, the width
gradients. On a GPU each is a kernel launch, and with two quantizers in each of hundreds of
layers those launches, not the element work, bound a training step (BENCHMARKS.md,
'How long does a search take?').
``FormatBatch`` runs them on vectors, one launch per operation for the whole model: the widths
(differentiable), the constants and the width Jacobians (``width_jacobian``) of all quantizers.
A fused ``DMXQuantLinear`` then spends no scalar operation on its format in forward and one
small product in backward.

The values are those of the quantizers' own computation, elementwise; vectorized ``exp2`` and
``sigmoid`` may differ from their scalar evaluation in the last bit at fractional formats, and
at hardware formats everything is exact. ``brevitas_dmx.batched_formats`` gives every quantizer
of the model a reference to one batch for the whole block (``DMXFloatQuant.format_batch``); the
batch is valid only inside the forward pass it was computed for (computed before the model's
forward and cleared after), and a quantizer asks it for its slot (``FormatBatch.slot``), which
there is only while it is valid. Outside a valid batch, every quantizer computes its own format
as before.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.core.offset import straight_through_offset
from brevitas_dmx.core.offset import tempered_offset
from brevitas_dmx.core.quant import DMXFloatQuant
from brevitas_dmx.functional import format_constants
from brevitas_dmx.functional import math_dtype
from brevitas_dmx.functional import width_jacobian


def offset_widths(offsets: Sequence[DMXOffset]) -> Tuple[Tensor, Tensor]:
    """(exponent_bits, mantissa_bits) of every offset as two vectors: ``ladder.widths(o())`` for
    each, with the offsets that train on the same ladder computed together (on the device of the
    first offset; the gradient reaches every raw offset)."""
    device = offsets[0].raw_offset.device
    groups: Dict[object, List[int]] = {}
    for index, offset in enumerate(offsets):
        key = (offset.ladder, offset.sharpness, offset.rounding) if offset.training else index
        groups.setdefault(key, []).append(index)
    parts = []
    for key, members in groups.items():
        group = [offsets[i] for i in members]
        first = group[0]
        if not first.training:  # evaluation: the discrete offset, one at a time (not hot)
            beta = first().to(device).reshape(1)
        else:
            raw = torch.stack([o.raw_offset.to(device) for o in group])
            if first.rounding == "ste":
                beta = straight_through_offset(raw, first.ladder)
            else:
                temperature = torch.stack([o.temperature.to(device) for o in group])
                beta = tempered_offset(raw, temperature, first.ladder, first.sharpness)
        parts.append((members, first.ladder.widths(beta)))
    if len(parts) == 1:
        return parts[0][1]
    order = [i for members, _ in parts for i in members]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(device)
    e = torch.cat([widths[0] for _, widths in parts]).index_select(0, inverse)
    m = torch.cat([widths[1] for _, widths in parts]).index_select(0, inverse)
    return e, m


def quantizer_widths(quants: Sequence[DMXFloatQuant]) -> Tuple[Tensor, Tensor]:
    """(exponent_bits, mantissa_bits) of learnable quantizers (not pinned) as two vectors, one
    value per quantizer; quantizers that share an offset share its value (and its gradient)."""
    offsets, index, position = [], [], {}
    for quant in quants:
        if id(quant.offset) not in position:
            position[id(quant.offset)] = len(offsets)
            offsets.append(quant.offset)
        index.append(position[id(quant.offset)])
    e, m = offset_widths(offsets)
    if len(offsets) < len(quants):
        gather = torch.tensor(index, device=e.device)
        e, m = e.index_select(0, gather), m.index_select(0, gather)
    return e, m


class FormatBatch:
    """The formats of ``quantizers`` (learnable ones; pinned or evaluating ones are skipped at
    each ``compute``), computed together.

    After ``compute``, the quantizer in slot ``k`` (``slot``) reads its widths from ``e[k]``,
    ``m[k]`` (views of two vectors: their gradients are gathered by one operation for the whole
    model), and a fused layer its constants and Jacobians with ``layer_formats``. ``clear``
    empties the slots, so that every quantizer computes its own format again. Quantizers read
    a batch only through their ``format_batch`` (``bind`` sets it, ``unbind`` clears it)."""

    def __init__(self, quantizers: Sequence[DMXFloatQuant]) -> None:
        self.quantizers = list(quantizers)
        self.live: List[DMXFloatQuant] = []
        # quantizer -> its index in e, m for the pass computed now; empty while not valid
        self._slots: Dict[DMXFloatQuant, int] = {}
        self.e: Tuple[Tensor, ...] = ()
        self.m: Tuple[Tensor, ...] = ()
        self._constants: Dict[torch.dtype, Tuple[Tensor, ...]] = {}
        self._jacobian: Optional[Tensor] = None

    def compute(self) -> None:
        self.clear()
        live = [q for q in self.quantizers if not q.is_pinned and q.offset.training]
        if not live:
            return
        e, m = quantizer_widths(live)
        with torch.no_grad():
            e_value, m_value = e.detach(), m.detach()
            self._constants[e.dtype] = format_constants(e_value, m_value)
            self._jacobian = self._jacobians(live, e_value, m_value)
        self.e, self.m = e.unbind(), m.unbind()
        self.live = live
        self._slots = {quant: k for k, quant in enumerate(live)}

    @property
    def valid(self) -> bool:
        """Whether the batch holds formats computed for the forward pass running now."""
        return bool(self._slots)

    def slot(self, quant: DMXFloatQuant) -> Optional[int]:
        """``quant``'s index in ``e``, ``m`` for the pass computed now, or None: the batch is not
        valid (no pass, or outside one) or did not compute ``quant``'s format (pinned, or its
        offset evaluating)."""
        return self._slots.get(quant)

    def bind(self) -> List[Tuple[DMXFloatQuant, Optional["FormatBatch"]]]:
        """Makes this the batch of each of its quantizers (``format_batch``); returns what each
        had before, for ``unbind``. Read on every forward pass, the reference is what lets a
        quantizer find its slot; ``batched_formats`` binds once for its block."""
        previous = [(quant, quant.format_batch) for quant in self.quantizers]
        for quant in self.quantizers:
            quant.format_batch = self
        return previous

    def unbind(self, previous: Sequence[Tuple[DMXFloatQuant, Optional["FormatBatch"]]]) -> None:
        """Gives each quantizer back the batch ``bind`` found (None outside any block), and
        empties this batch."""
        self.clear()
        for quant, batch in previous:
            quant.format_batch = batch

    @staticmethod
    def _jacobians(live, e: Tensor, m: Tensor) -> Tensor:
        rules = [q.scale_rule for q in live]
        unique = sorted(set(rules))
        jacobian = width_jacobian(e, m, unique[0])
        for rule in unique[1:]:
            mask = torch.tensor([r == rule for r in rules], device=e.device)[:, None, None]
            jacobian = torch.where(mask, width_jacobian(e, m, rule), jacobian)
        return jacobian

    def clear(self) -> None:
        self.live, self._slots, self.e, self.m = [], {}, (), ()
        self._constants, self._jacobian = {}, None

    def constants(self, k: int, dtype: torch.dtype) -> Tuple[Tensor, ...]:
        """Quantizer ``k``'s ``format_constants`` for tensors of ``dtype``, in its math dtype
        (converted once per dtype for all quantizers)."""
        dtype = math_dtype(dtype)
        if dtype not in self._constants:
            source = next(iter(self._constants.values()))
            self._constants[dtype] = tuple(c.to(dtype) for c in source)
        return tuple(c[k] for c in self._constants[dtype])

    def layer_formats(self, k_x: int, k_w: int, dtype_x: torch.dtype, dtype_w: torch.dtype):
        """(input constants, weight constants, Jacobians of shape (2, 2, 3): input then weight)
        of a fused layer."""
        if k_w == k_x + 1:
            jacobian = self._jacobian[k_x:k_w + 1]
        else:
            jacobian = self._jacobian[[k_x, k_w]]
        return self.constants(k_x, dtype_x), self.constants(k_w, dtype_w), jacobian
