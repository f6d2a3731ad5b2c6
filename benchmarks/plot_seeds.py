# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Perplexity against the bit budget over seeds: each method's runs (dots) and their geometric
mean (line), from results files of ``brevitas_dmx_llm --dmx-results``.

A run is assigned to a method and seed by its label: ``{method}-{ladder}-{target}[...][-seedS]``
(no ``-seedS``: seed 0). Only runs evaluated on the same windows should be drawn together:
every run must carry the same ``eval_fingerprint``.

    python benchmarks/plot_seeds.py benchmarks/results/*.jsonl --methods fisher64 dmx \\
        --ladder mxfp8-mxfp4 --output docs/smollm2_135m_seeds.png
"""

import argparse
import collections
import json
import math
import re


def read_runs(paths, ladder: str, methods):
    """{(method, target): {seed: perplexity}} and the set of evaluation fingerprints."""
    pattern = re.compile(
        rf"^({'|'.join(map(re.escape, methods))})-{re.escape(ladder)}-"
        rf"([0-9.]+)(-100steps)?(-seed(\d+))?$")
    runs = collections.defaultdict(dict)
    fingerprints = set()
    for path in paths:
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                match = pattern.match(record.get("label", ""))
                if not match:
                    continue
                method, target, seed = match.group(1), float(match.group(2)), match.group(5)
                runs[(method, target)][int(seed or 0)] = record["quant_ppl"]
                fingerprints.add(record.get("eval_fingerprint"))
    return runs, fingerprints


def geometric_mean(values) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--methods", nargs="+", default=["fisher64", "dmx"])
    parser.add_argument("--ladder", default="mxfp8-mxfp4")
    parser.add_argument("--min-seeds", type=int, default=3, help="targets with fewer are left out")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    runs, fingerprints = read_runs(args.results, args.ladder, args.methods)
    if len(fingerprints) > 1:
        raise SystemExit(
            f"runs were evaluated on different windows: {sorted(map(str, fingerprints))}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, diff) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in args.methods:
        targets = sorted(
            t for (m, t), seeds in runs.items() if m == method and len(seeds) >= args.min_seeds)
        if not targets:
            continue
        means = [geometric_mean(runs[(method, t)].values()) for t in targets]
        line, = ax.plot(targets, means, marker="o", label=f"{method} (geometric mean)")
        for t in targets:
            values = list(runs[(method, t)].values())
            ax.scatter([t] * len(values), values, color=line.get_color(), alpha=0.35, s=14)
        print(method, ", ".join(f"{t:g}: {m:.2f}" for t, m in zip(targets, means)))
    first, last = args.methods[0], args.methods[-1]
    shared = sorted(
        t for (m, t), seeds in runs.items()
        if m == last and len(seeds) >= args.min_seeds and (first, t) in runs)
    for t in shared:
        seeds = sorted(set(runs[(first, t)]) & set(runs[(last, t)]))
        changes = [(runs[(last, t)][s] / runs[(first, t)][s] - 1) * 100 for s in seeds]
        diff.scatter([t] * len(changes), changes, color="C1", alpha=0.5, s=18)
        mean = (
            geometric_mean([runs[(last, t)][s]
                            for s in seeds]) / geometric_mean([runs[(first, t)][s]
                                                               for s in seeds]) - 1) * 100
        diff.scatter([t], [mean], color="C1", marker="_", s=300)
    diff.axhline(0, color="gray", lw=1)
    diff.set_xlabel("bits per weight (memory average with scales)")
    diff.set_ylabel(f"{last} vs {first}, same seed (%)")
    diff.set_title("per seed (dots) and of the geometric means (bars)")
    diff.grid(alpha=0.3)
    ax.set_xlabel("bits per weight (memory average with scales)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_yscale("log")
    ax.set_title(f"{args.ladder}: seeds (dots) and their geometric mean")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
