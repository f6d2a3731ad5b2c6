# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""What a sweep computes once: the kl / fisher layer scores and the float model's NLL per
evaluation window, kept in JSON files under a key of everything they depend on."""

import json
import logging
import os
import time
from typing import Dict, Optional

import torch

from brevitas_dmx import distributed
from brevitas_dmx.baselines import fisher_sensitivity
from brevitas_dmx.baselines import kl_sensitivity
from brevitas_dmx.baselines import linear_layers
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.evaluate import windows_fingerprint

logger = logging.getLogger(__name__)


class JsonCache:
    """A JSON file of entries by key (no file: nothing is kept). Rank 0 writes."""

    def __init__(self, path: Optional[str]):
        self.path = path

    @staticmethod
    def key(fields: Dict) -> str:
        return json.dumps(fields, sort_keys=True)

    def get(self, key: str):
        """The entry ``key`` (None if there is no file or no such entry)."""
        if not self.path or not os.path.isfile(self.path):
            return None
        with open(self.path) as f:
            return json.load(f).get(key)

    def put(self, key: str, value) -> None:
        if not self.path or not distributed.is_main():
            return
        entries = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                entries = json.load(f)
        entries[key] = value
        with open(self.path, "w") as f:
            json.dump(entries, f)


def sensitivity_scores(plan, model, calib, method: str):
    """Layer scores of the kl / fisher baselines on the float model and the seconds computing
    them took, from ``--dmx-sensitivity-cache`` if it holds scores for the same model, data and
    settings (the time is then the original computation's, so every point reports the method's
    full cost)."""
    args = plan.args
    samples = calib[:args.dmx_sensitivity_samples]
    cache = JsonCache(args.dmx_sensitivity_cache)
    key = cache.key(
        {
            "method": method,
            "model": args.model,
            "dataset": args.dataset,
            "seqlen": plan.seqlen,
            "samples": args.dmx_sensitivity_samples,
            "seed": args.seed,
            "dtype": args.dtype,  # bfloat16 matmuls move the scores and the time
            "formats": [f.name for f in plan.ladder.formats],
            "weights_only": args.dmx_weights_only,
            "scale_rule": plan.scale_rule,
            "quantize_last_layer": args.quantize_last_layer,
            "rotation": plan.rotation,
            # the token ids scored (a tokenizer's BOS, a changed text or split change them)
            "calibration": windows_fingerprint(torch.stack([s["input_ids"] for s in samples]))
        })
    cached = cache.get(key)
    if cached is not None:
        logger.info(f"{method} scores from {cache.path}")
        return cached["scores"], cached["time_s"]
    score = kl_sensitivity if method == "kl" else fisher_sensitivity
    start = time.perf_counter()
    scores = score(
        model,
        samples, [f.name for f in plan.ladder.formats],
        layers=linear_layers(model, plan.excluded_layers),
        weights_only=args.dmx_weights_only,
        scale_rule=plan.scale_rule)
    elapsed = time.perf_counter() - start
    cache.put(key, {"scores": scores, "time_s": elapsed})
    return scores, elapsed


def float_window_nll(
        plan, model, windows, device, name: str = "float ppl", seqlen=None) -> torch.Tensor:
    """The float model's NLL per evaluation window, from ``--dmx-float-cache`` when it holds
    the same model, dtype, device type, windows and batch size (batching moves the last bits)."""
    args = plan.args
    cache = JsonCache(args.dmx_float_cache)
    key = cache.key(
        {
            "model": args.model,
            "dtype": args.dtype,
            "device": torch.device(device).type,
            "seqlen": plan.seqlen if seqlen is None else seqlen,
            "batch_size": args.dmx_eval_batch_size,
            "rotation": plan.rotation,
            "windows": windows_fingerprint(windows)
        })
    cached = cache.get(key)
    if cached is not None:
        logger.info(f"float NLL from {cache.path}")
        return torch.tensor(cached, dtype=torch.float64)
    nll = window_nll(model, windows, args.dmx_eval_batch_size, name)
    cache.put(key, nll.tolist())
    return nll
