# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Fixed Brevitas MX float quantizers for every OCP element format (what ``finalize`` uses).

Brevitas ships ``MXFloat8e4m3Weight``/``MXFloat8e4m3Act``; the other element formats are the
same quantizers with Brevitas's element mixins. The ``NonClip`` variants use the scale
``2**ceil(log2(amax / max_normal))``, the smallest power of two that does not saturate the block
maximum, built from Brevitas's own scaling modules.
"""

import brevitas
from brevitas.core.restrict_val import FloatRestrictValue
from brevitas.function.ops_ste import ceil_ste
from brevitas.inject import ExtendedInjector
from brevitas.inject.enum import RestrictValueType
from brevitas.quant.float_base import Fp4e2m1Mixin
from brevitas.quant.float_base import Fp6e2m3Mixin
from brevitas.quant.float_base import Fp6e3m2Mixin
from brevitas.quant.float_base import Fp8e5m2Mixin
from brevitas.quant.mx_quant_ocp import MXFloat8e4m3Act
from brevitas.quant.mx_quant_ocp import MXFloat8e4m3Weight
import torch
from torch import Tensor

from brevitas_dmx.formats import element_format
from brevitas_dmx.functional import SCALE_RULES


class CeilPowerOfTwo(brevitas.jit.ScriptModule):
    """Rounds a positive scale up to a power of two: ``2**ceil(log2(x))``."""

    def __init__(self) -> None:
        super().__init__()

    @brevitas.jit.script_method
    def forward(self, x: Tensor) -> Tensor:
        return torch.exp2(ceil_ste(torch.log2(x)))


class FloatThresholdMixin(ExtendedInjector):
    restrict_scaling_impl = FloatRestrictValue


class NonClipScaleMixin(ExtendedInjector):
    """Scale = 2**ceil(log2(amax / max_normal)) instead of the OCP floor rule."""
    restrict_scaling_type = RestrictValueType.FP
    threshold_mixin = FloatThresholdMixin
    restrict_scale_threshold_impl = CeilPowerOfTwo


class MXFloat4e2m1Weight(Fp4e2m1Mixin, MXFloat8e4m3Weight):
    """MXFP4 (E2M1) weight quantizer."""


class MXFloat6e2m3Weight(Fp6e2m3Mixin, MXFloat8e4m3Weight):
    """MXFP6 (E2M3) weight quantizer."""


class MXFloat6e3m2Weight(Fp6e3m2Mixin, MXFloat8e4m3Weight):
    """MXFP6 (E3M2) weight quantizer."""


class MXFloat8e5m2Weight(Fp8e5m2Mixin, MXFloat8e4m3Weight):
    """MXFP8 (E5M2) weight quantizer."""


class MXFloat4e2m1Act(Fp4e2m1Mixin, MXFloat8e4m3Act):
    """MXFP4 (E2M1) activation quantizer."""


class MXFloat6e2m3Act(Fp6e2m3Mixin, MXFloat8e4m3Act):
    """MXFP6 (E2M3) activation quantizer."""


class MXFloat6e3m2Act(Fp6e3m2Mixin, MXFloat8e4m3Act):
    """MXFP6 (E3M2) activation quantizer."""


class MXFloat8e5m2Act(Fp8e5m2Mixin, MXFloat8e4m3Act):
    """MXFP8 (E5M2) activation quantizer."""


_WEIGHT = {
    "e2m1": MXFloat4e2m1Weight,
    "e2m3": MXFloat6e2m3Weight,
    "e3m2": MXFloat6e3m2Weight,
    "e4m3": MXFloat8e4m3Weight,
    "e5m2": MXFloat8e5m2Weight,
}
_ACT = {
    "e2m1": MXFloat4e2m1Act,
    "e2m3": MXFloat6e2m3Act,
    "e3m2": MXFloat6e3m2Act,
    "e4m3": MXFloat8e4m3Act,
    "e5m2": MXFloat8e5m2Act,
}


def fixed_mx_quantizer(fmt: str, role: str, scale_rule: str = "floor"):
    """The fixed Brevitas MX quantizer for element format ``fmt``; ``role`` 'weight' or 'act'."""
    fmt = element_format(fmt)
    if role not in ("weight", "act"):
        raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"Unknown scale_rule {scale_rule!r}; choose one of {SCALE_RULES}.")
    quant = (_WEIGHT if role == "weight" else _ACT)[fmt.name]
    if scale_rule == "nonclip":
        quant = type(quant.__name__ + "NonClip", (NonClipScaleMixin, quant), {})
    return quant
