# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The choices and defaults of a dMX run, written once.

Each choice is a str-valued enum (its members compare equal to, and print as, their values, so
argparse choices, YAML configs and JSON keep working with plain strings); each default has one
owner here, which the library signatures, the command line and the stock-path trainer all read.
This module imports nothing heavy (no torch), so that the command line can be built and its help
printed in well under a second.
"""

from dataclasses import dataclass
from dataclasses import field
from enum import Enum
from typing import Optional


class Choice(str, Enum):
    """A str-valued choice: ``Weighting.MEMORY == "memory"`` and it prints as ``memory``."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple:
        return tuple(member.value for member in cls)


# Data sets Brevitas loads from the hub by these names.
HUB_DATASETS = ("wikitext2", "c4", "pile", "fineweb")


class Method(Choice):
    """Built-in methods of ``brevitas_dmx_llm --dmx-method``: dmx learns the formats; the rest are
    baselines (more can be registered, ``brevitas_dmx.llm.register_method``)."""
    DMX = "dmx"
    KL = "kl"
    FISHER = "fisher"
    UNIFORM = "uniform"
    MLP8 = "mlp8"
    FLOAT = "float"


METHODS = Method.values()
# The methods that search for formats under a bit budget (and so need one).
SEARCHING_METHODS = (Method.DMX.value, Method.KL.value, Method.FISHER.value)


class Weighting(Choice):
    """Which average bit width a budget binds (``average_bits``'s ``weighting``): the mean over
    layers (the paper's), weighted by element count, or bits per weight in memory."""
    SIMPLE = "simple"
    SIZE = "size"
    MEMORY = "memory"


WEIGHTINGS = Weighting.values()


class Rounding(Choice):
    """How an offset becomes a format in training: the tempered sigmoid, or straight-through
    rounding; or the tempered sigmoid with the quantizer mixing the two formats of the ladder
    around it instead of using the in-between format (blended, or one of the two drawn)."""
    ANNEAL = "anneal"
    STE = "ste"
    BLEND = "blend"
    SAMPLE = "sample"


ROUNDINGS = Rounding.values()
# The roundings whose quantizers mix the ladder's formats (``DMXFloatQuant``).
KNOT_MIXTURES = (Rounding.BLEND.value, Rounding.SAMPLE.value)
# Resolved from the ladder: sample on a ladder whose formats share one mantissa width (only the
# exponent grows, as from E2M3 to E4M3), anneal on any other (``rounding_for_ladder``); for a
# ladder, the default chain's two formats around the target (``formats.ladder_for_target``).
AUTO = "auto"
AUTO_ROUNDING = AUTO
ROUNDING_CHOICES = (AUTO_ROUNDING,) + ROUNDINGS


class Init(Choice):
    """Where the offsets start: every layer on the ladder's lowest format, on the formats the
    Fisher baseline picks for the budget (a warm start), or every layer on one offset between
    formats where the average is the budget."""
    LOW = "low"
    FISHER = "fisher"
    BUDGET = "budget"


INITS = Init.values()


class Loss(Choice):
    """The training objective: next-token cross-entropy on the calibration text (the paper's),
    or distillation, the KL from the float model's next-token distribution."""
    CE = "ce"
    KD = "kd"


LOSSES = Loss.values()
DEFAULT_LOSS = Loss.CE.value
# Teacher tokens kept per position for the distillation loss (the rest is one more outcome).
DEFAULT_TOP_K = 64


class Optimizer(Choice):
    """Optimizers of the offsets; SGD is the paper's."""
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


OPTIMIZERS = Optimizer.values()


class LRSchedule(Choice):
    """Learning-rate schedules of the offsets (Hugging Face's names); constant is the paper's."""
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


LR_SCHEDULES = LRSchedule.values()


class ScaleRule(Choice):
    """Shared block-scale rules: OCP's floor; the smallest power of two that does not saturate;
    or AMD Quark's "even" (the block maximum rounded to the element's mantissa before the
    floor), which Quark checkpoints and vLLM's emulation of them use."""
    FLOOR = "floor"
    NONCLIP = "nonclip"
    EVEN = "even"


SCALE_RULES = ScaleRule.values()
DEFAULT_SCALE_RULE = ScaleRule.FLOOR.value


class DeployTarget(Choice):
    """What the search must end on: any map, or one that ``--dmx-export-quark`` writes and vLLM
    0.33.0's Quark OCP MX path loads (``export.vllm_quark.deployable_combinations``)."""
    NONE = "none"
    VLLM_QUARK = "vllm-quark"


DEPLOY_TARGETS = DeployTarget.values()


class Regularizer(Choice):
    """How the average bit width is held: the penalty max(0, lambda*(b - target)), the penalty
    lambda*b, or no penalty and a step back onto the budget after every optimizer step."""
    TARGET = "target"
    SCALING = "scaling"
    HOLD = "hold"


REGULARIZERS = Regularizer.values()


class TiePreset(Choice):
    """Layers a deployment fuses into one matrix product, which must therefore share a format."""
    NONE = "none"
    QKV = "qkv"
    QKV_GATEUP = "qkv-gateup"


TIE_PRESETS = {
    TiePreset.NONE.value: (),
    TiePreset.QKV.value: (("q_proj", "k_proj", "v_proj"),),
    TiePreset.QKV_GATEUP.value: (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")),
}
TIE_CHOICES = TiePreset.values()

# The paper's recipe (section 5 of the method notes).
DEFAULT_LAMBDA = 5.0
DEFAULT_LR = 1.0
DEFAULT_MOMENTUM = 0.99  # SGD, Nesterov, no weight decay
DEFAULT_STEPS = 400
DEFAULT_BATCH_SIZE = 8
# Annealing: T is held at the start value for the first share of the steps, then grows
# exponentially to the end value at the last step.
DEFAULT_TEMP_START = 0.4
DEFAULT_TEMP_END = 20.0
DEFAULT_TEMP_DELAY = 0.6
# The average a budget binds: bits per weight in memory, with the E8M0 block scales (what a
# checkpoint's size measures). The library, the command and the stock-path trainer share it.
DEFAULT_WEIGHTING = Weighting.MEMORY.value
DEFAULT_INCLUDE_SCALE_BITS = True


@dataclass
class BudgetArguments:
    """The settings that the command and the stock-path trainer share: the budget, the penalty,
    the offsets' learning rate and the annealing (Hugging Face's argument parser and the
    command's both read these fields; the metadata holds only ``add_argument`` keywords)."""
    dmx_target_bits: Optional[float] = field(
        default=None,
        metadata={
            "help":
                "Bit budget: the average bits per element the result may not exceed (required "
                "for dmx, kl and fisher; a check for the others)."
        })
    dmx_lambda: float = field(
        default=DEFAULT_LAMBDA, metadata={"help": "Penalty weight (%(default)s)."})
    dmx_lr: float = field(
        default=DEFAULT_LR, metadata={"help": "Offset learning rate (%(default)s)."})
    dmx_momentum: float = field(
        default=DEFAULT_MOMENTUM,
        metadata={
            "help":
                "SGD momentum of the offsets (Nesterov; %(default)s, the paper's). Its memory "
                "is about 1/(1 - momentum) steps: a short search wants less."
        })
    dmx_temp_start: float = field(
        default=DEFAULT_TEMP_START,
        metadata={"help": "Temperature of the offsets' sigmoid while it is held (%(default)s)."})
    dmx_temp_end: float = field(
        default=DEFAULT_TEMP_END,
        metadata={
            "help":
                "Temperature at the last step, where every layer sits on a format (%(default)s)."
        })
    dmx_temp_delay: float = field(
        default=DEFAULT_TEMP_DELAY,
        metadata={
            "help":
                "Share of the steps at the start temperature before it grows exponentially "
                "(%(default)s)."
        })
    dmx_average: str = field(
        default=DEFAULT_WEIGHTING,
        metadata={
            "help":
                "Which average the budget binds: memory (bits per weight, what a file size "
                "measures; default), size, or simple (the paper's mean over layers).",
            "choices": WEIGHTINGS
        })
    dmx_budget_with_scales: bool = field(
        default=DEFAULT_INCLUDE_SCALE_BITS,
        metadata={
            "help":
                "The budget counts the 0.25 bit/element of the E8M0 block scales (default; "
                "--no-dmx-budget-with-scales counts elements only, as the paper and ModelOpt do)."
        })
