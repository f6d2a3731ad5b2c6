# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The tensor quantizer behind the dMX proxies: an MX float quantizer with a learnable format."""

import math
from typing import NamedTuple, Optional, Tuple, TYPE_CHECKING

from brevitas import config
from brevitas.core.function_wrapper.shape import DynamicOverSubChannelBlockView
from brevitas.core.utils import StatelessBuffer
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.config import KNOT_MIXTURES
from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import ElementFormat
from brevitas_dmx.formats import format_from_bits
from brevitas_dmx.functional import EAGER
from brevitas_dmx.functional import Kernels
from brevitas_dmx.functional import mx_exponent_bias
from brevitas_dmx.functional import mx_quantize_blocks
from brevitas_dmx.functional import SCALE_RULES

if TYPE_CHECKING:  # core.batch imports this module
    from brevitas_dmx.core.batch import FormatBatch


class FloatQuantOutput(NamedTuple):
    """What ``DMXFloatQuant`` returns: the ``tensor_quant`` output of Brevitas's float
    quantizers, in the order in which Brevitas's groupwise float proxies unpack it into a
    ``GroupwiseFloatQuantTensor`` (``create_quant_tensor``). A NamedTuple is a tuple, which is
    all those proxies check (``isinstance(qt_args, tuple)``) before unpacking it, so it crosses
    their boundary as it is."""

    value: Tensor  # fake-quantized, in Brevitas's group view
    scale: Tensor  # the shared power-of-two scale of each block
    zero_point: Tensor
    exponent_bit_width: Tensor  # fractional while training
    mantissa_bit_width: Tensor
    exponent_bias: Tensor
    saturating: bool
    inf_values: Optional[Tuple[str, ...]]  # None: saturating MX elements have no inf/NaN codes
    nan_values: Optional[Tuple[str, ...]]


class DMXFloatQuant(nn.Module):
    """Groupwise (MX) float fake-quantization whose element format follows a ``DMXOffset``.

    Follows the ``tensor_quant`` interface of Brevitas's float quantizers: it returns a
    ``FloatQuantOutput`` (the value in Brevitas's group view, the per-block scale, a zero point,
    the exponent and mantissa widths, the exponent bias, ``saturating`` and the inf/NaN codes).

    A quantizer can be pinned to a discrete format; a pinned format wins over the offset.
    ``kernels`` is the set of element kernels it runs (``brevitas_dmx.use_compiled_kernels``);
    ``format_batch`` the ``FormatBatch`` it takes its format from while batching is on
    (``brevitas_dmx.batched_formats``).
    """

    def __init__(
            self,
            dmx_offset_impl: DMXOffset,
            group_size: int,
            group_dim: int,
            dmx_scale_rule: str = DEFAULT_SCALE_RULE,
            dmx_share_offset: bool = True,
            device: Optional[torch.device] = None) -> None:
        super().__init__()
        if dmx_scale_rule not in SCALE_RULES:
            raise ValueError(
                f"Unknown dmx_scale_rule {dmx_scale_rule!r}; choose one of {SCALE_RULES}.")
        self.offset = dmx_offset_impl
        self.group_size = int(group_size)
        self.group_dim = int(group_dim)
        self.scale_rule = dmx_scale_rule
        self.share_offset = bool(dmx_share_offset)
        self.input_view_impl = DynamicOverSubChannelBlockView(self.group_size, self.group_dim)
        self.zero_point_impl = StatelessBuffer(torch.tensor(0.0, device=device))
        # (exponent_bits, mantissa_bits) of a pinned format; NaN while the format is learned.
        self.register_buffer("pinned_widths", torch.full((2,), math.nan, device=device))
        # Host-side mirror of "pinned_widths is set": read every forward, so it must not sync.
        self._pinned = False
        # Shape of the last tensor quantized, for size-weighted averages of activations.
        self.last_input_shape: Optional[Tuple[int, ...]] = None
        # Weight quantizers (set by their proxy) reuse their output in eval mode while neither
        # the weight nor the format changes: evaluation then costs what a float model costs.
        self.caches_eval_output = False
        self._eval_cache = None
        # The element kernels, eager or compiled: chosen per model (``use_compiled_kernels``).
        self.kernels: Kernels = EAGER
        # The FormatBatch of the ``batched_formats`` block this quantizer is in, else None. Set
        # when the block starts and cleared when it ends; the batch itself says, at each forward
        # pass, whether it computed this quantizer's format for that pass (``FormatBatch.slot``).
        self.format_batch: Optional["FormatBatch"] = None

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, group_dim={self.group_dim}, scale_rule={self.scale_rule}"

    @property
    def is_pinned(self) -> bool:
        return self._pinned

    @property
    def batch_slot(self) -> Optional[Tuple["FormatBatch", int]]:
        """(FormatBatch, index) of the batch that computed this quantizer's format for the
        current forward pass, or None while it computes its own; read from ``format_batch``."""
        batch = self.format_batch
        index = None if batch is None else batch.slot(self)
        return None if index is None else (batch, index)

    def pin(self, fmt: ElementFormat) -> None:
        self.pinned_widths.copy_(
            torch.tensor([fmt.exponent_bits, fmt.mantissa_bits], dtype=self.pinned_widths.dtype))
        self._pinned = True

    def unpin(self) -> None:
        self.pinned_widths.fill_(math.nan)
        self._pinned = False

    def widths(self) -> Tuple[Tensor, Tensor]:
        """(exponent_bits, mantissa_bits): continuous in training, discrete in eval or pinned."""
        if self.is_pinned:
            return self.pinned_widths[0], self.pinned_widths[1]
        batch = self.format_batch
        if batch is not None:
            k = batch.slot(self)
            if k is not None:
                return batch.e[k], batch.m[k]
        return self.offset.ladder.widths(self.offset())

    def widths_on(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        """``widths()`` on ``device``. Brevitas builds input quantizers without the layer's device,
        so a layer made with ``device="cuda"`` keeps its input offset on the CPU until the model is
        moved; the format scalars then follow the data (the gradient flows through the copy)."""
        e, m = self.widths()
        if e.device != device:
            e, m = e.to(device), m.to(device)
        return e, m

    def bits(self) -> Tensor:
        """Bits per element, 1 + e + m (differentiable while training)."""
        e, m = self.widths()
        return 1 + e + m

    def scale_bits(self) -> float:
        return E8M0_SCALE_BITS / self.group_size

    def discrete_format(self) -> ElementFormat:
        """The hardware format this quantizer uses in eval mode (and after finalization)."""
        if self.is_pinned:
            e, m = self.pinned_widths.tolist()
        else:
            e, m = self.offset.ladder.widths(float(self.offset.discrete()))
        return format_from_bits(int(e), int(m))

    def _cache_key(self, x: Tensor, e: Tensor, m: Tensor):
        return (x.data_ptr(), x._version, x.shape, x.dtype, x.device, float(e), float(m))

    @property
    def mixes_formats(self) -> bool:
        """True while training quantizes with a mixture of the ladder's formats (rounding
        "blend" or "sample"), not with the in-between format of the offset."""
        return self.training and not self.is_pinned and self.offset.rounding in KNOT_MIXTURES

    def forward(self, x: Tensor) -> FloatQuantOutput:
        self.last_input_shape = tuple(x.shape)
        if self.mixes_formats:
            return self._mixture(x)
        e, m = self.widths_on(x.device)
        use_cache = self.caches_eval_output and not self.training and not torch.is_grad_enabled()
        if not use_cache:
            self._eval_cache = None
            return self._quantize(x, e, m)
        key = self._cache_key(x, e, m)
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self._quantize(x, e, m))
        return self._eval_cache[1]

    def _quantize(self, x: Tensor, e: Tensor, m: Tensor) -> FloatQuantOutput:
        blocks = self.input_view_impl(x)
        block_axis = self.group_dim + 1 if self.group_dim >= 0 else blocks.dim() - 1
        blocks = blocks.movedim(block_axis, -1)
        y, scale = mx_quantize_blocks(blocks, e, m, self.scale_rule, self.kernels)
        y, scale = y.movedim(-1, block_axis), scale.movedim(-1, block_axis)
        return FloatQuantOutput(
            value=y,
            scale=scale,
            zero_point=self.zero_point_impl(),
            exponent_bit_width=e,
            mantissa_bit_width=m,
            exponent_bias=mx_exponent_bias(e),
            saturating=True,
            inf_values=None,
            nan_values=None)

    def _mixture(self, x: Tensor) -> FloatQuantOutput:
        """Training on the ladder's real formats only. Between the formats L and H that bracket
        the offset beta, at fraction t of the way: "blend" gives Q_L(x) + t (Q_H(x) - Q_L(x));
        "sample" gives Q_H(x) with probability t, else Q_L(x) (drawn on every call), with the
        blend's gradient. Either way d loss / d t = <d loss / d y, Q_H(x) - Q_L(x)>, a first-order
        estimate of what moving to H gains, where the in-between format of "anneal" (E3M3
        between E2M3 and E4M3) can be better than both formats a layer may end on."""
        offset = self.offset
        ladder = offset.ladder
        beta = offset().to(x.device)
        index = ladder.segment_at(float(beta.detach()))
        start, length = ladder.segments[index]
        t = ((beta - start) / length).clamp(0, 1)
        if offset.rounding == "sample":
            t = t + (torch.bernoulli(t.detach()) - t).detach()
        quantized = []
        for fmt in ladder.formats[index:index + 2]:
            e = torch.tensor(float(fmt.exponent_bits), device=x.device)
            m = torch.tensor(float(fmt.mantissa_bits), device=x.device)
            quantized.append(self._quantize(x, e, m))
        low, high = quantized
        y = low.value + t.to(low.value.dtype) * (high.value - low.value)
        e, m = ladder.widths(beta)
        # the upper format's scale (and the rest); the offset's widths, which carry the gradient
        return high._replace(
            value=y, exponent_bit_width=e, mantissa_bit_width=m, exponent_bias=mx_exponent_bias(e))

    def _load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._pinned = not bool(torch.isnan(self.pinned_widths).any())
        key = prefix + "pinned_widths"
        if config.IGNORE_MISSING_KEYS and key in missing_keys:
            missing_keys.remove(key)
