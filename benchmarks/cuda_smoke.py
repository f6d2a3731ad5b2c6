# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""CUDA checks that the CPU test suite cannot make: same bits on GPU as on CPU, and a training
step of the learnable quantizers on the GPU. Run on a machine with a GPU:

    python benchmarks/cuda_smoke.py
"""

import brevitas.nn as qnn
import torch

from brevitas_dmx.functional import mx_fake_quantize
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight


def main():
    assert torch.cuda.is_available(), "needs a GPU"
    torch.manual_seed(0)
    x = torch.randn(64, 1024) * torch.exp2(torch.randint(-20, 20, (64, 1)).float())
    for e, m in [(2, 1), (2, 3), (3, 2), (4, 3), (5, 2)]:
        for rule in ("floor", "nonclip"):
            cpu = mx_fake_quantize(x, e, m, scale_rule=rule)
            gpu = mx_fake_quantize(x.cuda(), e, m, scale_rule=rule).cpu()
            print(f"E{e}M{m} {rule}: CPU == CUDA bit for bit: {torch.equal(cpu, gpu)}")
    for dtype in (torch.float32, torch.bfloat16):
        layer = qnn.QuantLinear(
            1024,
            1024,
            bias=False,
            weight_quant=DMXFloatWeight,
            input_quant=DMXFloatAct,
            dtype=dtype,
            device="cuda").train()
        inp = torch.randn(8, 128, 1024, device="cuda", dtype=dtype, requires_grad=True)
        layer(inp).float().pow(2).mean().backward()
        grad = layer.weight_quant.tensor_quant.offset.raw_offset.grad
        print(
            f"{dtype} training step on CUDA: offset grad {grad.item():.3e}, finite "
            f"{bool(torch.isfinite(grad))}")


if __name__ == "__main__":
    main()
