# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""brevitas-dmx: learnable mixed-precision MX floating-point formats for Brevitas."""

__version__ = "0.1.0"

from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import FORMATS
from brevitas_dmx.formats import LADDERS
from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.model import apply_format_map
from brevitas_dmx.model import average_bits
from brevitas_dmx.model import batched_formats
from brevitas_dmx.model import bits_report
from brevitas_dmx.model import clear_format_pins
from brevitas_dmx.model import dmx_layers
from brevitas_dmx.model import dmx_offsets
from brevitas_dmx.model import finalize
from brevitas_dmx.model import format_counts
from brevitas_dmx.model import format_map
from brevitas_dmx.model import mx_quantizers
from brevitas_dmx.model import reusing_quantized_weights
from brevitas_dmx.model import set_rounding
from brevitas_dmx.model import set_temperature
from brevitas_dmx.model import tie_groups
from brevitas_dmx.model import tie_offsets
from brevitas_dmx.model import train_only_offsets

_EXPORTS = ("save_pretrained", "load_pretrained", "export_qonnx", "pack_weights", "export_quark")


def __getattr__(name):
    # Deployment helpers load Brevitas's export machinery: import them on first use only.
    if name in _EXPORTS:
        from brevitas_dmx import export
        return getattr(export, name)
    raise AttributeError(f"module 'brevitas_dmx' has no attribute {name!r}")
