# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Deployment: QONNX export of finalized MX models, reloadable checkpoints, packed weights."""

from brevitas_dmx.export.checkpoint import load_pretrained
from brevitas_dmx.export.checkpoint import pack_weights
from brevitas_dmx.export.checkpoint import packed_size_bits
from brevitas_dmx.export.checkpoint import save_pretrained
from brevitas_dmx.export.checkpoint import unpack_weights
from brevitas_dmx.export.qonnx import execute_qonnx
from brevitas_dmx.export.qonnx import export_causal_lm_qonnx
from brevitas_dmx.export.qonnx import export_qonnx
from brevitas_dmx.export.qonnx import MXQONNXDynamoManager
from brevitas_dmx.export.qonnx import MXQONNXManager
