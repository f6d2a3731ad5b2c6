# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""reusing_quantized_weights: under gradient accumulation the micro-batches of one optimizer step
share each fused layer's weight work, with the gradients of computing it in every micro-batch."""

from brevitas.graph.quantize import layerwise_quantize
import pytest
import torch

import brevitas_dmx as dmx
from brevitas_dmx.core import linear
from brevitas_dmx.nn import dmx_linear_map
from brevitas_dmx.nn import DMXQuantLinear
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.solver import DMXTrainer
from brevitas_dmx.solver import TargetAwarePenalty
from brevitas_dmx.solver import training_arguments
from tests.conftest import tiny_llama

MICRO_BATCHES = [torch.arange(24).reshape(2, 12) % 96 + 7 * k for k in range(3)]


def _model(seed: int = 0):
    model = layerwise_quantize(
        tiny_llama(seed), dmx_linear_map(DMXFloatWeight, DMXFloatAct), name_blacklist=["lm_head"])
    for i, offset in enumerate(dmx.train_only_offsets(model)):
        offset.raw_offset.data.fill_(0.1 + 1.8 * ((i * 0.37) % 1))
    return model.train()


def _accumulated_step(model, reuse):
    """(losses, raw offset gradients) of one optimizer step over MICRO_BATCHES; ``reuse`` is the
    object ``reusing_quantized_weights`` yields, or None to compute everything every time."""
    for offset in dmx.dmx_offsets(model):
        offset.raw_offset.grad = None
    losses = []
    for k, ids in enumerate(MICRO_BATCHES):
        if reuse is not None:
            reuse.last = k == len(MICRO_BATCHES) - 1
        loss = model(input_ids=ids % 96, labels=ids % 96).loss / len(MICRO_BATCHES)
        loss.backward()
        losses.append(loss.detach())
    return losses, [o.raw_offset.grad.clone() for o in dmx.dmx_offsets(model)]


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(linear, name)

    def counted(blocks, *args, **kwargs):
        calls.append(tuple(blocks.shape))
        return original(blocks, *args, **kwargs)

    monkeypatch.setattr(linear, name, counted)
    return calls


def test_shared_weight_work_gives_the_losses_and_gradients_of_recomputing_it():
    model = _model()
    losses, grads = _accumulated_step(model, None)
    with dmx.reusing_quantized_weights(model) as reuse:
        losses_r, grads_r = _accumulated_step(model, reuse)
    assert losses_r == losses  # the same quantized weights, bit for bit
    assert all(float(g.abs()) > 0 for g in grads)
    for got, want in zip(grads_r, grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def test_each_weight_is_quantized_once_and_summed_once_per_step(monkeypatch):
    model = _model()
    layers = [m for m in model.modules() if isinstance(m, DMXQuantLinear)]
    weight_shapes = {tuple(m.weight.unflatten(-1, (-1, 32)).shape) for m in layers}
    forwards = _count_calls(monkeypatch, "forward_kernel")
    sums = _count_calls(monkeypatch, "sums_kernel")
    values = _count_calls(monkeypatch, "values_backward_kernel")
    with dmx.reusing_quantized_weights(model) as reuse:
        _accumulated_step(model, reuse)
    on_weights = [s for s in forwards if s in weight_shapes]
    assert len(on_weights) == len(layers)
    assert len(sums) == len(layers) and not values


def test_nothing_is_held_after_the_step():
    model = _model()
    with dmx.reusing_quantized_weights(model) as reuse:
        _accumulated_step(model, reuse)
        assert not reuse.pending
        assert all(s.values is None and s.grad is None for s in reuse._shared.values())
    layers = [m for m in model.modules() if isinstance(m, DMXQuantLinear)]
    assert all(m.weight_reuse is None for m in layers)


def test_a_step_of_one_micro_batch_shares_nothing(monkeypatch):
    model = _model()
    fused = _count_calls(monkeypatch, "linear_backward_kernel")  # the unshared backward
    ids = MICRO_BATCHES[0]
    with dmx.reusing_quantized_weights(model) as reuse:
        assert reuse.last
        model(input_ids=ids, labels=ids).loss.backward()
        assert not reuse._shared
    assert len(fused) == sum(isinstance(m, DMXQuantLinear) for m in model.modules())


def test_a_format_change_within_a_step_is_refused():
    model = _model()
    ids = MICRO_BATCHES[0]
    with dmx.reusing_quantized_weights(model) as reuse:
        reuse.last = False
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            dmx.dmx_offsets(model)[0].raw_offset.add_(0.1)
        with pytest.raises(RuntimeError, match="between the micro-batches of one optimizer step"):
            model(input_ids=ids, labels=ids)


def _dmx_linear():
    return DMXQuantLinear(
        64,
        64,
        bias=False,
        weight_quant=DMXFloatWeight,
        input_quant=DMXFloatAct,
        return_quant_tensor=False)


class _TwoLayers(torch.nn.Module):
    """``first`` runs twice per pass; ``second`` only when asked."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = _dmx_linear(), _dmx_linear()

    def forward(self, x, use_second=True):
        y = self.first(torch.tanh(self.first(x)))
        return self.second(y) if use_second else y


def _two_layers():
    model = _TwoLayers()
    for i, offset in enumerate(dmx.train_only_offsets(model)):
        offset.raw_offset.data.fill_(0.4 + 0.5 * i)
    return model.train()


def _two_layer_grads(model, reuse):
    inputs = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(1))
    for k, x in enumerate(inputs):
        if reuse is not None:
            reuse.last = k == len(inputs) - 1
        model(x).square().mean().backward()
    return [o.raw_offset.grad.clone() for o in dmx.dmx_offsets(model)]


def test_a_layer_run_twice_in_a_pass_gets_the_gradients_of_recomputing():
    model = _two_layers()
    want = _two_layer_grads(model, None)
    for offset in dmx.dmx_offsets(model):
        offset.raw_offset.grad = None
    with dmx.reusing_quantized_weights(model) as reuse:
        got = _two_layer_grads(model, reuse)
        reuse.end_step(model)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


def test_a_layer_missing_from_the_last_micro_batch_is_reported():
    model = _two_layers()
    x = torch.randn(4, 64)
    with dmx.reusing_quantized_weights(model) as reuse:
        reuse.last = False
        model(x).sum().backward()
        reuse.last = True
        model(x, use_second=False).sum().backward()
        with pytest.raises(RuntimeError, match=r"\['second'\] ran in a micro-batch"):
            reuse.end_step(model)
        assert not reuse.pending  # forgotten: the next step starts clean


def _data(n=16, length=16):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": ids, "labels": ids
        } for ids in torch.randint(0, 96, (n, length), generator=g)
    ]


def _trained_offsets(tmp_path, batch_size, accumulation, reuse=True):
    """How far 2 steps move the offsets."""
    model = _model()
    initial = torch.stack([o.raw_offset.detach().clone() for o in dmx.dmx_offsets(model)])
    args = training_arguments(
        str(tmp_path / f"b{batch_size}x{accumulation}{reuse}"),
        steps=2,
        batch_size=batch_size,
        lr=0.05,
        gradient_accumulation_steps=accumulation)
    DMXTrainer(
        model,
        args,
        TargetAwarePenalty(5.0, 5.0),
        train_dataset=_data(),
        reuse_quantized_weights=reuse,
        skip_settled_steps=False).train()  # its last step settles: every step computes here
    return torch.stack([o.raw_offset.detach() for o in dmx.dmx_offsets(model)]) - initial


def test_trainer_accumulating_two_micro_batches_follows_the_batch_of_both(tmp_path, monkeypatch):
    whole = _trained_offsets(tmp_path, batch_size=4, accumulation=1)
    sums = _count_calls(monkeypatch, "sums_kernel")
    values = _count_calls(monkeypatch, "values_backward_kernel")
    accumulated = _trained_offsets(tmp_path, batch_size=2, accumulation=2)
    layers = sum(isinstance(m, DMXQuantLinear) for m in _model().modules())
    assert len(sums) == 2 * layers and not values  # shared: one weight sum per layer and step
    assert float(whole.abs().min()) > 1e-4  # every offset trained
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)


def test_trainer_recomputes_the_weights_in_every_micro_batch_when_told(tmp_path, monkeypatch):
    sums = _count_calls(monkeypatch, "sums_kernel")
    fused = _count_calls(monkeypatch, "linear_backward_kernel")  # the unshared backward
    _trained_offsets(tmp_path, batch_size=2, accumulation=2, reuse=False)
    layers = sum(isinstance(m, DMXQuantLinear) for m in _model().modules())
    assert len(fused) == 2 * 2 * layers and not sums


def test_trainer_shares_only_when_accumulating_and_not_under_fsdp(tmp_path):

    def trainer(accumulation, reuse=True):
        args = training_arguments(
            str(tmp_path), steps=1, batch_size=2, gradient_accumulation_steps=accumulation)
        return DMXTrainer(
            _model(),
            args,
            TargetAwarePenalty(5.0, 5.0),
            train_dataset=_data(),
            reuse_quantized_weights=reuse)

    assert trainer(2).shares_weight_work
    assert not trainer(1).shares_weight_work
    assert not trainer(2, reuse=False).shares_weight_work
    sharded = trainer(2)
    sharded.is_fsdp_enabled = True  # as accelerate's FSDP plugin sets it (GPUs only)
    assert not sharded.shares_weight_work


def test_each_layer_holds_its_own_reuse_only_inside_the_block():
    model, other = _model(), _model(1)
    layers = [m for m in model.modules() if isinstance(m, DMXQuantLinear)]
    others = [m for m in other.modules() if isinstance(m, DMXQuantLinear)]
    assert "weight_reuse" not in vars(DMXQuantLinear)  # no class-wide state
    with dmx.reusing_quantized_weights(model) as reuse:
        assert all(m.weight_reuse is reuse for m in layers)
        assert all(m.weight_reuse is None for m in others)
        with dmx.reusing_quantized_weights(model) as inner:
            assert all(m.weight_reuse is inner for m in layers)
        assert all(m.weight_reuse is reuse for m in layers)
    assert all(m.weight_reuse is None for m in layers)
