# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The choices and defaults of a dMX run, written once.

This module imports nothing heavy (no torch), so that the command line can be built and its
help printed in well under a second; the modules that do the work import their choices and
defaults from here.
"""

# Data sets Brevitas loads from the hub by these names.
HUB_DATASETS = ("wikitext2", "c4", "pile", "fineweb")

# Methods of ``brevitas_dmx_llm --dmx-method``: dmx learns the formats; the rest are baselines.
METHODS = ("dmx", "kl", "fisher", "uniform", "mlp8", "float")
# The methods that search for formats under a bit budget (and so need one).
SEARCHING_METHODS = ("dmx", "kl", "fisher")
# Which average bit width a budget binds (``average_bits``'s ``weighting``).
WEIGHTINGS = ("simple", "size", "memory")
# How an offset becomes a format in training: the tempered sigmoid, or straight-through rounding;
# or the tempered sigmoid with the quantizer mixing the two formats of the ladder around it
# instead of using the in-between format (blended, or one of the two drawn at random).
ROUNDINGS = ("anneal", "ste", "blend", "sample")
# The roundings whose quantizers mix the ladder's formats (``DMXFloatQuant``).
KNOT_MIXTURES = ("blend", "sample")
# The command's default: sample on a ladder whose formats share one mantissa width (only the
# exponent grows, as from E2M3 to E4M3), anneal on any other (``rounding_for_ladder``).
AUTO_ROUNDING = "auto"
ROUNDING_CHOICES = (AUTO_ROUNDING,) + ROUNDINGS
# Where the offsets start: every layer on the ladder's lowest format, or on the formats the
# Fisher baseline picks for the budget (a warm start).
INITS = ("low", "fisher")
# Optimizers of the offsets; SGD is the paper's.
OPTIMIZERS = ("sgd", "adam", "adamw")
# Shared block-scale rules: OCP's floor; the smallest power of two that does not saturate; or
# AMD Quark's "even" (the block maximum rounded to the element's mantissa before the floor),
# which Quark checkpoints and vLLM's emulation of them use.
SCALE_RULES = ("floor", "nonclip", "even")
# The penalties that hold the average bit width: max(0, lambda*(b - target)), or lambda*b.
REGULARIZERS = ("target", "scaling")
# Layers a deployment fuses into one matrix product, which must therefore share one format.
TIE_PRESETS = {
    "none": (),
    "qkv": (("q_proj", "k_proj", "v_proj"),),
    "qkv-gateup": (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")),
}
TIE_CHOICES = tuple(TIE_PRESETS)

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
