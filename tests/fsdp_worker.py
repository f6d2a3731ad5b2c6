# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""A few dMX training steps of a tiny Llama, sharded with FSDP2 (``fully_shard``) when run by
torchrun with several processes (gloo, CPU), unsharded in a single process.

accelerate turns FSDP on for GPUs only, so this does by hand, on the CPU, what its FSDP2 path
does with ``DMXTrainer``'s plugin settings: every decoder layer and the root become FSDP units,
the offsets are ignored parameters (replicated), and ``distributed.average_grads_over_ranks``
averages their gradients. Writes this rank's offsets and whether the weights were sharded to
``OUT/rank{R}.pt``. Used by tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/fsdp_worker.py OUT
"""

import os
import sys

from brevitas.graph.quantize import layerwise_quantize
import torch
import torch.distributed as dist

from brevitas_dmx import distributed
from brevitas_dmx.model import dmx_offsets
from brevitas_dmx.nn import dmx_linear_map
from brevitas_dmx.quant import DMXFloatAct
from brevitas_dmx.quant import DMXFloatWeight
from brevitas_dmx.solver import TargetAwarePenalty

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_llama  # noqa: E402  (the tests' own tiny model)

STEPS, GLOBAL_BATCH, SEQLEN = 4, 4, 16


def main(out_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    model = layerwise_quantize(
        tiny_llama(seed=0), dmx_linear_map(DMXFloatWeight, DMXFloatAct), name_blacklist=["lm_head"])
    for param in model.parameters():
        param.requires_grad_(False)
    offsets = [o.raw_offset for o in dmx_offsets(model)]
    with torch.no_grad():  # offsets spread over the ladder, so every format path runs
        for i, raw in enumerate(offsets):
            raw.fill_(0.2 + 1.6 * i / max(1, len(offsets) - 1))
    for raw in offsets:
        raw.requires_grad_(True)
    if world > 1:
        from torch.distributed.fsdp import fully_shard
        for layer in model.model.layers:
            fully_shard(layer, ignored_params=set(offsets))
        fully_shard(model, ignored_params=set(offsets))
        distributed.average_grads_over_ranks(offsets)
    weight = model.model.layers[0].mlp.up_proj.weight
    sharded = hasattr(weight, "to_local") and weight.to_local().numel() < weight.numel()
    model.train()
    optimizer = torch.optim.SGD(offsets, lr=1.0, momentum=0.99, nesterov=True)
    penalty = TargetAwarePenalty(6.0, 5.0)
    data = torch.randint(
        0,
        model.config.vocab_size, (STEPS, GLOBAL_BATCH, SEQLEN),
        generator=torch.Generator().manual_seed(1))
    for step in range(STEPS):
        # each rank takes its equal share of the global batch, as the Trainer's sampler does
        ids = data[step].chunk(world)[distributed.rank()]
        loss = model(input_ids=ids, labels=ids).loss + penalty(model)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    os.makedirs(out_dir, exist_ok=True)
    torch.save(
        {
            "offsets": [raw.detach().clone() for raw in offsets], "sharded": sharded
        },
        os.path.join(out_dir, f"rank{distributed.rank()}.pt"))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
