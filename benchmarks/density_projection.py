# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Re-projects a dMX run's learned offsets, ranking each layer's upgrade by the offset's
displacement from its start divided by what the upgrade costs (a first-order knapsack), and
writes the format map for ``--dmx-format-map``. Two-format ladders only.

    python benchmarks/density_projection.py RUN_DIR 6 density-6.json
"""

import argparse
import collections
import json

from brevitas_dmx.solver import projection


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a dMX output folder (budget_units.json, args.json)")
    parser.add_argument("target_bits", type=float)
    parser.add_argument("output", help="the format map to write (JSON)")
    args = parser.parse_args()
    with open(f"{args.run_dir}/args.json") as f:
        run_args = json.load(f)
    weighting, scales = run_args["dmx_average"], run_args["dmx_budget_with_scales"]
    problem = projection.load_problem(args.run_dir)
    setup = projection._budget(problem, args.target_bits, weighting, scales)
    upgrades = []
    for index, (unit, ladder) in enumerate(zip(problem.units, setup.ladders)):
        betas = ladder.discrete_betas
        if len(betas) != 2:
            raise SystemExit(f"{unit.ladder} has {len(betas)} formats; this script takes two")
        start = betas[0] if unit.start_offset is None else unit.start_offset
        cost = float(setup.extra(index, 1))
        upgrades.append(((unit.raw_offset - start) / cost, index, 0))
    levels = projection._greedy_upgrades(setup, upgrades)
    result = projection._projection(setup, levels, args.target_bits, weighting, scales)
    fmap = projection.problem_format_map(problem, result.betas)
    with open(args.output, "w") as f:
        json.dump(fmap, f, indent=1)
    plain = projection.project(problem, args.target_bits, weighting, scales)
    low = [
        member.layer for unit, level in zip(problem.units, levels) if level == 0
        for member in unit.members if member.role == "weight"
    ]
    changed = sum(a != b for a, b in zip(plain.betas, result.betas))
    print(
        f"average {result.average:.4f} bits; {len(low)} layers at the low format "
        f"{dict(collections.Counter(name.split('.')[-1] for name in low))}; "
        f"{changed} units differ from the offsets' own projection")


if __name__ == "__main__":
    main()
