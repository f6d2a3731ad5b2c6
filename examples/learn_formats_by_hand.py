# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""dMX without the LLM command: learnable MX formats on a small regression network.

Two layers compete for a 6-bit average: the one whose quantization hurts the loss more should
end in MXFP8. Runs in seconds on a CPU:

    python examples/learn_formats_by_hand.py
"""

import brevitas.nn as qnn
import torch
from torch import nn

import brevitas_dmx as dmx
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.solver import project_model
from brevitas_dmx.solver import TargetAwarePenalty
from brevitas_dmx.solver import temperature_at


def main(steps: int = 200):
    torch.manual_seed(0)
    model = nn.Sequential(
        qnn.QuantLinear(64, 256, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct),
        nn.Tanh(),
        qnn.QuantLinear(256, 64, bias=False, weight_quant=DMXFloatWeight, input_quant=DMXFloatAct))
    teacher = [layer.weight.detach().clone() for layer in (model[0], model[2])]
    with torch.no_grad():  # make the second layer's weights heavy-tailed: MXFP4 hurts it more
        model[2].weight.mul_(torch.randn_like(model[2].weight).abs().pow(3))
        teacher[1] = model[2].weight.detach().clone()
    offsets = dmx.train_only_offsets(model)  # the weights stay frozen
    optimizer = torch.optim.SGD([o.raw_offset for o in offsets], lr=1.0, momentum=0.9)
    # 6.25 bits per weight with the E8M0 scales: room for one of the two layers on MXFP8
    penalty = TargetAwarePenalty(6.25, lam=5.0)
    model.train()
    # every forward pass computes all learnable formats at once (what DMXTrainer does)
    with dmx.batched_formats(model):
        for step in range(steps):
            dmx.set_temperature(model, temperature_at(step, steps))
            x = torch.randn(128, 64)
            target = torch.tanh(x @ teacher[0].t()) @ teacher[1].t()
            loss = nn.functional.mse_loss(model(x), target) * 100
            reg, bits = penalty(model)
            optimizer.zero_grad()
            (loss + reg).backward()
            optimizer.step()
            if step % 50 == 0 or step == steps - 1:
                print(
                    f"step {step:3d}  task loss {loss.item():.4f}  average bits {bits.item():.2f}")
    project_model(model, 6.25)
    dmx.finalize(model)
    print(dmx.format_map(model))
    print(dmx.bits_report(model))
    return dmx.format_map(model)


if __name__ == "__main__":
    main()
