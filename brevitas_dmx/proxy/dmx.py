# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Proxies for the dMX quantizers: Brevitas's groupwise float proxies around ``DMXFloatQuant``."""

from typing import Optional

from brevitas.core.function_wrapper.misc import Identity
from brevitas.proxy.groupwise_float_parameter_quant import \
    GroupwiseWeightFloatQuantProxyFromInjector
from brevitas.proxy.groupwise_float_runtime_quant import GroupwiseActFloatQuantProxyFromInjector
from torch import nn

from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.core.quant import DMXFloatQuant
from brevitas_dmx.formats import ladder as get_ladder


def dmx_quant_of(proxy: nn.Module) -> Optional[DMXFloatQuant]:
    """The ``DMXFloatQuant`` inside a proxy, or None if the proxy is not a dMX one."""
    if isinstance(proxy, DMXWeightQuantProxyFromInjector):
        return proxy.tensor_quant
    if isinstance(proxy, DMXActQuantProxyFromInjector):
        fused = proxy.fused_activation_quant_proxy
        return None if fused is None else fused.tensor_quant
    return None


def find_shared_offset(layer: nn.Module, proxy: nn.Module, ladder: str) -> Optional[DMXOffset]:
    """The offset of another dMX quantizer of ``layer`` that shares it, on the same ladder.

    Brevitas builds each quantizer of a layer from its own injector and rebuilds them when a
    state dict is loaded; looking the sibling up through the layer is what lets the weight and
    input quantizers of one layer keep a single offset through both.
    """
    path = get_ladder(ladder)  # a chain's name is parsed once, not once per sibling
    for child in layer.children():
        if child is proxy:
            continue
        quant = dmx_quant_of(child)
        if quant is not None and quant.share_offset and quant.offset.ladder == path:
            return quant.offset
    return None


def _built_quant(proxy: nn.Module) -> Optional[DMXFloatQuant]:
    """``dmx_quant_of(proxy)``, or None while Brevitas has not built the proxy's first quantizer
    (it builds it from within the proxy's ``__init__``, before the attribute exists)."""
    try:
        return dmx_quant_of(proxy)
    except AttributeError:
        return None


def _keep_kernels(proxy: nn.Module, old: Optional[DMXFloatQuant]) -> None:
    """Gives the quantizer that Brevitas has just rebuilt (``init_tensor_quant``: on a state-dict
    load, among others) the element kernels of the one it replaced: which kernels run is the
    model's choice (``brevitas_dmx.use_compiled_kernels``), and a reload must not undo it."""
    new = dmx_quant_of(proxy)
    if old is not None and new is not None and new is not old:
        new.kernels = old.kernels


class DMXWeightQuantProxyFromInjector(GroupwiseWeightFloatQuantProxyFromInjector):
    """Weight proxy of the dMX quantizers."""

    def init_tensor_quant(self, preserve_state_dict=False):
        old = _built_quant(self)
        super().init_tensor_quant(preserve_state_dict)
        if self.tensor_quant is not None:
            self.tensor_quant.caches_eval_output = True
        _keep_kernels(self, old)


class DMXActQuantProxyFromInjector(GroupwiseActFloatQuantProxyFromInjector):
    """Activation proxy of the dMX quantizers (dynamic per-block scales)."""

    def init_tensor_quant(self):
        old = _built_quant(self)
        super().init_tensor_quant()
        _keep_kernels(self, old)

    @property
    def input_view_impl(self):
        quant = dmx_quant_of(self)
        return Identity() if quant is None else quant.input_view_impl
