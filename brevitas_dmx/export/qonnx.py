# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""QONNX export of finalized mixed MX models.

Brevitas 0.13.4's QONNX manager has handlers for per-tensor float quantizers only (its float
handler asserts ``not is_groupwise``). ``MXQONNXManager`` adds handlers for the group-wise float
weight and activation proxies that ``brevitas_dmx.finalize`` produces: each quantizer becomes one
``MXFloatQuant`` node whose attributes carry its element format (exponent and mantissa bits,
bias, largest value, emax), the block size and axis, and the scale rule. Weights stay float
initializers quantized by their node (the QONNX convention); inputs get dynamic per-block scales
inside the node.
"""

from typing import Optional, Tuple, Union

from brevitas.export.onnx.handler import ONNXBaseHandler
from brevitas.export.onnx.qonnx.manager import QONNXManager
from brevitas.proxy.groupwise_float_parameter_quant import GroupwiseWeightFloatQuantProxyFromInjector
from brevitas.proxy.groupwise_float_runtime_quant import GroupwiseActFloatQuantProxyFromInjector
from brevitas.proxy.quant_proxy import QuantProxyProtocol
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.export.function import DOMAIN
from brevitas_dmx.export.function import DOMAIN_VERSION
from brevitas_dmx.export.function import MXFloatQuantFn
from brevitas_dmx.formats import format_from_bits
from brevitas_dmx.functional import mx_exponent_bias
from brevitas_dmx.functional import mx_max_exponent
from brevitas_dmx.functional import mx_max_normal
from brevitas_dmx.quant.fixed import NonClipScaleMixin


def mx_node_attributes(proxy: nn.Module) -> dict:
    """What the ``MXFloatQuant`` node of a fixed group-wise float proxy records."""
    injector = proxy.quant_injector
    e, m = int(injector.exponent_bit_width), int(injector.mantissa_bit_width)
    e_t, m_t = torch.tensor(float(e)), torch.tensor(float(m))
    return {
        "format_name": format_from_bits(e, m).name,
        "exponent_bits": e,
        "mantissa_bits": m,
        "exponent_bias": int(mx_exponent_bias(e_t)),
        "max_val": float(mx_max_normal(e_t, m_t)),
        "max_exponent": int(mx_max_exponent(e_t)),
        "block_size": int(injector.group_size),
        "axis": int(injector.group_dim),
        "scale_rule": "nonclip" if issubclass(injector, NonClipScaleMixin) else "floor",
    }


class _MXProxyHandler(ONNXBaseHandler):
    """Emits one ``MXFloatQuant`` node and returns what the proxy's QuantTensor needs (the value
    in Brevitas's group view; scale and the rest as constants, only metadata here)."""

    def prepare_for_export(self, module):
        self.attributes = mx_node_attributes(module) if module.is_quant_enabled else None

    def symbolic_execution(self, x: Tensor):
        a = self.attributes
        axis, block = a["axis"], a["block_size"]
        if x.shape[axis] % block:
            raise ValueError(
                f"MX export needs the blocked dimension ({x.shape[axis]}) to be a multiple of "
                f"the block size {block}")
        out = MXFloatQuantFn.apply(x, *a.values())
        grouped = out.unflatten(axis, (-1, block))
        scale_shape = list(grouped.shape)
        scale_shape[axis if axis >= 0 else axis] = 1
        scale = torch.ones(scale_shape, dtype=x.dtype, device=x.device)
        return (
            grouped,
            scale,
            torch.zeros_like(scale),
            torch.tensor(float(a["exponent_bits"])),
            torch.tensor(float(a["mantissa_bits"])),
            torch.tensor(float(a["exponent_bias"])),
            True,
            None,
            None)


class MXWeightFloatQuantProxyHandler(_MXProxyHandler):
    handled_layer = GroupwiseWeightFloatQuantProxyFromInjector


class MXActFloatQuantProxyHandler(_MXProxyHandler):
    handled_layer = GroupwiseActFloatQuantProxyFromInjector


class MXQONNXManager(QONNXManager):
    """Brevitas's QONNX manager plus the MX (group-wise float) handlers."""
    handlers = [MXWeightFloatQuantProxyHandler, MXActFloatQuantProxyHandler
                ] + QONNXManager.handlers
    custom_fns = QONNXManager.custom_fns + [MXFloatQuantFn]

    @classmethod
    def export_onnx(
            cls, module, args, export_path, input_shape, input_t, disable_warnings,
            **onnx_export_kwargs):
        opsets = onnx_export_kwargs.setdefault("custom_opsets", {})
        opsets[DOMAIN] = DOMAIN_VERSION
        return super().export_onnx(
            module, args, export_path, input_shape, input_t, disable_warnings,
            **onnx_export_kwargs)


def check_exportable(model: nn.Module) -> None:
    """Refuses models with learnable formats left, and quantizers no handler exports."""
    from brevitas_dmx.model import dmx_layers
    learnable = [name for name, _ in dmx_layers(model)]
    if learnable:
        raise ValueError(
            f"{len(learnable)} layers still have learnable formats (e.g. {learnable[0]}): call "
            f"brevitas_dmx.finalize(model) before exporting")
    unsupported = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, QuantProxyProtocol) and module.is_quant_enabled and
        MXQONNXManager.handler_from_module(module, no_inheritance=True) is None
    ]
    if unsupported:
        raise TypeError(
            f"No QONNX export handler for {', '.join(unsupported[:5])}"
            f"{' and more' if len(unsupported) > 5 else ''}: brevitas_dmx exports MX "
            f"(group-wise float) quantizers and what Brevitas's QONNX manager handles")


def export_qonnx(
        model: nn.Module,
        args: Union[Tensor, Tuple],
        export_path: Optional[str] = None,
        dynamo: bool = False,
        **onnx_export_kwargs):
    """Exports a finalized mixed MX model to QONNX with the TorchScript exporter.

    Every MX quantizer becomes an ``MXFloatQuant`` node (domain
    ``brevitas_dmx.export.qonnx_ops``) that qonnx can execute. The dynamo exporter is not
    supported: Brevitas's QONNX dynamo path needs a ``torch.onnx.ops.symbolic`` twin of every
    custom function, and its float handlers refuse group-wise quantizers."""
    if dynamo:
        raise NotImplementedError(
            "MX QONNX export works with the TorchScript exporter (dynamo=False); Brevitas 0.13.4's "
            "dynamo QONNX path has no group-wise float support")
    check_exportable(model)
    onnx_export_kwargs.setdefault("opset_version", 17)
    was_training = model.training
    model.eval()
    try:
        return MXQONNXManager.export(
            model, args=args, export_path=export_path, dynamo=False, **onnx_export_kwargs)
    finally:
        model.train(was_training)


def execute_qonnx(model_or_path, inputs: Tensor) -> Tensor:
    """Runs an exported graph with qonnx (numpy ``MXFloatQuant`` nodes, onnxruntime for the
    standard ones) on one input; returns the first output as a torch tensor."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model
    wrapper = cleanup_model(ModelWrapper(model_or_path)).transform(InferShapes())
    feed = {wrapper.graph.input[0].name: inputs.detach().cpu().numpy()}
    out = execute_onnx(wrapper, feed)[wrapper.graph.output[0].name]
    return torch.from_numpy(out)


class CausalLMLogits(nn.Module):
    """A Hugging Face causal LM as ``token ids -> logits`` for tracing: no KV cache, and an
    explicit all-ones attention mask (without one, transformers' mask code uses ``aten::diff``,
    which the TorchScript ONNX exporter cannot export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def export_causal_lm_qonnx(model: nn.Module, export_path: str, seqlen: int = 128, **kwargs):
    """Exports a finalized Hugging Face causal LM (input: token ids [1, seqlen], output: logits)
    to QONNX; the sequence axis is dynamic."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, seqlen, dtype=torch.long, device=device)
    kwargs.setdefault("input_names", ["input_ids"])
    kwargs.setdefault("output_names", ["logits"])
    kwargs.setdefault("dynamic_axes", {"input_ids": {1: "sequence"}, "logits": {1: "sequence"}})
    check_exportable(model)
    return export_qonnx(CausalLMLogits(model), ids, export_path, **kwargs)
