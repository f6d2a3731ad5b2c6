# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The torch side of the ``MXFloatQuant`` node: emits the node, with the element format as
attributes, into the ONNX graph."""

from torch.autograd import Function

DOMAIN = "brevitas_dmx.export.qonnx_ops"
DOMAIN_VERSION = 1


class MXFloatQuantFn(Function):

    @staticmethod
    def symbolic(
            g, x, format_name, exponent_bits, mantissa_bits, exponent_bias, max_val, max_exponent,
            block_size, axis, scale_rule):
        out = g.op(
            f"{DOMAIN}::MXFloatQuant",
            x,
            format_s=format_name,
            exponent_bitwidth_i=exponent_bits,
            mantissa_bitwidth_i=mantissa_bits,
            exponent_bias_i=exponent_bias,
            max_val_f=max_val,
            max_exponent_i=max_exponent,
            block_size_i=block_size,
            axis_i=axis,
            scale_rule_s=scale_rule,
            scale_bits_i=8,
            rounding_mode_s="ROUND")
        out.setType(x.type())
        return out

    @staticmethod
    def forward(
            ctx, x, format_name, exponent_bits, mantissa_bits, exponent_bias, max_val,
            max_exponent, block_size, axis, scale_rule):
        # Like Brevitas's export functions: tracing needs the shape only, and computing inside
        # the traced function would put the functional core's own autograd function in a
        # subgraph that the TorchScript exporter's tuple lowering rejects.
        return x.clone()
