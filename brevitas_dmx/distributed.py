# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Several processes (``accelerate launch``, ``torchrun``): ranks, devices and collectives.

Training itself is data parallel through the Hugging Face ``Trainer`` (DDP, or FSDP from an
accelerate config): the per-rank losses are means over equal shares of the global batch, the
gradient all-reduce averages them, and the penalty, a function of the offsets only, is the same
on every rank, so every rank takes the same optimizer step as a single process with the global
batch. This module adds what the Trainer does not: the process group before training (for the
sharded evaluation), the rank's device, and the collectives that the sharded evaluation
(``brevitas_dmx.evaluate.window_nll``) and the check that the offsets ended identical on every
rank (``brevitas_dmx.solver.trainer.sync_offsets``) are made of. It knows nothing of models or
quantizers.

Everything here is a no-op in a single process.
"""

import os
from typing import Dict, Optional

from accelerate import PartialState
import torch
import torch.distributed as dist

# Directory where every rank writes its own offsets after training (tests, debugging).
RANK_OFFSETS_ENV = "BREVITAS_DMX_RANK_OFFSETS"


def _env_int(names, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int(("WORLD_SIZE",), 1)


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int(("RANK",), 0)


def local_rank() -> int:
    return _env_int(("LOCAL_RANK",), 0)


def is_distributed() -> bool:
    return world_size() > 1


def in_process_group() -> bool:
    """Whether this process is one of several, joined in their process group."""
    return is_distributed() and dist.is_initialized()


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Joins the process group started by the launcher (gloo on CPUs, NCCL on GPUs), through
    accelerate's ``PartialState`` so that the Trainer later finds the same one. Nothing happens
    in a single process."""
    if _env_int(("WORLD_SIZE",), 1) <= 1:
        return
    if not dist.is_initialized():
        PartialState(cpu=not torch.cuda.is_available())


def device() -> torch.device:
    """``cuda:LOCAL_RANK`` where CUDA exists, else the CPU."""
    if torch.cuda.is_available():
        index = local_rank() % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def per_device_batch_size(global_batch_size: int, processes: Optional[int] = None) -> int:
    """The samples each process takes per step when ``global_batch_size`` are taken in all."""
    processes = world_size() if processes is None else processes
    if global_batch_size < 1 or global_batch_size % processes:
        raise ValueError(
            f"the global batch size {global_batch_size} must be a positive multiple of the "
            f"{processes} processes")
    return global_batch_size // processes


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl" or "cuda:nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """Sum (or ``op``) of ``tensor`` over the ranks; the tensor itself in a single process."""
    if not in_process_group():
        return tensor
    buffer = tensor.detach().to(_comm_device()).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM if op is None else op)
    return buffer.to(tensor.device)


def barrier() -> None:
    if in_process_group():
        dist.barrier()


def full_value(param: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter, detached (FSDP2 keeps a sharded DTensor between steps)."""
    full = getattr(param, "full_tensor", None)
    return (full() if full is not None else param).detach()


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank (a copy); the tensor itself in a single process."""
    if not in_process_group():
        return tensor
    buffer = tensor.detach().to(_comm_device()).clone()
    dist.broadcast(buffer, src=src)
    return buffer.to(tensor.device)


def average_grads_over_ranks(params) -> None:
    """Averages the gradients of ``params`` over the ranks as soon as each is accumulated.

    For parameters kept out of FSDP's shards (the dMX offsets: ``fully_shard`` refuses 0-d
    parameters), whose gradients no FSDP reduce-scatter averages. A no-op in a single process.
    """

    def average(param):
        if param.grad is not None and world_size() > 1:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world_size())

    for param in params:
        param.register_post_accumulate_grad_hook(average)


def summary() -> Dict[str, object]:
    """What a results file should know about the processes."""
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return {"world_size": world_size(), "backend": backend}
