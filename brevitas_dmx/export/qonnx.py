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
from brevitas.export.onnx.manager import ONNXDynamoExportMixin
from brevitas.export.onnx.qonnx.manager import QONNXManager
from brevitas.proxy.groupwise_float_parameter_quant import \
    GroupwiseWeightFloatQuantProxyFromInjector
from brevitas.proxy.groupwise_float_runtime_quant import GroupwiseActFloatQuantProxyFromInjector
from brevitas.proxy.quant_proxy import QuantProxyProtocol
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.export.function import DOMAIN
from brevitas_dmx.export.function import DOMAIN_VERSION
from brevitas_dmx.export.function import MXFloatQuantFn
from brevitas_dmx.export.function import MXFloatQuantOp
from brevitas_dmx.formats import format_from_bits
from brevitas_dmx.functional import mx_exponent_bias
from brevitas_dmx.functional import mx_max_exponent
from brevitas_dmx.functional import mx_max_normal
from brevitas_dmx.quant.fixed import injector_scale_rule


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
        "scale_rule": injector_scale_rule(injector),
    }


class _MXProxyHandler(ONNXBaseHandler):
    """Emits one ``MXFloatQuant`` node and returns what the proxy's QuantTensor needs (the value
    in Brevitas's group view; scale and the rest as constants, only metadata here)."""

    def prepare_for_export(self, module):
        self.attributes = mx_node_attributes(module) if module.is_quant_enabled else None

    def symbolic_execution(self, x: Tensor):
        a = self.attributes
        axis, block = a["axis"], a["block_size"]
        out = self.export_op(MXFloatQuantOp, x, *a.values())
        if torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing():
            # Dynamo path: Brevitas turns QuantTensor creation off and uses the value as is.
            return (out,)
        # TorchScript path: the proxy wraps the value in a GroupwiseFloatQuantTensor, which
        # expects Brevitas's group view and a scale per group (metadata only here: the real
        # per-block scales are computed inside the node).
        pad = (-x.shape[axis]) % block
        if pad:
            # A last partial block: Brevitas pads it with zeros (which change no block maximum)
            # and its QuantTensor cuts the padding off again; the node pads the same way.
            widths = [0, 0] * (x.dim() - 1 - axis % x.dim()) + [0, pad]
            out = torch.nn.functional.pad(out, widths)
        grouped = out.unflatten(axis, (-1, block))
        scale_shape = list(grouped.shape)
        scale_shape[axis] = 1
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


def constants_to_initializers(model):
    """What QONNXManager's two onnxoptimizer passes do (``extract_constant_to_initializer``,
    ``eliminate_unused_initializer``), in a linear pass: onnxoptimizer takes minutes on a 135M
    parameter graph, longer than the export itself."""
    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(
                node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    used.update(output.name for output in graph.output)
    unused = [i for i, init in enumerate(graph.initializer) if init.name not in used]
    for i in reversed(unused):
        del graph.initializer[i]
    graph_inputs = [value for value in graph.input if value.name in used]
    if len(graph_inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(graph_inputs)
    return model


def name_mx_nodes(model):
    """Names the dynamo exporter's ``MXFloatQuant`` nodes by module path, as the TorchScript
    exporter does (``/0/weight_quant/export_handler/MXFloatQuant``), and gives back weights their
    parameter name (torch.export folds them into constants called ``slice_N``), so a reader can
    tie every format to its layer."""
    import ast
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    renames = {}
    for node in graph.node:
        if node.op_type != "MXFloatQuant":
            continue
        props = {prop.key: prop.value for prop in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in props:
            continue
        scopes = ast.literal_eval(props["pkg.torch.onnx.name_scopes"])[:-1]
        levels = [b[len(a) + 1:] if a else b for a, b in zip(scopes, scopes[1:])]
        node.name = "/" + "/".join(levels + ["MXFloatQuant"])
        proxies = [scope for scope in scopes if scope.endswith("weight_quant")]
        source = node.input[0]
        if proxies and source in initializers:
            name = proxies[-1][:-len("_quant")]  # "<layer>.weight"
            if name not in initializers and name not in renames.values():
                renames[source] = name
    for old, new in renames.items():
        initializers[old].name = new
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        for value in graph.input:
            if value.name == old:
                value.name = new
    return model


class MXQONNXManager(QONNXManager):
    """Brevitas's QONNX manager plus the MX (group-wise float) handlers."""
    handlers = [MXWeightFloatQuantProxyHandler, MXActFloatQuantProxyHandler] + QONNXManager.handlers
    custom_fns = QONNXManager.custom_fns + [MXFloatQuantFn]
    run_onnx_passes = False
    model_transforms = [constants_to_initializers]

    @classmethod
    def export_onnx(cls, *args, **onnx_export_kwargs):
        # Brevitas calls this with its six positional arguments; only the kwargs change here.
        opsets = onnx_export_kwargs.setdefault("custom_opsets", {})
        opsets[DOMAIN] = DOMAIN_VERSION
        return super().export_onnx(*args, **onnx_export_kwargs)


class MXQONNXDynamoManager(ONNXDynamoExportMixin, MXQONNXManager):
    """The same handlers under ``torch.onnx.export(..., dynamo=True)`` (torch.export)."""
    custom_fns = []
    model_transforms = [name_mx_nodes]

    @classmethod
    def export_onnx(cls, *args, **onnx_export_kwargs):
        cls._check_dynamo_export_kwargs(onnx_export_kwargs)
        return super().export_onnx(*args, **onnx_export_kwargs)


def check_exportable(model: nn.Module) -> None:
    """Refuses models with learnable formats left, and quantizers no handler exports."""
    from brevitas_dmx.model import dmx_layers
    learnable = [name for name, _ in dmx_layers(model)]
    if learnable:
        raise ValueError(
            f"{len(learnable)} layers still have learnable formats (e.g. {learnable[0]}): call "
            f"brevitas_dmx.finalize(model) before exporting")
    unsupported = [
        f"{name} ({type(module).__name__})" for name, module in model.named_modules()
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
    """Exports a finalized mixed MX model to QONNX.

    Every MX quantizer becomes an ``MXFloatQuant`` node (domain
    ``brevitas_dmx.export.qonnx_ops``, which qonnx executes) whose attributes carry its layer's
    element format; the rest goes through Brevitas's QONNX manager. ``dynamo=False`` (default)
    uses the TorchScript exporter; ``dynamo=True`` uses torch.export with the same nodes."""
    check_exportable(model)
    # torch.export's ONNX translator starts at opset 18; asking for less makes it run a version
    # converter that fails on decoder graphs. onnxruntime 1.32 runs both.
    onnx_export_kwargs.setdefault("opset_version", 18 if dynamo else 17)
    was_training = model.training
    model.eval()
    try:
        if dynamo:
            onnx_export_kwargs.setdefault("optimize", True)
            return MXQONNXDynamoManager.export(
                model, args=args, export_path=export_path, dynamo=True, **onnx_export_kwargs)
        return MXQONNXManager.export(
            model, args=args, export_path=export_path, dynamo=False, **onnx_export_kwargs)
    finally:
        model.train(was_training)


def execute_qonnx(model_or_path, inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tensor:
    """Runs an exported graph with qonnx's node-by-node executor (numpy ``MXFloatQuant`` nodes,
    onnxruntime for the standard ones) on concrete inputs; returns the first output as a torch
    tensor."""
    import warnings

    import onnx
    from onnx import shape_inference
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import _hide_finn_ops
    from qonnx.transformation.infer_shapes import _restore_finn_ops
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    proto = onnx.load(model_or_path) if isinstance(model_or_path, str) else model_or_path
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    feed = {}
    for value_info, x in zip(proto.graph.input, inputs):
        # Pin dynamic axes to this input's sizes: qonnx needs every tensor shape to be known.
        for dim, size in zip(value_info.type.tensor_type.shape.dim, x.shape):
            dim.dim_value = int(size)
        feed[value_info.name] = x.detach().cpu().numpy()
    del proto.graph.value_info[:]
    wrapper = ModelWrapper(proto)
    # qonnx's own cleanup_model folds constants one node per pass over the whole graph (minutes
    # for a decoder block); ONNX shape inference with data propagation resolves the Shape ->
    # Reshape chains directly.
    hidden = _hide_finn_ops(wrapper)
    wrapper = ModelWrapper(shape_inference.infer_shapes(wrapper.model, data_prop=True))
    _restore_finn_ops(wrapper, hidden)
    with warnings.catch_warnings():
        # Tensors whose shape inference could not resolve are declared rank 0; the executor
        # warns when it writes their real value.
        warnings.filterwarnings("ignore", message="Output shapes disagree")
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
    to QONNX, for a fixed sequence length (as Brevitas's LLM export does; ``dynamic_axes`` can be
    passed on, but qonnx's executor needs fixed shapes)."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, seqlen, dtype=torch.long, device=device)
    kwargs.setdefault("input_names", ["input_ids"])
    kwargs.setdefault("output_names", ["logits"])
    check_exportable(model)
    return export_qonnx(CausalLMLogits(model), ids, export_path, **kwargs)
