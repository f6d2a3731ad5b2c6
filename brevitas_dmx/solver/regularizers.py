# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Bit-budget regularizers (section 4 of the method): small objects the trainer calls."""

from typing import Tuple

from torch import nn
from torch import Tensor

from brevitas_dmx.config import DEFAULT_INCLUDE_SCALE_BITS
from brevitas_dmx.config import DEFAULT_LAMBDA
from brevitas_dmx.config import DEFAULT_WEIGHTING
from brevitas_dmx.model import average_bits
from brevitas_dmx.model import WEIGHTINGS


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
