# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Where the time of a dMX training step of one Linear layer goes (torch.profiler table).

    python benchmarks/profile_quantizer.py --device cuda [--compile]
"""

import argparse

import brevitas.nn as qnn
import torch
from torch.profiler import profile
from torch.profiler import ProfilerActivity

from brevitas_dmx.model import use_compiled_kernels
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="4096x4096")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    in_features, out_features = map(int, args.shape.split("x"))
    layer = qnn.QuantLinear(
        in_features, out_features, bias=False, weight_quant=DMXFloatWeight,
        input_quant=DMXFloatAct).to(device).train()
    use_compiled_kernels(layer, args.compile)
    layer.weight.requires_grad_(False)
    x = torch.randn(args.tokens // 512, 512, in_features, device=device, requires_grad=True)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x).pow(2).mean().backward()

    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
