# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The layer-selection baselines dMX is compared with.

- ``kl_sensitivity``: each layer alone quantized to a format, KL(p_float || p_quant) of the
  next-token distributions on calibration data (the paper's baseline, one pass per layer).
- ``fisher_sensitivity``: one forward and backward pass of the float model; a layer's score for
  a format is sum over tokens of (dL/dy)^2 * (y_q - y)^2, the Fisher estimate of what the
  quantization error of its output costs (the usual gradient-based sensitivity of commercial
  tools).
- ``mlp_high_map``: the hand-made map (MLP layers in the high format, attention in the low one).

Both sensitivities work on the float model: a layer's MX quantization is simulated with the
functional core (``mx_fake_quantize``), which matches Brevitas's fixed MX quantizers bit for bit.
They return ``{layer name: [score per format]}``; ``unit_scores`` turns them into the per-unit
rows that ``solver.projection.project_scores`` solves for the budget.
"""

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ElementFormat
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.functional import mx_fake_quantize


def linear_layers(model: nn.Module, exclude: Sequence[str] = ("lm_head",)) -> Dict[str, nn.Linear]:
    """The float model's Linear layers a run quantizes, by name."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] not in exclude
    }
    if not layers:
        raise ValueError("The model has no Linear layers to quantize.")
    return layers


class _MXLinearForward:
    """A Linear layer's forward with MX fake-quantized weight and input (weight cached)."""

    def __init__(self, layer: nn.Linear, fmt: ElementFormat, weights_only: bool, scale_rule: str):
        self.layer, self.fmt = layer, fmt
        self.weights_only, self.scale_rule = weights_only, scale_rule
        self.weight = self.quantize(layer.weight.detach())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return mx_fake_quantize(
            x, self.fmt.exponent_bits, self.fmt.mantissa_bits, scale_rule=self.scale_rule)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.weights_only:
            x = self.quantize(x)
        return F.linear(x, self.weight, self.layer.bias)


@contextmanager
def quantized_layer(
        layer: nn.Linear,
        fmt: ElementFormat,
        weights_only: bool = False,
        scale_rule: str = DEFAULT_SCALE_RULE) -> Iterator[None]:
    """Runs ``layer`` in an MX format inside the block; the float forward is restored after."""
    layer.forward = _MXLinearForward(layer, fmt, weights_only, scale_rule)
    try:
        yield
    finally:
        del layer.forward


def _batches(samples: List[Dict], batch_size: int, device) -> Iterator[torch.Tensor]:
    for start in range(0, len(samples), batch_size):
        yield torch.stack([s["input_ids"] for s in samples[start:start + batch_size]]).to(device)


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


@torch.no_grad()
def kl_sensitivity(
        model: nn.Module,
        samples: List[Dict],
        formats: Sequence[str],
        layers: Optional[Dict[str, nn.Linear]] = None,
        weights_only: bool = False,
        scale_rule: str = DEFAULT_SCALE_RULE,
        batch_size: int = 4,
        skip_last: bool = True) -> Dict[str, List[float]]:
    """Mean per-token KL(p_float || p_quant) with each layer alone in each format.

    With ``skip_last`` the last (highest) format is not measured and scores 0, as in the
    reference procedure that only measures the low format (it halves the passes)."""
    layers = layers if layers is not None else linear_layers(model)
    fmts = [element_format(f) for f in formats]
    measured = fmts[:-1] if skip_last and len(fmts) > 1 else fmts
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = {name: [0.0] * len(fmts) for name in layers}
    tokens = 0
    progress = tqdm(
        total=len(layers) * len(measured) * -(-len(samples) // batch_size),
        desc="KL sensitivity",
        leave=False)
    for ids in _batches(samples, batch_size, device):
        reference = _log_probs(model, ids)
        tokens += ids.numel()
        for name, layer in layers.items():
            for index, fmt in enumerate(measured):
                with quantized_layer(layer, fmt, weights_only, scale_rule):
                    quantized = _log_probs(model, ids)
                kl = F.kl_div(quantized, reference, log_target=True, reduction="sum")
                totals[name][index] += float(kl)
                progress.update()
    progress.close()
    model.train(was_training)
    return {name: [value / tokens for value in row] for name, row in totals.items()}


def fisher_sensitivity(
        model: nn.Module,
        samples: List[Dict],
        formats: Sequence[str],
        layers: Optional[Dict[str, nn.Linear]] = None,
        weights_only: bool = False,
        scale_rule: str = DEFAULT_SCALE_RULE,
        batch_size: int = 2) -> Dict[str, List[float]]:
    """Sum over calibration tokens of (dL/dy)^2 * (y_q - y)^2 per layer and format, where L is
    the summed next-token loss of the float model and y a layer's output (one pass)."""
    layers = layers if layers is not None else linear_layers(model)
    fmts = [element_format(f) for f in formats]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = {name: [0.0] * len(fmts) for name in layers}
    quantized = {
        name: [_MXLinearForward(layer, fmt, weights_only, scale_rule) for fmt in fmts]
        for name, layer in layers.items()
    }

    def record(name):

        def hook(module, inputs, output):
            with torch.no_grad():
                errors = [(q(inputs[0]) - output).pow(2) for q in quantized[name]]

            def accumulate(grad):
                squared = grad.detach().pow(2)
                for index, error in enumerate(errors):
                    scores[name][index] += float((squared * error).sum())

            output.register_hook(accumulate)

        return hook

    # Gradients flow to the activations only: parameters stay frozen, so no weight gradients
    # are computed, and the embedding output is made to require grad instead.
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    handles = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
    handles.append(
        model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output.requires_grad_()))
    try:
        for ids in tqdm(list(_batches(samples, batch_size, device)),
                        desc="Fisher sensitivity",
                        leave=False):
            logits = model(input_ids=ids).logits.float()
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="sum")
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, requires_grad in frozen.items():
            p.requires_grad_(requires_grad)
        model.train(was_training)
    return scores


def unit_scores(problem, layer_scores: Dict[str, List[float]]) -> List[List[float]]:
    """Per-unit score rows (one entry per format of the unit's ladder) for
    ``project_scores``: a unit's score is the sum over the distinct layers it drives."""
    rows = []
    for unit in problem.units:
        names = list(dict.fromkeys(m.layer for m in unit.members))
        missing = [n for n in names if n not in layer_scores]
        if missing:
            raise ValueError(f"No sensitivity scores for layers {missing}")
        levels = len(get_ladder(unit.ladder).formats)
        rows.append([sum(layer_scores[n][level] for n in names) for level in range(levels)])
    return rows


def mlp_high_map(layer_names: Sequence[str], low: str, high: str) -> Dict[str, str]:
    """The hand-made baseline: layers of the MLP blocks in ``high``, all others in ``low``."""
    return {name: high if ".mlp." in f".{name}." else low for name in layer_names}
