# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Host-side cost of one dMX layer's training step: the aten operations it dispatches, and the
host time per layer on tensors too small for the element work to count.

On a GPU every aten operation that computes something is a kernel launch (about 8 us of CPU
each on an H100: BENCHMARKS.md, 'How long does a search take?'), and on small and mid-sized models
the launches, not the
element work, bound the step. Operations on scalars (the format's parameters and gradients) are
the ones that do not grow with the model. Both counts are the same on any device, so this
runs on the CPU:

    python benchmarks/count_ops.py [--unbatched]
    python benchmarks/count_ops.py --model smollm2-135m [--unbatched]
"""

import argparse
import collections
import contextlib
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from brevitas_dmx.model import batched_formats

# Operations that only describe a tensor (no kernel on a GPU).
_VIEWS = {
    "view",
    "detach",
    "expand",
    "t",
    "_unsafe_view",
    "slice",
    "select",
    "unbind",
    "unsqueeze",
    "alias"
}


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside the block, and those with scalar results
    (at most two values: the fused layer computes its two quantizers' scalars as pairs)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.scalar = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in _VIEWS:
            self.ops[name] += 1
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor) and first.numel() <= 2:
                self.scalar += 1
        return out


def dmx_model(layers: int, features: int) -> nn.Module:
    """``layers`` DMXQuantLinear layers quantized as ``bench_step`` quantizes a model, training
    only their offsets."""
    from bench_step import quantize

    from brevitas_dmx.model import train_only_offsets
    model = nn.Sequential(*[nn.Linear(features, features, bias=False) for _ in range(layers)])
    model = quantize(model, "dmx").train()
    train_only_offsets(model)
    return model


def count_whole_step(model_name: str, tokens: int, unbatched: bool) -> None:
    """Operations of one whole training step of a real model's shapes (random weights; the
    decoder of ``bench_step.build_float_model``) with the trainer's bit penalty, and of the
    penalty alone."""
    from bench_step import build_float_model
    from bench_step import quantize
    from brevitas import config

    from brevitas_dmx.model import dmx_offsets
    from brevitas_dmx.model import train_only_offsets
    from brevitas_dmx.solver.regularizers import TargetAwarePenalty
    config.IGNORE_MISSING_KEYS = True
    model = quantize(build_float_model(model_name, 2, None, torch.float32), "dmx").train()
    train_only_offsets(model)
    penalty = TargetAwarePenalty(5.0, weighting="memory", include_scale_bits=True)
    ids = torch.randint(0, 1000, (1, tokens))

    def counted():
        for offset in dmx_offsets(model):
            offset.raw_offset.grad = None
        with OpCounter() as step:
            loss = model(input_ids=ids, labels=ids).loss + penalty(model)[0]
            loss.backward()
        for offset in dmx_offsets(model):
            offset.raw_offset.grad = None
        with OpCounter() as alone:
            penalty(model)[0].backward()
        return step, alone

    with contextlib.nullcontext() if unbatched else batched_formats(model):
        counted()  # warm-up
        step, alone = counted()
    print(
        f"{model_name}, 1x{tokens} tokens, formats "
        f"{'per quantizer' if unbatched else 'batched'}: {sum(step.ops.values())} operations "
        f"per step ({step.scalar} on scalars); the penalty alone, forward + backward: "
        f"{sum(alone.ops.values())}")


def measure(model, x, steps: int, layers: int):
    """(host time per layer and step in us, forward OpCounter, backward OpCounter)."""

    def step():
        model(x).sum().backward()

    for _ in range(5):
        step()
    with OpCounter() as forward:
        loss = model(x).sum()
    with OpCounter() as backward:
        loss.backward()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps / layers * 1e6, forward, backward


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--unbatched",
        action="store_true",
        help="every quantizer computes its own format (without brevitas_dmx.batched_formats)")
    parser.add_argument(
        "--model",
        default=None,
        help="count one whole step of this bench_step model (e.g. smollm2-135m) instead")
    parser.add_argument("--tokens", type=int, default=16, help="sequence length with --model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model:
        count_whole_step(args.model, args.tokens, args.unbatched)
        return
    model = dmx_model(args.layers, args.features)
    x = torch.randn(1, args.features, requires_grad=True)
    context = contextlib.nullcontext() if args.unbatched else batched_formats(model)
    with context:
        host_us, forward, backward = measure(model, x, args.steps, args.layers)
    per_layer = {
        name: (sum(c.ops.values()) / args.layers, c.scalar / args.layers)
        for name, c in (("forward", forward), ("backward", backward))
    }
    print(
        f"{args.layers} DMXQuantLinear layers of {args.features}x{args.features}, 1 token, CPU, "
        f"formats {'per quantizer' if args.unbatched else 'batched (batched_formats)'}")
    print("| per layer and step | forward | backward | total |")
    print("|---|---|---|---|")
    print(
        f"| aten operations (not views) | {per_layer['forward'][0]:.0f} | "
        f"{per_layer['backward'][0]:.0f} | {sum(v[0] for v in per_layer.values()):.0f} |")
    print(
        f"| of which on scalars | {per_layer['forward'][1]:.0f} | {per_layer['backward'][1]:.0f} | "
        f"{sum(v[1] for v in per_layer.values()):.0f} |")
    print(f"host time per layer and step: {host_us:.0f} us (mean of {args.steps} steps)")
    print(
        "most frequent:",
        ", ".join(f"{k} {v}" for k, v in (forward.ops + backward.ops).most_common(8)))


if __name__ == "__main__":
    main()
