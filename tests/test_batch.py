# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""batched_formats: every learnable format of a model computed at once per training pass gives
the per-quantizer computation's values and gradients, and only inside that pass."""

from brevitas.graph.quantize import layerwise_quantize
import pytest
import torch

import brevitas_dmx as dmx
from brevitas_dmx.core.batch import FormatBatch
from brevitas_dmx.core.batch import offset_widths
from brevitas_dmx.core.offset import DMXOffset
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.functional import format_constants
from brevitas_dmx.functional import width_jacobian
from brevitas_dmx.model import dmx_quantizers
from brevitas_dmx.nn import dmx_linear_map
from brevitas_dmx.proxy import dmx_quant_of
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from tests.conftest import tiny_llama


def _mixed_model(seed: int = 0):
    """A tiny Llama on DMXQuantLinear with everything the batch must handle: offsets tied over
    q/k/v, a pinned quantizer, nonclip and even scale rules, another ladder and a straight-through
    offset, and raw offsets spread over the ladder."""
    model = layerwise_quantize(
        tiny_llama(seed), dmx_linear_map(DMXFloatWeight, DMXFloatAct), name_blacklist=["lm_head"])
    dmx.tie_offsets(model, dmx.tie_groups(model, "qkv"))
    layers = dict(dmx.dmx_layers(model))
    quants = dmx_quantizers(model)

    def quant(layer, attr):
        return dmx_quant_of(getattr(layers[f"model.layers.{layer}"], attr))

    quant("0.mlp.down_proj", "input_quant").pin(dmx.FORMATS["e4m3"])
    quant("1.mlp.up_proj", "weight_quant").scale_rule = "nonclip"
    quant("1.mlp.down_proj", "input_quant").scale_rule = "even"
    quant("1.self_attn.o_proj", "input_quant").offset.ladder = get_ladder("mxfp6-mxfp4")
    quant("0.mlp.gate_proj", "weight_quant").offset.rounding = "ste"
    for i, offset in enumerate(dmx.train_only_offsets(model)):
        offset.raw_offset.data.fill_(0.1 + 1.8 * ((i * 0.37) % 1))
    assert len(dmx.dmx_offsets(model)) < len(quants)  # the tie shares offsets
    return model.train()


def _step(model, batched: bool):
    """(loss, raw offset gradients) of one training step with the trainer's penalty."""
    for offset in dmx.dmx_offsets(model):
        offset.raw_offset.grad = None
    ids = torch.arange(24).reshape(2, 12) % 96
    with dmx.batched_formats(model) if batched else torch.enable_grad():
        loss = model(input_ids=ids, labels=ids).loss + dmx.average_bits(model, "memory", True)
    loss.backward()
    return loss.detach(), [o.raw_offset.grad.clone() for o in dmx.dmx_offsets(model)]


def test_batched_step_gives_the_per_quantizer_loss_and_offset_gradients():
    model = _mixed_model()
    loss, grads = _step(model, batched=False)
    loss_b, grads_b = _step(model, batched=True)
    torch.testing.assert_close(loss_b, loss, rtol=1e-6, atol=0)
    assert any(float(g.abs()) > 0 for g in grads)
    for got, want in zip(grads_b, grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_batched_widths_and_constants_equal_each_quantizers_own():
    model = _mixed_model()
    batch = FormatBatch(dmx_quantizers(model))
    batch.compute()
    pinned = [q for q in batch.quantizers if q.is_pinned]
    assert pinned and all(q.batch_slot is None for q in pinned)
    for k, quant in enumerate(batch.live):
        e, m = quant.offset.ladder.widths(quant.offset())
        torch.testing.assert_close(batch.e[k], e, rtol=1e-6, atol=0)
        torch.testing.assert_close(batch.m[k], m, rtol=1e-6, atol=0)
        for got, want in zip(batch.constants(k, torch.float32), format_constants(e, m)):
            torch.testing.assert_close(got, want, rtol=2e-6, atol=0)
        torch.testing.assert_close(
            batch._jacobian[k], width_jacobian(e, m, quant.scale_rule), rtol=1e-5, atol=1e-6)


def test_batched_formats_are_exact_at_hardware_formats():
    model = _mixed_model()
    for offset in dmx.dmx_offsets(model):  # far from the middle: the sigmoid is exactly 0 or 1
        offset.raw_offset.data.fill_(
            -40.0 if offset.ladder.span * 0.5 > offset.raw_offset else 40.0)
    batch = FormatBatch(dmx_quantizers(model))
    batch.compute()
    for k, quant in enumerate(batch.live):
        e, m = quant.offset.ladder.widths(quant.offset())
        assert float(e.detach()) == int(e) and torch.equal(batch.e[k], e) and torch.equal(
            batch.m[k], m)
        for got, want in zip(batch.constants(k, torch.bfloat16),
                             format_constants(e.bfloat16(), m.bfloat16())):
            assert torch.equal(got, want)


def _watch_first_layer(model):
    """(the first dMX layer's weight quantizer, the ``batch_slot`` it saw at each forward, hook)."""
    _, layer = dmx.dmx_layers(model)[0]
    quant = dmx_quant_of(layer.weight_quant)
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(quant.batch_slot))
    return quant, seen, handle


def test_the_batch_lives_only_inside_the_forward_pass():
    model = _mixed_model()
    quant, seen, _ = _watch_first_layer(model)
    with dmx.batched_formats(model):
        model(input_ids=torch.arange(12).reshape(1, 12))
        assert seen[-1] is not None and quant.batch_slot is None
        quant.offset.raw_offset.data.add_(0.5)  # a step after the pass: the widths follow it
        e, _ = quant.widths()
        assert torch.equal(e, quant.offset.ladder.widths(quant.offset())[0])


def test_no_batch_in_eval_without_grad_or_after_the_block():
    model = _mixed_model()
    _, seen, _ = _watch_first_layer(model)
    ids = torch.arange(12).reshape(1, 12)
    with dmx.batched_formats(model):
        model.eval()
        model(input_ids=ids)
        model.train()
        with torch.no_grad():
            model(input_ids=ids)
    model(input_ids=ids)
    assert seen == [None, None, None]


def test_the_batch_is_dropped_when_the_forward_pass_fails():
    model = _mixed_model()
    with dmx.batched_formats(model):
        with pytest.raises(Exception):
            model(input_ids=torch.full((1, 4), 10**6))  # out of the vocabulary
        assert all(q.batch_slot is None for q in dmx_quantizers(model))


def test_offset_widths_of_mixed_offsets_equal_their_own():
    offsets = [
        DMXOffset("mxfp8-mxfp4", init=0.4),
        DMXOffset("mxfp8-mxfp6-mxfp4", init=1.3),
        DMXOffset("mxfp6-mxfp4", init=1.7),
        DMXOffset("mxfp8-mxfp4", init=1.2),
        DMXOffset("mxfp8-mxfp6-mxfp4", init=0.2)
    ]
    offsets[2].eval()
    offsets[3].rounding = "ste"
    e, m = offset_widths(offsets)
    for k, offset in enumerate(offsets):
        want_e, want_m = offset.ladder.widths(offset())
        torch.testing.assert_close(e[k], want_e, rtol=1e-6, atol=0)
        torch.testing.assert_close(m[k], want_m, rtol=1e-6, atol=0)
    (e.sum() + m.sum()).backward()
    assert all(o.raw_offset.grad is not None for o in offsets if o.training)


def test_average_bits_is_the_share_weighted_sum_of_each_quantizers_bits():
    model = _mixed_model()
    ids = torch.arange(12).reshape(1, 12)
    model(input_ids=ids)  # records the activation sizes
    records = [q for _, q in dmx.mx_quantizers(model)]
    for weighting in ("simple", "size", "memory"):
        chosen = [q for q in records if q.is_weight or weighting != "memory"]
        if weighting == "simple":
            groups = [[q for q in chosen if q.is_weight], [q for q in chosen if not q.is_weight]]
            want = sum(sum(q.bits(False) for q in g) / len(g) for g in groups) / 2
        else:
            total = sum(q.size() for q in chosen)
            want = sum(q.bits(False) * q.size() for q in chosen) / total
        torch.testing.assert_close(
            dmx.average_bits(model, weighting, False), want, rtol=1e-6, atol=0, check_dtype=False)


def test_the_trainer_computes_the_formats_in_one_batch(monkeypatch, tmp_path):
    from brevitas_dmx.solver.regularizers import TargetAwarePenalty
    from brevitas_dmx.solver.trainer import DMXTrainer
    from brevitas_dmx.solver.trainer import training_arguments
    computed = []
    compute = FormatBatch.compute
    monkeypatch.setattr(FormatBatch, "compute", lambda self: computed.append(compute(self)) or None)
    model = _mixed_model()
    ids = torch.arange(48).reshape(4, 12) % 96
    data = [{"input_ids": row, "labels": row} for row in ids]
    trainer = DMXTrainer(
        model,
        training_arguments(str(tmp_path), steps=2, batch_size=2),
        TargetAwarePenalty(5.0),
        train_dataset=data)
    trainer.train()
    assert len(computed) == 2  # one batch per forward pass
    assert all(q.batch_slot is None for q in dmx_quantizers(model))


def test_fused_layers_of_a_batch_take_their_width_gradients_from_its_jacobians(monkeypatch):
    from brevitas_dmx.core import linear
    calls = []
    per_layer = linear.width_grads
    monkeypatch.setattr(linear, "width_grads", lambda *args: calls.append(1) or per_layer(*args))
    model = _mixed_model()
    _step(model, batched=True)
    assert calls == []
    _step(model, batched=False)
    assert calls


def test_quantizers_hold_the_batch_for_the_block_and_it_says_when_it_is_valid():
    model = _mixed_model()
    quants = dmx_quantizers(model)
    quant, seen, _ = _watch_first_layer(model)
    with dmx.batched_formats(model) as batch:
        assert all(q.format_batch is batch for q in quants)
        assert not batch.valid and quant.batch_slot is None
        with dmx.batched_formats(model) as inner:  # a nested block holds them while it lasts
            assert all(q.format_batch is inner for q in quants)
        assert all(q.format_batch is batch for q in quants)
        model(input_ids=torch.arange(12).reshape(1, 12))
        assert seen[-1][0] is batch and not batch.valid and quant.batch_slot is None
    assert all(q.format_batch is None for q in quants)
