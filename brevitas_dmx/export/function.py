# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The torch side of the ``MXFloatQuant`` node: emits the node, with the element format as
attributes, into the ONNX graph, for the TorchScript and the dynamo exporter."""

from brevitas.export.onnx.function import DynamoFn
import torch
from torch.autograd import Function

DOMAIN = "brevitas_dmx.export.qonnx_ops"
DOMAIN_VERSION = 1


def _attributes(
        format_name,
        exponent_bits,
        mantissa_bits,
        exponent_bias,
        max_val,
        max_exponent,
        block_size,
        axis,
        scale_rule):
    return {
        "format": format_name,
        "exponent_bitwidth": exponent_bits,
        "mantissa_bitwidth": mantissa_bits,
        "exponent_bias": exponent_bias,
        "max_val": float(max_val),
        "max_exponent": max_exponent,
        "block_size": block_size,
        "axis": axis,
        "scale_rule": scale_rule,
        "scale_bits": 8,  # E8M0 shared scale
        "rounding_mode": "ROUND"
    }


class MXFloatQuantFn(Function):
    """TorchScript backend: ``g.op`` with typed attribute suffixes."""

    @staticmethod
    def symbolic(g, x, *fmt):
        suffix = {str: "_s", int: "_i", float: "_f"}
        attributes = {
            name + suffix[type(value)]: value for name, value in _attributes(*fmt).items()
        }
        out = g.op(f"{DOMAIN}::MXFloatQuant", x, **attributes)
        out.setType(x.type())
        return out

    @staticmethod
    def forward(ctx, x, *fmt):
        # Like Brevitas's export functions: tracing needs the shape only, and computing inside
        # the traced function would put the functional core's own autograd function in a
        # subgraph that the TorchScript exporter's tuple lowering rejects.
        return x.clone()


class MXFloatQuantDynamoFn(DynamoFn):
    """Dynamo backend: ``torch.onnx.ops.symbolic`` records the same node under torch.export."""

    @staticmethod
    def symbolic(x, *fmt):
        return torch.onnx.ops.symbolic(
            f"{DOMAIN}::MXFloatQuant", (x,),
            _attributes(*fmt),
            dtype=x.dtype,
            shape=x.shape,
            version=DOMAIN_VERSION)


class MXFloatQuantOp:
    torchscript = MXFloatQuantFn
    dynamo = MXFloatQuantDynamoFn
