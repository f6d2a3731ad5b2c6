# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Exact budget projection: discrete formats whose average never exceeds the target.

Training lands near the budget but nothing guarantees it. After training, each learnable offset
(one per layer, or per tie group) is a unit that takes one format of its ladder. The average bit
width is linear in the units' formats, with exact rational coefficients from the chosen
weighting, so the budget check is exact (``fractions.Fraction``). Units start at their cheapest
format; upgrades are ranked by how far training pushed the raw offset past the upgrade's
threshold and applied in that order while they fit. A unit whose offset training lowered below
where it started gets no format above its start: where the budget does not bind, the loss alone
lowered it, and filling the budget there costs accuracy. The same learned offsets therefore meet
any other target without retraining (``retarget``), spending no more of it than training asked.
"""

from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from fractions import Fraction
import json
import math
import os
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from brevitas_dmx.config import DEFAULT_INCLUDE_SCALE_BITS
from brevitas_dmx.config import DEFAULT_WEIGHTING
from brevitas_dmx.formats import E8M0_SCALE_BITS
from brevitas_dmx.formats import element_format
from brevitas_dmx.formats import ladder as get_ladder
from brevitas_dmx.model import average_bits
from brevitas_dmx.model import format_map
from brevitas_dmx.model import layer_format
from brevitas_dmx.model import mx_quantizers
from brevitas_dmx.model import set_temperature
from brevitas_dmx.model import WEIGHTINGS

UNITS_FILE = "budget_units.json"


@dataclass
class Member:
    """One quantizer: where it is, what kind, how many elements, its block size."""
    layer: str
    role: str
    size: int
    group_size: int = 32
    fixed_bits: Optional[int] = None  # a pinned or fixed quantizer: its format's bits
    fixed_format: Optional[str] = None


@dataclass
class Unit:
    """One learnable offset and the quantizers it drives."""
    raw_offset: float
    ladder: str
    members: List[Member] = field(default_factory=list)
    start_offset: Optional[float] = None  # where training started it (None: unknown)


@dataclass
class BudgetProblem:
    units: List[Unit]
    fixed: List[Member]

    def to_json(self) -> Dict:
        return {"units": [asdict(u) for u in self.units], "fixed": [asdict(m) for m in self.fixed]}

    @classmethod
    def from_json(cls, data: Dict) -> "BudgetProblem":
        units = [
            Unit(
                u["raw_offset"],
                u["ladder"], [Member(**m) for m in u["members"]],
                u.get("start_offset")) for u in data["units"]
        ]
        return cls(units, [Member(**m) for m in data["fixed"]])


@dataclass
class Projection:
    betas: List[int]  # the discrete offset of each unit
    average: float  # achieved average under the weighting (with scale bits if asked)
    target: float
    weighting: str
    include_scale_bits: bool
    lowered: int = 0  # units training lowered below their start (none gets a format above it)


def _budget_problem_and_offsets(model: nn.Module):
    units: Dict[int, Unit] = {}
    offsets = []
    fixed = []
    for name, quant in mx_quantizers(model):
        group_size = quant.dmx.group_size if quant.dmx is not None else quant.fixed_format()[1]
        member = Member(name, quant.role, int(quant.size()), int(group_size))
        if quant.dmx is None or quant.dmx.is_pinned:
            fmt = quant.discrete_format()
            member.fixed_bits, member.fixed_format = fmt.bits, fmt.name
            fixed.append(member)
            continue
        offset = quant.dmx.offset
        if id(offset) not in units:
            units[id(offset)] = Unit(
                float(offset.raw_offset.detach()),
                offset.ladder.name,
                start_offset=offset.start_offset)
            offsets.append(offset)
        units[id(offset)].members.append(member)
    return BudgetProblem(list(units.values()), fixed), offsets


def budget_problem(model: nn.Module) -> BudgetProblem:
    """The units (distinct learnable offsets) and fixed quantizers of a model."""
    return _budget_problem_and_offsets(model)[0]


def _coefficients(members: List[Member], weighting: str) -> List[Fraction]:
    """Exact weight of each member in the average (they sum to 1 over counted members)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")
    is_weight = [m.role == "weight" for m in members]
    if weighting == "simple":
        n_w, n_a = sum(is_weight), len(members) - sum(is_weight)
        groups = (n_w > 0) + (n_a > 0)
        return [Fraction(1, groups * (n_w if w else n_a)) for w in is_weight]
    sizes = [m.size if (w or weighting == "size") else 0 for m, w in zip(members, is_weight)]
    total = sum(sizes)
    if total == 0:
        raise ValueError(f"No quantizers count under the {weighting!r} weighting.")
    return [Fraction(s, total) for s in sizes]


@dataclass
class _Budget:
    """The exact rational budget of a problem: what each unit's levels cost."""
    budget: Fraction  # element bits available (the target less the scale-bit term)
    scale_term: Fraction
    ladders: list
    unit_weight: List[Fraction]  # each unit's share of the average
    base: Fraction  # the average with every unit at its cheapest format

    def extra(self, index: int, level: int) -> Fraction:
        """What moving unit ``index`` from its cheapest format to ``level`` adds to the average."""
        formats = self.ladders[index].formats
        return self.unit_weight[index] * (formats[level].bits - formats[0].bits)


def _budget(
        problem: BudgetProblem, target_bits: float, weighting: str,
        include_scale_bits: bool) -> _Budget:
    members = [m for u in problem.units for m in u.members] + list(problem.fixed)
    coefficients = dict(zip(map(id, members), _coefficients(members, weighting)))
    scale_term = Fraction(0)
    if include_scale_bits:
        scale_term = sum(
            coefficients[id(m)] * Fraction(E8M0_SCALE_BITS, m.group_size) for m in members)
    # The element-bit budget, exact: a decimal target such as 5.3 is taken as 53/10.
    budget = Fraction(target_bits).limit_denominator(10**6) - scale_term
    ladders = [get_ladder(u.ladder) for u in problem.units]
    unit_weight = [sum(coefficients[id(m)] for m in u.members) for u in problem.units]
    base = sum(coefficients[id(m)] * m.fixed_bits for m in problem.fixed)
    base += sum(w * l.formats[0].bits for w, l in zip(unit_weight, ladders))
    if base > budget:
        scale = " with scale bits" if include_scale_bits else ""
        raise ValueError(
            f"A {target_bits}-bit {weighting} average{scale} is below what this model can reach "
            f"({float(base + scale_term):.4g} bits with every learnable layer at its cheapest "
            f"format).")
    return _Budget(budget, scale_term, ladders, unit_weight, base)


def _greedy_upgrades(setup: _Budget, upgrades) -> List[int]:
    """Applies ``(priority, unit index, level)`` upgrades, highest priority first, while they
    fit; an upgrade applies only to a unit that sits at its level."""
    levels = [0] * len(setup.ladders)
    average = setup.base
    for _, neg_index, level in sorted(((p, -i, l) for p, i, l in upgrades), reverse=True):
        index = -neg_index
        if levels[index] != level:
            continue
        step = setup.extra(index, level + 1) - setup.extra(index, level)
        if average + step <= setup.budget:
            average += step
            levels[index] = level + 1
    return levels


def _projection(setup: _Budget, levels: List[int], target_bits, weighting, include_scale_bits):
    average = setup.base + sum(setup.extra(i, level) for i, level in enumerate(levels))
    assert average <= setup.budget
    betas = [path.discrete_betas[level] for path, level in zip(setup.ladders, levels)]
    return Projection(
        betas, float(average + setup.scale_term), float(target_bits), weighting, include_scale_bits)


def _lowered(unit: Unit) -> bool:
    """Whether training ended the unit's offset below where it started (False: start unknown)."""
    return unit.start_offset is not None and unit.raw_offset < unit.start_offset


def highest_level(unit: Unit) -> int:
    """The highest format of its ladder the projection may give a unit: any, unless training
    lowered the offset below where it started; then none above the start. Where the budget binds
    the penalty lowers offsets too, but those units rank last and the budget usually runs out
    first; where it does not bind, the loss alone lowered them: the higher format made the model
    worse in training, and spending budget on it would too."""
    betas = get_ladder(unit.ladder).discrete_betas
    if not _lowered(unit):
        return len(betas) - 1
    return max((level for level, beta in enumerate(betas) if beta <= unit.start_offset), default=0)


def project(
        problem: BudgetProblem,
        target_bits: float,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS) -> Projection:
    """Chooses a discrete offset per unit so the average is at most ``target_bits`` (below it
    when every upgrade training asked for fits)."""
    setup = _budget(problem, target_bits, weighting, include_scale_bits)
    upgrades = []
    for index, (unit, path) in enumerate(zip(problem.units, setup.ladders)):
        betas = path.discrete_betas
        for level in range(highest_level(unit)):
            threshold = (betas[level] + betas[level + 1]) / 2
            upgrades.append((unit.raw_offset - threshold, index, level))
    levels = _greedy_upgrades(setup, upgrades)
    projection = _projection(setup, levels, target_bits, weighting, include_scale_bits)
    projection.lowered = sum(map(_lowered, problem.units))
    return projection


# Largest dynamic-programming table (units x budget steps) the exact knapsack builds; beyond it
# the costs are coarsened (see ``_knapsack``).
KNAPSACK_CELLS = 20_000_000


def _knapsack(setup: _Budget, scores: List[List[float]]) -> List[int]:
    """Exact multiple-choice knapsack: one level per unit, minimal total score, average within
    the budget. Costs are exact rationals scaled to integers; if the table would exceed
    ``KNAPSACK_CELLS``, costs are rounded UP to a coarser integer grid, which keeps every
    solution within the budget (it may leave a sliver of the budget unused)."""

    costs = [
        [setup.extra(i, level)
         for level in range(len(path.formats))]
        for i, path in enumerate(setup.ladders)
    ]
    capacity = setup.budget - setup.base
    denominator = 1
    for value in [capacity] + [c for row in costs for c in row]:
        denominator = denominator * value.denominator // math.gcd(denominator, value.denominator)
    numerators = [int(c * denominator) for row in costs for c in row]
    unit = math.gcd(*numerators) if any(numerators) else 1
    grid = Fraction(unit, denominator)
    steps = int(capacity / grid)
    if (steps + 1) * len(costs) > KNAPSACK_CELLS:
        grid = capacity / (KNAPSACK_CELLS // max(1, len(costs)) - 1)
        steps = int(capacity / grid)
    int_costs = [[math.ceil(c / grid) for c in row] for row in costs]
    best = np.zeros(steps + 1)  # minimal score using at most this many budget steps
    choices = []
    for row, score in zip(int_costs, scores):
        candidates = np.full((len(row), steps + 1), np.inf)
        for level, (cost, value) in enumerate(zip(row, score)):
            if cost <= steps:
                candidates[level, cost:] = best[:steps + 1 - cost] + value
        choice = np.argmin(candidates, axis=0)
        best = candidates[choice, np.arange(steps + 1)]
        choices.append(choice.astype(np.int8))
    levels = [0] * len(costs)
    remaining = steps
    for index in range(len(costs) - 1, -1, -1):
        levels[index] = int(choices[index][remaining])
        remaining -= int_costs[index][levels[index]]
    return levels


def project_scores(
        problem: BudgetProblem,
        scores: List[List[float]],
        target_bits: float,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS,
        solver: str = "knapsack") -> Projection:
    """Formats from per-unit sensitivity scores instead of learned offsets (the baselines).

    ``scores[i][level]`` is the estimated damage of unit ``i`` at format ``level`` of its ladder
    (lower is better). ``solver="knapsack"`` minimises the total damage within the budget
    exactly; ``solver="greedy"`` promotes units in order of the damage an upgrade removes while
    they fit (the KL layer-selection heuristic)."""
    if len(scores) != len(problem.units):
        raise ValueError(f"{len(scores)} score rows for {len(problem.units)} units")
    setup = _budget(problem, target_bits, weighting, include_scale_bits)
    if solver == "knapsack":
        levels = _knapsack(setup, scores)
    elif solver == "greedy":
        upgrades = [
            (row[level] - row[level + 1], index, level)
            for index, row in enumerate(scores)
            for level in range(len(row) - 1)
        ]
        levels = _greedy_upgrades(setup, upgrades)
    else:
        raise ValueError(f"Unknown solver {solver!r}; choose knapsack or greedy.")
    return _projection(setup, levels, target_bits, weighting, include_scale_bits)


def assign_projection(model: nn.Module, projection: Projection) -> None:
    """Assigns a projection's formats to the model's offsets (in ``budget_problem`` order)."""
    _, offsets = _budget_problem_and_offsets(model)
    for offset, beta in zip(offsets, projection.betas):
        offset.assign(beta)


def init_offsets(model: nn.Module, projection: Projection) -> None:
    """Starts every raw offset on the format a projection chose for it (a warm start: the
    offsets then train from there; nothing is assigned)."""
    _, offsets = _budget_problem_and_offsets(model)
    with torch.no_grad():
        for offset, beta in zip(offsets, projection.betas):
            offset.raw_offset.fill_(float(beta))
            offset.start_offset = float(beta)


def bisect_budget(
        over: Callable[[float], bool],
        under: float,
        over_end: float,
        iterations: int = 60) -> float:
    """Bisects between ``under`` and ``over_end``, where ``over`` (which places the offsets at its
    argument and says whether the average is then over budget) is False and True, for
    ``iterations`` halvings; leaves the offsets at the last point under budget and returns it."""
    for _ in range(iterations):
        middle = (under + over_end) / 2
        if over(middle):
            over_end = middle
        else:
            under = middle
    over(under)
    return under


def budget_start_offsets(
        model: nn.Module,
        target_bits: float,
        temperature: float,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS) -> float:
    """Starts every raw offset on one value, the one whose continuous formats at ``temperature``
    (where training starts) average ``target_bits``; returns it. From the lowest format a short
    search spends its first steps climbing to the budget; from here every step ranks the layers,
    and between the formats F is steepest, so the offsets move fastest. A budget above what the
    ladders reach starts them all at the top. The offsets get no start offset (see below)."""
    _, offsets = _budget_problem_and_offsets(model)
    if not offsets:
        raise ValueError("The model has no learnable offsets to start (quantize it with dMX).")
    span = max(o.ladder.span for o in offsets)
    low = min(min(o.ladder.discrete_betas) for o in offsets) - 2 * span
    high = max(max(o.ladder.discrete_betas) for o in offsets) + 2 * span
    modes = [o.training for o in offsets]
    set_temperature(model, temperature)
    with torch.no_grad():
        for offset in offsets:
            offset.train()

        def over_at(raw: float) -> bool:
            for offset in offsets:
                offset.raw_offset.fill_(raw)
            return float(average_bits(model, weighting, include_scale_bits)) > target_bits

        if over_at(high):  # the average rises with the offset
            bisect_budget(over_at, low, high)
        for offset, mode in zip(offsets, modes):
            offset.train(mode)
            # No start for the projection: it lies between two formats, and "none above the
            # start" would give every offset training lowered the lower one, however little it
            # fell; the projection ranks these offsets by where they end alone.
            offset.start_offset = None
    return offsets[0].raw_offset.item()


def restore_start_offsets(model: nn.Module, problem: BudgetProblem) -> None:
    """Gives a model's offsets the start offsets a run recorded (``budget_problem`` order), so
    offsets loaded from that run project as they did there."""
    _, offsets = _budget_problem_and_offsets(model)
    if len(offsets) != len(problem.units):
        raise ValueError(
            f"{len(problem.units)} recorded offsets for a model with {len(offsets)}: the run "
            "was made on another model or with other flags")
    for offset, unit in zip(offsets, problem.units):
        offset.start_offset = unit.start_offset


def project_model(
        model: nn.Module,
        target_bits: float,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS) -> Projection:
    """Projects a model's learned offsets onto the budget and assigns the chosen formats."""
    problem, offsets = _budget_problem_and_offsets(model)
    result = project(problem, target_bits, weighting, include_scale_bits)
    for offset, beta in zip(offsets, result.betas):
        offset.assign(beta)
    return result


def problem_format_map(problem: BudgetProblem, betas: List[int]) -> Dict[str, Dict]:
    """The format map a projection gives, built from a budget problem alone (no model)."""
    out: Dict[str, Dict] = {}
    for unit, beta in zip(problem.units, betas):
        fmt = get_ladder(unit.ladder).formats[get_ladder(unit.ladder).discrete_betas.index(beta)]
        for member in unit.members:
            out.setdefault(member.layer, {"weight": None, "input": None})[member.role] = fmt.name
    for member in problem.fixed:
        out.setdefault(member.layer, {"weight": None, "input": None})[member.role] = \
            member.fixed_format
    for entry in out.values():
        entry["bits"] = float(element_format(layer_format(entry)).bits)
    return out


def save_problem(problem: BudgetProblem, run_dir: str) -> str:
    path = os.path.join(run_dir, UNITS_FILE)
    with open(path, "w") as f:
        json.dump(problem.to_json(), f, indent=1)
    return path


def load_problem(run_dir: str) -> BudgetProblem:
    """The budget problem a dMX run saved: its learned offsets, where they started and the
    quantizers they drive."""
    path = os.path.join(run_dir, UNITS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: pass a model or a run directory written by the dMX trainer")
    with open(path) as f:
        return BudgetProblem.from_json(json.load(f))


def retarget(
        model_or_run_dir: Union[nn.Module, str],
        target_bits: float,
        weighting: str = DEFAULT_WEIGHTING,
        include_scale_bits: bool = DEFAULT_INCLUDE_SCALE_BITS) -> Dict:
    """Meets another budget from the same learned offsets, without retraining.

    Given a model, assigns the new formats in place; given a run directory (one written by the
    dMX trainer), reads its learned offsets. Returns ``{"format_map": ..., "avg_bits": ...}``.
    """
    if isinstance(model_or_run_dir, nn.Module):
        result = project_model(model_or_run_dir, target_bits, weighting, include_scale_bits)
        fmap = format_map(model_or_run_dir)
    else:
        problem = load_problem(model_or_run_dir)
        result = project(problem, target_bits, weighting, include_scale_bits)
        fmap = problem_format_map(problem, result.betas)
    return {
        "format_map": fmap,
        "avg_bits": result.average,
        "target_bits": target_bits,
        "weighting": weighting,
        "include_scale_bits": include_scale_bits
    }
