# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The Fisher baseline's sensitivity pass on SmolLM2-135M, float32 against bfloat16 weights,
interleaved: what a bfloat16 search would save the baseline (``bench_step.py --dtype bfloat16``
measures the same for dMX's step).

    python benchmarks/sensitivity_time.py --samples 16 --repeats 2 --threads 1
"""

import argparse
import copy
import time

import torch

from brevitas_dmx.baselines import fisher_sensitivity
from brevitas_dmx.loading import load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="windows scored (%(default)s)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per window")
    parser.add_argument("--formats", default="e2m1,e2m3,e4m3")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m", "float32")
    generator = torch.Generator().manual_seed(1)
    samples = [
        {
            "input_ids":
                torch.randint(0, model.config.vocab_size, (args.tokens,), generator=generator)
        } for _ in range(args.samples)
    ]
    formats = args.formats.split(",")
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, variant in models.items():
            start = time.perf_counter()
            fisher_sensitivity(variant, samples, formats)
            times[name].append(time.perf_counter() - start)
    print(
        f"Fisher pass, smollm2-135m, {args.samples} x {args.tokens} tokens, formats {formats}, "
        f"CPU x{torch.get_num_threads()}")
    print("| weights | seconds (each round) |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
