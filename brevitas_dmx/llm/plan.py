# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The plan of one dMX run: its command line and everything validation resolved from it.

Validation builds a ``RunPlan`` once, before any model or data loads; the stages read it and
nothing edits the parsed arguments after that.
"""

import argparse
from dataclasses import dataclass
import json
import os
from typing import Dict, Optional, Tuple

from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import Ladder
from brevitas_dmx.formats import ladder as get_ladder

# A run folder's metrics (written at the end of a run; a re-targeting run reads its source's).
METRICS_FILE = "metrics.json"
# The run's arguments as validation resolved them (a re-targeting run reads its source's).
ARGS_FILE = "args.json"
# The folder of a run's training checkpoints, inside its output folder.
CHECKPOINTS_DIR = "checkpoints"


class UsageError(ValueError):
    """A bad command line, with a message that names the flag."""


@dataclass(frozen=True)
class RunPlan:
    """One checked dMX run: the parsed command line (read, never edited) and what was resolved
    from it. ``method`` is the registered method object (``brevitas_dmx.llm.methods``)."""
    args: argparse.Namespace
    method: object
    ladder: Ladder
    ladder_auto: bool  # the ladder was "auto": a sweep's points share one series
    rounding: str
    seqlen: int
    out_dir: str
    scale_bits: float  # bits per element the budget counts for the E8M0 scales (0: none)
    scale_rule: str = "floor"  # --dmx-scale-rule, or the one --dmx-deploy needs
    tie: str = "none"  # --dmx-tie, or the one --dmx-deploy needs
    deploy: str = "none"
    file_map: Optional[Dict] = None  # --dmx-format-map, read and checked
    # --magr, --gptq, --gpfq, --qronos: the weight optimizers after the search, in their order
    weight_optimizers: Tuple[str, ...] = ()
    inputs: Optional[object] = None  # what a sweep's points share (``RunInputs``)

    @property
    def target_bits(self) -> Optional[float]:
        return self.args.dmx_target_bits

    @property
    def weighting(self) -> Dict:
        """The average a budget binds, as ``average_bits`` and the projections take it."""
        return dict(
            weighting=self.args.dmx_average, include_scale_bits=self.args.dmx_budget_with_scales)

    @property
    def excluded_layers(self) -> Tuple[str, ...]:
        """The Linear layers a run leaves in float: the LM head unless --quantize-last-layer."""
        return () if self.args.quantize_last_layer else ("lm_head",)

    @property
    def rotation(self) -> Optional[str]:
        return rotation_name(self.args)

    def resolved_args(self) -> Dict:
        """The arguments as the run used them (args.json): the ladder and rounding resolved."""
        return dict(
            vars(self.args),
            dmx_ladder=self.ladder.name,
            dmx_ladder_auto=self.ladder_auto,
            dmx_rounding=self.rounding,
            dmx_scale_rule=self.scale_rule,
            dmx_tie=self.tie,
            seqlen=self.seqlen)


def rotation_name(args) -> Optional[str]:
    """The rotation a run applies, as results and caches record it: 'fused_no_fx-had', or None."""
    if args.rotation is None:
        return None
    return f"{args.rotation}-{args.rotation_mode}" + ("-sink" if args.rotation_orphan_sink else "")


def budget_scale_bits(args) -> float:
    """The bits per element the budget counts for the E8M0 block scales (0 without them)."""
    return E8M0_SCALE_BITS / 32 if args.dmx_budget_with_scales else 0.0


def eval_tasks(args):
    return [t.strip() for t in args.dmx_eval_tasks.split(",") if t.strip()]


def source_ladder(run_dir: str) -> Optional[Ladder]:
    """The ladder a finished run's offsets were learned on, from its args.json (None if absent)."""
    path = os.path.join(run_dir, ARGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        name = json.load(f).get("dmx_ladder")
    return None if name is None else get_ladder(name)


def source_train_steps(run_dir: str) -> Optional[int]:
    """How long the run whose offsets are re-targeted trained (None if it kept no metrics)."""
    try:
        with open(os.path.join(run_dir, METRICS_FILE)) as f:
            return json.load(f).get("train_steps")
    except (OSError, ValueError):
        return None
