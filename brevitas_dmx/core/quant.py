# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The tensor quantizer behind the dMX proxies: an MX float quantizer with a learnable format."""

import math
from typing import Optional, Tuple

from brevitas import config
from brevitas.core.function_wrapper.shape import DynamicOverSubChannelBlockView
from brevitas.core.utils import StatelessBuffer
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import ElementFormat
from brevitas_dmx.formats import format_from_bits
from brevitas_dmx.functional import mx_exponent_bias
from brevitas_dmx.functional import mx_quantize_blocks
from brevitas_dmx.functional import SCALE_RULES


class DMXFloatQuant(nn.Module):
    """Groupwise (MX) float fake-quantization whose element format follows a ``DMXOffset``.

    Follows the ``tensor_quant`` interface of Brevitas's float quantizers: it returns the value
    in Brevitas's group view, the per-block scale, a zero point, the exponent and mantissa widths
    (fractional while training), the exponent bias, ``saturating`` and the inf/NaN codes (none:
    saturating MX elements never produce them).

    A quantizer can be pinned to a discrete format; a pinned format wins over the offset.
    """

    def __init__(
            self,
            dmx_offset_impl: DMXOffset,
            group_size: int,
            group_dim: int,
            dmx_scale_rule: str = "floor",
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
        # (FormatBatch, index) while a batch computed this quantizer's format for the current
        # forward pass (``brevitas_dmx.batched_formats``), else None: ``attach_batch``.
        self._batch_slot = None

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, group_dim={self.group_dim}, scale_rule={self.scale_rule}"

    @property
    def is_pinned(self) -> bool:
        return self._pinned

    @property
    def batch_slot(self) -> Optional[Tuple[object, int]]:
        """(FormatBatch, index) of the batch that computed this quantizer's format for the
        current forward pass, or None while it computes its own."""
        return self._batch_slot

    def attach_batch(self, batch, index: int) -> None:
        """Read the widths from ``batch.e[index]``, ``batch.m[index]`` until ``detach_batch``
        (``FormatBatch.compute``: valid only within the forward pass it was computed for)."""
        self._batch_slot = (batch, index)

    def detach_batch(self) -> None:
        self._batch_slot = None

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
        if self._batch_slot is not None:
            batch, k = self._batch_slot
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

    def forward(self, x: Tensor):
        self.last_input_shape = tuple(x.shape)
        e, m = self.widths_on(x.device)
        use_cache = self.caches_eval_output and not self.training and not torch.is_grad_enabled()
        if not use_cache:
            self._eval_cache = None
            return self._quantize(x, e, m)
        key = self._cache_key(x, e, m)
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self._quantize(x, e, m))
        return self._eval_cache[1]

    def _quantize(self, x: Tensor, e: Tensor, m: Tensor):
        blocks = self.input_view_impl(x)
        block_axis = self.group_dim + 1 if self.group_dim >= 0 else blocks.dim() - 1
        blocks = blocks.movedim(block_axis, -1)
        y, scale = mx_quantize_blocks(blocks, e, m, self.scale_rule)
        y, scale = y.movedim(-1, block_axis), scale.movedim(-1, block_axis)
        bias = mx_exponent_bias(e)
        return y, scale, self.zero_point_impl(), e, m, bias, True, None, None

    def _load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._pinned = not bool(torch.isnan(self.pinned_widths).any())
        key = prefix + "pinned_widths"
        if config.IGNORE_MISSING_KEYS and key in missing_keys:
            missing_keys.remove(key)
