# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""brevitas-dmx: learnable mixed-precision MX floating-point formats for Brevitas.

The names below load their module on first use, so that importing a light submodule (the
command line's parser, ``brevitas_dmx.cli``) does not import torch and Brevitas, and the
deployment helpers load Brevitas's export machinery only when they are used.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "brevitas_dmx.formats": ("element_format", "FORMATS", "LADDERS"),
    "brevitas_dmx.functional": ("mx_fake_quantize",),
    "brevitas_dmx.model":
        (
            "apply_format_map",
            "average_bits",
            "batched_formats",
            "bits_report",
            "clear_format_pins",
            "dmx_layers",
            "dmx_offsets",
            "finalize",
            "format_counts",
            "format_map",
            "mx_quantizers",
            "offsets_settled",
            "reusing_quantized_weights",
            "set_rounding",
            "set_temperature",
            "tie_groups",
            "tie_offsets",
            "train_only_offsets",
            "use_compiled_kernels"),
    "brevitas_dmx.export":
        ("save_pretrained", "load_pretrained", "export_qonnx", "pack_weights", "export_quark"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'brevitas_dmx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))
