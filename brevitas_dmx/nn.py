# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Layers with the fused dMX training step (as Brevitas keeps its layers in ``brevitas.nn``).

``DMXQuantLinear`` is a ``qnn.QuantLinear`` whose training step runs both quantizers and the
product as one autograd function (``brevitas_dmx.core.linear``), taking its formats from the
model-wide ``FormatBatch`` when one computed them and sharing its weight work between
micro-batches under a ``WeightReuse``. Anything else (eval mode, no grad, pinned formats,
non-dMX or missing quantizers, a bias or output quantizer, a feature count that is not a
multiple of the block) takes ``qnn.QuantLinear``'s own path.
"""

import inspect
from typing import Optional

import brevitas.nn as qnn
import torch
from torch import Tensor

from brevitas_dmx.core.linear import fused_linear
from brevitas_dmx.core.linear import LinearSpec
from brevitas_dmx.core.linear import WeightReuse
from brevitas_dmx.proxy import dmx_quant_of


def fused_quantizers(layer: qnn.QuantLinear):
    """(weight DMXFloatQuant, input DMXFloatQuant) when ``layer``'s training step can take the
    fused path, else None."""
    if not (layer.training and torch.is_grad_enabled()) or layer.return_quant_tensor:
        return None
    if layer.weight.requires_grad:  # dMX freezes the weights; training them takes the stock path
        return None
    if layer.output_quant.is_quant_enabled or (layer.bias is not None and
                                               layer.bias_quant.is_quant_enabled):
        return None
    if not (layer.weight_quant.is_quant_enabled and layer.input_quant.is_quant_enabled):
        return None
    wq, xq = dmx_quant_of(layer.weight_quant), dmx_quant_of(layer.input_quant)
    if wq is None or xq is None or wq.is_pinned or xq.is_pinned:
        return None
    if wq.mixes_formats or xq.mixes_formats:  # two quantizations per quantizer: the stock path
        return None
    if wq.group_size != xq.group_size or layer.in_features % wq.group_size:
        return None
    if wq.group_dim not in (1, -1) or xq.group_dim != -1:
        return None
    return wq, xq


def _batched_layer_formats(wq, xq, x: Tensor, weight: Tensor):
    """The layer's constants and Jacobians from the FormatBatch that computed both its
    quantizers' formats for this pass (``brevitas_dmx.core.batch``), or None."""
    batch = wq.format_batch
    if batch is None or xq.format_batch is not batch:
        return None
    k_w, k_x = batch.slot(wq), batch.slot(xq)
    if k_w is None or k_x is None or batch.e[k_w].device != x.device:
        return None
    return batch.layer_formats(k_x, k_w, x.dtype, weight.dtype)


class DMXQuantLinear(qnn.QuantLinear):
    """``qnn.QuantLinear`` with the fused dMX training step (module docstring); use it in a
    layer map in place of ``qnn.QuantLinear`` (``brevitas_dmx_llm`` does).

    ``weight_reuse``: this layer's ``WeightReuse`` while micro-batches share the weight work
    (``brevitas_dmx.reusing_quantized_weights`` sets it on each layer of its model), else None.

    The fused step runs the weight quantizer's element kernels (``kernels``: eager or compiled,
    ``brevitas_dmx.use_compiled_kernels`` sets both quantizers of a layer alike)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight_reuse: Optional[WeightReuse] = None

    # Brevitas's layerwise_quantize passes a new layer only the arguments its signature names:
    # it is QuantLinear's, to which this one hands them on unchanged.
    __init__.__signature__ = inspect.signature(qnn.QuantLinear.__init__)

    def forward(self, input):
        quants = fused_quantizers(self) if isinstance(input, Tensor) else None
        if quants is None or self.export_mode:
            return super().forward(input)
        wq, xq = quants
        xq.last_input_shape = tuple(input.shape)
        wq.last_input_shape = tuple(self.weight.shape)
        e_w, m_w = wq.widths_on(input.device)
        e_x, m_x = xq.widths_on(input.device)
        return fused_linear(
            input,
            self.weight,
            self.bias,
            e_w,
            m_w,
            e_x,
            m_x,
            LinearSpec(wq.group_size, wq.scale_rule, xq.scale_rule, wq.kernels),
            _batched_layer_formats(wq, xq, input, self.weight),
            None if self.weight_reuse is None else self.weight_reuse.begin(self, wq))


def dmx_linear_map(weight_quant, input_quant: Optional[object], **kwargs):
    """A ``layerwise_quantize`` map that puts ``DMXQuantLinear`` on every ``nn.Linear``."""
    return {
        torch.nn.Linear:
            (
                DMXQuantLinear,
                dict(
                    weight_quant=weight_quant,
                    input_quant=input_quant,
                    return_quant_tensor=False,
                    **kwargs))
    }
