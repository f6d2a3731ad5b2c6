# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``MXFloatQuant``: the QONNX custom op of an MX (block floating point) quantizer.

The ONNX domain of the node is this module's path, which is how qonnx finds the op to execute
it. Execution is numpy: the shared E8M0 scale of every block of ``block_size`` elements along
``axis`` (``scale_rule`` "floor": ``2^(floor(log2 amax) - emax)``, the OCP rule; "nonclip":
``2^ceil(log2(amax / max_val))``; "even", AMD Quark's rule: ``2^(floor(log2 amax) - emax)``, one
power higher where ``amax / 2^floor(log2 amax) >= 2 - 2^-(m+1)``, found with ``np.frexp``), then
qonnx's own ``FloatQuant`` reference (``float_quant``) on the elements with that scale. It shares
no code with the torch quantizers, so running an exported graph checks them against an
independent implementation.
"""

import numpy as np
from onnx import helper
from onnx import TensorProto
from qonnx.custom_op.base import CustomOp
from qonnx.custom_op.general.floatquant import float_quant

__all__ = ["MXFloatQuant", "mx_block_scale"]

# Brevitas clamps block maxima from below at this value (all-zero blocks give zeros).
SCALING_MIN_VAL = 1e-10


def _blocks(x: np.ndarray, axis: int, block_size: int):
    """``x`` with ``axis`` moved last and split into blocks (zero-padded), and how to undo it."""
    moved = np.moveaxis(x, axis, -1)
    length = moved.shape[-1]
    pad = (-length) % block_size
    if pad:
        moved = np.concatenate([moved, np.zeros(moved.shape[:-1] + (pad,), moved.dtype)], -1)
    blocks = moved.reshape(moved.shape[:-1] + (-1, block_size))

    def restore(y: np.ndarray) -> np.ndarray:
        y = y.reshape(moved.shape)[..., :length]
        return np.moveaxis(y, -1, axis)

    return blocks, restore


def mx_block_scale(
        blocks: np.ndarray,
        max_exponent: int,
        max_val: float,
        scale_rule: str,
        mantissa_bits: int = 0) -> np.ndarray:
    """The shared power-of-two scale of each block (last dimension, kept with size 1);
    ``mantissa_bits`` is read by the even rule only."""
    amax = np.maximum(np.abs(blocks).max(axis=-1, keepdims=True), np.float32(SCALING_MIN_VAL))
    if scale_rule == "floor":
        exponent = np.floor(np.log2(amax)) - max_exponent
    elif scale_rule == "nonclip":
        exponent = np.ceil(np.log2(amax / np.float32(max_val)))
    elif scale_rule == "even":
        fraction, power = np.frexp(amax.astype(np.float64))  # amax = fraction * 2^power, exact
        carry = 2 * fraction >= 2 - 2.0**-(mantissa_bits + 1)
        exponent = power - 1 + carry - max_exponent
    else:
        raise ValueError(f"Unknown scale_rule {scale_rule!r}")
    return np.exp2(exponent).astype(np.float32)


class MXFloatQuant(CustomOp):
    """MX quantization of a float tensor: E8M0 scale per block, minifloat elements."""

    def get_nodeattr_types(self):
        return {
            "format": ("s", True, ""),  # e.g. "e2m1" (MXFP4), "e4m3" (MXFP8)
            "exponent_bitwidth": ("i", True, 0),
            "mantissa_bitwidth": ("i", True, 0),
            "exponent_bias": ("i", True, 0),
            "max_val": ("f", True, 0.0),  # the largest finite element value (448 for E4M3)
            "max_exponent": ("i", True, 0),  # emax of the element format (the scale rule's)
            "block_size": ("i", False, 32),
            "axis": ("i", False, -1),  # the axis the blocks run along
            "scale_rule": ("s", False, "floor"),
            "scale_bits": ("i", False, 8),  # E8M0 shared scale
            "rounding_mode": ("s", False, "ROUND"),
        }

    def execute_node(self, context, graph):
        node = self.onnx_node
        x = np.asarray(context[node.input[0]], dtype=np.float32)
        blocks, restore = _blocks(x, self.get_nodeattr("axis"), self.get_nodeattr("block_size"))
        scale = mx_block_scale(
            blocks,
            self.get_nodeattr("max_exponent"),
            self.get_nodeattr("max_val"),
            self.get_nodeattr("scale_rule"),
            self.get_nodeattr("mantissa_bitwidth"))
        out = float_quant(
            blocks,
            scale,
            self.get_nodeattr("exponent_bitwidth"),
            self.get_nodeattr("mantissa_bitwidth"),
            self.get_nodeattr("exponent_bias"),
            signed=True,
            max_val=np.float32(self.get_nodeattr("max_val")),
            has_subnormal=True,
            rounding_mode=self.get_nodeattr("rounding_mode"),
            saturation=True)
        context[node.output[0]] = restore(np.asarray(out, dtype=np.float32))

    def make_shape_compatible_op(self, model):
        return helper.make_node(
            "Cast",
            inputs=[self.onnx_node.input[0]],
            outputs=[self.onnx_node.output[0]],
            to=int(TensorProto.FLOAT))

    def infer_node_datatype(self, model):
        from qonnx.core.datatype import DataType
        model.set_tensor_datatype(self.onnx_node.output[0], DataType["FLOAT32"])

    def verify_node(self):
        return []
