# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Deployment: QONNX export of finalized MX models, reloadable checkpoints, packed weights,
AMD Quark checkpoints (transformers with amd-quark, vLLM).

The QONNX functions need onnx and qonnx (the export extra) and are imported on first use, so the
checkpoints, which need only safetensors, work without them."""

from brevitas_dmx.export.checkpoint import load_pretrained
from brevitas_dmx.export.checkpoint import pack_codes
from brevitas_dmx.export.checkpoint import pack_weights
from brevitas_dmx.export.checkpoint import packed_size_bits
from brevitas_dmx.export.checkpoint import save_pretrained
from brevitas_dmx.export.checkpoint import unpack_weights
from brevitas_dmx.export.quark import export_quark

_QONNX = (
    "execute_qonnx",
    "export_causal_lm_qonnx",
    "export_qonnx",
    "MXQONNXDynamoManager",
    "MXQONNXManager",
)


def __getattr__(name):
    if name in _QONNX:
        from brevitas_dmx.export import qonnx
        return getattr(qonnx, name)
    raise AttributeError(f"module 'brevitas_dmx.export' has no attribute {name!r}")
