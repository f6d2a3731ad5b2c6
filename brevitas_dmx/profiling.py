# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Measuring what a training step keeps for backward (the tests and the benchmarks use it)."""

from typing import Callable, Tuple, TypeVar

import torch

T = TypeVar("T")


def saved_tensor_bytes(fn: Callable[[], T]) -> Tuple[T, int]:
    """Runs ``fn`` and returns its result and the bytes its autograd graph keeps for backward,
    each storage counted once (a tensor saved twice, or two views of one storage, count once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), storage.device)] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, sum(storages.values())
