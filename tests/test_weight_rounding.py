# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Weight rounding (Brevitas's GPTQ, Qronos, GPFQ, MagR) on finalized mixed MX models."""

import copy

from brevitas.graph.quantize import layerwise_quantize
from brevitas.quant_tensor import _unpack_quant_tensor
from conftest import dmx_layer_map
from conftest import quantize_tiny_llama
from conftest import tiny_llama
import pytest
import torch

import brevitas_dmx as dmx
from brevitas_dmx.export import load_pretrained
from brevitas_dmx.export import save_pretrained
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.weight_rounding import optimize_weights

SEQLEN = 32
MIXED = ["e2m1", "e2m1", "e2m3", "e2m1", "e3m2", "e2m1", "e4m3"]


def arithmetic_sequences(n: int, seed: int) -> torch.Tensor:
    """Token windows a tiny Llama learns in a few steps: x_t = start + step * t (mod 96)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 96, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    return (start + step * torch.arange(SEQLEN)) % 96


@pytest.fixture(scope="module")
def trained_llama():
    """A tiny Llama trained a little: a random one predicts nothing, so rounding could not
    change its loss in a meaningful direction."""
    model = tiny_llama()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        ids = arithmetic_sequences(16, seed=step)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def calibration():
    ids = arithmetic_sequences(16, seed=1000)
    return [{"input_ids": w, "attention_mask": torch.ones_like(w), "labels": w} for w in ids]


def finalized_copy(model, formats=("e2m1",)):
    """``model`` with weights and inputs of every Linear but the LM head on fixed MX formats
    (``formats`` cycled over the layers), as ``finalize`` leaves a searched model."""
    quant = layerwise_quantize(
        copy.deepcopy(model),
        dmx_layer_map(DMXFloatWeight, DMXFloatAct),
        name_blacklist=["lm_head"])
    names = [name for name, _ in dmx.dmx_layers(quant)]
    dmx.apply_format_map(quant, {n: formats[i % len(formats)] for i, n in enumerate(names)})
    return dmx.finalize(quant.eval())


def quant_weights(model):
    return {
        name: _unpack_quant_tensor(layer.quant_weight()).detach().clone()
        for name, layer in model.named_modules()
        if hasattr(layer, "quant_weight") and layer.weight_quant.is_quant_enabled
    }


def calibration_loss(model, calibration) -> float:
    ids = torch.stack([s["input_ids"] for s in calibration])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_gptq_keeps_each_layers_format(ignore_missing_keys, trained_llama, calibration):
    model = finalized_copy(trained_llama, MIXED)
    before = dmx.format_map(model)
    optimize_weights(model, calibration, "gptq", progress=False)
    assert dmx.format_map(model) == before


def test_gptq_weights_differ_from_round_to_nearest(ignore_missing_keys, trained_llama, calibration):
    rtn = quant_weights(finalized_copy(trained_llama, MIXED))
    model = finalized_copy(trained_llama, MIXED)
    optimize_weights(model, calibration, "gptq", progress=False)
    gptq = quant_weights(model)
    assert gptq.keys() == rtn.keys() and len(gptq) == 14
    assert all(not torch.equal(gptq[name], rtn[name]) for name in rtn)


def test_gptq_lowers_the_calibration_loss_below_round_to_nearest(
        ignore_missing_keys, trained_llama, calibration):
    rtn = finalized_copy(trained_llama)
    model = finalized_copy(trained_llama)
    optimize_weights(model, calibration, "gptq", progress=False)
    assert calibration_loss(model, calibration) < calibration_loss(rtn, calibration)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("algorithm", ["gptq", "gpfq", "qronos"])
def test_block_quantization_matches_brevitas_whole_matrix_path(
        ignore_missing_keys, trained_llama, calibration, algorithm, act_order):
    fast = finalized_copy(trained_llama, MIXED)
    stock = finalized_copy(trained_llama, MIXED)
    optimize_weights(fast, calibration, algorithm, act_order=act_order, progress=False)
    optimize_weights(
        stock, calibration, algorithm, act_order=act_order, fast_path=False, progress=False)
    for (name, a), (_, b) in zip(fast.state_dict().items(), stock.state_dict().items()):
        assert torch.equal(a, b), name


def test_blockwise_gptq_equals_whole_model_gptq(ignore_missing_keys, trained_llama, calibration):
    blocks = finalized_copy(trained_llama, MIXED)
    whole = finalized_copy(trained_llama, MIXED)
    optimize_weights(blocks, calibration, "gptq", progress=False)
    optimize_weights(
        whole, calibration, "gptq", blockwise=False, parallel_siblings=False, progress=False)
    for (name, a), (_, b) in zip(blocks.state_dict().items(), whole.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("algorithm", ["gptq", "qronos", "gpfq", "magr"])
def test_every_algorithm_rounds_every_quantized_layer_and_leaves_the_head(
        ignore_missing_keys, trained_llama, calibration, algorithm):
    model = finalized_copy(trained_llama, MIXED)
    head = model.lm_head.weight.detach().clone()
    info = optimize_weights(model, calibration, algorithm, batch_size=4, progress=False)
    assert info["layers"] == 14 and info["blocks"] == 2 and info["tokens"] == 16 * SEQLEN
    assert torch.equal(model.lm_head.weight, head)
    # The float copies GPFQ and Qronos need are gone, so checkpoints stay as before.
    assert not any("weight_orig" in key for key in model.state_dict())


def test_optimized_model_saves_and_reloads_with_equal_logits(
        ignore_missing_keys, trained_llama, calibration, tmp_path):
    model = finalized_copy(trained_llama, MIXED)
    optimize_weights(model, calibration, "gptq", progress=False)
    save_pretrained(model, str(tmp_path))
    reloaded = load_pretrained(str(tmp_path))
    ids = torch.stack([s["input_ids"] for s in calibration[:2]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert dmx.format_map(reloaded) == dmx.format_map(model)


def test_unknown_algorithm_is_a_value_error(ignore_missing_keys, trained_llama, calibration):
    model = finalized_copy(trained_llama)
    with pytest.raises(ValueError, match=r"Unknown algorithm 'adaround'.*gptq"):
        optimize_weights(model, calibration, "adaround")


def test_a_model_that_is_not_finalized_is_a_value_error(ignore_missing_keys, calibration):
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    with pytest.raises(ValueError, match="finalize"):
        optimize_weights(model, calibration, "gptq")
