# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""--rotation fused_no_fx: Brevitas's fused rotations applied before the formats are searched."""

import time
from typing import Dict, List

from torch import nn


def rotate(args, model: nn.Module, calib: List[Dict]) -> float:
    """Rotates ``model`` in place as Brevitas's LLM entrypoint does for --rotation fused_no_fx:
    RMSNorm scales merged into the next layers and orthogonal rotations fused into the weights,
    so the float function is unchanged and the weights' outliers are spread over their blocks.
    Returns the seconds it took."""
    from brevitas_examples.llm.main import fused_rotation_no_fx

    start = time.perf_counter()
    sample = {
        k: calib[0][k][None].to(next(model.parameters()).device)
        for k in ("input_ids", "attention_mask")
    }
    use_cache, model.config.use_cache = model.config.use_cache, True  # the tracer asks for it
    try:
        fused_rotation_no_fx(model, [sample], args)
    finally:
        model.config.use_cache = use_cache
    # The final norm is merged into the LM head and not into the embedding: they differ now,
    # and a checkpoint that still said they are tied would load the wrong head.
    model.config.tie_word_embeddings = False
    return time.perf_counter() - start
