# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Where a training step's host time goes, float against dMX: matrix products, dMX's compiled
element kernels, attention, the loss, and the rest (dispatch, Python, small operations), from
``torch.profiler``'s self CPU time, averaged over ``--repeats`` profiled steps of each (interleaved) after two
warm-up steps. The difference column is in float steps: it says which part keeps a dMX step above the
float one.

    python benchmarks/step_breakdown.py --model smollm2-135m --tokens 256

Times are inflated by the profiler (a few %); compare within one run.
"""

import argparse
import collections

from bench_step import build_float_model
from bench_step import make_step
from bench_step import quantize
import torch
from torch.profiler import profile
from torch.profiler import ProfilerActivity

from brevitas_dmx.model import use_compiled_kernels

PARTS = ("matrix products", "dMX element kernels", "attention", "loss", "rest")


def part_of(key: str) -> str:
    if key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::addmm_"):
        return "matrix products"
    if "CompiledFxGraph" in key:
        return "dMX element kernels"
    if "scaled_dot_product" in key:
        return "attention"
    if "log_softmax" in key or "nll_loss" in key:
        return "loss"
    return "rest"


def profiled_seconds(step) -> collections.Counter:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    seconds = collections.Counter()
    for event in prof.key_averages():
        seconds[part_of(event.key)] += event.self_cpu_time_total / 1e6
    return seconds


def breakdown(args, input_ids):
    """{variant: seconds per part}, the variants' profiled steps interleaved (as in
    ``bench_step``) so that the machine's drift touches both alike."""
    steps = {}
    for variant in ("float", "dmx"):
        model = quantize(build_float_model(args.model, args.layers, None, torch.float32), variant)
        use_compiled_kernels(model, True)  # dMX's compiled kernels; the float model has none
        steps[variant] = make_step(model, variant, input_ids, torch.device("cpu"))[0]
        for _ in range(2):
            steps[variant]()
    totals = {variant: collections.Counter() for variant in steps}
    for _ in range(args.repeats):
        for variant, step in steps.items():
            for part, seconds in profiled_seconds(step).items():
                totals[variant][part] += seconds / args.repeats
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2-135m", choices=("smollm2-135m", "llama-1b-layers"))
    parser.add_argument("--layers", type=int, default=1, help="decoder layers (llama-1b-layers)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    input_ids = torch.randint(0, 1024, (1, args.tokens))
    totals = breakdown(args, input_ids)
    float_s, dmx_s = totals["float"], totals["dmx"]
    total_float, total_dmx = sum(float_s.values()), sum(dmx_s.values())
    print(f"{args.model}, 1x{args.tokens}: seconds per step under the profiler")
    print("| part | float | dMX compiled | dMX - float, in float steps |\n|---|---|---|---|")
    for part in PARTS:
        extra = (dmx_s[part] - float_s[part]) / total_float
        print(f"| {part} | {float_s[part]:.3f} | {dmx_s[part]:.3f} | {extra:+.2f} |")
    print(
        f"| total | {total_float:.3f} | {total_dmx:.3f} | "
        f"{(total_dmx - total_float) / total_float:+.2f} ({total_dmx / total_float:.2f}x) |")


if __name__ == "__main__":
    main()
