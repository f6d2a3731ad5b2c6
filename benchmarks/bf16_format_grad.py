# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The offset gradient of one fused dMX layer in bfloat16 against float32, from the same
values: weights and inputs that bfloat16 holds exactly, so only the arithmetic differs.

    python benchmarks/bf16_format_grad.py --seeds 3

Prints, per seed, the gradient of a squared-error loss to the layer's (shared) offset, float32
and bfloat16, eager and compiled (BENCHMARKS.md, 'What does the quantizer cost?': before the element
arithmetic of half-precision tensors ran in float32, bfloat16 gave 4-20x the float32 gradient,
of one sign).
"""

import argparse

import torch

import brevitas_dmx as dmx
from brevitas_dmx.nn import DMXQuantLinear
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight


def offset_grad(dtype, compiled: bool, seed: int, args) -> float:
    torch.manual_seed(0)
    layer = DMXQuantLinear(
        args.in_features,
        args.out_features,
        bias=False,
        weight_quant=DMXFloatWeight,
        input_quant=DMXFloatAct,
        return_quant_tensor=False)
    dmx.train_only_offsets(layer)
    dmx.use_compiled_kernels(layer, compiled)
    layer.weight.data = layer.weight.data.bfloat16().float()
    layer.to(dtype).train()
    for offset in dmx.dmx_offsets(layer):  # the offsets train in float32, from the same value
        offset.float()
        offset.raw_offset.data.fill_(args.raw_offset)
    torch.manual_seed(seed)
    x = torch.randn(args.tokens, args.in_features).bfloat16().to(dtype).requires_grad_(True)
    target = torch.randn(args.tokens, args.out_features)
    (layer(x).float() - target).pow(2).mean().backward()
    (offset,) = dmx.dmx_offsets(layer)
    return float(offset.raw_offset.grad)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=576)
    parser.add_argument("--out-features", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--raw-offset", type=float, default=1.3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("| seed | float32 eager | float32 compiled | bfloat16 eager | bfloat16 compiled |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        grads = [
            offset_grad(dtype, compiled, seed, args)
            for dtype in (torch.float32, torch.bfloat16)
            for compiled in (False, True)
        ]
        print(f"| {seed} | " + " | ".join(f"{g:+.5f}" for g in grads) + " |")


if __name__ == "__main__":
    main()
