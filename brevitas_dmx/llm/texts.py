# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""--dmx-eval-datasets: every run scored on more texts, each in windows long enough to give the
model context, with paired intervals against the baselines the run computes (the float model,
each uniform format), so one run can tell whether its map is better off the calibration text."""

from typing import Dict

import torch

from brevitas_dmx.evaluate import paired_ratio
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.evaluate import windows_fingerprint
from brevitas_dmx.llm.cache import float_window_nll

# Tokens per evaluation window of the extra texts, where the model's context allows.
EVAL_SEQLEN = 512
FLOAT = "float"
QUANT = "quant"  # the run's method


def eval_seqlen(args, model) -> int:
    """--dmx-eval-seqlen, or ``EVAL_SEQLEN`` capped by the model's context."""
    if args.dmx_eval_seqlen is not None:
        return args.dmx_eval_seqlen
    context = getattr(model.config, "max_position_embeddings", None) or EVAL_SEQLEN
    return min(EVAL_SEQLEN, context)


class TextScores:
    """The extra texts' windows and every model's NLL per window on them."""

    def __init__(self, windows: Dict[str, torch.Tensor]):
        self.windows = windows
        self.nll: Dict[str, Dict[str, torch.Tensor]] = {name: {} for name in windows}

    def score(self, run, model, key: str) -> None:
        """``model``'s NLL on every text, kept under ``key`` (float, uniform_<stem>, method)."""
        for name, windows in self.windows.items():
            if key == FLOAT:
                nll = float_window_nll(
                    run.plan, model, windows, run.device, f"float ppl ({name})", windows.shape[1])
            else:
                nll = window_nll(model, windows, run.args.dmx_eval_batch_size, f"{key} ({name})")
            self.nll[name][key] = nll

    def rename(self, new_key: str, key: str = QUANT) -> None:
        """Keeps the scores of ``key`` under ``new_key``, so that ``key`` can be scored again
        (the round-to-nearest model's, before its weights are optimized)."""
        for scores in self.nll.values():
            scores[new_key] = scores.pop(key)

    def report(self, method_key: str) -> Dict[str, Dict]:
        """Each text's windows, perplexities and the method's paired ratio to each baseline."""
        out = {}
        for name, windows in self.windows.items():
            seqlen = windows.shape[1]
            scores = self.nll[name]
            ppl = {key: perplexity_of(nll, seqlen) for key, nll in scores.items()}
            method = scores[method_key]
            out[name] = {
                "seqlen": seqlen,
                "windows": len(windows),
                "fingerprint": windows_fingerprint(windows),
                "float_ppl": ppl[FLOAT],
                "quant_ppl": ppl[method_key],
                "uniform":
                    {
                        key[len("uniform_"):]: value
                        for key, value in ppl.items()
                        if key.startswith("uniform_")
                    },
                "window_nll": method.tolist(),
                "paired":
                    {
                        key: paired_ratio(method, nll, seqlen)
                        for key, nll in scores.items()
                        if key != method_key
                    }
            }
        return out
