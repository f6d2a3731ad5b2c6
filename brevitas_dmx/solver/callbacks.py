# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Annealing as a Hugging Face ``TrainerCallback``."""

from transformers import TrainerCallback

from brevitas_dmx.config import DEFAULT_TEMP_DELAY
from brevitas_dmx.config import DEFAULT_TEMP_END
from brevitas_dmx.config import DEFAULT_TEMP_START
from brevitas_dmx.model import set_temperature


def temperature_at(
        step: int,
        total_steps: int,
        start: float = DEFAULT_TEMP_START,
        end: float = DEFAULT_TEMP_END,
        delay: float = DEFAULT_TEMP_DELAY) -> float:
    """T for 0-based ``step`` of ``total_steps``: ``start`` for the first ``delay`` fraction,
    then exponential growth that reaches ``end`` at the last step."""
    if total_steps <= 1:
        return end
    hold = int(delay * total_steps)
    last = total_steps - 1
    if step < hold or hold >= last:
        return start if step < last else end
    progress = (min(step, last) - hold) / (last - hold)
    return start * (end / start)**progress


class TemperatureScheduleCallback(TrainerCallback):
    """Sets T on every offset before each optimizer step, from the global step."""

    def __init__(self, start=DEFAULT_TEMP_START, end=DEFAULT_TEMP_END, delay=DEFAULT_TEMP_DELAY):
        if not (0 < start and 0 < end):
            raise ValueError("temperatures must be positive")
        if not 0 <= delay <= 1:
            raise ValueError(f"the temperature delay is a fraction in [0, 1], got {delay}")
        self.start, self.end, self.delay = start, end, delay
        self.temperature = start

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.temperature = temperature_at(
            state.global_step, state.max_steps, self.start, self.end, self.delay)
        set_temperature(model, self.temperature)
