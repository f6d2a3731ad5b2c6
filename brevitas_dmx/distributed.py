# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Several processes (``accelerate launch``, ``torchrun``): ranks, devices, sharded evaluation
and the offsets kept identical on every rank.

Training itself is data parallel through the Hugging Face ``Trainer`` (DDP, or FSDP from an
accelerate config): the per-rank losses are means over equal shares of the global batch, the
gradient all-reduce averages them, and the penalty, a function of the offsets only, is the same
on every rank, so every rank takes the same optimizer step as a single process with the global
batch. This module adds what the Trainer does not: the process group before training (for the
sharded evaluation), the rank's device, printing on rank 0 only, and a check (then a broadcast)
that the offsets ended identical on every rank.

Everything here is a no-op in a single process.
"""

import builtins
import os
from typing import Dict, Optional

import torch
from torch import nn
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


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Joins the process group started by the launcher (gloo on CPUs, NCCL on GPUs), through
    accelerate's ``PartialState`` so that the Trainer later finds the same one, and keeps
    ``print`` to rank 0. Nothing happens in a single process."""
    if _env_int(("WORLD_SIZE",), 1) <= 1:
        return
    if not dist.is_initialized():
        from accelerate import PartialState
        PartialState(cpu=not torch.cuda.is_available())
    if not is_main():
        _silence_print()


def _silence_print() -> None:
    """Non-zero ranks print only with ``print(..., force=True)`` (the torchvision pattern)."""
    original = builtins.print
    if getattr(original, "_dmx_silenced", False):
        return

    def rank_print(*args, force: bool = False, **kwargs):
        if force:
            original(*args, **kwargs)

    rank_print._dmx_silenced = True
    builtins.print = rank_print


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
    if not is_distributed() or not dist.is_initialized():
        return tensor
    buffer = tensor.detach().to(_comm_device()).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM if op is None else op)
    return buffer.to(tensor.device)


def barrier() -> None:
    if is_distributed() and dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def window_nll(
        model,
        windows: torch.Tensor,
        batch_size: int = 4,
        desc: str = "perplexity") -> torch.Tensor:
    """``brevitas_dmx.evaluate.window_nll``, with the batches dealt out to the ranks.

    Each rank evaluates whole batches (the same batches a single process forms, so each
    window's NLL is the same bits) and leaves the others' windows at zero; a float64 sum over
    the ranks then fills in every window exactly.
    """
    from brevitas_dmx.evaluate import window_nll as single_process_window_nll
    if not is_distributed():
        return single_process_window_nll(model, windows, batch_size, desc)
    starts = list(range(0, len(windows), batch_size))[rank()::world_size()]
    return all_reduce(single_process_window_nll(model, windows, batch_size, desc, starts))


def _local(param: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter (FSDP2 keeps a sharded DTensor between steps)."""
    full = getattr(param, "full_tensor", None)
    return (full() if full is not None else param).detach()


def offsets_vector(model: nn.Module) -> torch.Tensor:
    """The model's distinct offsets as one float64 vector (in ``dmx_offsets`` order)."""
    from brevitas_dmx.model import dmx_offsets
    values = [_local(o.raw_offset).reshape(-1) for o in dmx_offsets(model)]
    return torch.cat(values).to(torch.float64) if values else torch.zeros(0, dtype=torch.float64)


def sync_offsets(model: nn.Module) -> float:
    """Checks that every rank holds the same offsets, then makes them bit-identical.

    Returns the largest difference between a rank's offsets and rank 0's (0.0 in a single
    process; data-parallel training keeps it at 0.0, as every rank applies the same all-reduced
    gradient). Rank 0's offsets are then broadcast, so whatever the difference, one format
    decision per layer holds on every rank.
    """
    if not is_distributed() or not dist.is_initialized():
        return 0.0
    from brevitas_dmx.model import dmx_offsets
    mine = offsets_vector(model).to(_comm_device())
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    spread = (mine - reference).abs().max() if mine.numel() else mine.new_zeros(())
    spread = all_reduce(spread.reshape(1), dist.ReduceOp.MAX)
    with torch.no_grad():
        position = 0
        for offset in dmx_offsets(model):
            param = offset.raw_offset
            count = param.numel()
            value = reference[position:position + count].reshape(param.shape)
            position += count
            local = getattr(param, "to_local", None)
            if local is None:
                param.copy_(value.to(param.device, param.dtype))
            elif local().numel():  # a DTensor shard that holds the scalar
                local().copy_(value.reshape(local().shape).to(local().device, param.dtype))
    return float(spread[0])


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


def dump_rank_offsets(model: nn.Module, directory: Optional[str] = None) -> Optional[str]:
    """Writes this rank's offsets to ``directory/offsets_rank{R}.pt`` when ``directory`` (or the
    ``BREVITAS_DMX_RANK_OFFSETS`` environment variable) names a folder."""
    directory = directory or os.environ.get(RANK_OFFSETS_ENV)
    if not directory:
        return None
    from brevitas_dmx.solver.trainer import offsets_state_dict
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"offsets_rank{rank()}.pt")
    torch.save(offsets_state_dict(model), path)
    return path


def summary() -> Dict[str, object]:
    """What a results file should know about the processes."""
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return {"world_size": world_size(), "backend": backend}
