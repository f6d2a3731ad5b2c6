# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Brevitas's weight optimizers after the search: ``--gptq``, ``--gpfq`` or ``--qronos`` (one of
them) and ``--magr``, as the stock ``brevitas_ptq_llm`` spells them. They run on the finalized
model, so the format map is the search's and each layer's weights are rounded in its own format;
every method gets them the same way, and the exports carry the optimized weights."""

import time
from typing import Dict, Tuple

import torch

from brevitas_dmx.evaluate import paired_ratio
from brevitas_dmx.evaluate import perplexity_of
from brevitas_dmx.evaluate import window_nll
from brevitas_dmx.llm.plan import UsageError
from brevitas_dmx.llm_args import flag_name
from brevitas_dmx.weight_rounding import optimize_weights

# The optimizers, in the order a run applies them: MagR's smaller weights first, as in the stock
# pipeline (where it precedes quantization), then the one GPxQ algorithm.
OPTIMIZER_FLAGS = ("magr", "gptq", "gpfq", "qronos")
GPXQ_FLAGS = ("gptq", "gpfq", "qronos")
# Options of the stock flags this command honours, with the optimizers they tune.
OPTION_FLAGS = {
    "gpxq_act_order": GPXQ_FLAGS,
    "gpxq_use_quant_activations": GPXQ_FLAGS,
    "gpxq_buffer_device": OPTIMIZER_FLAGS,
    "qronos_alpha": ("qronos",),
    "magr_alpha": ("magr",),
}
HONOURED_FLAGS = frozenset(OPTIMIZER_FLAGS) | frozenset(OPTION_FLAGS)
# The key of the run's round-to-nearest scores once the optimized ones replace them.
RTN = "rtn"


def check_weight_optimizers(args, method, defaults: Dict) -> Tuple[str, ...]:
    """The optimizers a command line asks for, in the order they run; a ``UsageError`` for two
    GPxQ algorithms, an option without its optimizer, or a method that quantizes nothing."""
    chosen = tuple(name for name in OPTIMIZER_FLAGS if getattr(args, name))
    gpxq = [name for name in chosen if name in GPXQ_FLAGS]
    if len(gpxq) > 1:
        raise UsageError(
            f"{' and '.join(map(flag_name, gpxq))}: choose one; each rounds the same weights")
    for option, owners in OPTION_FLAGS.items():
        if getattr(args, option) != defaults[option] and not set(owners) & set(chosen):
            raise UsageError(
                f"{flag_name(option)} tunes {' or '.join(map(flag_name, owners))}; add one")
    if chosen and not method.quantizes:
        raise UsageError(
            f"{flag_name(chosen[0])} rounds quantized weights, and --dmx-method {method.name} "
            f"quantizes none")
    return chosen


def optimize_run_weights(run) -> None:
    """Rounds the finalized model's weights with the plan's optimizers on the calibration
    samples, in place, and records their timings and the round-to-nearest perplexity they
    started from (the scores that follow are the optimized model's)."""
    args, record = run.args, run.record
    calibration_rtn = _calibration_ppl(run)
    started = time.perf_counter()
    steps = []
    for algorithm in run.plan.weight_optimizers:
        steps.append(
            optimize_weights(
                run.model,
                run.calib,
                algorithm,
                act_order=args.gpxq_act_order,
                use_quant_activations=True if args.gpxq_use_quant_activations else None,
                alpha={
                    "qronos": args.qronos_alpha, "magr": args.magr_alpha
                }.get(algorithm),
                buffer_device="cpu" if args.gpxq_buffer_device == "cpu" else str(run.device)))
    record.weight_rounding = {
        "algorithms": list(run.plan.weight_optimizers),
        "time_s": time.perf_counter() - started,
        "rtn_ppl": record.quant_ppl,
        "rtn_window_nll": record.window_nll,
        "calibration_ppl_rtn": calibration_rtn,
        "calibration_ppl": _calibration_ppl(run),
        "steps": steps,
    }
    if run.texts is not None:
        record.weight_rounding["rtn_texts"] = {
            name: scores["quant_ppl"] for name, scores in (record.texts or {}).items()
        }
        run.texts.rename(RTN)


def _calibration_ppl(run) -> float:
    """Perplexity on the calibration samples: the data the optimizers fit."""
    samples = torch.stack([s["input_ids"] for s in run.calib])
    nll = window_nll(run.model, samples, run.args.dmx_eval_batch_size, "calibration ppl")
    return perplexity_of(nll, samples.shape[1])


def compare_with_rtn(run) -> None:
    """The optimized model's paired ratio to its round-to-nearest start on the run's windows."""
    rounding = run.record.weight_rounding
    rounding["optimized_ppl"] = run.record.quant_ppl
    rounding["paired_vs_rtn"] = paired_ratio(
        torch.tensor(run.record.window_nll),
        torch.tensor(rounding["rtn_window_nll"]),
        run.plan.seqlen)
