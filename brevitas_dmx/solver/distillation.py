# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The distillation objective: KL from the float model's next-token distribution to the
quantized one's, per token.

The teacher is the same model with quantization off (no second copy in memory). Its
distributions are computed once, before training, and kept as the top ``k`` log-probabilities
of every token with the mass of the rest as one more outcome, so the KL is taken over ``k + 1``
outcomes: exactly zero where the student's distribution equals the teacher's, and a few MB
where full distributions would take GBs (128 windows x 128 tokens x 49k vocabulary: 3 GB).
The targets ride with the calibration samples (``TEACHER_KEYS``), so every batch the Trainer
draws carries its own.
"""

from typing import Dict, List

from brevitas.graph.calibrate import quantization_status_manager
import torch
from torch import nn
from torch import Tensor
import torch.nn.functional as F

from brevitas_dmx.config import DEFAULT_TOP_K

# The per-sample fields that hold the teacher's top-k: log-probabilities and token ids.
TEACHER_LOGPROBS = "teacher_logprobs"
TEACHER_INDICES = "teacher_indices"
TEACHER_KEYS = (TEACHER_LOGPROBS, TEACHER_INDICES)


def _tail(top_logprobs: Tensor) -> Tensor:
    """log of the probability outside the top-k (clamped away from log 0)."""
    mass = top_logprobs.exp().sum(-1)
    return torch.log1p(-mass.clamp(max=1 - 1e-6))


@torch.no_grad()
def teacher_targets(
        model: nn.Module,
        samples: List[Dict[str, Tensor]],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int = 4) -> List[Dict[str, Tensor]]:
    """``samples`` with the teacher's top-k log-probabilities and token ids added to each
    ([seqlen, k] float32 and int64): the model with weight and input quantization off, in eval
    mode (the model's mode is restored)."""
    device = next(model.parameters()).device
    out = []
    with quantization_status_manager(model,
                                     disable_act_quant=True,
                                     disable_weight_quant=True,
                                     is_training=False):
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            ids = torch.stack([s["input_ids"] for s in batch]).to(device)
            mask = torch.stack([s["attention_mask"] for s in batch]).to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            top = F.log_softmax(logits, -1).topk(min(top_k, logits.shape[-1]), dim=-1)
            for sample, values, indices in zip(batch, top.values.cpu(), top.indices.cpu()):
                out.append(dict(sample, **{TEACHER_LOGPROBS: values, TEACHER_INDICES: indices}))
    return out


def distillation_loss(
        logits: Tensor,
        teacher_logprobs: Tensor,
        teacher_indices: Tensor,
        attention_mask: Tensor = None) -> Tensor:
    """The mean over tokens of KL(teacher || student) over the teacher's top-k outcomes and the
    rest: ``logits`` [batch, seqlen, vocab] of the student, the teacher's [batch, seqlen, k]."""
    logprobs = F.log_softmax(logits.float(), -1)
    student_top = logprobs.gather(-1, teacher_indices.to(logits.device))
    teacher_top = teacher_logprobs.to(logits.device)
    teacher_tail, student_tail = _tail(teacher_top), _tail(student_top)
    kl = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)
    kl = kl + teacher_tail.exp() * (teacher_tail - student_tail)
    if attention_mask is None:
        return kl.mean()
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
