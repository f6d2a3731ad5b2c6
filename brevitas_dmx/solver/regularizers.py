# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Bit-budget regularizers (section 4 of the method): small objects the trainer calls."""

from typing import Tuple

import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.config import DEFAULT_INCLUDE_SCALE_BITS
from brevitas_dmx.config import DEFAULT_LAMBDA
from brevitas_dmx.config import DEFAULT_WEIGHTING
from brevitas_dmx.model import average_bits
from brevitas_dmx.model import dmx_offsets
from brevitas_dmx.model import WEIGHTINGS
from brevitas_dmx.solver.projection import bisect_budget


class _Regularizer:

    def __init__(
            self,
            lam: float,
            weighting: str = DEFAULT_WEIGHTING,
            include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")
        if lam < 0:
            raise ValueError(f"The penalty weight lambda must be >= 0, got {lam}")
        self.lam = float(lam)
        self.weighting = weighting
        self.include_scale_bits = include_scale_bits

    def average(self, model: nn.Module) -> Tensor:
        return average_bits(model, self.weighting, self.include_scale_bits)

    def __call__(self, model: nn.Module) -> Tuple[Tensor, Tensor]:
        """(penalty, average bits) of the model's current, continuous formats."""
        bits = self.average(model)
        return self.penalty(bits), bits

    def after_step(self, model: nn.Module) -> None:
        """What the trainer calls after every optimizer step: nothing, for a penalty."""


class TargetAwarePenalty(_Regularizer):
    """R = max(0, lambda * (b - target)): pushes down only while over budget."""

    def __init__(self, target_bits: float, lam: float = DEFAULT_LAMBDA, **kwargs):
        super().__init__(lam, **kwargs)
        self.target_bits = float(target_bits)

    def penalty(self, bits: Tensor) -> Tensor:
        return (self.lam * (bits - self.target_bits)).clamp_min(0)


class ScalingPenalty(_Regularizer):
    """R = lambda * b: the ablation with no target."""

    def penalty(self, bits: Tensor) -> Tensor:
        return self.lam * bits


class HeldBudget(_Regularizer):
    """No penalty: after every optimizer step ``hold`` moves the offsets back onto the budget
    along the gradient of the average, the shortest way there to first order (a projected
    gradient step). Over budget, every offset gives way in proportion to the bits it moves, so
    the loss alone ranks the layers; a penalty pushes back only after the average has crossed
    the target, and with momentum it overshoots, far below the budget from a start on it."""

    def __init__(self, target_bits: float, **kwargs):
        super().__init__(0.0, **kwargs)
        self.target_bits = float(target_bits)

    def penalty(self, bits: Tensor) -> Tensor:
        return torch.zeros_like(bits)

    def after_step(self, model: nn.Module) -> None:
        self.hold(model)

    def hold(self, model: nn.Module, iterations: int = 40) -> float:
        """Brings an over-budget average back to the target; returns how far it moved along
        the gradient (0.0 at or under budget)."""
        raw = [o.raw_offset for o in dmx_offsets(model)]
        with torch.enable_grad():
            bits = self.average(model)
            if float(bits) <= self.target_bits:
                return 0.0
            grads = torch.autograd.grad(bits, raw, allow_unused=True)
        with torch.no_grad():
            start = [r.detach().clone() for r in raw]
            grads = [torch.zeros_like(r) if g is None else g for r, g in zip(raw, grads)]

            def over_at(step: float) -> bool:
                for r, r0, g in zip(raw, start, grads):
                    r.copy_(r0 - step * g)
                return float(self.average(model)) > self.target_bits

            # first-order guess of the step, doubled until it lands under the target
            high = (float(bits) - self.target_bits) / max(
                sum(float(g.pow(2).sum()) for g in grads), 1e-12)
            low = 0.0
            for _ in range(60):
                if not over_at(high):
                    break
                low, high = high, 2 * high
            return bisect_budget(over_at, high, low, iterations)
