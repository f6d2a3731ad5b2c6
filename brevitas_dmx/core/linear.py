# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The math of the fused dMX Linear training step: one autograd function that keeps little for
backward (``fused_linear``), and the sharing of the weight work between micro-batches
(``WeightReuse``). The layer that uses them is ``brevitas_dmx.nn.DMXQuantLinear``.

In ``qnn.QuantLinear`` the fake-quantized input and weight are new tensors that the matrix
product keeps for backward, besides what the quantizers keep: with frozen weights that is one
extra copy of every weight (and of every layer input) per step. ``DMXQuantLinear`` runs the two
quantizers and the product as one autograd function while training: it keeps the layer input,
the weight (the parameter itself) and the block scales, and recomputes the quantized values in
backward, where the format gradient recomputes the element rounding anyway. The weight's
rounding is done once per pass (``values_backward`` gives the quantized weight and its sums
together); only the input's is done twice in backward. Outputs equal ``qnn.QuantLinear``'s
exactly; gradients equal them up to the order of float sums in the matrix products.

Each pass is one call into the element kernels (``linear_forward_kernel``,
``linear_backward_kernel``: both quantizers and the products), where it can be: compiled, a call
costs ~0.2 ms of dispatch and guard checks on a slow host, which at 256 tokens was more than a
small layer's element work. Shared weights (below), formats that are not scalars, two scale
rules and an input format without a gradient take the same steps in parts.

The weight's format gradient needs d loss / d (quantized weight), a third matrix product that the
float step (frozen weights) does not have: 1.5x the float step's products at the least. It is
computed over every token: estimating it from a sample of the tokens made the step faster but
the offsets' gradient noisier than a smaller batch would (BENCHMARKS.md, 'How long does a search
take?').

Inside ``brevitas_dmx.batched_formats`` (the trainer's default) the layer takes its two
quantizers' format constants and width Jacobians from the model-wide ``FormatBatch``; otherwise it
computes them itself, for both quantizers together where their widths are scalars. Either way its
backward turns the six element sums into the four width gradients with one product.

Under gradient accumulation (``WeightReuse``, which ``DMXTrainer`` uses when it accumulates) the
micro-batches of one optimizer step share the weight work: the weights are frozen and the format
changes only at the optimizer step, so the first micro-batch's quantized weight serves them all,
and since the weight's format gradient is linear in d loss / d (quantized weight), that product
is summed over the micro-batches and the weight's element sums run once, in the last one's
backward. The cost is two weight-sized tensors per layer held within the step.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor
import torch.nn.functional as F

from brevitas_dmx.functional import backward_kernel
from brevitas_dmx.functional import EAGER
from brevitas_dmx.functional import format_constants
from brevitas_dmx.functional import forward_kernel
from brevitas_dmx.functional import Kernels
from brevitas_dmx.functional import linear_backward_kernel
from brevitas_dmx.functional import linear_forward_kernel
from brevitas_dmx.functional import math_dtype
from brevitas_dmx.functional import sums_kernel
from brevitas_dmx.functional import values_backward_kernel
from brevitas_dmx.functional import width_grads
from brevitas_dmx.functional import width_jacobian
from brevitas_dmx.functional import width_shape


@dataclass(frozen=True)
class LinearSpec:
    """What stays fixed within one call of the fused step: the block size (features per scale),
    the scale rules (``SCALE_RULES``) of the weight and of the input, and the element kernels
    that run it, forward and backward (``EAGER`` or ``compiled_kernels()``)."""

    group: int
    rule_w: str
    rule_x: str
    kernels: Kernels = EAGER


# (input constants, weight constants, width Jacobians of shape (2, 2, 3) or None): a fused
# layer's two formats as the element kernels take them (``FormatBatch.layer_formats``)
LayerFormats = Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...], Optional[Tensor]]


def _pairable(e_x, m_x, e_w, m_w) -> bool:
    """Whether the input's and the weight's formats are scalars, so their arithmetic can run
    once on 2-vectors."""
    return e_x.dim() == m_x.dim() == e_w.dim() == m_w.dim() == 0


def _pair_formats(x, weight, e_x, m_x, e_w, m_w, rule_x, rule_w):
    """(input constants, weight constants, width Jacobians of shape (2, 2, 3) or None): what a
    ``FormatBatch`` gives a layer (``layer_formats``), computed for this layer alone. Computed
    once per step and reused by backward, and for both quantizers at once where they are scalars
    of one dtype: on a GPU every scalar operation is a kernel launch, and launches, not element
    work, bound a step. Elementwise, so the values are those of two separate calls."""
    pairable = _pairable(e_x, m_x, e_w, m_w)
    dtype_x, dtype_w = math_dtype(x.dtype), math_dtype(weight.dtype)
    if dtype_x == dtype_w and pairable:
        both = format_constants(
            torch.stack((e_x, e_w)).to(dtype_x), torch.stack((m_x, m_w)).to(dtype_x))
        const_x, const_w = tuple(c[0] for c in both), tuple(c[1] for c in both)
    else:
        const_x = format_constants(e_x.to(dtype_x), m_x.to(dtype_x))
        const_w = format_constants(e_w.to(dtype_w), m_w.to(dtype_w))
    jacobian = None
    if pairable and rule_x == rule_w:
        e = torch.stack((e_x, e_w)).detach().float()
        m = torch.stack((m_x, m_w)).detach().float()
        jacobian = width_jacobian(e, m, rule_x)
    return const_x, const_w, jacobian


class _SharedWeight:
    """One layer's weight work within one optimizer step: what identifies its format and weight
    (``key``), the quantized weight blocks and their scales, and the sum over the micro-batches so
    far of d loss / d (quantized weight), in its dtype (as autograd accumulates a ``.grad``)."""

    __slots__ = ("key", "values", "scale", "grad", "last")

    def __init__(self, key):
        self.key = key
        self.values = self.scale = self.grad = None
        self.last = False  # whether the micro-batch running now ends the step


def _weight_key(quant, weight: Tensor):
    """What the quantized weight depends on that can change between micro-batches, read on the
    host: in-place updates of the format's tensors (the optimizer step, a temperature ``fill_``,
    ``pin``, loading a checkpoint) bump their versions. The weight itself is frozen (the fused
    path requires it); only its layout is checked, since FSDP gathers it anew (a new version)
    for every forward pass."""
    offset = quant.offset
    tensors = (*offset.parameters(), *offset.buffers(), quant.pinned_widths)
    settings = (id(offset), offset.ladder.name, offset.rounding, offset.sharpness, quant.scale_rule)
    return tuple((id(t), t._version)
                 for t in tensors) + settings + (tuple(weight.shape), weight.dtype, weight.device)


class WeightReuse:
    """Lets the micro-batches of one optimizer step share each fused layer's weight work
    (module docstring). Its owner sets ``last`` before each micro-batch's forward pass: True
    for the micro-batch whose backward ends the optimizer step (the Trainer's
    ``sync_gradients``). A step of one micro-batch shares nothing and holds nothing.

    Only the owner's loop may change the formats, and only after a last micro-batch: a format
    that changes while a layer's weight gradient is being accumulated is an error (changes
    through ``.data``, which keep a tensor's version, are not seen). Every layer that runs in a
    step must run in its last micro-batch, whose backward turns the accumulated weight gradient
    into the format gradient; ``end_step`` checks this. A layer may run several times in one
    micro-batch. In bfloat16 the accumulated gradient is summed in bfloat16, as autograd sums a
    ``.grad``."""

    def __init__(self, layers=()):
        self.last = True
        self.layers = list(layers)  # the fused layers it was handed (for ``weight_bytes``)
        self._shared = {}

    def begin(self, layer, quant) -> Optional[_SharedWeight]:
        """The state ``layer`` shares with the other micro-batches of this step, or None."""
        key = _weight_key(quant, layer.weight)
        shared = self._shared.get(layer)
        if shared is not None and shared.key != key:
            if shared.grad is not None:
                raise RuntimeError(
                    "A dMX layer's format changed between the micro-batches of one "
                    "optimizer step while its weight gradient was being accumulated: change "
                    "offsets, temperatures and pins only after a micro-batch with last=True.")
            del self._shared[layer]  # the step it belonged to is over
            shared = None
        if shared is None:
            if self.last:
                return None  # a step of one micro-batch
            shared = self._shared[layer] = _SharedWeight(key)
        shared.last = self.last
        return shared

    def clear(self) -> None:
        self._shared.clear()

    @property
    def weight_bytes(self) -> int:
        """Bytes of its layers' weights; sharing holds about twice this through a step."""
        return sum(m.weight.numel() * m.weight.element_size() for m in self.layers)

    def _pending_layers(self) -> set:
        """The layers holding an accumulated weight gradient not yet turned into their format
        gradient."""
        return {layer for layer, s in self._shared.items() if s.grad is not None}

    @property
    def pending(self) -> bool:
        return bool(self._pending_layers())

    def end_step(self, model: torch.nn.Module) -> None:
        """After the backward of a step's last micro-batch: raises if a layer of ``model`` ran
        in an earlier micro-batch but not in the last (its weight's format gradient would be
        lost), then forgets the step."""
        layers = self._pending_layers()
        self.clear()
        # the walk for names only when some layer is pending, not at every optimizer step
        pending = [name for name, m in model.named_modules() if m in layers] if layers else []
        if pending:
            raise RuntimeError(
                f"dMX layers {pending} ran in a micro-batch of this step but not in its last: "
                f"their weights' format gradient needs the last backward. Turn the sharing off "
                f"(--dmx-recompute-weights, DMXTrainer(reuse_quantized_weights=False)).")


def _kernel_operands(x: Tensor, weight: Tensor, group: int):
    """``x`` (as rows) and ``weight`` in blocks of ``group`` features, as the compiled layer
    kernels take them: already in blocks, requiring no grad, and detached from the tensors they
    view (``_detached``). Unflattened inside the kernel, the blocks compiled to loops that index
    through divisions and ran slower."""
    rows = x.reshape(-1, x.shape[-1] // group, group)
    return _detached(rows, weight.unflatten(-1, (-1, group)))


def _detached(*tensors):
    """``tensors`` detached, or None where None, for a compiled kernel. torch.compile keeps a
    parameter's shape static and guards on ``requires_grad``: passed as they are, a weight or a
    bias would compile a kernel for every layer shape, and inputs with and without grad a kernel
    each (past its cache limit Dynamo runs eagerly). A view would make every call check its base
    and may tie its base's sizes to other operands' (the format constants are views of a
    model-wide batch); a detached tensor has no base."""
    return tuple(None if t is None else t.detach() for t in tensors)


class _DMXLinear(torch.autograd.Function):
    """The fused training step (``fused_linear``). Its first seven inputs are the tensors that
    autograd tracks; the last three are not tensors and get no gradient: ``spec``, ``formats``
    (``LayerFormats`` from a ``FormatBatch``, or None to compute them here) and ``shared`` (a
    ``_SharedWeight`` under gradient accumulation, else None): what holds for one call, for one
    forward pass and for one optimizer step."""

    @staticmethod
    def forward(ctx, x, weight, bias, e_w, m_w, e_x, m_x, spec, formats, shared):
        group, rule_w, rule_x, kernels = spec.group, spec.rule_w, spec.rule_x, spec.kernels
        if formats is None:
            formats = _pair_formats(x, weight, e_x, m_x, e_w, m_w, rule_x, rule_w)
        const_x, const_w, jacobian = formats
        # detached once, here: backward gets them from the saved tensors as they are
        const_x, const_w = _detached(*const_x), _detached(*const_w)
        jacobian = () if jacobian is None else (jacobian,)
        if shared is None and e_x.dim() == m_x.dim() == 0:
            # one kernel call for both quantizers and the product, over the rows of x
            out, scale_x, scale_w = linear_forward_kernel(
                *_kernel_operands(x, weight, group), *_detached(bias), const_x, const_w, rule_x,
                rule_w, kernels=kernels)
            out = out.view(*x.shape[:-1], out.shape[-1])
            scale_x = scale_x.view(*x.shape[:-1], *scale_x.shape[-2:])
        else:
            xq, scale_x = forward_kernel(
                x.unflatten(-1, (-1, group)), const_x, rule_x, kernels=kernels)
            if shared is not None and shared.values is not None:
                wq, scale_w = shared.values, shared.scale
            else:
                wq, scale_w = forward_kernel(
                    weight.unflatten(-1, (-1, group)), const_w, rule_w, kernels=kernels)
                if shared is not None:
                    shared.values, shared.scale = wq, scale_w
            out = F.linear(xq.flatten(-2), wq.flatten(-2), bias)
        ctx.save_for_backward(
            x, weight, e_w, m_w, e_x, m_x, scale_x, scale_w, *const_x, *const_w, *jacobian)
        ctx.spec = spec
        # the quantized weight and whether this pass ends the step, as of this forward pass (the
        # layer may run again, or the next micro-batch start, before this backward)
        ctx.shared = None if shared is None else (shared, wq, shared.last)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, e_w, m_w, e_x, m_x, scale_x, scale_w, *constants = ctx.saved_tensors
        const_x, const_w, jacobian = tuple(constants[:4]), tuple(constants[4:8]), constants[8:]
        group, rule_w, rule_x = ctx.spec.group, ctx.spec.rule_w, ctx.spec.rule_x
        kernels = ctx.spec.kernels
        # need_b is False where the bias is None: autograd sees no tensor there
        need_x, _, need_b = ctx.needs_input_grad[:3]
        need_fw = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        need_fx = ctx.needs_input_grad[5] or ctx.needs_input_grad[6]
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        shared, wq, last = ctx.shared or (None, None, None)
        ctx.shared = None
        grad_x = grad_e_x = grad_m_x = None
        if shared is None and jacobian and need_fx:
            # the common case: one kernel call (the Jacobians exist where both formats are
            # scalars with one scale rule); else the same steps in parts
            grad_x, sums_x, sums_w = linear_backward_kernel(
                *_kernel_operands(x, weight, group), const_x, const_w,
                *_detached(scale_x.view(-1, *scale_x.shape[-2:]), scale_w),
                *_detached(grad_2d.contiguous()),  # contiguous: a stride-0 gradient recompiles
                kernels=kernels)
            grad_x = grad_x.view(x.shape) if need_x else None
        else:
            # the format shapes, also for width_grads below (reached only from this branch)
            shape_x, shape_w = width_shape(e_x, m_x), width_shape(e_w, m_w)
            xb = x.unflatten(-1, (-1, group))
            wb = weight.unflatten(-1, (-1, group))
            # d loss / d (quantized weight) = grad^T @ quantized input
            xq, _ = forward_kernel(xb.reshape(-1, *xb.shape[-2:]), const_x, rule_x, kernels=kernels)
            grad_wq = _weight_grad(grad_2d.t(), xq.flatten(-2), shared)
            del xq
            if shared is None:
                wq, *sums_w = values_backward_kernel(
                    wb, const_w, scale_w, grad_wq.unflatten(-1, (-1, group)), shape_w,
                    kernels=kernels)
            else:  # the step's quantized weight; the sums over the gradient summed so far, once
                sums_w = None
                if last:  # linear in the gradient: a layer run twice sums in two parts, exactly
                    sums_w = sums_kernel(
                        wb,
                        const_w,
                        scale_w,
                        grad_wq.unflatten(-1, (-1, group)),
                        shape_w,
                        kernels=kernels)
                    shared.values = shared.scale = shared.grad = None
            del grad_wq
            if need_x or need_fx:
                grad_xq = grad_out.matmul(wq.flatten(-2).to(grad_out.dtype))
                grad_xb, *sums_x = backward_kernel(
                    xb, const_x, scale_x, grad_xq.unflatten(-1, (-1, group)), shape_x,
                    kernels=kernels)
                grad_x = grad_xb.flatten(-2) if need_x else None
        grad_e_w = grad_m_w = None
        need_fw = need_fw and sums_w is not None  # else the weight's sums wait for the last
        if jacobian and need_fx and need_fw:
            # One product for both quantizers: (2, 2, 3) Jacobians times their (2, 1, 3) sums.
            sums = torch.stack((*sums_x, *sums_w)).view(2, 1, 3)
            (grad_e_x, grad_m_x), (grad_e_w, grad_m_w) = (jacobian[0] * sums).sum(-1)
        elif jacobian and need_fx:
            grad_e_x, grad_m_x = (jacobian[0][0] * torch.stack(sums_x)).sum(-1)
        else:
            if need_fx:
                grad_e_x, grad_m_x = width_grads(e_x, m_x, *sums_x, rule_x, shape_x)
            if need_fw:
                grad_e_w, grad_m_w = width_grads(e_w, m_w, *sums_w, rule_w, shape_w)
        grad_bias = grad_2d.sum(0) if need_b else None
        return grad_x, None, grad_bias, grad_e_w, grad_m_w, grad_e_x, grad_m_x, None, None, None


def _weight_grad(grad_t: Tensor, xq: Tensor, shared: Optional[_SharedWeight]):
    """d loss / d (quantized weight) = ``grad_t @ xq``; with ``shared``, summed over the step's
    micro-batches so far (within the product: no second weight-sized tensor)."""
    xq = xq.to(grad_t.dtype)
    if shared is not None and shared.grad is not None:
        return shared.grad.addmm_(grad_t, xq)
    grad_wq = grad_t.mm(xq)
    if shared is not None:
        shared.grad = grad_wq
    return grad_wq


def fused_linear(
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        e_w: Tensor,
        m_w: Tensor,
        e_x: Tensor,
        m_x: Tensor,
        spec: LinearSpec,
        formats: Optional[LayerFormats] = None,
        shared: Optional[_SharedWeight] = None) -> Tensor:
    """``F.linear`` of the input and the weight, each MX-quantized in blocks of ``spec.group``
    features with its own format (``e_x``, ``m_x``; ``e_w``, ``m_w``) and scale rule, keeping only
    the input, the weight and the block scales for backward (module docstring). ``formats``:
    both quantizers' constants and Jacobians from a ``FormatBatch`` (``layer_formats``), or None
    to compute them here; ``shared``: the layer's state from ``WeightReuse.begin``, or None. The
    weight gets no gradient (the fused path is for frozen weights)."""
    return _DMXLinear.apply(x, weight, bias, e_w, m_w, e_x, m_x, spec, formats, shared)
