# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The steps both entry points share: ``brevitas_dmx_llm --dmx`` and the stock
``brevitas_ptq_llm`` plugin quantize, search, project, finalize and check through these.

- ``resolve_ladder`` / ``resolve_rounding``: ``auto`` made concrete for a target;
- ``quantize_model``: learnable MX quantizers on every Linear (fused layers tied as asked);
- ``narrow_ladders``: a model quantized on a chain (Brevitas's registry builds quantizers before
  the budget is known) moved onto the target's ``auto`` ladder inside that chain;
- ``project_offsets`` / ``score_projection``: the formats chosen exactly under the budget;
- ``finalize_checked``: fixed Brevitas MX quantizers, checked to give the evaluated logits and
  to meet the budget; ``log_format_table``.
"""

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

from brevitas.graph.quantize import layerwise_quantize
import torch
from torch import nn

import brevitas_dmx as dmx
from brevitas_dmx.baselines import unit_scores
from brevitas_dmx.config import AUTO
from brevitas_dmx.config import DEFAULT_INCLUDE_SCALE_BITS
from brevitas_dmx.config import DEFAULT_SCALE_RULE
from brevitas_dmx.config import DEFAULT_WEIGHTING
from brevitas_dmx.config import TiePreset
from brevitas_dmx.evaluate import format_table
from brevitas_dmx.formats import DEFAULT_CHAIN
from brevitas_dmx.formats import Ladder
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.formats import ladder_for_target
from brevitas_dmx.model import rounding_for_ladder
from brevitas_dmx.model import set_rounding
from brevitas_dmx.nn import dmx_linear_map
from brevitas_dmx.quant import ladder_quantizers
from brevitas_dmx.solver.projection import budget_problem
from brevitas_dmx.solver.projection import project_model
from brevitas_dmx.solver.projection import project_scores
from brevitas_dmx.solver.projection import Projection

logger = logging.getLogger(__name__)


class BudgetError(ValueError):
    """A finalized model over its bit budget."""


def resolve_ladder(
        name: str,
        target_bits: Optional[float],
        scale_bits: float = 0.0,
        chain: str = DEFAULT_CHAIN) -> Ladder:
    """The ladder ``name`` names; for ``auto``, the two formats of ``chain`` around the target
    (``formats.ladder_for_target``). Raises a ValueError on an unknown name."""
    if name == AUTO:
        return ladder_for_target(target_bits, scale_bits, chain)
    return get_ladder(name)


def resolve_rounding(rounding: str, ladder: Ladder) -> str:
    """``auto``: sample where only the exponent grows along the ladder, else anneal."""
    return rounding_for_ladder(ladder) if rounding == AUTO else rounding


def quantize_model(
    model: nn.Module,
    ladder: Ladder,
    scale_rule: str = DEFAULT_SCALE_RULE,
    weights_only: bool = False,
    tie: str = TiePreset.NONE.value,
    exclude: Sequence[str] = ("lm_head",)
) -> Tuple[nn.Module, List[Tuple[str, nn.Module]]]:
    """Learnable MX quantizers on ``ladder`` on every Linear layer but ``exclude``, fused layers
    tied as ``tie`` says. Returns the model (moved back to its device: Brevitas builds the input
    quantizers on the CPU) and its layers with a learnable format; a ValueError for a model
    without Linear layers to quantize."""
    device = next(model.parameters()).device
    weight, act = ladder_quantizers(ladder.name)
    weight = weight.let(dmx_scale_rule=scale_rule)
    act = None if weights_only else act.let(dmx_scale_rule=scale_rule)
    model = layerwise_quantize(
        model, dmx_linear_map(weight, act), name_blacklist=list(exclude)).to(device)
    layers = dmx.dmx_layers(model)
    if not layers:
        raise ValueError("no Linear layers to quantize")
    if tie != TiePreset.NONE.value:
        dmx.tie_offsets(model, dmx.tie_groups(model, tie))
    logger.info(
        f"{len(layers)} layers with a learnable format, {len(dmx.dmx_offsets(model))} offsets")
    return model, layers


def narrow_ladders(model: nn.Module, ladder: Ladder) -> None:
    """Moves every offset of ``model`` onto ``ladder``, a run of consecutive formats of the chain
    it was built on, starting at the ladder's lowest format: the ``auto`` ladder of a model whose
    quantizers were made before the target was known."""
    for offset in dmx.dmx_offsets(model):
        names = [f.name for f in offset.ladder.formats]
        wanted = [f.name for f in ladder.formats]
        starts = [i for i in range(len(names)) if names[i:i + len(wanted)] == wanted]
        if not starts:
            raise ValueError(
                f"ladder {ladder.name} is not a run of the formats {offset.ladder.name} the "
                f"model was quantized on")
        with torch.no_grad():
            offset.ladder = ladder
            offset.raw_offset.fill_(0.0)
            offset.start_offset = 0.0
            offset.assigned_offset.fill_(math.nan)


def prepare_training(model: nn.Module, rounding: str) -> None:
    """The offsets' rounding for training (``resolve_rounding`` first)."""
    set_rounding(model, rounding)


def project_offsets(
        model: nn.Module,
        target_bits: float,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS) -> Projection:
    """The learned offsets projected exactly onto the budget, with one log line."""
    projection = project_model(model, target_bits, weighting, include_scale_bits)
    logger.info(
        f"projection: {projection.average:.4g} bits for a {target_bits:g}-bit budget; "
        f"{projection.lowered} of {len(projection.betas)} offsets ended below their start and "
        "get no format above it")
    return projection


def score_projection(
        model: nn.Module,
        scores,
        target_bits: float,
        solver: str = "knapsack",
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS) -> Projection:
    """The formats that minimize the summed layer ``scores`` (kl or fisher) under the budget."""
    problem = budget_problem(model)
    return project_scores(
        problem,
        unit_scores(problem, scores),
        target_bits,
        solver=solver,
        weighting=weighting,
        include_scale_bits=include_scale_bits)


def finalize_checked(
        model: nn.Module,
        sample: torch.Tensor,
        target_bits: Optional[float] = None,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS,
        projection: Optional[Projection] = None) -> Dict[str, float]:
    """Fixed Brevitas MX quantizers in place of the learnable ones, checked to give the logits
    of the learnable ones on their discrete formats for the token ids ``sample`` and to meet
    ``target_bits`` (a ``BudgetError`` naming the average). Returns the bits report."""
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=sample).logits
        dmx.finalize(model)
        if not torch.equal(model(input_ids=sample).logits, reference):
            raise RuntimeError("the finalized model's logits differ from the evaluated ones")
    report = dmx.bits_report(model)
    if target_bits is not None:
        key = weighting + ("_with_scales" if include_scale_bits else "")
        if report[key] > target_bits + 1e-9:
            raise BudgetError(
                f"the formats take {report[key]:.4g} bits ({weighting} average"
                f"{' with scales' if include_scale_bits else ''}), over the {target_bits:g}-bit "
                f"budget")
    if projection is not None and projection.average > target_bits + 1e-9:
        raise RuntimeError(
            f"the projection's average {projection.average} is over the target {target_bits}")
    return report


def log_format_table(fmap: Dict) -> None:
    """The format table, one log record (its lines kept together)."""
    logger.info("formats per layer:\n" + format_table(fmap))
