# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The learnable format offset of one layer: raw offset -> beta = F(raw, T)."""

import math
from typing import Optional

from brevitas import config
import torch
from torch import nn
from torch import Tensor

from brevitas_dmx.config import DEFAULT_TEMP_START
from brevitas_dmx.formats import ladder as get_ladder

# Sharpness of the tempered sigmoid (``c`` in the method; 20 in the authors' code).
DEFAULT_SHARPNESS = 20.0


def tempered_offset(raw: Tensor, temperature: Tensor, span: int, kind: str, sharpness: float):
    """beta = F(raw, T): the tempered sigmoid or the staircase of the method (section 3).
    Elementwise: ``raw`` and ``temperature`` may be vectors of many offsets."""
    if kind == "sigmoid":
        return span * torch.sigmoid(sharpness * temperature * (raw / span - 0.5))
    steps = torch.arange(span, dtype=raw.dtype, device=raw.device) + 0.5
    return torch.sigmoid(
        sharpness * torch.as_tensor(temperature).unsqueeze(-1) *
        (raw.unsqueeze(-1) - steps)).sum(-1)


def straight_through_offset(raw: Tensor, span: int, kind: str) -> Tensor:
    """beta rounded to the ladder's discrete offsets in the forward pass, identity gradient (an
    ablation: the paper reports that training with it diverges)."""
    continuous = raw.clamp(0, span)
    return continuous + (discrete_offset(raw, span, kind) - continuous).detach()


def discrete_offset(raw: Tensor, span: int, kind: str) -> Tensor:
    """The hardware format the raw offset stands for: the limit of F for T -> infinity."""
    if kind == "sigmoid":
        return (raw > span / 2).to(raw.dtype) * span
    steps = torch.arange(span, dtype=raw.dtype, device=raw.device) + 0.5
    return (raw.unsqueeze(-1) > steps).to(raw.dtype).sum(-1)


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
        # "anneal": the tempered F(raw, T); "ste": straight-through rounding (ablation).
        self.rounding = "anneal"
        self.raw_offset = nn.Parameter(torch.tensor(float(init), device=device))
        self.register_buffer(
            "temperature", torch.tensor(float(temperature), device=device), persistent=False)
        # The discrete offset a budget projection assigned (NaN: none, use the raw offset).
        self.register_buffer("assigned_offset", torch.tensor(math.nan, device=device))

    def extra_repr(self) -> str:
        return f"ladder={self.ladder.name}, sharpness={self.sharpness}"

    def forward(self) -> Tensor:
        if self.training and self.rounding == "ste":
            return straight_through_offset(self.raw_offset, self.ladder.span, self.ladder.kind)
        if self.training:
            return tempered_offset(
                self.raw_offset,
                self.temperature,
                self.ladder.span,
                self.ladder.kind,
                self.sharpness)
        return self.discrete()

    def discrete(self) -> Tensor:
        """The hardware format's offset: the projection's assignment if any, else F(raw, inf)."""
        if not torch.isnan(self.assigned_offset):
            return self.assigned_offset.clone()
        return discrete_offset(self.raw_offset.detach(), self.ladder.span, self.ladder.kind)

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
