# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The learnable format offset of one layer: raw offset -> beta = F(raw, T)."""

import math
from typing import Optional, Tuple

from brevitas import config
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.config import DEFAULT_TEMP_START
from brevitas_dmx.formats import Ladder
from brevitas_dmx.formats import ladder as get_ladder

# Sharpness of the tempered sigmoid (``c`` in the method; 20 in the authors' code).
DEFAULT_SHARPNESS = 20.0
# A relaxation gap below this is a settled offset: F's slope is then at most c * T * 1e-6, a
# ten-thousandth or less of its slope where the format is still moving.
SETTLED_TOLERANCE = 1e-6


def _segment_tensors(ladder: Ladder, like: Tensor) -> Tuple[Tensor, Tensor]:
    """(start, length) of the ladder's segments as two vectors in ``like``'s dtype and device."""
    starts, lengths = zip(*ladder.segments)
    return (
        torch.tensor(starts, dtype=like.dtype, device=like.device),
        torch.tensor(lengths, dtype=like.dtype, device=like.device))


def tempered_offset(raw: Tensor, temperature: Tensor, ladder: Ladder, sharpness: float):
    """beta = F(raw, T): the tempered sigmoid of the method (section 3), one per segment of the
    ladder: ``sum_i L_i * sigmoid(c * T * ((raw - k_i) / L_i - 1/2))`` for the segment of length
    ``L_i`` from offset ``k_i``. One segment is the paper's sigmoid, unit segments its staircase.
    Elementwise: ``raw`` and ``temperature`` may be vectors of many offsets."""
    if len(ladder.segments) == 1:  # the sum below, without building the segment tensors
        span = ladder.span
        return span * torch.sigmoid(sharpness * temperature * (raw / span - 0.5))
    logits, lengths = _segment_logits(raw, temperature, ladder, sharpness)
    return (lengths * torch.sigmoid(logits)).sum(-1)


def _segment_logits(raw: Tensor, temperature: Tensor, ladder: Ladder, sharpness: float):
    """(``c * T * ((raw - k_i) / L_i - 1/2)`` for each segment along a new last axis, the
    segments' lengths ``L_i``): the sigmoids' arguments of ``tempered_offset``."""
    starts, lengths = _segment_tensors(ladder, raw)
    centred = raw.unsqueeze(-1) / lengths - (starts / lengths + 0.5)
    return sharpness * torch.as_tensor(temperature).unsqueeze(-1) * centred, lengths


def relaxation_gap(raw: Tensor, temperature: Tensor, ladder: Ladder, sharpness: float) -> Tensor:
    """How far ``F(raw, T)`` is from its staircase: the largest ``L_i * min(s_i, 1 - s_i)``
    over the ladder's segments, ``s_i`` each segment's sigmoid. Below ~1e-6 every sigmoid has
    saturated, and with it F's slope ``c * T * s_i * (1 - s_i)``: the loss no longer moves the
    offset. Elementwise, as ``tempered_offset``."""
    logits, lengths = _segment_logits(raw, temperature, ladder, sharpness)
    # sigmoid(-|x|) is min(s, 1 - s) without the cancellation of 1 - sigmoid(x)
    return (lengths * torch.sigmoid(-logits.abs())).amax(-1)


def straight_through_offset(raw: Tensor, ladder: Ladder) -> Tensor:
    """beta rounded to the ladder's discrete offsets in the forward pass, identity gradient (an
    ablation: the paper reports that training with it diverges)."""
    continuous = raw.clamp(0, ladder.span)
    return continuous + (discrete_offset(raw, ladder) - continuous).detach()


def discrete_offset(raw: Tensor, ladder: Ladder) -> Tensor:
    """The hardware format the raw offset stands for: the limit of F for T -> infinity (each
    segment switches at its middle)."""
    starts, lengths = _segment_tensors(ladder, raw)
    past_middle = (raw.unsqueeze(-1) > starts + lengths / 2).to(raw.dtype)
    return (lengths * past_middle).sum(-1)


class DMXOffset(nn.Module):
    """One learnable scalar per layer that moves its MX format along a ladder.

    In training mode ``forward`` returns the continuous offset ``F(raw, T)``; in eval mode the
    discrete one, so an evaluated model always sits on real hardware formats. The temperature is
    a non-persistent buffer: the annealing schedule sets it from the training step.
    """

    def __init__(
            self,
            ladder: str,
            init: float = 0.0,
            temperature: float = DEFAULT_TEMP_START,
            sharpness: float = DEFAULT_SHARPNESS,
            device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.ladder = get_ladder(ladder)
        self.sharpness = float(sharpness)
        # "anneal": the tempered F(raw, T); "ste": straight-through rounding (ablation);
        # "blend" / "sample": F(raw, T), with the quantizers mixing the two formats around it.
        self.rounding = "anneal"
        self.raw_offset = nn.Parameter(torch.tensor(float(init), device=device))
        # Where training started (None: unknown). The projection reads it: a unit whose offset
        # ended below its start is one the loss or the penalty pushed down.
        self.start_offset: Optional[float] = float(init)
        self.register_buffer(
            "temperature", torch.tensor(float(temperature), device=device), persistent=False)
        # The discrete offset a budget projection assigned (NaN: none, use the raw offset).
        self.register_buffer("assigned_offset", torch.tensor(math.nan, device=device))

    def extra_repr(self) -> str:
        return f"ladder={self.ladder.name}, sharpness={self.sharpness}"

    def forward(self) -> Tensor:
        if self.training and self.rounding == "ste":
            return straight_through_offset(self.raw_offset, self.ladder)
        if self.training:
            return tempered_offset(self.raw_offset, self.temperature, self.ladder, self.sharpness)
        return self.discrete()

    def relaxation_gap(self) -> Tensor:
        """``relaxation_gap`` of this offset at its temperature (a scalar tensor, no grad);
        infinite under straight-through rounding, whose gradient does not vanish."""
        if self.rounding == "ste":
            return torch.full_like(self.raw_offset, math.inf).detach()
        with torch.no_grad():
            return relaxation_gap(self.raw_offset, self.temperature, self.ladder, self.sharpness)

    def settled(self, tolerance: float) -> bool:
        """Whether training can no longer move this offset's format: the tempered sigmoid has
        saturated (``relaxation_gap`` below ``tolerance``); never under straight-through
        rounding."""
        return bool(self.relaxation_gap() < tolerance)

    def discrete(self) -> Tensor:
        """The hardware format's offset: the projection's assignment if any, else F(raw, inf)."""
        if not torch.isnan(self.assigned_offset):
            return self.assigned_offset.clone()
        return discrete_offset(self.raw_offset.detach(), self.ladder)

    def assign(self, beta: Optional[float]) -> None:
        """Fixes the discrete offset (a budget projection's choice); None clears it."""
        if beta is not None and beta not in self.ladder.discrete_betas:
            raise ValueError(
                f"offset {beta} is not a format of ladder {self.ladder.name} "
                f"(offsets {self.ladder.discrete_betas})")
        self.assigned_offset.fill_(math.nan if beta is None else float(beta))

    def _load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        # A float checkpoint has no offsets: keep the initial ones, as Brevitas does for scales.
        for name in ("raw_offset", "assigned_offset"):
            key = prefix + name
            if config.IGNORE_MISSING_KEYS and key in missing_keys:
                missing_keys.remove(key)
