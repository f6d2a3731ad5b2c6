# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Model-level helpers: find the learnable formats, read and pin them, average bits, finalize."""

import contextlib
from dataclasses import dataclass
import math
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union
import weakref

from brevitas.proxy.quant_proxy import QuantProxyFromInjector
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.config import DEFAULT_INCLUDE_SCALE_BITS
from brevitas_dmx.config import DEFAULT_WEIGHTING
from brevitas_dmx.config import ROUNDINGS
from brevitas_dmx.config import TIE_PRESETS
from brevitas_dmx.config import WEIGHTINGS
from brevitas_dmx.core.batch import FormatBatch
from brevitas_dmx.core.batch import quantizer_widths
from brevitas_dmx.core.linear import WeightReuse
from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.core.offset import SETTLED_TOLERANCE
from brevitas_dmx.core.quant import DMXFloatQuant
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ElementFormat
from brevitas_dmx.formats import format_from_bits
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.functional import kernels_for
from brevitas_dmx.nn import DMXQuantLinear
from brevitas_dmx.proxy import dmx_quant_of
from brevitas_dmx.quant.fixed import fixed_mx_quantizer

__all__ = [
    "WEIGHTINGS",
    "dmx_layers",
    "dmx_offsets",
    "offsets_settled",
    "set_temperature",
    "set_rounding",
    "average_bits",
    "bits_report",
    "format_map",
    "format_counts",
    "layer_format",
    "apply_format_map",
    "clear_format_pins",
    "finalize",
    "mx_quantizers",
    "tie_offsets",
    "tie_groups",
    "train_only_offsets",
    "batched_formats",
    "dmx_quantizers",
    "reusing_quantized_weights",
    "use_compiled_kernels",
]

# Proxy attribute -> role in a format map. A standalone activation quantizer (QuantIdentity)
# quantizes the input of whatever follows it, so it reports as "input".
_PROXY_ROLES = (
    ("weight_quant", "weight"),
    ("input_quant", "input"),
    ("act_quant", "input"),
    ("output_quant", "output"),
)


@dataclass
class _Quantizer:
    """One MX quantizer of a layer: learnable (``dmx``) or a fixed Brevitas MX proxy."""
    layer: nn.Module
    attr: str
    role: str
    proxy: nn.Module
    dmx: Optional[DMXFloatQuant]

    @property
    def is_weight(self) -> bool:
        return self.role == "weight"

    def fixed_format(self) -> Tuple[ElementFormat, int]:
        injector = self.proxy.quant_injector
        fmt = format_from_bits(injector.exponent_bit_width, injector.mantissa_bit_width)
        return fmt, injector.group_size

    def discrete_format(self) -> ElementFormat:
        return self.dmx.discrete_format() if self.dmx is not None else self.fixed_format()[0]

    def scale_bits(self) -> float:
        group_size = self.dmx.group_size if self.dmx is not None else self.fixed_format()[1]
        return E8M0_SCALE_BITS / group_size

    def bits(self, discrete: bool) -> Union[Tensor, float]:
        if self.dmx is not None and not discrete:
            return self.dmx.bits()
        return float(self.discrete_format().bits)

    def size(self) -> int:
        """Elements per sample: the weight's, or the last input's without the batch dim."""
        if self.is_weight:
            return self.layer.weight.numel()
        shape = self.dmx.last_input_shape if self.dmx is not None else None
        if shape is not None and len(shape) > 1:
            return math.prod(shape[1:])
        # Before any forward pass: one token's features (0: unknown, does not count).
        features = getattr(self.layer, "in_features", None)
        if features is None and getattr(self.layer, "weight", None) is not None:
            features = self.layer.weight.shape[-1]
        return features or 0


def _is_fixed_mx_proxy(proxy: nn.Module) -> bool:
    injector = getattr(proxy, "quant_injector", None)
    if injector is None or not getattr(proxy, "is_quant_enabled", False):
        return False
    try:
        return bool(proxy.is_groupwise) and "exponent_bit_width" in injector and \
            "mantissa_bit_width" in injector
    except Exception:  # an injector that cannot resolve these is not an MX float quantizer
        return False


def _layer_quantizers(layer: nn.Module, include_fixed: bool = True) -> List[_Quantizer]:
    out = []
    for attr, role in _PROXY_ROLES:
        proxy = layer._modules.get(attr)
        if proxy is None:
            continue
        quant = dmx_quant_of(proxy)
        if quant is not None or (include_fixed and _is_fixed_mx_proxy(proxy)):
            out.append(_Quantizer(layer, attr, role, proxy, quant))
    return out


def _modules_outside_quantizers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``model.named_modules()``, in its order, less Brevitas quantizer proxies and what they
    hold: no layers, but most of a quantized model's modules (SmolLM2: ~4000 modules, a walk of
    ~15 ms on a slow host, and the bit penalty walks once a step)."""
    seen = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if module in seen or _is_proxy_type(type(module)):
            continue
        seen.add(module)
        yield name, module
        children = [
            (f"{name}.{key}" if name else key, child)
            for key, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))


# weak keys: torch.fx and parametrizations make a class per module instance
_PROXY_TYPES: "weakref.WeakKeyDictionary[type, bool]" = weakref.WeakKeyDictionary()


def _is_proxy_type(cls: type) -> bool:
    """Whether ``cls`` is a Brevitas quantizer proxy; memoized, since ``isinstance`` against the
    proxy base class (a ``Protocol``) takes microseconds."""
    known = _PROXY_TYPES.get(cls)
    if known is None:
        known = _PROXY_TYPES[cls] = QuantProxyFromInjector in cls.__mro__
    return known


def _mx_layers(model: nn.Module, include_fixed: bool) -> Iterator[Tuple[str, List[_Quantizer]]]:
    for name, module in _modules_outside_quantizers(model):
        quants = _layer_quantizers(module, include_fixed)
        if quants:
            yield name, quants


def mx_quantizers(model: nn.Module) -> List[Tuple[str, "_Quantizer"]]:
    """(layer name, quantizer record) of every MX quantizer, learnable or fixed."""
    return [(name, q) for name, quants in _mx_layers(model, include_fixed=True) for q in quants]


def dmx_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The (name, module) pairs whose quantizers carry a learnable MX format."""
    return [(name, quants[0].layer) for name, quants in _mx_layers(model, include_fixed=False)]


def dmx_offsets(model: nn.Module) -> List[DMXOffset]:
    """The distinct learnable offsets of a model (shared ones once), in module order."""
    seen, out = set(), []
    for module in model.modules():
        if isinstance(module, DMXOffset) and id(module) not in seen:
            seen.add(id(module))
            out.append(module)
    return out


def dmx_quantizers(model: nn.Module) -> List[DMXFloatQuant]:
    """The learnable quantizers of ``model`` (each once), a layer's input quantizer just before
    its weight quantizer (so a fused layer's Jacobians in a ``FormatBatch`` are one slice)."""
    out, seen = [], set()
    for _, quants in _mx_layers(model, include_fixed=False):
        for q in sorted(quants, key=lambda q: q.role != "input"):
            if id(q.dmx) not in seen:
                seen.add(id(q.dmx))
                out.append(q.dmx)
    return out


@contextlib.contextmanager
def batched_formats(model: nn.Module):
    """Within the block, every training forward pass of ``model`` (train mode, gradients on)
    first computes all its learnable formats at once (``FormatBatch``); after the pass, and
    outside training, every quantizer computes its own. Yields the batch.

    Each quantizer holds the batch (``format_batch``) from the start of the block to its end, and
    the batch knows, pass by pass, whether it is valid and each quantizer's slot in it: the hooks
    only compute and clear the batch, they set nothing on the quantizers."""
    batch = FormatBatch(dmx_quantizers(model))

    def before(module, args):
        if module.training and torch.is_grad_enabled():
            batch.compute()
        else:
            batch.clear()

    def after(module, args, output):
        batch.clear()

    previous = batch.bind()
    handles = (
        model.register_forward_pre_hook(before),
        model.register_forward_hook(after, always_call=True))
    try:
        yield batch
    finally:
        for handle in handles:
            handle.remove()
        batch.unbind(previous)


@contextlib.contextmanager
def reusing_quantized_weights(model: nn.Module):
    """Within the block, the micro-batches of one optimizer step share every fused dMX layer's
    weight work (``brevitas_dmx.core.linear.WeightReuse``, which it yields): the weight is
    quantized once per step and its element sums run in the step's last backward only. Set the
    yielded object's ``last`` to True before the forward pass of each step's last micro-batch
    and False before the others. ``DMXTrainer`` does this when it accumulates gradients (not
    under FSDP: every rank would hold whole quantized weights and their gradients).

    Costs two weight-sized tensors per layer from a step's first forward pass to its last
    backward: the quantized weight and the summed d loss / d (quantized weight)."""
    reuse = WeightReuse([m for m in model.modules() if isinstance(m, DMXQuantLinear)])
    previous = [(layer, layer.weight_reuse) for layer in reuse.layers]
    for layer in reuse.layers:
        layer.weight_reuse = reuse
    try:
        yield reuse
    finally:
        for layer, before in previous:
            layer.weight_reuse = before
        reuse.clear()


def use_compiled_kernels(model: nn.Module, on: bool) -> None:
    """Makes every dMX quantizer of ``model`` run the ``torch.compile``'d element kernels (``on``)
    or the eager ones (``brevitas_dmx.functional.compiled_kernels`` and ``EAGER``): its own
    forward and backward, and the fused training step of its ``DMXQuantLinear`` layers. The
    compiled set is built once per process and shared by every model; the first call of each
    shape family compiles, so it pays off on GPUs and over long runs. Results match the eager
    kernels' (bit for bit at hardware formats). The choice stays with the model (Brevitas's
    rebuilds of a quantizer keep it); other models are not touched."""
    kernels = kernels_for(on)
    for module in model.modules():
        if isinstance(module, DMXFloatQuant):
            module.kernels = kernels


def train_only_offsets(model: nn.Module) -> List[DMXOffset]:
    """Freezes every parameter of ``model`` but the dMX offsets, which train; returns them."""
    for param in model.parameters():
        param.requires_grad_(False)
    offsets = dmx_offsets(model)
    for offset in offsets:
        offset.raw_offset.requires_grad_(True)
    return offsets


def offsets_settled(model: nn.Module, tolerance: float = SETTLED_TOLERANCE) -> bool:
    """Whether every learnable offset of ``model`` has settled on its format
    (``DMXOffset.settled``): the annealing has left the loss no gradient to move any of them.
    One host read for the whole model, not one per offset."""
    offsets = dmx_offsets(model)
    if not offsets:
        return False
    device = offsets[0].raw_offset.device
    gaps = torch.stack([o.relaxation_gap().to(device) for o in offsets])
    return bool(gaps.max() < tolerance)


def set_temperature(model: nn.Module, temperature: float) -> None:
    """Sets the annealing temperature T of every learnable offset."""
    for offset in dmx_offsets(model):
        offset.temperature.fill_(float(temperature))


def set_rounding(model: nn.Module, rounding: str) -> None:
    """How training maps raw offsets to formats: "anneal" (the tempered F of the method) or
    "ste" (straight-through rounding, the ablation the paper reports diverging), or "blend" /
    "sample" (the tempered F, with quantizers that mix the two ladder formats around it)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"Unknown rounding {rounding!r}; choose one of {ROUNDINGS}.")
    for offset in dmx_offsets(model):
        offset.rounding = rounding


def rounding_for_ladder(ladder) -> str:
    """The rounding a run on ``ladder`` trains with by default: "sample" when its formats share
    one mantissa width (only the exponent grows, as from E2M3 to E4M3), else "anneal".

    Where only the exponent grows, the in-between formats can beat both ends of a segment (on
    SmolLM2-135M every layer on E3M3 gives 30.84, E2M3 31.73, E4M3 31.89), so the continuous
    path rewards formats no layer can end on; "sample" trains on the real formats only, and its
    offsets rank the layers by what the real switch gains (BENCHMARKS.md). Where the mantissa
    grows, "anneal", the method as published: from E2M1 to E2M3 the in-between formats lie
    between the ends."""
    mantissas = {f.mantissa_bits for f in get_ladder(ladder).formats}
    return "sample" if len(mantissas) == 1 else "anneal"


def _check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")


def average_bits(
        model: nn.Module,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS,
        discrete: bool = False) -> Tensor:
    """Average bits per element over the model's MX quantizers (section 4 of the method).

    - ``"simple"``: (mean over weight quantizers + mean over activation quantizers) / 2, the
      paper's average (the mean of whichever kind exists if only one does);
    - ``"size"``: every quantizer weighted by its elements (weights: numel; activations: numel
      of the last input without the batch dimension, one token before any forward pass);
    - ``"memory"``: weight quantizers only, weighted by numel: the storage per weight.

    Learnable quantizers contribute their current (differentiable) width unless ``discrete``;
    fixed Brevitas MX quantizers contribute their format. ``include_scale_bits`` adds the
    8 bits of the E8M0 scale per block (0.25 for blocks of 32).
    """
    _check_weighting(weighting)
    quants = [q for _, qs in _mx_layers(model, include_fixed=True) for q in qs]
    if weighting == "memory":
        quants = [q for q in quants if q.is_weight]
    if not quants:
        raise ValueError("The model has no MX quantizers to average (quantize it first).")
    if weighting == "simple":
        groups = [
            g for g in ([q for q in quants if q.is_weight], [q for q in quants if not q.is_weight])
            if g
        ]
        result = sum(
            _mean_bits(g, False, include_scale_bits, discrete) for g in groups) / len(groups)
    else:
        result = _mean_bits(quants, True, include_scale_bits, discrete)
    if torch.is_tensor(result):
        return result
    return torch.tensor(result, dtype=torch.float64)  # discrete: keep the exact value


def _mean_bits(quants: List[_Quantizer], weighted: bool, include_scale_bits: bool,
               discrete: bool) -> Union[Tensor, float]:
    """The (size-weighted) mean bits of ``quants``. Fixed formats (fixed quantizers, pinned
    ones, everything when ``discrete``) are summed as exact floats; the learnable widths are one
    vectorized computation (``quantizer_widths``): with a few hundred quantizers, a few scalar
    operations each per training step would be thousands of kernel launches."""
    sizes = [float(q.size()) if weighted else 1.0 for q in quants]
    if sum(sizes) == 0:
        raise ValueError("Activation sizes are unknown: run a forward pass first.")
    numerator, learned, learned_sizes = 0.0, [], []
    for q, size in zip(quants, sizes):
        scale_bits = q.scale_bits() if include_scale_bits else 0.0
        if q.dmx is not None and not discrete and not q.dmx.is_pinned:
            learned.append(q.dmx)
            learned_sizes.append(size)
            numerator += scale_bits * size
        else:
            numerator += (q.bits(True) + scale_bits) * size
    if not learned:
        return numerator / sum(sizes)
    e, m = quantizer_widths(learned)
    weights = torch.tensor(learned_sizes, dtype=e.dtype, device=e.device)
    return (torch.dot(1 + e + m, weights) + numerator) / sum(sizes)


def bits_report(model: nn.Module) -> Dict[str, float]:
    """Plain-float averages of the discrete (deployed) formats, without and with scale bits."""
    report = {}
    for weighting in WEIGHTINGS:
        try:
            for scales, suffix in ((False, ""), (True, "_with_scales")):
                report[weighting + suffix] = float(
                    average_bits(model, weighting, include_scale_bits=scales, discrete=True))
        except ValueError:  # e.g. "memory" on a model whose MX quantizers are all inputs
            continue
    return report


def format_map(model: nn.Module) -> Dict[str, Dict[str, Optional[Union[str, float]]]]:
    """``{layer: {"weight": "e2m1", "input": "e4m3" or None, "bits": 4.0}}`` of the discrete
    formats; ``bits`` is the weight's element width (the input's if there is no weight
    quantizer). Works on learnable and on finalized models."""
    out = {}
    for name, quants in _mx_layers(model, include_fixed=True):
        entry = {"weight": None, "input": None}
        for q in quants:
            entry[q.role] = q.discrete_format().name
        entry["bits"] = float(element_format(layer_format(entry)).bits)
        out[name] = entry
    return out


def layer_format(entry: Mapping) -> str:
    """A format-map entry's headline format: the weight's, else the input's (else output's)."""
    return entry.get("weight") or entry.get("input") or entry.get("output")


def format_counts(fmap: Mapping[str, Mapping]) -> Dict[str, int]:
    """Number of layers per headline format of a format map."""
    counts: Dict[str, int] = {}
    for entry in fmap.values():
        counts[layer_format(entry)] = counts.get(layer_format(entry), 0) + 1
    return dict(sorted(counts.items()))


def _parse_format_entry(layer: str, value, roles: List[str], errors: List[str]) -> Dict[str, str]:
    if isinstance(value, str):
        try:
            value = {role: element_format(value).name for role in roles}
        except ValueError as err:
            errors.append(f"{layer}: {err}")
            return {}
    elif not isinstance(value, Mapping):
        errors.append(f"{layer}: expected a format name or a dict, got {value!r}")
        return {}
    picked = {}
    for role, name in value.items():
        if role == "bits" or name is None:
            continue
        if role not in ("weight", "input", "output"):
            errors.append(f"{layer}: unknown key {role!r} (use 'weight', 'input')")
            continue
        if role not in roles:
            errors.append(f"{layer}: has no learnable {role} quantizer")
            continue
        try:
            picked[role] = element_format(name).name
        except ValueError as err:
            errors.append(f"{layer}: {err}")
    return picked


# The keys a format map's per-quantizer entry may have ("bits" is format_map's own output).
_FORMAT_MAP_ROLES = ["weight", "input", "output"]


def _require_mapping(mapping) -> None:
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"a format map maps layer names to formats ({{\"model.layers.0.mlp.up_proj\": "
            f"\"mxfp8\", ...}}), got a {type(mapping).__name__}")


def check_format_map(mapping) -> Dict[str, Dict[str, str]]:
    """Checks what can be checked of a format map without a model: that it is a mapping, and
    every entry's format names and keys. Raises one ``ValueError`` naming every problem; layer
    names are checked against a model by ``apply_format_map``. Returns each layer's formats by
    role, e.g. ``{"model.layers.0.mlp.up_proj": {"weight": "e4m3", "input": "e4m3"}}``."""
    _require_mapping(mapping)
    errors = []
    parsed = {
        name: _parse_format_entry(name, value, _FORMAT_MAP_ROLES, errors)
        for name, value in mapping.items()
    }
    if errors:
        raise ValueError("; ".join(errors))
    return parsed


def apply_format_map(model: nn.Module, mapping: Mapping[str, object]) -> None:
    """Pins layers to discrete MX formats.

    ``mapping`` maps layer names (as in ``dmx_layers``) to a format name for all of the layer's
    quantizers, or to a dict with "weight"/"input" keys (``format_map``'s output is accepted).
    Everything is checked before anything is pinned; problems raise one ``ValueError`` that
    names every unknown layer and format.
    """
    _require_mapping(mapping)
    layers = {name: quants for name, quants in _mx_layers(model, include_fixed=False)}
    unknown = [name for name in mapping if name not in layers]
    errors = []
    if unknown:
        examples = ", ".join(list(layers)[:3]) or "none: the model has no dMX layers"
        errors.append(f"unknown layer names {unknown} (dMX layers are e.g. {examples})")
    plan = []
    for name, value in mapping.items():
        if name in layers:
            quants = layers[name]
            picked = _parse_format_entry(name, value, [q.role for q in quants], errors)
            plan.extend((q, picked[q.role]) for q in quants if q.role in picked)
    if errors:
        raise ValueError("Cannot apply the format map: " + "; ".join(errors))
    for quant, name in plan:
        quant.dmx.pin(element_format(name))


def clear_format_pins(model: nn.Module) -> None:
    """Unpins every learnable quantizer and clears budget-projection assignments."""
    for _, quants in _mx_layers(model, include_fixed=False):
        for quant in quants:
            quant.dmx.unpin()
    for offset in dmx_offsets(model):
        offset.assign(None)


def _fixed_injector(quant: _Quantizer):
    role = "weight" if quant.is_weight else "act"
    injector = fixed_mx_quantizer(quant.discrete_format().name, role, quant.dmx.scale_rule)
    old = quant.proxy.quant_injector
    carried = {"group_size": quant.dmx.group_size}
    # Carry what the layer told its quantizer when it built it (e.g. act_impl=None for inputs).
    for key in ("act_impl", "passthrough_act", "device", "dtype"):
        if key in old:
            carried[key] = getattr(old, key)
    return injector.let(**carried)


def finalize(model: nn.Module) -> nn.Module:
    """Replaces every learnable quantizer by the fixed Brevitas MX quantizer of its discrete
    format, in place; the result is a plain Brevitas model with the same outputs as the
    learnable one in eval mode. Returns the model."""
    for _, quants in list(_mx_layers(model, include_fixed=False)):
        for quant in quants:
            injector = _fixed_injector(quant)
            proxy = injector.proxy_class(quant.layer, injector)
            device = next((t.device for t in quant.proxy.buffers()), None)
            if device is not None:
                proxy.to(device)
            proxy.train(quant.proxy.training)
            setattr(quant.layer, quant.attr, proxy)
    return model


def tie_groups(model: nn.Module, preset: str) -> List[List[str]]:
    """Groups of dMX layers that a deployment fuses (q/k/v of one attention; gate/up of one MLP)
    by the ``preset`` 'none', 'qkv' or 'qkv-gateup'."""
    if preset not in TIE_PRESETS:
        raise ValueError(f"Unknown tie preset {preset!r}; choose one of {list(TIE_PRESETS)}.")
    names = [name for name, _ in dmx_layers(model)]
    groups = []
    for suffixes in TIE_PRESETS[preset]:
        by_parent: Dict[str, List[str]] = {}
        for name in names:
            parent, _, leaf = name.rpartition(".")
            if leaf in suffixes:
                by_parent.setdefault(parent, []).append(name)
        groups.extend(g for g in by_parent.values() if len(g) > 1)
    return groups


def tie_offsets(model: nn.Module, groups) -> None:
    """Makes every quantizer of each group of layers use the first layer's offset, so a group
    trains and ends as one format. Layers of a group must be dMX layers on one ladder."""
    layers = {name: quants for name, quants in _mx_layers(model, include_fixed=False)}
    for group in groups:
        missing = [name for name in group if name not in layers]
        if missing:
            raise ValueError(f"Cannot tie {list(group)}: not dMX layers: {missing}")
        leader = layers[group[0]][0].dmx.offset
        for name in group:
            for quant in layers[name]:
                if quant.dmx.offset.ladder.name != leader.ladder.name:
                    raise ValueError(f"Cannot tie {list(group)}: their ladders differ")
                quant.dmx.offset = leader
