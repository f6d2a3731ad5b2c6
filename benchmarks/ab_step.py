# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""A/B of two versions of the dMX training step in one process: the float step, the step of
another checkout of this project (``--before``, e.g. a git worktree of an older commit) and the
step of this one, interleaved round by round.

On a noisy machine separate runs of ``bench_step.py`` drift by more than a small change gains;
interleaving the two versions in one process lets the drift touch both alike. The other checkout
is imported as a renamed copy of its package (``brevitas_dmx_before``), made in a temporary folder.

    git worktree add /tmp/before HEAD~1
    python benchmarks/ab_step.py --before /tmp/before --model smollm2-135m --tokens 256
"""

import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def import_renamed(checkout: str, folder: str):
    """The ``bench_step`` module of ``checkout``, importing its own ``brevitas_dmx`` under the
    name ``brevitas_dmx_before``."""
    package = os.path.join(checkout, "brevitas_dmx")
    script = os.path.join(checkout, "benchmarks", "bench_step.py")
    for path in (package, script):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--before {checkout!r} has no {path}: give a checkout.")
    renamed = os.path.join(folder, "brevitas_dmx_before")
    shutil.copytree(package, renamed, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(r"\bbrevitas_dmx\b")
    sources = [os.path.join(d, f) for d, _, fs in os.walk(renamed) for f in fs if f.endswith(".py")]
    for path in sources + [script]:
        with open(path) as f:
            text = pattern.sub("brevitas_dmx_before", f.read())
        target = path if path != script else os.path.join(folder, "bench_step_before.py")
        with open(target, "w") as f:
            f.write(text)
    sys.path.insert(0, folder)
    return importlib.import_module("bench_step_before")


def use_compiled_kernels(package: str, model, on: bool) -> None:
    """``package``'s way of choosing the compiled element kernels: per model
    (``brevitas_dmx.model.use_compiled_kernels``) or, in a checkout older than that, for the whole
    process (``functional.enable_compile``)."""
    model_module = importlib.import_module(f"{package}.model")
    if hasattr(model_module, "use_compiled_kernels"):
        model_module.use_compiled_kernels(model, on)
    else:
        importlib.import_module(f"{package}.functional").enable_compile(on)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the other checkout's root folder")
    parser.add_argument(
        "--model", default="smollm2-135m", choices=("smollm2-135m", "llama-1b-layers"))
    parser.add_argument("--layers", type=int, default=1, help="decoder layers (llama-1b-layers)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--eager", action="store_true", help="dMX without torch.compile")
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import bench_step as after
    with tempfile.TemporaryDirectory() as folder:
        before = import_renamed(args.before, folder)
        torch.manual_seed(0)
        input_ids = torch.randint(0, 1024, (1, args.tokens))
        steps = {}
        for name, module, variant in (("float", after, "float"), ("before", before, "dmx"),
                                      ("after", after, "dmx")):
            model = module.build_float_model(args.model, args.layers, None, torch.float32)
            model = module.quantize(model, variant)
            if variant == "dmx":
                package = "brevitas_dmx_before" if name == "before" else "brevitas_dmx"
                use_compiled_kernels(package, model, not args.eager)
            steps[name] = module.make_step(model, variant, input_ids, torch.device("cpu"))[0]
            for _ in range(2):  # compiles, then one warm step
                steps[name]()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    float_median, float_min = statistics.median(times["float"]), min(times["float"])
    print(
        f"{args.model}, 1x{args.tokens}, {args.rounds} interleaved rounds, "
        f"dMX {'eager' if args.eager else 'compiled'}; before: {args.before}")
    print("| step | median (s) | vs float | fastest (s) | vs float |\n|---|---|---|---|---|")
    for name, seconds in times.items():
        median, fastest = statistics.median(seconds), min(seconds)
        print(
            f"| {name} | {median:.3f} | {median / float_median:.2f}x | {fastest:.3f} | "
            f"{fastest / float_min:.2f}x |")
    ratios = [a / b for a, b in zip(times["after"], times["before"])]
    print(
        f"after / before, round by round: median {statistics.median(ratios):.3f} "
        f"({', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
