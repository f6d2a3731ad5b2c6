# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The element-wise MX kernels of one dMX training step against the matrix product they sit
beside: nanoseconds per weight element, eager and compiled.

A dMX Linear step runs, per weight element: the forward kernel once (weight quantization), the
values-backward kernel once (the quantized weight again, with the three sums of the format
gradient), and three matrix products over the tokens (float: two). The input's kernels scale
with tokens x in_features instead and are timed on a (tokens, in_features) input.

    python benchmarks/bench_kernels.py --threads 1
"""

import argparse
import time

import torch

from brevitas_dmx import functional


def best_seconds(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-features", type=int, default=1536)
    parser.add_argument("--in-features", type=int, default=576)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weight = torch.randn(args.out_features, args.in_features).unflatten(-1, (-1, 32))
    x = torch.randn(args.tokens, args.in_features).unflatten(-1, (-1, 32))
    e, m = torch.tensor(3.3), torch.tensor(2.2)  # a fractional format, as in training
    constants = functional.format_constants(e, m)
    n = weight.numel()

    def kernels(t, kernel_set=functional.EAGER):
        grad = torch.randn_like(t)
        scale = functional.forward_kernel(t, constants, "floor")[1]
        return {
            "forward": lambda: functional.forward_kernel(t, constants, "floor", kernel_set),
            "values_backward":
                lambda: functional.values_backward_kernel(
                    t, constants, scale, grad, (), kernel_set),
            "backward":
                lambda: functional.backward_kernel(t, constants, scale, grad, (), kernel_set),
        }

    flat_x, flat_w = x.flatten(-2), weight.flatten(-2)
    grad_out = torch.randn(args.tokens, args.out_features)
    products = {
        "forward (x @ w^T)": lambda: flat_x @ flat_w.t(),
        "input gradient (g @ w)": lambda: grad_out @ flat_w,
        "weight gradient, dMX's third (g^T @ x)": lambda: grad_out.t() @ flat_x,
    }
    print(
        f"weight {args.out_features}x{args.in_features}, {args.tokens} tokens, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}; ns per weight element")
    for name, product in products.items():
        print(f"matrix product, {name}: {best_seconds(product, args.repeats) / n * 1e9:.2f}")
    print("| kernel | on | eager | compiled |")
    print("|---|---|---|---|")
    rows = []
    for on, tensor in (("weight", weight), ("input", x)):
        for name, fn in kernels(tensor).items():
            if on == "weight" and name == "backward":
                continue  # frozen weights: values_backward instead
            if on == "input" and name == "values_backward":
                continue
            rows.append((name, on, tensor, fn))
    eager = {(name, on): best_seconds(fn, args.repeats) for name, on, _, fn in rows}
    compiled_set = functional.compiled_kernels()
    rows = [(name, on, t, kernels(t, compiled_set)[name]) for name, on, t, _ in rows]
    compiled = {(name, on): best_seconds(fn, args.repeats) for name, on, _, fn in rows}
    for name, on, _, _ in rows:
        print(
            f"| {name} | {on} | {eager[(name, on)] / n * 1e9:.2f} | "
            f"{compiled[(name, on)] / n * 1e9:.2f} |")


if __name__ == "__main__":
    main()
