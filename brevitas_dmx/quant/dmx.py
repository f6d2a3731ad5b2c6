# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Drop-in Brevitas quantizers with a learnable MX format, in Brevitas's injector style.

Use them like any Brevitas quantizer::

    qnn.QuantLinear(4096, 4096, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct)

The weight and input quantizers of one layer share one learnable offset unless
``dmx_share_offset=False`` (``DMXFloatWeight.let(dmx_share_offset=False)``), or their ladders
differ. ``dmx_scale_rule`` picks the shared-scale rule ("floor", OCP; "nonclip"; or "even",
AMD Quark's and vLLM's).
"""

from brevitas.inject import ExtendedInjector
from brevitas.quant.float_base import ScaledFloatActBase
from brevitas.quant.float_base import ScaledFloatWeightBase
from brevitas.quant.mx_quant_ocp import MXActMixin
from brevitas.quant.mx_quant_ocp import MXWeightMixin
from dependencies import value
from torch import nn

from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.core.quant import DMXFloatQuant
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.proxy import DMXActQuantProxyFromInjector
from brevitas_dmx.proxy import DMXWeightQuantProxyFromInjector
from brevitas_dmx.proxy import find_shared_offset

__all__ = [
    "DMXFloatQuantMixin",
    "MXFP8MXFP4LadderMixin",
    "MXFP6MXFP4LadderMixin",
    "MXFP8MXFP6MXFP4StaircaseMixin",
    "MXFP4MXFP6MXFP8ChainMixin",
    "DMXWeightProxyMixin",
    "DMXActProxyMixin",
    "DMXFloatWeight",
    "DMXFloatAct",
    "DMXFloat6Weight",
    "DMXFloat6Act",
    "DMXFloatStaircaseWeight",
    "DMXFloatStaircaseAct",
    "DMXFloatChainWeight",
    "DMXFloatChainAct",
    "LADDER_QUANTIZERS",
    "ladder_quantizers",
]


class DMXFloatQuantMixin(ExtendedInjector):
    """MX float quantization whose element format is driven by a learnable offset."""
    tensor_quant = DMXFloatQuant
    dmx_scale_rule = DEFAULT_SCALE_RULE
    dmx_share_offset = True
    dmx_offset_init = 0.0

    @value
    def dmx_offset_impl(
            dmx_ladder,
            dmx_share_offset,
            dmx_offset_init,
            module=None,
            proxy_module=None,
            device=None):
        if dmx_share_offset and isinstance(module, nn.Module):
            shared = find_shared_offset(module, proxy_module, dmx_ladder)
            if shared is not None:
                return shared
        return DMXOffset(dmx_ladder, init=dmx_offset_init, device=device)


class MXFP8MXFP4LadderMixin(ExtendedInjector):
    """E(2+b)M(1+b), b in [0, 2]: ends on MXFP4 (E2M1) or MXFP8 (E4M3)."""
    dmx_ladder = "mxfp8-mxfp4"


class MXFP6MXFP4LadderMixin(ExtendedInjector):
    """E2M(1+b), b in [0, 2]: ends on MXFP4 (E2M1) or MXFP6 (E2M3)."""
    dmx_ladder = "mxfp6-mxfp4"


class MXFP8MXFP6MXFP4StaircaseMixin(ExtendedInjector):
    """E(2+b)M(1+b) with a staircase: ends on MXFP4 (E2M1), MXFP6 (E3M2) or MXFP8 (E4M3)."""
    dmx_ladder = "mxfp8-mxfp6-mxfp4"


class MXFP4MXFP6MXFP8ChainMixin(ExtendedInjector):
    """E2M(1+b) for b in [0, 2], then E(2+b-2)M3 for b in [2, 4]: ends on MXFP4 (E2M1), MXFP6
    (E2M3) or MXFP8 (E4M3)."""
    dmx_ladder = "e2m1,e2m3,e4m3"


class DMXWeightProxyMixin(ExtendedInjector):
    proxy_class = DMXWeightQuantProxyFromInjector


class DMXActProxyMixin(ExtendedInjector):
    proxy_class = DMXActQuantProxyFromInjector


class DMXFloatWeightBase(DMXFloatQuantMixin,
                         DMXWeightProxyMixin,
                         MXWeightMixin,
                         ScaledFloatWeightBase):
    """Learnable-format MX weight quantizer, blocks of 32 along the input channels."""


class DMXFloatActBase(DMXFloatQuantMixin, DMXActProxyMixin, MXActMixin, ScaledFloatActBase):
    """Learnable-format MX activation quantizer with dynamic per-block scales."""


class DMXFloatWeight(MXFP8MXFP4LadderMixin, DMXFloatWeightBase):
    """MXFP8/MXFP4 ladder weight quantizer."""


class DMXFloatAct(MXFP8MXFP4LadderMixin, DMXFloatActBase):
    """MXFP8/MXFP4 ladder activation quantizer."""


class DMXFloat6Weight(MXFP6MXFP4LadderMixin, DMXFloatWeightBase):
    """MXFP6/MXFP4 ladder weight quantizer."""


class DMXFloat6Act(MXFP6MXFP4LadderMixin, DMXFloatActBase):
    """MXFP6/MXFP4 ladder activation quantizer."""


class DMXFloatStaircaseWeight(MXFP8MXFP6MXFP4StaircaseMixin, DMXFloatWeightBase):
    """MXFP8/MXFP6/MXFP4 staircase weight quantizer."""


class DMXFloatStaircaseAct(MXFP8MXFP6MXFP4StaircaseMixin, DMXFloatActBase):
    """MXFP8/MXFP6/MXFP4 staircase activation quantizer."""


class DMXFloatChainWeight(MXFP4MXFP6MXFP8ChainMixin, DMXFloatWeightBase):
    """MXFP4/MXFP6 (E2M3)/MXFP8 chain weight quantizer."""


class DMXFloatChainAct(MXFP4MXFP6MXFP8ChainMixin, DMXFloatActBase):
    """MXFP4/MXFP6 (E2M3)/MXFP8 chain activation quantizer."""


# The quantizers of each named ladder (``brevitas_dmx.formats.LADDERS``): (weight, input).
LADDER_QUANTIZERS = {
    "mxfp8-mxfp4": (DMXFloatWeight, DMXFloatAct),
    "mxfp6-mxfp4": (DMXFloat6Weight, DMXFloat6Act),
    "mxfp8-mxfp6-mxfp4": (DMXFloatStaircaseWeight, DMXFloatStaircaseAct),
    "e2m1,e2m3,e4m3": (DMXFloatChainWeight, DMXFloatChainAct),
}


def ladder_quantizers(name: str):
    """(weight, input) learnable quantizers on the ladder ``name``: a named ladder's classes, or
    the base quantizers with ``dmx_ladder`` set to any other chain of formats."""
    path = get_ladder(name)
    if path.name in LADDER_QUANTIZERS:
        return LADDER_QUANTIZERS[path.name]
    return (DMXFloatWeightBase.let(dmx_ladder=path.name), DMXFloatActBase.let(dmx_ladder=path.name))
