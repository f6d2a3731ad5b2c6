# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The distillation objective (``--dmx-loss kd``): the float model's top-k as the target."""

from brevitas.graph.calibrate import quantization_status_manager
from conftest import quantize_tiny_llama
from conftest import save_tiny_llama_folder
import pytest
import torch

import brevitas_dmx as dmx
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.solver.distillation import distillation_loss
from brevitas_dmx.solver.distillation import TEACHER_INDICES
from brevitas_dmx.solver.distillation import TEACHER_LOGPROBS
from brevitas_dmx.solver.distillation import teacher_targets


def _samples(n=3, seqlen=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 96, (n, seqlen), generator=g)
    return [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": i} for i in ids]


def _loss(model, targets):
    ids = torch.stack([t["input_ids"] for t in targets])
    logits = model(input_ids=ids).logits
    return distillation_loss(
        logits,
        torch.stack([t[TEACHER_LOGPROBS] for t in targets]),
        torch.stack([t[TEACHER_INDICES] for t in targets]))


@pytest.fixture
def quantized():
    model = quantize_tiny_llama(DMXFloatWeight, DMXFloatAct)
    dmx.apply_format_map(model, {name: "e2m1" for name, _ in dmx.dmx_layers(model)})
    return model


def test_kd_loss_is_zero_for_a_model_whose_quantizers_are_at_float(quantized):
    targets = teacher_targets(quantized, _samples(), top_k=8)
    with quantization_status_manager(quantized,
                                     disable_act_quant=True,
                                     disable_weight_quant=True,
                                     is_training=False):
        assert _loss(quantized, targets).item() == 0.0


def test_kd_loss_is_positive_for_the_quantized_model(quantized):
    targets = teacher_targets(quantized, _samples(), top_k=8)
    quantized.eval()
    assert _loss(quantized, targets).item() > 1e-6  # a random tiny model: a small KL, not 0


def test_kd_gradient_reaches_only_the_offsets(quantized):
    targets = teacher_targets(quantized, _samples(), top_k=8)
    dmx.clear_format_pins(quantized)
    dmx.train_only_offsets(quantized)
    quantized.train()
    _loss(quantized, targets).backward()
    with_grad = {n for n, p in quantized.named_parameters() if p.grad is not None}
    assert with_grad and all(n.endswith("raw_offset") for n in with_grad)
    assert any(p.grad.abs().sum() > 0 for n, p in quantized.named_parameters() if n in with_grad)


def test_teacher_targets_leave_the_model_quantized_and_in_its_mode(quantized):
    quantized.train()
    ids = _samples(1)[0]["input_ids"][None]
    quantized.eval()
    before = quantized(input_ids=ids).logits
    quantized.train()
    teacher_targets(quantized, _samples(), top_k=8)
    assert quantized.training
    quantized.eval()
    assert torch.equal(quantized(input_ids=ids).logits, before)


def test_teacher_keeps_the_k_most_likely_tokens_in_order(quantized):
    (target,) = teacher_targets(quantized, _samples(1), top_k=5)
    assert target[TEACHER_LOGPROBS].shape == (16, 5) and target[TEACHER_INDICES].shape == (16, 5)
    assert torch.all(target[TEACHER_LOGPROBS][:, :-1] >= target[TEACHER_LOGPROBS][:, 1:])


def test_extra_text_windows_of_a_bos_tokenizer_start_with_bos(tmp_path):
    from conftest import local_text

    from brevitas_dmx.llm import RunInputs
    folder = save_tiny_llama_folder(tmp_path / "bos", add_bos=True)
    text = tmp_path / "text.txt"
    text.write_text(local_text(200))
    inputs = RunInputs()
    tokenizer = inputs.tokenizer(folder)
    windows = inputs.eval_windows(tokenizer, str(text), 0.4, 48, 4)
    assert len(windows) == 4 and torch.all(windows[:, 0] == tokenizer.bos_token_id)
