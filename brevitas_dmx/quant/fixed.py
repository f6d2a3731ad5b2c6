# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Fixed Brevitas MX float quantizers for every OCP element format (what ``finalize`` uses).

Brevitas ships ``MXFloat8e4m3Weight``/``MXFloat8e4m3Act``; the other element formats are the
same quantizers with Brevitas's element mixins. The ``NonClip`` variants use the scale
``2**ceil(log2(amax / max_normal))``, the smallest power of two that does not saturate the block
maximum, built from Brevitas's own scaling modules. The ``Even`` variants use AMD Quark's default
rule, ``2**(floor(log2(even(amax))) - emax)`` (``brevitas_dmx.functional.even_block_exponent``):
Brevitas's power-of-two threshold ``2**emax`` stays, and the block maximum is rounded to a power
of two by ``EvenPowerOfTwo`` in place of ``2**floor(log2 amax)``.
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

from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.config import ScaleRule
from brevitas_dmx.formats import element_format
from brevitas_dmx.functional import even_block_exponent
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


class EvenPowerOfTwo(brevitas.jit.ScriptModule):
    """Rounds a positive block maximum to a power of two as AMD Quark's ``even`` rule does:
    ``2**floor(log2 amax)``, or the next power of two when ``amax`` rounded half up to the
    element's ``mantissa_bit_width`` fraction bits reaches it (``even_block_exponent``). Found
    in float32 on the exact bits, as Quark finds it, and returned in ``x``'s dtype.

    Used as the scaling's ``restrict_scaling_impl`` with a float (identity) pre-restriction, so
    it sees the block maximum itself, not its ``log2``."""

    def __init__(self, mantissa_bit_width: int) -> None:
        super().__init__()
        self.step_factor = 2.0**-int(mantissa_bit_width)

    def restrict_init_float(self, x: float):
        return abs(x)

    def restrict_init_tensor(self, x: Tensor):
        return torch.abs(x)

    def restrict_init_module(self):
        return FloatRestrictValue().restrict_init_module()

    def restrict_init_inplace_module(self):
        return FloatRestrictValue().restrict_init_inplace_module()

    def forward(self, x: Tensor) -> Tensor:
        amax = x.to(torch.float32)
        return torch.exp2(even_block_exponent(amax, self.step_factor)).to(x.dtype)


class EvenScaleMixin(ExtendedInjector):
    """Scale = 2**(floor(log2(even(amax))) - emax): AMD Quark's default MX rule."""
    restrict_scaling_impl = EvenPowerOfTwo


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


def fixed_mx_quantizer(fmt: str, role: str, scale_rule: str = DEFAULT_SCALE_RULE):
    """The fixed Brevitas MX quantizer for element format ``fmt``; ``role`` 'weight' or 'act'."""
    fmt = element_format(fmt)
    if role not in ("weight", "act"):
        raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"Unknown scale_rule {scale_rule!r}; choose one of {SCALE_RULES}.")
    quant = (_WEIGHT if role == "weight" else _ACT)[fmt.name]
    if scale_rule == "nonclip":
        quant = type(quant.__name__ + "NonClip", (NonClipScaleMixin, quant), {})
    elif scale_rule == "even":
        quant = type(quant.__name__ + "Even", (EvenScaleMixin, quant), {})
    return quant


def injector_scale_rule(injector) -> str:
    """The scale rule of a fixed MX quantizer made by ``fixed_mx_quantizer``."""
    if issubclass(injector, NonClipScaleMixin):
        return ScaleRule.NONCLIP.value
    if issubclass(injector, EvenScaleMixin):
        return ScaleRule.EVEN.value
    return ScaleRule.FLOOR.value


def scale_rule_of(quant) -> str:
    """The scale rule of an MX quantizer record (``brevitas_dmx.model.mx_quantizers``): its
    learnable format's, or its fixed injector's."""
    if quant.dmx is not None:
        return quant.dmx.scale_rule
    return injector_scale_rule(quant.proxy.quant_injector)
